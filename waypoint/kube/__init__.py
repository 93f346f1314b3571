"""Kubernetes objects for waypoints, computed without a cluster.

Pure functions only: a Gateway (plus its optional ``infrastructure.parametersRef`` ConfigMap and
its annotations) becomes the ServiceAccount, ConfigMap, Service, Deployment, autoscaler and
disruption budget the controller applies. ``waypoint.controller`` is what talks to the API.
"""
