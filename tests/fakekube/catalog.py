"""The API resources the fake server serves, and the Gateway API ones it can leave out."""

from __future__ import annotations

import dataclasses

GATEWAY_API_GROUP = "gateway.networking.k8s.io"


@dataclasses.dataclass(frozen=True)
class Resource:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    status: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        return self.group, self.plural


BUILTIN = (
    Resource("", "v1", "Namespace", "namespaces", namespaced=False, status=True),
    Resource("", "v1", "Service", "services", status=True),
    Resource("", "v1", "ConfigMap", "configmaps"),
    Resource("", "v1", "Secret", "secrets"),
    Resource("", "v1", "ServiceAccount", "serviceaccounts"),
    Resource("", "v1", "Pod", "pods", status=True),
    Resource("", "v1", "Event", "events"),
    Resource("apps", "v1", "Deployment", "deployments", status=True),
    Resource(
        "autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", status=True
    ),
    Resource("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", status=True),
    Resource("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    Resource("coordination.k8s.io", "v1", "Lease", "leases"),
)

GATEWAY_API = (
    Resource(GATEWAY_API_GROUP, "v1", "GatewayClass", "gatewayclasses", False, status=True),
    Resource(GATEWAY_API_GROUP, "v1", "Gateway", "gateways", status=True),
    Resource(GATEWAY_API_GROUP, "v1", "HTTPRoute", "httproutes", status=True),
    Resource(GATEWAY_API_GROUP, "v1", "GRPCRoute", "grpcroutes", status=True),
)
