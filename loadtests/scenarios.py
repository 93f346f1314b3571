"""What the load is made of: the weighted scenario mix and the run spec handed to locust.

Each scenario is one request shape and the status it must get. With ext_authz in the path the
policy decides (``loadtests/policy.rego``); without it every request reaches a backend and must
get 200. On waypoint paths some scenarios also name the backend the L7 routes must pick
(``examples/local/world.yaml``), so a route that silently stops splitting counts as an error.

The harness (no gevent) writes a :class:`RunSpec` as JSON; the locust process (gevent) reads it
from the file named by ``$LOADTEST_SPEC``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
from collections.abc import Sequence
from typing import Any

SPEC_ENV = "LOADTEST_SPEC"


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One request shape: ``token`` is a key of :attr:`RunSpec.tokens` or "" for none."""

    name: str
    weight: int
    path: str
    token: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    authz_status: int = 200  # the status with ext_authz in the path
    backend_prefix: str = ""  # on routed paths: the pod name the route must reach


MIX: tuple[Scenario, ...] = (
    Scenario("allowed-jwt", 45, "/admin/orders", token="admin"),
    Scenario("no-token", 15, "/public/catalog"),
    Scenario("denied-policy", 10, "/admin/orders", token="viewer", authz_status=403),
    Scenario("invalid-token", 10, "/public/catalog", token="expired", authz_status=401),
    Scenario(
        "split-header-v2",
        10,
        "/public/v2",
        headers=(("x-version", "v2"),),
        backend_prefix="echo-v2-",
    ),
    Scenario("split-api-rewrite", 10, "/api/items", token="admin", backend_prefix="echo-v1-"),
)
ALLOWED = "allowed-jwt"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything a locust process needs to load one path."""

    path: str  # the harness's path name, for labels
    user: str  # the locust user class name
    target: str  # http: base URL; hbone, grpc: host:port
    user_rate: float  # requests per second per user (constant throughput)
    samples_file: str  # where the precise latency recorder writes its JSON
    tokens: dict[str, str]
    authority: str = ""  # hbone: CONNECT authority (VIP:port)
    cert_dir: str = ""  # hbone: the client's SPIFFE identity (pki.Identity.write layout)
    server_id: str = ""  # hbone: the waypoint's SPIFFE ID
    authz: bool = False  # ext_authz decides statuses
    routed: bool = False  # L7 routes pick backends (waypoint paths)
    warmup_seconds: float = 0.0
    keepalive: bool = True  # hbone: one kept tunnel per user, HTTP/1.1 keep-alive inside
    seed: int = 7

    def dump(self, file: pathlib.Path) -> pathlib.Path:
        file.write_text(json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True))
        return file

    @classmethod
    def load(cls, file: str | os.PathLike[str]) -> RunSpec:
        raw = json.loads(pathlib.Path(file).read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"{file}: a run spec must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{file}: unknown run spec keys {unknown}")
        return cls(**raw)

    @classmethod
    def from_env(cls) -> RunSpec:
        file = os.environ.get(SPEC_ENV)
        if not file:
            raise RuntimeError(f"${SPEC_ENV} is not set: run locust through loadtests.harness")
        return cls.load(file)


def expected_status(spec: RunSpec, scenario: Scenario) -> int:
    return scenario.authz_status if spec.authz else 200


def headers_for(spec: RunSpec, scenario: Scenario) -> list[tuple[str, str]]:
    headers = list(scenario.headers)
    if scenario.token:
        try:
            headers.append(("authorization", f"Bearer {spec.tokens[scenario.token]}"))
        except KeyError:
            raise ValueError(
                f"scenario {scenario.name!r}: no token {scenario.token!r} in the run spec"
            ) from None
    return headers


class Picker:
    """Weighted choice over the mix, seeded so a run's sequence is reproducible."""

    def __init__(self, mix: Sequence[Scenario] = MIX, seed: int = 7) -> None:
        if not mix or any(s.weight <= 0 for s in mix):
            raise ValueError("a scenario mix needs at least one scenario, all weights > 0")
        self._mix = list(mix)
        self._weights = [s.weight for s in mix]
        self._random = random.Random(seed)

    def next(self) -> Scenario:
        return self._random.choices(self._mix, self._weights)[0]


def check_backend(scenario: Scenario, spec: RunSpec, hostname: str) -> str | None:
    """An error message when a routed request reached the wrong backend."""
    if not spec.routed or not scenario.backend_prefix:
        return None
    if hostname.startswith(scenario.backend_prefix):
        return None
    return f"{scenario.name}: routed to {hostname!r}, expected {scenario.backend_prefix}*"


def as_dict(scenario: Scenario) -> dict[str, Any]:
    return dataclasses.asdict(scenario)
