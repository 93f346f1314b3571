"""Deterministic names for generated Envoy resources and Kubernetes objects, each with its
parse inverse.

Names follow Istio's shapes where Istio has one (``outbound|80||echo.ns.svc.cluster.local``,
``inbound-vip|80|echo.ns.svc.cluster.local``), so config dumps read the same to Istio users, and
every name can be taken apart again for status, metrics and debugging. SPIFFE IDs (the
identities in workload certificates and RBAC principals) live here too: they are names the
waypoint generates and parses, and pure strings, so callers need no TLS library for them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

CLUSTER_DOMAIN = "cluster.local"

CONNECT_TERMINATE = "connect_terminate"
CONNECT_ORIGINATE = "connect_originate"
PROXY_TERMINATE = "proxy_terminate"  # the sandwich listener: ztunnel's PROXY v2 connections
READINESS = "readiness"
STATS = "stats"


@dataclasses.dataclass(frozen=True)
class HostRef:
    """A Service (``kind == "svc"``) or a Pod (``kind == "pod"``) in a namespace."""

    kind: str
    namespace: str
    name: str

    def fqdn(self) -> str:
        if self.kind == "svc":
            return f"{self.name}.{self.namespace}.svc.{CLUSTER_DOMAIN}"
        return f"{self.name}.{self.namespace}.pod"


def _parse_host(host: str) -> HostRef:
    svc_suffix = f".svc.{CLUSTER_DOMAIN}"
    if host.endswith(svc_suffix):
        parts = host[: -len(svc_suffix)].split(".")
        kind = "svc"
    elif host.endswith(".pod"):
        parts = host[: -len(".pod")].split(".")
        kind = "pod"
    else:
        raise ValueError(f"not a service or pod host: {host!r}")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"host needs exactly <name>.<namespace>: {host!r}")
    return HostRef(kind, parts[1], parts[0])


def service_host(namespace: str, name: str) -> str:
    return HostRef("svc", namespace, name).fqdn()


def outbound_cluster(ref: HostRef, port: int) -> str:
    """The upstream cluster for a Service port or a Pod port."""
    return f"outbound|{port}||{ref.fqdn()}"


def parse_outbound_cluster(name: str) -> tuple[HostRef, int]:
    parts = name.split("|")
    if len(parts) != 4 or parts[0] != "outbound" or parts[2] != "":
        raise ValueError(f"not an outbound cluster name: {name!r}")
    return _parse_host(parts[3]), int(parts[1])


def inbound_listener(ref: HostRef, port: int) -> str:
    """The internal listener (and the cluster that reaches it) for a destination port."""
    prefix = "inbound-vip" if ref.kind == "svc" else "inbound-pod"
    return f"{prefix}|{port}|{ref.fqdn()}"


def parse_inbound_listener(name: str) -> tuple[HostRef, int]:
    parts = name.split("|")
    if len(parts) != 3 or parts[0] not in ("inbound-vip", "inbound-pod"):
        raise ValueError(f"not an inbound listener name: {name!r}")
    ref = _parse_host(parts[2])
    if (ref.kind == "svc") != (parts[0] == "inbound-vip"):
        raise ValueError(f"listener prefix does not match host kind: {name!r}")
    return ref, int(parts[1])


@dataclasses.dataclass(frozen=True)
class RouteName:
    """Where a route came from: ``<kind>/<ns>/<name>/<rule>/<match>``.

    ``rule`` is the rule's own name when it has one (Gateway API named rules), else its index.
    """

    kind: str
    namespace: str
    name: str
    rule: str
    match: int

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}/{self.rule}/{self.match}"


def route_name(kind: str, namespace: str, name: str, rule: str | int, match: int) -> str:
    return str(RouteName(kind.lower(), namespace, name, str(rule), match))


def parse_route_name(text: str) -> RouteName:
    parts = text.split("/")
    if len(parts) != 5 or not all(parts):
        raise ValueError(f"not a route name: {text!r}")
    return RouteName(parts[0], parts[1], parts[2], parts[3], int(parts[4]))


def default_route_name(ref: HostRef, port: int) -> str:
    """The catch-all route of a destination that has no route attached."""
    return f"default/{ref.namespace}/{ref.name}/{port}"


# --- the Kubernetes objects generated for a Gateway ----------------------------------------
# The ServiceAccount, Deployment, Service, autoscaler and disruption budget all carry the
# Gateway's own name (as Istio's waypoints do), so ``kubectl get deploy <gateway>`` just works.
# The rendered config lives in ``<gateway>-envoy-config``, the extauthz sidecar's (when some
# policy needs it) in ``<gateway>-extauthz``.

CONFIG_MAP_SUFFIX = "-envoy-config"
EXTAUTHZ_CONFIG_SUFFIX = "-extauthz"
EXTAUTHZ_POLICY_SUFFIX = "-extauthz-policy"  # the user's Rego, by default
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MAX_LABEL = 63


class InvalidName(ValueError):
    """A Gateway name cannot name the objects generated for it."""


@dataclasses.dataclass(frozen=True)
class ObjectNames:
    """What each generated object of one Gateway is called."""

    gateway: str

    @property
    def service_account(self) -> str:
        return self.gateway

    @property
    def deployment(self) -> str:
        return self.gateway

    @property
    def service(self) -> str:
        return self.gateway

    @property
    def autoscaler(self) -> str:
        return self.gateway

    @property
    def disruption_budget(self) -> str:
        return self.gateway

    @property
    def config_map(self) -> str:
        return config_map_name(self.gateway)

    @property
    def extauthz_config_map(self) -> str:
        return self.gateway + EXTAUTHZ_CONFIG_SUFFIX

    @property
    def extauthz_policy_config_map(self) -> str:
        """The default name of the user's Rego ConfigMap (not generated: the user's own)."""
        return self.gateway + EXTAUTHZ_POLICY_SUFFIX


def names_for(namespace: str, gateway: str) -> ObjectNames:
    """The names for Gateway ``namespace/gateway``; it must be a DNS-1035 label to name a Service."""
    if len(gateway) > _MAX_LABEL or not _DNS_1035.match(gateway):
        raise InvalidName(
            f"Gateway {namespace}/{gateway}: the name must be a DNS-1035 label "
            f"(lower case, at most {_MAX_LABEL} characters, starting with a letter) because it "
            "also names the waypoint's Service"
        )
    return ObjectNames(gateway)


def config_map_name(gateway: str) -> str:
    return gateway + CONFIG_MAP_SUFFIX


def parse_config_map_name(name: str) -> str:
    """The Gateway whose rendered config ConfigMap is called ``name``."""
    if not name.endswith(CONFIG_MAP_SUFFIX) or len(name) == len(CONFIG_MAP_SUFFIX):
        raise ValueError(f"not a waypoint config ConfigMap name: {name!r}")
    return name[: -len(CONFIG_MAP_SUFFIX)]


def parse_extauthz_config_map_name(name: str) -> str:
    """The Gateway whose extauthz sidecar config ConfigMap is called ``name``."""
    if not name.endswith(EXTAUTHZ_CONFIG_SUFFIX) or len(name) == len(EXTAUTHZ_CONFIG_SUFFIX):
        raise ValueError(f"not a waypoint extauthz ConfigMap name: {name!r}")
    return name[: -len(EXTAUTHZ_CONFIG_SUFFIX)]


def gateway_of(kind: str, name: str) -> str:
    """The Gateway that a generated object of ``kind`` named ``name`` belongs to."""
    if kind == "ConfigMap":
        if name.endswith(EXTAUTHZ_CONFIG_SUFFIX):
            return parse_extauthz_config_map_name(name)
        return parse_config_map_name(name)
    if kind in (
        "ServiceAccount",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ):
        return name
    raise ValueError(f"the controller generates no {kind}")


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address literal (IPv6 with or without brackets), not a name."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def authority(address: str, port: int) -> str:
    """The CONNECT authority ztunnel sends: ``ip:port``, IPv6 bracketed."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def parse_authority(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not an ip:port authority: {text!r}")
    return host, int(port)


# --- SPIFFE IDs: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> ---

_SPIFFE_RE = re.compile(r"^spiffe://([^/]+)/ns/([^/]+)/sa/([^/]+)$")
_TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]+$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%-]+$")


def check_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a valid SPIFFE trust domain, else raise ValueError."""
    if not _TRUST_DOMAIN_RE.match(trust_domain):
        raise ValueError(f"invalid SPIFFE trust domain {trust_domain!r}")
    return trust_domain


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """Return ``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``."""
    check_trust_domain(trust_domain)
    for what, value in (("namespace", namespace), ("service account", service_account)):
        if not _SEGMENT_RE.match(value):
            raise ValueError(f"invalid {what} {value!r} for a SPIFFE ID")
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def parse_spiffe_id(value: str) -> tuple[str, str, str]:
    """Invert :func:`spiffe_id`: return ``(trust_domain, namespace, service_account)``."""
    match = _SPIFFE_RE.match(value)
    if match is None:
        raise ValueError(
            f"not a workload SPIFFE ID {value!r}: expected spiffe://<trust-domain>/ns/<ns>/sa/<sa>"
        )
    trust_domain, namespace, service_account = match.groups()
    spiffe_id(trust_domain, namespace, service_account)  # validates every segment
    return trust_domain, namespace, service_account


def trust_domain_of(value: str) -> str:
    """Return the trust domain of any ``spiffe://`` URI."""
    if not value.startswith("spiffe://"):
        raise ValueError(f"not a SPIFFE ID {value!r}")
    return value[len("spiffe://") :].split("/", 1)[0]
