"""One certificate from istiod's CA: a key, a CSR, a CreateCertificate call, a checked answer.

What istiod expects (docs/istio-ca.md has the sources): gRPC over TLS on port 15012, whose
server certificate (DNS SAN ``istiod.istio-system.svc``) chains to the mesh root published
in the ``istio-ca-root-cert`` ConfigMap; the pod's projected service-account token (audience
``istio-ca``) as ``authorization: Bearer <token>``; the cluster ID in the ``clusterid``
metadata header. istiod validates the token with a TokenReview and signs the CSR's key for
``spiffe://<trust-domain>/ns/<ns>/sa/<sa>`` taken from the token, whatever the CSR asks.
So the answer is checked here before anything is written: the leaf must carry our key and
exactly the expected identity, and chain to the configured roots.
"""

from __future__ import annotations

import dataclasses
import datetime
import pathlib

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification

from waypoint import pki
from waypoint.istioca import ca_pb2

SERVICE = "istio.v1.auth.IstioCertificateService"
CREATE_CERTIFICATE = f"/{SERVICE}/CreateCertificate"
DEFAULT_ADDRESS = "istiod.istio-system.svc:15012"
DEFAULT_TOKEN_PATH = "/var/run/secrets/tokens/istio-token"
DEFAULT_ROOT_CERT_PATH = "/var/run/secrets/istio/root-cert.pem"
DEFAULT_CLUSTER_ID = "Kubernetes"
DEFAULT_VALIDITY_SECONDS = 24 * 3600
# Istio's Go client sends "ClusterID"; gRPC lowercases metadata keys on the wire.
CLUSTER_ID_HEADER = "clusterid"


class CaError(Exception):
    """The CA could not give us a usable certificate; the message says why."""


class CaUnavailable(CaError):
    """The call failed (unreachable, TLS, refused token, ...): worth retrying later."""


class CertificateRejected(CaError):
    """The CA answered, but with a certificate we must not use (wrong identity, key or root)."""


@dataclasses.dataclass(frozen=True)
class CaConfig:
    """Where istiod's CA is and how we prove who we are."""

    address: str = DEFAULT_ADDRESS
    root_cert_path: str = DEFAULT_ROOT_CERT_PATH
    token_path: str = DEFAULT_TOKEN_PATH
    cluster_id: str = DEFAULT_CLUSTER_ID
    # The DNS name istiod's serving certificate must carry; "" means the address's host (as
    # Istio's agent does). Set it when the address is an IP or a port-forward.
    server_name: str = ""
    validity_seconds: int = DEFAULT_VALIDITY_SECONDS
    timeout_seconds: float = 10.0


@dataclasses.dataclass(frozen=True)
class Issued:
    """A verified certificate: leaf first, then intermediates; the trusted roots as PEM."""

    spiffe_id: str
    chain: tuple[x509.Certificate, ...]
    key: ec.EllipticCurvePrivateKey
    roots_pem: bytes

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_before(self) -> datetime.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc

    def files(self) -> dict[str, bytes]:
        """The cert-dir files Envoy's file SDS reads (see waypoint.envoy.secrets)."""
        chain = b"".join(pki.certificate_pem(c) for c in self.chain)
        key = pki.private_key_pem(self.key)
        return {pki.CERT_CHAIN_FILE: chain, pki.KEY_FILE: key, pki.ROOT_CERT_FILE: self.roots_pem}


def new_key_and_csr(spiffe_id: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """An EC P-256 key and a PEM CSR for it with ``spiffe_id`` as its only (URI) SAN."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM)


def load_roots(pem: bytes, where: str) -> list[x509.Certificate]:
    try:
        roots = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CaError(f"{where}: no PEM certificate: {exc}") from None
    return roots


def _read(path: str, what: str) -> bytes:
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise CaUnavailable(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def request_certificate(config: CaConfig, spiffe_id: str) -> Issued:
    """Ask the CA for ``spiffe_id``; return the verified result or raise :class:`CaError`."""
    roots_pem = _read(config.root_cert_path, "CA root certificate")
    roots = load_roots(roots_pem, config.root_cert_path)
    # The kubelet rotates the projected token: read it afresh for every call.
    token = _read(config.token_path, "service-account token").decode().strip()
    if not token:
        raise CaUnavailable(f"the service-account token {config.token_path} is empty")
    key, csr = new_key_and_csr(spiffe_id)
    request = ca_pb2.IstioCertificateRequest(
        csr=csr.decode(), validity_duration=config.validity_seconds
    )
    response = _call(config, roots_pem, token, request)
    return verify_response(list(response.cert_chain), key, roots, roots_pem, spiffe_id)


def _call(
    config: CaConfig, roots_pem: bytes, token: str, request: ca_pb2.IstioCertificateRequest
) -> ca_pb2.IstioCertificateResponse:
    options: list[tuple[str, str | int]] = []
    if config.server_name:
        options.append(("grpc.ssl_target_name_override", config.server_name))
    credentials = grpc.ssl_channel_credentials(root_certificates=roots_pem)
    metadata = (("authorization", f"Bearer {token}"), (CLUSTER_ID_HEADER, config.cluster_id))
    with grpc.secure_channel(config.address, credentials, options=options) as channel:
        create = channel.unary_unary(
            CREATE_CERTIFICATE,
            request_serializer=ca_pb2.IstioCertificateRequest.SerializeToString,
            response_deserializer=ca_pb2.IstioCertificateResponse.FromString,
        )
        try:
            response: ca_pb2.IstioCertificateResponse = create(
                request, metadata=metadata, timeout=config.timeout_seconds
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            name = code.name if code is not None else "UNKNOWN"
            raise CaUnavailable(
                f"CreateCertificate at {config.address}: {name}: {details}"
            ) from None
    return response


def verify_response(
    cert_chain: list[str],
    key: ec.EllipticCurvePrivateKey,
    roots: list[x509.Certificate],
    roots_pem: bytes,
    spiffe_id: str,
) -> Issued:
    """Check a CreateCertificate answer; raise :class:`CertificateRejected` on any doubt."""
    try:
        # Older istiods put several PEM blocks in one entry; newer ones one per entry.
        certs = [c for entry in cert_chain for c in x509.load_pem_x509_certificates(entry.encode())]
    except ValueError as exc:
        raise CertificateRejected(f"the CA's cert_chain is not PEM: {exc}") from None
    if not certs:
        raise CertificateRejected("the CA answered with an empty cert_chain")
    leaf = certs[0]
    if leaf.public_key() != key.public_key():
        raise CertificateRejected("the CA's certificate is not for the key we sent")
    try:
        issued_id = pki.spiffe_id_of(leaf)
    except pki.VerificationError as exc:
        raise CertificateRejected(f"the CA's certificate has no single SPIFFE ID: {exc}") from None
    if issued_id != spiffe_id:
        raise CertificateRejected(
            f"the CA issued {issued_id!r}, not the expected {spiffe_id!r}: "
            "check the pod's service account, namespace and trust domain"
        )
    # The response ends with the root(s); keep only what lies between leaf and root.
    intermediates = [c for c in certs[1:] if c.issuer != c.subject]
    try:
        verifier = (
            verification.PolicyBuilder().store(verification.Store(roots)).build_client_verifier()
        )
        verifier.verify(leaf, intermediates)
    except verification.VerificationError as exc:
        raise CertificateRejected(
            f"the CA's certificate for {spiffe_id!r} does not chain to the configured root: {exc}"
        ) from None
    return Issued(spiffe_id, (leaf, *intermediates), key, roots_pem)
