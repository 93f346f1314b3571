"""The ``extauthz`` command: serve, check a config, mint demo tokens and JWKS.

``extauthz serve --config FILE [--listen ADDR] [--workers N]`` runs the server until
SIGTERM or SIGINT, then drains in-flight checks and exits 0; with ``--workers N``, N
processes share the port (see :mod:`extauthz.workers`). ``token`` and ``jwks`` exist for
examples and tests: they sign with a local private key, which production never does.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import pathlib
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from extauthz import config, demo, policy, server, tokens, workers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="extauthz", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the ext_authz gRPC server")
    serve.add_argument("--config", required=True, type=pathlib.Path)
    serve.add_argument("--listen", help="host:port or unix:/path (overrides listen:)")
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the TCP port with SO_REUSEPORT (worker i: metrics port + i)",
    )
    # Set by the --workers supervisor on the processes it starts.
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker-restarts", type=int, default=0, help=argparse.SUPPRESS)
    check = sub.add_parser("check-config", help="validate a config and load its policies/keys")
    check.add_argument("--config", required=True, type=pathlib.Path)
    token = sub.add_parser(
        "token",
        help="mint a demo JWT signed with a local private key",
        description="Mint a JWT. With --demo it is signed by the demo issuer that ships with the "
        "package (the one `waypoint up` trusts); otherwise give --key, --kid, --issuer and "
        "--audience. Example: extauthz token --demo --claim role=admin",
    )
    token.add_argument(
        "--demo", action="store_true", help="sign as the packaged demo issuer (waypoint up's)"
    )
    token.add_argument("--key", type=pathlib.Path, help="PEM private key")
    token.add_argument("--kid")
    token.add_argument("--issuer")
    token.add_argument("--audience")
    token.add_argument("--subject", default=demo.SUBJECT)
    token.add_argument(
        "--ttl", type=int, default=3600, help="seconds until exp (negative: expired)"
    )
    token.add_argument("--claim", action="append", default=[], help="NAME=JSON (or a string)")
    jwks = sub.add_parser("jwks", help="print the public JWKS for a PEM private key")
    jwks.add_argument("--key", required=True, type=pathlib.Path)
    jwks.add_argument("--kid", required=True)
    return parser


def _version() -> str:
    # The distribution that ships both commands (and the container image) carries the version.
    try:
        return importlib.metadata.version("waypoint-mesh")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "check-config":
            return _check_config(args.config)
        if args.command == "token":
            return _token(args)
        print(json.dumps(tokens.public_jwks(args.key.read_bytes(), args.kid), indent=2))
        return 0
    except (config.ConfigError, server.StartupError) as exc:
        print(f"extauthz: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )
    settings = config.load(args.config)
    if args.listen:
        config.parse_listen(args.listen, "--listen")
    workers.check_shareable(settings, args.listen, args.workers)
    if args.workers > 1:

        def spawn(index: int, restarts: int) -> subprocess.Popen[bytes]:
            argv = workers.worker_argv(args.config, args.listen, args.log_level, index, restarts)
            return subprocess.Popen(argv)

        return workers.supervise(spawn, args.workers)
    if args.worker_index is not None:
        settings = workers.worker_settings(settings, args.worker_index)
    asyncio.run(_serve_until_signal(settings, args.listen, args.worker_restarts))
    return 0


async def _serve_until_signal(settings: config.Settings, listen: str | None, restarts: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.serve_forever(settings, listen, stop, worker_restarts=restarts)


def _check_config(path: pathlib.Path) -> int:
    settings = config.load(path)
    if settings.policy.engine == "embedded":
        try:
            policy.load_regorus(settings.policy.modules, settings.policy.rego_version)
        except policy.PolicyError as exc:
            raise server.StartupError(f"policy: {exc}") from None
    print(f"{path}: ok")
    return 0


def _token(args: argparse.Namespace) -> int:
    if args.demo:
        args.key = args.key or demo.KEY
        args.kid = args.kid or demo.KID
        args.issuer = args.issuer or demo.ISSUER
        args.audience = args.audience or demo.AUDIENCE
    missing = [
        f"--{name}" for name in ("key", "kid", "issuer", "audience") if not getattr(args, name)
    ]
    if missing:
        print(f"extauthz token: give {', '.join(missing)}, or --demo", file=sys.stderr)
        return 2
    print(_mint(args))
    return 0


def _mint(args: argparse.Namespace) -> str:
    claims: dict[str, Any] = {}
    for item in args.claim:
        name, _, raw = item.partition("=")
        try:
            claims[name] = json.loads(raw)
        except ValueError:
            claims[name] = raw
    return tokens.mint(
        args.key.read_bytes(),
        args.kid,
        args.issuer,
        args.audience,
        subject=args.subject,
        ttl_seconds=args.ttl,
        claims=claims,
    )


if __name__ == "__main__":
    sys.exit(main())
