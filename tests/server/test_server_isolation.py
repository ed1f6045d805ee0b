"""Issue 24's acceptance against a real ``python -m moeframe.serve`` process, with the official ``openai`` client.

One server per module (the tiny Qwen2-MoE preset on CPU, loopback only,
small limits and an API key from $MOEFRAME_API_KEY). Each bad input is sent
while 8 greedy streams run: it gets its 4xx with a message, and the streams
give the tokens they give without it, with no inter-token gap over 1 s while
it is handled. Then: rejected 10 MB bodies do not grow the process, the API
key is enforced, and SIGTERM during 16 streams ends each with a
finish_reason and ``[DONE]`` and the process within 10 s. The SIGTERM test
ends the module's server, so it comes last in this file. The gaps and the exit
are wall time, so ``make test`` runs this module alone (marker ``serial``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
from openai_server import MODEL
from server_process import ServerProcess

API_KEY = "test-key-24"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
LIMITS = [
    "server.max_body_bytes=1048576",
    "server.max_prompt_chars=100000",
    "server.max_n=16",
    "server.max_prompts=8",
    "server.max_choices=16",
    "server.max_score_continuations=4",
    "server.max_waiting_requests=24",
    "server.shutdown_grace_s=1",
]
STREAM_PROMPTS = [f"Stream {i} tells about topic {i * 5 % 11}" for i in range(8)]
STREAM_TOKENS = 24
TEN_MB = 10 * 2**20
MAX_GAP_S = 1.0

pytestmark = pytest.mark.serial


@pytest.fixture(scope="module")
def server(moeframe_cache: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess([f"model={MODEL}", "device=cpu", "cache=radix", *LIMITS], env={"MOEFRAME_API_KEY": API_KEY})
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@dataclass
class StreamRun:
    text: str = ""
    arrivals_s: list[float] = field(default_factory=list)
    finish_reason: str | None = None


async def one_stream(client: openai.AsyncOpenAI, prompt: str, started: asyncio.Event) -> StreamRun:
    run = StreamRun()
    stream = await client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=STREAM_TOKENS, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    async for chunk in stream:
        run.arrivals_s.append(time.monotonic())
        started.set()
        run.text += chunk.choices[0].text
        run.finish_reason = chunk.choices[0].finish_reason or run.finish_reason
    return run


async def streams_beside(url: str, bad: Callable[[], httpx.Response] | None) -> tuple[list[StreamRun], httpx.Response | None, float, float]:
    """8 streams; once each has its first chunk, ``bad`` runs on a thread. Returns the runs, its response and its window."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
    async with client:
        started = [asyncio.Event() for _ in STREAM_PROMPTS]
        tasks = [asyncio.create_task(one_stream(client, p, e)) for p, e in zip(STREAM_PROMPTS, started)]
        response, start, end = None, 0.0, 0.0
        if bad is not None:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), timeout=60)
            start = time.monotonic()
            response = await asyncio.to_thread(bad)
            end = time.monotonic()
        runs = await asyncio.gather(*tasks)
    return runs, response, start, end


def longest_gap_during(run: StreamRun, start: float, end: float) -> float:
    gaps = [b - a for a, b in zip(run.arrivals_s, run.arrivals_s[1:]) if b > start and a < end]
    return max(gaps, default=0.0)


@pytest.fixture(scope="module")
def alone(server: ServerProcess) -> list[str]:
    runs, _, _, _ = asyncio.run(streams_beside(server.url, None))
    assert all(r.finish_reason == "length" for r in runs)
    return [r.text for r in runs]


def post(url: str, path: str, body: dict | bytes, **kwargs) -> Callable[[], httpx.Response]:
    def send() -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {**AUTH, "content-type": "application/json", **kwargs.pop("headers", {})}
        return httpx.post(f"{url}{path}", content=content, headers=headers, timeout=60, **kwargs)

    return send


def chunked_10mb() -> Iterator[bytes]:
    yield b'{"model": "%s", "prompt": "' % MODEL.encode()
    for _ in range(TEN_MB // 2**16):
        yield b"z" * 2**16
    yield b'"}'


def completion(**fields) -> dict:
    return {"model": MODEL, "prompt": "hi", "max_tokens": 2, **fields}


# name -> (path, body, expected status)
BAD_INPUTS = {
    "body_10mb": ("/v1/completions", b'{"model": "m", "prompt": "%s"}' % (b"x" * TEN_MB), 413),
    "body_10mb_chunked": ("/v1/completions", None, 413),
    "prompt_over_max_chars": ("/v1/completions", completion(prompt="w " * 50_001), 400),
    "prompt_over_context_tokenized_off_the_loop": ("/v1/completions", completion(prompt="w " * 49_000), 400),
    "n_over_max": ("/v1/completions", completion(n=17), 400),
    "prompts_over_max": ("/v1/completions", completion(prompt=["a"] * 9), 400),
    "choices_over_max": ("/v1/completions", completion(choices=[f"c{i}" for i in range(17)]), 400),
    "score_continuations_over_max": ("/score", {"prompt": "p", "continuations": ["a", "b", "c", "d", "e"]}, 400),
    "waiting_queue_full": ("/v1/completions", completion(prompt=["a", "b"], n=16), 429),
    "stream_yes": ("/v1/completions", completion(stream="yes"), 400),
    "seed_2_pow_70": ("/v1/completions", completion(seed=2**70), 400),
    "lone_surrogate": ("/v1/chat/completions", b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}' % MODEL.encode(), 400),
    "unknown_model": ("/v1/completions", completion(model="gpt-nothing"), 404),
    "invalid_json": ("/v1/completions", b'{"model": ', 400),
    "empty_regex_greedy": ("/v1/completions", completion(regex=r"[^\s\S]", temperature=0), 400),
    "empty_regex_sampled": ("/v1/completions", completion(regex=r"[^\s\S]", temperature=0.7), 400),
    "no_api_key": ("/v1/completions", completion(), 401),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_bad_input_gets_its_4xx_while_8_streams_run_untouched(server: ServerProcess, alone: list[str], case: str) -> None:
    path, body, status = BAD_INPUTS[case]
    if case == "body_10mb_chunked":
        send = lambda: httpx.post(f"{server.url}{path}", content=chunked_10mb(), headers=AUTH, timeout=60)  # noqa: E731
    elif case == "no_api_key":
        send = lambda: httpx.post(f"{server.url}{path}", json=body, timeout=60)  # noqa: E731
    else:
        send = post(server.url, path, body)
    runs, response, start, end = asyncio.run(streams_beside(server.url, send))
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]
    assert [r.text for r in runs] == alone
    assert all(r.finish_reason == "length" for r in runs)
    assert max(longest_gap_during(r, start, end) for r in runs) <= MAX_GAP_S


@pytest.mark.parametrize("temperature", [1e-38, 1e-45])
def test_a_tiny_temperature_samples_the_greedy_text_beside_8_streams(
    server: ServerProcess, alone: list[str], temperature: float
) -> None:
    greedy = post(server.url, "/v1/completions", completion(temperature=0, max_tokens=4))().json()["choices"][0]
    send = post(server.url, "/v1/completions", completion(temperature=temperature, max_tokens=4, seed=1))
    runs, response, _, _ = asyncio.run(streams_beside(server.url, send))
    assert response.status_code == 200
    assert response.json()["choices"][0]["text"] == greedy["text"]
    assert [r.text for r in runs] == alone


def test_rss_after_100_rejected_10mb_bodies_stays_within_100mb(server: ServerProcess) -> None:
    body = b'{"model": "%s", "prompt": "%s"}' % (MODEL.encode(), b"x" * TEN_MB)
    headers = {**AUTH, "content-type": "application/json"}
    before = server.rss_bytes()
    with httpx.Client(base_url=server.url, timeout=60) as http:
        statuses = {http.post("/v1/completions", content=body, headers=headers).status_code for _ in range(100)}
    after = server.rss_bytes()
    assert statuses == {413}
    assert after - before < 100 * 2**20


def test_the_api_key_is_required_on_api_routes_and_monitoring_stays_open(server: ServerProcess) -> None:
    def models(api_key: str) -> type[Exception] | int:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0)
        try:
            return len(client.completions.create(model=MODEL, prompt="hi", max_tokens=1).choices)
        except openai.AuthenticationError as err:
            assert err.status_code == 401 and err.code == "invalid_api_key"
            return type(err)

    assert httpx.post(f"{server.url}/v1/completions", json=completion()).status_code == 401
    assert models("wrong-key") is openai.AuthenticationError
    assert models(API_KEY) == 1
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200


async def raw_stream(url: str, index: int, started: list[asyncio.Event]) -> list[str]:
    """The SSE data lines of one long stream; sets its event at the first chunk."""
    body = completion(prompt=f"Long story {index}", max_tokens=900, temperature=0, stream=True, ignore_eos=True)
    lines = []
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", f"{url}/v1/completions", json=body, headers=AUTH) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    lines.append(line[5:].strip())
                    started[index].set()
    return lines


def test_sigterm_during_16_streams_ends_each_with_a_finish_reason_and_done_then_exits(server: ServerProcess) -> None:
    async def scenario() -> tuple[list[list[str]], float]:
        started = [asyncio.Event() for _ in range(16)]
        tasks = [asyncio.create_task(raw_stream(server.url, i, started)) for i in range(16)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), timeout=60)
        server.terminate()
        signalled = time.monotonic()
        streams = await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
        await asyncio.to_thread(server.proc.wait, 30)
        return streams, time.monotonic() - signalled

    streams, exit_s = asyncio.run(scenario())
    for lines in streams:
        assert lines[-1] == "[DONE]"
        reasons = [json.loads(x)["choices"][0]["finish_reason"] for x in lines[:-1] if json.loads(x)["choices"]]
        assert reasons[-1] in ("abort", "length") and all(r is None for r in reasons[:-1])
    assert exit_s < 10
