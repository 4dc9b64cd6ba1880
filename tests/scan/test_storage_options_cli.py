"""scan and convert against the real S3 server with mount's spelling of storage options.

Credentials reach the server only as ``--storage-option``s (the environment
holds no AWS variables and no profile), so a run that succeeds shows the
items were routed to the S3 filesystem, and a run whose items name another
protocol shows they were not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from refmount.devtools.localstore import REGION
from refmount.refs.open import open_reference_set
from refmount.scan import scan_hdf5
from tests.support.h5matrix import make_clean

pytestmark = pytest.mark.s3


def _refmount(*args: str) -> subprocess.CompletedProcess:
    """The command line with no credential but the arguments: no AWS_* variables, no profile, no instance metadata."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true")
    return subprocess.run([sys.executable, "-m", "refmount", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def _credentials(local_s3, protocol: str = "s3") -> list[str]:
    options = local_s3.storage_options()
    prefix = f"{protocol}." if protocol else ""
    return ["--storage-option", f"{prefix}key={options['key']}", "--storage-option", f"{prefix}secret={options['secret']}"]


def test_scan_from_s3_to_s3_with_protocol_prefixed_options(tmp_path: Path, local_s3, s3_bucket) -> None:
    path = make_clean(tmp_path)
    url = f"s3://{s3_bucket}/in/{path.name}"
    local_s3.upload(path, url)
    out = f"s3://{s3_bucket}/refs/clean.json"
    # client_kwargs given as JSON is merged with --endpoint-url, as a mount merges -o s3.client_kwargs with endpoint_url
    region = ["--storage-option", "s3.client_kwargs=" + json.dumps({"region_name": REGION})]
    done = _refmount("scan", url, "-q", "-o", out, "--endpoint-url", local_s3.endpoint_url, *_credentials(local_s3),
                     *region)
    assert done.returncode == 0, done.stderr
    written = json.loads(local_s3.get(out))  # the output went to S3 with the same options
    assert written["templates"] == {"u": url}
    assert written["refs"] == scan_hdf5(str(path)).refs["refs"]

    elsewhere = _refmount("scan", url, "-q", "-o", str(tmp_path / "x.json"), "--endpoint-url", local_s3.endpoint_url,
                          *_credentials(local_s3, "https"), *region)
    assert elsewhere.returncode == 2 and "Traceback" not in elsewhere.stderr, elsewhere.stderr
    assert "Unable to locate credentials" in elsewhere.stderr  # the https. items did not reach S3
    assert not (tmp_path / "x.json").exists()


def test_convert_on_s3_with_unprefixed_and_prefixed_options(tmp_path: Path, local_s3, s3_bucket) -> None:
    path = make_clean(tmp_path)
    original = scan_hdf5(str(path)).refs
    source = f"s3://{s3_bucket}/sets/clean.json"
    (tmp_path / "clean.json").write_text(json.dumps(original))
    local_s3.upload(tmp_path / "clean.json", source)
    endpoint = ["--endpoint-url", local_s3.endpoint_url]

    # SOURCE and TARGET both on S3: a KEY without PROTOCOL. is for s3
    to_parquet = _refmount("convert", source, f"s3://{s3_bucket}/sets/clean.parq", "--record-size", "3", *endpoint,
                           *_credentials(local_s3, ""))
    assert to_parquet.returncode == 0, to_parquet.stderr
    assert local_s3.get(f"s3://{s3_bucket}/sets/clean.parq/.zmetadata")

    back = tmp_path / "back.json"
    to_json = _refmount("convert", f"s3://{s3_bucket}/sets/clean.parq", str(back), *endpoint, *_credentials(local_s3))
    assert to_json.returncode == 0, to_json.stderr
    assert _references(back) == _references(tmp_path / "clean.json")

    routed_elsewhere = _refmount("convert", source, str(tmp_path / "no.parq"), *endpoint, *_credentials(local_s3, "gs"))
    assert routed_elsewhere.returncode == 2 and "Traceback" not in routed_elsewhere.stderr, routed_elsewhere.stderr
    assert "Unable to locate credentials" in routed_elsewhere.stderr, routed_elsewhere.stderr  # gs. is not s3.


def _references(path: Path) -> dict:
    """Every key's reference, as the one reader of reference sets reads the file."""
    _, tree = open_reference_set(str(path))
    return dict(tree.iter_references())
