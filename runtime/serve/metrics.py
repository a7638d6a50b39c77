"""Prometheus metrics of one app, in its own registry (two apps in one process do not clash).

What serving users most often miss is visible here: queue depth and batch sizes (is batching
working?), rows per graph (text rows skipping the vision tower), the ONNX Runtime provider in
use and how many requested providers fell back (a GPU silently running on CPU), and the
process's resident memory (creep under load).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

METRICS_TYPE: str = CONTENT_TYPE_LATEST  # the content type of render()'s text
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, cpu, fds
        self.requests = Counter(
            "lame_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=registry
        )
        self.latency = Histogram(
            "lame_request_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "lame_batch_rows", "Rows per model call", buckets=BATCH_BUCKETS, registry=registry
        )
        self.batch_requests = Histogram(
            "lame_batch_requests",
            "Requests coalesced per model call",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "lame_batch_seconds", "Model call duration", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.queue_depth = Gauge("lame_queue_rows", "Rows waiting for the model", registry=registry)
        self.rows = Counter(
            "lame_rows", "Rows embedded, by graph (text: the text-only graph)", ["graph"], registry=registry
        )
        self.rejected = Counter(
            "lame_rejected", "Requests refused before the model, by reason", ["reason"], registry=registry
        )
        self.truncated = Counter("lame_truncated_texts", "Texts cut to max_text_tokens", registry=registry)
        self.provider = Gauge(
            "lame_provider_info",
            "Execution provider of each loaded graph (value 1)",
            ["graph", "provider", "backend"],
            registry=registry,
        )
        self.fallbacks = Gauge(
            "lame_provider_fallbacks",
            "Requested execution providers that are not in use (fell back)",
            registry=registry,
        )
        self.index_size = Gauge("lame_index_items", "Items in the served index", registry=registry)
        self.save_failures = Counter(
            "lame_index_save_failures", "Saves of the index that failed (retried)", registry=registry
        )
        self.save_failing = Gauge(
            "lame_index_save_failing",
            "1 while the last save of the index failed (writes are refused), else 0",
            registry=registry,
        )
        self.unsaved = Gauge(
            "lame_index_unsaved_writes",
            "Acknowledged writes not yet in a completed save (at the last save attempt)",
            registry=registry,
        )

    def set_providers(self, embedder: Any) -> None:
        """Record what each loaded graph really runs on (not what was asked for)."""
        graphs = {
            "full": getattr(embedder, "_backend", None),
            "text": getattr(embedder, "_text_backend", None),
        }
        for graph, backend in graphs.items():
            if backend is None:
                continue
            providers = getattr(backend, "providers", None) or [getattr(backend, "name", "?")]
            self.provider.labels(graph, providers[0], getattr(backend, "name", "?")).set(1)
        self.fallbacks.set(len(getattr(embedder, "_fallback_reported", ())))

    def render(self) -> bytes:
        return generate_latest(self.registry)
