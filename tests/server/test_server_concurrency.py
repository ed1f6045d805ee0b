"""Many clients at once share the engine's batches and get exactly what each would get alone."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import openai
from openai_server import MODEL, Served, assert_no_leaked_slots

PROMPTS = [f"Request number {i} asks about topic {i * 7 % 13}" for i in range(64)]


async def stream_text(client: openai.AsyncOpenAI, prompt: str) -> str:
    stream = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, stream=True)
    return "".join([chunk.choices[0].text async for chunk in stream])


def test_64_concurrent_streams_equal_sequential_greedy_outputs(
    client: openai.OpenAI, async_client: openai.AsyncOpenAI, served: Served
) -> None:
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=6, temperature=0).choices[0].text for p in PROMPTS]
    steps_before = served.stats()["forward_steps"]

    async def all_at_once() -> list[str]:
        return await asyncio.gather(*(stream_text(async_client, p) for p in PROMPTS))

    together = asyncio.run(all_at_once())
    assert together == alone
    steps = served.stats()["forward_steps"] - steps_before
    assert steps < len(PROMPTS) * 6 / 4  # they were batched, not served one after another
    assert httpx.get(f"{served.url}/health").status_code == 200
    assert_no_leaked_slots(served.wait_idle())


def abort_count(served: Served) -> float:
    metrics = httpx.get(f"{served.url}/metrics").text
    found = re.search(r'^moeframe_requests_total\{finish_reason="abort"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def test_client_disconnect_mid_stream_aborts_and_frees_slots(served: Served) -> None:
    aborted_before = abort_count(served)
    body = {"model": MODEL, "prompt": "Tell a very long story", "max_tokens": 900, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", f"{served.url}/v1/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        assert sum(1 for line, _ in zip(lines, range(6)) if line.startswith("data:")) >= 2
        running = served.stats()["num_running"]
    assert running == 1  # still generating when the client hung up
    start = time.monotonic()
    stats = served.wait_idle()
    assert time.monotonic() - start < 5
    assert_no_leaked_slots(stats)
    assert abort_count(served) == aborted_before + 1


def test_client_disconnect_while_waiting_for_a_full_response_aborts(served: Served) -> None:
    aborted_before = abort_count(served)
    body = {"model": MODEL, "prompt": "Another very long story", "max_tokens": 900, "temperature": 0, "ignore_eos": True}
    try:
        httpx.post(f"{served.url}/v1/completions", json=body, timeout=httpx.Timeout(5, read=0.5))
    except httpx.ReadTimeout:
        pass  # the client gave up and closed the connection
    stats = served.wait_idle()
    assert_no_leaked_slots(stats)
    assert abort_count(served) == aborted_before + 1
