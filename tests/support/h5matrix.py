"""Generator of the HDF5 / NetCDF4 test file matrix for the scanner tests.

Every layout, datatype and filter the scanner handles appears at least once,
plus the cases it must report (unsupported filters, references, links).
Values are deterministic so two scans can be compared byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

INT_FLOAT = ["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"]

#: Datasets of matrix.h5 that cannot be referenced in place, with a word of the reason.
UNSUPPORTED = {
    "/filters/lz4": "LZ4",
    "/filters/scaleoffset": "scale-offset",
    "/filters/lz4_big": "LZ4",
    "/filters/blosc_mixed": "filter masks",
    "/refs/objref": "reference",
    "/links/external": "external link",
    "/links/dangling": "missing target",
}
#: Of those, the ones small enough to be inlined decoded (and so readable).
INLINED_DECODED = {"/filters/lz4", "/filters/scaleoffset", "/filters/blosc_mixed"}


def values(shape: tuple[int, ...], dtype: np.dtype, seed: int = 0) -> np.ndarray:
    """Deterministic values of any fixed-size dtype, including structured ones."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) if shape else 1
    rng = np.random.default_rng(seed)
    if dtype.names is not None:
        out = np.zeros(n, dtype=dtype)
        for i, name in enumerate(dtype.names):
            out[name] = values((n,), dtype.fields[name][0], seed + i + 1).reshape(out[name].shape)
        return out.reshape(shape)
    if dtype.subdtype is not None:
        base, sub = dtype.subdtype
        return values((n, *sub), base, seed).reshape((*shape, *sub)) if shape else values(sub, base, seed)
    if dtype.kind == "b":
        arr = rng.integers(0, 2, n).astype(bool)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        arr = rng.integers(max(info.min, -(2**40)), min(info.max, 2**40), n, endpoint=True).astype(dtype)
    elif dtype.kind == "f":
        arr = (rng.standard_normal(n) * 100).astype(dtype)
    elif dtype.kind == "c":
        arr = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dtype)
    elif dtype.kind == "S":
        arr = np.array([f"s{i}x{seed}".encode()[: dtype.itemsize] for i in range(n)], dtype=dtype)
    else:
        raise ValueError(dtype)
    return arr.reshape(shape)


def make_matrix(directory: Path) -> Path:
    """Write matrix.h5 (h5py) covering dtypes, layouts, filters and odd objects."""
    path = Path(directory) / "matrix.h5"
    with h5py.File(path, "w") as f:
        f.attrs["title"] = "refmount scan matrix"
        f.attrs["int_attr"] = np.int16(-3)
        f.attrs["float_arr"] = np.array([1.5, np.nan, np.inf, -np.inf])
        f.attrs["bytes_attr"] = np.bytes_(b"raw bytes")
        f.attrs["vlen_str_list"] = ["a", "b\u00e9"]
        f.attrs["bool_attr"] = np.bool_(True)
        f.attrs["one"] = np.array([42])
        f.attrs["empty"] = h5py.Empty("f4")
        f.attrs["compound"] = np.array((1, 2.5), dtype=[("x", "<i4"), ("y", "<f8")])
        _dtypes(f.create_group("dtypes"))
        _layouts(f.create_group("layouts"))
        _filters(f.create_group("filters"))
        _strings(f.create_group("strings"))
        _dims(f.create_group("dims"))
        _refs_and_links(f, path)
    return path


def _dtypes(g: h5py.Group) -> None:
    """Every integer and float width in both byte orders, plus bool/S/complex/compound."""
    for code in INT_FLOAT:
        for order in "<>":
            dt = np.dtype(order + code)
            g.create_dataset(f"{code}_{'le' if order == '<' else 'be'}", data=values((7, 5), dt),
                             chunks=(3, 2), compression="gzip", shuffle=True, dtype=dt)
    g.create_dataset("bool", data=values((10,), bool), chunks=(4,))
    g.create_dataset("fixed_bytes", data=values((6,), "S7"), chunks=(4,), fillvalue=b"fill")
    g.create_dataset("complex64", data=values((5, 3), "<c8"), chunks=(2, 3))
    g.create_dataset("complex128_be", data=values((5,), ">c16"))
    compound = np.dtype([("a", "<i4"), ("b", ">f8"), ("c", "S3")])
    g.create_dataset("compound", data=values((9,), compound), chunks=(4,),
                     fillvalue=np.array((-1, 2.5, b"zz"), dtype=compound))
    nested = np.dtype([("p", [("x", "<f4"), ("y", "<f4")]), ("v", "<i2", (3,))])
    g.create_dataset("compound_nested", data=values((4,), nested), compression="gzip")


def _layouts(g: h5py.Group) -> None:
    """Contiguous, compact, sparse chunked, never written, scalar, empty, resizable."""
    g.create_dataset("contiguous", data=values((20, 30), "<f8"))
    g.create_dataset("contiguous_small", data=np.arange(5, dtype="<i2"))
    space = h5py.h5s.create_simple((6, 4))
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    h5py.h5d.create(g.id, b"compact", h5py.h5t.STD_I32LE, space, dcpl=dcpl)
    g["compact"][...] = np.arange(24, dtype="<i4").reshape(6, 4)
    sparse = g.create_dataset("sparse", shape=(100, 100), chunks=(10, 10), dtype="<f4", fillvalue=7.0,
                              compression="gzip")
    sparse[0:10, 0:10] = 1.0
    sparse[95:100, 35:42] = values((5, 7), "<f4")
    g.create_dataset("never_written_chunked", shape=(30,), chunks=(7,), dtype="<i4", fillvalue=-9)
    g.create_dataset("never_written_contiguous", shape=(4, 4), dtype="<f8", fillvalue=np.nan)
    g.create_dataset("nan_fill", shape=(12,), chunks=(5,), dtype="<f4", fillvalue=np.nan)[0:5] = 3.0
    g.create_dataset("inf_fill", shape=(12,), chunks=(5,), dtype=">f8", fillvalue=-np.inf)[5:7] = 1.0
    g.create_dataset("scalar", data=np.float64(3.25))
    g.create_dataset("scalar_chunkless_int", data=np.int64(-7))
    g.create_dataset("empty", shape=(0,), dtype="<i4")
    grow = g.create_dataset("resizable", shape=(5, 3), maxshape=(None, 3), chunks=(4, 3), dtype="<i8")
    grow[...] = values((5, 3), "<i8")
    grow.resize((11, 3))
    grow[8:11] = 5
    g.create_dataset("odd_chunks_3d", data=values((5, 7, 9), "<u2"), chunks=(2, 3, 4), compression="gzip",
                     compression_opts=9)


def _filters(g: h5py.Group) -> None:
    """Filters numcodecs can decode, and some it cannot."""
    # Compressible values: an optional filter (deflate, blosc) that fails to shrink a
    # chunk is skipped for that chunk, which is covered separately below.
    data = ((np.arange(2000) % 37) * 0.5).astype("<f4").reshape(50, 40)
    g.create_dataset("gzip", data=data, chunks=(16, 16), compression="gzip")
    g.create_dataset("shuffle_gzip", data=data, chunks=(16, 16), compression="gzip", shuffle=True)
    g.create_dataset("fletcher32", data=data, chunks=(16, 16), fletcher32=True)
    g.create_dataset("shuffle_gzip_fletcher32", data=data, chunks=(16, 16), compression="gzip", shuffle=True,
                     fletcher32=True)
    g.create_dataset("shuffle_only", data=values((50,), ">i8"), chunks=(16,), shuffle=True)
    g.create_dataset("blosc_lz4", data=data, chunks=(16, 16), **hdf5plugin.Blosc(cname="lz4"))
    g.create_dataset("blosc_zstd_bitshuffle", data=data, chunks=(16, 16),
                     **hdf5plugin.Blosc(cname="zstd", shuffle=hdf5plugin.Blosc.BITSHUFFLE))
    g.create_dataset("zstd", data=data, chunks=(16, 16), **hdf5plugin.Zstd(clevel=3))
    g.create_dataset("bzip2", data=data, chunks=(16, 16), **hdf5plugin.BZip2())
    g.create_dataset("shuffle_zstd", data=values((30,), "<i4"), chunks=(8,), shuffle=True, **hdf5plugin.Zstd())
    noise = np.random.default_rng(1).integers(0, 256, 4096).astype("u1")
    g.create_dataset("blosc_incompressible", data=noise, chunks=(1024,), **hdf5plugin.Blosc())
    mixed = np.concatenate([np.zeros(2048, "u1"), noise[:2048]])
    g.create_dataset("blosc_mixed", data=mixed, chunks=(1024,), **hdf5plugin.Blosc())
    g.create_dataset("lz4", data=np.arange(100, dtype="<i4"), chunks=(50,), **hdf5plugin.LZ4())
    g.create_dataset("lz4_big", data=np.arange(40000, dtype="<i4"), chunks=(10000,), **hdf5plugin.LZ4())
    g.create_dataset("scaleoffset", data=np.arange(60, dtype="<i4"), chunks=(20,), scaleoffset=0)


def _strings(g: h5py.Group) -> None:
    """Variable-length strings, UTF-8 and ASCII, in several shapes."""
    g.create_dataset("vlen_utf8", data=["alpha", "b\u00e9ta", "", "\u03b3amma"], dtype=h5py.string_dtype())
    g.create_dataset("vlen_utf8_2d", data=np.array([["a", "bb"], ["ccc", "d"]], dtype=object),
                     dtype=h5py.string_dtype(), chunks=(1, 2), compression="gzip")
    g.create_dataset("vlen_ascii", data=[b"x", b"yy", b"zzz"], dtype=h5py.string_dtype("ascii"))
    g.create_dataset("vlen_scalar", data="just one", dtype=h5py.string_dtype())


def _dims(g: h5py.Group) -> None:
    """Dimension scales, and arrays without them (phony dims)."""
    x = g.create_dataset("x", data=np.arange(6, dtype="<f8"))
    y = g.create_dataset("y", data=np.arange(4, dtype="<f8") * 10)
    x.make_scale("x")
    y.make_scale("y")
    field = g.create_dataset("field", data=values((4, 6), "<f4"))
    field.dims[0].attach_scale(y)
    field.dims[1].attach_scale(x)
    field.attrs["units"] = "K"
    g.create_dataset("square", data=values((3, 3), "<i4"))
    g.create_dataset("half_named", data=values((4, 3), "<i4")).dims[0].attach_scale(y)


def _refs_and_links(f: h5py.File, path: Path) -> None:
    """Objects with no Zarr equivalent, next to ones that still work."""
    g = f.create_group("refs")
    target = g.create_dataset("target", data=np.arange(3, dtype="<i4"))
    g.create_dataset("objref", data=[target.ref, f.ref], dtype=h5py.ref_dtype)
    target.attrs["self"] = target.ref
    target.attrs["ok"] = "kept"
    links = f.create_group("links")
    links["soft"] = h5py.SoftLink("/refs/target")
    links["dangling"] = h5py.SoftLink("/nowhere")
    links["external"] = h5py.ExternalLink("other.h5", "/data")


def make_userblock(directory: Path) -> Path:
    """A file whose HDF5 data starts after a 512-byte user block."""
    path = Path(directory) / "userblock.h5"
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("contiguous", data=values((10, 10), "<i4"))
        f.create_dataset("chunked", data=values((10, 10), "<f8"), chunks=(4, 4), compression="gzip")
    with open(path, "r+b") as raw:
        raw.write(b"USERBLOCK" * 10)
    return path


def make_clean(directory: Path, name: str = "clean.h5", seed: int = 0) -> Path:
    """A small file with nothing unsupported (for --strict success and the CLI)."""
    path = Path(directory) / name
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=values((20, 20), "<f4", seed), chunks=(8, 8), compression="gzip")
        f.create_group("g").create_dataset("b", data=values((10,), ">i2", seed))
    return path


def make_netcdf(directory: Path) -> Path:
    """A NetCDF4 file: dimensions (unlimited, coordinate-less), groups, fill values, strings."""
    import netCDF4

    path = Path(directory) / "model.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.title = "refmount netcdf test"
        nc.createDimension("time", None)
        nc.createDimension("lat", 5)
        nc.createDimension("lon", 8)
        nc.createDimension("nv", 2)  # a dimension without a coordinate variable
        t = nc.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = np.arange(3)
        lat = nc.createVariable("lat", "f4", ("lat",))
        lat[:] = np.linspace(-60, 60, 5)
        lon = nc.createVariable("lon", "f4", ("lon",))
        lon[:] = np.arange(8) * 45
        temp = nc.createVariable("temp", "f4", ("time", "lat", "lon"), zlib=True, shuffle=True,
                                 chunksizes=(1, 3, 4), fill_value=-999.0)
        temp.units = "K"
        temp.scale_note = np.array([1.0, 2.0])
        data = values((3, 5, 8), "<f4")
        data[1, 2, 3] = -999.0
        temp[:] = data
        counts = nc.createVariable("counts", "i4", ("lat", "lon"))
        counts[:] = values((5, 8), "<i4") % 1000
        bounds = nc.createVariable("lat_bnds", "f4", ("lat", "nv"))
        bounds[:] = values((5, 2), "<f4")
        names = nc.createVariable("station", str, ("lat",))
        for i in range(5):
            names[i] = f"st\u00e4tion-{i}"
        sub = nc.createGroup("forecast")
        sub.createDimension("step", 4)
        step = sub.createVariable("step", "i2", ("step",))
        step[:] = np.arange(4)
        pr = sub.createVariable("precip", "f8", ("step", "lat"), fill_value=np.nan, zlib=True)
        pr[0:2, :] = values((2, 5), "<f8")
    return path


def make_many_chunks(directory: Path, n_chunks: int = 100_000) -> Path:
    """One dataset of ``n_chunks`` small uncompressed chunks (16 float64 each)."""
    path = Path(directory) / "many_chunks.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset("big", data=np.arange(n_chunks * 16, dtype="<f8"), chunks=(16,))
    return path


if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    for maker in (make_matrix, make_userblock, make_clean, make_netcdf):
        print(maker(out))
