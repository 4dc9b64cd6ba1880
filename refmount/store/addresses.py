"""Which network hosts a remote reference set may reach: no internal addresses by default.

A reference set fetched from the web is written by someone else, yet every
URL in it is fetched from the operator's machine, inside the operator's
network. ``["http://127.0.0.1:8500/v1/kv", 0, 100]`` or the instance
metadata service at ``169.254.169.254`` would be read and served as a file.
So for a remote set, a host URL (HTTP, FTP, SSH ...) whose host is, or
resolves by DNS to, a loopback, link-local, private or unspecified address
is refused, unless

* it stays on the set's own origin (scheme, host and port: a set served
  from ``127.0.0.1:8000`` may reach ``127.0.0.1:8000``, not ``:8001``), or
* an ``allow`` URL prefix names it (``-o allow=http://10.0.0.5:9000/``).

Every address a name resolves to is checked (one internal answer is
enough to refuse). Object-store URLs (``s3://bucket/key``) name buckets,
not hosts: their endpoint is the operator's configuration, not the set's,
and stays reachable. Redirect hops are checked with the same function
(:mod:`refmount.store.redirects`).

The check runs before the request; a name whose DNS answer changes between
the check and the connection (DNS rebinding) is not caught here.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from urllib.parse import urlsplit

from refmount.errors import ForbiddenURL
from refmount.store.policy import UrlPolicy, origin_of
from refmount.urls import redact_url

log = logging.getLogger("refmount.policy")

#: Seconds a host's DNS verdict is reused (a set has many URLs and few hosts).
DNS_TTL = 60.0

_verdicts: dict[str, tuple[float, str | None]] = {}
_verdicts_lock = threading.Lock()
_logged: set[str] = set()


def is_internal(address: str) -> bool:
    """Loopback, link-local (incl. instance metadata), private or unspecified, also as IPv4-mapped IPv6."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True  # an answer that is not an address cannot be vouched for
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_unspecified


def internal_address_of(host: str) -> str | None:
    """The first internal address ``host`` is or resolves to (every answer checked), or None.

    A name that does not resolve is left to the request itself, which fails the same way.
    """
    now = time.monotonic()
    with _verdicts_lock:
        cached = _verdicts.get(host)
    if cached is not None and cached[0] > now:
        return cached[1]
    try:
        answers = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    verdict = next((str(info[4][0]) for info in answers if is_internal(str(info[4][0]))), None)
    with _verdicts_lock:
        if len(_verdicts) > 10_000:
            _verdicts.clear()
        _verdicts[host] = (now + DNS_TTL, verdict)
    return verdict


def address_refusal(policy: UrlPolicy, url: str) -> str | None:
    """Why ``url``'s host may not be reached from the policy's reference set, or None."""
    if not policy.guard_addresses:
        return None
    origin = origin_of(url)
    if origin is None or origin == policy.origin or policy.names(url):
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    internal = internal_address_of(host)
    if internal is None:
        return None
    shown = f"{parts.scheme.lower()}://{parts.netloc.rsplit('@', 1)[-1]}"
    what = host if host == internal else f"{host} ({internal})"
    return (f"{what} is an internal address, not reachable from a remote reference set "
            f"(allow it with -o allow={shown}/)")


def refusal(policy: UrlPolicy, url: str) -> str | None:
    """Why ``url`` must not be read: the policy's reason, or its host's; None if it may be."""
    return policy.reason(url) or address_refusal(policy, url)


def check_host(policy: UrlPolicy, url: str) -> None:
    """Raise :class:`ForbiddenURL` (EACCES) if ``url``'s host is internal; the first refusal is logged."""
    reason = address_refusal(policy, url)
    if reason is None:
        return
    shown = redact_url(url)
    with _verdicts_lock:
        first = shown not in _logged and len(_logged) < 10_000
        _logged.add(shown)
    if first:
        log.warning("refused %s: %s", shown, reason)
    raise ForbiddenURL(f"{shown}: {reason}")
