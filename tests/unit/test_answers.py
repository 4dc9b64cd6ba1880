"""The rules an answer to a ranged GET is held to, and the memory of ranges that just failed (pure, no I/O)."""

from __future__ import annotations

import pytest

from refmount.byterange import ByteRange
from refmount.errors import BackendError
from refmount.store.responses import Answer, UnexpectedAnswer, answered_facts, parse_content_range, requested_bytes
from refmount.store.retry import GaveUp, RecentFailures, WrongLength, is_transient

RNG = ByteRange(1835008, 1900544)
BODY = b"x" * RNG.length


@pytest.mark.parametrize(("header", "parsed"), [
    ("bytes 0-65535/8388608", (0, 65535, 8388608)),
    ("bytes 5-5/*", (5, 5, None)),
    ("BYTES  7-9/10 ", (7, 9, 10)),
    ("bytes 9-7/10", None), ("bytes 0-10/10", None), ("bytes */10", None), ("items 0-1/2", None), ("", None),
    (None, None),
])
def test_content_range_is_parsed_or_refused(header, parsed):
    assert parse_content_range(header) == parsed


def test_a_206_for_the_requested_bytes_is_its_body():
    answer = Answer(206, BODY, f"bytes {RNG.start}-{RNG.stop - 1}/8388608")
    assert requested_bytes("u", RNG, answer, 8388608) is BODY


@pytest.mark.parametrize("header", ["bytes 0-65535/8388608", f"bytes {RNG.start}-{RNG.stop}/8388608", None, "junk"])
def test_a_206_for_other_bytes_is_a_transient_error(header):
    with pytest.raises(UnexpectedAnswer) as failure:
        requested_bytes("u", RNG, Answer(206, BODY, header), 8388608)
    assert is_transient(failure.value)


def test_a_206_ending_at_the_objects_end_before_the_range_does_is_not_retried():
    with pytest.raises(WrongLength, match="beyond the end") as failure:
        requested_bytes("u", ByteRange(90, 110), Answer(206, b"y" * 10, "bytes 90-99/100"), 100)
    assert not is_transient(failure.value)


def test_a_200_is_accepted_only_as_the_whole_object_asked_for():
    whole = b"z" * 100
    assert requested_bytes("u", ByteRange(0, 100), Answer(200, whole), 100) is whole
    with pytest.raises(UnexpectedAnswer):  # the range's bytes, but as a "whole object"
        requested_bytes("u", RNG, Answer(200, BODY), 8388608)
    with pytest.raises(UnexpectedAnswer):  # size unknown: cannot tell it is whole
        requested_bytes("u", ByteRange(0, 100), Answer(200, whole), None)
    # Longer than asked is passed on, for the caller's "server ignores Range" error.
    assert requested_bytes("u", ByteRange(0, 10), Answer(200, whole), 100) is whole


def test_other_statuses_are_errors():
    with pytest.raises(UnexpectedAnswer):
        requested_bytes("u", RNG, Answer(204, b""), 8388608)


def test_the_facts_of_an_answer_take_the_total_only_from_a_206():
    facts = answered_facts(Answer(206, b"", "bytes 0-0/42", '"e"', "Wed, 02 Dec 2026 05:00:00 GMT"))
    assert (facts.size, facts.etag) == (42, '"e"') and facts.mtime is not None
    assert answered_facts(Answer(200, b"abc")).size is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_range_is_remembered_until_it_expires_or_a_read_of_it_succeeds():
    clock = Clock()
    memory = RecentFailures(3.0, clock)
    memory.remember("u", [ByteRange(0, 100)], GaveUp("u [0, 100): no answer within 3 s"))
    assert memory.find("u", [ByteRange(50, 60)]) is not None
    assert memory.find("u", [ByteRange(100, 200)]) is None  # does not overlap
    assert memory.find("v", [ByteRange(0, 10)]) is None
    assert memory.find("u", None) is None  # a failed read says nothing about the lookup
    clock.now += 3.1
    assert memory.find("u", [ByteRange(50, 60)]) is None
    memory.remember("u", [ByteRange(0, 100)], GaveUp("again"))
    memory.forget("u", [ByteRange(90, 110)])
    assert memory.find("u", [ByteRange(0, 10)]) is None


def test_a_failed_lookup_covers_every_range_and_errors_answered_at_once_are_not_remembered():
    memory = RecentFailures(3.0, Clock())
    memory.remember("u", None, GaveUp("lookup"))
    assert memory.find("u", [ByteRange(7, 8)]) is not None and memory.find("u", None) is not None
    memory.remember("w", [ByteRange(0, 10)], BackendError("object not found"))
    assert memory.find("w", [ByteRange(0, 10)]) is None
    assert RecentFailures(0).find("u", None) is None
