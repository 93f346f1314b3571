"""The API resources the fake server serves, and the Gateway API and policy ones it can leave out.

The policy kinds come from our own CRDs in ``manifests/base/crds/`` (so the fake serves exactly
what ``kubectl apply -k manifests/base`` would install) plus Istio's RequestAuthentication.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from tests.fakekube import builtin

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
    # A custom resource's openAPIV3Schema; None for built-in kinds.
    schema: Any = dataclasses.field(default=None, compare=False, hash=False)
    # Field path (names only) → x-kubernetes-list-map-keys, for server-side apply.
    lists: Any = dataclasses.field(default=None, compare=False, hash=False)

    @property
    def list_keys(self) -> dict[tuple[str, ...], tuple[str, ...]]:
        if self.lists is not None:
            return dict(self.lists)
        return builtin.LIST_MAP_KEYS.get(self.kind, {})

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
    Resource("batch", "v1", "Job", "jobs", status=True),
    Resource(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        namespaced=False,
        status=True,
    ),
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
            schema=(version.get("schema") or {}).get("openAPIV3Schema"),
            lists=dict(list_map_keys((version.get("schema") or {}).get("openAPIV3Schema") or {})),
        )
        for version in spec["versions"]
        if version.get("served")
    ]


def list_map_keys(
    schema: Mapping[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Every ``x-kubernetes-list-type: map`` list of a schema, with its keys, and every
    ``x-kubernetes-map-type: atomic`` object, with none (see ``ssa``)."""
    if schema.get("x-kubernetes-list-type") == "map":
        yield path, tuple(schema.get("x-kubernetes-list-map-keys") or ())
    if schema.get("x-kubernetes-map-type") == "atomic":
        yield path, ()
    for name, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, Mapping):
            yield from list_map_keys(sub, (*path, name))
    if isinstance(schema.get("items"), Mapping):
        yield from list_map_keys(schema["items"], path)
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from list_map_keys(schema["additionalProperties"], (*path, "*"))


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
