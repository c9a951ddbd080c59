"""Shared limits and defaults: every number or address more than one module relies on, once."""

from __future__ import annotations

import ipaddress
import resource

from watchd.errors import WatchdError

MAX_EVENT_BYTES = 256 * 1024  # an encoded event envelope, at every edge and in the engine
MAX_HTTP_BODY_BYTES = 256 * 1024  # a request body on the HTTP listener
NATS_MAX_PAYLOAD = "1MB"  # the embedded server's max_payload: headroom above events for handoffs
NATS_MAX_PAYLOAD_BYTES = 1024 * 1024  # the same: nats-server reads "MB" in its config as 1024²

# An event's subject travels in the NATS control line (`HPUB watchd.events.<subject> <reply> …`),
# which the server caps at 4 KiB and answers by closing the connection: the caps below keep every
# subject and id that an edge accepts far inside it.
MAX_SUBJECT_CHARS = 255  # an event subject, without the watchd.events. prefix
MAX_SUBJECT_TOKENS = 16  # dot-separated tokens in a subject
MAX_ID_CHARS = 128  # an event id: printable ASCII without spaces (it is also the Nats-Msg-Id header)
MAX_DATA_DEPTH = 64  # nesting of an event's data: the data object itself is level 1
# A count watch keeps the instant of every event inside its window, per key, and writes that list
# with each step: the count bounds what one event costs to store.
MAX_WATCH_COUNT = 10_000

# The HTTP listener: sockets are file descriptors, which the daemon shares with SQLite, NATS and
# its notifiers, so the listener may hold only a share of RLIMIT_NOFILE; slow clients are cut off.
HTTP_MAX_CONNECTIONS = 256  # default, lowered to a quarter of the open-file limit
HTTP_HEADER_TIMEOUT_S = 10.0  # a new connection must have sent its request headers by then
HTTP_KEEPALIVE_TIMEOUT_S = 15.0  # an idle kept-alive connection is closed after this
HTTP_BODY_TIMEOUT_S = 30.0  # a request body must have arrived by then

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


def default_max_connections() -> int:
    """The listener's default connection cap: HTTP_MAX_CONNECTIONS, or a quarter of the soft
    open-file limit when that is lower (a `ulimit -n 256` leaves the daemon 192 descriptors)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return HTTP_MAX_CONNECTIONS
    return max(1, min(HTTP_MAX_CONNECTIONS, soft // 4))
