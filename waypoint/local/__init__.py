"""Run a world of Kubernetes objects on one machine, with no cluster.

``workloads`` derives, purely, which backends a world needs (pods, ports, protocols, mesh
membership); ``stack`` starts them, with HBONE terminators for mesh pods and a real Envoy
waypoint, for ``waypoint up``, the conformance replay and the load tests.
"""
