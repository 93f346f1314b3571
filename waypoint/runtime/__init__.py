"""Processes the waypoint runs locally: the real Envoy binary and helpers around it."""
