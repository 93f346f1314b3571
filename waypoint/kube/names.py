"""Names of the objects generated for a Gateway, each with its parse inverse.

The ServiceAccount, Deployment, Service, autoscaler and disruption budget all carry the
Gateway's own name (as Istio's waypoints do), so ``kubectl get deploy <gateway>`` just works.
The rendered config lives in ``<gateway>-envoy-config``, the extauthz sidecar's (when some
policy needs it) in ``<gateway>-extauthz``.
"""

from __future__ import annotations

import dataclasses
import re

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
