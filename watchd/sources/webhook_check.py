"""`validate` checks of a webhook source's settings, apart from the route itself so that loading the
config imports no HTTP machinery. The daemon runs them again before it builds a route."""

from __future__ import annotations

import re

from watchd.errors import EventRejected
from watchd.limits import NATS_MAX_PAYLOAD_BYTES, is_loopback
from watchd.model import check_subject, is_reserved
from watchd.sources.settings import WebhookSettings
from watchd.sources.template import TemplateError, compile_template

# Paths the listener answers itself (events, health, the answers API, the dashboard's pages): a
# webhook may not take them, and the paths under /hooks/ are always free.
_OWN_PREFIXES = ("/events/", "/ping/", "/api/", "/watches/", "/schedules/", "/runs/", "/actions/", "/static/")
_OWN_PATHS = frozenset(
    {"/", "/healthz", "/metrics", "/handoffs", "/maintenance", "/login", "/logout"}
    | {p.rstrip("/") for p in _OWN_PREFIXES}
)
_PATH_RE = re.compile(r"/[A-Za-z0-9._~/-]{0,200}")
_SIZE_RE = re.compile(r"\s*(\d+)\s*(B|KB|KiB|MB|MiB)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}


def parse_size(value: int | str) -> int:
    """Bytes from `262144`, `"256KiB"`, `"1MiB"`, `"500kB"`; ValueError otherwise."""
    if isinstance(value, int):
        return value
    m = _SIZE_RE.fullmatch(value)
    if m is None:
        raise ValueError(f'bad size {value!r}: a number of bytes, or with KiB, MiB, kB or MB, e.g. "1MiB"')
    return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]


def webhook_problems(name: str, settings: WebhookSettings, listen_host: str) -> list[tuple[str, str]]:
    """What is wrong with a webhook source's settings, as (key, message) pairs; [] when it can run.
    Run by `validate` (each at its line) and again when the daemon builds the route."""
    problems: list[tuple[str, str]] = []
    path = settings.path
    if not _PATH_RE.fullmatch(path):
        problems.append(("path", f"bad path {path!r}: it starts with / and uses letters, digits and . _ ~ - /"))
    elif path in _OWN_PATHS or path.startswith(_OWN_PREFIXES):
        problems.append(("path", f"path {path!r} is the listener's own: use one of yours, e.g. /hooks/{name}"))
    for key in ("subject", "id"):
        text = getattr(settings, key)
        if text is None:
            continue
        try:
            template = compile_template(text)
        except TemplateError as exc:
            problems.append((key, str(exc)))
            continue
        sample = template.sample()
        if key == "subject":
            try:
                check_subject(sample)
            except EventRejected as exc:
                problems.append((key, f"subject template {text!r} cannot make a subject: {exc.message}"))
            if is_reserved(sample):
                problems.append((key, f"subject {text!r} is under watchd., which is watchd's own: pick another"))
    if settings.verify == "none":
        if not is_loopback(listen_host):
            problems.append(
                (
                    "verify",
                    f'verify = "none" on a listener that is not loopback ({listen_host}) would take events from '
                    "anyone: use github, slack, hmac-sha256 or token with a secret",
                )
            )
    elif not settings.secret:
        problems.append(("secret", f'verify = "{settings.verify}" needs a secret, e.g. secret = "env:WEBHOOK_SECRET"'))
    if settings.verify != "slack":
        for key in ("senders", "channels"):
            if getattr(settings, key):
                problems.append((key, f'`{key}` (who may press watchd\'s buttons) is for verify = "slack" only'))
    if settings.verify != "hmac-sha256":
        for key in ("header", "prefix"):
            if getattr(settings, key) is not None:
                problems.append((key, f'`{key}` is for verify = "hmac-sha256" only'))
    elif settings.header is not None and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", settings.header):
        problems.append(("header", f"{settings.header!r} is not a header name"))
    if settings.max_body is not None:
        try:
            size = parse_size(settings.max_body)
        except ValueError as exc:
            problems.append(("max_body", str(exc)))
        else:
            if not 1 <= size <= NATS_MAX_PAYLOAD_BYTES:
                problems.append(("max_body", f"max_body must be from 1 byte to {NATS_MAX_PAYLOAD_BYTES} (1MiB)"))
    return problems
