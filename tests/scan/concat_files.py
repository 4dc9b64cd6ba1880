"""Small NetCDF4 archives split along time, as a model or a reanalysis writes them, for the concatenation tests.

Each file holds a lat/lon grid, a time-independent field and two compressed
variables along time. xarray picks the time units per file ("days since
<the file's first day>"), as it does by default, so the raw numbers of two
files are not comparable until they are put on one scale.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

LAT = np.linspace(-30.0, 30.0, 4)
LON = np.arange(5) * 10.0
#: Time lengths of the files: all but the last hold whole chunks of 3 steps.
LENGTHS = (6, 6, 9, 4)
TIME_CHUNK = 3


def dataset(times: pd.DatetimeIndex, seed: int, orography: np.ndarray) -> xr.Dataset:
    """One file's contents: two variables along time, one without it, coordinates with attributes."""
    rng = np.random.default_rng(seed)
    n = len(times)
    return xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), (250 + 50 * rng.random((n, 4, 5))).astype("f4"),
                    {"units": "K", "long_name": "2 metre temperature"}),
            "precip": (("time", "lat", "lon"), rng.random((n, 4, 5)), {"units": "mm"}),
            "orography": (("lat", "lon"), orography, {"units": "m"}),
        },
        coords={"time": times, "lat": ("lat", LAT, {"units": "degrees_north"}),
                "lon": ("lon", LON, {"units": "degrees_east"})},
        attrs={"title": "concatenation test", "part": seed},
    )


def write_series(
    directory: Path, lengths: Sequence[int] = LENGTHS, *,
    edit: Callable[[int, xr.Dataset], xr.Dataset] | None = None, time_chunk: int = TIME_CHUNK, unlimited: bool = False,
) -> list[Path]:
    """Write one file per length, consecutive days; names run against time order (sorting by name is wrong).

    ``edit(i, ds)`` may change the i-th file's dataset before it is written; ``unlimited`` makes
    time netCDF's unlimited dimension (netCDF-C then picks other chunks for 1-d variables).
    """
    directory.mkdir(parents=True, exist_ok=True)
    orography = np.random.default_rng(99).random((4, 5)) * 3000
    days = pd.date_range("2020-01-01", periods=sum(lengths), freq="D")
    paths, start = [], 0
    for i, n in enumerate(lengths):
        ds = dataset(days[start:start + n], i, orography)
        start += n
        if edit is not None:
            ds = edit(i, ds)
        encoding = {
            name: {"zlib": True, "shuffle": name == "precip", "chunksizes": (time_chunk, 4 if name == "t2m" else 2, 5)}
            for name in ("t2m", "precip") if name in ds
        }
        path = directory / f"part{len(lengths) - 1 - i:02d}.nc"
        with warnings.catch_warnings():  # bounds without units of their own are the case under test
            warnings.filterwarnings("ignore", "Variable time has datetime type and a bounds variable", UserWarning)
            ds.to_netcdf(path, engine="netcdf4", encoding=encoding, unlimited_dims=["time"] if unlimited else None)
        paths.append(path)
    return paths


def with_time_bounds(i: int, ds: xr.Dataset) -> xr.Dataset:
    """Add CF time bounds (one day per step): xarray writes them in the time coordinate's per-file units."""
    start = ds["time"].values
    ds["time_bnds"] = (("time", "nv"), np.stack([start, start + np.timedelta64(1, "D")], axis=1))
    ds["time"].attrs["bounds"] = "time_bnds"
    return ds
