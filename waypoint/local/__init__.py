"""Tools for running and poking at a waypoint without a cluster.

Product commands (``waypoint up``, ``waypoint request``, ``waypoint certs``) use them, the core
never imports them. ``ca`` is the dev CA that issues SPIFFE certificates; ``echo`` the
Istio-style echo backend; ``workloads`` derives, purely, which backends a world needs (pods,
ports, protocols, mesh membership); ``stack`` starts them, with HBONE terminators for mesh pods
and a real Envoy waypoint, for ``waypoint up``, the conformance replay and the load tests;
``sidecar`` runs extauthz next to it; ``example/`` is the example world (``examples/local``).
"""
