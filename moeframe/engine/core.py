"""The engine loop: schedule -> forward -> mask -> sample -> update, one step at a time.

``step`` is the unit both the blocking ``Engine.generate`` and the server's
asynchronous loop drive. Finished requests hand their KV to the cache.

Overlapped decode (SGLang's overlap scheduler, vLLM v1's async scheduling):
when the step just launched leaves every running request ready to decode (a
decode step, or one that ends their prompts), the device can choose their
next tokens alone (greedy or sampled, no constraint mask, no logprobs) and
nothing waits, ``step`` samples this step on the device and
schedules and launches the next step before it reads this one's tokens. Each
request gets a placeholder for the token in flight, so the scheduler
allocates its slot as usual, and the next step takes this step's sampled ids
on the device as its input. Reading the tokens back then waits for this step
only, and the host work of appending, detokenizing and stop checks runs while
the GPU computes the next step. The placeholders are filled before ``step``
returns, so between steps every request holds real tokens only; a request
that stops at a token the next step already feeds has its row of that step
dropped. One call still processes exactly one step and samples it before the
next step is even scheduled, over the same rows, so random numbers are drawn
in the order of the plain loop. Outputs are those of the plain loop whenever
its batches are the same: a request that arrives while a step is in flight
joins one step later, which changes nothing for greedy and seeded rows but
hands unseeded rows, which share the global generator in batch order,
different draws.

With routes recorded (``runner.routes``), each step's routes are copied to
the host beside its token ids and stored per KV slot (engine/route_store.py)
in the order the steps ran, before its tokens are appended; a request that
asked for them reads its slots' rows when it ends (``routes_of``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from moeframe.engine.constrained import forced_run, mask_constrained
from moeframe.engine.detokenizer import Detokenize, IncrementalDetokenizer
from moeframe.engine.model_runner import HostRoutes, ModelRunner, StepLogits
from moeframe.engine.request import Request, Status
from moeframe.engine.route_store import SlotRoutes
from moeframe.engine.sampler import Draw, sample, to_device, token_logprobs
from moeframe.engine.scheduler import ScheduledBatch, Scheduler
from moeframe.telemetry.expert_distribution import ExpertDistributionRecorder


NON_FINITE = "the logits of this request are not finite (NaN or infinity), so no token can be drawn from them"


@dataclass
class StepStats:
    forward_steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    generated_tokens: int = 0
    jump_forward_tokens: int = 0
    mask_time_s: float = 0.0  # host time spent building and applying constraint masks
    masked_rows: int = 0  # constrained next-token choices made
    ahead_steps: int = 0  # forward steps launched before the previous step's tokens were read


@dataclass
class LaunchedStep:
    """A forward step handed to the runner, whose outputs may still be computing."""

    scheduled: ScheduledBatch
    out: StepLogits
    out_slots: np.ndarray | None = None  # the KV slot of each token of the step, when routes are stored
    starts: list[int] | None = None  # each request's position of its first token in the step, likewise


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
        routes: SlotRoutes | None = None,
        distribution: ExpertDistributionRecorder | None = None,
    ) -> None:
        self.scheduler, self.runner = scheduler, runner
        self.detokenize = detokenize
        self.detokenizer = IncrementalDetokenizer(detokenize)
        self.eos_token_ids = set(eos_token_ids)
        self.max_context = max_context
        self.jump_forward = jump_forward
        self.apply_bitmask = apply_bitmask
        self.routes = routes
        self.distribution = distribution  # the expert-distribution recorder, fed each served step's routes
        self.stats = StepStats()
        self.requests: dict[int, Request] = {}
        self.in_flight: LaunchedStep | None = None  # launched ahead by the last step, processed by the next

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
        """Process one forward step; returns the requests that got new tokens or finished.

        The step is the one launched ahead by the last call, else a freshly
        scheduled one; when it allows, the next step is launched before this
        one's tokens are read.
        """
        launched, self.in_flight = self.in_flight, None
        if launched is None or all(r.is_finished for r in launched.scheduled.requests):
            scheduled = self.scheduler.schedule()
            if scheduled is None:
                return self.unblock()
            launched = self.launch(scheduled)
        ready = self.count_tokens(launched.scheduled)
        rows = self.ahead_rows(launched.scheduled, ready) if ready else None
        if rows is None:
            self.store_routes(launched)
            return self.sample_and_update(launched, ready) if ready else []
        reqs = [launched.scheduled.requests[i] for i in ready]
        draw = self.sample_on_device(launched, ready)
        flags = draw.ids if draw.invalid is None else torch.cat([draw.ids, draw.invalid.long()])
        host_ids = self.runner.read_back(flags)
        host_routes = self.runner.read_back_routes(launched.out.routes) if launched.out.routes is not None else None
        self.launch_ahead(reqs, [launched.scheduled.requests[i] for i in rows], draw.ids)
        self.store_routes(launched, host_routes)
        read = host_ids.tolist()
        tokens, invalid = read[: len(reqs)], read[len(reqs) :]
        self.update(reqs, tokens, {j: NON_FINITE for j, bad in enumerate(invalid) if bad})
        return reqs

    def launch(self, scheduled: ScheduledBatch, input_ids: torch.Tensor | None = None) -> LaunchedStep:
        self.stats.forward_steps += 1
        if self.routes is None:
            return LaunchedStep(scheduled, self.runner.run(scheduled, input_ids))
        starts = [len(req.slots) - n for req, n in zip(scheduled.requests, scheduled.num_new_tokens)]
        return LaunchedStep(scheduled, self.runner.run(scheduled, input_ids), self.step_slots(scheduled), starts)

    @staticmethod
    def step_slots(scheduled: ScheduledBatch) -> np.ndarray:
        """The slot each token of the step writes, in the step's token order (taken at launch: the cache may
        swap a request's slots for equal cached ones before the step is processed)."""
        return np.fromiter(
            (slot for req, n in zip(scheduled.requests, scheduled.num_new_tokens) for slot in req.slots[len(req.slots) - n :]),
            dtype=np.int64,
        )

    def store_routes(self, launched: LaunchedStep, host: HostRoutes | None = None) -> None:
        """Store a step's routes by slot once they reach the host (``host``: a copy already started)."""
        if self.routes is None or launched.out.routes is None:
            return
        host = host or self.runner.read_back_routes(launched.out.routes)
        ids, weights = host.wait()
        self.routes.scatter(launched.out_slots, ids, weights)
        if self.distribution is not None and self.distribution.wants_routes:
            scheduled = launched.scheduled
            self.distribution.on_pass(scheduled.requests, launched.starts, scheduled.num_new_tokens, ids)

    def routes_of(self, req: Request, start: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The routes of the request's tokens from ``start`` up to those whose routes are final (``num_routed``)."""
        return self.routes.gather(req.slots[start : req.num_routed])

    def count_tokens(self, scheduled: ScheduledBatch) -> list[int]:
        """Count the step's tokens; the rows whose request samples its next token now."""
        stats = self.stats
        ready: list[int] = []
        for i, (req, n) in enumerate(zip(scheduled.requests, scheduled.num_new_tokens)):
            if req.is_finished:  # a row of a step launched ahead, whose request ended before it ran
                continue
            done = req.num_pending == 0
            if done and n == 1 and req.output_ids:
                stats.decode_tokens += 1
            else:
                stats.prefill_tokens += n
                if done:
                    self.scheduler.cache_prefix(req)
            if done:
                ready.append(i)
        return ready

    def ahead_rows(self, scheduled: ScheduledBatch, ready: list[int]) -> list[int] | None:
        """Rows of the requests the next step may decode before this step's tokens are read; None if it may not.

        Only a step that leaves every running request ready to decode (a
        decode, or the last chunks of their prompts), with nothing waiting,
        whose tokens the device chooses alone (``device_only``) goes ahead:
        the next schedule is known without them. So the first decode step
        queues behind the prefill, not behind the host's read of its tokens
        (SGLang's overlap scheduler runs prefill batches ahead too); the host
        reads the first token after launching that step, whose host time
        moves into the time to first token. A request this step ends by
        length stays out, as do the dropped rows of requests that ended
        before the step ran.
        """
        if not self.runner.overlap or self.scheduler.waiting or len(self.scheduler.running) != len(ready):
            return None
        reqs = [scheduled.requests[i] for i in ready]
        if not all(self.device_only(r) for r in reqs):
            return None
        rows = [i for i, req in zip(ready, reqs) if not self.ends_by_length(req)]
        return rows or None

    @staticmethod
    def device_only(req: Request) -> bool:
        """Whether the device chooses the request's next token alone: greedy or sampled, no mask, no logprobs."""
        return req.constraint is None and req.params.logprobs is None

    def ends_by_length(self, req: Request) -> bool:
        """Whether the token this step samples is certain to end the request."""
        return len(req.output_ids) + 1 >= req.params.max_new_tokens or req.num_tokens + 1 >= self.max_context

    def sample_on_device(self, launched: LaunchedStep, ready: list[int]) -> Draw:
        """The ready rows' next tokens [len(ready)], left on the device (no mask or logprobs: ``device_only``)."""
        logits, argmax = launched.out.logits, launched.out.argmax
        reqs = [launched.scheduled.requests[i] for i in ready]
        if len(ready) < logits.shape[0]:
            index = to_device(ready, logits.device)
            logits = logits.index_select(0, index)
            argmax = None if argmax is None else argmax.index_select(0, index)
        return sample(logits, reqs, argmax)

    def launch_ahead(self, ready: list[Request], reqs: list[Request], next_ids: torch.Tensor) -> None:
        """Schedule and launch the next decode step over ``reqs``, fed ``next_ids`` [len(ready)] on the device."""
        for req in reqs:
            req.add_placeholder()
        ahead = self.scheduler.schedule_ahead(reqs)
        if ahead is None:
            return
        if len(ahead.requests) < len(ready):
            row_of = {req: i for i, req in enumerate(ready)}
            next_ids = next_ids.index_select(0, to_device([row_of[req] for req in ahead.requests], next_ids.device))
        self.stats.ahead_steps += 1
        self.in_flight = self.launch(ahead, next_ids)

    def sample_and_update(self, launched: LaunchedStep, ready: list[int]) -> list[Request]:
        """Mask, sample and append the ready rows' tokens (the step's outputs are final)."""
        scheduled, logits, argmax = launched.scheduled, launched.out.logits, launched.out.argmax
        if len(ready) < logits.shape[0]:
            reqs = [scheduled.requests[i] for i in ready]
            logits, argmax = logits[ready], None
        else:
            reqs = scheduled.requests
        failed = self.mask(logits, reqs)
        if failed is not None:
            argmax = None
        draw = sample(logits, reqs, argmax)
        errors = {j: NON_FINITE for j, bad in enumerate(draw.invalid.tolist()) if bad} if draw.invalid is not None else {}
        errors |= failed or {}
        want_logprobs = [r.params.logprobs for r in reqs if r.params.logprobs is not None]
        logprobs = token_logprobs(logits, draw.ids, max(want_logprobs)) if want_logprobs else None
        if logprobs is not None:
            for j, req in enumerate(reqs):
                if req.params.logprobs is not None and j not in errors:
                    entry = dict(logprobs[j])
                    entry["top"] = entry["top"][: req.params.logprobs]
                    req.logprobs.append(entry)
        self.update(reqs, draw.ids.tolist(), errors)
        return reqs

    def update(self, reqs: list[Request], token_ids: list[int], errors: dict[int, str]) -> None:
        """Give each request its token (placeholders first, so none outlives an error), then check stops.

        ``errors``: row -> why that row's token is unusable; those requests end
        alone with finish_reason "error" (their drawn token is dropped), the
        others go on as if they had not been in the batch.
        """
        for req, token in zip(reqs, token_ids):
            req.put_token(token)
        now = time.perf_counter()
        for j, (req, token) in enumerate(zip(reqs, token_ids)):
            error = errors.get(j)
            if error is None:
                self.accept(req, token, now)
            else:
                self.finish(req, "error", error)
                req.output_ids.pop()

    def mask(self, logits: torch.Tensor, reqs: list[Request]) -> dict[int, str] | None:
        """Apply constraint masks to the logits in place; row -> error of the rows that cannot go on, None if none was masked."""
        if self.apply_bitmask is not None and any(r.constraint is not None for r in reqs):
            start = time.perf_counter()
            failed = mask_constrained(logits, reqs, self.apply_bitmask)
            self.stats.mask_time_s += time.perf_counter() - start
            self.stats.masked_rows += sum(r.constraint is not None for r in reqs)
            return failed
        return None

    def accept(self, req: Request, token: int, now: float) -> None:
        """The request's new last token is ``token``: time it, detokenize, and finish the request on a stop."""
        if req.first_token_s is None:
            req.first_token_s = now
        req.token_times_s.append(now)
        self.stats.generated_tokens += 1
        reason = self.stop_reason(req, token)
        if reason is None and req.constraint is not None:
            try:
                reason = self.advance_constraint(req, token)
            except Exception as err:  # a backend failing on one request's constraint fails that request only
                req.error = f"the constraint failed: {type(err).__name__}: {err}"
                reason = "error"
        req.text = self.detokenizer(req.detokenized, req.output_ids)
        if reason is None:
            reason = self.stop_string(req)
        if reason is None and len(req.output_ids) >= req.params.max_new_tokens:
            reason = "length"
        if reason is None and req.num_tokens >= self.max_context:
            reason = "length"
        if reason is not None:
            self.finish(req, reason)

    def advance_constraint(self, req: Request, token: int) -> str | None:
        """Advance the request's constraint by its new token (and a forced run after it); its finish reason, if any."""
        if not req.constraint.advance(token):
            req.error = f"token {token} was sampled outside the constraint"
            return "error"
        if token in req.constraint.eos_token_ids:
            # the constraint allowed EOS because its output is complete: nothing may follow,
            # ignore_eos or not (SGLang ends a request whose grammar terminated the same way)
            return "stop"
        if self.jump_forward:
            forced = forced_run(req, req.params.max_new_tokens - len(req.output_ids))
            req.output_ids.extend(forced)
            self.stats.jump_forward_tokens += len(forced)
            if forced:
                return self.stop_reason(req, req.output_ids[-1])
        return None

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
        if req.params.return_routed_experts and self.routes is not None:
            req.routed_experts, req.routed_expert_weights = self.routes_of(req)
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
