"""fsspec's Parquet reference layout, one job per module.

:mod:`.layout` names the files and numbers the chunks, :mod:`.records`
decodes one record file, :mod:`.tree` is the lazily loaded
:class:`~refmount.refs.parquet.tree.ParquetNamespace`, and :mod:`.write`
writes a set in the layout.
"""
