"""The extauthz sidecar of a waypoint: whether it runs, its generated config, and the user's Rego.

The sidecar exists only when some ExtAuthzPolicy or CUSTOM AuthorizationPolicy reaches the
waypoint (``model.Waypoint.needs_extauthz``). Its config (JWT providers, listen addresses,
module paths) is generated into ``<gateway>-extauthz``; the Rego is the user's, kept in a
ConfigMap named by the ``extauthzPolicyConfigMap`` setting (default
``<gateway>-extauthz-policy``) whose ``*.rego`` (and ``*.json`` data) keys become the modules.
extauthz loads modules once, so the digest of that ConfigMap goes into the pod's config hash: a
Rego change rolls the pods. With the ``extauthzOpaURL`` setting (the OPA overlay) extauthz
asks that OPA instead, and no Rego ConfigMap is mounted.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import yaml

from extauthz import contract
from waypoint import model, names, policy
from waypoint.kube import constants, gateway, settings

MODULE_SUFFIXES = (".rego", ".json")


@dataclasses.dataclass(frozen=True)
class Sidecar:
    """What the generated objects need to run extauthz next to Envoy."""

    config_yaml: str  # the generated config.yaml
    policy_config_map: str  # the user's Rego ConfigMap at EXTAUTHZ_POLICY_MOUNT; "" with OPA
    policy_keys: tuple[str, ...]  # its module keys, in the order extauthz loads them
    policy_digest: str  # content hash of those keys


def policy_config_map_name(gw: Mapping[str, Any], conf: settings.Settings) -> str:
    namespace, name = gateway.key(gw)
    return (
        conf.extauthz_policy_config_map
        or names.names_for(namespace, name).extauthz_policy_config_map
    )


def wanted(conf: settings.Settings, waypoint: model.Waypoint) -> bool:
    """The controller runs the sidecar: a policy needs it and the setting does not forbid it."""
    return conf.extauthz and waypoint.needs_extauthz


def plan(
    gw: Mapping[str, Any],
    conf: settings.Settings,
    waypoint: model.Waypoint,
    rego: Mapping[str, Any] | None,
) -> Sidecar | None:
    """The sidecar for ``waypoint``, or None when it needs none.

    ``rego`` is the user's Rego ConfigMap as found (None: missing). A needed sidecar without
    Rego is a SettingsError naming the ConfigMap: better to keep the last good objects than to
    roll out pods whose extauthz cannot start (every authorized route would then fail closed).
    """
    if not wanted(conf, waypoint):
        return None
    if conf.extauthz_opa_url:
        config = _config(waypoint, ())
        config["policy"] = {"engine": "opa", "opa": {"url": conf.extauthz_opa_url}}
        return Sidecar(yaml.safe_dump(config, sort_keys=True), "", (), "")
    namespace, name = gateway.key(gw)
    cm_name = policy_config_map_name(gw, conf)
    where = (
        f"Gateway {namespace}/{name}: an ExtAuthzPolicy needs Rego, but ConfigMap "
        f"{namespace}/{cm_name} (setting extauthzPolicyConfigMap, annotation "
        "waypoint.dev/extauthz-policy-configmap)"
    )
    if rego is None:
        raise settings.SettingsError(f"{where} was not found")
    data: Mapping[str, str] = rego.get("data") or {}
    keys = tuple(sorted(key for key in data if key.endswith(MODULE_SUFFIXES)))
    if not any(key.endswith(".rego") for key in keys):
        raise settings.SettingsError(f"{where} has no *.rego key")
    config = _config(waypoint, tuple(f"{constants.EXTAUTHZ_POLICY_MOUNT}/{key}" for key in keys))
    digest = hashlib.sha256()
    for key in keys:
        digest.update(f"{key}\0{len(data[key])}\0{data[key]}".encode())
    return Sidecar(
        config_yaml=yaml.safe_dump(config, sort_keys=True),
        policy_config_map=cm_name,
        policy_keys=keys,
        policy_digest=digest.hexdigest()[:16],
    )


def _config(waypoint: model.Waypoint, modules: tuple[str, ...]) -> contract.ConfigDoc:
    return policy.extauthz_config(
        waypoint,
        listen=constants.EXTAUTHZ_LISTEN,
        modules=modules,
        # The kubelet probes from outside the pod's loopback.
        metrics_listen=f"0.0.0.0:{constants.EXTAUTHZ_HEALTH_PORT}",
    )
