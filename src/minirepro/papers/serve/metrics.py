"""Prometheus metrics of the server, in a `CollectorRegistry` of its own per app.

Engine state (running and waiting requests, KV blocks, prefix-cache and offload counters) is
read from `engine.stats()` when /metrics is scraped, so it is never stale. Latencies and
token counts are recorded by the server per request through a `RequestTracker`:

- time to first token: request arrival to the first output token;
- inter-token latency: time between consecutive outputs that carry tokens, per token;
- end-to-end latency, and request / prompt-token / generation-token counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "minirepro"

# Buckets in seconds: a CPU engine's first token takes ms (tiny models) to s (SmolLM2 under
# load); the inter-token gaps of a batched decode step are ms to a few hundred ms.
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0, 120.0, 300.0)


class EngineStatsCollector(Collector):
    """Gauges and counters read from `stats()` (an `EngineStats`) at scrape time."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        s = self._stats()
        gauges = [
            ("num_requests_running", "Requests in the running batch.", s.num_running),
            ("num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting),
            ("kv_cache_blocks_used", "KV cache blocks in use.", s.kv_blocks_used),
            ("kv_cache_blocks_total", "KV cache blocks in the pool.", s.kv_blocks_total),
            (
                "kv_cache_usage_ratio",
                "Fraction of the KV cache blocks in use (0 to 1).",
                s.kv_blocks_used / max(1, s.kv_blocks_total),
            ),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        counters = [
            (
                "prefix_cache_queries_tokens",
                "Prompt tokens looked up in the prefix cache.",
                s.prefix_cache_queries,
            ),
            (
                "prefix_cache_hits_tokens",
                "Prompt tokens found in the prefix cache.",
                s.prefix_cache_hits,
            ),
            ("num_preemptions", "Sequences preempted for lack of KV blocks.", s.num_preemptions),
            ("kv_offload_hits", "Conversation turns restored from the KV offload.", s.offload_hits),
            (
                "kv_offload_misses",
                "Conversation turns not found (or unusable) in the KV offload.",
                s.offload_misses,
            ),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


class ServerMetrics:
    """All metrics of one app, registered in `self.registry`.

    Args:
        stats: returns the engine's current `EngineStats`.
    """

    def __init__(self, stats: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(EngineStatsCollector(stats))
        r = self.registry
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Time from request arrival to its first output token.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            f"{PREFIX}_inter_token_latency_seconds",
            "Time between consecutive output tokens of a request.",
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            f"{PREFIX}_e2e_request_latency_seconds",
            "Time from request arrival to its last token.",
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Finished generation requests, by endpoint and finish reason.",
            ["endpoint", "finish_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens of finished requests.", registry=r
        )
        self.generation_tokens = Counter(
            f"{PREFIX}_generation_tokens", "Tokens generated.", registry=r
        )
        self.http_errors = Counter(
            f"{PREFIX}_http_errors",
            "Error responses, by HTTP status.",
            ["status"],
            registry=r,
        )

    def track(self, endpoint: str) -> RequestTracker:
        """A tracker for one request that arrives now."""
        return RequestTracker(self, endpoint)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class RequestTracker:
    """Records one request's latencies and tokens as its outputs arrive."""

    def __init__(self, metrics: ServerMetrics, endpoint: str) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self.arrival = time.perf_counter()
        self.last_token_time: float | None = None
        self.prompt_tokens = 0
        self.done = False

    def on_output(self, out: Any) -> None:
        """Call with every `RequestOutput` delta of the request."""
        n = len(out.new_token_ids)
        now = time.perf_counter()
        self.prompt_tokens = out.prompt_tokens
        if n:
            m = self.metrics
            if self.last_token_time is None:
                m.ttft.observe(now - self.arrival)
                rest = n - 1  # tokens after the first in the same step
            else:
                rest = n
            gap = (now - (self.last_token_time or now)) / max(1, rest)
            for _ in range(rest):
                m.itl.observe(gap)
            m.generation_tokens.inc(n)
            self.last_token_time = now
        if out.finished:
            self.finish(out.finish_reason or "unknown", out.prompt_tokens)

    def finish(self, finish_reason: str, prompt_tokens: int) -> None:
        """Count the request as finished (once)."""
        if self.done:
            return
        self.done = True
        m = self.metrics
        m.requests.labels(self.endpoint, finish_reason).inc()
        m.prompt_tokens.inc(prompt_tokens)
        m.e2e.observe(time.perf_counter() - self.arrival)


__all__ = ["EngineStatsCollector", "RequestTracker", "ServerMetrics"]
