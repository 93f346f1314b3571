"""Unit tests for the pieces of ``waypoint.translate``, and a garbage-input property test."""

from __future__ import annotations

import copy
import pathlib
import random
from typing import Any

import pytest
import yaml

from tests.fakekube import world
from waypoint import model, translate
from waypoint.controller import manager
from waypoint.translate import fields, filters, index, matches, services, status

CASES = pathlib.Path(__file__).parent / "golden" / "translate"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("500ms", 0.5),
        ("1h1m", 3660.0),
        ("0s", 0.0),
        ("1h2m3s4ms", 3723.004),
        ("99999ms", 99.999),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert filters.duration(text, "d") == seconds


@pytest.mark.parametrize("text", ["10", "1.5s", "1d", "1s1s1s1s1s", "100000s", "-1s", "", " 1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(fields.Bad, match="not a Gateway API duration"):
        filters.duration(text, "spec.rules[0].timeouts.request")


@pytest.mark.parametrize(
    ("name", "app", "protocol"),
    [
        ("http", None, model.Protocol.HTTP),
        ("http-metrics", None, model.Protocol.HTTP),
        ("HTTP", None, model.Protocol.HTTP),
        ("http2", None, model.Protocol.HTTP2),
        ("http2-x", None, model.Protocol.HTTP2),
        ("grpc", None, model.Protocol.HTTP2),
        ("grpc-web", None, model.Protocol.HTTP),
        ("grpc-web-x", None, model.Protocol.HTTP),
        ("tcp", None, model.Protocol.TCP),
        ("https", None, model.Protocol.TCP),
        ("", None, model.Protocol.TCP),
        ("web", "http", model.Protocol.HTTP),
        ("http", "tcp", model.Protocol.TCP),
        ("x", "kubernetes.io/h2c", model.Protocol.HTTP2),
        ("x", "kubernetes.io/ws", model.Protocol.HTTP),
        ("http", "kubernetes.io/wss", model.Protocol.TCP),
        ("x", "GRPC", model.Protocol.HTTP2),
    ],
)
def test_protocol_detection(name: str, app: str | None, protocol: model.Protocol) -> None:
    assert services.detect_protocol(name, app) is protocol


@pytest.mark.parametrize(
    "pattern", ["(?=a)", "(?!a)", "(?<=a)", "(?<!a)", r"(a)\1", "a++", "(", "[z-a]"]
)
def test_regexes_re2_would_refuse(pattern: str) -> None:
    with pytest.raises(fields.Bad):
        matches.check_regex(pattern, "value")


@pytest.mark.parametrize("pattern", [r"/api/v[0-9]+/.*", r"(?i)abc", r"\++", r"a{2,3}", r"[^/]+"])
def test_regexes_allowed(pattern: str) -> None:
    assert matches.check_regex(pattern, "value") == pattern


def test_precedence_rank_orders_as_the_spec_says() -> None:
    def m(kind: str, value: str, **extra: Any) -> model.RouteMatch:
        return model.RouteMatch(path=model.PathMatch(model.MatchType(kind), value), **extra)

    header = (model.ValueMatch("h", "v"),)
    ordered = [
        m("Exact", "/a"),
        m("PathPrefix", "/abc"),
        m("PathPrefix", "/a", method="GET"),
        m("PathPrefix", "/a", headers=header + header),
        m("PathPrefix", "/a", headers=header),
        m("PathPrefix", "/a", query=header),
        m("PathPrefix", "/a"),
        m("RegularExpression", "/a.*"),
    ]
    shuffled = list(reversed(ordered))
    assert sorted(shuffled, key=matches.http_rank) == ordered


def _mutations() -> list[Any]:
    return [None, "", "x", 0, -1, 70000, True, 1.5, [], ["x"], {}, {"a": 1}, [{"name": 1}]]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*prefix, i))
    return found


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


@pytest.mark.parametrize(
    "case", ["filters", "endpoints", "sa-scoped", "grpcroute", "cross-namespace"]
)
def test_garbage_anywhere_never_raises(case: str) -> None:
    """Replace random fields with values of the wrong type: statuses, never exceptions."""
    objects = [d for d in yaml.safe_load_all((CASES / case / "in.yaml").read_text()) if d]
    rng = random.Random(case)
    for _ in range(150):
        broken = copy.deepcopy(objects)
        target = rng.randrange(len(broken))
        paths = _paths(broken[target])
        for _ in range(rng.randint(1, 3)):
            _set(broken[target], rng.choice(paths), rng.choice(_mutations()))
            paths = _paths(broken[target]) or paths
        result = translate.translate(broken)
        assert result == translate.translate(list(reversed(broken)))


def test_junk_documents_are_ignored_or_reported() -> None:
    junk: list[Any] = [
        "a string",
        None,
        42,
        {"kind": ["not", "a", "string"]},
        {"apiVersion": "v1", "kind": "Pod", "metadata": "not a mapping"},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "s", "labels": {1: "x", "b": "c"}},
        },
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}},
    ]
    result = translate.translate(junk)
    assert result.waypoints == ()
    assert [(s.ref.kind, s.ref.name, s.conditions[0].message) for s in result.statuses] == [
        ("Pod", "", "metadata must be a mapping, not str"),
        ("Service", "s", "metadata.labels has a non-string key 1"),
    ]


def test_a_waypoints_own_service_is_not_a_destination() -> None:
    """The controller's generated Service for a waypoint is left out of the world, as istiod
    leaves out gateway.istio.io/managed Services: a waypoint never serves itself (and creating
    one is no reason to translate again)."""
    generated = world.service("demo", "waypoint", "10.96.9.9")
    generated["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "waypoint-controller"
    objects = [*world.mesh("demo"), generated]
    found = index.Index(objects, status.Book())
    assert sorted(found.services) == [("demo", "echo")]
    assert not manager._translation_input(None, generated)
    assert manager._translation_input(None, world.service("demo", "other", "10.96.9.8"))
