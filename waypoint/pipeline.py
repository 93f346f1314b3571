"""The pure pipeline end to end: Kubernetes objects → IR → Envoy bootstrap.

The CLI, the controller and the xDS file source all render through here, so they render the
same config from the same objects. Reading the objects from files is theirs
(``waypoint.runtime.inputs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from waypoint import model, translate
from waypoint.envoy import bootstrap, options


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A rendered waypoint: the bootstrap and the translation it came from."""

    translation: model.Translation
    waypoint: model.Waypoint
    bootstrap: dict[str, Any]
    bootstrap_yaml: str


def translate_objects(
    objects: Sequence[Mapping[str, Any]],
    trust_domain: str = "cluster.local",
    check_schemas: bool = True,
) -> model.Translation:
    return translate.translate(objects, trust_domain=trust_domain, check_schemas=check_schemas)


class WaypointNotFound(LookupError):
    """The requested waypoint is not among the accepted Gateways."""


def render(
    objects: Sequence[Mapping[str, Any]],
    namespace: str,
    name: str,
    opts: options.BootstrapOptions,
) -> Rendered:
    """Translate the world and build the static Envoy bootstrap of one waypoint."""
    return render_translation(translate_objects(objects, opts.trust_domain), namespace, name, opts)


def render_translation(
    translation: model.Translation,
    namespace: str,
    name: str,
    opts: options.BootstrapOptions,
) -> Rendered:
    """The static Envoy bootstrap of one waypoint of an existing translation."""
    waypoint = accepted_waypoint(translation, namespace, name)
    message = bootstrap.build(waypoint, opts)
    return Rendered(
        translation=translation,
        waypoint=waypoint,
        bootstrap=bootstrap.to_dict(message),
        bootstrap_yaml=bootstrap.to_yaml(message),
    )


def accepted_waypoint(translation: model.Translation, namespace: str, name: str) -> model.Waypoint:
    """Waypoint ``namespace/name`` of ``translation``; if there is none, WaypointNotFound says
    why in the words of the Gateway's conditions (every renderer reports it this way)."""
    waypoint = translation.waypoint(namespace, name)
    if waypoint is None:
        raise WaypointNotFound(_rejection(translation, namespace, name))
    return waypoint


def _rejection(translation: model.Translation, namespace: str, name: str) -> str:
    for status in translation.statuses:
        ref = status.ref
        if (ref.kind, ref.namespace, ref.name) == ("Gateway", namespace, name):
            reasons = "; ".join(f"{c.reason}: {c.message}" for c in status.failed)
            return f"Gateway {namespace}/{name} is not an accepted waypoint: {reasons}"
    known = ", ".join(f"{w.namespace}/{w.name}" for w in translation.waypoints) or "none"
    return f"no waypoint Gateway {namespace}/{name} in the input (waypoints found: {known})"
