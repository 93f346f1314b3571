"""Golden tests for ``waypoint.translate``: Kubernetes YAML → IR and statuses.

Each ``tests/golden/translate/<case>/in.yaml`` translates to ``out.yaml`` (the serde form of the
whole Translation). ``pytest --update-golden`` rewrites the expected files; review the diff.
"""

from __future__ import annotations

import pathlib
import random
from typing import Any

import pytest
import yaml

from tests import golden
from waypoint import model, translate
from waypoint.model import serde

CASES = pathlib.Path(__file__).parent / "golden" / "translate"
CASE_NAMES = sorted(p.name for p in CASES.iterdir() if (p / "in.yaml").exists())


def load(case: str) -> list[dict[str, Any]]:
    return [
        doc for doc in yaml.safe_load_all((CASES / case / "in.yaml").read_text()) if doc is not None
    ]


def render(translation: model.Translation) -> str:
    return golden.dump(serde.to_data(translation))


def test_cases_exist() -> None:
    assert len(CASE_NAMES) >= 13


@pytest.mark.parametrize("case", CASE_NAMES)
def test_golden(case: str) -> None:
    golden.check(CASES / case / "out.yaml", render(translate.translate(load(case))))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_input_order_does_not_matter(case: str) -> None:
    objects = load(case)
    expected = translate.translate(objects)
    rng = random.Random(case)
    for _ in range(3):
        shuffled = list(objects)
        rng.shuffle(shuffled)
        assert translate.translate(shuffled) == expected
    assert translate.translate(list(reversed(objects))) == expected


@pytest.mark.parametrize("case", CASE_NAMES)
def test_serde_round_trip(case: str) -> None:
    translation = translate.translate(load(case))
    assert serde.from_data(model.Translation, serde.to_data(translation)) == translation


def _status(
    translation: model.Translation, kind: str, namespace: str, name: str
) -> model.ResourceStatus:
    for found in translation.statuses:
        if (found.ref.kind, found.ref.namespace, found.ref.name) == (kind, namespace, name):
            return found
    raise AssertionError(f"no status for {kind} {namespace}/{name}")


def _destination(waypoint: model.Waypoint, name: str, port: int) -> model.Destination:
    for dest in waypoint.destinations:
        if (dest.name, dest.port) == (name, port):
            return dest
    raise AssertionError(f"no destination {name}:{port} in {waypoint.namespace}/{waypoint.name}")


def test_bad_inputs_leave_the_rest_intact() -> None:
    translation = translate.translate(load("bad-inputs"))
    assert [(w.namespace, w.name) for w in translation.waypoints] == [("bad", "waypoint")]
    waypoint = translation.waypoints[0]
    good = _destination(waypoint, "good", 80)
    assert [r.match.path.value for r in good.routes if r.match.path] == ["/ok", "/"]
    assert [e.address for e in waypoint.clusters[0].endpoints] == ["10.1.12.2"]
    for name, field in [
        ("wrong-port", "spec.listeners[0].port"),
        ("wrong-protocol", "spec.listeners[0].protocol"),
        ("no-listeners", "spec.listeners is required"),
        ("bad-for", "istio.io/waypoint-for"),
    ]:
        gateway = _status(translation, "Gateway", "bad", name)
        assert not gateway.ok
        assert field in gateway.conditions[0].message
    route = _status(translation, "HTTPRoute", "bad", "mixed-rules")
    accepted = route.parents[0].conditions[0]
    assert (accepted.type, accepted.status, accepted.reason) == (
        "Accepted",
        False,
        "UnsupportedValue",
    )
    assert "filter type ExtensionRef is not supported" in accepted.message
    assert "dropped rule 18" in accepted.message


def test_route_statuses_name_their_parents() -> None:
    translation = translate.translate(load("bad-inputs"))
    route = _status(translation, "HTTPRoute", "bad", "unknown-service")
    reasons = {
        (p.parent.kind, p.parent.name, p.port, p.section_name): p.conditions[0].reason
        for p in route.parents
    }
    assert reasons == {
        ("Service", "nowhere", None, None): "NoMatchingParent",
        ("Service", "good", 81, None): "NoMatchingParent",
        ("Service", "good", None, "nope"): "NoMatchingParent",
        ("Service", "good", 9000, None): "NotAllowedByListeners",
        ("Service", "uses-rejected", None, None): "NoMatchingParent",
        ("Gateway", "waypoint", None, None): "UnsupportedValue",
    }
