"""HTTP redirects under the URL policy: every hop is checked before it is followed.

``allow`` names where references may lead; a server that answers
``302 Location: http://127.0.0.1:8080/secret`` would otherwise take a read
anywhere behind the operator's back (aiohttp follows redirects by itself).
fsspec's HTTP filesystem runs every request on one aiohttp session, so the
check is an aiohttp trace hook on that session: it runs when a redirect
answer arrives and *before* the next request is made. A hop the policy
refuses raises :class:`~refmount.errors.ForbiddenURL` (EACCES) naming both
URLs, closes the redirect answer and is logged once per pair of URLs; the
target never sees a request. Hops the policy admits are followed, at most
:data:`MAX_REDIRECTS` in a row (a loop ends as an error, not a hang).

Because the hook sits below fsspec, the backend's single retry loop, time
bound, exact-length check and ``If-Match`` apply unchanged to the final hop.

The reference set itself is the operator's own choice of URL, so when it is
loaded a hop may also stay on the reference set's origin (scheme, host and
port), as well as go where the policy allows. Every hop also passes the
internal-address check of :mod:`refmount.store.addresses` (a public server
answering ``302 Location: http://169.254.169.254/...`` is refused); its DNS
lookup runs off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from refmount.errors import ForbiddenURL
from refmount.store.addresses import address_refusal
from refmount.store.policy import UrlPolicy, origin_of
from refmount.urls import redact_url

log = logging.getLogger("refmount.policy")

#: Redirects followed for one request before it fails.
MAX_REDIRECTS = 5

_logged: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


def refusal(policy: UrlPolicy, target: str, origin: str | None = None) -> str | None:
    """Why a redirect to ``target`` must not be followed, or None when it may be."""
    if origin is not None and origin_of(target) == origin:
        return None
    return policy.reason(target) or address_refusal(policy, target)


def redirect_guard(policy: UrlPolicy, origin: str | None = None) -> Any:
    """An ``aiohttp.TraceConfig`` refusing redirects that ``policy`` (or ``origin``) does not admit."""
    import aiohttp
    from yarl import URL

    async def on_redirect(session: Any, context: Any, params: aiohttp.TraceRequestRedirectParams) -> None:
        response = params.response
        location = response.headers.get("Location") or response.headers.get("URI")
        if location is None:
            return  # aiohttp hands this answer back as it is
        source = str(response.url)
        target = str(response.url.join(URL(location)))
        reason = await asyncio.get_running_loop().run_in_executor(None, refusal, policy, target, origin)
        if reason is None:
            return
        response.close()
        shown_source, shown_target = redact_url(source), redact_url(target)
        with _logged_lock:
            first = (shown_source, shown_target) not in _logged
            if first and len(_logged) < 10_000:
                _logged.add((shown_source, shown_target))
        if first:
            log.warning("refused redirect from %s to %s: %s", shown_source, shown_target, reason)
        raise ForbiddenURL(f"{shown_source} redirects to {shown_target}, which is not allowed: {reason}")

    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(on_redirect)
    return trace


def guarded_http_options(kwargs: dict[str, Any], policy: UrlPolicy, origin: str | None = None) -> dict[str, Any]:
    """Add the redirect guard and the hop bound to fsspec HTTP filesystem arguments (in place)."""
    client_kwargs = dict(kwargs.get("client_kwargs") or {})
    client_kwargs["trace_configs"] = [*client_kwargs.get("trace_configs", ()), redirect_guard(policy, origin)]
    kwargs["client_kwargs"] = client_kwargs
    kwargs.setdefault("max_redirects", MAX_REDIRECTS)
    return kwargs
