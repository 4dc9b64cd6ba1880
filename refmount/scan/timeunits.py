"""Putting CF time coordinates of several files on one ``UNIT since DATE`` scale.

Writers commonly pick the units of a time coordinate per file: xarray, for
one, encodes "days since <first time of this file>". The raw numbers of two
files are then not comparable, and a concatenated coordinate must carry one
units string. Conversion is exact integer arithmetic in microseconds for the
calendars numpy's datetime64 implements (standard, gregorian after 1582,
proleptic_gregorian); other calendars are only accepted with identical units.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_MICROSECONDS = {
    "microseconds": 1, "microsecond": 1, "us": 1,
    "milliseconds": 1_000, "millisecond": 1_000, "ms": 1_000,
    "seconds": 1_000_000, "second": 1_000_000, "secs": 1_000_000, "sec": 1_000_000, "s": 1_000_000,
    "minutes": 60_000_000, "minute": 60_000_000, "mins": 60_000_000, "min": 60_000_000,
    "hours": 3_600_000_000, "hour": 3_600_000_000, "hrs": 3_600_000_000, "hr": 3_600_000_000, "h": 3_600_000_000,
    "days": 86_400_000_000, "day": 86_400_000_000, "d": 86_400_000_000,
}
_NUMPY_CALENDARS = {None, "standard", "gregorian", "proleptic_gregorian"}
_UNITS = re.compile(r"\s*(\w+)\s+since\s+(.+?)\s*", re.IGNORECASE)
_DATE = re.compile(r"(-?\d{1,4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{1,2})(?::(\d{1,2})(\.\d+)?)?)?\s*(?:Z|UTC|[+-]00:?00)?")


class IncompatibleTimeUnits(ValueError):
    """Time coordinates that cannot be put on one scale (reason in the message)."""


@dataclass(frozen=True, slots=True)
class TimeUnits:
    """A parsed ``UNIT since DATE``: the unit and the reference date, both in microseconds."""

    text: str
    unit_us: int
    epoch_us: int


def parse_time_units(units: str) -> TimeUnits | None:
    """Parse CF time units; None when ``units`` is not of the ``UNIT since DATE`` form numpy can place."""
    match = _UNITS.fullmatch(units)
    if match is None or match.group(1).lower() not in _MICROSECONDS:
        return None
    date = _DATE.fullmatch(match.group(2))
    if date is None:
        return None
    year, month, day, hour, minute, second, fraction = date.groups()[:7]
    iso = f"{int(year):04d}-{int(month):02d}-{int(day):02d}T{int(hour or 0):02d}:{int(minute or 0):02d}:{int(second or 0):02d}"
    try:
        epoch = np.datetime64(iso + (fraction or ""), "us").astype(np.int64)
    except ValueError:
        return None
    return TimeUnits(units, _MICROSECONDS[match.group(1).lower()], int(epoch))


def common_time_scale(
    values: Sequence[np.ndarray], units: Sequence[str | None], calendars: Sequence[str | None]
) -> tuple[list[np.ndarray], str | None]:
    """The coordinate values of every file on one scale, and that scale's units.

    Identical units (or none) leave the values untouched. Otherwise every
    file's values are converted to the units with the earliest reference
    date; integers stay integers when the conversion is exact.
    """
    if len(set(units)) <= 1:
        return list(values), units[0] if units else None
    if any(u is None for u in units):
        raise IncompatibleTimeUnits("some files give the coordinate units and others do not")
    if set(calendars) - _NUMPY_CALENDARS or len(set(calendars)) > 1:
        raise IncompatibleTimeUnits(f"units differ ({', '.join(sorted({str(u) for u in units}))}) and the calendars "
                                    f"({', '.join(sorted({str(c) for c in calendars}))}) cannot be converted exactly")
    parsed = []
    for text in units:
        found = parse_time_units(str(text))
        if found is None:
            raise IncompatibleTimeUnits(f"units differ and {text!r} is not 'UNIT since DATE'")
        parsed.append(found)
    target = min(parsed, key=lambda p: (p.epoch_us, -p.unit_us))
    return [_convert(v, p, target) for v, p in zip(values, parsed, strict=True)], target.text


def _convert(values: np.ndarray, source: TimeUnits, target: TimeUnits) -> np.ndarray:
    """Values of ``source`` units expressed in ``target`` units (exact for integers when possible)."""
    if source == target:
        return values
    shift = source.epoch_us - target.epoch_us
    if values.dtype.kind in "iu":
        total = values.astype(np.int64) * source.unit_us + shift
        if not np.any(total % target.unit_us):
            return (total // target.unit_us).astype(np.int64)
        return (total / target.unit_us).astype(np.float64)
    return (values.astype(np.float64) * source.unit_us + shift) / target.unit_us
