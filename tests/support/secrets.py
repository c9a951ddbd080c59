"""Finding configured secrets in what watchd wrote, in every encoding, for the whole suite.

`configured_secrets` reads a config's secret settings (config.secret_settings) and resolves them
as the daemon does; `leaks` searches text or bytes for each as is, URL-encoded, base64 (standard
and URL-safe, padded or not) and hex — encodings written out here, not taken from watchd's own
redaction code, so a gap there cannot hide itself. Every daemon of the suite is checked this way
at its cleanup (support/inprocess.py, support/processes.py): its log and console hold none.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote, urlsplit

from watchd import config
from watchd.errors import WatchdError

MIN_LEN = 8  # shorter values would be found by accident in any text


def encodings(secret: str) -> dict[str, str]:
    raw = secret.encode()
    forms = {
        "plain": secret,
        "url-encoded": quote(secret, safe=""),
        "url-encoded (path)": quote(secret),
        "form-encoded": quote_plus(secret),
        "hex": binascii.hexlify(raw).decode(),
        "HEX": binascii.hexlify(raw).decode().upper(),
    }
    for name, encoded in (("base64", base64.b64encode(raw)), ("base64url", base64.urlsafe_b64encode(raw))):
        forms[name] = encoded.decode()
        forms[f"{name} unpadded"] = encoded.decode().rstrip("=")
    return forms


def leaks(where: str, data: bytes | str, secrets: list[str]) -> list[str]:
    blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return [
        f"{where}: {secret!r} as {name}"
        for secret in secrets
        for name, form in encodings(secret).items()
        if form.encode() in blob
    ]


def _parts(value: str, *, path_shown: bool = False) -> list[str]:
    """A secret value, and for a URL the credentials in it (as HTTP Basic sends them).

    path_shown: a URL whose scheme, host and path watchd may show (a NATS server's, a poll source's:
    README), so only its credentials and query are secret, and the whole URL when it has them."""
    if "://" not in value:
        return [value]
    try:
        u = urlsplit(value)
    except ValueError:
        return [value]
    out = [] if path_shown and not (u.query or u.password) else [value]
    if u.password:
        out += [unquote(u.password), f"{unquote(u.username or '')}:{unquote(u.password)}"]
    if u.query:
        out.append(u.query)
    return out


def configured_secrets(config_path: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """The values of a config's secret settings, resolved (`env:` from `env` when given: a daemon
    process's environment); [] for a config that does not load."""
    try:
        loaded = config.load(config_path, watches=False)
    except WatchdError:
        return []
    found: list[str] = []
    for setting, raw in config.secret_settings(loaded.config):
        scheme, _, name = raw.partition(":")
        try:
            value = env.get(name) if env is not None and scheme == "env" else config.resolve_secret(raw)
        except WatchdError:
            continue
        if value and value != "embedded":
            # Shown without credentials (and query) by design: NATS server URLs, a poll source's URL.
            path_shown = setting[:2] == ("nats", "url") or (setting[0] == "source" and setting[-1] == "url")
            found += [p for p in _parts(value, path_shown=path_shown) if len(p) >= MIN_LEN]
    return sorted(set(found))
