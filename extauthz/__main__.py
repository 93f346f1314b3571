"""``python -m extauthz``: the same as the ``extauthz`` command."""

import sys

from extauthz import cli

sys.exit(cli.main())
