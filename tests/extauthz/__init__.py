"""Fixtures for the extauthz tests: keys, Rego, configs and small real servers."""
