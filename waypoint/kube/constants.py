"""Names that only the generated Kubernetes objects and the controller use.

The names translation reads too (API groups, the GatewayClass, Istio's labels and
annotations, the HBONE and PROXY ports) are in ``waypoint.wellknown``.
"""

from __future__ import annotations

CONTROLLER_NAME = "waypoint.dev/controller"
FIELD_MANAGER = "waypoint-controller"

NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"

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
