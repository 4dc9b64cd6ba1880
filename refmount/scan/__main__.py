"""``python -m refmount.scan``: the scan subcommand without the main CLI."""

import sys

from refmount.scan.command import main

if __name__ == "__main__":
    sys.exit(main())
