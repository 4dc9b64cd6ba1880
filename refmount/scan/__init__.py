"""``refmount scan``: turn HDF5 / NetCDF4 files into kerchunk JSON v1 reference sets."""

from refmount.scan.hdf5 import (
    DEFAULT_DECODED_INLINE_LIMIT,
    DEFAULT_INLINE_THRESHOLD,
    Problem,
    ScanReport,
    ScanResult,
    StrictScanError,
    scan_hdf5,
)
from refmount.scan.sources import SourceError

__all__ = [
    "DEFAULT_DECODED_INLINE_LIMIT",
    "DEFAULT_INLINE_THRESHOLD",
    "Problem",
    "ScanReport",
    "ScanResult",
    "SourceError",
    "StrictScanError",
    "scan_hdf5",
]
