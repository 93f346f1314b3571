"""Gateway API kinds (GatewayClass, Gateway, HTTPRoute, GRPCRoute, ReferenceGrant, TCPRoute,
TLSRoute) in the compact schema format.

Written by hand from kubernetes-sigs/gateway-api: the CRDs in ``config/crd/standard/*.yaml`` and
``config/crd/experimental/*.yaml`` (ReferenceGrant read at commit
00cfc55f1d2df679e477c8a6e0f82ae0f40da8e8, bundle-version v1.6.0-rc.1) and the Go types they are
generated from (``apis/v1``, ``apis/v1alpha2``; every struct's fields, required fields and
enums cross-checked against the typings of the npm package ``@kubernetes-models/gateway-api``
2.0.0, which is generated from those Go types). Field sets are the union of both channels and
of releases since v1.3: the experimental CRDs are a superset of the standard ones, a cluster may
run either, and a field that moved (Gateway ``backendTLS`` → ``tls.backend``) is valid where it
was. So a field valid upstream is never called unknown; a typo is. Kept: fields, required
fields, types, enums, maxItems/minItems.
"""

from __future__ import annotations

from waypoint import wellknown
from waypoint.schema import meta, nodes

GROUP = wellknown.GATEWAY_API_GROUP

STR, INT, BOOL = nodes.STR, nodes.INT, nodes.BOOL
arr, obj, enum, extend = nodes.arr, nodes.obj, nodes.enum, nodes.extend

PARENT_REF = obj(
    {
        "group": STR,
        "kind": STR,
        "namespace": STR,
        "name": STR,
        "sectionName": STR,
        "port": INT,
    },
    required=("name",),
)
BACKEND_OBJECT_REF = obj(
    {"group": STR, "kind": STR, "name": STR, "namespace": STR, "port": INT}, required=("name",)
)
BACKEND_REF = extend(BACKEND_OBJECT_REF, {"weight": INT})
SECRET_REF = obj({"group": STR, "kind": STR, "name": STR, "namespace": STR}, required=("name",))
LOCAL_OBJECT_REF = obj({"group": STR, "kind": STR, "name": STR}, required=("group", "kind", "name"))

HEADER = obj({"name": STR, "value": STR}, required=("name", "value"))
HEADER_MODIFIER = obj(
    {"set": arr(HEADER, 16), "add": arr(HEADER, 16), "remove": arr(STR, 16)},
)
PATH_MODIFIER = obj(
    {
        "type": enum("ReplaceFullPath", "ReplacePrefixMatch"),
        "replaceFullPath": STR,
        "replacePrefixMatch": STR,
    },
    required=("type",),
)
REQUEST_MIRROR = obj(
    {
        "backendRef": BACKEND_OBJECT_REF,
        "percent": INT,
        "fraction": obj({"numerator": INT, "denominator": INT}, required=("numerator",)),
    },
    required=("backendRef",),
)
REQUEST_REDIRECT = obj(
    {
        "scheme": enum("http", "https"),
        "hostname": STR,
        "path": PATH_MODIFIER,
        "port": INT,
        "statusCode": enum(301, 302, 303, 307, 308),
    }
)
URL_REWRITE = obj({"hostname": STR, "path": PATH_MODIFIER})
CORS = obj(
    {
        "allowOrigins": arr(STR, 64),
        "allowCredentials": BOOL,
        "allowMethods": arr(STR, 9),
        "allowHeaders": arr(STR, 64),
        "exposeHeaders": arr(STR, 64),
        "maxAge": INT,
    }
)
EXTERNAL_AUTH = obj(
    {
        "protocol": enum("HTTP", "GRPC"),
        "backendRef": BACKEND_OBJECT_REF,
        "grpc": obj({"allowedHeaders": arr(STR, 64)}),
        "http": obj(
            {
                "path": STR,
                "allowedHeaders": arr(STR, 64),
                "allowedResponseHeaders": arr(STR, 64),
            }
        ),
        "forwardBody": obj({"maxSize": INT}),
    },
    required=("protocol", "backendRef"),
)

HTTP_FILTER = obj(
    {
        "type": enum(
            "RequestHeaderModifier",
            "ResponseHeaderModifier",
            "RequestMirror",
            "RequestRedirect",
            "URLRewrite",
            "ExtensionRef",
            "CORS",
            "ExternalAuth",
        ),
        "requestHeaderModifier": HEADER_MODIFIER,
        "responseHeaderModifier": HEADER_MODIFIER,
        "requestMirror": REQUEST_MIRROR,
        "requestRedirect": REQUEST_REDIRECT,
        "urlRewrite": URL_REWRITE,
        "extensionRef": LOCAL_OBJECT_REF,
        "cors": CORS,
        "externalAuth": EXTERNAL_AUTH,
    },
    required=("type",),
)
GRPC_FILTER = obj(
    {
        "type": enum(
            "ResponseHeaderModifier", "RequestHeaderModifier", "RequestMirror", "ExtensionRef"
        ),
        "requestHeaderModifier": HEADER_MODIFIER,
        "responseHeaderModifier": HEADER_MODIFIER,
        "requestMirror": REQUEST_MIRROR,
        "extensionRef": LOCAL_OBJECT_REF,
    },
    required=("type",),
)

SESSION_PERSISTENCE = obj(
    {
        "sessionName": STR,
        "absoluteTimeout": STR,
        "idleTimeout": STR,
        "type": enum("Cookie", "Header"),
        "cookieConfig": obj({"lifetimeType": enum("Permanent", "Session")}),
    }
)

HTTP_MATCH = obj(
    {
        "path": obj({"type": enum("Exact", "PathPrefix", "RegularExpression"), "value": STR}),
        "headers": arr(
            obj(
                {"type": enum("Exact", "RegularExpression"), "name": STR, "value": STR},
                required=("name", "value"),
            ),
            16,
        ),
        "queryParams": arr(
            obj(
                {"type": enum("Exact", "RegularExpression"), "name": STR, "value": STR},
                required=("name", "value"),
            ),
            16,
        ),
        "method": enum(
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"
        ),
    }
)
HTTP_RULE = obj(
    {
        "name": STR,
        "matches": arr(HTTP_MATCH, 64),
        "filters": arr(HTTP_FILTER, 16),
        "backendRefs": arr(extend(BACKEND_REF, {"filters": arr(HTTP_FILTER, 16)}), 16),
        "timeouts": obj({"request": STR, "backendRequest": STR}),
        "retry": obj({"codes": arr(INT), "attempts": INT, "backoff": STR}),
        "sessionPersistence": SESSION_PERSISTENCE,
    }
)
HTTP_ROUTE = meta.resource(
    obj(
        {
            "parentRefs": arr(PARENT_REF, 32),
            "hostnames": arr(STR, 16),
            "rules": arr(HTTP_RULE, 16),
            "useDefaultGateways": enum("All", "None"),
        }
    )
)

GRPC_MATCH = obj(
    {
        "method": obj(
            {"type": enum("Exact", "RegularExpression"), "service": STR, "method": STR},
        ),
        "headers": arr(
            obj(
                {"type": enum("Exact", "RegularExpression"), "name": STR, "value": STR},
                required=("name", "value"),
            ),
            16,
        ),
    }
)
GRPC_RULE = obj(
    {
        "name": STR,
        "matches": arr(GRPC_MATCH, 64),
        "filters": arr(GRPC_FILTER, 16),
        "backendRefs": arr(extend(BACKEND_REF, {"filters": arr(GRPC_FILTER, 16)}), 16),
        "sessionPersistence": SESSION_PERSISTENCE,
    }
)
GRPC_ROUTE = meta.resource(
    obj(
        {
            "parentRefs": arr(PARENT_REF, 32),
            "hostnames": arr(STR, 16),
            "rules": arr(GRPC_RULE, 16),
            "useDefaultGateways": enum("All", "None"),
        }
    )
)

GATEWAY_CLASS = meta.resource(
    obj(
        {
            "controllerName": STR,
            "parametersRef": obj(
                {"group": STR, "kind": STR, "name": STR, "namespace": STR},
                required=("group", "kind", "name"),
            ),
            "description": STR,
        },
        required=("controllerName",),
    )
)

OBJECT_REF = obj(
    {"group": STR, "kind": STR, "name": STR, "namespace": STR}, required=("group", "kind", "name")
)
TLS_VALIDATION = obj(
    {
        "caCertificateRefs": arr(OBJECT_REF, 8),
        "mode": enum("AllowValidOnly", "AllowInsecureFallback"),
    }
)
TLS_CONFIG = obj({"validation": TLS_VALIDATION})
FRONTEND_TLS = obj(
    {
        "default": TLS_CONFIG,
        "perPort": arr(obj({"port": INT, "tls": TLS_CONFIG}, required=("port", "tls"))),
    },
    required=("default",),
)
LISTENER_TLS = obj(
    {
        "mode": enum("Terminate", "Passthrough"),
        "certificateRefs": arr(SECRET_REF, 64),
        "options": nodes.STR_MAP,
        "frontendValidation": TLS_VALIDATION,  # its place until v1.3
    }
)
LISTENER = obj(
    {
        "name": STR,
        "hostname": STR,
        "port": INT,
        "protocol": STR,
        "tls": LISTENER_TLS,
        "allowedRoutes": obj(
            {
                "namespaces": obj(
                    {"from": enum("All", "Selector", "Same"), "selector": meta.LABEL_SELECTOR}
                ),
                "kinds": arr(obj({"group": STR, "kind": STR}, required=("kind",)), 8),
            }
        ),
    },
    required=("name", "port", "protocol"),
)
GATEWAY = meta.resource(
    obj(
        {
            "gatewayClassName": STR,
            "listeners": arr(LISTENER, 64, 1),
            "addresses": arr(obj({"type": STR, "value": STR}), 16),
            "infrastructure": obj(
                {
                    "labels": nodes.STR_MAP,
                    "annotations": nodes.STR_MAP,
                    "parametersRef": obj(
                        {"group": STR, "kind": STR, "name": STR},
                        required=("group", "kind", "name"),
                    ),
                }
            ),
            "backendTLS": obj({"clientCertificateRef": SECRET_REF}),  # its place until v1.3
            "tls": obj(
                {"backend": obj({"clientCertificateRef": SECRET_REF}), "frontend": FRONTEND_TLS}
            ),
            "allowedListeners": obj(
                {
                    "namespaces": obj(
                        {
                            "from": enum("All", "Selector", "Same", "None"),
                            "selector": meta.LABEL_SELECTOR,
                        }
                    )
                }
            ),
            "defaultScope": enum("All", "None"),
        },
        required=("gatewayClassName", "listeners"),
    )
)

REFERENCE_GRANT = meta.resource(
    obj(
        {
            "from": arr(
                obj(
                    {"group": STR, "kind": STR, "namespace": STR},
                    required=("group", "kind", "namespace"),
                ),
                16,
                1,
            ),
            "to": arr(
                obj({"group": STR, "kind": STR, "name": STR}, required=("group", "kind")), 16, 1
            ),
        },
        required=("from", "to"),
    )
)

L4_RULE = obj({"name": STR, "backendRefs": arr(BACKEND_REF, 16, 1)})
TCP_ROUTE = meta.resource(
    obj({"parentRefs": arr(PARENT_REF, 32), "rules": arr(L4_RULE, 16, 1)}, required=("rules",))
)
TLS_ROUTE = meta.resource(
    obj(
        {
            "parentRefs": arr(PARENT_REF, 32),
            "hostnames": arr(STR, 16),
            "rules": arr(L4_RULE, 16, 1),
        },
        required=("rules",),
    )
)

# (apiVersion, kind) → schema, for every version the CRDs serve.
KINDS: dict[tuple[str, str], nodes.Obj] = {
    **{(f"{GROUP}/{v}", "GatewayClass"): GATEWAY_CLASS for v in ("v1", "v1beta1")},
    **{(f"{GROUP}/{v}", "Gateway"): GATEWAY for v in ("v1", "v1beta1")},
    **{(f"{GROUP}/{v}", "HTTPRoute"): HTTP_ROUTE for v in ("v1", "v1beta1")},
    **{(f"{GROUP}/{v}", "GRPCRoute"): GRPC_ROUTE for v in ("v1", "v1alpha2")},
    **{(f"{GROUP}/{v}", "ReferenceGrant"): REFERENCE_GRANT for v in ("v1", "v1beta1", "v1alpha2")},
    (f"{GROUP}/v1alpha2", "TCPRoute"): TCP_ROUTE,
    **{(f"{GROUP}/{v}", "TLSRoute"): TLS_ROUTE for v in ("v1", "v1alpha2", "v1alpha3")},
}
