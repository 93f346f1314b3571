"""HBONE: HTTP/2 CONNECT tunnels over mutual TLS, as ztunnel speaks them.

Modules:

- :mod:`waypoint.local.hbone.client` — ``HboneClient`` (asyncio) and ``SyncHboneClient`` (any thread):
  CONNECT tunnels, HTTP/1.1 and gRPC (h2c) requests inside them.
- :mod:`waypoint.local.hbone.terminator` — ``HboneTerminator``: the destination side (ztunnel inbound).
- :mod:`waypoint.local.hbone.h2io` — the asyncio HTTP/2 connection/stream engine both sides share.
- :mod:`waypoint.local.hbone.streams`, :mod:`waypoint.local.hbone.http1`, :mod:`waypoint.local.hbone.grpcwire` —
  byte streams, the HTTP/1.1 codec, and gRPC framing (the echo messages are ``echo_pb2``).
- :mod:`waypoint.local.hbone.loop` — ``LoopThread``: an event loop in a background thread for sync callers.
- :mod:`waypoint.local.hbone.errors` — the exceptions.
"""
