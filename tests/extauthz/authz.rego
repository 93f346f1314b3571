# Test policy: both a bool decision (allow) and an object decision (response).
package envoy.authz

import rego.v1

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "public"
}

allow if {
	input.parsed_path[0] == "admin"
	input.jwt.claims.role == "admin"
}

allow if {
	input.parsed_path[0] == "user"
	input.jwt.provider == "corp"
}

allow if {
	input.parsed_path[0] == "mesh"
	input.source_principal == "spiffe://cluster.local/ns/shop/sa/frontend"
	input.destination_principal == "spiffe://cluster.local/ns/shop/sa/orders"
}

allow if {
	input.parsed_path == ["search"]
	input.parsed_query.q == ["shoes", "socks"]
}

allow if {
	input.parsed_path[0] == "orders"
	input.parsed_body.qty == 3
	input.version.encoding == "protojson"
}

allow if {
	input.parsed_path[0] == "form"
	input.parsed_body.name == ["ada"]
}

allow if {
	input.parsed_path[0] == "big"
	input.truncated_body
}

allow if {
	input.parsed_path[0] == "data"
	input.attributes.request.http.headers["x-team"] in data.teams
}

# Two definitions that both hold for /boom: a runtime conflict, i.e. an engine error.
boom_value := 1 if input.parsed_path[0] == "boom"

boom_value := 2 if input.parsed_path[0] == "boom"

allow if boom_value == 1

response := {
	"allowed": true,
	"headers": {"x-policy": "decorated", "x-multi": ["a", "b"]},
	"response_headers_to_add": {"x-resp": "from-policy"},
	"request_headers_to_remove": ["x-remove-me"],
	"query_parameters_to_set": {"added": "yes"},
	"query_parameters_to_remove": ["drop"],
	"dynamic_metadata": {"team": "checkout"},
} if input.parsed_path[0] == "decorated"

response := {
	"allowed": false,
	"http_status": 418,
	"body": "short and stout",
	"headers": {"x-deny-reason": "teapot"},
} if input.parsed_path[0] == "teapot"

response := {"allowed": "yes"} if input.parsed_path[0] == "badshape"

response := {"allowed": allow} if not input.parsed_path[0] in {"decorated", "teapot", "badshape"}
