"""extauthz: an Envoy ext_authz gRPC server with JWT end-user auth and Rego authorization."""
