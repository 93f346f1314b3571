"""Istio ``security.istio.io`` kinds (RequestAuthentication, AuthorizationPolicy) in the compact
schema format.

Written by hand from istio/api ``security/v1/authorization_policy.proto`` (read at commit
035100f4d1e6dd75a4d11e298ed0c25a565a8282), ``security/v1/request_authentication.proto`` and
``type/v1beta1/selector.proto``, the messages the CRDs in istio/istio
``manifests/charts/base/files/crd-all.gen.yaml`` are generated from, with the fields added
since (``targetRefs``, ``serviceAccounts``/``notServiceAccounts``, ``fromCookies``, ``timeout``,
``spaceDelimitedClaims``) cross-checked against the typings of the npm package
``@kubernetes-models/istio`` 3.0.1, which is generated from those CRDs. v1 and v1beta1 share one
schema. Kept: fields, required fields, types, enums.
"""

from __future__ import annotations

from waypoint import wellknown
from waypoint.schema import meta, nodes

GROUP = wellknown.ISTIO_SECURITY_API_GROUP

STR, BOOL = nodes.STR, nodes.BOOL
arr, obj, enum = nodes.arr, nodes.obj, nodes.enum
STRS = arr(STR)

SELECTOR = obj({"matchLabels": nodes.STR_MAP})
TARGET_REF = obj(
    {"group": STR, "kind": STR, "name": STR, "namespace": STR}, required=("kind", "name")
)
TARGETING: dict[str, nodes.Node] = {
    "selector": SELECTOR,
    "targetRef": TARGET_REF,
    "targetRefs": arr(TARGET_REF, 16),
}

JWT_RULE = obj(
    {
        "issuer": STR,
        "audiences": STRS,
        "jwksUri": STR,
        "jwks_uri": STR,  # the deprecated spelling, still in the CRD
        "jwks": STR,
        "fromHeaders": arr(obj({"name": STR, "prefix": STR}, required=("name",))),
        "fromParams": STRS,
        "fromCookies": STRS,
        "outputPayloadToHeader": STR,
        "forwardOriginalToken": BOOL,
        "outputClaimToHeaders": arr(
            obj({"header": STR, "claim": STR}, required=("header", "claim"))
        ),
        "timeout": STR,
        "spaceDelimitedClaims": STRS,
    },
    # Istio's proto marks issuer required, but the CRD does not (istiod's webhook checks it):
    # the schema follows what the API server accepts.
)
REQUEST_AUTHENTICATION = meta.resource(
    obj({**TARGETING, "jwtRules": arr(JWT_RULE, 4096)}), spec_required=False
)

SOURCE = obj(
    dict.fromkeys(
        (
            "principals",
            "notPrincipals",
            "requestPrincipals",
            "notRequestPrincipals",
            "namespaces",
            "notNamespaces",
            "serviceAccounts",
            "notServiceAccounts",
            "ipBlocks",
            "notIpBlocks",
            "remoteIpBlocks",
            "notRemoteIpBlocks",
        ),
        STRS,
    )
)
OPERATION = obj(
    dict.fromkeys(
        ("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"),
        STRS,
    )
)
RULE = obj(
    {
        "from": arr(obj({"source": SOURCE})),
        "to": arr(obj({"operation": OPERATION})),
        "when": arr(
            obj({"key": STR, "values": STRS, "notValues": STRS}, required=("key",)),
        ),
    }
)
AUTHORIZATION_POLICY = meta.resource(
    obj(
        {
            **TARGETING,
            "rules": arr(RULE),
            "action": enum("ALLOW", "DENY", "AUDIT", "CUSTOM"),
            "provider": obj({"name": STR}),
        }
    ),
    spec_required=False,
)

KINDS: dict[tuple[str, str], nodes.Obj] = {
    **{
        (f"{GROUP}/{v}", "RequestAuthentication"): REQUEST_AUTHENTICATION for v in ("v1", "v1beta1")
    },
    **{(f"{GROUP}/{v}", "AuthorizationPolicy"): AUTHORIZATION_POLICY for v in ("v1", "v1beta1")},
}
