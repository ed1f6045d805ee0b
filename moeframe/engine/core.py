"""The engine loop: schedule -> forward -> mask -> sample -> update, one step at a time.

``step`` is the unit both the blocking ``Engine.generate`` and the server's
asynchronous loop drive. Finished requests hand their KV to the cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moeframe.engine.constrained import forced_run, mask_constrained
from moeframe.engine.detokenizer import Detokenize, IncrementalDetokenizer
from moeframe.engine.model_runner import ModelRunner
from moeframe.engine.request import Request, Status
from moeframe.engine.sampler import sample, token_logprobs
from moeframe.engine.scheduler import Scheduler


@dataclass
class StepStats:
    forward_steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    generated_tokens: int = 0
    jump_forward_tokens: int = 0
    mask_time_s: float = 0.0  # host time spent building and applying constraint masks
    masked_rows: int = 0  # constrained next-token choices made


class EngineCore:
    def __init__(
        self,
        scheduler: Scheduler,
        runner: ModelRunner,
        detokenize: Detokenize,
        eos_token_ids: tuple[int, ...],
        max_context: int,
        jump_forward: bool = False,
        apply_bitmask: Callable | None = None,
    ) -> None:
        self.scheduler, self.runner = scheduler, runner
        self.detokenize = detokenize
        self.detokenizer = IncrementalDetokenizer(detokenize)
        self.eos_token_ids = set(eos_token_ids)
        self.max_context = max_context
        self.jump_forward = jump_forward
        self.apply_bitmask = apply_bitmask
        self.stats = StepStats()
        self.requests: dict[int, Request] = {}

    def add(self, req: Request) -> None:
        self.requests[req.rid] = req
        self.scheduler.add(req)

    def abort(self, rid: int) -> None:
        req = self.requests.get(rid)
        if req is not None and not req.is_finished:
            self.finish(req, "abort")

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    @torch.inference_mode()
    def step(self) -> list[Request]:
        """Run one forward step; returns the requests that got new tokens or finished."""
        scheduled = self.scheduler.schedule()
        if scheduled is None:
            return self.unblock()
        step = self.runner.run(scheduled)
        logits, argmax = step.logits, step.argmax
        stats = self.stats
        stats.forward_steps += 1
        ready: list[int] = []
        for i, (req, n) in enumerate(zip(scheduled.requests, scheduled.num_new_tokens)):
            done = req.num_pending == 0
            if done and n == 1 and req.output_ids:
                stats.decode_tokens += 1
            else:
                stats.prefill_tokens += n
                if done:
                    self.scheduler.cache_prefix(req)
            if done:
                ready.append(i)
        if not ready:
            return []
        if len(ready) < logits.shape[0]:
            reqs = [scheduled.requests[i] for i in ready]
            logits, argmax = logits[ready], None
        else:
            reqs = scheduled.requests
        if self.mask(logits, reqs):
            argmax = None
        next_ids = sample(logits, reqs, argmax)
        want_logprobs = [r.params.logprobs for r in reqs if r.params.logprobs is not None]
        logprobs = token_logprobs(logits, next_ids, max(want_logprobs)) if want_logprobs else None
        now = time.perf_counter()
        for j, (req, token) in enumerate(zip(reqs, next_ids.tolist())):
            if logprobs is not None and req.params.logprobs is not None:
                entry = dict(logprobs[j])
                entry["top"] = entry["top"][: req.params.logprobs]
                req.logprobs.append(entry)
            self.append(req, token, now)
        return reqs

    def mask(self, logits: torch.Tensor, reqs: list[Request]) -> bool:
        """Apply constraint masks to the logits in place; whether any row was masked."""
        if self.apply_bitmask is not None and any(r.constraint is not None for r in reqs):
            start = time.perf_counter()
            mask_constrained(logits, reqs, self.apply_bitmask)
            self.stats.mask_time_s += time.perf_counter() - start
            self.stats.masked_rows += sum(r.constraint is not None for r in reqs)
            return True
        return False

    def append(self, req: Request, token: int, now: float) -> None:
        if req.first_token_s is None:
            req.first_token_s = now
        req.token_times_s.append(now)
        req.output_ids.append(token)
        self.stats.generated_tokens += 1
        reason = self.stop_reason(req, token)
        if reason is None and req.constraint is not None:
            if not req.constraint.advance(token):
                req.error = f"token {token} was sampled outside the constraint"
                reason = "error"
            elif self.jump_forward:
                forced = forced_run(req, req.params.max_new_tokens - len(req.output_ids))
                req.output_ids.extend(forced)
                self.stats.jump_forward_tokens += len(forced)
                if forced:
                    reason = self.stop_reason(req, req.output_ids[-1])
        req.text = self.detokenizer(req.detokenized, req.output_ids)
        if reason is None:
            reason = self.stop_string(req)
        if reason is None and len(req.output_ids) >= req.params.max_new_tokens:
            reason = "length"
        if reason is None and req.num_tokens >= self.max_context:
            reason = "length"
        if reason is not None:
            self.finish(req, reason)

    def stop_reason(self, req: Request, token: int) -> str | None:
        if token in req.params.stop_token_ids:
            return "stop"
        if token in self.eos_token_ids and not req.params.ignore_eos:
            return "stop"
        return None

    def stop_string(self, req: Request) -> str | None:
        for stop in req.params.stop:
            at = req.text.find(stop)
            if at >= 0:
                req.text = req.text[:at]
                return "stop"
        return None

    def finish(self, req: Request, reason: str, error: str | None = None) -> None:
        self.scheduler.finish(req)
        req.finish_reason = reason
        if error is not None:
            req.error = error
        req.finished_s = time.perf_counter()

    def unblock(self) -> list[Request]:
        """Nothing could be scheduled: the pool cannot serve the request at the head, alone."""
        stuck = list(self.scheduler.running) or self.scheduler.policy.order(self.scheduler.waiting, self.scheduler.cache)[:1]
        for req in stuck:
            if req.status is Status.RUNNING:
                self.finish(req, "length", "the KV pool is exhausted by this request alone")
            else:
                self.finish(req, "error", "the request does not fit in the KV pool")
        return stuck
