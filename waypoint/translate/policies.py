"""Policy attachment: ExtAuthzPolicy, TrafficPolicy and RequestAuthentication → the IR.

Gateway API policy attachment (GEP-713) with the most specific target winning, per route and
per cluster: a route rule (HTTPRoute/GRPCRoute ``sectionName``) beats a route, which beats a
Service port (Service ``sectionName`` = port name), which beats a Service, which beats the
waypoint Gateway. Between policies of one kind on the same level the oldest wins, then the
smaller namespace/name. A winner replaces the losers wholesale; fields are never merged
across policies. HTTPRoute's own timeouts, retry and mirror filters win over a TrafficPolicy's.

Each policy gets ``Accepted`` (True where it applies somewhere; False with ``Invalid``,
``TargetNotFound`` or ``Conflicted``) and a per-target ancestor status, as Gateway API's
PolicyAncestorStatus. An invalid policy is left out; nothing else changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from waypoint import model, names, wellknown
from waypoint.translate import binding, fields, gateways, index, policyspecs, services, status

R_TARGET_NOT_FOUND = "TargetNotFound"

# Specificity levels, most specific last.
GATEWAY, SERVICE, SERVICE_PORT, ROUTE, ROUTE_RULE = range(5)
_ROUTE_KINDS = {"httproute": "HTTPRoute", "grpcroute": "GRPCRoute"}


@dataclasses.dataclass
class _Use:
    """Where one policy target ended up: found at all, and won somewhere."""

    found: bool = False
    won: bool = False
    why_missing: str = ""


# (kind, namespace, name) of the place a target names -> its (position, policy, target), so that
# finding the policies of a route or cluster never scans every policy (quadratic otherwise).
Place = tuple[str, str, str]
Candidates = dict[Place, list[tuple[int, policyspecs.Policy, policyspecs.Target]]]


@dataclasses.dataclass
class Context:
    """What attachment needs from translation, and the findings per policy target."""

    idx: index.Index
    world: services.World
    specs: Mapping[tuple[str, str], gateways.WaypointSpec]
    bound: binding.Bindings
    trust_domain: str
    policies: list[policyspecs.Policy] = dataclasses.field(default_factory=list)
    uses: dict[tuple[model.ObjectRef, policyspecs.Target], _Use] = dataclasses.field(
        default_factory=dict
    )
    mirror_problems: dict[model.ObjectRef, str] = dataclasses.field(default_factory=dict)
    authz: Candidates = dataclasses.field(default_factory=dict)
    route_traffic: Candidates = dataclasses.field(default_factory=dict)
    cluster_traffic: Candidates = dataclasses.field(default_factory=dict)
    authn: Candidates = dataclasses.field(default_factory=dict)
    authorization: Candidates = dataclasses.field(default_factory=dict)

    def use(self, policy: policyspecs.Policy, target: policyspecs.Target) -> _Use:
        return self.uses.setdefault((policy.ref, target), _Use())


# --- reading --------------------------------------------------------------------------------


def policy_object(raw: Mapping[str, Any]) -> index.Obj:
    """A policy as an ``index.Obj`` (the index keeps only the kinds routing needs)."""
    meta_raw = raw.get("metadata")
    meta = meta_raw if isinstance(meta_raw, Mapping) else {}
    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else None
    return index.Obj(
        group=index.group_of(raw.get("apiVersion")),
        kind=str(raw.get("kind")),
        namespace=namespace or "default",
        name=str(meta.get("name") or ""),
        labels={},
        annotations={},
        created=fields.timestamp(meta.get("creationTimestamp")),
        raw=raw,
    )


def read(objects: Iterable[Mapping[str, Any]], book: status.Book) -> list[policyspecs.Policy]:
    """Every valid policy, sorted by kind, namespace and name; invalid ones get a status."""
    found: dict[tuple[str, str, str], policyspecs.Policy] = {}
    for raw in objects:
        if not policyspecs.is_policy(raw):
            continue
        obj = policy_object(raw)
        try:
            fields.nonempty(obj.name, "metadata.name")
            policy = policyspecs.read(obj)
        except fields.Bad as exc:
            book.add(obj.ref, status.fail(status.ACCEPTED, status.R_INVALID, str(exc)))
            continue
        key = (obj.kind, obj.namespace, obj.name)
        if key not in found or policy.order() < found[key].order():
            found[key] = policy
    return [found[key] for key in sorted(found)]


# --- candidates per place -------------------------------------------------------------------


def _route_target(route_name: str) -> tuple[str, str, str, str] | None:
    """``(kind, namespace, name, rule)`` of a Gateway API route's IR name, else None."""
    try:
        parsed = names.parse_route_name(route_name)
    except ValueError:
        return None
    kind = _ROUTE_KINDS.get(parsed.kind)
    return None if kind is None else (kind, parsed.namespace, parsed.name, parsed.rule)


def _port_name(ctx: Context, destination: model.Destination) -> str | None:
    svc = ctx.world.services.get((destination.namespace, destination.name))
    port = svc.port(destination.port) if svc else None
    return port.name if port and port.name else None


def _level(
    target: policyspecs.Target,
    namespace: str,
    waypoint: model.Waypoint,
    service: tuple[str, str, str | None] | None,
    route: tuple[str, str, str, str] | None,
) -> int | None:
    """How specifically ``target`` (in ``namespace``) names this place; None if it does not."""
    kind = (target.group, target.kind)
    if kind == policyspecs.GATEWAY_KIND:
        hit = (namespace, target.name) == (waypoint.namespace, waypoint.name)
        return GATEWAY if hit and target.section is None else None
    if kind == policyspecs.SERVICE_KIND:
        if service is None or (namespace, target.name) != service[:2]:
            return None
        if target.section is None:
            return SERVICE
        return SERVICE_PORT if target.section == service[2] else None
    if route is None or (target.kind, namespace, target.name) != route[:3]:
        return None
    if target.section is None:
        return ROUTE
    return ROUTE_RULE if target.section == route[3] else None


def _candidates(policies: Iterable[policyspecs.Policy]) -> Candidates:
    found: Candidates = {}
    position = 0
    for policy in policies:
        for target in policy.targets:
            place = (target.kind, policy.ref.namespace, target.name)
            found.setdefault(place, []).append((position, policy, target))
            position += 1
    return found


def _near(
    candidates: Candidates,
    waypoint: model.Waypoint,
    service: tuple[str, str, str | None] | None,
    route: tuple[str, str, str, str] | None,
) -> list[tuple[int, policyspecs.Policy, policyspecs.Target]]:
    """The targets that may name this place, in policy then target order."""
    places = [(policyspecs.GATEWAY_KIND[1], waypoint.namespace, waypoint.name)]
    if service is not None:
        places.append((policyspecs.SERVICE_KIND[1], service[0], service[1]))
    if route is not None:
        places.append(route[:3])
    return sorted((c for place in places for c in candidates.get(place, ())), key=_position)


def _position(candidate: tuple[int, policyspecs.Policy, policyspecs.Target]) -> int:
    return candidate[0]


def _winner(
    ctx: Context,
    candidates: Candidates,
    waypoint: model.Waypoint,
    service: tuple[str, str, str | None] | None,
    route: tuple[str, str, str, str] | None,
) -> policyspecs.Policy | None:
    """The most specific, then oldest, policy naming this place; records every target hit."""
    ranked: list[tuple[int, policyspecs.Policy, policyspecs.Target]] = []
    for _at, policy, target in _near(candidates, waypoint, service, route):
        level = _level(target, policy.ref.namespace, waypoint, service, route)
        if level is not None:
            ctx.use(policy, target).found = True
            ranked.append((level, policy, target))
    if not ranked:
        return None
    best = max(level for level, _p, _t in ranked)
    top = sorted(
        ((p, t) for level, p, t in ranked if level == best),
        key=lambda item: (item[0].order(), item[0].source),
    )
    winner = top[0][0]
    for policy, target in top:
        if policy is winner:
            ctx.use(policy, target).won = True
    return winner


# --- applying -------------------------------------------------------------------------------


def _authz(policies: Sequence[policyspecs.Policy]) -> list[policyspecs.Policy]:
    return [p for p in policies if isinstance(p.body, model.ExtAuthz)]


def _traffic(policies: Sequence[policyspecs.Policy], route_part: bool) -> list[policyspecs.Policy]:
    found = []
    for p in policies:
        if isinstance(p.body, policyspecs.Traffic):
            wanted = p.body.has_route_part if route_part else p.body.cluster is not None
            if wanted:
                found.append(p)
    return found


@dataclasses.dataclass
class _RouteResult:
    policy: model.RoutePolicy | None
    timeouts: model.Timeouts | None
    retry: model.Retry | None
    mirrors: tuple[model.Mirror, ...]


def _mirror_cluster(
    ctx: Context,
    policy: policyspecs.Policy,
    mirror: policyspecs.MirrorRef,
    extra: dict[str, model.Cluster],
) -> model.Mirror | None:
    svc = ctx.world.services.get((policy.ref.namespace, mirror.name))
    port = svc.port(mirror.port) if svc else None
    if svc is None or port is None:
        ctx.mirror_problems[policy.ref] = (
            f"spec.mirror.backendRef: Service {policy.ref.namespace}/{mirror.name} "
            f"port {mirror.port} not found"
        )
        return None
    cluster = ctx.world.service_cluster(svc, port)
    extra.setdefault(cluster.name, cluster)
    return model.Mirror(cluster.name, mirror.percent)


def _route_result(
    ctx: Context,
    waypoint: model.Waypoint,
    service: tuple[str, str, str | None] | None,
    route_id: tuple[str, str, str, str] | None,
    current: tuple[model.Timeouts | None, model.Retry | None, tuple[model.Mirror, ...]],
    extra: dict[str, model.Cluster],
) -> _RouteResult:
    authz = _winner(ctx, ctx.authz, waypoint, service, route_id)
    traffic = _winner(ctx, ctx.route_traffic, waypoint, service, route_id)
    timeouts, retry, mirrors = current
    rate_limit = fault = None
    sources = [p.source for p in (authz, traffic) if p is not None]
    if traffic is not None:
        assert isinstance(traffic.body, policyspecs.Traffic)
        body = traffic.body
        rate_limit, fault = body.rate_limit, body.fault
        timeouts = timeouts or body.timeouts  # the HTTPRoute's own setting wins
        retry = retry or body.retry
        if not mirrors and body.mirror is not None:
            found = _mirror_cluster(ctx, traffic, body.mirror, extra)
            mirrors = (found,) if found else ()
    ext_authz = authz.body if authz is not None else None
    assert ext_authz is None or isinstance(ext_authz, model.ExtAuthz)
    policy = model.RoutePolicy(
        authz=ext_authz, rate_limit=rate_limit, fault=fault, sources=tuple(sources)
    )
    return _RouteResult(policy if sources else None, timeouts, retry, mirrors)


def _principal(ctx: Context, waypoint: model.Waypoint, destination: model.Destination) -> str:
    if destination.kind is model.DestinationKind.SERVICE:
        svc = ctx.world.services.get((destination.namespace, destination.name))
        accounts = ctx.world.service_accounts(svc) if svc else set()
    else:
        pod = ctx.world.pods.get((destination.namespace, destination.name))
        accounts = {pod.service_account} if pod and pod.service_account else set()
    if len(accounts) == 1:
        try:
            return names.spiffe_id(ctx.trust_domain, destination.namespace, accounts.pop())
        except ValueError:
            pass  # a service account name no SPIFFE ID can carry: vouch for ourselves
    ident = waypoint.identity
    return names.spiffe_id(ident.trust_domain, ident.namespace, ident.service_account)


def _destination(
    ctx: Context, waypoint: model.Waypoint, dest: model.Destination, extra: dict[str, model.Cluster]
) -> model.Destination:
    service = None
    if dest.kind is model.DestinationKind.SERVICE:
        service = (dest.namespace, dest.name, _port_name(ctx, dest))
    if not dest.protocol.is_http:
        return dest
    new_routes = []
    for r in dest.routes:
        result = _route_result(
            ctx, waypoint, service, _route_target(r.name), (r.timeouts, r.retry, r.mirrors), extra
        )
        new_routes.append(
            dataclasses.replace(
                r,
                policy=result.policy,
                timeouts=result.timeouts,
                retry=result.retry,
                mirrors=result.mirrors,
            )
        )
    default_policy = None
    if not dest.routes:
        default_policy = _route_result(ctx, waypoint, service, None, (None, None, ()), extra).policy
    out = dataclasses.replace(dest, routes=tuple(new_routes), policy=default_policy)
    needs_principal = (default_policy and default_policy.authz) or any(
        r.policy and r.policy.authz for r in out.routes
    )
    if needs_principal:
        out = dataclasses.replace(out, principal=_principal(ctx, waypoint, dest))
    return out


def _cluster(ctx: Context, waypoint: model.Waypoint, cluster: model.Cluster) -> model.Cluster:
    service = None
    svc = ctx.world.services.get((cluster.namespace, cluster.service))
    if svc is not None and cluster.name == names.outbound_cluster(svc.host, cluster.port):
        port = svc.port(cluster.port)
        service = (cluster.namespace, cluster.service, port.name if port and port.name else None)
    winner = _winner(ctx, ctx.cluster_traffic, waypoint, service, None)
    if winner is None:
        return cluster
    assert isinstance(winner.body, policyspecs.Traffic)
    assert winner.body.cluster is not None
    return dataclasses.replace(
        cluster, policy=dataclasses.replace(winner.body.cluster, sources=(winner.source,))
    )


def _authn_place(policy: policyspecs.Policy, target: policyspecs.Target) -> Place:
    """A Gateway target names the waypoint; any other names what it serves, by name."""
    kind = "Gateway" if (target.group, target.kind) == policyspecs.GATEWAY_KIND else ""
    return (kind, policy.ref.namespace, target.name)


def _authn(policies: Sequence[policyspecs.Policy]) -> Candidates:
    found: Candidates = {}
    position = 0
    for policy in policies:
        if isinstance(policy.body, tuple):
            for target in policy.targets:
                found.setdefault(_authn_place(policy, target), []).append(
                    (position, policy, target)
                )
                position += 1
    return found


def _authorization(policies: Sequence[policyspecs.Policy]) -> Candidates:
    """AuthorizationPolicies by the place they name: a Gateway, a Service or a GatewayClass."""
    found: Candidates = {}
    position = 0
    for policy in policies:
        if isinstance(policy.body, model.AuthorizationPolicy):
            for target in policy.targets:
                namespace = "" if target.kind == "GatewayClass" else policy.ref.namespace
                place = (target.kind, namespace, target.name)
                found.setdefault(place, []).append((position, policy, target))
                position += 1
    return found


_ACTION_ORDER = {a: i for i, a in enumerate(model.AuthzAction)}


def _authorization_for(
    ctx: Context, waypoint: model.Waypoint, destination: model.Destination
) -> tuple[model.AuthorizationPolicy, ...]:
    """Every AuthorizationPolicy that applies here; unlike the other kinds they all apply
    (Istio combines them by action), so none overrides another."""
    places = [
        ("Gateway", waypoint.namespace, waypoint.name),
        ("GatewayClass", "", wellknown.GATEWAY_CLASS),
    ]
    if destination.kind is model.DestinationKind.SERVICE:
        places.append(("Service", destination.namespace, destination.name))
    found: dict[str, model.AuthorizationPolicy] = {}
    for place in places:
        for _at, policy, target in ctx.authorization.get(place, ()):
            assert isinstance(policy.body, model.AuthorizationPolicy)
            use = ctx.use(policy, target)
            use.found = use.won = True
            found[policy.source] = policy.body
    return tuple(
        sorted(found.values(), key=lambda p: (_ACTION_ORDER[p.action], p.namespace, p.name))
    )


def _destination_providers(
    ctx: Context, waypoint: model.Waypoint, destination: model.Destination
) -> tuple[str, ...]:
    """The JWT providers of the RequestAuthentications naming this destination or the
    waypoint: jwt_authn verifies tokens with them on every route of the destination."""
    places = [("Gateway", waypoint.namespace, waypoint.name)]
    if destination.kind is model.DestinationKind.SERVICE:
        places.append(("", destination.namespace, destination.name))
    names_found = {
        provider.name
        for place in places
        for _at, policy, _target in ctx.authn.get(place, ())
        if isinstance(policy.body, tuple)
        for provider in policy.body
    }
    return tuple(sorted(names_found))


def _providers(ctx: Context, waypoint: model.Waypoint) -> tuple[model.JwtProvider, ...]:
    places = {("", d.namespace, d.name) for d in waypoint.destinations}
    places.add(("Gateway", waypoint.namespace, waypoint.name))
    hits = sorted((c for place in places for c in ctx.authn.get(place, ())), key=_position)
    found: dict[str, model.JwtProvider] = {}
    for _at, policy, target in hits:
        assert isinstance(policy.body, tuple)
        use = ctx.use(policy, target)
        use.found = use.won = True
        for provider in policy.body:
            found[provider.name] = provider
    return tuple(found[name] for name in sorted(found))


def apply(ctx: Context, waypoint: model.Waypoint) -> model.Waypoint:
    """One waypoint with every policy that reaches it applied."""
    extra: dict[str, model.Cluster] = {}
    destinations = tuple(
        dataclasses.replace(
            _destination(ctx, waypoint, d, extra),
            authorization=_authorization_for(ctx, waypoint, d),
            jwt_providers=_destination_providers(ctx, waypoint, d) if d.protocol.is_http else (),
        )
        for d in waypoint.destinations
    )
    clusters = {c.name: c for c in waypoint.clusters}
    for name, cluster in extra.items():
        clusters.setdefault(name, cluster)
    return dataclasses.replace(
        waypoint,
        destinations=destinations,
        clusters=tuple(_cluster(ctx, waypoint, clusters[n]) for n in sorted(clusters)),
        jwt_providers=_providers(ctx, waypoint),
    )


# --- status ---------------------------------------------------------------------------------


def _missing_reason(ctx: Context, policy: policyspecs.Policy, target: policyspecs.Target) -> str:
    ns = policy.ref.namespace
    kind = (target.group, target.kind)
    if kind == policyspecs.GATEWAY_CLASS_KIND:
        return f"GatewayClass {target.name} is not this controller's ({wellknown.GATEWAY_CLASS})"
    if kind == policyspecs.GATEWAY_KIND:
        if (ns, target.name) not in ctx.specs:
            return f"Gateway {ns}/{target.name} is not an accepted waypoint"
        return f"waypoint {ns}/{target.name} has sectionName {target.section!r}: not supported"
    if kind == policyspecs.SERVICE_KIND:
        svc = ctx.world.services.get((ns, target.name))
        if svc is None:
            return f"Service {ns}/{target.name} not found"
        if (ns, target.name) not in ctx.bound.services:
            return f"Service {ns}/{target.name} is not served by a waypoint"
        return f"Service {ns}/{target.name} has no port named {target.section!r}"
    routes = ctx.idx.http_routes if target.kind == "HTTPRoute" else ctx.idx.grpc_routes
    if (ns, target.name) not in routes:
        return f"{target.kind} {ns}/{target.name} not found"
    if target.section is not None:
        return (
            f"{target.kind} {ns}/{target.name} has no rule named {target.section!r} "
            "attached to a waypoint"
        )
    return f"{target.kind} {ns}/{target.name} is not attached to a waypoint's HTTP port"


def _note(policy: policyspecs.Policy) -> str:
    """What an accepted policy's user should still know."""
    if isinstance(policy.body, tuple):
        return "tokens are verified by Envoy (jwt_authn) on every HTTP route of the targets"
    on_routes = any((t.group, t.kind) in policyspecs.ROUTE_KINDS for t in policy.targets)
    if (
        isinstance(policy.body, policyspecs.Traffic)
        and policy.body.cluster is not None
        and on_routes
    ):
        return (
            "loadBalancer, circuitBreaker and outlierDetection apply through Service and "
            "Gateway targets only; ignored for route targets"
        )
    return ""


def report(ctx: Context, book: status.Book) -> None:
    """Accepted per policy, and per target as ancestor statuses."""
    for policy in ctx.policies:
        won_any = found_any = False
        for target in policy.targets:
            use = ctx.uses.get((policy.ref, target), _Use())
            key = status.ParentKey(target.ref(policy.ref.namespace), None, target.section)
            if not use.found:
                reason, message = R_TARGET_NOT_FOUND, _missing_reason(ctx, policy, target)
                book.add_parent(policy.ref, key, status.fail(status.ACCEPTED, reason, message))
            elif not use.won:
                message = "overridden everywhere by a more specific or older policy"
                cond = status.fail(status.ACCEPTED, status.R_CONFLICTED, message)
                book.add_parent(policy.ref, key, cond)
            else:
                book.add_parent(policy.ref, key, status.ok(status.ACCEPTED, status.R_ACCEPTED))
            found_any |= use.found
            won_any |= use.won
        if won_any:
            book.add(policy.ref, status.ok(status.ACCEPTED, status.R_ACCEPTED, _note(policy)))
        elif found_any:
            msg = "every target is overridden by a more specific or older policy"
            book.add(policy.ref, status.fail(status.ACCEPTED, status.R_CONFLICTED, msg))
        else:
            msg = "no target found: " + "; ".join(
                _missing_reason(ctx, policy, t) for t in policy.targets
            )
            book.add(policy.ref, status.fail(status.ACCEPTED, R_TARGET_NOT_FOUND, msg))
        if policy.ref in ctx.mirror_problems:
            cond = status.fail(
                status.RESOLVED_REFS, status.R_BACKEND_NOT_FOUND, ctx.mirror_problems[policy.ref]
            )
            book.add(policy.ref, cond)


def attach(
    objects: Iterable[Mapping[str, Any]],
    ctx: Context,
    waypoints: Sequence[model.Waypoint],
    book: status.Book,
) -> tuple[model.Waypoint, ...]:
    """Read the policies among ``objects``, apply them to every waypoint, report statuses."""
    ctx.policies = read(objects, book)
    if not ctx.policies:
        return tuple(waypoints)
    ctx.authz = _candidates(_authz(ctx.policies))
    ctx.route_traffic = _candidates(_traffic(ctx.policies, True))
    ctx.cluster_traffic = _candidates(_traffic(ctx.policies, False))
    ctx.authn = _authn(ctx.policies)
    ctx.authorization = _authorization(ctx.policies)
    out = tuple(apply(ctx, wp) for wp in waypoints)
    report(ctx, book)
    return out
