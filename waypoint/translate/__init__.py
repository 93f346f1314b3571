"""Kubernetes objects (plain dicts from YAML) → the waypoint IR, plus a status for each input.

Pure: no I/O, no Envoy and no Kubernetes client. Bad input never raises; it becomes a status
condition on the object at fault (Gateway API ``Accepted``/``ResolvedRefs``, Istio's
``istio.io/WaypointBound``) and only that object, or that rule, is left out. The same objects in
any order give an identical ``Translation``.

Stages: ``index`` (objects by kind), ``gateways`` (which Gateways are waypoints), ``services``
(ports, protocols, endpoints, clusters), ``binding`` (who is served by which waypoint),
``routes``/``rules``/``matches``/``filters`` (GAMMA routes), ``assemble`` (one Waypoint each),
``policies`` (ExtAuthzPolicy, TrafficPolicy and RequestAuthentication attachment),
``schemacheck`` (problems against the published schemas, as warnings).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from waypoint import model
from waypoint.translate import (
    assemble,
    binding,
    gateways,
    index,
    policies,
    routes,
    schemacheck,
    services,
    status,
)


def translate(
    objects: Sequence[Mapping[str, Any]],
    trust_domain: str = "cluster.local",
    check_schemas: bool = True,
) -> model.Translation:
    """Every accepted waypoint (sorted by namespace, name) and every judged object's status.

    With ``check_schemas`` (the default) objects are also checked against their published
    schemas (``schemacheck``); off only to measure what the check costs."""
    book = status.Book()
    idx = index.Index(objects, book)
    specs = gateways.waypoints(idx, book)
    world = services.World(idx, book)
    bound = binding.bind(idx, world, specs, book)
    attached = routes.attach(idx, world, bound, book)
    shares = assemble.Shares(world, bound, attached)
    waypoints = tuple(
        assemble.waypoint(spec, trust_domain, world, shares) for _key, spec in sorted(specs.items())
    )
    # Policy attachment (waypoint.policy kinds) comes last: it only refines the result.
    context = policies.Context(idx, world, specs, bound, trust_domain)
    waypoints = policies.attach(objects, context, waypoints, book)
    if check_schemas:  # last: a route's parents are known by now
        schemacheck.report(objects, book)
    return model.Translation(waypoints=waypoints, statuses=book.statuses())
