"""Policy attachment goldens: Kubernetes objects + policies → IR and statuses → Envoy config.

Each ``tests/golden/policy/<case>/in.yaml`` is added to ``base.yaml`` (a waypoint serving two
Services and one HTTPRoute); ``out.yaml`` is the serde form of the translation, ``envoy.yaml``
the bootstrap, which also passes ``envoy --mode validate``.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest
import yaml

from extauthz import config as extauthz_config
from tests import golden
from waypoint import model, policy, translate, wellknown
from waypoint.envoy import bootstrap, options
from waypoint.model import serde
from waypoint.runtime import envoy_process, sds

CASES = pathlib.Path(__file__).parent / "golden" / "policy"
NAMES = sorted(p.name for p in CASES.iterdir() if p.is_dir())
OPTS = options.BootstrapOptions(
    cert_dir="/certs", sds_dir="/certs-sds", extauthz_address="unix:/var/run/extauthz.sock"
)


def load(case: str) -> list[dict[str, Any]]:
    docs = list(yaml.safe_load_all((CASES / "base.yaml").read_text()))
    docs += list(yaml.safe_load_all((CASES / case / "in.yaml").read_text()))
    return [d for d in docs if d]


def _translate(case: str) -> model.Translation:
    return translate.translate(load(case))


def _waypoint(translation: model.Translation) -> model.Waypoint:
    found = translation.waypoint("ns1", "waypoint")
    assert found is not None
    return found


def _status(translation: model.Translation, kind: str, name: str) -> model.ResourceStatus:
    return next(s for s in translation.statuses if (s.ref.kind, s.ref.name) == (kind, name))


def _accepted(translation: model.Translation, kind: str, name: str) -> model.Condition:
    conds = _status(translation, kind, name).conditions
    return next(c for c in conds if c.type == "Accepted")


@pytest.mark.parametrize("case", NAMES)
def test_golden_translation(case: str) -> None:
    golden.check(CASES / case / "out.yaml", golden.dump(serde.to_data(_translate(case))))


@pytest.mark.parametrize("case", NAMES)
def test_golden_envoy_and_validate(case: str, tmp_path: pathlib.Path) -> None:
    text = bootstrap.to_yaml(bootstrap.build(_waypoint(_translate(case)), OPTS))
    golden.check(CASES / case / "envoy.yaml", text)
    local = options.BootstrapOptions(
        cert_dir=str(tmp_path / "certs"), sds_dir=str(tmp_path / "sds")
    )
    sds.write_files(local)
    # Only whole paths: the system CA bundle (/etc/ssl/certs/...) must stay as it is.
    text = re.sub(rf"(?<![\w/]){re.escape(OPTS.sds_dir)}", local.sds_dir, text)
    text = re.sub(rf"(?<![\w/]){re.escape(OPTS.cert_dir)}(?![\w-])", local.cert_dir, text)
    envoy_process.validate_text(text)


@pytest.mark.parametrize("case", NAMES)
def test_input_order_does_not_matter(case: str) -> None:
    assert translate.translate(list(reversed(load(case)))) == _translate(case)


def test_route_rule_beats_route_and_decisions_differ() -> None:
    wp = _waypoint(_translate("ext-authz"))
    orders = next(d for d in wp.destinations if d.name == "orders")
    by_rule = {r.name.split("/")[3]: r for r in orders.routes}
    read, write = by_rule["read"].policy, by_rule["write"].policy
    assert read is not None
    assert read.authz is not None
    assert write is not None
    assert write.authz is not None
    assert read.authz.decision == "envoy/authz/orders_read"
    assert (write.authz.decision, write.authz.jwt_required) == ("envoy/authz/orders_write", True)
    assert write.authz.failure_mode is model.FailureMode.OPEN
    assert orders.principal == "spiffe://cluster.local/ns/ns1/sa/orders"
    assert wp.needs_extauthz


def test_service_port_target_applies_only_to_that_port() -> None:
    wp = _waypoint(_translate("ext-authz"))
    billing = {d.port: d for d in wp.destinations if d.name == "billing"}
    assert billing[80].policy is None
    admin = billing[9000].policy
    assert admin is not None
    assert admin.authz is not None
    assert admin.authz.decision == "envoy/authz/admin"
    # Endpoints without a known service account: the waypoint's own identity.
    assert billing[9000].principal == "spiffe://cluster.local/ns/ns1/sa/waypoint"


def test_no_policy_means_no_extauthz() -> None:
    wp = _waypoint(translate.translate(list(yaml.safe_load_all((CASES / "base.yaml").read_text()))))
    assert not wp.needs_extauthz
    text = bootstrap.to_yaml(bootstrap.build(wp, OPTS))
    assert "ext_authz" not in text
    assert "extauthz" not in text


def test_extauthz_config_renders_providers() -> None:
    config = policy.extauthz_config(_waypoint(_translate("ext-authz")))
    golden.check(CASES / "ext-authz" / "extauthz.yaml", golden.dump(config))
    first, second = config["jwt"]["providers"]
    assert first["from_headers"] == [{"name": "x-token", "prefix": "Bearer "}]
    assert first["claim_to_headers"] == [{"claim": "sub", "header": "x-jwt-sub"}]
    assert second["from_headers"] == []
    assert second["from_params"] == ["access_token"]
    assert second["forward_original_token"] is True


def test_extauthz_config_is_accepted_by_extauthz(tmp_path: pathlib.Path) -> None:
    rego = tmp_path / "policy.rego"
    rego.write_text("package envoy.authz\n\ndefault allow := false\n")
    rendered = policy.extauthz_config(_waypoint(_translate("ext-authz")), modules=(str(rego),))
    rendered["jwt"]["providers"][0]["jwks_uri"] = "https://issuer.example/jwks.json"
    settings = extauthz_config.from_mapping(rendered, tmp_path)
    assert [p.name for p in settings.jwt.providers] == ["ns1.corp.0", "ns1.corp.1"]


def test_the_httproute_setting_wins_over_the_policy() -> None:
    wp = _waypoint(_translate("traffic"))
    orders = next(d for d in wp.destinations if d.name == "orders")
    by_rule = {r.name.split("/")[3]: r for r in orders.routes}
    assert by_rule["write"].timeouts == model.Timeouts(request=3.0)  # the HTTPRoute's own
    assert by_rule["read"].timeouts == model.Timeouts(request=10.0)  # the policy's
    retry = by_rule["read"].retry
    assert retry is not None
    assert retry.retry_on == ("5xx", "reset", "retriable-status-codes")
    assert [m.cluster for m in by_rule["read"].mirrors] == [
        "outbound|80||shadow.ns1.svc.cluster.local"
    ]
    cluster = next(c for c in wp.clusters if c.service == "orders")
    assert cluster.policy is not None
    assert cluster.policy.outlier_detection is not None


def test_conflicts_and_invalid_policies_are_reported() -> None:
    t = _translate("conflicts")
    assert _accepted(t, "ExtAuthzPolicy", "orders-old").status
    new = _accepted(t, "ExtAuthzPolicy", "orders-new")
    assert (new.status, new.reason) == (False, "Conflicted")
    # The Gateway-wide policy still applies where nothing more specific does.
    assert _accepted(t, "ExtAuthzPolicy", "everywhere").status
    bad = _accepted(t, "ExtAuthzPolicy", "bad-decision")
    assert (bad.status, bad.reason) == (False, "Invalid")
    assert "spec.decision" in bad.message
    dangling = _accepted(t, "ExtAuthzPolicy", "dangling")
    assert (dangling.status, dangling.reason) == (False, "TargetNotFound")
    assert "missing" in dangling.message
    assert "nosuchrule" in dangling.message
    wrong = _accepted(t, "TrafficPolicy", "wrong-kind")
    assert (wrong.status, wrong.reason) == (False, "Invalid")
    assert _accepted(t, "TrafficPolicy", "bad-traffic").reason == "Invalid"
    mirror = _status(t, "TrafficPolicy", "missing-mirror")
    assert {c.type: c.status for c in mirror.conditions} == {
        "Accepted": True,
        "ResolvedRefs": False,
    }
    wp = _waypoint(t)
    orders = next(d for d in wp.destinations if d.name == "orders")
    assert {r.policy.authz.decision for r in orders.routes if r.policy and r.policy.authz} == {
        "envoy/authz/old"
    }
    billing = next(d for d in wp.destinations if d.name == "billing" and d.port == 80)
    assert billing.policy is not None
    assert billing.policy.authz is not None
    assert billing.policy.authz.decision == "envoy/authz/allow"


def test_per_target_ancestor_status() -> None:
    dangling = _status(_translate("conflicts"), "ExtAuthzPolicy", "dangling")
    reasons = {(p.parent.kind, p.section_name): p.conditions[0].reason for p in dangling.parents}
    assert reasons == {
        ("Service", None): "TargetNotFound",
        ("HTTPRoute", "nosuchrule"): "TargetNotFound",
    }


@pytest.mark.parametrize("case", NAMES)
def test_serde_round_trip(case: str) -> None:
    translation = _translate(case)
    assert serde.from_data(model.Translation, serde.to_data(translation)) == translation


def test_grpcroute_rule_target() -> None:
    """A GRPCRoute's unnamed rules are addressed by index; its rule 1 alone gets the policy."""
    world = list(
        yaml.safe_load_all((CASES.parent / "translate" / "grpcroute" / "in.yaml").read_text())
    )
    world.append(
        {
            "apiVersion": wellknown.POLICY_API_VERSION,
            "kind": "TrafficPolicy",
            "metadata": {"name": "rpc", "namespace": "rpc"},
            "spec": {
                "targetRefs": [
                    {
                        "group": "gateway.networking.k8s.io",
                        "kind": "GRPCRoute",
                        "name": "echo",
                        "sectionName": "1",
                    }
                ],
                "rateLimit": {"local": {"tokens": 5, "fillInterval": "1s"}},
            },
        }
    )
    t = translate.translate([d for d in world if d])
    assert _accepted(t, "TrafficPolicy", "rpc").status
    limited = {
        r.name
        for wp in t.waypoints
        for d in wp.destinations
        for r in d.routes
        if r.policy is not None and r.policy.rate_limit is not None
    }
    assert limited == {"grpcroute/rpc/echo/1/0"}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*prefix, i))
    return found


def _replace(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _replace(doc[path[0]], path[1:], new)
    return copy


GARBAGE: tuple[Any, ...] = (None, 0, -1, "", "x", [], {}, [None], {"x": 1}, True, 1.5)


@pytest.mark.parametrize("case", ["ext-authz", "traffic"])
def test_garbage_in_any_policy_field_never_raises(case: str) -> None:
    """Every field of every policy, replaced by junk: a status, never an exception, and
    whatever the translator accepted renders into Envoy config."""
    base = load(case)
    rendered: set[model.Waypoint] = set()
    for index, doc in enumerate(base):
        if doc.get("kind") not in ("ExtAuthzPolicy", "TrafficPolicy", "RequestAuthentication"):
            continue
        for path in _paths(doc.get("spec"), ("spec",)):
            for junk in GARBAGE:
                world = list(base)
                world[index] = _replace(doc, path, junk)
                waypoint = translate.translate(world).waypoint("ns1", "waypoint")
                assert waypoint is not None
                if waypoint not in rendered:  # whatever was accepted also renders
                    bootstrap.build(waypoint, OPTS)
                    rendered.add(waypoint)
