"""``python -m host.cli``: the same as the ``quiesce-host`` console script."""

import sys

from host.cli.main import main

sys.exit(main())
