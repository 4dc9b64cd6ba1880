"""The one implied-directory rule (refmount.refs.tree.implied_directories) against an oracle of its own."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refmount.errors import InvalidReferences
from refmount.refs.compact import CompactNamespace
from refmount.refs.model import Inline
from refmount.refs.tree import Namespace, implied_directories


def oracle(keys: list[str]) -> dict[str, set[str]]:
    """Every directory (root included) of ``keys`` and its subdirectory names, by brute force."""
    directories = {""} | {key.rsplit("/", 1)[0] if "/" in key else "" for key in keys}
    directories |= {directory.rsplit("/", i)[0] for directory in directories for i in range(directory.count("/") + 1)}
    return {d: {e.rsplit("/", 1)[-1] for e in directories if e and (e.rpartition("/")[0] == d)} for d in directories}


def parents(keys: list[str]) -> dict[str, str]:
    return {key.rpartition("/")[0]: key.rpartition("/")[2] for key in keys}


segment = st.sampled_from(["a", "b", "c", "0.0", ".zarray"])
key_sets = st.lists(st.lists(segment, min_size=1, max_size=4).map("/".join), min_size=1, max_size=30, unique=True)


@settings(max_examples=300, deadline=None)
@given(key_sets)
def test_every_directory_and_its_subdirectories_whatever_the_key_order(keys):
    files = set(keys)
    found = parents(keys)
    expected = oracle(keys)
    if any(directory in files for directory in expected):
        with pytest.raises(InvalidReferences):
            implied_directories(found, files.__contains__, found.__getitem__)
        return
    result = implied_directories(found, files.__contains__, found.__getitem__)
    assert {d: set(names) for d, names in result.items()} == expected
    assert all(list(names) == sorted(names) for names in result.values())
    refs = {key: Inline(b"") for key in keys}
    for tree in (Namespace(refs), CompactNamespace(refs)):
        assert tree.directory_count == len(expected)
        for directory, names in expected.items():
            assert tree.subdirectory_count(directory) == len(names), directory
            listed = set(tree.listdir(directory))
            assert names <= listed, directory


def test_a_deep_directory_listed_before_its_parent_still_appears_in_it():
    assert implied_directories(["g/x/y", "g"], lambda key: False, lambda directory: "f") == {
        "": ("g",), "g": ("x",), "g/x": ("y",), "g/x/y": (),
    }


@pytest.mark.parametrize("keys", [["a", "a/b"], ["a/b/c", "a/b"], ["x/a/b/c", "x/a"]])
def test_a_key_that_is_also_a_directory_is_refused_naming_both_keys(keys):
    for build in (Namespace, CompactNamespace):
        with pytest.raises(InvalidReferences) as refused:
            build({key: Inline(b"") for key in keys})
        directory = min(keys, key=len)
        assert refused.value.key == directory
        assert f"{directory}/" in str(refused.value)
