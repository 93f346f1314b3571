"""``waypoint render --kubernetes``: every object the controller would apply, computed offline."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from waypoint import pipeline, wellknown
from waypoint.envoy import options as envoy_options
from waypoint.kube import constants, extauthz, gateway, objects, settings

# Objects + waypoint key + options → the waypoint's bootstrap and IR (``pipeline.render``).
Renderer = Callable[
    [Sequence[Mapping[str, Any]], str, str, envoy_options.BootstrapOptions], pipeline.Rendered
]
# (namespace, name) → a ConfigMap, or None when there is none.
ConfigMapLookup = Callable[[str, str], Mapping[str, Any] | None]


def waypoint_options(
    base: envoy_options.BootstrapOptions, namespace: str, name: str
) -> envoy_options.BootstrapOptions:
    """``base`` with this waypoint's Envoy node id and cluster (as ``waypoint render`` sets them)."""
    return dataclasses.replace(
        base,
        node_id=base.node_id or f"waypoint~{namespace}~{name}",
        cluster=base.cluster or f"{namespace}/{name}",
    )


@dataclasses.dataclass(frozen=True)
class Plan:
    """One Gateway's generated objects and the rendering (translation included) behind them."""

    objects: list[dict[str, Any]]
    rendered: pipeline.Rendered


def gateway_plan(
    gw: Mapping[str, Any],
    conf: settings.Settings,
    objs: Sequence[Mapping[str, Any]],
    options: envoy_options.BootstrapOptions,
    renderer: Renderer,
    config_map: ConfigMapLookup,
) -> Plan:
    """Render one Gateway's config, then add the extauthz sidecar when a policy needs it (its
    Rego ConfigMap looked up through ``config_map``)."""
    namespace, name = gateway.key(gw)
    opts = dataclasses.replace(
        waypoint_options(options, namespace, name), extauthz_address=constants.EXTAUTHZ_LISTEN
    )
    rendered = renderer(objs, namespace, name, opts)
    rego = None
    if extauthz.wanted(conf, rendered.waypoint):
        rego = config_map(namespace, extauthz.policy_config_map_name(gw, conf))
    sidecar = extauthz.plan(gw, conf, rendered.waypoint, rego)
    desired = objects.desired_objects(
        gw, conf, rendered.bootstrap_yaml, opts, sidecar, rendered.waypoint.proxy_port
    )
    return Plan(desired, rendered)


def gateway_objects(
    gw: Mapping[str, Any],
    conf: settings.Settings,
    objs: Sequence[Mapping[str, Any]],
    options: envoy_options.BootstrapOptions,
    renderer: Renderer,
    config_map: ConfigMapLookup,
) -> list[dict[str, Any]]:
    """The generated objects of one Gateway (``gateway_plan`` without the rendering)."""
    return gateway_plan(gw, conf, objs, options, renderer, config_map).objects


def render_kubernetes(
    objs: Sequence[Mapping[str, Any]],
    options: envoy_options.BootstrapOptions,
    renderer: Renderer = pipeline.render,
    defaults: settings.Settings | None = None,
) -> list[dict[str, Any]]:
    """The generated objects of every waypoint Gateway in ``objs``, Gateways sorted by key.

    The objects carry no ownerReferences unless the input Gateways have UIDs (offline input
    usually has none). Raises ValueError naming the Gateway for any Gateway that cannot render.
    """
    config_maps = {
        gateway.key(obj): obj
        for obj in objs
        if obj.get("kind") == "ConfigMap" and obj.get("apiVersion") == "v1"
    }
    result: list[dict[str, Any]] = []
    for gw in sorted((o for o in objs if gateway.is_waypoint(o)), key=gateway.key):
        namespace, name = gateway.key(gw)
        found = gateway.problems(gw)
        if found:
            raise ValueError("; ".join(found))
        ref = settings.parameters_ref(gw)
        config_map = config_maps.get((namespace, ref)) if ref else None
        if ref and config_map is None:
            raise ValueError(
                f"Gateway {namespace}/{name}: parametersRef ConfigMap {namespace}/{ref} is not in the input"
            )
        conf = settings.resolve(gw, config_map, defaults, _class_config_map(objs, config_maps))
        result.extend(
            gateway_objects(
                gw, conf, objs, options, renderer, lambda ns, n: config_maps.get((ns, n))
            )
        )
    return result


def _class_config_map(
    objs: Sequence[Mapping[str, Any]], config_maps: Mapping[tuple[str, str], Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    for obj in objs:
        if obj.get("kind") == "GatewayClass" and gateway.key(obj)[1] == wellknown.GATEWAY_CLASS:
            ref = settings.class_parameters_ref(obj)
            if ref is None:
                return None
            if ref not in config_maps:
                raise ValueError(
                    f"GatewayClass {wellknown.GATEWAY_CLASS}: parametersRef ConfigMap "
                    f"{ref[0]}/{ref[1]} is not in the input"
                )
            return config_maps[ref]
    return None
