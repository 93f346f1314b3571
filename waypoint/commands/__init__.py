"""Subcommands of the ``waypoint`` CLI; each module offers ``register(subparsers)``."""
