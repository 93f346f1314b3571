"""``waypoint up``: a complete local waypoint with no cluster — the project's main job.

It generates a dev CA and SPIFFE certificates, starts echo backends (and HBONE terminators
for mesh pods) for every endpoint of an example world, starts the real Envoy on the rendered
config, sends a few HBONE requests through it, prints what happened, and stays up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from extauthz import demo
from waypoint import pipeline
from waypoint.commands import args as cli_args
from waypoint.commands import report
from waypoint.local import echo, sidecar
from waypoint.local import stack as stack_mod
from waypoint.local.hbone import client as hbone_client
from waypoint.local.hbone import errors
from waypoint.runtime import inputs

# Package data, so `pip install` and `waypoint up` work from any directory.
EXAMPLE = pathlib.Path(stack_mod.__file__).resolve().parent / "example"
EXAMPLE_REGO = demo.REGO
CLIENT_NS, CLIENT_SA = "demo", "sleep"


@dataclasses.dataclass(frozen=True)
class Demo:
    """One demo request: what to send and what it shows."""

    title: str
    service: str
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    port: int = 80
    token: str | None = None  # "admin", "viewer" or "expired": a demo JWT to present
    expect: int = 200


DEMOS = (
    Demo("canary split 80/20 (v1/v2)", "echo"),
    Demo("header match x-version: v2 → v2", "echo", headers=(("x-version", "v2"),)),
    Demo("prefix rewrite /api → /v1/api, header set", "echo", path="/api/orders"),
    Demo("redirect /old → /new (301)", "echo", path="/old/page", expect=301),
    Demo("a Service with no route: its own endpoints", "echo-v2"),
    Demo("authz: GET /public, no token → allowed by Rego", "echo-v1", path="/public/info"),
    Demo(
        "authz: /admin as role viewer → 403 by Rego",
        "echo-v1",
        path="/admin",
        token="viewer",
        expect=403,
    ),
    Demo("authz: /admin as role admin → allowed", "echo-v1", path="/admin", token="admin"),
    Demo(
        "authz: /admin with an expired token → 401",
        "echo-v1",
        path="/admin",
        token="expired",
        expect=401,
    ),
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run a complete local waypoint with no cluster",
        description=cli_args.plain(__doc__),
    )
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        metavar="FILE",
        help="world to run (default: the packaged example world, as in examples/local)",
    )
    parser.add_argument("--waypoint", default="demo/waypoint", metavar="NS/NAME")
    parser.add_argument(
        "--rego",
        action="append",
        metavar="FILE",
        help="Rego modules for ExtAuthzPolicy decisions (default: the packaged demo policy)",
    )
    parser.add_argument("--hbone-port", type=int, default=15008, help="0 picks a free port")
    parser.add_argument("--admin-port", type=int, default=15000)
    parser.add_argument("--readiness-port", type=int, default=15021)
    parser.add_argument("--stats-port", type=int, default=15090)
    parser.add_argument("--upstream-hbone-port", type=int, default=15008)
    cli_args.add_access_log_flag(parser)
    parser.add_argument("--workdir", help="keep certificates and config here (default: a temp dir)")
    parser.add_argument(
        "--once", action="store_true", help="exit after the demo requests instead of staying up"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    files = args.filename or [str(EXAMPLE)]
    namespace, _, name = args.waypoint.partition("/")
    try:
        objects = inputs.load_objects(files)
    except inputs.InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ports = stack_mod.Ports(
        hbone=args.hbone_port,
        upstream_hbone=args.upstream_hbone_port,
        admin=args.admin_port,
        readiness=args.readiness_port,
        stats=args.stats_port,
    )
    out = sys.stdout
    print(f"waypoint up: starting {namespace}/{name} from {', '.join(files)}", file=out)
    try:
        local = stack_mod.LocalStack(
            objects,
            namespace,
            name,
            ports=ports,
            workdir=args.workdir,
            rego_modules=args.rego or [str(EXAMPLE_REGO)],
            access_log=args.access_log,
        )
        local.start()
    except (stack_mod.StackError, sidecar.SidecarError, pipeline.WaypointNotFound, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        failures = show(local, out, keep_up=not args.once)
        if args.once:
            return 1 if failures else 0
        _wait_for_interrupt(out)
        return 0
    finally:
        local.stop()


def show(local: stack_mod.LocalStack, out: TextIO, keep_up: bool = True) -> int:
    """Print the world's problems, run the demos, print how to send traffic; count failures.

    How to send traffic is printed only when the waypoint stays up: after ``--once`` its
    ports are closed and a temporary work directory is gone.
    """
    report.statuses(local.problems(), sys.stderr)
    client_dir = local.workdir / "client"
    local.identity(CLIENT_NS, CLIENT_SA).write(client_dir)
    client = local.client(CLIENT_NS, CLIENT_SA)
    try:
        failures = sum(_demo(local, client, demo, out) for demo in DEMOS)
    finally:
        client.close()
    if keep_up:
        _print_usage(local, client_dir, out)
    else:
        print(
            f"\nwaypoint {local.namespace}/{local.name} ({local.waypoint_id}): "
            f"{len(DEMOS) - failures} of {len(DEMOS)} demo requests behaved as expected. "
            f"Run `{command('waypoint')} up` without --once to keep the waypoint up and send "
            "your own requests.",
            file=out,
        )
    return failures


def _demo(
    local: stack_mod.LocalStack, client: hbone_client.SyncHboneClient, demo: Demo, out: TextIO
) -> int:
    authority = local.authority(CLIENT_NS, demo.service, demo.port)
    host = f"{demo.service}.{CLIENT_NS}"
    print(f"\n▶ {demo.title}\n  GET http://{host}{demo.path}  (CONNECT {authority})", file=out)
    headers = demo.headers
    if demo.token:
        headers += (("authorization", f"Bearer {demo_token(demo.token)}"),)
    try:
        response = client.request(authority, "GET", demo.path, headers, host=host)
    except errors.HboneError as exc:
        print(f"  ✗ {exc}", file=out)
        return 1
    print(f"  ← {response.status} {response.reason}", file=out)
    for name in ("location", "x-canary", "www-authenticate"):
        if response.header(name):
            print(f"    {name}: {response.header(name)}", file=out)
    if response.status < 300:
        report = echo.parse_echo(response.text)
        extras = [
            f"{name}={report.headers[name][0]}"
            for name in ("x-routed-by", "x-jwt-role")
            if report.headers.get(name)
        ]
        print(
            f"    answered by {report.hostname} ({report.namespace}); backend saw {report.url}"
            + "".join(f", {extra}" for extra in extras),
            file=out,
        )
    return 0 if response.status == demo.expect else 1


def demo_token(kind: str) -> str:
    """A JWT from the demo issuer: role admin or viewer, or an expired one."""
    return demo.mint("viewer" if kind == "viewer" else "admin", expired=kind == "expired")


def command(name: str) -> str:
    """How to run console script ``name`` of this install from the user's shell, as printed.

    The bare name when it is on PATH and is this install's; else this install's script by
    a path relative to the working directory when it lies below it (``.venv/bin/waypoint``
    after the Quick start), else by its absolute path.
    """
    script = pathlib.Path(sys.executable).parent / name
    found = shutil.which(name)
    if found and script.exists() and pathlib.Path(found).resolve() == script.resolve():
        return name
    if not script.exists():
        return f"{sys.executable} -m {name}"
    try:
        return str(script.absolute().relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(script.absolute())


def _print_usage(local: stack_mod.LocalStack, client_dir: pathlib.Path, out: TextIO) -> None:
    opts = local.options
    hbone = f"{local.bind}:{opts.hbone_port}"
    vip = local.vip(CLIENT_NS, "echo")
    request = f"{command('waypoint')} request --waypoint {hbone} --cert-dir {client_dir}"
    lines = [
        "",
        f"waypoint {local.namespace}/{local.name} is up ({local.waypoint_id})",
        f"  HBONE (mTLS, HTTP/2 CONNECT)  {hbone}",
        f"  admin                         http://{opts.admin_address}:{opts.admin_port}/",
        f"  readiness                     http://{local.bind}:{opts.readiness_port}/healthz/ready",
        f"  Prometheus                    http://{local.bind}:{opts.stats_port}/stats/prometheus",
        f"  Envoy config                  {local.workdir}",
        "Send traffic as a mesh client (identity in the client dir):",
        f"  {request} -i http://{vip}/api/x",
        f"  {request} -H 'x-version: v2' http://{vip}/",
        f"  TOKEN=$({command('extauthz')} token --demo --claim role=admin)",
        f'  {request} -H "authorization: Bearer $TOKEN" '
        f"http://{local.vip(CLIENT_NS, 'echo-v1')}/admin",
    ]
    print("\n".join(lines), file=out, flush=True)


def _wait_for_interrupt(
    out: TextIO, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)
) -> None:
    stop = threading.Event()
    handler: Callable[[int, Any], None] = lambda _sig, _frame: stop.set()  # noqa: E731
    for sig in signals:
        signal.signal(sig, handler)
    print("Press Ctrl-C to stop.", file=out, flush=True)
    stop.wait()
    print("\nstopping…", file=out, flush=True)
