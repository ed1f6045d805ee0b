"""/metrics: Prometheus text with request, token, latency, cache and expert-load series that track real traffic."""

from __future__ import annotations

import httpx
import openai
from openai_server import MODEL, Served
from prometheus_client.parser import text_string_to_metric_families


def scrape(served: Served) -> dict[str, float]:
    text = httpx.get(f"{served.url}/metrics").text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def test_metrics_count_requests_tokens_and_latencies(client: openai.OpenAI, served: Served) -> None:
    served.wait_idle()
    before = scrape(served)
    outs = [
        client.completions.create(model=MODEL, prompt="Counting tokens for metrics", max_tokens=5, temperature=0)
        for _ in range(2)
    ]
    after = scrape(served)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    generated = sum(o.usage.completion_tokens for o in outs)
    finished = sum(delta(k) for k in after if k.startswith("moeframe_requests_total{"))
    assert finished == 2
    assert delta("moeframe_generation_tokens_total{}") == generated
    assert delta("moeframe_prompt_tokens_total{}") == sum(o.usage.prompt_tokens for o in outs)
    assert delta("moeframe_time_to_first_token_seconds_count{}") == 2
    assert delta("moeframe_inter_token_latency_seconds_count{}") == generated - 2
    # the second identical prompt is served from the radix cache
    assert delta("moeframe_cached_prompt_tokens_total{}") == outs[1].usage.prompt_tokens_details.cached_tokens > 0
    assert 0 < after["moeframe_cache_hit_rate{}"] <= 1


def test_metrics_expose_expert_load_matching_stats(served: Served) -> None:
    values = scrape(served)
    stats = served.stats()
    routed = sum(v for k, v in values.items() if k.startswith("moeframe_expert_tokens{"))
    assert routed == stats["expert_load"]["total"]["kept"] > 0
    assert values["moeframe_kv_free_slots{}"] == stats["num_free_slots"]


def test_metrics_count_rejected_requests(served: Served) -> None:
    before = scrape(served)["moeframe_rejected_requests_total{}"]
    httpx.post(f"{served.url}/v1/completions", json={"model": "nope", "prompt": "x"})
    assert scrape(served)["moeframe_rejected_requests_total{}"] == before + 1
