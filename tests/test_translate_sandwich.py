"""Which Gateways are sandwiched (istiod's inbound binding, kgateway's PROXY listener), on
which port, and the status a bad binding gets."""

from __future__ import annotations

from typing import Any

import pytest

from waypoint import model, translate, wellknown
from waypoint.kube import constants

BINDING = wellknown.INBOUND_BINDING_ANNOTATION


def _gateway(
    annotations: dict[str, str] | None = None,
    listener: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "waypoint", "namespace": "ns1"}
    if annotations:
        meta["annotations"] = annotations
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": wellknown.GATEWAY_API_VERSION,
        "kind": "Gateway",
        "metadata": meta,
        "spec": {
            "gatewayClassName": "waypoint",
            "listeners": [listener or {"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


def _class(
    annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "waypoint", "annotations": annotations or {}}
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": wellknown.GATEWAY_API_VERSION,
        "kind": "GatewayClass",
        "metadata": meta,
        "spec": {"controllerName": constants.CONTROLLER_NAME},
    }


def _translate(*objects: dict[str, Any]) -> tuple[model.Waypoint | None, model.Condition]:
    result = translate.translate(list(objects))
    status = next(s for s in result.statuses if s.ref.kind == "Gateway")
    accepted = next(c for c in status.conditions if c.type == "Accepted")
    return result.waypoint("ns1", "waypoint"), accepted


def test_no_binding_is_hbone() -> None:
    waypoint, accepted = _translate(_gateway())
    assert waypoint is not None
    assert waypoint.proxy_port is None
    assert "PROXY" not in accepted.message


def test_the_gateway_annotation_binds_proxy() -> None:
    waypoint, accepted = _translate(_gateway({BINDING: "PROXY/15088"}))
    assert waypoint is not None
    assert waypoint.proxy_port == 15088
    assert "PROXY protocol on port 15088" in accepted.message


def test_the_gateway_class_annotation_binds_proxy() -> None:
    waypoint, _ = _translate(_gateway(), _class({BINDING: "PROXY/15099"}))
    assert waypoint is not None
    assert waypoint.proxy_port == 15099


def test_the_gateway_wins_over_its_class() -> None:
    waypoint, _ = _translate(_gateway({BINDING: "NONE"}), _class({BINDING: "PROXY/15088"}))
    assert waypoint is not None
    assert waypoint.proxy_port is None


def test_another_class_annotation_is_not_read() -> None:
    other = _class({BINDING: "PROXY/15088"})
    other["metadata"]["name"] = "istio-waypoint"
    waypoint, _ = _translate(_gateway(), other)
    assert waypoint is not None
    assert waypoint.proxy_port is None


def test_the_kgateway_listener_binds_proxy_and_says_istiod_needs_the_annotation() -> None:
    listener = {"name": "proxy", "port": 15088, "protocol": wellknown.PROXY_PROTOCOL}
    waypoint, accepted = _translate(_gateway(listener=listener))
    assert waypoint is not None
    assert waypoint.proxy_port == 15088
    assert f"{BINDING}: PROXY/15088" in accepted.message


def test_the_kgateway_listener_agrees_with_the_annotation() -> None:
    listener = {"name": "proxy", "port": 15088, "protocol": wellknown.PROXY_PROTOCOL}
    waypoint, accepted = _translate(_gateway({BINDING: "PROXY/15088"}, listener))
    assert waypoint is not None
    assert waypoint.proxy_port == 15088
    assert "istiod sends PROXY only" not in accepted.message


def test_the_gateway_class_label_gives_the_traffic_type() -> None:
    all_traffic = _class(labels={wellknown.WAYPOINT_FOR: "all"})
    waypoint, _ = _translate(_gateway(), all_traffic)
    assert waypoint is not None
    assert waypoint.traffic_type is model.TrafficType.ALL
    labels = {wellknown.WAYPOINT_FOR: "workload"}
    waypoint, _ = _translate(_gateway(labels=labels), all_traffic)
    assert waypoint is not None
    assert waypoint.traffic_type is model.TrafficType.WORKLOAD


@pytest.mark.parametrize(
    ("value", "reason", "words"),
    [
        ("PROXY", "InvalidParameters", "give the port"),
        ("PROXY/", "InvalidParameters", "give the port"),
        ("PROXY/abc", "InvalidParameters", "a number from 1 to 65535"),
        ("PROXY/0", "InvalidParameters", "a number from 1 to 65535"),
        ("PROXY/70000", "InvalidParameters", "a number from 1 to 65535"),
        ("PROXY/\u0661\u0665", "InvalidParameters", "a number from 1 to 65535"),
        ("PROXY/15008", "InvalidParameters", "taken by the waypoint"),
        ("HBONE", "InvalidParameters", "must be PROXY or NONE"),
        ("NONE/15088", "InvalidParameters", "must be PROXY or NONE"),
    ],
)
def test_bad_annotations_are_refused_with_a_reason(value: str, reason: str, words: str) -> None:
    waypoint, accepted = _translate(_gateway({BINDING: value}))
    assert waypoint is None
    assert not accepted.status
    assert accepted.reason == reason
    assert words in accepted.message
    assert BINDING in accepted.message


def test_a_listener_port_that_disagrees_with_the_annotation_is_refused() -> None:
    listener = {"name": "proxy", "port": 15089, "protocol": wellknown.PROXY_PROTOCOL}
    waypoint, accepted = _translate(_gateway({BINDING: "PROXY/15088"}, listener))
    assert waypoint is None
    assert accepted.reason == "ListenersNotValid"
    assert "15089" in accepted.message


@pytest.mark.parametrize("port", [None, "15088", 0, 70000, True, 15008, 15090])
def test_a_proxy_listener_needs_a_port(port: object) -> None:
    listener = {"name": "proxy", "port": port, "protocol": wellknown.PROXY_PROTOCOL}
    waypoint, accepted = _translate(_gateway(listener=listener))
    assert waypoint is None
    assert accepted.reason == "ListenersNotValid"


def test_a_proxy_listener_takes_no_tls() -> None:
    listener = {
        "name": "proxy",
        "port": 15088,
        "protocol": wellknown.PROXY_PROTOCOL,
        "tls": {"mode": "Terminate"},
    }
    waypoint, accepted = _translate(_gateway(listener=listener))
    assert waypoint is None
    assert "takes no tls" in accepted.message
