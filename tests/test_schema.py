"""Schema checks: unknown fields with a did-you-mean, wrong types, enums, required fields and
list sizes, with JSON paths; reported as status by translation, on stderr by the CLI (exit 1
with --strict) and on route status by the controller. Every world shipped here is clean."""

from __future__ import annotations

import copy
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import yaml

from loadtests import schema_bench
from tests import conftest, schemagen
from tests.fakekube import server
from waypoint import schema, translate
from waypoint.controller import apiclient, reconcile
from waypoint.controller import status as kstatus
from waypoint.kube import gateway
from waypoint.runtime import inputs
from waypoint.schema import core
from waypoint.translate import schemacheck

REPO = conftest.REPO
GW_V1 = "gateway.networking.k8s.io/v1"


def _route(rules: list[dict[str, Any]], name: str = "echo") -> dict[str, Any]:
    return {
        "apiVersion": GW_V1,
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
            "rules": rules,
        },
    }


def _problems(obj: dict[str, Any]) -> list[str]:
    return [str(p) for p in schema.check(obj)]


def test_backend_ref_typo_names_the_field_and_suggests_the_right_one() -> None:
    route = _route([{"backendRef": [{"name": "echo", "port": 80}]}])
    assert _problems(route) == [
        "spec.rules[0].backendRef: unknown field (did you mean backendRefs?)"
    ]


def test_wrong_type() -> None:
    route = _route([{"matches": [{"headers": [{"name": "x-version", "value": 2}]}]}])
    assert _problems(route) == [
        "spec.rules[0].matches[0].headers[0].value: expected string, got integer"
    ]
    route = _route([{"backendRefs": [{"name": "echo", "port": "80"}]}])
    assert _problems(route) == ["spec.rules[0].backendRefs[0].port: expected integer, got string"]
    assert _problems(_route({"backendRefs": []})) == ["spec.rules: expected array, got object"]  # type: ignore[arg-type]


def test_enum_value_is_checked_with_its_choices() -> None:
    route = _route([{"matches": [{"path": {"type": "Prefix", "value": "/"}}]}])
    assert _problems(route) == [
        "spec.rules[0].matches[0].path.type: unsupported value 'Prefix' "
        "(one of: Exact, PathPrefix, RegularExpression)"
    ]
    redirect = {"type": "RequestRedirect", "requestRedirect": {"statusCode": 404}}
    assert _problems(_route([{"filters": [redirect]}])) == [
        "spec.rules[0].filters[0].requestRedirect.statusCode: unsupported value 404 "
        "(one of: 301, 302, 303, 307, 308)"
    ]


def test_nested_list_paths_count_every_level() -> None:
    filters = [
        {
            "type": "RequestHeaderModifier",
            "requestHeaderModifier": {"set": [{"name": "a", "value": "1"}]},
        },
        {
            "type": "RequestHeaderModifier",
            "requestHeaderModifier": {"add": [{"name": "b"}], "sett": []},
        },
    ]
    route = _route([{}, {"backendRefs": [{"name": "echo", "port": 80, "filters": filters}]}])
    assert _problems(route) == [
        "spec.rules[1].backendRefs[0].filters[1].requestHeaderModifier.add[0].value: "
        "required field missing",
        "spec.rules[1].backendRefs[0].filters[1].requestHeaderModifier.sett: "
        "unknown field (did you mean set?)",
    ]


def test_required_fields_and_list_sizes() -> None:
    route = _route([{"backendRefs": [{"port": 80}]}] * 17)
    problems = _problems(route)
    assert problems[0] == "spec.rules: at most 16 items allowed, got 17"
    assert problems[1] == "spec.rules[0].backendRefs[0].name: required field missing"
    gateway_obj = {"apiVersion": GW_V1, "kind": "Gateway", "metadata": {"name": "w"}, "spec": {}}
    assert _problems(gateway_obj) == [
        "spec.gatewayClassName: required field missing",
        "spec.listeners: required field missing",
    ]


def test_metadata_is_checked_like_object_meta() -> None:
    route = _route([])
    route["metadata"]["label"] = {"app": "echo"}
    route["metadata"]["annotations"] = {"enabled": True}
    assert _problems(route) == [
        "metadata.label: unknown field (did you mean labels?)",
        "metadata.annotations['enabled']: expected string, got boolean",
    ]


def test_istio_authorization_policy_typo() -> None:
    policy = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-client", "namespace": "demo"},
        "spec": {
            "targetRefs": [{"kind": "Service", "group": "", "name": "echo"}],
            "action": "allow",
            "rules": [
                {
                    "from": [{"source": {"principal": ["cluster.local/ns/demo/sa/client"]}}],
                    "to": [{"operation": {"methods": ["GET"]}}],
                }
            ],
        },
    }
    assert _problems(policy) == [
        "spec.action: unsupported value 'allow' (did you mean ALLOW?) (one of: ALLOW, DENY, AUDIT, CUSTOM)",
        "spec.rules[0].from[0].source.principal: unknown field (did you mean principals?)",
    ]


def test_istio_request_authentication_typo() -> None:
    authn = {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": "demo"},
        "spec": {"jwtRules": [{"issuer": "me", "jwksURI": "https://issuer/keys"}]},
    }
    assert _problems(authn) == ["spec.jwtRules[0].jwksURI: unknown field (did you mean jwksUri?)"]


@pytest.mark.parametrize(
    "obj",
    [
        {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"whatever": 1}},
        {"apiVersion": "gateway.networking.k8s.io/v9", "kind": "HTTPRoute", "spec": 3},
        {"apiVersion": GW_V1, "kind": "FancyRoute", "spec": 3},
        {"kind": "HTTPRoute"},
    ],
)
def test_other_tools_objects_pass_untouched(obj: dict[str, Any]) -> None:
    assert schema.check(obj) == ()


def _worlds() -> list[pathlib.Path]:
    worlds = [REPO / "examples" / "local", REPO / "manifests" / "base", REPO / "loadtests"]
    worlds += sorted((REPO / "tests" / "golden").rglob("*.yaml"))
    if (conftest.GAMMA / "manifests").is_dir():
        worlds.append(conftest.GAMMA / "manifests")
    return [w for w in worlds if "bad-inputs" not in w.parts and w.name != "out.yaml"]


def _objects(path: pathlib.Path) -> list[dict[str, Any]]:
    """Every Kubernetes object in the files (Envoy configs and settings among them are skipped)."""
    files = sorted(path.rglob("*.y*ml")) if path.is_dir() else [path]
    docs = [doc for file in files for doc in yaml.safe_load_all(file.read_text())]
    return [doc for doc in docs if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc]


# The translator's own tests feed it deliberately broken objects; only those may break schemas.
DELIBERATELY_BAD = {("GRPCRoute", "bad-matches")}


@pytest.mark.parametrize("path", _worlds(), ids=lambda p: str(p.relative_to(p.parents[2])))
def test_every_world_here_is_clean(path: pathlib.Path) -> None:
    checked = 0
    for obj in _objects(path):
        name = (obj.get("metadata") or {}).get("name")
        if schema.schema_for(obj) is None or (obj.get("kind"), name) in DELIBERATELY_BAD:
            continue
        checked += 1
        assert _problems(obj) == [], f"{obj['kind']} {name}"
    if path.name in {"local", "base"}:
        assert checked > 0


def _example_with(route: dict[str, Any]) -> list[dict[str, Any]]:
    objects = inputs.load_objects([REPO / "examples" / "local" / "world.yaml"])
    return [*objects, route]


def test_translation_reports_problems_on_the_route_and_each_parent() -> None:
    route = _route([{"backendRef": [{"name": "echo", "port": 80}]}], name="typo")
    result = translate.translate(_example_with(route))
    (found,) = [s for s in result.statuses if s.ref.name == "typo"]
    cond = next(c for c in found.conditions if c.type == schemacheck.SCHEMA_VALID)
    assert (cond.status, cond.reason) == (False, schemacheck.R_UNKNOWN_FIELD)
    assert cond.message == "spec.rules[0].backendRef: unknown field (did you mean backendRefs?)"
    (parent,) = found.parents
    assert cond in parent.conditions
    # The route is still judged on its meaning: a warning, not a rejection.
    assert {c.type: c.status for c in parent.conditions}["Accepted"] is True
    quiet = translate.translate(_example_with(route), check_schemas=False)
    assert all(c.type != schemacheck.SCHEMA_VALID for s in quiet.statuses for c in s.conditions)


def test_two_differing_copies_report_the_same_whatever_the_order() -> None:
    one = _route([{"backendRef": []}], name="dup")
    two = _route([{"filter": []}], name="dup")
    first = translate.translate([*_example_with(one), two]).statuses
    second = translate.translate([two, *_example_with(one)]).statuses
    assert first == second


def test_many_problems_are_capped_in_the_status() -> None:
    route = _route([{f"field{i}": 1} for i in range(12)], name="noisy")
    result = translate.translate(_example_with(route))
    (found,) = [s for s in result.statuses if s.ref.name == "noisy"]
    (cond,) = [c for c in found.conditions if c.type == schemacheck.SCHEMA_VALID]
    assert cond.message.split("; ")[-1] == "and 2 more schema problem(s)"


def _render(tmp_path: pathlib.Path, *extra: str) -> subprocess.CompletedProcess[str]:
    typo = tmp_path / "typo.yaml"
    route = _route([{"backendRef": [{"name": "echo", "port": 80}]}], name="typo")
    typo.write_text(yaml.safe_dump(route))
    world = str(REPO / "examples" / "local" / "world.yaml")
    return subprocess.run(
        [sys.executable, "-m", "waypoint", "render", "-f", world, "-f", str(typo), *extra],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )


WARNING = "warning: HTTPRoute demo/typo: spec.rules[0].backendRef: unknown field (did you mean backendRefs?)"


def test_render_warns_by_default_and_fails_with_strict(tmp_path: pathlib.Path) -> None:
    default = _render(tmp_path)
    assert default.returncode == 0, default.stderr
    assert WARNING in default.stderr.splitlines()
    assert "static_resources" in default.stdout
    strict = _render(tmp_path, "--strict")
    assert strict.returncode == 1
    assert WARNING in strict.stderr.splitlines()


def test_render_of_the_clean_example_is_quiet_even_strict(tmp_path: pathlib.Path) -> None:
    world = str(REPO / "examples" / "local")
    proc = subprocess.run(
        [sys.executable, "-m", "waypoint", "render", "--strict", "-f", world],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr


def test_controller_writes_schema_problems_on_route_parents(
    api: apiclient.Cluster, fake: server.FakeKube
) -> None:
    """What the controller sees is what it reports: here a route as an informer could hold it
    (a real API server prunes unknown fields first, so this shows up for values only)."""
    api.apply(gateway.generate_gateway("demo"), "waypoint")

    def world() -> list[dict[str, Any]]:
        objects = copy.deepcopy(reconcile.list_world(api))
        for obj in objects:
            if obj.get("kind") == "HTTPRoute" and obj["metadata"]["name"] == "echo-route":
                obj["spec"]["rules"][0]["sessionPersistence"] = {"type": "Cookies"}
        return objects

    reconciler = reconcile.Reconciler(api, world, clock=lambda: "2026-01-01T00:00:00Z")
    reconciler.reconcile_route_status()
    route = fake.get(GW_V1, "HTTPRoute", "demo", "echo-route")
    assert route is not None
    (parent,) = route["status"]["parents"]
    conds = {c["type"]: c for c in parent["conditions"]}
    assert conds["Accepted"]["status"] == "True"
    assert conds[schemacheck.SCHEMA_VALID]["status"] == "False"
    assert conds[schemacheck.SCHEMA_VALID]["reason"] == "Invalid"
    assert conds[schemacheck.SCHEMA_VALID]["message"] == (
        "spec.rules[0].sessionPersistence.type: unsupported value 'Cookies' "
        "(did you mean Cookie?) (one of: Cookie, Header)"
    )


def test_controller_gateway_status_carries_schema_problems() -> None:
    gw = gateway.generate_gateway("demo")
    gw["spec"]["listeners"][0]["allowedRoute"] = {"namespaces": {"from": "Same"}}
    accepted = kstatus.Verdict("Accepted", True, "Accepted")
    programmed = kstatus.Verdict("Programmed", True, "Programmed")
    now = "2026-01-01T00:00:00Z"
    written = kstatus.gateway_status(gw, accepted, programmed, [], now)
    conds = {c["type"]: c for c in written["conditions"]}
    assert conds["Accepted"]["status"] == "True"
    assert conds[schemacheck.SCHEMA_VALID]["status"] == "False"
    assert conds[schemacheck.SCHEMA_VALID]["reason"] == schemacheck.R_UNKNOWN_FIELD
    assert conds[schemacheck.SCHEMA_VALID]["message"] == (
        "spec.listeners[0].allowedRoute: unknown field (did you mean allowedRoutes?)"
    )
    # Fixed, the condition goes away again.
    del gw["spec"]["listeners"][0]["allowedRoute"]
    fixed = kstatus.gateway_status({**gw, "status": written}, accepted, programmed, [], now)
    assert [c["type"] for c in fixed["conditions"]] == ["Accepted", "Programmed"]


def test_explain_prints_schema_warnings_on_stderr(tmp_path: pathlib.Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        yaml.safe_dump(_route([{"backendRef": [{"name": "echo", "port": 80}]}], name="typo"))
    )
    world = str(REPO / "examples" / "local" / "world.yaml")
    command = ["explain", "-f", world, "-f", str(typo), "--waypoint", "demo/waypoint"]
    proc = subprocess.run(
        [sys.executable, "-m", "waypoint", *command, "http://echo.demo/"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert WARNING in proc.stderr.splitlines()
    assert "warning" not in proc.stdout.split("note:")[0]


def test_core_schemas_are_the_kubernetes_ones() -> None:
    """waypoint/schema/core.py is generated (python -m tests.schemagen); it must still equal a
    fresh conversion of the Kubernetes OpenAPI schemas kubernetes-validate ships."""
    fresh = schemagen.convert()
    assert set(fresh) == set(core.KINDS)
    for key, node in fresh.items():
        assert core.KINDS[key] == node, f"{key} differs: re-run python -m tests.schemagen"


def test_core_kinds_are_checked() -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo", "namespace": "demo"},
        "spec": {"ports": [{"port": 80, "targetport": 8080}, {"port": 81, "targetPort": "http"}]},
    }
    assert _problems(service) == [
        "spec.ports[0].targetport: unknown field (did you mean targetPort?)"
    ]
    service["spec"]["ports"][1]["targetPort"] = 8.5
    assert "spec.ports[1].targetPort: expected integer or string, got number" in _problems(service)
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "echo-a", "namespace": "demo"},
        "addressType": "IPv4",
        "endpoints": [{"address": ["10.0.0.1"]}],
    }
    assert _problems(slice_) == [
        "endpoints[0].address: unknown field (did you mean addresses?)",
        "endpoints[0].addresses: required field missing",
    ]


def test_schema_bench_runs() -> None:
    """The benchmark's plumbing (its figures are printed by python -m loadtests.schema_bench)."""
    on, off, alone = schema_bench.bench(services=5, rounds=1)
    assert min(on, off, alone) > 0
