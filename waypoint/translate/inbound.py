"""How ztunnel hands a waypoint its traffic: HBONE on 15008, or Istio's PROXY "sandwich".

istiod reads ``ambient.istio.io/waypoint-inbound-binding`` from the Gateway, else from its
GatewayClass (``makeInboundBinding`` in istio/istio
pilot/pkg/serviceregistry/kube/controller/ambient/waypoints.go): ``NONE``, ``PROXY`` or
``PROXY/<port>``. With ``PROXY/<port>`` the ztunnel in front of the waypoint terminates HBONE
and opens a plain TCP connection to ``<waypoint pod>:<port>`` that starts with a PROXY v2
header. kgateway declares the same thing with a Gateway listener of protocol
``istio.io/PROXY`` (port 15088).

The waypoint Gateway keeps exactly one listener: either ``mesh`` (HBONE, 15008), which with a
PROXY annotation is where istiod reads ``allowedRoutes`` from, or an ``istio.io/PROXY``
listener whose port is the PROXY port. ``PROXY`` without a port is refused: ztunnel would then
send to the Service's own port on the waypoint pod (istio/ztunnel src/proxy/inbound.rs), which
a single listener cannot serve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from waypoint import wellknown
from waypoint.translate import fields, index, status


@dataclasses.dataclass(frozen=True)
class Binding:
    """``proxy_port`` None: HBONE. ``note``: what the Gateway's status should say about it."""

    proxy_port: int | None
    note: str = ""


HBONE = Binding(None)
# HBONE (which the Service keeps for ztunnel), readiness and Prometheus stats: the ports of the
# generated Service, which a PROXY port must not collide with.
TAKEN_PORTS = (wellknown.HBONE_PORT, 15021, 15090)


def _bad(message: str, reason: str = status.R_INVALID_PARAMETERS) -> fields.Bad:
    return fields.Bad(message, reason)


def annotation(obj: index.Obj, idx: index.Index) -> tuple[str, str] | None:
    """(value, where it came from): the Gateway's annotation, else its GatewayClass's."""
    value = obj.annotations.get(wellknown.INBOUND_BINDING_ANNOTATION)
    if value is not None:
        return value, "Gateway"
    gateway_class = idx.gateway_classes.get(wellknown.GATEWAY_CLASS)
    if gateway_class is not None:
        value = gateway_class.annotations.get(wellknown.INBOUND_BINDING_ANNOTATION)
        if value is not None:
            return value, f"GatewayClass {wellknown.GATEWAY_CLASS}"
    return None


def parse(value: str, where: str) -> int | None:
    """The PROXY port of an annotation value; None for ``NONE``."""
    name = f"{where} annotation {wellknown.INBOUND_BINDING_ANNOTATION}={value!r}"
    protocol, _, port_text = value.partition("/")
    if protocol == "NONE" and not port_text:
        return None
    if protocol != "PROXY":
        raise _bad(f"{name}: the protocol must be PROXY or NONE")
    if not port_text:
        raise _bad(
            f"{name}: give the port (PROXY/{wellknown.PROXY_PORT}); without one ztunnel sends "
            "to the Service's own port on the waypoint pod, which the waypoint does not serve"
        )
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise _bad(f"{name}: the port must be a number from 1 to 65535")
    return free_port(int(port_text), name, status.R_INVALID_PARAMETERS)


def free_port(port: int, name: str, reason: str) -> int:
    """``port``, unless the waypoint's Service already uses it."""
    if port in TAKEN_PORTS:
        raise _bad(f"{name}: port {port} is taken by the waypoint itself", reason)
    return port


def binding(obj: index.Obj, idx: index.Index, listener: Mapping[str, Any]) -> Binding:
    """The Gateway's binding, from its annotation (or its class's) and its one listener."""
    found = annotation(obj, idx)
    annotated = parse(*found) if found else None
    if listener.get("protocol") != wellknown.PROXY_PROTOCOL:
        return Binding(annotated)
    port = int(listener["port"])  # checked by gateways._proxy_listener
    if found is None:
        note = (
            f"; istiod sends PROXY only when the Gateway or GatewayClass "
            f"{wellknown.GATEWAY_CLASS} has the annotation "
            f"{wellknown.INBOUND_BINDING_ANNOTATION}: PROXY/{port}"
        )
        return Binding(port, note)
    if annotated != port:
        raise _bad(
            f"spec.listeners[0].port {port} differs from the {found[1]} annotation "
            f"{wellknown.INBOUND_BINDING_ANNOTATION}={found[0]!r}",
            status.R_LISTENERS_NOT_VALID,
        )
    return Binding(annotated)
