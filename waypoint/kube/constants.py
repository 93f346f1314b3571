"""Names the waypoint controller shares with users, Istio tooling and the Gateway API."""

from __future__ import annotations

GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_API_VERSION = f"{GATEWAY_API_GROUP}/v1"

# Policy attachment (docs/policies.md): our own kinds, and Istio's RequestAuthentication and
# AuthorizationPolicy.
POLICY_API_VERSION = "policy.waypoint.dev/v1alpha1"
ISTIO_SECURITY_API_VERSION = "security.istio.io/v1"

GATEWAY_CLASS = "waypoint"
CONTROLLER_NAME = "waypoint.dev/controller"
FIELD_MANAGER = "waypoint-controller"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "waypoint-controller"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
# ztunnel must not redirect the waypoint's own traffic back into itself (Istio does the same).
DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"

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
DATAPLANE_MODE_AMBIENT = "ambient"

# Tuning annotations on the Gateway (they win over the parametersRef ConfigMap).
ANNOTATION_PREFIX = "waypoint.dev/"
CONFIG_HASH_ANNOTATION = "waypoint.dev/config-hash"

CONFIG_KEY = "envoy.yaml"
CONFIG_MOUNT = "/etc/waypoint"
EXTAUTHZ_CONFIG_MOUNT = "/etc/extauthz"
EXTAUTHZ_CONFIG_KEY = "config.yaml"
# The user's Rego modules (a ConfigMap named by the extauthz-policy-configmap setting).
EXTAUTHZ_POLICY_MOUNT = "/etc/extauthz-policies"  # not nested in the read-only config mount
# Inside the pod only Envoy talks to extauthz; the kubelet probes its health port.
EXTAUTHZ_LISTEN = "127.0.0.1:9191"
# A user's Rego ConfigMap with this label is watched: an edit rolls the waypoints of its
# namespace at once instead of at the next resync.
EXTAUTHZ_POLICY_LABEL = "waypoint.dev/extauthz-policy"
EXTAUTHZ_HEALTH_PORT = 9464

GATEWAY_API_INSTALL_HINT = (
    "install the Gateway API CRDs first: kubectl apply --server-side -f "
    "https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.3.0/standard-install.yaml"
)
# istioctl's revision label: which control-plane revision owns the object.
REVISION = "istio.io/rev"
