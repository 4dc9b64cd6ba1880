"""``mount.refmount``: the mount(8) helper entry point (``python -m refmount.cli.mount_helper``).

What the helper does is described in :mod:`refmount.cli.fstab`.
"""

from refmount.cli.main import console_mount_helper

if __name__ == "__main__":  # pragma: no cover
    console_mount_helper()
