"""``mount.refmount``: the mount(8) helper entry point (``python -m refmount.cli.mount_helper``).

What the helper does is described in :mod:`refmount.cli.fstab`.
"""

import sys

from refmount.cli.main import mount_helper_main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(mount_helper_main())
