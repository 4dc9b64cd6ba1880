"""``python -m refmount``: the same as the ``refmount`` command (used to start the daemon)."""

import sys

from refmount.cli.main import main

sys.exit(main())
