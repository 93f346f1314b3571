"""Envoy waypoint proxies for ambient meshes: Gateway API in, HBONE-terminating Envoy config out."""
