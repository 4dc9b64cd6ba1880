"""Reading reference sets (kerchunk JSON, fsspec Parquet) into a mapping of key -> reference."""
