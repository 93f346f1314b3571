"""IR → Envoy: builders for listeners, clusters, routes and secrets, and the static bootstrap.

``resources.build`` gives the xDS resources of one waypoint; ``bootstrap.build`` wraps them into
a bootstrap that ``envoy -c`` runs as it is. Everything is built with xds-protos (upb) messages,
which are about 100x faster than envoy-data-plane's classes at route scale.
"""
