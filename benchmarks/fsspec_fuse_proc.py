"""Serve a reference set with fsspec's own FUSE (``fsspec.fuse``), in the foreground.

Usage: fsspec_fuse_proc.py REFS.json MOUNTPOINT {stock,rooted}

``stock`` uses fsspec's FUSEr unchanged at the root of the reference set,
which answers ENOENT for every key because it looks keys up as ``/key``;
``rooted`` subclasses it with an empty root so the keys resolve. Remote
credentials and the endpoint come from the AWS_* environment variables.
"""

from __future__ import annotations

import json
import os
import sys

import fsspec
from fsspec.fuse import FUSEr, run


class RootedFUSEr(FUSEr):
    """FUSEr whose paths are the reference keys themselves (no leading ``/``)."""

    def __init__(self, fs, path, ready_file=False):  # type: ignore[no-untyped-def]
        super().__init__(fs, path, ready_file=ready_file)
        self.root = ""


def main() -> None:
    refs_path, mountpoint, mode = sys.argv[1:4]
    with open(refs_path) as f:
        refs = json.load(f)
    fs = fsspec.filesystem(
        "reference",
        fo=refs,
        remote_protocol="s3",
        remote_options={
            "key": os.environ["AWS_ACCESS_KEY_ID"],
            "secret": os.environ["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"endpoint_url": os.environ["BENCH_ENDPOINT"], "region_name": "us-east-1"},
        },
    )
    ops = RootedFUSEr if mode == "rooted" else FUSEr
    run(fs, "", mountpoint, foreground=True, threads=False, ops_class=ops)


if __name__ == "__main__":
    main()
