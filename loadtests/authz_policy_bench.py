"""Native authorization vs the ext_authz hop, on one waypoint: what each adds to p99 and CPU.

The hop rig (:mod:`loadtests.hop_rig`: native backend, ztunnel stand-ins, our waypoint; no
Python in the data path) serves three Services of the same pod through the same waypoint,
each with the same HTTPRoute (path prefix + header match, rewrite, header changes):

1. ``none``: no policy;
2. ``native``: an Istio RequestAuthentication (Envoy's jwt_authn, inline JWKS) and an
   AuthorizationPolicy with 10 ALLOW rules, the one that matches last (the client's SPIFFE
   ID, the token's ``iss/sub``, a claim, method and path), all in Envoy's RBAC filter;
3. ``extauthz``: the same decision through an ExtAuthzPolicy: Envoy asks the extauthz
   sidecar (one process, embedded Rego), which verifies the RS256 token itself and
   evaluates the equivalent Rego rules.

Every request carries the same RS256 token. Phases are interleaved (none, native, extauthz,
none, ...) at a fixed rate on ``--connections`` (default one steady connection); the table
reports pooled p50/p90/p99, the waypoint Envoy's and extauthz's CPU seconds per 1,000
requests, and what native and extauthz add over none. Target: native adds <= 0.3 ms p99 and
<= 0.1 vCPU per 1,000 rps (= 0.1 CPU s per 1,000 requests).

    python -m loadtests.authz_policy_bench                      # 1,000 rps, 15 s x 2 rounds
    python -m loadtests.authz_policy_bench --rate 50 --duration 2 --rounds 1   # smoke

Results: ``loadtests/results/authz-policy-<timestamp>/authz-policy.{md,json}`` (or ``--out``).
Traffic stays on loopback; every process is stopped on the way out.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import math
import os
import pathlib
import sys
import urllib.error
import urllib.request
from typing import Any

from extauthz import tokens
from loadtests import authz, extauthz_bench, hop_envoys, hop_rig, procs, recorder
from waypoint import names

VARIANTS = ("none", "native", "extauthz")
VIPS = {"none": "10.96.30.10", "native": "10.96.30.11", "extauthz": "10.96.30.12"}
TARGET_P99_MS = 0.3
TARGET_CPU_PER_1K = 0.1
RULES = 10
SUBJECT = "loadgen"
REGO = f"""package envoy.authz

import rego.v1

default bench := false

# Nine rules that do not match this client, then the one that does: as the RBAC policy.
bench if {{
	input.source_principal == "spiffe://cluster.local/ns/hop/sa/client"
	input.jwt.claims.iss == "{authz.ISSUER}"
	input.jwt.claims.sub == "{SUBJECT}"
	input.jwt.claims.role == "bench"
	input.attributes.request.http.method == "GET"
	startswith(input.attributes.request.http.path, "/hop/")
}}
"""


def _decoy(i: int) -> dict[str, Any]:
    """A rule this benchmark's requests never match (so RBAC tries every one)."""
    return {
        "from": [{"source": {"principals": [f"cluster.local/ns/team-{i}/sa/app"]}}],
        "to": [{"operation": {"methods": ["GET", "POST"], "paths": [f"/team-{i}/*"]}}],
        "when": [{"key": "request.auth.claims[role]", "values": [f"team-{i}"]}],
    }


def native_policies() -> list[dict[str, Any]]:
    target = [{"group": "", "kind": "Service", "name": "backend-native"}]
    matching = {
        "from": [
            {
                "source": {
                    "principals": ["cluster.local/ns/hop/sa/client"],
                    "requestPrincipals": [f"{authz.ISSUER}/{SUBJECT}"],
                }
            }
        ],
        "to": [{"operation": {"methods": ["GET"], "paths": ["/hop/*"]}}],
        "when": [{"key": "request.auth.claims[role]", "values": ["bench"]}],
    }
    jwks = (authz.EXAMPLE / "jwks.json").read_text()
    return [
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "RequestAuthentication",
            "metadata": {"name": "bench", "namespace": hop_rig.NAMESPACE},
            "spec": {
                "targetRefs": target,
                "jwtRules": [
                    {
                        "issuer": authz.ISSUER,
                        "audiences": [authz.AUDIENCE],
                        "jwks": jwks,
                        # The route matches on the header: keep it for the router.
                        "forwardOriginalToken": True,
                    }
                ],
            },
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "bench", "namespace": hop_rig.NAMESPACE},
            "spec": {
                "targetRefs": target,
                "rules": [*(_decoy(i) for i in range(RULES - 1)), matching],
            },
        },
    ]


def extauthz_policy() -> dict[str, Any]:
    return {
        "apiVersion": "policy.waypoint.dev/v1alpha1",
        "kind": "ExtAuthzPolicy",
        "metadata": {"name": "bench", "namespace": hop_rig.NAMESPACE},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "backend-extauthz"}],
            "decision": "envoy/authz/bench",
            "timeout": "1s",
        },
    }


def world(pod_address: str, token: str) -> list[dict[str, Any]]:
    """The hop world with its Service and route copied for native and extauthz."""
    base = hop_rig.load_world(pod_address)
    out = []
    for obj in base:
        if obj.get("kind") == "HTTPRoute":
            for rule in obj["spec"]["rules"]:
                for match in rule.get("matches") or []:
                    for header in match.get("headers") or []:
                        if header["name"] == "authorization":
                            header["value"] = f"Bearer {token}"
        out.append(obj)
    for variant in ("native", "extauthz"):
        for obj in base:
            if obj.get("kind") in ("Service", "HTTPRoute"):
                copied = copy.deepcopy(obj)
                copied["metadata"]["name"] = f"backend-{variant}"
                if copied["kind"] == "Service":
                    copied["spec"]["clusterIP"] = VIPS[variant]
                else:
                    copied["spec"]["parentRefs"][0]["name"] = f"backend-{variant}"
                    for rule in copied["spec"]["rules"]:
                        for backend in rule.get("backendRefs") or []:
                            backend["name"] = f"backend-{variant}"
                out.append(copied)
    # Endpoints for the copies: the same pod.
    for obj in base:
        if obj.get("kind") == "EndpointSlice":
            for variant in ("native", "extauthz"):
                copied = copy.deepcopy(obj)
                copied["metadata"]["name"] = f"backend-{variant}-abcde"
                copied["metadata"]["labels"] = {"kubernetes.io/service-name": f"backend-{variant}"}
                out.append(copied)
    return [*out, *native_policies(), extauthz_policy()]


class PolicyRig(hop_rig.HopRig):
    """The hop rig with the three Services and one client tunnel to each through the waypoint."""

    def __init__(self, workdir: pathlib.Path, token: str, concurrency: int = 1) -> None:
        super().__init__(workdir, concurrency, access_log=False)
        self.token = token
        self.extauthz_port = procs.free_port()
        self.tunnel_ports = {variant: procs.free_port() for variant in VARIANTS}

    def _waypoint_options(self) -> Any:
        return dataclasses.replace(
            super()._waypoint_options(), extauthz_address=f"127.0.0.1:{self.extauthz_port}"
        )

    def _world(self) -> tuple[str, list[dict[str, Any]]]:
        return "the policy world", world(self.layout.pod, self.token)

    def _client(self, certs: hop_envoys.CertFiles, waypoint_port: int) -> dict[str, Any]:
        tunnels = [
            hop_envoys.Tunnel(
                variant,
                ("127.0.0.1", self.tunnel_ports[variant]),
                ("127.0.0.1", waypoint_port),
                names.authority(VIPS[variant], hop_rig.SERVICE_PORT),
                self.waypoint_id,
            )
            for variant in VARIANTS
        ]
        return hop_envoys.client_ztunnel(tunnels, certs, self.layout.admin["client-ztunnel"])

    def url(self, variant: str) -> str:
        return f"http://127.0.0.1:{self.tunnel_ports[variant]}{hop_rig.PATH}"


def mint_token() -> str:
    key = (authz.EXAMPLE / "demo-signing-key.pem").read_bytes()
    return tokens.mint(
        key, authz.KID, authz.ISSUER, authz.AUDIENCE, SUBJECT, 7200, {"role": "bench"}
    )


def extauthz_config(port: int, rego: pathlib.Path) -> dict[str, Any]:
    """extauthz as the load tests run it (RS256 demo issuer), deciding ``bench``."""
    doc = authz.bench_config(f"127.0.0.1:{port}")
    policy = {**doc["policy"], "modules": [str(rego)], "decision": "envoy/authz/bench"}
    return {**doc, "policy": policy}


def probe(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5.0) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


@dataclasses.dataclass
class Phase:
    variant: str
    round: int
    latencies: list[float]
    statuses: dict[int, int]
    sent: int
    cpu: dict[str, float]

    def record(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "round": self.round,
            "requests": sum(self.statuses.values()),
            "sent": self.sent,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "p99_ms": recorder.percentile(sorted(self.latencies), 99.0) * 1000.0,
            "cpu_seconds": self.cpu,
        }


def _cpu(rig: PolicyRig, sidecar: procs.Child) -> dict[str, float]:
    return {
        "waypoint": procs.usage(rig.pid("waypoint")).cpu_seconds,
        "extauthz": extauthz_bench.tree_cpu(sidecar.pid),
    }


def run_phase(
    rig: PolicyRig, sidecar: procs.Child, variant: str, round_: int, args: argparse.Namespace
) -> Phase:
    before = _cpu(rig, sidecar)
    text = extauthz_bench.run_hey(
        rig.url(variant), rig.token, args.duration, args.connections, args.rate
    )
    after = _cpu(rig, sidecar)
    latencies, statuses, _span = extauthz_bench.parse_hey_csv(text, args.warmup)
    _, everything, _ = extauthz_bench.parse_hey_csv(text, 0.0)
    cpu = {k: after[k] - before[k] for k in before}
    return Phase(variant, round_, latencies, statuses, sum(everything.values()), cpu)


def summarize(phases: list[Phase], variant: str) -> dict[str, float]:
    mine = [p for p in phases if p.variant == variant]
    latencies = sorted(x * 1000.0 for p in mine for x in p.latencies)
    sent = sum(p.sent for p in mine)
    out = {f"p{q:g}": recorder.percentile(latencies, q) for q in (50.0, 90.0, 99.0)}
    out["requests"] = sum(sum(p.statuses.values()) for p in mine)
    out["non_200"] = sum(n for p in mine for code, n in p.statuses.items() if code != 200)
    for role in ("waypoint", "extauthz"):
        spent = sum(p.cpu[role] for p in mine)
        out[f"cpu_{role}_per_1k"] = spent / sent * 1000.0 if sent else math.nan
    return out


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    table = report["table"]
    lines = [
        f"Run {report['started']}: {args.rate:g} rps on {args.connections} connection(s), "
        f"{args.duration:g} s per phase ({args.warmup:g} s warm-up dropped) x {args.rounds} "
        f"interleaved round(s); every Envoy --concurrency 1; waypoint access log off; load "
        f"average {report['load_average'][0]:.2f} before, {report['load_average'][1]:.2f} "
        f"after ({os.cpu_count()} CPUs).",
        "",
        "| variant | p50 ms | p90 ms | p99 ms | requests | non-200 | waypoint CPU s / 1k req "
        "| extauthz CPU s / 1k req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        row = table[variant]
        lines.append(
            f"| {variant} | {row['p50']:.3f} | {row['p90']:.3f} | {row['p99']:.3f} | "
            f"{int(row['requests'])} | {int(row['non_200'])} | {row['cpu_waypoint_per_1k']:.3f} "
            f"| {row['cpu_extauthz_per_1k']:.3f} |"
        )
    added = report["added"]
    lines += [
        "",
        "| over no policy | added p99 ms | added CPU s / 1k req (waypoint + extauthz) |",
        "|---|---|---|",
    ]
    for variant in ("native", "extauthz"):
        lines.append(
            f"| {variant} | {added[variant]['p99_ms']:+.3f} | {added[variant]['cpu_per_1k']:+.3f} |"
        )
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {ok} |" for g, m, ok in report["verdicts"]]
    return "\n".join(lines) + "\n"


def _cpu_per_1k(row: dict[str, float]) -> float:
    return row["cpu_waypoint_per_1k"] + row["cpu_extauthz_per_1k"]


def _added(table: dict[str, dict[str, float]], variant: str) -> dict[str, float]:
    row, base = table[variant], table["none"]
    return {"p99_ms": row["p99"] - base["p99"], "cpu_per_1k": _cpu_per_1k(row) - _cpu_per_1k(base)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.authz_policy_bench")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args(argv)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or pathlib.Path(__file__).parent / "results" / f"authz-policy-{started}"
    out.mkdir(parents=True, exist_ok=True)
    token = mint_token()
    rig = PolicyRig(out / "rig", token)
    rego = out / "bench.rego"
    rego.write_text(REGO)
    config = extauthz_config(rig.extauthz_port, rego)
    sidecar = authz.start_extauthz("extauthz", out, config, decision_log=False)
    load_before = os.getloadavg()[0]
    phases: list[Phase] = []
    try:
        rig.start()
        for variant in VARIANTS:
            answer = probe(rig.url(variant), token)
            if answer != 200:
                raise hop_rig.HopRigError(f"{variant}: the probe request answered {answer}")
        for round_ in range(1, args.rounds + 1):
            for variant in VARIANTS:
                print(f"round {round_}: {variant}", file=sys.stderr)
                phases.append(run_phase(rig, sidecar, variant, round_, args))
    finally:
        rig.stop()
        sidecar.stop()
    table = {variant: summarize(phases, variant) for variant in VARIANTS}
    added = {variant: _added(table, variant) for variant in ("native", "extauthz")}
    native = added["native"]
    report = {
        "started": started,
        "load_average": [load_before, os.getloadavg()[0]],
        "table": table,
        "added": added,
        "verdicts": [
            (
                f"native adds <= {TARGET_P99_MS} ms p99",
                f"{native['p99_ms']:+.3f} ms",
                "yes" if native["p99_ms"] <= TARGET_P99_MS else "NO",
            ),
            (
                f"native adds <= {TARGET_CPU_PER_1K} vCPU per 1,000 rps",
                f"{native['cpu_per_1k']:+.3f} CPU s / 1k req",
                "yes" if native["cpu_per_1k"] <= TARGET_CPU_PER_1K else "NO",
            ),
        ],
        "phases": [p.record() for p in phases],
    }
    text = markdown(report, args)
    (out / "authz-policy.md").write_text(text)
    (out / "authz-policy.json").write_text(json.dumps(report, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
