"""The ``x-waypoint-source-principal`` header: the HBONE peer's SPIFFE ID, for extauthz.

The internal listener has no TLS, so Envoy would send ext_authz an empty
``source.principal``. A header_mutation filter placed before the first filter that calls
extauthz (AuthorizationPolicy CUSTOM or ExtAuthzPolicy) replaces any client-sent value of
this header with the peer's ID from filter state, and the ``source_principal_header`` context
extension tells extauthz to trust that header.
"""

from __future__ import annotations

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from waypoint.envoy import filters, protos

HEADER = "x-waypoint-source-principal"
HEADER_MUTATION = "envoy.filters.http.header_mutation"


def http_filter() -> hcm_pb2.HttpFilter:
    """Overwrite the header with the HBONE peer's SPIFFE ID.

    The header is removed first, so a client-sent value never survives, even when the
    filter state is missing (then the header is simply absent).
    """
    value = "%FILTER_STATE(" + filters.SOURCE_PRINCIPAL_KEY + ":PLAIN)%"
    mutations = header_mutation_pb2.Mutations(
        request_mutations=[
            mutation_rules_pb2.HeaderMutation(remove=HEADER),
            mutation_rules_pb2.HeaderMutation(
                append=base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=HEADER, value=value),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                    keep_empty_value=False,
                )
            ),
        ]
    )
    config = header_mutation_pb2.HeaderMutation(mutations=mutations)
    return hcm_pb2.HttpFilter(name=HEADER_MUTATION, typed_config=protos.pack(config))
