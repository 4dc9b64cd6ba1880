"""Reading reference files from S3, against the local S3 server fixture (``local_s3``, ``s3_bucket``)."""

from __future__ import annotations

import gzip
import json
import time

import pytest

from refmount.errors import ConfigError
from refmount.refs.model import Inline, Range
from refmount.refs.source import load_references, read_reference_file

DOC = {
    "version": 1,
    "templates": {"u": "s3://data-bucket/file.h5"},
    "refs": {".zgroup": '{"zarr_format":2}', "v/0": ["{{u}}", 512, 2048]},
}
DOC_BYTES = json.dumps(DOC).encode()


@pytest.mark.s3
def test_s3_plain_and_gzip_with_mtime(local_s3, s3_bucket):
    before = time.time() - 300  # tolerate clock skew between server and test
    local_s3.put(f"s3://{s3_bucket}/refs/plain.json", DOC_BYTES)
    local_s3.put(f"s3://{s3_bucket}/refs/packed.json.gz", gzip.compress(DOC_BYTES))
    for name in ("plain.json", "packed.json.gz"):
        url = f"s3://{s3_bucket}/refs/{name}"
        ref_file, refs = load_references(url, local_s3.storage_options())
        assert ref_file.url == url
        assert ref_file.data == DOC_BYTES
        assert before < ref_file.mtime < time.time() + 300
        assert refs == {
            ".zgroup": Inline(b'{"zarr_format":2}'),
            "v/0": Range("s3://data-bucket/file.h5", 512, 2048),
        }

    missing = f"s3://{s3_bucket}/refs/missing.json"
    with pytest.raises(ConfigError, match="reference file not found") as info:
        read_reference_file(missing, local_s3.storage_options())
    assert missing in str(info.value)
