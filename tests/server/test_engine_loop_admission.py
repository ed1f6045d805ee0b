"""The engine loop admits off its own thread and bounds its waiting queue.

The engine thread is held inside a command (as if it were running a long
step) while requests arrive: they are still tokenized, on the admission
threads, and a submission that would grow the waiting queue past its bound
is refused at once with OverloadedError, before any tokenizing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from openai_server import MODEL

from moeframe.api import Engine, SamplingParams
from moeframe.errors import OverloadedError
from moeframe.server.engine_loop import EngineLoop, Submission

PARAMS = SamplingParams(max_new_tokens=2, ignore_eos=True)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_overrides([f"model={MODEL}", "device=cpu", "cache=none"])


@pytest.fixture
def held_loop(engine: Engine) -> Iterator[tuple[EngineLoop, threading.Event, list[str]]]:
    """A loop of at most 3 waiting requests whose engine thread waits on an event; and who tokenized what."""
    tokenized_on: list[str] = []
    encode = engine.encode

    def recording_encode(text: str) -> list[int]:
        tokenized_on.append(threading.current_thread().name)
        return encode(text)

    engine.encode = recording_encode
    loop = EngineLoop(engine, max_waiting=3)
    release = threading.Event()
    loop.call(lambda _: release.wait(30))
    try:
        yield loop, release, tokenized_on
    finally:
        release.set()
        within(30, lambda: loop.num_in_flight == 0)
        loop.close()
        del engine.encode


def within(seconds: float, condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def submit(loop: EngineLoop, prompts: list[str]) -> object:
    return loop.submit(Submission(list(prompts), [SamplingParams(**vars(PARAMS)) for _ in prompts]), lambda _: None)


def test_prompts_are_tokenized_on_admission_threads_while_the_engine_thread_is_busy(held_loop) -> None:
    loop, release, tokenized_on = held_loop
    future = submit(loop, ["first prompt", "second prompt"])
    assert within(30, lambda: len(tokenized_on) == 2)
    assert all(name.startswith("moeframe-admit") for name in tokenized_on)
    assert not future.done()  # adding to the scheduler waits for the engine thread
    release.set()
    assert len(future.result(timeout=30)) == 2


def test_a_submission_past_the_waiting_bound_is_refused_at_once(held_loop) -> None:
    loop, release, tokenized_on = held_loop
    first = submit(loop, ["a", "b"])
    with pytest.raises(OverloadedError, match="max_waiting_requests"):
        submit(loop, ["c", "d"])
    third = submit(loop, ["e"])
    assert within(30, lambda: len(tokenized_on) == 3)
    assert "moeframe-engine" not in tokenized_on
    release.set()
    assert len(first.result(timeout=30)) == 2 and len(third.result(timeout=30)) == 1
