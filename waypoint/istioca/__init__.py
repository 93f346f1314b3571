"""Certificates from istiod's CA: the ``waypoint istio-certs`` component (a shell, not core).

``client`` makes one ``istio.v1.auth.IstioCertificateService/CreateCertificate`` call and
checks what comes back; ``agent`` keeps a certificate directory fresh with it (half-life
renewal, backoff, the last good certificate kept). See docs/istio-ca.md.

``ca_pb2.py`` and ``ca_pb2.pyi`` are generated from ``ca.proto`` (the subset of istio/api's
``security/v1alpha1/ca.proto`` we use, Apache-2.0) with grpcio-tools 1.72.0, whose gencode
(protobuf 6.30.0) loads on every protobuf this project allows::

    python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. waypoint/istioca/ca.proto

There is no ``_pb2_grpc.py``: the one method is bound by its path with ``grpc``'s generic
``unary_unary`` API, on the client and in the test CA alike.
"""
