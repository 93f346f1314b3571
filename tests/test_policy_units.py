"""Policy parsing and rendering in isolation: field errors name the field, Envoy messages
carry what the policy says, tracing and the extauthz cluster validate in a real Envoy."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import pytest
import yaml
from envoy.config.route.v3 import route_components_pb2 as rc_pb2

from waypoint import model, names, policy, wellknown
from waypoint.envoy import (
    bootstrap,
    ext_authz,
    fault,
    options,
    policies,
    protos,
    source_principal,
    tracing,
)
from waypoint.runtime import envoy_process, sds
from waypoint.translate import fields, policyspecs
from waypoint.translate import policies as attach

TD = "cluster.local"


def _read(
    kind: str, spec: dict[str, Any], group: str = wellknown.POLICY_API_GROUP
) -> policyspecs.Policy:
    version = "v1" if group == wellknown.ISTIO_SECURITY_API_GROUP else "v1alpha1"
    raw = {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": {"name": "p", "namespace": "ns1"},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "s"}], **spec},
    }
    return policyspecs.read(attach.policy_object(raw))


@pytest.mark.parametrize(
    ("kind", "spec", "field"),
    [
        ("ExtAuthzPolicy", {}, "spec.decision"),
        ("ExtAuthzPolicy", {"decision": "a/b", "timeout": "0s"}, "spec.timeout"),
        ("ExtAuthzPolicy", {"decision": "a/b", "withRequestBody": {"maxBytes": "x"}}, "maxBytes"),
        ("TrafficPolicy", {"retry": {"codes": [200]}}, "spec.retry.codes[0]"),
        ("TrafficPolicy", {"faultInjection": {}}, "spec.faultInjection"),
        (
            "TrafficPolicy",
            {"mirror": {"backendRef": {"name": "m", "port": 80, "namespace": "x"}}},
            "namespace",
        ),
        (
            "TrafficPolicy",
            {"loadBalancer": {"type": "RoundRobin", "consistentHash": {"header": "x"}}},
            "spec.loadBalancer.consistentHash",
        ),
        (
            "TrafficPolicy",
            {"outlierDetection": {"interval": "soon"}},
            "spec.outlierDetection.interval",
        ),
    ],
)
def test_errors_name_the_field(kind: str, spec: dict[str, Any], field: str) -> None:
    with pytest.raises(fields.Bad, match=field.replace("[", r"\[").replace("]", r"\]")):
        _read(kind, spec)


def test_request_authentication_rules() -> None:
    spec = {
        "jwtRules": [
            {
                "issuer": "https://i",
                "audiences": ["a"],
                "jwksUri": "https://i/j",
                "fromCookies": ["s"],
            },
            {
                "issuer": "https://j",
                "audiences": ["a"],
                "jwks": '{"keys":[{"kty":"EC","crv":"P-256","x":"Rh2B6tdxhdDgRZ4xK15pHi8nM-CO2sp7o6_4vzDEyig","y":"rHqczVPoxCypHEzb-X3YvTUjIsr1FPQvcI6qp58OGi4","kid":"golden-ec","use":"sig"}]}',
                "outputPayloadToHeader": "X-Payload",
            },
        ]
    }
    got = _read("RequestAuthentication", spec, wellknown.ISTIO_SECURITY_API_GROUP).body
    assert isinstance(got, tuple)
    assert [p.name for p in got] == ["ns1.p.0", "ns1.p.1"]
    assert got[1].payload_header == "x-payload"
    with pytest.raises(fields.Bad, match="exactly one of jwksUri and jwks"):
        _read(
            "RequestAuthentication",
            {"jwtRules": [{"issuer": "https://i"}]},
            wellknown.ISTIO_SECURITY_API_GROUP,
        )
    route_target = {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}
    with pytest.raises(fields.Bad, match="targetRefs"):
        _read(
            "RequestAuthentication",
            {"targetRefs": [route_target], "jwtRules": spec["jwtRules"]},
            wellknown.ISTIO_SECURITY_API_GROUP,
        )


def test_retry_defaults_and_codes_imply_retriable_status_codes() -> None:
    body = _read("TrafficPolicy", {"retry": {"codes": [503, 502]}}).body
    assert isinstance(body, policyspecs.Traffic)
    assert body.retry is not None
    assert body.retry.retry_on == ("retriable-status-codes",)
    assert body.retry.codes == (502, 503)
    plain = _read("TrafficPolicy", {"retry": {"attempts": 3}}).body
    assert isinstance(plain, policyspecs.Traffic)
    assert plain.retry is not None
    assert plain.retry.retry_on == ("connect-failure", "refused-stream", "reset")


def _destination(route_policy: model.RoutePolicy) -> model.Destination:
    cluster = names.outbound_cluster(names.HostRef("svc", "ns1", "s"), 80)
    route = model.Route(
        name=names.route_name("HTTPRoute", "ns1", "r", "a", 0),
        match=model.RouteMatch(),
        backends=(model.WeightedBackend(cluster),),
        policy=route_policy,
    )
    return model.Destination(
        model.DestinationKind.SERVICE,
        "ns1",
        "s",
        80,
        ("10.0.0.1",),
        model.Protocol.HTTP,
        cluster,
        (route,),
        principal="spiffe://cluster.local/ns/ns1/sa/s",
    )


def _waypoint(route_policy: model.RoutePolicy) -> model.Waypoint:
    dest = _destination(route_policy)
    cluster = model.Cluster(
        dest.default_cluster,
        model.Protocol.HTTP,
        (model.Endpoint("10.1.0.1", 8080),),
        "ns1",
        "s",
        80,
        model.ClusterPolicy(
            load_balancer=model.LoadBalancer(
                model.LoadBalancerType.CONSISTENT_HASH, hash_cookie="session", cookie_ttl=60
            )
        ),
    )
    return model.Waypoint(
        "ns1",
        "waypoint",
        model.TrafficType.SERVICE,
        model.WaypointIdentity(TD, "ns1", "waypoint"),
        None,
        (dest,),
        (cluster,),
    )


def _validate(
    waypoint: model.Waypoint, opts: options.BootstrapOptions, tmp: pathlib.Path
) -> dict[str, Any]:
    local = options.BootstrapOptions(
        **{**opts.__dict__, "cert_dir": str(tmp / "certs"), "sds_dir": str(tmp / "sds")}
    )
    sds.write_files(local)
    text = bootstrap.to_yaml(bootstrap.build(waypoint, local))
    envoy_process.validate_text(text)
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def test_otel_tracing_and_unix_extauthz_validate(tmp_path: pathlib.Path) -> None:
    authz = model.ExtAuthz("ns1/p", "envoy/authz/allow", model.FailureMode.OPEN, 0.5, 1024, True)
    opts = options.BootstrapOptions(
        trust_domain=TD,
        extauthz_address="unix:/var/run/extauthz/grpc.sock",
        otel_collector="otel-collector.observability:4317",
    )
    config = _validate(_waypoint(model.RoutePolicy(authz=authz)), opts, tmp_path)
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert clusters[tracing.OTEL_CLUSTER]["type"] == "STRICT_DNS"
    pipe = clusters[ext_authz.EXTAUTHZ_CLUSTER]["load_assignment"]["endpoints"][0]
    assert pipe["lb_endpoints"][0]["endpoint"]["address"] == {
        "pipe": {"path": "/var/run/extauthz/grpc.sock"}
    }
    text = yaml.safe_dump(config)
    assert tracing.OPENTELEMETRY in text
    assert ext_authz.EXT_AUTHZ_OPEN in text


def test_route_carries_its_check_settings_and_hash_policy() -> None:
    authz = model.ExtAuthz("ns1/p", "envoy/authz/orders", timeout=0.3, jwt_required=True)
    wp = _waypoint(model.RoutePolicy(authz=authz))
    listener = next(
        item
        for item in bootstrap.to_dict(bootstrap.build(wp, options.BootstrapOptions()))[
            "static_resources"
        ]["listeners"]
        if item["name"].startswith("inbound-vip")
    )
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert [f["name"] for f in hcm["http_filters"]] == [
        source_principal.HEADER_MUTATION,
        ext_authz.EXT_AUTHZ,
        "envoy.filters.http.router",
    ]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    per_route = route["typed_per_filter_config"][ext_authz.EXT_AUTHZ]["config"]
    settings = per_route["check_settings"]
    assert settings["context_extensions"] == {
        "decision": "envoy/authz/orders",
        "jwt": "required",
        "policy": "ns1/p",
        "destination_principal": "spiffe://cluster.local/ns/ns1/sa/s",
        "source_principal_header": source_principal.HEADER,
    }
    assert settings["grpc_service"]["timeout"] == "0.300s"
    assert route["route"]["hash_policy"] == [{"cookie": {"name": "session", "ttl": "60s"}}]


def test_needs_extauthz_and_config() -> None:
    plain = _waypoint(model.RoutePolicy(rate_limit=model.LocalRateLimit(1, 1.0)))
    assert not plain.needs_extauthz
    assert policy.extauthz_config(plain, metrics_listen=None) == {
        "listen": "127.0.0.1:9191",
        "jwt": {"providers": [], "trust_envoy_metadata": True},
        "policy": {"engine": "embedded", "modules": ["/etc/extauthz/policies/policy.rego"]},
    }
    authz = model.ExtAuthz("ns1/p", "envoy/authz/allow")
    assert _waypoint(model.RoutePolicy(authz=authz)).needs_extauthz


def test_protos_round_trip_of_fault_percentages() -> None:
    injected = fault.config(model.FaultInjection(delay=0.1, delay_percent=12.5, abort_status=503))
    data = protos.to_dict(injected)
    assert data["delay"]["percentage"] == {"numerator": 125000, "denominator": "MILLION"}
    assert data["abort"]["http_status"] == 503


def _everything(custom: bool) -> model.Destination:
    """A destination where every policy adds its filters: the HCM's full order."""
    closed = model.ExtAuthz("ns1/a", "envoy/authz/a")
    opened = model.ExtAuthz("ns1/b", "envoy/authz/b", failure_mode=model.FailureMode.OPEN)
    first = model.RoutePolicy(
        authz=closed, fault=model.FaultInjection(abort_status=503), sources=("ns1/a",)
    )
    second = model.RoutePolicy(authz=opened, rate_limit=model.LocalRateLimit(5, 1.0))
    base = _destination(first)
    routes = (base.routes[0], dataclasses.replace(base.routes[0], name="second", policy=second))
    actions = [model.AuthzAction.ALLOW, model.AuthzAction.DENY]
    if custom:
        actions.append(model.AuthzAction.CUSTOM)
    authorization = tuple(model.AuthorizationPolicy("ns1", a.value, a) for a in actions)
    return dataclasses.replace(
        base, routes=routes, authorization=authorization, jwt_providers=("ns1.ra.0",)
    )


@pytest.mark.parametrize("custom", [True, False])
def test_hcm_filter_order(custom: bool) -> None:
    """jwt_authn, CUSTOM, Istio's RBAC, then the per-route filters; one header_mutation,
    before the first filter that calls extauthz."""
    provider = model.JwtProvider("ns1.ra.0", "https://issuer", jwks_uri="https://issuer/jwks")
    got = [f.name for f in policies.http_filters(_everything(custom), (provider,))]
    calls_first = [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.rbac.custom",
        "envoy.filters.http.ext_authz.custom",
    ]
    assert got == [
        "envoy.filters.http.jwt_authn",
        *(calls_first if custom else []),
        "envoy.filters.http.rbac.deny",
        "envoy.filters.http.rbac.allow",
        "envoy.filters.http.fault",
        *([] if custom else ["envoy.filters.http.header_mutation"]),
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.ext_authz.fail_open",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.router",
    ]


def test_each_route_enables_only_its_own_filters() -> None:
    destination = _everything(custom=False)
    enabled = []
    for r in destination.routes:
        out = rc_pb2.Route(name=r.name)
        policies.apply_route(out, r.policy, destination)
        enabled.append(sorted(out.typed_per_filter_config))
    assert enabled == [
        ["envoy.filters.http.ext_authz", "envoy.filters.http.fault"],
        ["envoy.filters.http.ext_authz.fail_open", "envoy.filters.http.local_ratelimit"],
    ]
