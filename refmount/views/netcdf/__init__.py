"""The netCDF view: each group of a reference set as a read-only virtual netCDF classic file.

Pure modules (no I/O): :mod:`.types` (numpy dtypes to nc_types, default
fills, the format a file needs), :mod:`.header` (the CDF-1/2/5 header and
the byte layout of the data), :mod:`.plan` (Zarr metadata of one group to
the variables, dimensions and attributes of its file, and what is left out)
and :mod:`.slabs` (a byte range of a variable to the boxes of elements and
the chunks that hold them). The reading side is :mod:`.tree` (the files a
set shows) and :mod:`.reading` (bytes of a file from decoded chunks).
"""
