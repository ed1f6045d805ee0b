"""Prometheus metrics of the server: requests, tokens, latency histograms, cache hit rate, expert load.

Names follow vLLM's and SGLang's ``/metrics`` (``*_total`` counters, seconds
histograms for time to first token and inter-token latency). Request metrics
are observed on the engine thread as each request finishes; engine state
(queue lengths, free KV slots, cache hit rate, per-expert token counts) is
read from a stats snapshot when ``/metrics`` is scraped. Each app has its own
registry, so several servers can live in one process (tests).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from moeframe.engine.request import Request

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("moeframe_requests", "Finished engine requests", ["finish_reason"], registry=r)
        self.rejected = Counter("moeframe_rejected_requests", "HTTP requests refused (4xx, routing misses aside)", registry=r)
        self.server_errors = Counter(
            "moeframe_server_errors", "HTTP responses with a 5xx status", ["status"], registry=r
        )
        self.prompt_tokens = Counter("moeframe_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.cached_tokens = Counter("moeframe_cached_prompt_tokens", "Prompt tokens served from the KV cache", registry=r)
        self.generation_tokens = Counter("moeframe_generation_tokens", "Generated tokens", registry=r)
        self.ttft = Histogram(
            "moeframe_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.itl = Histogram(
            "moeframe_inter_token_latency_seconds", "Time between tokens", buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.e2e = Histogram(
            "moeframe_request_latency_seconds", "Arrival to finish", buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.cache_hit_rate = Gauge("moeframe_cache_hit_rate", "Cached share of all prompt tokens so far", registry=r)
        self.running = Gauge("moeframe_num_running_requests", "Requests in the running batch", registry=r)
        self.waiting = Gauge("moeframe_num_waiting_requests", "Requests waiting for admission", registry=r)
        self.free_slots = Gauge("moeframe_kv_free_slots", "Free KV slots in the pool", registry=r)
        self.cached_slots = Gauge("moeframe_kv_cached_tokens", "KV slots the cache keeps for reuse", registry=r)
        self.expert_tokens = Gauge(
            "moeframe_expert_tokens", "Tokens routed to each expert so far", ["layer", "expert"], registry=r
        )
        self.expert_max_mean_load = Gauge(
            "moeframe_expert_max_mean_load", "Max over mean expert load of a layer", ["layer"], registry=r
        )
        self._prompt_total = self._cached_total = 0

    def observe_finished(self, req: Request) -> None:
        """Called on the engine thread when a request finishes."""
        self.requests.labels(req.finish_reason or "abort").inc()
        prompt, cached = len(req.prompt_ids), req.cached_tokens or 0
        self.prompt_tokens.inc(prompt)
        self.cached_tokens.inc(cached)
        self.generation_tokens.inc(len(req.output_ids))
        self._prompt_total += prompt
        self._cached_total += cached
        self.cache_hit_rate.set(self._cached_total / self._prompt_total if self._prompt_total else 0.0)
        if req.first_token_s is not None:
            self.ttft.observe(req.first_token_s - req.arrival_s)
        for a, b in zip(req.token_times_s, req.token_times_s[1:]):
            self.itl.observe(b - a)
        if req.finished_s is not None:
            self.e2e.observe(req.finished_s - req.arrival_s)

    def render(self, snapshot: dict[str, Any]) -> bytes:
        """The text exposition, after setting the engine gauges from a stats snapshot."""
        stats = snapshot["stats"]
        self.running.set(stats["num_running"])
        self.waiting.set(stats["num_waiting"])
        self.free_slots.set(stats["num_free_slots"])
        self.cached_slots.set(stats["num_cached_tokens"])
        counts = snapshot.get("expert_counts")
        if counts is not None:
            for layer, row in enumerate(counts):
                for expert, tokens in enumerate(row):
                    self.expert_tokens.labels(str(layer), str(expert)).set(tokens)
        for layer in stats.get("expert_load", {}).get("layers", []):
            self.expert_max_mean_load.labels(str(layer["layer"])).set(layer["max_mean_load"])
        return generate_latest(self.registry)


def metrics_snapshot(engine: Any) -> dict[str, Any]:
    """Run on the engine thread: engine stats and the expert-load counts [L][E]."""
    recorder = engine.built.recorder
    return {
        "stats": engine.stats(),
        "expert_counts": None if recorder is None else recorder.load_counts().tolist(),
    }
