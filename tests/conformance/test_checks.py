"""The replay's judges on their own: each declared field really can fail a case."""

from __future__ import annotations

from typing import Any

from tests.conformance import replay
from waypoint.local import echo


def _report(hostname: str = "echo-v1-abc12-x9z", **headers: list[str]) -> echo.EchoReport:
    return echo.EchoReport(
        hostname=hostname,
        namespace="gateway-conformance-mesh",
        method="GET",
        url="/set?x=1",
        host="echo",
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


def _case(expect: dict[str, Any], path: str = "/set") -> dict[str, Any]:
    return {"request": {"path": path}, "expect": expect}


def _redirect(location: str, status: int = 302) -> replay.Observed:
    return replay.Observed(status, (("location", location),))


def test_status_backend_and_namespace() -> None:
    seen = replay.Observed(200, (), _report())
    assert replay.check_request(_case({"status": 200, "backend": "echo-v1"}), seen) == []
    assert replay.check_request(_case({"status": [200, 201], "backend": None}), seen) == []
    assert replay.check_request(_case({"status": 404}), seen)
    assert replay.check_request(_case({"status": 200, "backend": "echo-v2"}), seen)
    assert replay.check_request(_case({"status": 200, "namespace": "elsewhere"}), seen)


def test_request_headers_join_every_value_and_absent_headers() -> None:
    seen = replay.Observed(200, (), _report(x_header_add=["a", "b"], x_gone=["1"]))
    joined = {"status": 200, "request_seen_by_backend": {"headers": {"X-Header-Add": "a,b"}}}
    assert replay.check_request(_case(joined), seen) == []
    joined["request_seen_by_backend"] = {"headers": {"X-Header-Add": "a"}}
    assert replay.check_request(_case(joined), seen)
    absent = {"status": 200, "request_seen_by_backend": {"absent_headers": ["X-Gone"]}}
    assert replay.check_request(_case(absent), seen)


def test_path_is_enforced_unless_skipped() -> None:
    seen = replay.Observed(200, (), _report())
    case = _case({"status": 200, "request_seen_by_backend": {"path": "/named"}})
    assert replay.check_request(case, seen)
    assert replay.check_request(case, seen, frozenset({"path"})) == []
    assert (
        replay.check_request(
            _case({"status": 200, "request_seen_by_backend": {"path": "/set"}}), seen
        )
        == []
    )


def test_response_headers_exact_and_absent() -> None:
    seen = replay.Observed(200, (("X-Header-Set", "v1"),), _report())
    assert (
        replay.check_request(
            _case({"status": 200, "response_headers": {"x-header-set": "v1"}}), seen
        )
        == []
    )
    assert replay.check_request(
        _case({"status": 200, "response_headers": {"X-Header-Set": "v2"}}), seen
    )
    assert replay.check_request(
        _case({"status": 200, "absent_response_headers": ["x-header-set"]}), seen
    )


def test_redirect_defaults_follow_the_gateway_comparator() -> None:
    # Path defaults to the request path, scheme to http; a missing host is not checked.
    assert (
        replay.check_redirect({"host": "example.org"}, "/p", _redirect("http://example.org/p"))
        == []
    )
    assert replay.check_redirect({"port": "8083"}, "/p", _redirect("http://echo:8083/p")) == []
    assert replay.check_redirect({"scheme": "https"}, "/p", _redirect("https://echo:443/p")) == []
    assert replay.check_redirect({"path": "/new"}, "/old", _redirect("http://echo:80/new")) == []
    # A port the test did not declare must be absent or the scheme's default.
    assert replay.check_redirect({"path": "/new"}, "/old", _redirect("http://echo:8080/new"))
    assert replay.check_redirect({"scheme": "https"}, "/p", _redirect("https://echo:80/p"))
    assert replay.check_redirect({"host": "example.org"}, "/p", _redirect("http://echo/p"))
    assert replay.check_redirect({}, "/p", _redirect("http://echo/other"))
    assert replay.check_redirect({}, "/p", replay.Observed(302))


def test_weights_within_tolerance_and_only_weighted_backends() -> None:
    weighted = {"weights": {"echo-v1": 0.7, "echo-v2": 0.3}, "tolerance": 0.05}
    v1, v2 = "echo-v1-7c9d-x2k", "echo-v2-5d8f-m4n"
    assert replay.check_weights(weighted, [v1] * 70 + [v2] * 30) == []
    assert replay.check_weights(weighted, [v1] * 80 + [v2] * 20)
    assert replay.check_weights(weighted, [v1] * 100)
    assert replay.check_weights(weighted, [v1] * 69 + [v2] * 30 + [None])
    assert replay.backend_key(v1) == "echo-v1"
