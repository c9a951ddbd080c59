"""What the HTTP notifiers share: a client session owned by the daemon (`HttpClient`), a request
that never raises, and the classification of a response or a transport failure into an Outcome.

Secrets ride in URLs here (Telegram puts the bot token in the path; a Slack incoming-webhook URL is
itself the credential), and aiohttp puts the URL into many of its exception messages. So nothing
in this module ever formats an exception's text or a URL into a detail: every message is built
from the exception's type, the host, the status and a few known-safe response fields, and then
scrubbed of the notifier's secrets once more for good measure.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from multidict import CIMultiDict
from yarl import URL

from watchd.dispatch import Dead, Delivered, Outcome, Retry
from watchd.errors import WatchdError
from watchd.model import Handoff
from watchd.redact import scrub_values, url_credentials

log = logging.getLogger("watchd.notify")

DEFAULT_TIMEOUT_S = 10.0
MAX_RESPONSE_BYTES = 1024 * 1024
MAX_RETRY_AFTER_S = 600.0  # a server may ask for an hour; the dispatcher caps too, we cap first
USER_AGENT = "watchd/0.1 (+https://github.com/watchd)"
REDACTED = "***"


class HttpClient:
    """The HTTP client session the notifiers and the heartbeat share, and the request they make
    through it (`send`). Owned by whoever builds them (the daemon, `watchd canary`), which closes
    it; there is no process-wide session, so two daemons in one process (tests) keep their
    connections apart and a stopped daemon leaves none open.

    The session is made at the first request, on the loop that runs it: the owner may be built
    before its event loop runs.
    """

    def __init__(self, *, user_agent: str = USER_AGENT) -> None:
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._session is not None else "unused"
        return f"HttpClient({state})"

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def session(self) -> aiohttp.ClientSession:
        """The session, made on first use. A closed client refuses: a request after the owner
        closed it (a delivery that outlived the daemon's stop) must not open a session nobody closes."""
        if self._closed:
            raise ClientClosed("the HTTP client is closed: watchd is stopping")
        if self._session is None:
            # trust_env: honour HTTPS_PROXY / NO_PROXY like curl does, for hosts behind a proxy.
            self._session = aiohttp.ClientSession(headers={"User-Agent": self.user_agent}, trust_env=True)
        return self._session

    async def close(self) -> None:
        """Close the session and its connections; later requests fail with a retry."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def send(
        self,
        method: str,
        url: str,
        *,
        name: str,
        service: str,
        secrets: Iterable[str | None],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response | Retry | Dead:
        """One HTTP request that never raises: a Response, or the Outcome of a transport failure.

        Redirects are not followed: a notifier endpoint that moved is a config problem, and following
        one would send the signature (or a bearer token) to wherever it points.
        """
        secrets = list(secrets)
        if self._closed:
            return Retry(f"{name}: not sent to {service}: watchd is stopping")
        try:
            result = await self._send(
                method,
                url,
                name=name,
                service=service,
                secrets=secrets,
                timeout_s=timeout_s,
                json=json,
                data=data,
                headers=headers,
            )
        except Exception as exc:  # a last resort: the type only, since an exception's text may hold the URL
            log.warning("%s: unexpected %s while calling %s", name, type(exc).__name__, service)
            return Retry(f"{name}: {service} request failed unexpectedly ({type(exc).__name__})")
        if isinstance(result, Response):
            return result
        return dataclasses.replace(result, detail=scrub(result.detail, secrets))  # belt and braces

    async def _send(
        self,
        method: str,
        url: str,
        *,
        name: str,
        service: str,
        secrets: list[str | None],
        timeout_s: float,
        json: Any,
        data: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> Response | Retry | Dead:
        host = host_of(url)
        body = data if json is None else msgspec.json.encode(json)
        hdrs = dict(headers or {})
        if json is not None:
            hdrs.setdefault("Content-Type", "application/json; charset=utf-8")
        try:
            async with self.session().request(
                method,
                url,
                data=body,
                headers=hdrs,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                raw = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    raw += chunk
                    if len(raw) > MAX_RESPONSE_BYTES:  # an error page is never this big; stop reading
                        break
                status = resp.status
                resp_headers = CIMultiDict(resp.headers)  # keeps header lookups case-insensitive
        except ClientClosed:
            return Retry(f"{name}: not sent to {service}: watchd is stopping")
        except TimeoutError:  # aiohttp's ServerTimeoutError and friends are TimeoutErrors too
            return Retry(f"{name}: {service} did not answer within {timeout_s:g}s (timeout)")
        except aiohttp.InvalidURL:
            return Dead(f"{name}: the {service} URL is invalid: check the notifier's configuration")
        except aiohttp.ClientConnectorError as exc:
            return Retry(scrub(f"{name}: cannot connect to {service} at {host}: {_connect_failure(exc)}", secrets))
        except aiohttp.ClientError as exc:
            return Retry(f"{name}: {service} request failed ({type(exc).__name__})")
        except OSError as exc:
            return Retry(scrub(f"{name}: {service} request failed ({type(exc).__name__}: {exc.strerror})", secrets))
        except ValueError as exc:  # e.g. a header value aiohttp refuses: a config problem, never transient
            return Dead(
                f"{name}: the {service} request could not be built ({type(exc).__name__}): check the configuration"
            )
        data_obj: Any = None
        if bytes(raw.lstrip()[:1]) in (b"{", b"["):
            try:
                data_obj = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                data_obj = None
        return Response(status, resp_headers, bytes(raw), data_obj)


class ClientClosed(RuntimeError):
    """A request on an HttpClient its owner has closed."""


# ---- secrets ---------------------------------------------------------------------------------------------


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every secret in text, in every encoding watchd or a server may put it in (URL-encoded,
    base64 as in a Basic Authorization header, hex: see redact.secret_forms)."""
    return scrub_values(text, secrets, REDACTED)


def url_secrets(url: str) -> list[str]:
    """The parts of a secret URL that a server or proxy might echo back: the whole URL, its path
    and query, and its userinfo."""
    parts = [url]
    try:
        u = URL(url)
    except (ValueError, TypeError):
        return parts
    if u.path and u.path != "/":
        parts.append(u.raw_path_qs)
        parts.append(u.path_qs)
    return parts + url_credentials(url)  # user, password, and the user:password of Basic auth


def secret_ref(raw: str | None, key: str) -> str:
    """How to point a user at a secret without showing it: `token / WATCHD_TELEGRAM_TOKEN` for
    `env:`, `token / file:/path` or `cred:NAME` for the others, bare `token` for an inline value."""
    if raw:
        scheme, _, rest = raw.partition(":")
        if scheme == "env" and rest:
            return f"{key} / {rest}"
        if scheme in ("file", "cred") and rest:
            return f"{key} / {raw}"
    return key


def resolve(name: str, value: str | None, key: str) -> str | None:
    """resolve_secret, with the notifier's name and key in the error."""
    from watchd.config import resolve_secret  # config imports a lot; only needed at construction

    try:
        return resolve_secret(value)
    except WatchdError as exc:
        raise WatchdError(f"{name}: {key}: {exc.message}", hint=exc.hint) from None


def check_http_url(name: str, url: str, key: str, *, secret: bool = False) -> None:
    """A config check at construction: an absolute http(s) URL with a host. The URL is shown only
    when it is not a secret."""
    shown = "" if secret else f" {url!r}"
    try:
        u = URL(url)
    except (ValueError, TypeError):
        raise WatchdError(f"{name}: {key}{shown} is not a URL", hint=f"set {key} to an https:// URL") from None
    if u.scheme not in ("http", "https") or not u.host:
        raise WatchdError(f"{name}: {key}{shown} is not an http(s) URL", hint=f"set {key} to an https:// URL")


# ---- responses and classification ------------------------------------------------------------------------


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """Retry-After as delay-seconds or an HTTP-date (RFC 9110 §10.2.3), capped at 10 minutes."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT
            return None
        seconds = when.timestamp() - (time.time() if now_s is None else now_s)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    data: Any = field(default=None)  # the decoded JSON body, or None when it is not JSON

    @property
    def retry_after_s(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))

    def text_excerpt(self, secrets: Iterable[str | None], limit: int = 200) -> str:
        """A short, single-line, scrubbed excerpt of a text body (for a receiver's error message)."""
        text = self.body[: limit * 4].decode("utf-8", "replace")
        text = " ".join(text.split())
        if len(text) > limit:
            text = text[:limit] + "…"
        return scrub(text, secrets)


def classify(
    resp: Response,
    *,
    name: str,
    service: str,
    hints: Mapping[int, str],
    secrets: Iterable[str | None],
    reason: str = "",
    retry_after_s: float | None = None,
) -> Outcome:
    """Classify by status: 2xx delivered; 408/425/429/5xx retry (Retry-After honoured, capped);
    3xx and every other 4xx dead, with what to fix. `reason` is a safe excerpt from the server;
    `hints` maps a status to what the user should check (with 0 as the fallback for 4xx)."""
    status = resp.status
    why = f" ({status}{': ' + reason if reason else ''})"
    if retry_after_s is None:
        retry_after_s = resp.retry_after_s
    if 200 <= status < 300:
        return Delivered(f"{service} accepted it (HTTP {status})")
    if status == 429:
        detail = f"{name}: {service} is rate-limiting{why}"
        if retry_after_s is not None:
            detail += f"; retry after {retry_after_s:g}s"
        return Retry(scrub(detail, secrets), retry_after_s)
    if status in (408, 425) or status >= 500:
        return Retry(scrub(f"{name}: {service} failed{why}", secrets), retry_after_s)
    if 300 <= status < 400:
        return Dead(scrub(f"{name}: {service} redirected the request{why}: check the URL", secrets))
    generic = {
        400: "rejected the request",
        401: "rejected the credentials",
        403: "refused the request",
        404: "does not know this endpoint",
    }
    what = generic.get(status, "rejected the request")
    hint = hints.get(status) or hints.get(0, "")
    detail = f"{name}: {service} {what}{why}" + (f": {hint}" if hint else "")
    return Dead(scrub(detail, secrets))


def _connect_failure(exc: aiohttp.ClientConnectorError) -> str:
    """Why a connection failed, in words, from the exception's type and errno (never its text)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS certificate verification failed"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    err = exc.os_error
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, socket.gaierror):
        return "name lookup failed"
    if isinstance(err, TimeoutError):
        return "connect timed out"
    return os.strerror(err.errno) if err.errno else type(err).__name__


def first_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "…"


def host_of(url: str) -> str:
    try:
        return URL(url).host or "?"
    except (ValueError, TypeError):
        return "?"


# ---- a target that cannot be built -----------------------------------------------------------------------


class Misconfigured:
    """Stands in for a notifier whose configuration is unusable (an unset secret, a missing key), so
    the daemon still starts and its handoffs dead-letter at once with the reason."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def __repr__(self) -> str:
        return f"Misconfigured({self.name!r})"

    async def deliver(self, handoff: Handoff) -> Outcome:
        return Dead(self.reason)

    async def probe(self) -> tuple[bool, str]:
        return False, self.reason
