"""Secret values taken out of a config file's text, for copies that leave watchd (backups).

A config normally holds only `env:`/`file:`/`cred:` references, which are not secrets and stay. A
literal value under a secret-looking key (token, secret, password, api_key, webhook_url, …_token)
or a password inside a URL is replaced by "<redacted>", keeping comments and layout so the copy
still reads as the user's file. The result is parsed again and checked: when it cannot be proven
clean, the caller gets None and leaves the config out.
"""

from __future__ import annotations

import base64
import re
import tomllib
from collections.abc import Collection, Iterable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

REDACTED = "<redacted>"
_SECRET_KEY_RE = re.compile(r"^(token|secret|password|passwd|api_?key|webhook_url|.+_(token|secret|password|api_key))$")
_REFERENCE_RE = re.compile(r"^(env|file|cred):")
_ASSIGNMENT_RE = re.compile(
    r"(?P<lead>(?:^|[{,])[ \t]*(?:[A-Za-z0-9_-]+[ \t]*\.[ \t]*)*(?P<key>[A-Za-z0-9_-]+)[ \t]*=[ \t]*)"
    r"(?P<value>\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*')",
    re.MULTILINE,
)


_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^@/\s]+@", re.IGNORECASE)


def redact_url(text: str) -> str:
    """Text with the user:password of every URL in it replaced by ***, safe to show and log."""
    return _USERINFO.sub(r"\1***@", text)


def secret_forms(secret: str) -> list[str]:
    """`secret` as it may appear in text watchd produces or passes on, longest first: as is,
    URL-encoded (path and form styles), base64 (standard and URL-safe, padded or not) and hex.
    A secret that only ever leaves in one of these forms must still be found by value."""
    raw = secret.encode()
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), raw.hex(), raw.hex().upper()}
    for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        forms |= {encoded, encoded.rstrip("=")}
    return sorted((f for f in forms if f), key=len, reverse=True)


def url_credentials(url: str) -> list[str]:
    """What a URL's `user:password@` puts on the wire: each part as written and decoded, and the
    `user:password` pair that HTTP Basic authentication sends base64-encoded (so its encodings,
    from `secret_forms`, are the Authorization header a receiver may echo back)."""
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return []
    found = [p for p in (user, password) if p]
    found += [unquote(p) for p in found]
    if user is not None and password is not None:
        found.append(f"{unquote(user)}:{unquote(password)}")
    return list(dict.fromkeys(found))


def scrub_values(text: str, secrets: Iterable[str | None], replacement: str = "***", min_len: int = 4) -> str:
    """`text` with every secret, in every form of `secret_forms`, replaced. Very short strings are
    skipped: replacing a one-letter "secret" everywhere would garble the text and hide nothing."""
    forms = {f for secret in secrets if secret and len(secret) >= min_len for f in secret_forms(secret)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, replacement)
    return text


def redact_url_parts(url: str) -> str:
    """A secret-bearing URL as a backup may keep it: scheme and host, the credentials, path and
    query replaced (a webhook URL's path or `?token=` is the credential)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return REDACTED
    if not parts.scheme or not host:
        return REDACTED
    netloc = ("***@" if parts.username or parts.password else "") + (f"[{host}]" if ":" in host else host) + port
    clean = not parts.query and not parts.fragment and parts.path in ("", "/")
    return urlunsplit((parts.scheme, netloc, parts.path if clean else "/" + REDACTED, "", ""))


def redact_config(text: str, secret_paths: Collection[str] = ()) -> tuple[str | None, list[str]]:
    """The config with every literal secret replaced by "<redacted>", comments and layout kept, and
    the key paths that were redacted. `env:`/`file:`/`cred:` references stay: they are not secrets.

    Secrets are found by key name (token, secret, …), as a URL's user:password, and at
    `secret_paths`: the dotted key paths of the config's secret settings (config.secret_settings),
    whatever their key is called. A secret URL there (a webhook's url, a ping_url) keeps its scheme
    and host; its path and query, which are the credential, are redacted.
    None when the result cannot be proven free of them (it is then left out of the backup)."""
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None, []
    found = dict(_literal_secrets(parsed, ()))
    listed = dict(_listed_secrets(parsed, secret_paths))
    urls = {path: v for path, v in listed.items() if "://" in v}
    others = {v for path, v in listed.items() if path not in urls}
    found |= {path: v for path, v in listed.items() if path not in urls}
    # Whole URLs first, wherever they stand (a list, a comment): their host stays readable.
    for url in sorted(set(urls.values()), key=len, reverse=True):
        text = text.replace(url, redact_url_parts(url))

    def replace(m: re.Match[str]) -> str:
        # Only an assignment whose value the parsed config holds as a secret: text that merely looks
        # like one (inside another string) is left alone.
        value = tomllib.loads("v = " + m["value"])["v"]
        if value in others or (_SECRET_KEY_RE.match(m["key"].lower()) and value in found.values()):
            return m["lead"] + f'"{REDACTED}"'
        return m[0]

    out = _ASSIGNMENT_RE.sub(replace, text)
    # The same value elsewhere, e.g. in a comment (shorter ones would mangle the text); a URL with
    # user:password@ keeps its host.
    plain = [v for v in found.values() if len(v) >= 8 and redact_url(v) == v]
    for secret in plain:
        out = out.replace(secret, REDACTED)
    out = redact_url(out)
    paths = sorted({*found, *urls})
    try:
        again = tomllib.loads(out)
    except tomllib.TOMLDecodeError:
        return None, paths
    leaked = (
        any(True for _ in _literal_secrets(again, ()))
        or any(True for _ in _listed_secrets(again, secret_paths))  # e.g. written with escapes the search missed
        or any(s in out for s in plain)
    )
    return (None if leaked else out), paths


def _listed_secrets(parsed: dict[str, Any], paths: Collection[str]) -> Iterator[tuple[str, str]]:
    """The literal values at `paths` (a list's items each) still holding a secret: not a reference,
    not "<redacted>", not a URL of scheme and host only."""
    for dotted in paths:
        node: Any = parsed
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values = node if isinstance(node, list) else [node]
        for i, value in enumerate(values):
            if not isinstance(value, str) or not value or value == REDACTED or _REFERENCE_RE.match(value):
                continue
            if "://" in value and redact_url_parts(value) == value:
                continue  # nothing but a scheme and a host
            yield (dotted if len(values) == 1 else f"{dotted}.{i}"), value


def _literal_secrets(node: Any, path: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            here = (*path, key)
            if isinstance(value, str):
                is_secret = _SECRET_KEY_RE.match(key.lower()) and not _REFERENCE_RE.match(value)
                if (is_secret and value != REDACTED) or redact_url(value) != value:
                    yield ".".join(here), value
            else:
                yield from _literal_secrets(value, here)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, str) and redact_url(item) != item:
                yield ".".join((*path, str(i))), item
            else:
                yield from _literal_secrets(item, (*path, str(i)))
