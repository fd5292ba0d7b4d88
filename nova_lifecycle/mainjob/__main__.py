"""``python -m nova_lifecycle.mainjob``: see :mod:`nova_lifecycle.mainjob`."""

import sys

from nova_lifecycle.mainjob import cli

sys.exit(cli.main())
