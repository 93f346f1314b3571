"""Prometheus metrics of one controller, in its own registry (served on --metrics-listen)."""

from __future__ import annotations

import contextlib
import wsgiref.simple_server

import prometheus_client


class Metrics:
    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.reconciles = prometheus_client.Counter(
            "waypoint_controller_reconciles_total",
            "Reconciles by key kind and result.",
            ["kind", "result"],
            registry=self.registry,
        )
        self.reconcile_seconds = prometheus_client.Histogram(
            "waypoint_controller_reconcile_duration_seconds",
            "Time spent in one reconcile.",
            ["kind"],
            registry=self.registry,
        )
        self.writes = prometheus_client.Counter(
            "waypoint_controller_writes_total",
            "Writes sent to the API server, by verb and object kind.",
            ["verb", "kind"],
            registry=self.registry,
        )
        self.conflicts = prometheus_client.Counter(
            "waypoint_controller_conflicts_total",
            "409 conflicts met (and retried).",
            registry=self.registry,
        )
        # Per Gateway, so one waypoint's reconcile never overwrites another's count.
        self.foreign = prometheus_client.Gauge(
            "waypoint_controller_foreign_objects",
            "Objects in the way of a waypoint that the controller does not manage.",
            ["namespace", "gateway"],
            registry=self.registry,
        )
        self.rejected = prometheus_client.Gauge(
            "waypoint_controller_rejected_applies",
            "Generated objects of a waypoint whose last apply the API server rejected.",
            ["namespace", "gateway"],
            registry=self.registry,
        )
        self.queue_depth = prometheus_client.Gauge(
            "waypoint_controller_queue_depth",
            "Keys waiting in the work queue.",
            registry=self.registry,
        )
        self.watch_restarts = prometheus_client.Counter(
            "waypoint_controller_watch_restarts_total",
            "Watches restarted, by kind and reason (expired, error, timeout).",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.kind_unavailable = prometheus_client.Gauge(
            "waypoint_controller_kind_unavailable",
            "1 while an optional kind is left out of the world: not served (404) or not "
            "readable (403).",
            ["kind"],
            registry=self.registry,
        )
        self.leader = prometheus_client.Gauge(
            "waypoint_controller_leader",
            "1 while this replica holds the leader Lease.",
            registry=self.registry,
        )

    def forget_gateway(self, namespace: str, name: str) -> None:
        """Drop a Gateway's series (deleted, or not accepted: nothing of it is applied)."""
        for gauge in (self.foreign, self.rejected):
            with contextlib.suppress(KeyError):  # never measured
                gauge.remove(namespace, name)

    def serve(self, address: str) -> wsgiref.simple_server.WSGIServer:
        """Serve /metrics on ``host:port``; returns the server (call ``shutdown()``)."""
        host, _, port = address.rpartition(":")
        server, _thread = prometheus_client.start_http_server(
            int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry
        )
        return server
