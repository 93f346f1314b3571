"""``python -m waypoint`` runs the CLI."""

import sys

from waypoint import cli

sys.exit(cli.main())
