"""Live config over xDS: an ADS server that feeds waypoint Envoys without restarts.

Modules:

- :mod:`waypoint.xds.naming` — how an Envoy node names the waypoint it serves, and the inverse.
- :mod:`waypoint.xds.snapshot` — content-versioned resource snapshots built from protobufs.
- :mod:`waypoint.xds.cache` — the per-waypoint snapshot cache: last good, NACKs, status.
- :mod:`waypoint.xds.server` — the Aggregated Discovery Service (SotW and delta) on grpc.aio.
- :mod:`waypoint.xds.bootstrap` — the minimal Envoy bootstrap that points at the server.
- :mod:`waypoint.xds.publish` — a translation's waypoints into the cache (file source, controller).
- :mod:`waypoint.xds.filesource` — watches a directory of YAML and pushes snapshots on change.
- :mod:`waypoint.xds.metrics` — Prometheus metrics of the server and cache.
- :mod:`waypoint.xds.runner` — the server and its event loop in a background thread.
"""
