"""Prometheus metrics of the serving shim (``GET /metrics``).

With several uvicorn workers each is its own process; ``videorec serve`` then sets
``PROMETHEUS_MULTIPROC_DIR`` (emptied at start) so every worker writes its samples to
files there and ``/metrics``, whichever worker answers it, aggregates all of them
(prometheus_client's multiprocess mode). Without it (one process, tests) the default
registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Latency buckets in seconds: fine below the 15 ms p99 goal, coarse above.
BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0)

REQUESTS = Histogram(
    "videorec_request_seconds", "Request latency by endpoint and status class.",
    ("endpoint", "status"), buckets=BUCKETS,
)  # fmt: skip
FALLBACKS = Counter(
    "videorec_fallbacks_total",
    "Answers served by a fallback path, by reason "
    "(redis_unavailable, rerank_error, rerank_slow, breaker_open, index_unavailable, "
    "similar_missing, internal_error; ranker_error, ranker_slow, ranker_breaker_open: the "
    "rule ranked the personal pool instead of the ranker).",
    ("reason",),
)
IMPRESSIONS = Counter(
    "videorec_impressions_total",
    "Items shown, by source (logged to the event stream).",
    ("source",),
)
IMPRESSIONS_DROPPED = Counter(
    "videorec_impressions_dropped_total", "Impressions not logged because Redis failed."
)
FEEDBACK = Counter("videorec_feedback_total", "Feedback accepted, by action.", ("action",))
RATE_LIMITED = Counter("videorec_rate_limited_total", "Requests refused with 429.", ("limit",))
_mode = "max" if os.environ.get(MULTIPROC_ENV) else None
GENERATION_AGE = Gauge(
    "videorec_generation_age_seconds", "Age of the generation this worker serves.",
    **({"multiprocess_mode": "max"} if _mode else {}),
)  # fmt: skip
BREAKER_OPEN = Gauge(
    "videorec_rerank_breaker_open", "1 while re-ranking's circuit breaker is open.",
    **({"multiprocess_mode": "max"} if _mode else {}),
)  # fmt: skip

RANKER_BREAKER_OPEN = Gauge(
    "videorec_ranker_breaker_open", "1 while the ranker's circuit breaker is open (the rule ranks).",
    **({"multiprocess_mode": "max"} if _mode else {}),
)  # fmt: skip
# The ranker's own time per home request: building the features of the personal pool's
# candidates and scoring them (one batched forward pass).
RANKER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
                  0.0075, 0.01, 0.02, 0.05)  # fmt: skip
RANKER_SECONDS = Histogram(
    "videorec_ranker_seconds",
    "The ranker's time per home request (features of the candidates + one forward pass).",
    buckets=RANKER_BUCKETS,
)
RANKER_LOADS = Counter(
    "videorec_ranker_loads_total",
    "Ranker versions loaded by the refresh, by outcome.",
    ("outcome",),
)


def exposition() -> tuple[bytes, str]:
    """(body, content type) of every metric, all workers' in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
