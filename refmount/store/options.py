"""The backend's options, and what they mean to each fsspec filesystem.

:class:`BackendOptions` is the one place the defaults of the store options
are written; the mount option table (:mod:`refmount.config.options`) reads
them from here, so a flag's documented default and the backend's behaviour
cannot differ.

The time bound and the retries belong to the backend's own loop
(:mod:`refmount.store.retry`), so the filesystems are set up to make one
attempt per request and to give up on a silent connection early enough to
leave time for the next attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import fsspec

from refmount.store.policy import UrlPolicy
from refmount.store.redirects import guarded_http_options
from refmount.urls import is_local, protocol_of


@dataclass(frozen=True)
class BackendOptions:
    """The backend's share of the mount options; its defaults are the mount's defaults."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    anon: bool = False
    timeout: float = 30.0
    retries: int = 4
    max_concurrency: int = 32
    storage_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    policy: UrlPolicy = field(default_factory=UrlPolicy)


def stall_timeout(options: BackendOptions) -> float:
    """Seconds of silence after which one attempt is abandoned, leaving time for the others."""
    return max(1.0, options.timeout / max(1, options.retries))


def s3_connection_options(options: BackendOptions) -> dict[str, Any]:
    """s3fs arguments for the endpoint, region, profile and anonymous options.

    The one meaning of ``endpoint_url`` and ``anon`` (S3 options, nothing to
    other protocols) for every command: a mount's backend, and scan and
    convert, which take these arguments without the backend's retry settings.
    """
    kwargs: dict[str, Any] = {}
    client_kwargs: dict[str, Any] = {}
    if options.endpoint_url:
        client_kwargs["endpoint_url"] = options.endpoint_url
    if options.region:
        client_kwargs["region_name"] = options.region
    if client_kwargs:
        kwargs["client_kwargs"] = client_kwargs
    if options.profile:
        kwargs["profile"] = options.profile
    if options.anon:
        kwargs["anon"] = True
    return kwargs


def with_storage_options(kwargs: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` overridden by a protocol's own storage options, ``client_kwargs`` merged key by key."""
    merged = {**kwargs, **extra}
    if "client_kwargs" in extra and "client_kwargs" in kwargs:
        merged["client_kwargs"] = {**kwargs["client_kwargs"], **extra["client_kwargs"]}
    return merged


def protocol_options(url: str, by_protocol: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The fsspec arguments for ``url`` out of options kept per protocol; a local path takes none."""
    return {} if is_local(url) else dict(by_protocol.get(protocol_of(url), {}))


def filesystem_options(protocol: str, options: BackendOptions, *, redirect_origin: str | None = None) -> dict[str, Any]:
    """fsspec constructor arguments for ``protocol``: the generic options plus ``-o proto.x=y``.

    HTTP redirects are checked against the URL policy hop by hop (:mod:`refmount.store.redirects`);
    ``redirect_origin`` also admits hops that stay on that origin (for the reference set itself).
    """
    kwargs: dict[str, Any] = {}
    if protocol == "s3":
        kwargs = s3_connection_options(options)
        # One attempt is one request: the retry loop of the backend owns the retries and the time
        # budget, and `gets` counts what the store sees (s3fs's own retries: see single_attempt).
        kwargs["config_kwargs"] = {
            "connect_timeout": min(10.0, options.timeout),
            "read_timeout": stall_timeout(options),
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "max_pool_connections": max(10, options.max_concurrency),
        }
    elif protocol in ("http", "https"):
        # A response that stops sending is cut after this much silence and retried;
        # a slow but moving one is not, however long it takes within ``timeout``.
        kwargs["client_kwargs"] = {
            "timeout": aiohttp.ClientTimeout(
                total=None, sock_connect=min(10.0, options.timeout), sock_read=stall_timeout(options)
            )
        }
    kwargs = with_storage_options(kwargs, options.storage_options.get(protocol, {}))
    if protocol in ("http", "https"):
        guarded_http_options(kwargs, options.policy, redirect_origin)
    kwargs["skip_instance_cache"] = True
    return kwargs


def single_attempt(fs: fsspec.AbstractFileSystem) -> None:
    """Switch off a filesystem's own retry loop (s3fs retries SlowDown and resets 5 times by itself).

    Retries nested under the backend's would multiply its attempts and
    backoff, hide requests from the ``gets`` figure, and leave the time bound
    to whichever layer gives up last.
    """
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "s3" in protocols and isinstance(getattr(fs, "retries", None), int):
        fs.retries = 1
