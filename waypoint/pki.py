"""SPIFFE workload identities at run time: cert-dir files, verification, TLS contexts.

An :class:`Identity` is a loaded leaf certificate, key, chain and trusted root. This module
reads and writes the file layout Envoy loads from a ``--cert-dir`` (``cert-chain.pem``,
``key.pem``, ``root-cert.pem``, swapped atomically Kubernetes-style), verifies chains and
SPIFFE URI SANs, and makes the TLS 1.3 contexts HBONE clients and terminators use. It issues
nothing: the istiod CA client (``waypoint.istioca``) or the dev CA (``waypoint.local.ca``) do.
The SPIFFE ID strings themselves are :mod:`waypoint.names`'.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import ssl
import tempfile
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification

CERT_CHAIN_FILE = "cert-chain.pem"
KEY_FILE = "key.pem"
ROOT_CERT_FILE = "root-cert.pem"
FILE_NAMES = (CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE)
DATA_LINK = "..data"


class VerificationError(ValueError):
    """A certificate does not chain to the root, is expired, or lacks a SPIFFE ID."""


def uri_sans(cert: x509.Certificate) -> list[str]:
    """Every URI SAN of a certificate (empty when it has no SAN extension)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.UniformResourceIdentifier))


def spiffe_id_of(cert: x509.Certificate | bytes) -> str:
    """The single SPIFFE URI SAN of a certificate (DER bytes accepted, as from ``getpeercert``)."""
    if isinstance(cert, bytes):
        cert = x509.load_der_x509_certificate(cert)
    ids = [uri for uri in uri_sans(cert) if uri.startswith("spiffe://")]
    if len(ids) != 1:
        raise VerificationError(f"certificate serial {cert.serial_number:x} has SPIFFE IDs {ids}")
    return ids[0]


def verify(
    leaf: x509.Certificate,
    root: x509.Certificate,
    intermediates: Iterable[x509.Certificate] = (),
    *,
    at: datetime.datetime | None = None,
) -> str:
    """Verify ``leaf`` chains to ``root`` as a client certificate at time ``at``; return its SPIFFE ID."""
    store = verification.Store([root])
    builder = verification.PolicyBuilder().store(store)
    builder = builder.time(at or _now())
    verifier = builder.build_client_verifier()
    try:
        verifier.verify(leaf, list(intermediates))
    except verification.VerificationError as exc:
        raise VerificationError(
            f"certificate {spiffe_id_of(leaf)!r} does not verify: {exc}"
        ) from exc
    return spiffe_id_of(leaf)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM, the form Envoy and Istio's agent write."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclasses.dataclass(frozen=True)
class Identity:
    """A workload's leaf certificate, private key, chain and trusted root."""

    spiffe_id: str
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    intermediates: tuple[x509.Certificate, ...]
    root: x509.Certificate

    @property
    def cert_chain_pem(self) -> bytes:
        return b"".join(certificate_pem(c) for c in (self.certificate, *self.intermediates))

    @property
    def key_pem(self) -> bytes:
        return private_key_pem(self.key)

    @property
    def root_pem(self) -> bytes:
        return certificate_pem(self.root)

    def with_root(self, root: x509.Certificate) -> Identity:
        """The same leaf trusting another root (e.g. a peer CA for negative tests)."""
        return dataclasses.replace(self, root=root)

    def verify(self, *, at: datetime.datetime | None = None) -> str:
        """Verify this leaf against its own root; return the SPIFFE ID."""
        return verify(self.certificate, self.root, self.intermediates, at=at)

    def files(self) -> dict[str, bytes]:
        """The ``--cert-dir`` files by name."""
        return {
            CERT_CHAIN_FILE: self.cert_chain_pem,
            KEY_FILE: self.key_pem,
            ROOT_CERT_FILE: self.root_pem,
        }

    def write(self, directory: str | os.PathLike[str]) -> pathlib.Path:
        """Write the cert-dir files atomically, Kubernetes secret-volume style.

        The files live in a fresh ``..<timestamp>`` directory; ``..data`` is a symlink to it
        and each public name is a symlink through ``..data``. A rotation swaps ``..data``
        with one ``rename``, so a watcher (Envoy's ``watched_directory``) sees one change
        and never a half-written set.
        """
        return write_cert_dir(directory, self.files())

    def ssl_context(
        self,
        server: bool,
        *,
        alpn: Iterable[str] = ("h2",),
        require_client_cert: bool = True,
    ) -> ssl.SSLContext:
        """A TLS 1.3 context presenting this identity and trusting only its root.

        Hostname checks are off: SPIFFE peers are authenticated by URI SAN, which callers
        check after the handshake (see :func:`peer_spiffe_id`).
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if (require_client_cert or not server) else ssl.CERT_NONE
        )
        ctx.load_verify_locations(cadata=self.root_pem.decode())
        with tempfile.TemporaryDirectory(prefix="waypoint-pki-") as tmp:
            chain, key = pathlib.Path(tmp) / CERT_CHAIN_FILE, pathlib.Path(tmp) / KEY_FILE
            write_file(chain, self.cert_chain_pem, mode=0o600)
            write_file(key, self.key_pem, mode=0o600)
            ctx.load_cert_chain(chain, key)
        protocols = list(alpn)
        if protocols:
            ctx.set_alpn_protocols(protocols)
        return ctx


def write_cert_dir(directory: str | os.PathLike[str], files: dict[str, bytes]) -> pathlib.Path:
    """Write ``files`` (name → content) into ``directory`` with one atomic ``..data`` swap.

    The layout of :meth:`Identity.write`; also used by the istiod CA client
    (``waypoint.istioca``), whose root file may hold a bundle of several roots.
    """
    root = pathlib.Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    stamp = _now().strftime("%Y_%m_%d_%H_%M_%S")
    versioned = pathlib.Path(tempfile.mkdtemp(prefix=f"..{stamp}.", dir=root))
    for name, content in files.items():
        write_file(versioned / name, content, mode=0o600 if name == KEY_FILE else 0o644)
    versioned.chmod(0o755)
    data = root / DATA_LINK
    previous = os.readlink(data) if data.is_symlink() else None
    _atomic_symlink(versioned.name, data)
    for name in files:
        link = root / name
        if os.path.islink(link) and os.readlink(link) == f"{DATA_LINK}/{name}":
            continue
        _atomic_symlink(f"{DATA_LINK}/{name}", link)
    if previous is not None and previous != versioned.name:
        _remove_tree(root / previous)
    return root


def trusting_context(root_pem: bytes, *, alpn: Iterable[str] = ("h2",)) -> ssl.SSLContext:
    """A TLS 1.3 client context with no client certificate (for "no cert" negative tests)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=root_pem.decode())
    protocols = list(alpn)
    if protocols:
        ctx.set_alpn_protocols(protocols)
    return ctx


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str:
    """The SPIFFE ID of a verified TLS peer."""
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except ValueError as exc:
        # Also seen when the peer aborts right after a TLS 1.3 handshake (e.g. it
        # rejected our client certificate): OpenSSL then reports the handshake unfinished.
        raise VerificationError(f"TLS handshake with peer did not complete: {exc}") from exc
    if der is None:
        raise VerificationError("TLS peer presented no certificate")
    return spiffe_id_of(der)


def load_identity(directory: str | os.PathLike[str]) -> Identity:
    """Read a cert-dir written by :meth:`Identity.write` (or by Istio's agent)."""
    root = pathlib.Path(directory)
    chain = x509.load_pem_x509_certificates((root / CERT_CHAIN_FILE).read_bytes())
    key = serialization.load_pem_private_key((root / KEY_FILE).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{root / KEY_FILE}: expected an EC private key, got {type(key).__name__}")
    trusted = x509.load_pem_x509_certificate((root / ROOT_CERT_FILE).read_bytes())
    return Identity(
        spiffe_id=spiffe_id_of(chain[0]),
        certificate=chain[0],
        key=key,
        intermediates=tuple(chain[1:]),
        root=trusted,
    )


def write_file(path: pathlib.Path, content: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``content`` atomically (temp file, fsync, rename), with ``mode``."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def _atomic_symlink(target: str, link: pathlib.Path) -> None:
    tmp = link.parent / f".tmp-link-{os.getpid()}-{link.name}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _remove_tree(path: pathlib.Path) -> None:
    if not path.is_dir() or path.is_symlink():
        return
    for child in path.iterdir():
        child.unlink()
    path.rmdir()
