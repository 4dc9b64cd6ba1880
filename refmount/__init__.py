"""refmount: present kerchunk/fsspec reference sets as a read-only POSIX tree of Zarr keys."""

__version__ = "0.1.0"
