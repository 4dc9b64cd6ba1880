"""``python -m refmount``: the same as the ``refmount`` command (used to start the daemon)."""

from refmount.cli.main import console_main

console_main()
