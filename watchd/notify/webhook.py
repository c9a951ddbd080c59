"""Webhook: POST the handoff JSON to a URL, signed like GitHub's `X-Hub-Signature-256`.

The receiver gets the handoff exactly as SPEC §4 shapes it, with `message` always set (the
watch's message, else the default text other notifiers send), `X-Watchd-Handoff-Id` as its dedup
key (a retry repeats it), and with a secret `X-Watchd-Signature-256: sha256=<hex HMAC-SHA256 of
the raw body>`, which it should check with a constant-time compare before parsing the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import socket
import ssl
import urllib.request
from collections.abc import Sequence

import msgspec
from yarl import URL

from watchd.config import WebhookNotifier as WebhookConfig
from watchd.dispatch import Delivered, Outcome
from watchd.errors import WatchdError
from watchd.model import Handoff
from watchd.notify import http_client
from watchd.notify.http_client import DEFAULT_TIMEOUT_S, HttpClient, Response
from watchd.notify.render import render

log = logging.getLogger("watchd.notify.webhook")

SERVICE = "the webhook receiver"
ID_HEADER = "X-Watchd-Handoff-Id"
ATTEMPT_HEADER = "X-Watchd-Attempt"


def sign(secret: str, body: bytes) -> str:
    """`sha256=<hex>`: the HMAC-SHA256 of the exact bytes sent, as GitHub signs its webhooks."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def reachable(
    name: str, url: str, service: str, secrets: Sequence[str | None], timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[bool, str]:
    """Whether the URL's host resolves and accepts a connection (with a valid TLS certificate for
    https), without sending a request. Behind a proxy the host is not checked: only the proxy would
    reach it. Details name the host only: the URL may hold credentials."""
    u = URL(url)
    host, port = u.host or "", u.port or (443 if u.scheme == "https" else 80)
    if urllib.request.getproxies().get(u.scheme) and not urllib.request.proxy_bypass(host):
        return True, f"{name}: {service} at {host} is configured (requests go through a proxy: not checked)"
    tls = ssl.create_default_context() if u.scheme == "https" else None
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=tls), timeout_s)
    except TimeoutError:
        why = "connect timed out"
    except ssl.SSLCertVerificationError:
        why = "TLS certificate verification failed"
    except ssl.SSLError:
        why = "TLS handshake failed"
    except ConnectionRefusedError:
        why = "connection refused"
    except socket.gaierror:
        why = "name lookup failed"
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    else:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return True, f"{name}: {service} at {host} accepts connections"
    return False, http_client.scrub(f"{name}: cannot connect to {service} at {host}: {why}", secrets)


def verify(secret: str, body: bytes, signature: str | None) -> bool:
    """For receivers (and tests): does `signature` match the body, compared in constant time?"""
    return signature is not None and hmac.compare_digest(sign(secret, body), signature)


class WebhookNotifier:
    """One POST per handoff. `name` is the target name (`notify.hook`) used in every detail.

    The URL may carry credentials of its own (a token in the query, user:password@), so it is
    scrubbed like a secret too; only its host is ever shown.
    """

    def __init__(
        self,
        cfg: WebhookConfig,
        *,
        http: HttpClient,
        name: str = "notify.webhook",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.http = http  # the daemon's client session: shared, closed by its owner
        self.name = name
        self.timeout_s = timeout_s
        self.header = cfg.header
        self._url = http_client.resolve(name, cfg.url, "url") or ""
        if not self._url:
            raise WatchdError(f"{name}: the webhook url is empty", hint="set url to the receiver's https:// URL")
        http_client.check_http_url(name, self._url, "url", secret=True)
        self._secret_ref = http_client.secret_ref(cfg.secret, "secret")
        self._secret = http_client.resolve(name, cfg.secret, "secret")
        if cfg.secret is not None and not self._secret:
            raise WatchdError(f"{name}: the webhook signing secret is empty", hint=f"set {self._secret_ref}")
        if not self.header.strip() or any(c in self.header for c in ":\r\n "):
            raise WatchdError(f"{name}: header {self.header!r} is not a valid HTTP header name")
        self._secrets = [*http_client.url_secrets(self._url), self._secret]

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.name!r}, signed={self._secret is not None})"

    async def deliver(self, handoff: Handoff) -> Outcome:
        # `message` is what a person reads: the watch's template, else the text other notifiers send.
        body = msgspec.json.encode(msgspec.structs.replace(handoff, message=render(handoff)))
        headers = {"Content-Type": "application/json", ID_HEADER: handoff.id, ATTEMPT_HEADER: str(handoff.attempt)}
        if self._secret:
            headers[self.header] = sign(self._secret, body)
        resp = await self.http.send(
            "POST",
            self._url,
            name=self.name,
            service=SERVICE,
            secrets=self._secrets,
            timeout_s=self.timeout_s,
            data=body,
            headers=headers,
        )
        outcome = resp if not isinstance(resp, Response) else self._classify(resp)
        if not isinstance(outcome, Delivered):
            log.info("%s: %s", self.name, outcome.detail)
        return outcome

    async def probe(self) -> tuple[bool, str]:
        """A connect check, no request: any request to a receiver could be taken for a delivery."""
        ok, detail = await reachable(self.name, self._url, SERVICE, self._secrets, self.timeout_s)
        return ok, f"{detail} ({'signed' if self._secret else 'unsigned'})" if ok else detail

    def _classify(self, resp: Response) -> Outcome:
        reason = "" if 200 <= resp.status < 300 else resp.text_excerpt(self._secrets, 120)
        hints = {
            401: f"check the receiver's expected signature and {self._secret_ref}",
            403: f"check the receiver's expected signature and {self._secret_ref}",
            404: "check url",
            0: "check url and what the receiver expects",
        }
        outcome = http_client.classify(
            resp, name=self.name, service=SERVICE, hints=hints, secrets=self._secrets, reason=reason
        )
        if isinstance(outcome, Delivered):
            return Delivered(f"webhook receiver answered {resp.status}")
        return outcome
