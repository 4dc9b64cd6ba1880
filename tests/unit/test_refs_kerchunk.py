"""Tests of the kerchunk JSON reference parser (refmount.refs.kerchunk, refmount.refs.keys)."""

from __future__ import annotations

import base64
import json
import math

import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refmount.errors import InvalidReferences
from refmount.refs.kerchunk import gen as kerchunk_module
from refmount.refs.kerchunk.parse import parse_reference_bytes, parse_references
from refmount.refs.kerchunk.values import MAX_OFFSET
from refmount.refs.keys import NAME_MAX, key_problem, split_key, validate_key
from refmount.refs.model import Inline, Range, Whole

# --------------------------------------------------------------------------
# helpers


def refused(obj, *, default_url=None, match: tuple[str, ...] = ()) -> InvalidReferences:
    """Parse ``obj`` expecting a refusal whose message contains every ``match`` part."""
    with pytest.raises(InvalidReferences) as info:
        parse_references(obj, default_url=default_url)
    message = str(info.value)
    for part in match:
        assert part in message, f"{part!r} not in {message!r}"
    return info.value


def v1(refs=None, **extra):
    doc = {"version": 1, "refs": refs or {}}
    doc.update(extra)
    return doc


# --------------------------------------------------------------------------
# version 0


def test_v0_flat_mapping_of_every_value_kind():
    refs = parse_references(
        {
            ".zgroup": '{"zarr_format": 2}',
            "x/.zarray": {"chunks": [10], "dtype": "<f8", "fill_value": None},
            "x/0": ["s3://bucket/file.nc", 100, 800],
            "x/1": ["s3://bucket/other.nc"],
            "x/2": "base64:AAEC/w==",
        }
    )
    assert refs == {
        ".zgroup": Inline(b'{"zarr_format": 2}'),
        "x/.zarray": Inline(b'{"chunks":[10],"dtype":"<f8","fill_value":null}'),
        "x/0": Range("s3://bucket/file.nc", 100, 800),
        "x/1": Whole("s3://bucket/other.nc"),
        "x/2": Inline(b"\x00\x01\x02\xff"),
    }


def test_v0_tuples_from_python_callers_are_references():
    assert parse_references({"a": ("u", 1, 2), "b": ("u",)}) == {"a": Range("u", 1, 2), "b": Whole("u")}


def test_a_version_key_always_means_a_versioned_document():
    """As in fsspec, v0 cannot have a key named "version": it selects the spec version."""
    refused({"version": "", "a": "x"}, match=("unknown reference set version string ''",))


def test_empty_documents():
    assert parse_references({}) == {}
    assert parse_references({"version": 1}) == {}
    assert parse_references({"version": 1, "refs": None, "templates": None, "gen": None}) == {}


@pytest.mark.parametrize("text", ["", "a", "héllo wörld", "日本語テキスト", "emoji \U0001f600", "x" * 100_000])
def test_inline_text_is_utf8_of_any_size(text):
    refs = parse_references({"k": text})
    assert refs["k"] == Inline(text.encode("utf-8"))
    assert refs["k"].size == len(text.encode("utf-8"))


def test_json_object_value_is_serialised_exactly_as_fsspec_serves_it():
    value = {"title": "Température", "units": "°C", "n": [1, 2.5]}
    refs = parse_references({".zattrs": value})
    data = refs[".zattrs"].data
    assert data == fsspec.filesystem("reference", fo={".zattrs": value}).cat(".zattrs")
    assert data == b'{"title":"Temp\\u00e9rature","units":"\\u00b0C","n":[1,2.5]}'
    assert json.loads(data) == {"title": "Température", "units": "°C", "n": [1, 2.5]}


def test_json_object_value_keeps_nan_as_python_json_does():
    refs = parse_reference_bytes(b'{".zattrs": {"missing": NaN}}')
    assert refs[".zattrs"].data == b'{"missing":NaN}'
    assert math.isnan(json.loads(refs[".zattrs"].data)["missing"])


def test_base64_binary_inline():
    payload = bytes(range(256)) * 4
    refs = parse_references({"b": "base64:" + base64.b64encode(payload).decode()})
    assert refs["b"] == Inline(payload)


def test_base64_empty_payload_is_empty_file():
    assert parse_references({"b": "base64:"}) == {"b": Inline(b"")}


@pytest.mark.parametrize("payload", ["!!!!", "AAE", "AA=E", "AAE=\n", "A"])
def test_invalid_base64_names_the_key(payload):
    refused({"chunks/0": "base64:" + payload}, match=("'chunks/0'", "invalid base64"))


def test_bytes_values_from_python_callers():
    refs = parse_references({"a": b"\x00raw", "b": b"base64:AAE="})
    assert refs == {"a": Inline(b"\x00raw"), "b": Inline(b"\x00\x01")}


# --------------------------------------------------------------------------
# references and urls


def test_zero_length_range_is_allowed():
    assert parse_references({"e": ["s3://b/f", 10, 0]}) == {"e": Range("s3://b/f", 10, 0)}


def test_range_up_to_the_offset_limit():
    refs = parse_references({"a": ["u", MAX_OFFSET - 10, 10], "b": ["u", 0, MAX_OFFSET]})
    assert refs["a"] == Range("u", MAX_OFFSET - 10, 10)


@pytest.mark.parametrize(
    "value, problem",
    [
        (["u", -1, 10], "offset must not be negative"),
        (["u", 0, -5], "length must not be negative"),
        (["u", 1.0, 10], "offset must be an integer"),
        (["u", 0, 10.5], "length must be an integer"),
        (["u", "0", 10], "offset must be an integer"),
        (["u", True, 10], "offset must be an integer, not boolean"),
        (["u", 0, False], "length must be an integer, not boolean"),
        (["u", None, 10], "offset must be an integer, not null"),
        (["u", MAX_OFFSET, 0], "beyond 2**63"),
        (["u", MAX_OFFSET - 1, 2], "beyond 2**63"),
        (["u", 2**70, 1], "beyond 2**63"),
        ([5], "url must be a string or null"),
        ([["u"]], "url must be a string or null"),
        ([True, 0, 1], "url must be a string or null"),
        ([], "got 0 items"),
        (["u", 1], "got 2 items"),
        (["u", 1, 2, 3], "got 4 items"),
        (["s3://b/a\nb"], "url contains control character U+000A"),
        (["s3://b/a\x00b", 0, 1], "url contains control character U+0000"),
    ],
)
def test_malformed_references_name_key_and_problem(value, problem):
    error = refused({"var/0.0": value}, match=("'var/0.0'", problem))
    assert error.key == "var/0.0"


@pytest.mark.parametrize(
    "value, kind",
    [(1, "integer"), (1.5, "number"), (True, "boolean"), (None, "null")],
)
def test_scalar_values_are_refused(value, kind):
    refused({"k": value}, match=("'k'", f"not {kind}", "reference list"))


@pytest.mark.parametrize("null_url", [None, ""])
def test_null_or_empty_url_uses_the_default_target(null_url):
    refs = parse_references(
        {"a": [null_url, 5, 10], "b": [null_url], "c": ["s3://other/x"]}, default_url="s3://bucket/target.h5"
    )
    assert refs == {
        "a": Range("s3://bucket/target.h5", 5, 10),
        "b": Whole("s3://bucket/target.h5"),
        "c": Whole("s3://other/x"),
    }


@pytest.mark.parametrize("null_url", [None, ""])
@pytest.mark.parametrize("default_url", [None, ""])
def test_null_url_without_default_is_refused(null_url, default_url):
    refused({"x/0": [null_url, 0, 4]}, default_url=default_url, match=("'x/0'", "no url", "no default target"))


def test_template_rendering_to_empty_url_uses_default():
    doc = v1({"a": ["{{e}}", 0, 1]}, templates={"e": ""})
    assert parse_references(doc, default_url="d") == {"a": Range("d", 0, 1)}
    refused(doc, match=("'a'", "no default target"))


# --------------------------------------------------------------------------
# version 1 and templates


def test_v1_with_both_template_spellings_and_extra_top_level_keys():
    doc = v1(
        {
            ".zgroup": '{"zarr_format":2}',
            "a/0": ["{{u}}", 0, 100],
            "a/1": ["{{ u }}", 100, 100],
            "a/2": ["{u}", 200, 100],
            "a/3": ["{{h}}/dir/{u2}.nc"],
            "a/4": ["s3://plain/url"],
        },
        templates={"u": "s3://bucket/data/file.nc", "h": "https://host:8080", "u2": "f2"},
        refmount={"created": "2024-01-01", "note": "extra metadata is ignored"},
    )
    assert parse_references(doc) == {
        ".zgroup": Inline(b'{"zarr_format":2}'),
        "a/0": Range("s3://bucket/data/file.nc", 0, 100),
        "a/1": Range("s3://bucket/data/file.nc", 100, 100),
        "a/2": Range("s3://bucket/data/file.nc", 200, 100),
        "a/3": Whole("https://host:8080/dir/f2.nc"),
        "a/4": Whole("s3://plain/url"),
    }


def test_unknown_template_names_and_other_braces_are_left_alone():
    doc = v1(
        {
            "a": ["s3://b/{unknown}/x"],
            "b": ["s3://b/{{unknown}}/x"],
            "c": ["s3://b/{not a template}/{}/{{u}}"],
            "d": ["https://h/q?json={\"a\":1}"],
        },
        templates={"u": "T"},
    )
    assert parse_references(doc) == {
        "a": Whole("s3://b/{unknown}/x"),
        "b": Whole("s3://b/{{unknown}}/x"),
        "c": Whole("s3://b/{not a template}/{}/T"),
        "d": Whole('https://h/q?json={"a":1}'),
    }


def test_template_values_are_not_substituted_recursively():
    doc = v1({"a": ["{{u}}"]}, templates={"u": "s3://b/{{v}}", "v": "X"})
    assert parse_references(doc) == {"a": Whole("s3://b/{{v}}")}


def test_templates_apply_to_urls_only_not_to_inline_values_or_keys():
    doc = v1({"{{u}}": "text {{u}}", "k": "{u}"}, templates={"u": "s3://b/f"})
    assert parse_references(doc) == {"{{u}}": Inline(b"text {{u}}"), "k": Inline(b"{u}")}


def test_v0_has_no_templates():
    assert parse_references({"a": ["{{u}}"], "templates": {"u": "x"}})["a"] == Whole("{{u}}")


@pytest.mark.parametrize(
    "doc, problem",
    [
        ([], "must be a JSON object at the top level, not array"),
        ("refs", "not string"),
        (None, "not null"),
        ({"version": 2, "refs": {}}, "unknown reference set version integer 2"),
        ({"version": "1", "refs": {}}, "unknown reference set version string '1'"),
        ({"version": True, "refs": {}}, "unknown reference set version boolean True"),
        ({"version": None}, "unknown reference set version null"),
        ({"version": 1.0}, "unknown reference set version number 1.0"),
        ({"version": [[[]]]}, "unknown reference set version array"),
        ({"version": 1, "refs": []}, "'refs' must be a JSON object, not array"),
        ({"version": 1, "refs": "x"}, "'refs' must be a JSON object, not string"),
        ({"version": 1, "templates": []}, "'templates' must be a JSON object"),
        ({"version": 1, "templates": {"u": 1}}, "template 'u' must be a string, not integer"),
        ({"version": 1, "templates": {"a-b": "x"}}, "template name 'a-b' is not an identifier"),
        ({"version": 1, "templates": {"1a": "x"}}, "template name '1a' is not an identifier"),
        ({"version": 1, "gen": {}}, "'gen' must be a JSON array"),
    ],
)
def test_malformed_documents(doc, problem):
    refused(doc, match=(problem,))


# --------------------------------------------------------------------------
# gen


def test_gen_from_the_spec():
    doc = {
        "version": 1,
        "templates": {"u": "server.domain/path"},
        "refs": {"key0": "data"},
        "gen": [
            {
                "key": "gen_key{{i}}",
                "url": "http://{{u}}_{{i}}",
                "offset": "{{(i + 1) * 1000}}",
                "length": "1000",
                "dimensions": {"i": {"stop": 5}},
            }
        ],
    }
    refs = parse_references(doc)
    assert refs["key0"] == Inline(b"data")
    assert [k for k in refs if k.startswith("gen_")] == [f"gen_key{i}" for i in range(5)]
    for i in range(5):
        assert refs[f"gen_key{i}"] == Range(f"http://server.domain/path_{i}", (i + 1) * 1000, 1000)


def test_gen_cartesian_product_of_ranges_and_lists():
    doc = v1(
        gen=[
            {
                "key": "var/{{t}}.{{band}}.{{y}}",
                "url": "s3://b/{{band}}/{{t}}.nc",
                "offset": "{{y * 64 + 8}}",
                "length": 64,
                "dimensions": {
                    "t": {"start": 2, "stop": 8, "step": 3},
                    "band": ["red", "nir"],
                    "y": [0, 1, 5],
                },
            }
        ]
    )
    refs = parse_references(doc)
    assert len(refs) == 2 * 2 * 3
    assert refs["var/5.nir.5"] == Range("s3://b/nir/5.nc", 5 * 64 + 8, 64)
    assert refs["var/2.red.0"] == Range("s3://b/red/2.nc", 8, 64)
    assert "var/8.red.0" not in refs  # stop is exclusive


def test_gen_without_offset_and_length_gives_whole_objects():
    doc = v1(gen=[{"key": "f/{{i}}", "url": "s3://b/{{i}}.bin", "dimensions": {"i": [3, 1]}}])
    assert parse_references(doc) == {"f/3": Whole("s3://b/3.bin"), "f/1": Whole("s3://b/1.bin")}


def test_gen_arithmetic_and_formatting():
    doc = v1(
        gen=[
            {
                "key": "d/{{'%03d' % i}}/{{i // 2}}.{{i % 2}}.{{-i + 10}}",
                "url": "{u}/{{ '%02x' % (i * 5) }}/{{'%s' % name}}",
                "offset": "1{{i}}",
                "length": " {{ (i - 1) * (i - 1) }} ",
                "dimensions": {"i": {"start": 1, "stop": 4}, "name": ["n"]},
            }
        ],
        templates={"u": "s3://bucket"},
    )
    refs = parse_references(doc)
    assert refs == {
        "d/001/0.1.9": Range("s3://bucket/05/n", 11, 0),
        "d/002/1.0.8": Range("s3://bucket/0a/n", 12, 1),
        "d/003/1.1.7": Range("s3://bucket/0f/n", 13, 4),
    }


def test_gen_negative_step_and_empty_dimension():
    down = v1(gen=[{"key": "k{{i}}", "url": "u", "dimensions": {"i": {"start": 3, "stop": 0, "step": -1}}}])
    assert list(parse_references(down)) == ["k3", "k2", "k1"]
    empty = v1(gen=[{"key": "k{{i}}", "url": "u", "dimensions": {"i": []}}])
    assert parse_references(empty) == {}


def test_gen_null_url_pattern_rendering_empty_uses_default():
    doc = v1(gen=[{"key": "k{{i}}", "url": "", "offset": 0, "length": 1, "dimensions": {"i": [0]}}])
    assert parse_references(doc, default_url="s3://t") == {"k0": Range("s3://t", 0, 1)}
    refused(doc, match=("'k0'", "no default target"))


def gen_doc(**entry):
    base = {"key": "k/{{i}}", "url": "s3://b/f", "dimensions": {"i": {"stop": 3}}}
    base.update(entry)
    return v1(gen=[{k: v for k, v in base.items() if v is not ...}])


@pytest.mark.parametrize(
    "doc, problem",
    [
        (v1(gen=["x"]), "gen[0] must be a JSON object"),
        (gen_doc(key=...), "gen[0] lacks the required field 'key'"),
        (gen_doc(url=...), "gen[0] lacks the required field 'url'"),
        (gen_doc(dimensions=...), "gen[0] lacks the required field 'dimensions'"),
        (gen_doc(offset="0"), "both 'offset' and 'length'"),
        (gen_doc(lenght="1"), "unknown field(s) 'lenght'"),
        (gen_doc(key=5), "gen[0] 'key' must be a string"),
        (gen_doc(dimensions=[1]), "'dimensions' must be a JSON object"),
        (gen_doc(dimensions={"i": 5}), "dimension 'i' must be a list of values or {start, stop, step}"),
        (gen_doc(dimensions={"i": {"start": 0}}), "lacks the required field 'stop'"),
        (gen_doc(dimensions={"i": {"stop": 3, "end": 4}}), "unknown field(s) 'end'"),
        (gen_doc(dimensions={"i": {"stop": 3, "step": 0}}), "step must not be 0"),
        (gen_doc(dimensions={"i": {"stop": 3.0}}), "stop must be an integer"),
        (gen_doc(dimensions={"i": {"stop": True}}), "stop must be an integer"),
        (gen_doc(dimensions={"i": {"stop": 2**64}}), "outside the 64-bit integer range"),
        (gen_doc(dimensions={"i": [1.5]}), "values must be integers or strings"),
        (gen_doc(dimensions={"i": [None]}), "values must be integers or strings"),
        (gen_doc(dimensions={"my-dim": [1]}), "not a usable variable name"),
        (gen_doc(dimensions={"for": [1]}), "not a usable variable name"),
        (v1(gen=[{"key": "{{u}}", "url": "x", "dimensions": {"u": [1]}}], templates={"u": "t"}), "also a template name"),
        (gen_doc(key="k/{{j}}"), "unknown variable 'j'"),
        (gen_doc(key="k/{{i / 2}}"), "'/' (true division) is not supported; use '//'"),
        (gen_doc(key="k/{{i ** 2}}"), "BinOp is not supported"),
        (gen_doc(key="k/{{f(i)}}"), "Call is not supported"),
        (gen_doc(key="k/{{i.real}}"), "Attribute is not supported"),
        (gen_doc(key="k/{{i if i else 0}}"), "IfExp is not supported"),
        (gen_doc(key="k/{{i | string}}"), "BinOp is not supported"),
        (gen_doc(key="k/{{ i + }}"), "is not a supported expression"),
        (gen_doc(key="k/{{1.5}}"), "constant 1.5 is not supported"),
        (gen_doc(key="k/{{'%5000d' % i}}"), "format '%5000d' is not supported"),
        (gen_doc(key="k/{{'%d %d' % i}}"), "format '%d %d' is not supported"),
        (gen_doc(key="k/{{" + "+".join(["i"] * 200) + "}}"), "longer than 256 characters"),
        (gen_doc(key="k/{{10 // (i - 1)}}"), "division by zero"),
        (gen_doc(key="k/{{i}}/{{i % (i - 2)}}"), "division by zero in 2 % 0 (with i=2)"),
        (gen_doc(key="k/{{'a' + 'b'}}"), "+ needs integers"),
        (gen_doc(key="k/{{-'a'}}"), "needs an integer"),
        (gen_doc(key="k/{{'%d' % 'a'}}"), "needs an integer"),
        (gen_doc(offset="{{i - 1}}", length="1"), "offset must not be negative"),
        (gen_doc(offset="x{{i}}", length="1"), "offset renders to 'x0', which is not an integer"),
        (gen_doc(offset="{{'a'}}", length="1"), "offset renders to 'a'"),
        (gen_doc(offset=1.5, length="1"), "'offset' must be an integer or a string pattern"),
        (gen_doc(key="k"), "'k': key generated by gen[0] with i=1 is already defined"),
        (gen_doc(key="k/{{i}}/"), "empty path segment (leading, trailing or doubled '/') (generated by gen[0] with i=0)"),
        (gen_doc(key="/k{{i}}"), "absolute path"),
        (gen_doc(key="k/{{i - 1}}/..{{''}}"), "'..' path segment"),
        (gen_doc(url=None), "'url' must be a string"),
    ],
)
def test_malformed_gen_entries(doc, problem):
    refused(doc, match=(problem,))


def test_gen_key_clashing_with_refs_is_refused():
    doc = v1({"k/1": "x"}, gen=[{"key": "k/{{i}}", "url": "u", "dimensions": {"i": {"stop": 3}}}])
    refused(doc, match=("'k/1'", "already defined", "i=1"))


def test_gen_expansion_limit(monkeypatch):
    huge = v1(gen=[{"key": "k{{i}}.{{j}}", "url": "u", "dimensions": {"i": {"stop": 10**6}, "j": {"stop": 10**6}}}])
    refused(huge, match=("would generate 1000000000000 keys", "limit"))
    # The limit counts all entries of a set together.
    monkeypatch.setattr(kerchunk_module, "MAX_GENERATED_KEYS", 10)
    six = {"url": "u", "dimensions": {"i": {"stop": 6}}}
    parse_references(v1(gen=[{"key": "a{{i}}", **six}]))
    refused(v1(gen=[{"key": "a{{i}}", **six}, {"key": "b{{i}}", **six}]), match=("gen[1] would generate 6",))


# --------------------------------------------------------------------------
# keys


GOOD_KEYS = [
    ".zgroup",
    "a/.zarray",
    "var/0.0.0",
    "deep/er/and/deeper/0",
    "température/0",
    "日本/データ",
    "back\\slash",
    "...",
    ".hidden/..x/x..",
    "spaces are fine",
    "x" * NAME_MAX,
    "é" * (NAME_MAX // 2),
    "/".join(["s"] * 1000),
]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_good_keys_are_accepted_and_split(key):
    assert parse_references({key: "v"}) == {key: Inline(b"v")}
    assert split_key(key) == tuple(key.split("/"))
    assert key_problem(key) is None


BAD_KEYS = [
    ("", "key is empty"),
    ("/abs", "absolute path"),
    ("/", "absolute path"),
    ("a//b", "empty path segment"),
    ("a/", "empty path segment"),
    (".", "'.' path segment"),
    ("a/./b", "'.' path segment"),
    ("..", "'..' path segment"),
    ("a/../b", "'..' path segment"),
    ("../etc/passwd", "'..' path segment"),
    ("a\x00b", "control character U+0000"),
    ("a\nb", "control character U+000A"),
    ("tab\there", "control character U+0009"),
    ("del\x7f", "control character U+007F"),
    ("c1\x85", "control character U+0085"),
    ("x" * (NAME_MAX + 1), "longer than NAME_MAX"),
    ("ok/" + "é" * (NAME_MAX // 2 + 1), "longer than NAME_MAX"),
    ("\ud800", "lone surrogate"),
    ("a/" + "b\udfff" * 100, "lone surrogate"),
]


@pytest.mark.parametrize("key, problem", BAD_KEYS)
def test_bad_keys_are_refused_with_name_and_problem(key, problem):
    error = refused({key: "v"}, match=(repr(key), problem))
    assert error.key == key
    refused(v1({key: ["s3://b/f"]}), match=(problem,))
    with pytest.raises(InvalidReferences, match="key"):
        split_key(key)
    with pytest.raises(InvalidReferences):
        validate_key(key)


@pytest.mark.parametrize("key", [1, None, ("a",), b"bytes"])
def test_non_string_keys_from_python_callers(key):
    with pytest.raises(InvalidReferences, match="must be a string"):
        validate_key(key)
    refused({key: "v"}, match=("must be a string",))


# --------------------------------------------------------------------------
# bytes entry point


def test_parse_reference_bytes_v0_and_v1():
    assert parse_reference_bytes(b'{"a": "x", "b": ["s3://b/f", 1, 2]}') == {
        "a": Inline(b"x"),
        "b": Range("s3://b/f", 1, 2),
    }
    doc = {"version": 1, "templates": {"u": "s3://b/f"}, "refs": {"a": ["{{u}}", 0, 3]}}
    assert parse_reference_bytes(json.dumps(doc).encode()) == {"a": Range("s3://b/f", 0, 3)}


def test_parse_reference_bytes_utf8_bom_and_escapes():
    data = "\ufeff" + json.dumps({"t": "é\u00e9\u65e5"}, ensure_ascii=True)
    assert parse_reference_bytes(data.encode("utf-8")) == {"t": Inline("éé日".encode())}


@pytest.mark.parametrize(
    "data, where",
    [
        (b'{"a": [1,}', "line 1 column 10"),
        (b'{\n  "a": "x",\n  "b": \n}', "line 4 column 1"),
        (b'{"a": "x"', "line 1 column 10"),
        (b"", "line 1 column 1"),
        (b"   \n\n  {'single': 'quotes'}", "line 3 column 4"),
        (b'{"a": "x"} trailing', "line 1 column 12"),
    ],
)
def test_json_syntax_errors_name_line_and_column(data, where):
    with pytest.raises(InvalidReferences, match="not valid JSON") as info:
        parse_reference_bytes(data)
    assert where in str(info.value)


def test_invalid_utf8_is_located():
    with pytest.raises(InvalidReferences, match=r"not valid UTF-8 at line 2 column 9 \(byte 10\)"):
        parse_reference_bytes(b'{\n  "a": "\xff"}')


def test_deeply_nested_json_is_refused_not_crashing():
    data = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidReferences):
        parse_reference_bytes(data)


def test_big_integers_beyond_64_bits_are_refused():
    # orjson decodes integers beyond 64 bits as floats; either way the key is named.
    with pytest.raises(InvalidReferences, match=r"'a': offset must be an integer|'a'.*beyond 2\*\*63"):
        parse_reference_bytes(b'{"a": ["u", 99999999999999999999999, 1]}')
    with pytest.raises(InvalidReferences, match=r"'a'.*beyond 2\*\*63"):
        parse_reference_bytes(b'{"a": ["u", 9223372036854775807, 2]}')


def test_non_bytes_input_is_refused():
    with pytest.raises(InvalidReferences, match="must be bytes"):
        parse_reference_bytes("{}")  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# agreement with fsspec's ReferenceFileSystem


def fsspec_view(doc, default_url=None):
    """What fsspec makes of ``doc``: key -> ("inline", bytes) | ("ref", url, offset, length)."""
    fs = fsspec.filesystem(
        "reference",
        fo=json.loads(json.dumps(doc)),
        target=default_url,
        remote_protocol="memory",
        simple_templates="gen" not in doc,  # fsspec expands gen only with jinja2
    )
    view = {}
    for key, value in fs.references.items():
        if isinstance(value, (str, bytes)):
            view[key] = ("inline", fs.cat_file(key))
        else:
            url = value[0] if value[0] is not None else default_url
            view[key] = ("ref", url) + tuple(value[1:])
    return view


def our_view(doc, default_url=None):
    view = {}
    for key, ref in parse_references(doc, default_url=default_url).items():
        if isinstance(ref, Inline):
            view[key] = ("inline", ref.data)
        elif isinstance(ref, Range):
            view[key] = ("ref", ref.url, ref.offset, ref.length)
        else:
            view[key] = ("ref", ref.url)
    return view


def normalise_json_inline(view):
    """fsspec writes embedded objects with json.dumps defaults (spaces); we write compact JSON."""
    out = {}
    for key, value in view.items():
        if value[0] == "inline":
            try:
                out[key] = ("json", json.loads(value[1]))
                continue
            except ValueError:
                pass
        out[key] = value
    return out


REPRESENTATIVE_DOCS = [
    # version 0 as written by kerchunk's early HDF5 translator
    {
        ".zgroup": '{\n    "zarr_format": 2\n}',
        ".zattrs": '{"title": "Température"}',
        "temp/.zarray": '{"chunks":[10,10],"compressor":null,"dtype":"<f4","fill_value":"NaN","filters":null,'
        '"order":"C","shape":[100,100],"zarr_format":2}',
        "temp/0.0": ["s3://bucket/data.nc", 3000, 400],
        "temp/0.1": ["s3://bucket/data.nc", 3400, 400],
        "small/0": "base64:" + base64.b64encode(b"\x00\x01\x02binary").decode(),
        "whole": ["s3://bucket/whole.bin"],
    },
    # version 0 with embedded JSON objects
    {".zgroup": {"zarr_format": 2}, "x/.zarray": {"shape": [3], "chunks": [3]}, "x/0": ["memory://f", 0, 24]},
    # version 1 with templates (jinja spelling) and inline text
    {
        "version": 1,
        "templates": {"u": "s3://bucket/long/path/to/file.h5", "v": "s3://other/f.h5"},
        "refs": {
            ".zgroup": '{"zarr_format":2}',
            "a/0": ["{{u}}", 0, 100],
            "a/1": ["{{u}}", 100, 100],
            "b/0": ["{{v}}"],
            "c/0": ["s3://plain/x", 5, 0],
            "t": "日本語 inline",
        },
    },
    # version 1 with gen (fsspec renders it with jinja2)
    {
        "version": 1,
        "templates": {"u": "server.domain/path"},
        "refs": {"key0": "data"},
        "gen": [
            {
                "key": "gen_key{{i}}.{{j}}",
                "url": "http://{{u}}_{{i}}",
                "offset": "{{(i + 1) * 1000 + j % 7}}",
                "length": "1000",
                "dimensions": {"i": {"stop": 5}, "j": {"start": 3, "stop": 30, "step": 4}},
            },
            {
                "key": "w/{{name}}/{{k // 2}}.{{k % 2}}",
                "url": "s3://b/{{name}}-{{'%04d' % k}}.bin",
                "dimensions": {"name": ["x", "y"], "k": [0, 1, 2, 3]},
            },
        ],
    },
]


@pytest.mark.parametrize("doc", REPRESENTATIVE_DOCS, ids=["v0-kerchunk", "v0-objects", "v1-templates", "v1-gen"])
def test_agrees_with_fsspec(doc):
    ours, theirs = our_view(doc), fsspec_view(doc)
    assert normalise_json_inline(ours) == normalise_json_inline(theirs)
    # Text values are not re-serialised: byte-identical to fsspec.
    for key, value in ours.items():
        if value[0] == "inline" and isinstance(doc.get(key, doc.get("refs", {}).get(key)), str):
            assert value == theirs[key]


def test_agrees_with_fsspec_on_default_target():
    doc = {"a": [None, 10, 20], "b": [None]}
    assert our_view(doc, "memory://target") == fsspec_view(doc, "memory://target")


def test_agrees_with_kerchunk_written_references(tmp_path):
    """A set produced by kerchunk's own HDF5 translator parses and matches fsspec."""
    h5py = pytest.importorskip("h5py")
    np = pytest.importorskip("numpy")
    from tests.support.datasets import kerchunk_translate

    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("temp", data=np.arange(400, dtype="f4").reshape(20, 20), chunks=(10, 10))
        f.create_dataset("tiny", data=np.arange(3, dtype="i2"))
        f.attrs["title"] = "Température"
    url = f"file://{path}"
    with open(path, "rb") as fh:
        doc = kerchunk_translate(fh, url, inline_threshold=50)
    doc = json.loads(json.dumps(doc))
    refs = parse_references(doc)
    assert normalise_json_inline(our_view(doc)) == normalise_json_inline(fsspec_view(doc))
    ranges = [r for r in refs.values() if isinstance(r, Range)]
    assert len(ranges) == 4 and all(r.url == url and r.length == 400 for r in ranges)
    with open(path, "rb") as fh:
        content = fh.read()
    fs = fsspec.filesystem("reference", fo=doc)
    for key, ref in refs.items():
        if isinstance(ref, Range):
            assert content[ref.offset : ref.offset + ref.length] == fs.cat_file(key)
        else:
            assert ref.data == fs.cat_file(key) or json.loads(ref.data) == json.loads(fs.cat_file(key))


# --------------------------------------------------------------------------
# properties

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)

segment = st.sampled_from(["a", ".", "..", "", "b.c", "é", "\x00", "\\", "x" * 256, "0.0", "/"])
near_keys = st.lists(segment, min_size=1, max_size=4).map("/".join) | st.text(max_size=12)
near_urls = st.none() | st.sampled_from(["", "s3://b/f", "{{u}}", "{u}", "{{w}}", "{"]) | st.integers() | st.text(max_size=6)
near_ints = st.integers(min_value=-3, max_value=2**64) | st.sampled_from([True, 1.0, "1", None])
near_values = (
    st.tuples(near_urls).map(list)
    | st.tuples(near_urls, near_ints, near_ints).map(list)
    | st.lists(near_urls, max_size=5)
    | st.text(max_size=10)
    | st.text(max_size=10).map(lambda s: "base64:" + s)
    | json_values
)
near_refs = st.dictionaries(near_keys, near_values, max_size=8)
near_dims = st.dictionaries(
    st.sampled_from(["i", "j", "u", "for", "1x"]),
    st.lists(st.integers(-5, 5) | st.text(max_size=3), max_size=3)
    | st.fixed_dictionaries({"stop": st.integers(-3, 6)}, optional={"start": st.integers(-3, 3), "step": st.integers(-2, 2)})
    | json_scalars,
    max_size=2,
)
near_patterns = st.sampled_from(
    ["k{{i}}", "k/{{i}}/{{j}}", "{{i*2}}", "{{i//j}}", "{{i%j}}", "{{'%03d' % i}}", "{{u}}", "{{ i + }}", "k", "", "/{{i}}"]
) | st.text(max_size=8)
near_gen = st.fixed_dictionaries(
    {"key": near_patterns, "url": near_patterns | st.none(), "dimensions": near_dims},
    optional={"offset": near_patterns | near_ints, "length": near_patterns | near_ints, "extra": json_scalars},
)
near_docs = near_refs | st.fixed_dictionaries(
    {"version": st.sampled_from([1, 1, 1, 0, 2, "1", True, None]), "refs": near_refs | json_values},
    optional={
        "templates": st.dictionaries(st.sampled_from(["u", "v", "a-b", "i"]), st.text(max_size=5) | st.integers(), max_size=3),
        "gen": st.lists(near_gen, max_size=2) | json_values,
        "refmount": json_values,
    },
)


def assert_normal_result(result):
    assert isinstance(result, dict)
    for key, ref in result.items():
        assert isinstance(key, str) and key
        assert not key.startswith("/")
        assert "\x00" not in key
        parts = key.split("/")
        assert all(p not in ("", ".", "..") and len(p.encode()) <= NAME_MAX for p in parts)
        assert isinstance(ref, (Inline, Range, Whole))
        if isinstance(ref, Inline):
            assert isinstance(ref.data, bytes)
        else:
            assert isinstance(ref.url, str) and ref.url
        if isinstance(ref, Range):
            assert type(ref.offset) is int and type(ref.length) is int
            assert 0 <= ref.offset and 0 <= ref.length and ref.offset + ref.length <= MAX_OFFSET


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_only_ever_fails_with_invalid_references(doc):
    try:
        result = parse_references(doc, default_url="s3://default")
    except InvalidReferences:
        return
    assert_normal_result(result)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(near_docs, st.sampled_from([None, "s3://default"]))
def test_near_valid_sets_only_ever_fail_with_invalid_references(doc, default_url):
    try:
        result = parse_references(doc, default_url=default_url)
    except InvalidReferences:
        return
    assert_normal_result(result)


@settings(max_examples=300)
@given(st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bytes_only_ever_fail_with_invalid_references(data):
    try:
        result = parse_reference_bytes(data)
    except InvalidReferences:
        return
    assert_normal_result(result)


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.lists(
            st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=10), min_size=1, max_size=3
        ).map("/".join)
        # A top-level "version" key makes a document version 1 (as in fsspec).
        .filter(lambda k: key_problem(k) is None and k != "version"),
        st.tuples(st.sampled_from(["s3://b/f", "https://h/x"]), st.integers(0, 2**40), st.integers(0, 2**20)).map(list)
        | st.text(max_size=20)
        | st.binary(max_size=20).map(lambda b: "base64:" + base64.b64encode(b).decode()),
        max_size=10,
    )
)
def test_valid_v0_sets_round_trip_through_json(refs):
    data = json.dumps(refs).encode()
    parsed = parse_reference_bytes(data)
    assert list(parsed) == list(refs)
    for key, value in refs.items():
        if isinstance(value, list):
            assert parsed[key] == Range(*value)
        elif value.startswith("base64:"):
            assert parsed[key] == Inline(base64.b64decode(value[7:]))
        else:
            assert parsed[key] == Inline(value.encode())
