"""Prometheus metrics, named after vLLM's so that a vLLM Grafana dashboard needs only its prefix changed.

Every metric is `ozwell:<vLLM's name>` where vLLM has one (`vllm:num_requests_running` becomes
`ozwell:num_requests_running`), with vLLM's `model_name` label; the HTTP and rate-limit metrics are
Ozwell's own. The README lists them all.

Engine gauges (waiting, running, KV blocks, prefix-cache hit rate, weight and KV-cache bytes) are read from each
engine's `stats()` at scrape time, and the process's RSS from /proc, so nothing polls in the background. Each app gets its own
CollectorRegistry: no process-global state, so tests can build many apps.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from engines.memory import resident_bytes
from engines.protocol import GenerationEngine
from engines.registry import EngineRegistry, ModelState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# vLLM's buckets (seconds), so that dashboards' quantiles line up.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0,
                    320.0, 640.0)


class _EngineCollector(Collector):
    """Gauges read from the engines when Prometheus scrapes."""

    def __init__(self, registry: EngineRegistry):
        self._registry = registry

    def collect(self):
        running = GaugeMetricFamily("ozwell:num_requests_running", "Sequences in the running batch.",
                                    labels=["model_name"])
        waiting = GaugeMetricFamily("ozwell:num_requests_waiting", "Sequences waiting to be scheduled.",
                                    labels=["model_name"])
        kv_usage = GaugeMetricFamily("ozwell:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0-1).",
                                     labels=["model_name"])
        kv_used = GaugeMetricFamily("ozwell:kv_cache_blocks_used", "KV-cache blocks in use.", labels=["model_name"])
        kv_free = GaugeMetricFamily("ozwell:kv_cache_blocks_free", "KV-cache blocks free (cached or empty).",
                                    labels=["model_name"])
        hit_rate = GaugeMetricFamily("ozwell:prefix_cache_hit_rate",
                                     "Prompt tokens served from the prefix cache, over all prompt tokens looked up.",
                                     labels=["model_name"])
        preemptions = GaugeMetricFamily("ozwell:num_preemptions", "Sequences preempted since start.",
                                        labels=["model_name"])
        throughput = GaugeMetricFamily("ozwell:avg_generation_throughput_toks_per_s",
                                       "Tokens the engine generated per second, over about the last 10 s.",
                                       labels=["model_name"])
        healthy = GaugeMetricFamily("ozwell:engine_healthy", "1 while the engine's loop is alive, else 0.",
                                    labels=["model_name"])
        weights = GaugeMetricFamily("ozwell:weights_bytes", "Bytes of the model's loaded weights, after "
                                    "quantisation (parameters, buffers and packed copies).", labels=["model_name"])
        kv_bytes = GaugeMetricFamily("ozwell:kv_cache_bytes", "Bytes of the KV-cache tensors as allocated "
                                     "(untouched pages of a lazily mapped cache count, though they take no RSS).",
                                     labels=["model_name"])
        resident = GaugeMetricFamily("ozwell:process_resident_memory_bytes",
                                     "Resident memory of this server process (VmRSS; not its child processes).")
        rss = resident_bytes()
        if rss is not None:
            resident.add_metric([], rss)
        state = GaugeMetricFamily("ozwell:model_state", "1 for each configured model's state now (unloaded, loading, "
                                  "loaded, draining), 0 for the others.", labels=["model_name", "state"])
        for slot in self._registry.slots:
            for value in ModelState:
                state.add_metric([slot.config.id, value.value], 1.0 if slot.state is value else 0.0)
        for engine in self._registry.engines:
            name = [engine.config.id]
            healthy.add_metric(name, 0.0 if engine.health() else 1.0)
            stats = engine.stats() if callable(getattr(engine, "stats", None)) else {}
            if "weights_bytes" in stats:
                weights.add_metric(name, stats["weights_bytes"])
            if "kv_cache_bytes" in stats:
                kv_bytes.add_metric(name, stats["kv_cache_bytes"])
            if not isinstance(engine, GenerationEngine) or not stats:
                continue
            running.add_metric(name, stats.get("running", 0))
            waiting.add_metric(name, stats.get("waiting", 0))
            if "kv_blocks_total" in stats:
                total = max(stats["kv_blocks_total"], 1)
                kv_usage.add_metric(name, stats["kv_blocks_used"] / total)
                kv_used.add_metric(name, stats["kv_blocks_used"])
                kv_free.add_metric(name, stats["kv_blocks_free"])
            if "prefix_cache_hit_rate" in stats:
                hit_rate.add_metric(name, stats["prefix_cache_hit_rate"])
            if "preemptions" in stats:
                preemptions.add_metric(name, stats["preemptions"])
            if "generation_tokens_per_s" in stats:
                throughput.add_metric(name, stats["generation_tokens_per_s"])
        yield from (running, waiting, kv_usage, kv_used, kv_free, hit_rate, preemptions, throughput, healthy, weights,
                    kv_bytes, resident, state)


class _Labelled:
    """A registry's metrics with one more label on every sample: which replica they come from."""

    def __init__(self, registry: CollectorRegistry, name: str, value: str):
        self._registry, self._name, self._value = registry, name, value

    def collect(self):
        for family in self._registry.collect():
            family.samples = [s._replace(labels={**s.labels, self._name: self._value}) for s in family.samples]
            yield family

    def restricted_registry(self, names):  # prometheus_client's ?name[]=... filter on --metrics-port
        return _Labelled(self._registry.restricted_registry(names), self._name, self._value)


INSTANCE_LABEL = "instance_id"  # not "instance": Prometheus sets that one itself, per scrape target


class Metrics:
    def __init__(self, registry: EngineRegistry, instance: str | None = None):
        self._own = CollectorRegistry(auto_describe=True)
        r = self._own
        # What is rendered: every sample labelled with this replica's id (--instance-id) when it has one.
        self.registry = _Labelled(r, INSTANCE_LABEL, instance) if instance else r
        self.http_requests = Counter("ozwell:http_requests_total", "HTTP requests by route, method and status.",
                                     ["route", "method", "status"], registry=r)
        self.http_latency = Histogram("ozwell:http_request_duration_seconds",
                                      "HTTP request time, from the request to the end of its body (streams included).",
                                      ["route", "method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.rate_limited = Counter("ozwell:rate_limit_rejections_total",
                                    "Requests refused with 429 by a key's plan limit (requests or tokens) or a full "
                                    "engine queue (engine).", ["limit"], registry=r)
        self.ttft = Histogram("ozwell:time_to_first_token_seconds", "Time from admission to the first token.",
                              ["model_name"], buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram("ozwell:inter_token_latency_seconds", "Time between a choice's successive tokens.",
                             ["model_name"], buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram("ozwell:e2e_request_latency_seconds", "Time from admission to the last token.",
                             ["model_name"], buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("ozwell:prompt_tokens", "Prompt tokens of generation requests.",
                                     ["model_name"], registry=r)
        self.generation_tokens = Counter("ozwell:generation_tokens", "Generated tokens.", ["model_name"], registry=r)
        self.request_success = Counter("ozwell:request_success", "Finished generation choices by finish reason.",
                                       ["model_name", "finished_reason"], registry=r)
        self.engine_faults = Counter("ozwell:engine_faults", "Generation requests failed by an engine fault.",
                                     ["model_name"], registry=r)
        r.register(_EngineCollector(registry))
        # prometheus_client's process_* metrics (resident and virtual memory, CPU seconds, open fds), which its
        # default registry has but a registry of our own does not.
        ProcessCollector(registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_latency.labels(route, method).observe(seconds)

    def trace(self, model: str, prompt_tokens: int) -> GenerationTrace:
        return GenerationTrace(self, model, prompt_tokens)


class GenerationTrace:
    """Timings of one generation request, fed event by event (any number of choices)."""

    def __init__(self, metrics: Metrics, model: str, prompt_tokens: int):
        self._m = metrics
        self.model = model
        self.started = time.perf_counter()
        self._last: dict[int, float] = {}  # choice index -> time of its last token
        self._first_seen = False
        self._completion_tokens: dict[int, int] = {}
        metrics.prompt_tokens.labels(model).inc(prompt_tokens)

    def event(self, index: int, new_tokens: int, completion_tokens: int, finish_reason: str | None) -> None:
        now = time.perf_counter()
        if new_tokens:
            if not self._first_seen:
                self._first_seen = True
                self._m.ttft.labels(self.model).observe(now - self.started)
            elif index in self._last:
                self._m.itl.labels(self.model).observe(now - self._last[index])
            self._last[index] = now
            previous = self._completion_tokens.get(index, 0)
            if completion_tokens > previous:
                self._m.generation_tokens.labels(self.model).inc(completion_tokens - previous)
                self._completion_tokens[index] = completion_tokens
        if finish_reason:
            self._m.request_success.labels(self.model, finish_reason).inc()

    def finished(self, fault: bool = False) -> None:
        if fault:
            self._m.engine_faults.labels(self.model).inc()
        else:
            self._m.e2e.labels(self.model).observe(time.perf_counter() - self.started)
