"""Test doubles for extauthz's dependencies, kept apart from the product.

Tests and load tests use them; the product never imports them. ``opa_server`` stands in
for OPA's Data API (the ``engine: opa`` path) where the OPA binary cannot run.
"""
