"""The way to the running daemon over its HTTP listener, with the standard library alone: the
quickest path for a command line that starts, asks one thing and exits."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from http import HTTPStatus
from typing import Any

import msgspec

from watchd.config import Loaded, resolve_secret
from watchd.errors import DaemonNotRunning, EventRejected, NatsUnavailable
from watchd.limits import client_host, split_listen, url_host
from watchd.model import Event


def daemon_url(loaded: Loaded, path: str) -> str:
    host, port = split_listen(loaded.config.http.listen, setting="[http] listen")
    return f"http://{url_host(client_host(host))}:{port}{path}"


def http_get(loaded: Loaded, path: str, timeout_s: float = 3) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(daemon_url(loaded, path), timeout=timeout_s) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result
    except urllib.error.HTTPError as exc:
        result = json.loads(exc.read() or b"{}")
        return result
    except (OSError, ValueError) as exc:
        raise DaemonNotRunning(
            f"no watchd answering on {loaded.config.http.listen} ({getattr(exc, 'reason', exc)})",
            hint="start it with `watchd run`, or check [http] listen",
        ) from None


def post_event(loaded: Loaded, event: Event, timeout_s: float = 3) -> dict[str, Any] | None:
    """Hand one event to the running daemon's /events; None when no daemon answers there, so the
    caller publishes to NATS itself. The event's id goes along as Idempotency-Key: a retry over
    NATS after a lost answer is still stored once."""
    query = urllib.parse.urlencode({"source": event.source}) if event.source else ""
    path = f"/events/{urllib.parse.quote(event.subject, safe='')}" + (f"?{query}" if query else "")
    try:
        status, answer = post_json(loaded, path, event.data, timeout_s, {"Idempotency-Key": event.id})
    except DaemonNotRunning:
        return None
    if status < 400:
        return answer
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = f"HTTP {status}"
    message = str(answer.get("error") or phrase)
    if status == 503:
        raise NatsUnavailable(f"watchd could not store the event: {message}")
    if status in (401, 403, 421):  # not ours to pass (a token, a proxy): NATS may still take it
        return None
    raise EventRejected(message)


def post_json(
    loaded: Loaded, path: str, body: dict[str, Any], timeout_s: float = 15, extra: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST a JSON body to the running daemon (with [http] token as bearer when one is set, and any
    `extra` headers): (status, the JSON answer). DaemonNotRunning when nothing answers."""
    headers = {"Content-Type": "application/json", **(extra or {})}
    token = resolve_secret(loaded.config.http.token)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        daemon_url(loaded, path), data=msgspec.json.encode(body), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read() or b"{}")
        except ValueError:
            answer = {}
        return exc.code, answer if isinstance(answer, dict) else {}
    except (OSError, ValueError) as exc:
        raise DaemonNotRunning(
            f"no watchd answering on {loaded.config.http.listen} ({getattr(exc, 'reason', exc)})",
            hint="answers are applied by the running daemon: start it with `watchd run`, or check [http] listen",
        ) from None
