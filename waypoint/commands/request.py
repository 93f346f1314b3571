"""``waypoint request``: send one HTTP request through a waypoint over HBONE, like curl.

It speaks what ztunnel speaks: mTLS with a SPIFFE certificate to the waypoint's HBONE port,
HTTP/2 CONNECT to the destination ``VIP:port``, then HTTP/1.1 inside the tunnel. A Service
name (``http://echo.demo/``) is resolved to its ClusterIP through the world, as ``explain``
does: the example world ``waypoint up`` runs by default, or the files given with ``-f``.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any

from waypoint import names, pki
from waypoint.commands import args as cli_args
from waypoint.commands import explain, up
from waypoint.local.hbone import client as hbone_client
from waypoint.local.hbone import errors
from waypoint.runtime import inputs


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "request",
        help="send an HTTP request through a waypoint over HBONE",
        description=cli_args.plain(__doc__),
    )
    parser.add_argument("url", help="http://VIP[:port]/path — the destination as a client dials it")
    parser.add_argument("-X", "--method", default="GET")
    parser.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'")
    parser.add_argument("-d", "--data", default="", help="request body")
    parser.add_argument("--host", help="Host header (default: the URL's host[:port])")
    parser.add_argument(
        "--waypoint", default="127.0.0.1:15008", metavar="HOST:PORT", help="the HBONE listener"
    )
    parser.add_argument(
        "--cert-dir", required=True, help="client identity: cert-chain.pem, key.pem, root-cert.pem"
    )
    parser.add_argument(
        "-f", "--filename", action="append", metavar="FILE",
        help="world that resolves Service names in the URL (default: the example world of "
        "`waypoint up`)",
    )  # fmt: skip
    parser.add_argument("-i", "--include", action="store_true", help="print response headers")
    parser.set_defaults(func=run)


def _split_url(url: str, world: Sequence[str] | None) -> tuple[str, str, str]:
    """Return (authority, host header, path) for an http:// URL, resolving a Service name."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or not parsed.hostname:
        raise ValueError(f"expected http://HOST[:PORT]/PATH, got {url!r}")
    port = parsed.port or 80
    path = parsed.path or "/"
    if parsed.query:
        path += "?" + parsed.query
    try:
        ipaddress.ip_address(parsed.hostname)
    except ValueError:
        objects = inputs.load_objects(world or [str(up.EXAMPLE)])
        target = explain.resolve(objects, url)
        return target.authority, target.host, target.path
    return names.authority(parsed.hostname, port), parsed.netloc, path


def run(args: argparse.Namespace) -> int:
    try:
        authority, host, path = _split_url(args.url, args.filename)
        headers = cli_args.parse_headers(args.header)
        waypoint_host, waypoint_port = names.parse_authority(args.waypoint)
        identity = pki.load_identity(args.cert_dir)
    except (ValueError, OSError, inputs.InputError, explain.ExplainError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    client = hbone_client.SyncHboneClient(
        (waypoint_host, waypoint_port), identity.ssl_context(server=False)
    )
    try:
        response = client.request(
            authority, args.method, path, headers, args.data.encode(), host=args.host or host
        )
    except errors.TunnelRejected as exc:
        print(f"error: the waypoint refused the tunnel to {authority}: {exc}", file=sys.stderr)
        return 1
    except errors.HboneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if args.include:
        print(f"HTTP/1.1 {response.status} {response.reason}")
        for name, value in response.headers:
            print(f"{name}: {value}")
        print()
    sys.stdout.write(response.text)
    return 0 if response.status < 400 else 22
