"""``waypoint certs``: a dev CA and SPIFFE certificates in a directory, for local use.

``--dir`` then holds the waypoint's identity (``cert-chain.pem``, ``key.pem``,
``root-cert.pem``), ready for ``--cert-dir`` of ``render``, ``serve`` and ``up``; the CA in
``ca/`` (run again and the same CA issues fresh certificates, so running Envoys keep
trusting them); and each client identity in ``clients/<namespace>.<service-account>/``, ready
for ``waypoint request --cert-dir``. The files are written Kubernetes-secret style (``..data``
symlink swap), so a running Envoy picks up a re-run without a restart.

Never use these outside development: the CA key lies on disk next to the certificates.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

from waypoint.commands import args as cli_args
from waypoint.local import ca as dev_ca

CA_DIR = "ca"
CLIENTS_DIR = "clients"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "certs",
        help="write a dev CA and SPIFFE certificates into a directory (local use only)",
        description=cli_args.plain(__doc__),
    )
    parser.add_argument("--dir", required=True, type=pathlib.Path, help="where to write them")
    parser.add_argument("--trust-domain", default="cluster.local")
    parser.add_argument(
        "--waypoint", type=cli_args.namespaced("--waypoint", "SERVICEACCOUNT"),
        default=("demo", "waypoint"), metavar="NS/SA",
        help="the waypoint's namespace and service account (default demo/waypoint)",
    )  # fmt: skip
    parser.add_argument(
        "--client", type=cli_args.namespaced("--client", "SERVICEACCOUNT"), action="append",
        metavar="NS/SA", help="a client identity to issue too (repeatable; default demo/sleep)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def client_dir(directory: pathlib.Path, namespace: str, service_account: str) -> pathlib.Path:
    return directory / CLIENTS_DIR / f"{namespace}.{service_account}"


def _authority(directory: pathlib.Path, trust_domain: str) -> dev_ca.CertificateAuthority:
    """The CA in ``directory/ca`` when there is one for ``trust_domain``, else a new one."""
    ca_dir = directory / CA_DIR
    if (ca_dir / dev_ca.CA_CERT_FILE).exists():
        ca = dev_ca.CertificateAuthority.load(ca_dir)
        if ca.trust_domain != trust_domain:
            raise ValueError(
                f"{ca_dir} holds a CA for trust domain {ca.trust_domain!r}, not {trust_domain!r}; "
                "choose another --dir"
            )
        return ca
    ca = dev_ca.CertificateAuthority.create(trust_domain)
    ca.save(ca_dir)
    return ca


def run(args: argparse.Namespace) -> int:
    directory: pathlib.Path = args.dir
    try:
        ca = _authority(directory, args.trust_domain)
        waypoint = ca.issue_workload(*args.waypoint)
        waypoint.write(directory)
        print(f"{directory}: {waypoint.spiffe_id} (use --cert-dir {directory})")
        for namespace, account in args.client or [("demo", "sleep")]:
            identity = ca.issue_workload(namespace, account)
            where = client_dir(directory, namespace, account)
            identity.write(where)
            print(f"{where}: {identity.spiffe_id}")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
