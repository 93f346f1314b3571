"""Names the waypoint shares with users, Istio tooling and the Gateway API.

API groups and versions, the GatewayClass, and the labels, annotations and ports whose
meaning Istio or the Gateway API fixed. Translation reads them and the Kubernetes side writes
them, so they live here, below both: each string is written once. What only the generated
Kubernetes objects use (mount paths, field manager, config keys) is in
``waypoint.kube.constants``.
"""

from __future__ import annotations

CORE_GROUP = ""
DISCOVERY_GROUP = "discovery.k8s.io"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_API_VERSION = f"{GATEWAY_API_GROUP}/v1"

# Policy attachment (docs/policies.md): our own kinds, and Istio's RequestAuthentication and
# AuthorizationPolicy.
POLICY_API_GROUP = "policy.waypoint.dev"
POLICY_API_VERSION = f"{POLICY_API_GROUP}/v1alpha1"
ISTIO_SECURITY_API_GROUP = "security.istio.io"
ISTIO_SECURITY_API_VERSION = f"{ISTIO_SECURITY_API_GROUP}/v1"

GATEWAY_CLASS = "waypoint"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "waypoint-controller"
GATEWAY_NAME_LABEL = f"{GATEWAY_API_GROUP}/gateway-name"
# ztunnel must not redirect the waypoint's own traffic back into itself (Istio does the same).
DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
DATAPLANE_MODE_AMBIENT = "ambient"

# Binding, exactly as Istio users know it.
USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR = "istio.io/waypoint-for"
FOR_SERVICE_ACCOUNT = "istio.io/for-service-account"

LISTENER_NAME = "mesh"
HBONE_PROTOCOL = "HBONE"
HBONE_PORT = 15008

# Istio's "sandwich": ztunnel terminates HBONE and hands each connection to the waypoint in
# plain TCP behind a PROXY v2 header. istiod reads the binding from this annotation on the
# Gateway, else on its GatewayClass (``PROXY/<port>``); kgateway's form is a listener with
# this protocol (docs/istio.md has the sources).
INBOUND_BINDING_ANNOTATION = "ambient.istio.io/waypoint-inbound-binding"
PROXY_PROTOCOL = "istio.io/PROXY"
PROXY_PORT = 15088
