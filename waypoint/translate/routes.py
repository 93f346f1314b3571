"""HTTPRoutes and GRPCRoutes attached to Services (GAMMA) → per-port, ordered route entries.

A route takes part when a parentRef names a core Service (``group: ""``, ``kind: Service``);
parentRefs to other Gateways belong to other controllers and are not judged. The parent's
namespace defaults to the route's. ``port`` (or ``sectionName``, a Service port name) narrows
the attachment to one port, otherwise every HTTP-speaking port of the Service takes the route
(GEP-1294 "Ports"); TCP ports take none, and a parentRef that leaves only TCP ports gets
``Accepted: False`` (NotAllowedByListeners). ``hostnames`` do not select traffic in a mesh
(GEP-1294); they are kept on the destination for information only.

A route in the Service's own namespace is a producer route and applies to every client; a route
in another namespace is a consumer route and applies only to clients in its own namespace
(``model.Route.consumer_namespace``). When a GRPCRoute and an HTTPRoute attach to the same
Service port, the GRPCRoute wins and the HTTPRoute gets ``Accepted: False`` (Conflicted) there.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from waypoint import model, names, wellknown
from waypoint.translate import binding, fields, index, matches, rules, services, status

_OLDEST = datetime.datetime.min.replace(tzinfo=datetime.UTC)

Order = tuple[tuple[int, str], matches.Rank, datetime.datetime, str, int, int]


@dataclasses.dataclass(frozen=True)
class Attachment:
    """One (rule, match) of a route, attached to one Service port."""

    service: tuple[str, str]
    port: int
    kind: str
    route: model.Route
    order: Order
    source: model.ObjectRef
    parent: status.ParentKey


@dataclasses.dataclass
class Attached:
    attachments: list[Attachment] = dataclasses.field(default_factory=list)
    hostnames: dict[tuple[str, str, int], set[str]] = dataclasses.field(default_factory=dict)
    clusters: list[model.Cluster] = dataclasses.field(default_factory=list)


class Attacher:
    def __init__(
        self, idx: index.Index, world: services.World, bound: binding.Bindings, book: status.Book
    ) -> None:
        self.idx, self.world, self.bound, self.book = idx, world, bound, book
        self.result = Attached()

    def run(self) -> Attached:
        for kind, table in (
            ("GRPCRoute", self.idx.grpc_routes),
            ("HTTPRoute", self.idx.http_routes),
        ):
            for obj in table.values():
                self._route(kind, obj)
        self._resolve_conflicts()
        return self.result

    # --- one route --------------------------------------------------------------------

    def _route(self, kind: str, obj: index.Obj) -> None:
        spec_raw = obj.field("spec")
        spec = spec_raw if isinstance(spec_raw, Mapping) else {}
        try:
            parents = self._parents(obj, spec)
        except fields.Bad as exc:
            self.book.add(
                obj.ref,
                status.fail(status.ACCEPTED, status.R_UNSUPPORTED_VALUE, str(exc.args[0])),
            )
            return
        if not parents:
            return
        try:
            if not isinstance(spec_raw, Mapping):
                raise fields.Bad("spec must be a mapping")
            hostnames = [
                fields.string(h, f"spec.hostnames[{i}]")
                for i, h in enumerate(fields.seq(spec.get("hostnames"), "spec.hostnames"))
            ]
            raw_rules = fields.seq(spec.get("rules"), "spec.rules")
        except fields.Bad as exc:
            for parent in parents:
                self._parent_fail(obj, parent, status.R_UNSUPPORTED_VALUE, str(exc.args[0]))
            return
        parsed, dropped = self._rules(kind, obj, raw_rules)
        for parent in parents:
            self._attach(kind, obj, parent, parsed, dropped, hostnames)

    def _parents(self, obj: index.Obj, spec: Mapping[str, Any]) -> list[status.ParentKey]:
        found: dict[status.ParentKey, None] = {}
        for i, raw in enumerate(fields.seq(spec.get("parentRefs"), "spec.parentRefs")):
            path = f"spec.parentRefs[{i}]"
            item = fields.mapping(raw, path, required=True)
            group = fields.opt_string(item.get("group"), f"{path}.group")
            group = wellknown.GATEWAY_API_GROUP if group is None else group
            kind = fields.opt_string(item.get("kind"), f"{path}.kind") or "Gateway"
            name = fields.nonempty(item.get("name"), f"{path}.name")
            namespace = (
                fields.opt_string(item.get("namespace"), f"{path}.namespace") or obj.namespace
            )
            port = fields.opt_integer(item.get("port"), f"{path}.port", 1, 65535)
            section = fields.opt_string(item.get("sectionName"), f"{path}.sectionName")
            if group in (wellknown.CORE_GROUP, "core") and kind == "Service":
                ref = model.ObjectRef(wellknown.CORE_GROUP, "Service", namespace, name)
            elif kind == "Service":  # a likely slip: the group defaults to the Gateway API's
                ref = model.ObjectRef(group, "Service", namespace, name)
            elif (
                group == wellknown.GATEWAY_API_GROUP
                and kind == "Gateway"
                and self._is_waypoint(namespace, name)
            ):
                ref = model.ObjectRef(wellknown.GATEWAY_API_GROUP, "Gateway", namespace, name)
            else:
                continue  # another controller's parent
            key = status.ParentKey(ref, port, section)
            found.setdefault(key, None)
        return list(found)

    def _is_waypoint(self, namespace: str, name: str) -> bool:
        obj = self.idx.gateways.get((namespace, name))
        spec = obj.field("spec") if obj else None
        return isinstance(spec, Mapping) and spec.get("gatewayClassName") == wellknown.GATEWAY_CLASS

    def _rules(
        self, kind: str, obj: index.Obj, raw_rules: Any
    ) -> tuple[list[rules.Rule], list[rules.Problem]]:
        ctx = rules.Context(self.world, obj.namespace, grpc=kind == "GRPCRoute")
        parsed: list[rules.Rule] = []
        dropped: list[rules.Problem] = []
        for position, raw in enumerate(raw_rules):
            path = f"spec.rules[{position}]"
            try:
                rule = rules.parse_rule(ctx, raw, position, path)
            except fields.Bad as exc:
                reason = exc.args[1] if len(exc.args) > 1 else status.R_UNSUPPORTED_VALUE
                dropped.append(rules.Problem(reason, f"dropped rule {position}: {exc.args[0]}"))
                continue
            if any(other.id == rule.id for other in parsed):
                dropped.append(
                    rules.Problem(
                        status.R_UNSUPPORTED_VALUE,
                        f"dropped rule {position}: its name {rule.id!r} is not unique",
                    )
                )
                continue
            parsed.append(rule)
        return parsed, dropped

    # --- one parent -------------------------------------------------------------------

    def _parent_fail(
        self, obj: index.Obj, key: status.ParentKey, reason: str, message: str
    ) -> None:
        self.book.add_parent(obj.ref, key, status.fail(status.ACCEPTED, reason, message))

    def _ports(
        self, kind: str, parent: status.ParentKey
    ) -> list[services.ServicePort] | rules.Problem:
        """The HTTP ports of the parent Service this parentRef attaches to, or why none."""
        svc = self._parent_service(parent.parent)
        if isinstance(svc, rules.Problem):
            return svc
        ports = self._select_ports(kind, parent, svc)
        if isinstance(ports, rules.Problem):
            return ports
        if (svc.namespace, svc.name) not in self.bound.services:
            why = self.bound.service_problems.get(
                (svc.namespace, svc.name),
                "neither it nor its namespace has an istio.io/use-waypoint label",
            )
            return rules.Problem(
                status.R_NO_MATCHING_PARENT,
                f"Service {svc.namespace}/{svc.name} is not served by a waypoint: {why}",
            )
        return ports

    def _parent_service(self, ref: model.ObjectRef) -> services.ServiceInfo | rules.Problem:
        where = f"{ref.namespace}/{ref.name}"
        if ref.kind == "Gateway":
            return rules.Problem(
                status.R_UNSUPPORTED_VALUE,
                f"waypoint Gateway {where} is not a route parent here: attach routes to the "
                "Services the waypoint serves (GAMMA)",
            )
        if ref.group != wellknown.CORE_GROUP:
            return rules.Problem(
                status.R_NO_MATCHING_PARENT,
                f"parentRef to Service {where} has group {ref.group!r}: a Service parent needs "
                f'group "" (the core group), and an omitted group means {wellknown.GATEWAY_API_GROUP}',
            )
        svc = self.world.services.get((ref.namespace, ref.name))
        if svc is None:
            return rules.Problem(
                status.R_NO_MATCHING_PARENT, f"Service {where} not found (or invalid)"
            )
        if svc.type == "ExternalName" or svc.headless:
            return rules.Problem(
                status.R_UNSUPPORTED_VALUE,
                f"Service {where} is headless or ExternalName, which cannot be a route parent",
            )
        return svc

    @staticmethod
    def _select_ports(
        kind: str, parent: status.ParentKey, svc: services.ServiceInfo
    ) -> list[services.ServicePort] | rules.Problem:
        where = f"{svc.namespace}/{svc.name}"
        ports = list(svc.ports)
        if parent.port is not None:
            ports = [p for p in ports if p.port == parent.port]
            if not ports:
                return rules.Problem(
                    status.R_NO_MATCHING_PARENT,
                    f"Service {where} has no TCP port {parent.port}",
                )
        if parent.section is not None:
            ports = [p for p in ports if p.name == parent.section]
            if not ports:
                number = "" if parent.port is None else f" with number {parent.port}"
                return rules.Problem(
                    status.R_NO_MATCHING_PARENT,
                    f"Service {where} has no port named {parent.section!r}{number}",
                )
        http_ports = [p for p in ports if p.protocol.is_http]
        if not http_ports:
            listed = ", ".join(f"{p.port} ({p.name or 'unnamed'})" for p in ports) or "none"
            return rules.Problem(
                status.R_NOT_ALLOWED,
                f"{kind}s attach only to HTTP ports (appProtocol http/http2/grpc/"
                "kubernetes.io/h2c, or a port name http-*, http2-*, grpc-*); the selected ports "
                f"of Service {where} are TCP: {listed}",
            )
        return http_ports

    def _attach(
        self,
        kind: str,
        obj: index.Obj,
        parent: status.ParentKey,
        parsed: list[rules.Rule],
        dropped: list[rules.Problem],
        hostnames: list[str],
    ) -> None:
        ports = self._ports(kind, parent)
        if isinstance(ports, rules.Problem):
            self._parent_fail(obj, parent, ports.reason, ports.message)
            return
        self._parent_conditions(obj, parent, parsed, dropped)
        ref = parent.parent
        for port in ports:
            host_key = (ref.namespace, ref.name, port.port)
            self.result.hostnames.setdefault(host_key, set()).update(hostnames)
            for rule in parsed:
                self.result.clusters.extend(rule.clusters)
                self.result.attachments.extend(self._entries(kind, obj, parent, port, rule))

    def _parent_conditions(
        self,
        obj: index.Obj,
        key: status.ParentKey,
        parsed: list[rules.Rule],
        dropped: list[rules.Problem],
    ) -> None:
        """Accepted (False if a rule was dropped) and ResolvedRefs for one attached parent."""
        self.book.add_parent(obj.ref, key, status.ok(status.ACCEPTED, status.R_ACCEPTED))
        for problem in dropped:
            self._parent_fail(obj, key, problem.reason, problem.message)
        self.book.add_parent(obj.ref, key, status.ok(status.RESOLVED_REFS, status.R_RESOLVED))
        for problem in (p for rule in parsed for p in rule.unresolved):
            self.book.add_parent(
                obj.ref, key, status.fail(status.RESOLVED_REFS, problem.reason, problem.message)
            )

    @staticmethod
    def _entries(
        kind: str,
        obj: index.Obj,
        key: status.ParentKey,
        port: services.ServicePort,
        rule: rules.Rule,
    ) -> list[Attachment]:
        """One attachment per match of the rule, with its precedence order."""
        ref = key.parent
        consumer = obj.namespace if obj.namespace != ref.namespace else None
        group = (0, consumer) if consumer is not None else (1, "")
        found = []
        for position, (match, rank) in enumerate(rule.matches):
            route = dataclasses.replace(
                rule.action,
                name=names.route_name(kind, obj.namespace, obj.name, rule.id, position),
                match=match,
                consumer_namespace=consumer,
            )
            order: Order = (
                group,
                rank,
                obj.created or _OLDEST,
                f"{obj.namespace}/{obj.name}",
                rule.index,
                position,
            )
            service = (ref.namespace, ref.name)
            found.append(Attachment(service, port.port, kind, route, order, obj.ref, key))
        return found

    # --- GRPCRoute over HTTPRoute -----------------------------------------------------

    def _resolve_conflicts(self) -> None:
        grpc_ports = {(a.service, a.port) for a in self.result.attachments if a.kind == "GRPCRoute"}
        Ident = tuple[tuple[str, str, str, str], status.ParentKey]
        kept: list[Attachment] = []
        lost: dict[Ident, tuple[Attachment, set[int]]] = {}
        ports_of: dict[Ident, set[int]] = {}
        for a in self.result.attachments:
            ident = (status.ref_key(a.source), a.parent)
            ports_of.setdefault(ident, set()).add(a.port)
            if a.kind == "HTTPRoute" and (a.service, a.port) in grpc_ports:
                lost.setdefault(ident, (a, set()))[1].add(a.port)
            else:
                kept.append(a)
        self.result.attachments = kept
        for ident, (sample, ports) in lost.items():
            if ports == ports_of[ident]:
                svc = f"{sample.service[0]}/{sample.service[1]}"
                self.book.add_parent(
                    sample.source,
                    sample.parent,
                    status.fail(
                        status.ACCEPTED,
                        status.R_CONFLICTED,
                        f"a GRPCRoute is attached to Service {svc} port(s) {', '.join(map(str, sorted(ports)))}, "
                        "and GRPCRoutes take precedence over HTTPRoutes (GEP-1294)",
                    ),
                )


def attach(
    idx: index.Index, world: services.World, bound: binding.Bindings, book: status.Book
) -> Attached:
    return Attacher(idx, world, bound, book).run()
