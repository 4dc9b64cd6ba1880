"""The soak test in its short CI form (the long form: ``python benchmarks/soak.py``).

64 concurrent readers (pread threads, ``cat`` loops and zarr, in several
processes) over a cache four times smaller than the data, so eviction runs
all the time: every byte verified, no errors, the daemon's RSS under the
cache budget + 200 MiB, no growth in threads or file descriptors.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuse

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def _soak_module():
    spec = importlib.util.spec_from_file_location("refmount_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_soak_short(tmp_path):
    soak = _soak_module()
    seconds = float(os.environ.get("REFMOUNT_SOAK_SECONDS", "30"))
    summary = soak.run(duration=seconds, readers=64, data_mib=32, cache_mib=8, workdir=tmp_path)
    assert summary.problems() == [], summary
    assert summary.reads > 100 and summary.bytes_verified > 32 << 20
