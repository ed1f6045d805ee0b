"""One thread owns the Engine and steps it while work is pending; other threads talk to it by commands.

The Engine is not thread-safe, so every touch of its state (admitting,
stepping, aborting, reading stats, scoring) runs on this thread, the way
SGLang's scheduler process and vLLM's engine-core busy loop own their
engine. Callers enqueue commands and get a ``concurrent.futures.Future``
back; each admitted request gets a callback that receives an
:class:`Update` after every step that gave it tokens, the last one carrying
its finish reason. Requests of all callers share the same continuous
batches because they all sit in the same scheduler.

The heavy per-request work that needs no engine state, tokenizing prompts
and compiling constraints (``Engine.make_request``), runs on a small pool
of admission threads instead, so a long prompt or a slow schema delays its
own request only, never the others' streams (SGLang tokenizes in its
TokenizerManager process for the same reason). The loop thread then only
adds the prepared requests. A submission that would grow the waiting queue
past ``max_waiting`` is refused at once with :class:`OverloadedError`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from moeframe.api import Engine, SamplingParams
from moeframe.engine.request import Request, Status
from moeframe.errors import OverloadedError, RequestError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Update:
    """What one request gained in one step; ``text`` is its whole text so far (stop strings cut it)."""

    index: int  # the request's place in its submission
    rid: int
    new_token_ids: list[int]
    new_logprobs: list[dict[str, Any]]
    text: str
    prompt_tokens: int
    cached_tokens: int
    finish_reason: str | None = None
    error: str | None = None
    new_routed_experts: list | None = None  # [n, MoE layers, k] ids of the tokens whose routes became final

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


OnUpdate = Callable[[Update], None]
OnFinish = Callable[[Request], None]


@dataclass
class Submission:
    """Prompts to admit together: all of them, or none when one is invalid."""

    prompts: list[str | list[int]]
    params: list[SamplingParams]
    fill_context: bool = False  # max_new_tokens = what the context leaves (OpenAI chat with no max_tokens)


@dataclass
class _Tracked:
    index: int
    on_update: OnUpdate
    num_sent_tokens: int = 0
    num_sent_logprobs: int = 0
    num_sent_routes: int = 0


class EngineLoop:
    def __init__(
        self,
        engine: Engine,
        on_finish: OnFinish | None = None,
        max_waiting: int | None = None,
        admission_threads: int = 2,
    ) -> None:
        self.engine = engine
        self.on_finish = on_finish
        self.max_waiting = max_waiting
        self._commands: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._tracked: dict[int, _Tracked] = {}
        self._token_texts: dict[int, str] = {}
        self._admission = ThreadPoolExecutor(admission_threads, thread_name_prefix="moeframe-admit")
        self._queue_lock = threading.Lock()
        self._num_reserved = 0  # requests of submissions being prepared or added: counted as waiting
        self._num_waiting = 0  # the scheduler's waiting queue as of the last step (written by the engine thread)
        self._thread = threading.Thread(target=self._run, name="moeframe-engine", daemon=True)
        self._thread.start()

    # ---- called from any thread ----
    def call(self, fn: Callable[[Engine], T]) -> Future[T]:
        """Run ``fn(engine)`` on the engine thread between steps."""
        future: Future[T] = Future()

        def command() -> None:
            try:
                future.set_result(fn(self.engine))
            except BaseException as err:  # handed to the caller, the loop goes on
                future.set_exception(err)

        self._commands.put(command)
        return future

    def submit(self, submission: Submission, on_update: OnUpdate) -> Future[list[int]]:
        """Admit every prompt of a submission; the future holds their request ids, or a RequestError.

        Raises OverloadedError at once (nothing is tokenized) when the
        waiting queue has no room for the submission's requests.
        """
        size = len(submission.prompts)
        self._reserve(size)
        future: Future[list[int]] = Future()

        def prepare() -> None:
            try:
                requests = prepare_requests(self.engine, submission)
            except BaseException as err:
                self._unreserve(size)
                future.set_exception(err)
                return
            self._commands.put(lambda: self._add(requests, on_update, future, size))

        self._admission.submit(prepare)
        return future

    def off_loop(self, fn: Callable[[Engine], T]) -> Future[T]:
        """Run ``fn(engine)`` on an admission thread: for work that reads no engine state (tokenizing)."""
        return self._admission.submit(fn, self.engine)

    def abort(self, rids: list[int]) -> None:
        self._commands.put(lambda: self._abort(rids))

    def abort_all(self) -> None:
        """End every request in flight with finish_reason "abort" (graceful shutdown)."""
        self._commands.put(lambda: self._abort(list(self._tracked)))

    @property
    def num_in_flight(self) -> int:
        """Requests admitted or being admitted that have not finished."""
        return len(self._tracked) + self._num_reserved

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._admission.shutdown(wait=False, cancel_futures=True)
        self._commands.put(None)
        self._thread.join(timeout=30)

    def _reserve(self, size: int) -> None:
        with self._queue_lock:
            waiting = self._num_waiting + self._num_reserved
            if self.max_waiting is not None and waiting + size > self.max_waiting:
                raise OverloadedError(
                    f"the server's waiting queue is full ({waiting} requests waiting, at most {self.max_waiting}; "
                    f"server.max_waiting_requests): retry later"
                )
            self._num_reserved += size

    def _unreserve(self, size: int) -> None:
        with self._queue_lock:
            self._num_reserved -= size

    # ---- engine thread ----
    def _add(self, requests: list[Request], on_update: OnUpdate, future: Future[list[int]], size: int) -> None:
        for index, req in enumerate(requests):
            self._tracked[req.rid] = _Tracked(index, on_update)
            self.engine.core.add(req)
        self._count_waiting()
        self._unreserve(size)
        if not future.set_running_or_notify_cancel():
            self._abort([r.rid for r in requests])
            return
        future.set_result([r.rid for r in requests])

    def _count_waiting(self) -> None:
        self._num_waiting = len(self.engine.core.scheduler.waiting)

    def _abort(self, rids: list[int]) -> None:
        for rid in rids:
            req = self.engine.core.requests.get(rid)
            if req is not None and not req.is_finished:
                self.engine.core.abort(rid)
                self._publish([req])

    def _run(self) -> None:
        while True:
            if not self._drain(block=not self.engine.core.has_work()):
                return
            if not self.engine.core.has_work():
                continue
            try:
                updated = self.engine.step()
            except Exception as err:  # a failed step must not take the server down
                log.exception("engine step failed; failing the running requests")
                updated = self._fail_all(f"internal engine error: {err}")
            self._count_waiting()
            self._publish(updated)

    def _drain(self, block: bool) -> bool:
        """Run queued commands (waiting for one when idle); False once close() was called."""
        try:
            command = self._commands.get(block=block)
        except queue.Empty:
            return True
        while command is not None:
            try:
                command()
            except Exception:  # an abort that fails must not stop the loop for everyone else
                log.exception("an engine-loop command failed")
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True
        return False

    def _fail_all(self, message: str) -> list[Request]:
        """End every unfinished request with an error, so no client waits on a step that failed."""
        failed = [r for r in self.engine.core.requests.values() if not r.is_finished]
        for req in failed:
            try:
                self.engine.core.finish(req, "error", message)
            except Exception:
                log.exception("releasing request %d after a failed step failed too", req.rid)
                scheduler = self.engine.core.scheduler
                for queue_ in (scheduler.running, scheduler.waiting):
                    if req in queue_:
                        queue_.remove(req)
                req.finish_reason, req.error = "error", message
                req.status = Status.FINISHED
        return failed

    def _token_text(self, token_id: int) -> str:
        text = self._token_texts.get(token_id)
        if text is None:
            tokenizer = self.engine.tokenizer
            text = str(token_id) if tokenizer is None else tokenizer.decode([token_id])
            self._token_texts[token_id] = text
        return text

    def _with_text(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A logprob entry with the text of its tokens (decoded here: the tokenizer lives on this thread)."""
        top = [t | {"token": self._token_text(t["token_id"])} for t in entry.get("top", [])]
        return entry | {"token": self._token_text(entry["token_id"]), "top": top}

    def _new_routes(self, req: Request, tracked: _Tracked) -> list:
        """The routes that became final since the last update (all that are left once the request ended)."""
        start = tracked.num_sent_routes
        if req.is_finished:
            routes = req.routed_experts[start:] if req.routed_experts is not None else torch.zeros(0)
        else:
            routes = self.engine.core.routes_of(req, start)[0]
        tracked.num_sent_routes += routes.shape[0]
        return routes.tolist()

    def _publish(self, requests: list[Request]) -> None:
        for req in requests:
            tracked = self._tracked.get(req.rid)
            if tracked is None:
                continue
            update = Update(
                index=tracked.index,
                rid=req.rid,
                new_token_ids=req.output_ids[tracked.num_sent_tokens :],
                new_logprobs=[self._with_text(e) for e in req.logprobs[tracked.num_sent_logprobs :]],
                text=req.text,
                prompt_tokens=len(req.prompt_ids),
                cached_tokens=req.cached_tokens or 0,
                finish_reason=req.finish_reason if req.is_finished else None,
                error=req.error,
                new_routed_experts=self._new_routes(req, tracked) if req.params.return_routed_experts else None,
            )
            tracked.num_sent_tokens, tracked.num_sent_logprobs = len(req.output_ids), len(req.logprobs)
            if req.is_finished:
                del self._tracked[req.rid]
                self.engine.core.requests.pop(req.rid, None)
            try:
                if req.is_finished and self.on_finish is not None:
                    self.on_finish(req)
                tracked.on_update(update)
            except Exception:  # a caller that went away must not stop the others
                log.exception("delivering an update of request %d failed", req.rid)


def prepare_requests(engine: Engine, submission: Submission) -> list[Request]:
    """Tokenize, validate and compile every prompt of a submission (any thread); RequestError for a bad one."""
    max_context = engine.built.max_context
    requests = []
    for prompt, params in zip(submission.prompts, submission.params, strict=True):
        req = engine.make_request(prompt, params)
        room = max_context - len(req.prompt_ids)
        if submission.fill_context:
            params.max_new_tokens = room
        elif params.max_new_tokens > room:
            raise RequestError(
                f"this model's maximum context length is {max_context} tokens; the prompt has "
                f"{len(req.prompt_ids)} tokens and {params.max_new_tokens} more were asked for"
            )
        requests.append(req)
    return requests
