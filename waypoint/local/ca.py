"""The dev CA: a self-signed root that issues SPIFFE workload certificates, for local use.

``waypoint certs``, the local stack (``waypoint up``), tests and load tests use it to give
waypoints, HBONE clients and terminators real mTLS identities
(``spiffe://<trust-domain>/ns/<ns>/sa/<sa>``) as :class:`waypoint.pki.Identity` objects, which
write themselves in the ``--cert-dir`` layout Envoy loads. In a cluster istiod's CA issues
instead (``waypoint.istioca``). Never use it outside development: :meth:`CertificateAuthority.save`
leaves the CA key on disk.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import pathlib
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import oid

from waypoint import names, pki

CA_CERT_FILE = "ca-cert.pem"
CA_KEY_FILE = "ca-key.pem"

_CLOCK_SKEW = datetime.timedelta(minutes=5)
_DEFAULT_LEAF_LIFETIME = datetime.timedelta(days=1)
_DEFAULT_ROOT_LIFETIME = datetime.timedelta(days=3650)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


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
        names.check_trust_domain(trust_domain)
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
        return pki.certificate_pem(self.certificate)

    def save(self, directory: str | os.PathLike[str]) -> pathlib.Path:
        """Write ``ca-cert.pem`` and ``ca-key.pem`` (0600), so :meth:`load` can issue more."""
        root = pathlib.Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        pki.write_file(root / CA_KEY_FILE, pki.private_key_pem(self.key), mode=0o600)
        pki.write_file(root / CA_CERT_FILE, self.root_pem, mode=0o644)
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
    ) -> pki.Identity:
        """Sign a leaf whose URI SAN is ``spiffe_id`` (any trust domain, for negative tests)."""
        names.trust_domain_of(spiffe_id)
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
        return pki.Identity(
            spiffe_id=spiffe_id, certificate=cert, key=key, intermediates=(), root=self.certificate
        )

    def issue_workload(
        self, namespace: str, service_account: str, **kwargs: object
    ) -> pki.Identity:
        """Issue ``spiffe://<this trust domain>/ns/<namespace>/sa/<service_account>``."""
        return self.issue(names.spiffe_id(self.trust_domain, namespace, service_account), **kwargs)  # type: ignore[arg-type]


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
