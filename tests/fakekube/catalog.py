"""The API resources the fake server serves, and the Gateway API and policy ones it can leave out.

The policy kinds come from our own CRDs in ``manifests/base/crds/`` (so the fake serves exactly
what ``kubectl apply -k manifests/base`` would install) plus Istio's RequestAuthentication.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import yaml

CRD_DIR = pathlib.Path(__file__).resolve().parents[2] / "manifests" / "base" / "crds"

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

REQUEST_AUTHENTICATION = Resource(
    "security.istio.io", "v1", "RequestAuthentication", "requestauthentications", status=True
)
AUTHORIZATION_POLICY = Resource(
    "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies", status=True
)


def from_crd(crd: dict[str, Any]) -> list[Resource]:
    """The served versions of a CustomResourceDefinition."""
    spec = crd["spec"]
    return [
        Resource(
            spec["group"],
            version["name"],
            spec["names"]["kind"],
            spec["names"]["plural"],
            namespaced=spec["scope"] == "Namespaced",
            status="status" in (version.get("subresources") or {}),
        )
        for version in spec["versions"]
        if version.get("served")
    ]


@functools.cache
def policies() -> tuple[Resource, ...]:
    found: list[Resource] = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                found.extend(from_crd(doc))
    return (*found, REQUEST_AUTHENTICATION, AUTHORIZATION_POLICY)


def all_resources() -> tuple[Resource, ...]:
    """Everything a fully equipped fake serves."""
    return (*BUILTIN, *GATEWAY_API, *policies())
