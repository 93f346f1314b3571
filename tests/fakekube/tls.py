"""The fake API server over TLS, as a pod reaches the real one through in-cluster config.

A pod's client trusts the CA in ``/var/run/secrets/kubernetes.io/serviceaccount/ca.crt``,
sends the token next to it, and dials ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``
(client-go ``rest.InClusterConfig``; the Python client's ``load_incluster_config`` does the
same). ``enable`` wraps a not-yet-started FakeKube's listening socket in TLS with a fresh CA,
and ``service_account_dir`` writes the files that mount expects.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import pathlib
import ssl

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakekube import server

HOST = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class Served:
    """Where the TLS fake listens and the CA that signed its certificate."""

    host: str
    port: int
    ca_pem: bytes

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certificates() -> tuple[bytes, bytes, bytes]:
    """(CA PEM, server certificate PEM, server key PEM) for ``HOST`` and ``localhost``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("fake-kube-ca"))
        .issuer_name(_name("fake-kube-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("kube-apiserver"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return _pem(ca), _pem(cert), key_pem


def enable(fake: server.FakeKube, workdir: pathlib.Path) -> Served:
    """Serve ``fake`` over TLS from now on; call before ``fake.start()``."""
    ca_pem, cert_pem, key_pem = certificates()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "server.crt").write_bytes(cert_pem)
    (workdir / "server.key").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(workdir / "server.crt", workdir / "server.key")
    listener = fake._server
    listener.socket = context.wrap_socket(listener.socket, server_side=True)
    host, port = listener.server_address[:2]
    return Served(str(host), int(port), ca_pem)


def service_account_dir(served: Served, directory: pathlib.Path, namespace: str) -> pathlib.Path:
    """The ServiceAccount mount: ``token``, ``ca.crt`` and ``namespace``, readable by any uid."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(server.TOKEN)
    (directory / "ca.crt").write_bytes(served.ca_pem)
    (directory / "namespace").write_text(namespace)
    for path in (directory, *directory.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return directory


def write_kubeconfig(served: Served, path: pathlib.Path) -> pathlib.Path:
    """A kubeconfig for the TLS fake, trusting its CA (as the CLI reaches a real cluster)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "fake-tls",
                "cluster": {
                    "server": served.url,
                    "certificate-authority-data": base64.b64encode(served.ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": "fake-tls", "user": {"token": server.TOKEN}}],
        "contexts": [{"name": "fake-tls", "context": {"cluster": "fake-tls", "user": "fake-tls"}}],
        "current-context": "fake-tls",
    }
    path.write_text(yaml.safe_dump(config))
    return path
