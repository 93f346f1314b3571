"""Prometheus metrics and the HTTP probes (/metrics, /healthz, /readyz).

Each server owns its own registry, so several servers in one process (tests, a
multi-worker setup) never collide on metric names.
"""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client
from aiohttp import web

from extauthz import httpserver

OUTCOMES = ("allowed", "denied", "unauthenticated", "malformed", "policy_error", "internal_error")
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """The counters and histograms the service updates."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.checks = prometheus_client.Counter(
            "extauthz_checks",
            "Check calls by outcome (the real decision, also in dry-run).",
            ["outcome"],
            registry=self.registry,
        )
        self.latency = prometheus_client.Histogram(
            "extauthz_check_duration_seconds",
            "Time spent in Check, from request to response.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.jwks_fetches = prometheus_client.Counter(
            "extauthz_jwks_fetches",
            "JWKS fetches by provider and result.",
            ["provider", "result"],
            registry=self.registry,
        )
        self.policy_errors = prometheus_client.Counter(
            "extauthz_policy_errors",
            "Checks denied because the policy engine failed (fail closed).",
            ["engine"],
            registry=self.registry,
        )
        # Bound children up front: labels() costs more than inc() on the hot path.
        self.decision_cache = prometheus_client.Counter(
            "extauthz_decision_cache_lookups",
            "Policy decision cache lookups by result (hit, miss).",
            ["result"],
            registry=self.registry,
        )
        self.transport_events = prometheus_client.Counter(
            "extauthz_transport_events",
            "The h2 transport's defences acting and connections ending in error, by event.",
            ["event"],
            registry=self.registry,
        )
        self.worker_restarts = prometheus_client.Gauge(
            "extauthz_worker_restarts",
            "Times the --workers supervisor restarted this worker's slot after it died.",
            registry=self.registry,
        )
        self.cache_hit = self.decision_cache.labels("hit")
        self.cache_miss = self.decision_cache.labels("miss")
        self.by_outcome = {outcome: self.checks.labels(outcome) for outcome in OUTCOMES}

    def transport_event(self, event: str) -> None:
        self.transport_events.labels(event).inc()

    def jwks_fetched(self, provider: str, result: str) -> None:
        self.jwks_fetches.labels(provider, result).inc()

    def text(self) -> bytes:
        data: bytes = prometheus_client.generate_latest(self.registry)
        return data


def http_handler(metrics: Metrics, ready: Callable[[], bool]) -> httpserver.Handler:
    """Serve metrics, liveness (always 200 while the loop runs) and readiness."""

    async def handle(request: web.Request) -> web.Response:
        path = httpserver.path(request)
        if request.method not in ("GET", "HEAD"):
            return httpserver.response(405, b"method not allowed\n")
        if path == "/metrics":
            return httpserver.response(200, metrics.text(), prometheus_client.CONTENT_TYPE_LATEST)
        if path == "/healthz":
            return httpserver.response(200, b"ok\n")
        if path == "/readyz":
            if ready():
                return httpserver.response(200, b"ready\n")
            return httpserver.response(503, b"not ready\n")
        return httpserver.response(404, b"not found\n")

    return handle
