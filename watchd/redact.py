"""Secret values taken out of a config file's text, for copies that leave watchd (backups).

A config normally holds only `env:`/`file:`/`cred:` references, which are not secrets and stay. A
literal value under a secret-looking key (token, secret, password, api_key, webhook_url, …_token)
or a password inside a URL is replaced by "<redacted>", keeping comments and layout so the copy
still reads as the user's file. The result is parsed again and checked: when it cannot be proven
clean, the caller gets None and leaves the config out.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from typing import Any

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


def redact_config(text: str) -> tuple[str | None, list[str]]:
    """The config with every literal secret replaced by "<redacted>", comments and layout kept, and
    the key paths that were redacted. `env:`/`file:`/`cred:` references stay: they are not secrets.
    None when the result cannot be proven free of them (it is then left out of the backup)."""
    try:
        found = dict(_literal_secrets(tomllib.loads(text), ()))
    except tomllib.TOMLDecodeError:
        return None, []

    def replace(m: re.Match[str]) -> str:
        # Only an assignment whose value the parsed config holds as a secret: text that merely looks
        # like one (inside another string) is left alone.
        if not _SECRET_KEY_RE.match(m["key"].lower()):
            return m[0]
        value = tomllib.loads("v = " + m["value"])["v"]
        return m["lead"] + f'"{REDACTED}"' if value in found.values() else m[0]

    out = _ASSIGNMENT_RE.sub(replace, text)
    # The same value elsewhere, e.g. in a comment (shorter ones would mangle the text); a URL with
    # user:password@ keeps its host.
    plain = [v for v in found.values() if len(v) >= 8 and redact_url(v) == v]
    for secret in plain:
        out = out.replace(secret, REDACTED)
    out = redact_url(out)
    try:
        again = tomllib.loads(out)
    except tomllib.TOMLDecodeError:
        return None, sorted(found)
    leaked = any(True for _ in _literal_secrets(again, ())) or any(s in out for s in plain)
    return (None if leaked else out), sorted(found)


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
