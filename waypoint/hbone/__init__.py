"""HBONE: HTTP/2 CONNECT tunnels over mutual TLS, as ztunnel speaks them.

Modules:

- :mod:`waypoint.hbone.client` — ``HboneClient`` (asyncio) and ``SyncHboneClient`` (any thread):
  CONNECT tunnels, HTTP/1.1 and gRPC (h2c) requests inside them.
- :mod:`waypoint.hbone.terminator` — ``HboneTerminator``: the destination side (ztunnel inbound).
- :mod:`waypoint.hbone.h2io` — the asyncio HTTP/2 connection/stream engine both sides share.
- :mod:`waypoint.hbone.streams`, :mod:`waypoint.hbone.http1`, :mod:`waypoint.hbone.grpcwire` —
  byte streams, the HTTP/1.1 codec, and gRPC framing (the echo messages are ``echo_pb2``).
- :mod:`waypoint.hbone.loop` — ``LoopThread``: an event loop in a background thread for sync callers.
- :mod:`waypoint.hbone.errors` — the exceptions.
"""
