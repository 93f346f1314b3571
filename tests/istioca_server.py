"""A test stand-in for istiod's CA: ``IstioCertificateService/CreateCertificate`` on loopback.

It follows istiod's contract (docs/istio-ca.md): a real grpcio server with TLS, whose
certificate carries the DNS SAN ``istiod.istio-system.svc`` and chains to the mesh root;
the caller authenticates with ``authorization: Bearer <token>`` plus the ``clusterid``
header; the identity signed is the token's (istiod takes it from the TokenReview), not the
CSR's; the validity is the requested one, or 24 h when not positive, capped at 90 days; the
answer is one PEM per ``cert_chain`` entry, leaf first and root last. istiod answers a bad
token with UNAUTHENTICATED "request authenticate failure", and so does this server.

Knobs for negative tests: ``issue_as`` signs another identity than the token's, ``fail_with``
refuses every call with a status code. Every call is recorded in ``calls``.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
from concurrent import futures

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import oid

from waypoint import names
from waypoint.istioca import ca_pb2, client
from waypoint.local import ca as dev_ca
from waypoint.runtime import ports

ISTIOD_DNS = "istiod.istio-system.svc"
DEFAULT_TTL = datetime.timedelta(hours=24)  # istiod's DEFAULT_WORKLOAD_CERT_TTL
MAX_TTL = datetime.timedelta(days=90)  # istiod's MAX_WORKLOAD_CERT_TTL


@dataclasses.dataclass(frozen=True)
class Call:
    """What one CreateCertificate call carried."""

    authorization: str
    cluster_id: str
    csr_ids: tuple[str, ...]
    validity_duration: int
    issued_id: str = ""
    serial: int = 0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, common_name)])


class MeshCa:
    """The mesh root and an intermediate that signs workloads, as a plugged-in CA would."""

    def __init__(self, trust_domain: str = "cluster.local") -> None:
        self.trust_domain = trust_domain
        self.root = dev_ca.CertificateAuthority.create(trust_domain, common_name="test mesh root")
        self.key = ec.generate_private_key(ec.SECP256R1())
        start = _now() - datetime.timedelta(minutes=5)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.intermediate = (
            x509.CertificateBuilder()
            .subject_name(_name("test mesh intermediate"))
            .issuer_name(self.root.certificate.subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(ca=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root.key.public_key()),
                critical=False,
            )
            .sign(self.root.key, hashes.SHA256())
        )

    @property
    def root_pem(self) -> bytes:
        return self.root.root_pem

    def sign(
        self,
        public_key: ec.EllipticCurvePublicKey,
        spiffe_id: str,
        ttl: datetime.timedelta,
        *,
        dns_names: tuple[str, ...] = (),
    ) -> x509.Certificate:
        start = _now()
        sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        if spiffe_id:
            sans.append(x509.UniformResourceIdentifier(spiffe_id))
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.intermediate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + ttl)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [oid.ExtendedKeyUsageOID.SERVER_AUTH, oid.ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class TestCaServer:
    """The CA service on ``127.0.0.1:port``; ``tokens`` maps a bearer token to (ns, sa)."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        mesh: MeshCa,
        tokens: dict[str, tuple[str, str]],
        *,
        cluster_id: str = client.DEFAULT_CLUSTER_ID,
        port: int = 0,
        serving_ca: MeshCa | None = None,
    ) -> None:
        self.mesh = mesh
        self.tokens = dict(tokens)
        self.cluster_id = cluster_id
        self.issue_as: str | None = None
        self.fail_with: grpc.StatusCode | None = None
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        # istiod's own serving certificate, signed by the mesh CA (or another, for tests).
        signer = serving_ca or mesh
        self._tls_key = ec.generate_private_key(ec.SECP256R1())
        tls_cert = signer.sign(
            self._tls_key.public_key(),
            f"spiffe://{mesh.trust_domain}/ns/istio-system/sa/istiod",
            datetime.timedelta(days=1),
            dns_names=(ISTIOD_DNS, "istiod.istio-system.svc.cluster.local"),
        )
        self._tls_chain = (_pem(tls_cert) + _pem(signer.intermediate)).encode()
        # Below the ephemeral range (see waypoint.runtime.ports), so a restart on the same
        # port cannot find it taken by some outgoing connection.
        self._requested_port = port or ports.free_port()
        self.port = 0
        self._server: grpc.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TestCaServer:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(
            self._create,
            request_deserializer=ca_pb2.IstioCertificateRequest.FromString,
            response_serializer=ca_pb2.IstioCertificateResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(client.SERVICE, {"CreateCertificate": handler}),)
        )
        key_pem = self._tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        credentials = grpc.ssl_server_credentials([(key_pem, self._tls_chain)])
        self.port = server.add_secure_port(f"127.0.0.1:{self._requested_port}", credentials)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def __enter__(self) -> TestCaServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _create(
        self, request: ca_pb2.IstioCertificateRequest, context: grpc.ServicerContext
    ) -> ca_pb2.IstioCertificateResponse:
        headers = dict(context.invocation_metadata())
        authorization = str(headers.get("authorization", ""))
        cluster_id = str(headers.get(client.CLUSTER_ID_HEADER, ""))
        csr = x509.load_pem_x509_csr(request.csr.encode())
        csr_ids = tuple(
            csr.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.UniformResourceIdentifier)
        )
        call = Call(authorization, cluster_id, csr_ids, request.validity_duration)
        if self.fail_with is not None:
            self._record(call)
            context.abort(self.fail_with, "test CA told to fail")
        caller = self.tokens.get(authorization.removeprefix("Bearer "))
        # istiod: an unknown cluster ID has no kube client, so authentication fails too.
        if (
            not authorization.startswith("Bearer ")
            or caller is None
            or (cluster_id not in ("", self.cluster_id))
        ):
            self._record(call)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "request authenticate failure")
        if not csr.is_signature_valid:
            self._record(call)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "CSR signature is invalid")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "test CA signs EC keys only")
        assert caller is not None
        spiffe_id = self.issue_as or names.spiffe_id(self.mesh.trust_domain, *caller)
        ttl = (
            datetime.timedelta(seconds=request.validity_duration)
            if request.validity_duration > 0
            else DEFAULT_TTL
        )
        leaf = self.mesh.sign(public_key, spiffe_id, min(ttl, MAX_TTL))
        self._record(dataclasses.replace(call, issued_id=spiffe_id, serial=leaf.serial_number))
        chain = [_pem(leaf), _pem(self.mesh.intermediate), _pem(self.mesh.root.certificate)]
        return ca_pb2.IstioCertificateResponse(cert_chain=chain)

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def issued(self) -> list[Call]:
        with self._lock:
            return [call for call in self.calls if call.serial]
