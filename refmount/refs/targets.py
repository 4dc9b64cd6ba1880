"""What a reference's target URL may contain, whatever format the set came in.

A URL with a control character (NUL above all) cannot name an object on any
store refmount reads; passed on, it would be cut short by a C library or
logged as something else than it is. Every reference format refuses it the
same way, at load time, naming the character.
"""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x1f\x7f]")


def control_character_problem(url: str) -> str | None:
    """Why ``url`` cannot be a target (the first control character in it), or None when it can."""
    bad = _CONTROL.search(url)
    if bad is None:
        return None
    return f"url contains control character U+{ord(bad.group()):04X}"
