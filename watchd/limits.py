"""Shared limits and defaults: every number or address more than one module relies on, once."""

from __future__ import annotations

import ipaddress

from watchd.errors import WatchdError

MAX_EVENT_BYTES = 256 * 1024  # an encoded event envelope, at every edge and in the engine
MAX_HTTP_BODY_BYTES = 256 * 1024  # a request body on the HTTP listener
NATS_MAX_PAYLOAD = "1MB"  # the embedded server's max_payload: headroom above events for handoffs

HTTP_LISTEN = "127.0.0.1:8787"
NATS_LISTEN = "127.0.0.1:4222"

# Where a client reaches a server that listens on every interface.
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def split_listen(listen: str, *, setting: str = "listen") -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) as (host, port). A missing host means loopback, never every
    interface: exposing a listener must be written out."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 0 <= number <= 65535:
        raise WatchdError(
            f"bad {setting} {listen!r}: expected host:port with a port from 0 to 65535",
            hint='e.g. "127.0.0.1:8787"',
        )
    return host or "127.0.0.1", number


def client_host(host: str) -> str:
    """The address a local client connects to for a listener bound to `host`."""
    return _WILDCARD_TO_LOOPBACK.get(host, host)


def url_host(host: str) -> str:
    """A host as it appears in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
