"""``refmount inspect`` with the options it takes: the view, Zarr format and limits decide what counts as a problem."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from refmount.cli.main import main


@pytest.fixture
def refs(tmp_path: Path) -> Path:
    """A zlib array of 800 decoded bytes per chunk, and a structured array neither Zarr v3 nor netCDF classic can hold."""
    temp = zlib.compress(np.arange(100, dtype="<f8").tobytes())
    pairs = np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "<i4"), ("b", "<f8")]).tobytes()
    doc = {"version": 1, "refs": {
        ".zgroup": json.dumps({"zarr_format": 2}),
        "temp/.zarray": json.dumps({"zarr_format": 2, "shape": [100], "chunks": [100], "dtype": "<f8",
                                    "compressor": {"id": "zlib", "level": 1}, "filters": None, "fill_value": None,
                                    "order": "C"}),
        "temp/.zattrs": json.dumps({"_ARRAY_DIMENSIONS": ["x"]}),
        "temp/0": "base64:" + base64.b64encode(temp).decode(),
        "pairs/.zarray": json.dumps({"zarr_format": 2, "shape": [2], "chunks": [2],
                                     "dtype": [["a", "<i4"], ["b", "<f8"]], "compressor": None, "filters": None,
                                     "fill_value": None, "order": "C"}),
        "pairs/.zattrs": json.dumps({"_ARRAY_DIMENSIONS": ["y"]}),
        "pairs/0": "base64:" + base64.b64encode(pairs).decode(),
    }}
    path = tmp_path / "set.json"
    path.write_text(json.dumps(doc))
    return path


def inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = main(["inspect", *args, "--json"])
    return code, json.loads(capsys.readouterr().out or "{}")


def test_raw_view_zarr_v2_has_no_problem(refs, capsys):
    code, summary = inspect(capsys, str(refs), "--max-decoded-chunk", "512")
    assert code == 0 and summary["problems"] == [] and (summary["view"], summary["zarr_format"]) == ("raw", 2)
    temp = next(a for a in summary["arrays"] if a["name"] == "temp")
    assert temp["decoded_view"] == "chunks read as EIO (each decodes to 800 bytes, more than max_decoded_chunk 512)"


def test_decoded_view_counts_chunks_past_max_decoded_chunk(refs, capsys):
    code, summary = inspect(capsys, str(refs), "--view", "decoded", "--max-decoded-chunk", "512")
    assert code == 1
    assert summary["problems"] == ["temp: chunks read as EIO (each decodes to 800 bytes, more than max_decoded_chunk 512)"]
    code, summary = inspect(capsys, str(refs), "-o", "view=decoded,max_decoded_chunk=1K")
    assert code == 0 and summary["problems"] == []


def test_zarr_format_3_counts_arrays_without_a_zarr_json(refs, capsys):
    code, summary = inspect(capsys, str(refs), "--zarr-format", "3")
    assert code == 1 and len(summary["problems"]) == 1
    assert summary["problems"][0].startswith("pairs: no zarr.json (structured dtype")


def test_netcdf_view_counts_what_its_files_leave_out(refs, capsys):
    code, summary = inspect(capsys, str(refs), "-o", "view=netcdf")
    assert code == 1 and summary["view"] == "netcdf"
    assert [p.split(": left out: ")[1].split(":")[0] for p in summary["problems"]] == ["pairs"]


def test_text_summary_names_the_view_and_lists_the_problems(refs, capsys):
    assert main(["inspect", str(refs), "--zarr-format", "3"]) == 1
    captured = capsys.readouterr()
    assert "view           raw, zarr format 3" in captured.out
    assert "problems (view=raw, zarr_format=3):\n  pairs: no zarr.json" in captured.out
    assert captured.err == "refmount inspect: 1 problem(s) found\n"


def test_ref_is_passed_to_the_loader_as_a_mount_passes_it(refs, capsys):
    assert main(["inspect", str(refs), "-o", "ref=main"]) == 2
    assert "option ref:" in capsys.readouterr().err
