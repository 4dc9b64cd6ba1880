"""Logging set-up: one line per event, journald level prefixes under systemd, no secrets.

Under systemd (``JOURNAL_STREAM`` set, stderr being the journal) each line
starts with ``<N>`` so journald records the right priority; elsewhere lines
carry a timestamp and level name. A filter masks anything that looks like a
credential before a line is written, as a last line of defence behind the
rule that messages never include them.
"""

from __future__ import annotations

import logging
import os
import re
import sys

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

_SECRET_PATTERNS = (
    re.compile(r"(?i)((?:[a-z_]*secret[a-z_]*|password|passwd|[a-z_]*token)\s*[=:]\s*['\"]?)[^\s,'\"&}]+"),
    re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s]+"),
    re.compile(r"(://[^/@\s:]+:)[^/@\s]+(@)"),
)


def mask_secrets(text: str) -> str:
    """Replace credential-looking values in ``text`` with ``***``."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "***" + (m.group(2) if m.lastindex and m.lastindex >= 2 else ""), text)
    return text


class _SecretFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_secrets(record.getMessage())
        record.args = None
        return True


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.name}: {super().format(record)}"


def under_journal() -> bool:
    """True when stderr is connected to journald (systemd sets JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        device, inode = (int(part) for part in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (device, inode)
    except (ValueError, OSError):
        return False


def setup_logging(level: str = "info", log_file: str | None = None) -> logging.Handler:
    """Configure the ``refmount`` logger; returns the handler (its stream takes stack dumps)."""
    if log_file:
        handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    if not log_file and under_journal():
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_SecretFilter())
    root = logging.getLogger("refmount")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    # Library chatter (botocore, aiohttp) only when debugging, through the same handler.
    for name in ("botocore", "aiobotocore", "s3fs", "fsspec", "aiohttp"):
        library = logging.getLogger(name)
        library.handlers = [handler] if level.lower() == "debug" else []
        library.setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)
        library.propagate = False
    return handler
