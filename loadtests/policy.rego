# Load-test policy (opa-envoy-plugin input shape), matching loadtests/scenarios.py:
#   GET /public/...  -> everyone
#   /api/...         -> any caller with a valid token
#   /admin/...       -> a valid token with role: admin
#   anything else    -> 403
# A presented but invalid token never reaches this policy: extauthz answers 401 first.
package envoy.authz

import rego.v1

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "public"
}

allow if {
	input.parsed_path[0] == "api"
	is_string(input.jwt.claims.sub)
}

allow if {
	input.parsed_path[0] == "admin"
	input.jwt.claims.role == "admin"
}
