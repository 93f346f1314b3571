"""Certificates: file-based SDS secrets from the watched ``cert_dir``, and the TLS contexts.

Measured with Envoy 1.40: static bootstrap ``secrets`` never reload, even with
``watched_directory``; a secret delivered by SDS from a file (``path_config_source``) does
reload when its ``watched_directory`` sees the ``..data`` swap. So the listeners and clusters
reference two SDS files (:func:`sds_files`, which ``waypoint.runtime.sds`` writes into
:func:`sds_dir`), which point at the PEM files of ``cert_dir``. The bootstrap itself stays a
plain ``envoy -c`` file.
With ``options.sds_over_ads`` the same two secrets come over ADS instead (an xDS server
serves :func:`secrets`); Envoy still reads the PEM files and, by its docs, watches them
(rotation measured here only for the file-based path).
"""

from __future__ import annotations

import posixpath

import yaml
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from waypoint.envoy import options as options_mod
from waypoint.envoy import protos

CERT_SECRET = "default"  # Istio's name for the workload certificate
ROOT_SECRET = "ROOTCA"  # ... and for the trust bundle
CERT_CHAIN_FILE = "cert-chain.pem"
KEY_FILE = "key.pem"
ROOT_CERT_FILE = "root-cert.pem"
_SDS_FILES = {CERT_SECRET: "cert.yaml", ROOT_SECRET: "root.yaml"}
ALPN_H2 = "h2"


def sds_dir(options: options_mod.BootstrapOptions) -> str:
    """Where the SDS files live: ``options.sds_dir``, else ``<cert_dir>-sds`` beside it."""
    return options.sds_dir or options.cert_dir.rstrip("/") + "-sds"


def sds_path(options: options_mod.BootstrapOptions, secret_name: str) -> str:
    return posixpath.join(sds_dir(options), _SDS_FILES[secret_name])


def _cert_file(options: options_mod.BootstrapOptions, name: str) -> str:
    return posixpath.join(options.cert_dir, name)


def secrets(options: options_mod.BootstrapOptions) -> tuple[secret_pb2.Secret, ...]:
    """The two secrets, sorted by name, each reloading when ``cert_dir`` changes."""
    watched = base_pb2.WatchedDirectory(path=options.cert_dir)
    cert = secret_pb2.Secret(
        name=CERT_SECRET,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(filename=_cert_file(options, CERT_CHAIN_FILE)),
            private_key=base_pb2.DataSource(filename=_cert_file(options, KEY_FILE)),
            watched_directory=watched,
        ),
    )
    root = secret_pb2.Secret(
        name=ROOT_SECRET,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(filename=_cert_file(options, ROOT_CERT_FILE)),
            watched_directory=watched,
        ),
    )
    return (root, cert) if root.name < cert.name else (cert, root)


def sds_files(options: options_mod.BootstrapOptions) -> dict[str, str]:
    """The SDS files (file name → YAML) that the config's ``path_config_source``s read."""
    files: dict[str, str] = {}
    for secret in secrets(options):
        data = protos.to_dict(protos.pack(secret))
        files[_SDS_FILES[secret.name]] = yaml.safe_dump({"resources": [data]}, sort_keys=False)
    return dict(sorted(files.items()))


def sds_config(
    options: options_mod.BootstrapOptions, secret_name: str
) -> secret_pb2.SdsSecretConfig:
    source = config_source_pb2.ConfigSource(resource_api_version=config_source_pb2.V3)
    if options.sds_over_ads:
        source.ads.SetInParent()
    else:
        source.path_config_source.path = sds_path(options, secret_name)
    return secret_pb2.SdsSecretConfig(name=secret_name, sds_config=source)


def _tls13() -> common_pb2.TlsParameters:
    return common_pb2.TlsParameters(
        tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
        tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
    )


def spiffe_prefix(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}/"


def _common(
    options: options_mod.BootstrapOptions, san: string_pb2.StringMatcher
) -> tls_pb2.CommonTlsContext:
    """TLS 1.3, ALPN h2, our SPIFFE cert, and a peer whose URI SAN must match ``san``."""
    return tls_pb2.CommonTlsContext(
        tls_params=_tls13(),
        alpn_protocols=[ALPN_H2],
        tls_certificate_sds_secret_configs=[sds_config(options, CERT_SECRET)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=[
                    common_pb2.SubjectAltNameMatcher(
                        san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=san
                    )
                ]
            ),
            validation_context_sds_secret_config=sds_config(options, ROOT_SECRET),
        ),
    )


def trust_domain_matcher(trust_domain: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(prefix=spiffe_prefix(trust_domain))


def exact_matcher(spiffe_id: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(exact=spiffe_id)


def downstream_tls(options: options_mod.BootstrapOptions) -> base_pb2.TransportSocket:
    """The HBONE listener's mTLS: a client cert from our trust domain is required."""
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=_common(options, trust_domain_matcher(options.trust_domain)),
        require_client_certificate=protos.boolean(True),
    )
    return base_pb2.TransportSocket(
        name="envoy.transport_sockets.tls", typed_config=protos.pack(context)
    )


def upstream_tls(
    options: options_mod.BootstrapOptions, san: string_pb2.StringMatcher
) -> base_pb2.TransportSocket:
    """HBONE origination's mTLS: present our SPIFFE cert, accept a peer matching ``san``."""
    context = tls_pb2.UpstreamTlsContext(common_tls_context=_common(options, san))
    return base_pb2.TransportSocket(
        name="envoy.transport_sockets.tls", typed_config=protos.pack(context)
    )
