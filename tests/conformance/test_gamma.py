"""Every GAMMA conformance case (``../shared/conformance/gamma``) through a real Envoy waypoint.

One LocalStack serves the session: echo pods and their HBONE terminators start once, and
each conformance test reloads Envoy on ``base.yaml`` plus that test's manifests (upstream
applies them before the test and deletes them after). The manifests are read from the
shared folder at test time; they are never copied into the repository. See
docs/conformance.md for the replay rules and the current results.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests import conftest
from tests.conformance import replay
from tests.conformance import world as world_mod
from waypoint.local import stack as stack_mod
from waypoint.runtime import inputs

MANIFESTS = conftest.GAMMA / "manifests"
CASES = conftest.GAMMA / "cases.json"

# Fields of one case (test name, case index) that we deliberately do not enforce.
NOT_ENFORCED: Mapping[tuple[str, int], frozenset[str]] = {
    # The Go test declares path "/named" for a request to "/unnamed" that no filter rewrites
    # (see the case's note); a correct waypoint delivers "/unnamed".
    ("MeshHTTPRouteNamedRule", 1): frozenset({"path"}),
}

# (test name, case index) → why it fails today; each is a strict expected failure.
KNOWN_FAILURES: Mapping[tuple[str, int], str] = {}

# Route objects a test may leave unresolved on purpose: grpcroute-weight.yaml sends weight 0
# to echo-v3, which base.yaml never defines (ResolvedRefs False, no traffic goes there).
EXPECTED_PROBLEMS: Mapping[str, frozenset[str]] = {
    "MeshGRPCRouteWeight": frozenset(
        {"GRPCRoute/gateway-conformance-mesh/mesh-grpc-weighted-backends"}
    ),
}


class KnownFailure(AssertionError):
    """Only cases listed in KNOWN_FAILURES failed."""


def _tests() -> list[dict[str, Any]]:
    if not CASES.exists():
        return []
    tests: list[dict[str, Any]] = json.loads(CASES.read_text())
    return tests


def _params() -> list[Any]:
    missing = conftest.gamma_missing(CASES)
    if missing is not None:
        # One visible skip with the reason, not pytest's bare "got empty parameter set".
        return [pytest.param(None, id="no-data", marks=pytest.mark.skip(reason=missing))]
    params = []
    for test in _tests():
        known = [
            f"case {i}: {reason}"
            for (name, i), reason in sorted(KNOWN_FAILURES.items())
            if name == test["name"]
        ]
        marks = (
            [pytest.mark.xfail(reason="; ".join(known), strict=True, raises=KnownFailure)]
            if known
            else []
        )
        params.append(pytest.param(test, id=test["name"], marks=marks))
    return params


def _objects(files: list[str]) -> list[dict[str, Any]]:
    paths: list[str | pathlib.Path] = [MANIFESTS / "base.yaml", *(MANIFESTS / f for f in files)]
    return inputs.load_objects(paths)


@pytest.fixture(scope="session")
def gamma_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[stack_mod.LocalStack, world_mod.World]]:
    missing = conftest.gamma_missing(CASES)
    if missing is not None:
        pytest.skip(missing)
    world = world_mod.build(_objects([]))
    stack = stack_mod.LocalStack(
        world.objects,
        world_mod.MESH_NS,
        world_mod.WAYPOINT,
        workdir=tmp_path_factory.mktemp("gamma"),
    )
    with stack:
        yield stack, world


def _describe(test: Mapping[str, Any], index: int, problems: list[str]) -> str:
    case = test["cases"][index]
    request = case["request"]
    what = f"{request.get('method') or 'gRPC'} {request['host']}{request.get('path') or ''}"
    lines = [f"{test['name']} case {index} {case['name']!r} ({what}):"]
    return "\n".join(lines + [f"    {p}" for p in problems])


def _run_case(
    stack: stack_mod.LocalStack, world: world_mod.World, test: Mapping[str, Any], index: int
) -> list[str]:
    case = test["cases"][index]
    where = replay.target(case, world, stack)

    def sync_client() -> Any:
        return stack.client(
            where.client_namespace, where.client_service_account, destination=where.authority
        )

    def async_client() -> Any:
        return stack.async_client(
            where.client_namespace, where.client_service_account, destination=where.authority
        )

    if case["kind"] == "weighted":
        return replay.run_weighted(async_client, case, where)
    skip = NOT_ENFORCED.get((test["name"], index), frozenset())
    return replay.run_request(sync_client, case, where, skip)


def _unexpected_problems(stack: stack_mod.LocalStack, test: Mapping[str, Any]) -> list[str]:
    allowed = EXPECTED_PROBLEMS.get(test["name"], frozenset())
    out = []
    for status in stack.problems():
        if str(status.ref).replace(".gateway.networking.k8s.io", "") in allowed:
            continue
        reasons = [f"{c.type}={c.reason}: {c.message}" for c in status.conditions if not c.status]
        reasons += [
            f"parent {p.parent}: {c.type}={c.reason}: {c.message}"
            for p in status.parents
            for c in p.conditions
            if not c.status
        ]
        out.append(f"{status.ref}: {'; '.join(reasons)}")
    return out


@pytest.mark.parametrize("test", _params())
def test_gamma(
    gamma_stack: tuple[stack_mod.LocalStack, world_mod.World], test: Mapping[str, Any]
) -> None:
    stack, base_world = gamma_stack
    world = world_mod.build(_objects(test["manifests"]))
    assert world.vips == base_world.vips  # routes never add Services: backends stay valid
    stack.reload(world.objects)
    rejected = _unexpected_problems(stack, test)
    assert not rejected, "translation rejected objects:\n" + "\n".join(rejected)
    unexpected: list[str] = []
    known: list[str] = []
    fixed: list[str] = []
    for index in range(len(test["cases"])):
        problems = _run_case(stack, world, test, index)
        is_known = (test["name"], index) in KNOWN_FAILURES
        if problems:
            (known if is_known else unexpected).append(_describe(test, index, problems))
        elif is_known:
            fixed.append(f"{test['name']} case {index} passes now: remove it from KNOWN_FAILURES")
    if unexpected or fixed:
        raise AssertionError("\n".join(unexpected + fixed + known))
    if known:
        raise KnownFailure("\n".join(known))
