# Example policy for the waypoint demo (opa-envoy-plugin input shape).
#   GET /public/...  -> allowed for everyone
#   /admin/...       -> allowed only with a valid JWT carrying role: admin
#   anything else    -> denied with 403
# A presented but invalid token never reaches this policy: extauthz answers 401 first.
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
