"""Kubernetes objects for waypoints, computed without a cluster.

Pure functions only: a Gateway (plus its optional ``infrastructure.parametersRef`` ConfigMap and
its annotations) becomes the ServiceAccount, ConfigMap, Service, Deployment, autoscaler and
disruption budget the controller applies, plus the extauthz sidecar and its config while a policy
needs it (``extauthz``). ``waypoint.controller`` is what talks to the API.
"""
