"""Development PKI: a self-signed CA that issues SPIFFE workload certificates.

Used by tests, load tests and ``waypoint up`` to give waypoints, HBONE clients and
terminators real mTLS identities (``spiffe://<trust-domain>/ns/<ns>/sa/<sa>``), and to
write them in the exact file layout Envoy loads from a ``--cert-dir``
(``cert-chain.pem``, ``key.pem``, ``root-cert.pem``) with Kubernetes-style atomic swaps.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import pathlib
import re
import ssl
import tempfile
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import oid, verification

CERT_CHAIN_FILE = "cert-chain.pem"
KEY_FILE = "key.pem"
ROOT_CERT_FILE = "root-cert.pem"
FILE_NAMES = (CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE)
DATA_LINK = "..data"

_SPIFFE_RE = re.compile(r"^spiffe://([^/]+)/ns/([^/]+)/sa/([^/]+)$")
_TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]+$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%-]+$")
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_DEFAULT_LEAF_LIFETIME = datetime.timedelta(days=1)
_DEFAULT_ROOT_LIFETIME = datetime.timedelta(days=3650)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class VerificationError(ValueError):
    """A certificate does not chain to the root, is expired, or lacks a SPIFFE ID."""


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """Return ``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``."""
    if not _TRUST_DOMAIN_RE.match(trust_domain):
        raise ValueError(f"invalid SPIFFE trust domain {trust_domain!r}")
    for what, value in (("namespace", namespace), ("service account", service_account)):
        if not _SEGMENT_RE.match(value):
            raise ValueError(f"invalid {what} {value!r} for a SPIFFE ID")
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def parse_spiffe_id(value: str) -> tuple[str, str, str]:
    """Invert :func:`spiffe_id`: return ``(trust_domain, namespace, service_account)``."""
    match = _SPIFFE_RE.match(value)
    if match is None:
        raise ValueError(
            f"not a workload SPIFFE ID {value!r}: expected spiffe://<trust-domain>/ns/<ns>/sa/<sa>"
        )
    trust_domain, namespace, service_account = match.groups()
    spiffe_id(trust_domain, namespace, service_account)  # validates every segment
    return trust_domain, namespace, service_account


def trust_domain_of(value: str) -> str:
    """Return the trust domain of any ``spiffe://`` URI."""
    if not value.startswith("spiffe://"):
        raise ValueError(f"not a SPIFFE ID {value!r}")
    return value[len("spiffe://") :].split("/", 1)[0]


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


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


CA_CERT_FILE = "ca-cert.pem"
CA_KEY_FILE = "ca-key.pem"


@dataclasses.dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed root CA for one trust domain."""

    trust_domain: str
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(
        cls,
        trust_domain: str = "cluster.local",
        *,
        common_name: str | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> CertificateAuthority:
        """Make a fresh EC P-256 root (CA:true, keyCertSign, cRLSign)."""
        if not _TRUST_DOMAIN_RE.match(trust_domain):
            raise ValueError(f"invalid SPIFFE trust domain {trust_domain!r}")
        key = _new_key()
        name = x509.Name(
            [
                x509.NameAttribute(oid.NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(
                    oid.NameOID.COMMON_NAME, common_name or f"{trust_domain} dev root"
                ),
            ]
        )
        start = not_before or _now() - _CLOCK_SKEW
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(not_after or start + _DEFAULT_ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(trust_domain=trust_domain, certificate=cert, key=key)

    @property
    def root_pem(self) -> bytes:
        return _pem(self.certificate)

    def save(self, directory: str | os.PathLike[str]) -> pathlib.Path:
        """Write ``ca-cert.pem`` and ``ca-key.pem`` (0600), so :meth:`load` can issue more."""
        root = pathlib.Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        key = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_file(root / CA_KEY_FILE, key, mode=0o600)
        _write_file(root / CA_CERT_FILE, self.root_pem, mode=0o644)
        return root

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        """Read a CA written by :meth:`save`; its trust domain is its subject's organisation."""
        root = pathlib.Path(directory)
        cert = x509.load_pem_x509_certificate((root / CA_CERT_FILE).read_bytes())
        key = serialization.load_pem_private_key((root / CA_KEY_FILE).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{root / CA_KEY_FILE}: expected an EC private key")
        orgs = cert.subject.get_attributes_for_oid(oid.NameOID.ORGANIZATION_NAME)
        if not orgs:
            raise ValueError(
                f"{root / CA_CERT_FILE}: no organisation (trust domain) in its subject"
            )
        return cls(trust_domain=str(orgs[0].value), certificate=cert, key=key)

    def issue(
        self,
        spiffe_id: str,
        *,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str | IPAddress] = (),
    ) -> Identity:
        """Sign a leaf whose URI SAN is ``spiffe_id`` (any trust domain, for negative tests)."""
        trust_domain_of(spiffe_id)
        key = _new_key()
        start = not_before or _now() - _CLOCK_SKEW
        end = not_after or max(start, _now()) + _DEFAULT_LEAF_LIFETIME
        if end <= start:
            # An "expired" leaf still needs a positive validity window to be a valid cert.
            start = end - datetime.timedelta(hours=1)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
        sans += [x509.DNSName(name) for name in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        cert = (
            x509.CertificateBuilder()
            # Empty subject + critical SAN, as Istio issues workload certs (RFC 5280 4.2.1.6).
            .subject_name(x509.Name([]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [oid.ExtendedKeyUsageOID.SERVER_AUTH, oid.ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .add_extension(aki, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Identity(
            spiffe_id=spiffe_id, certificate=cert, key=key, intermediates=(), root=self.certificate
        )

    def issue_workload(self, namespace: str, service_account: str, **kwargs: object) -> Identity:
        """Issue ``spiffe://<this trust domain>/ns/<namespace>/sa/<service_account>``."""
        return self.issue(spiffe_id(self.trust_domain, namespace, service_account), **kwargs)  # type: ignore[arg-type]


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
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
        return b"".join(_pem(c) for c in (self.certificate, *self.intermediates))

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def root_pem(self) -> bytes:
        return _pem(self.root)

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
            _write_file(chain, self.cert_chain_pem, mode=0o600)
            _write_file(key, self.key_pem, mode=0o600)
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
        _write_file(versioned / name, content, mode=0o600 if name == KEY_FILE else 0o644)
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


def _write_file(path: pathlib.Path, content: bytes, *, mode: int) -> None:
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
