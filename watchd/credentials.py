"""Who may do what on the embedded NATS: one user per role, its password and its permissions.

The embedded nats-server admits no anonymous client. On first start watchd makes a strong random
password for each role and keeps them in `<state_dir>/nats-credentials.json` (mode 0600); the
server's config (written on every start by bus.EmbeddedNats) names the same users with the
permissions below. The user name is the role, so a URL says whom it speaks for:
`nats://publish:<password>@127.0.0.1:4222`.

- admin: everything. The daemon, and the commands that act as it (`watchd canary`).
- publish: store events on `watchd.events.>`, nothing else: sources, `emit`, `exec`, outside tools.
- read: read the EVENTS and HANDOFFS streams (info, message get, ephemeral ordered consumers):
  `watchd test --since`, `nats stream info`.
- worker: consume `watchd.handoffs.>` with its own durables and answer on `watchd.replies.>`.

So only the daemon can store a handoff: a forged one never reaches a worker. No role but admin
can delete or redirect the daemon's consumers (the engine's `watchd-engine`, the replies'
`watchd-replies`), whose loss would stop it.

This module imports no NATS code: the CLI uses it to find a URL before it loads any.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import urllib.parse
from pathlib import Path
from typing import Any, Final, Literal, get_args

from watchd.config import Loaded, resolve_secret
from watchd.errors import WatchdError
from watchd.model import EVENTS_PREFIX, HANDOFFS_PREFIX, REPLIES_PREFIX

Role = Literal["admin", "publish", "read", "worker"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
FILE_NAME = "nats-credentials.json"
# The daemon's replies arrive on an inbox no other role may subscribe to (they may use `_INBOX.>`
# for their own requests): otherwise any client could listen in on every event the engine fetches.
ADMIN_INBOX = "_WATCHD_ADMIN_INBOX"

_DAEMON_CONSUMERS = ("EVENTS.watchd-engine", "HANDOFFS.watchd-replies")
_EVENTS, _HANDOFFS = "EVENTS", "HANDOFFS"
# What no role but admin may touch: the daemon's consumers, by every API subject that names them.
_PROTECTED = [
    f"$JS.API.CONSUMER.{action}.{consumer}{tail}"
    for consumer in _DAEMON_CONSUMERS
    for action in ("CREATE", "DURABLE.CREATE", "DELETE", "INFO", "MSG.NEXT")
    for tail in ("", ".>")
] + [f"$JS.ACK.{consumer}.>" for consumer in _DAEMON_CONSUMERS]

# NATS authorization `permissions` per role (admin has none: everything is allowed).
PERMISSIONS: Final[dict[Role, dict[str, Any]]] = {
    "publish": {
        # watchd.* events (job outcomes, schedules, canary) are watchd's own: only the daemon and
        # the commands that act for it (admin) publish them, so none can be forged to page or silence.
        "publish": {"allow": [EVENTS_PREFIX + ">"], "deny": [EVENTS_PREFIX + "watchd.>"]},
        "subscribe": {"allow": ["_INBOX.>"]},  # the JetStream publish ack comes back on an inbox
    },
    "read": {
        "publish": {
            "allow": [
                "$JS.API.INFO",
                "$JS.API.STREAM.NAMES",  # a JetStream subscribe finds the stream of a subject
                "$JS.API.STREAM.INFO.*",
                "$JS.API.STREAM.MSG.GET.*",
                "$JS.API.DIRECT.GET.*",
                "$JS.API.DIRECT.GET.*.>",
                # Consumers of EVENTS, named in the subject: the nameless CREATE.<stream> takes the
                # name from the request body, where no permission can see it (it could rewrite the
                # engine's consumer). HANDOFFS has none, so workers' durables stay theirs.
                f"$JS.API.CONSUMER.CREATE.{_EVENTS}.*",
                f"$JS.API.CONSUMER.CREATE.{_EVENTS}.*.>",
                f"$JS.API.CONSUMER.INFO.{_EVENTS}.*",
                f"$JS.API.CONSUMER.MSG.NEXT.{_EVENTS}.*",
            ],
            "deny": _PROTECTED,
        },
        "subscribe": {"allow": ["_INBOX.>"]},
        "allow_responses": True,  # a push consumer answers the server's flow-control requests
    },
    "worker": {
        "publish": {
            "allow": [
                REPLIES_PREFIX + ">",
                f"$JS.API.CONSUMER.CREATE.{_HANDOFFS}.*.{HANDOFFS_PREFIX}>",  # a durable of handoffs only
                f"$JS.API.CONSUMER.INFO.{_HANDOFFS}.*",
                f"$JS.API.CONSUMER.MSG.NEXT.{_HANDOFFS}.*",
                f"$JS.ACK.{_HANDOFFS}.>",  # ack, nak, in progress, term
                f"$JS.API.DIRECT.GET.{_HANDOFFS}.{REPLIES_PREFIX}>",  # the last reply to a handoff
            ],
            "deny": _PROTECTED,
        },
        "subscribe": {"allow": ["_INBOX.>"]},
    },
}


class Credentials:
    """Each role's password. Never printed whole: repr() shows the roles only."""

    def __init__(self, passwords: dict[Role, str]) -> None:
        self._passwords = passwords

    def __repr__(self) -> str:
        return f"Credentials({', '.join(self._passwords)})"

    def password(self, role: Role) -> str:
        return self._passwords[role]

    def url(self, base: str, role: Role) -> str:
        """`base` (nats://host:port) with this role's user and password in it."""
        return with_user(base, role, self._passwords[role])

    def server_config(self) -> str:
        """The nats-server `authorization` block: these users, each with its role's permissions."""
        users = []
        for role in ROLES:
            user: dict[str, Any] = {"user": role, "password": self._passwords[role]}
            if role in PERMISSIONS:
                user["permissions"] = PERMISSIONS[role]
            users.append(user)
        # NATS config reads JSON; without no_auth_user an anonymous client is refused.
        return "authorization {\n  users: " + json.dumps(users, indent=2).replace("\n", "\n  ") + "\n}"


def with_user(url: str, user: str, password: str) -> str:
    """The URL with `user:password@` in front of its host (replacing any it had)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    userinfo = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def credentials_path(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def _unreadable(path: Path, reason: str) -> WatchdError:
    return WatchdError(
        f"cannot read the NATS credentials in {path}: {reason}",
        hint="run this as the user that runs `watchd run`, or give a URL made by "
        '`watchd nats url --role ROLE` (as that user) in [nats] url = "env:WATCHD_NATS_URL"',
    )


def load(state_dir: Path) -> Credentials | None:
    """The stored credentials; None when there are none yet (watchd has not run with this state_dir)."""
    path = credentials_path(state_dir)
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _unreadable(path, exc.strerror or type(exc).__name__) from None
    except ValueError:
        raise _unreadable(path, "it is not JSON (delete it: watchd makes new ones on its next start)") from None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(r), str) and raw[r] for r in ROLES):
        raise _unreadable(path, "a role is missing (delete it: watchd makes new ones on its next start)")
    return Credentials({role: raw[role] for role in ROLES})


def load_or_create(state_dir: Path) -> Credentials:
    """The stored credentials, made on first use: 256 random bits per role, URL-safe, mode 0600.

    Made under a temporary name and linked into place, so two processes starting at once agree on
    one set and a reader never sees half a file."""
    found = load(state_dir)
    if found is not None:
        return found
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = credentials_path(state_dir)
    fresh = {role: secrets.token_urlsafe(32) for role in ROLES}
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(fresh, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process made them first: use those
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    found = load(state_dir)
    assert found is not None
    return found


def client_url(loaded: Loaded, role: Role) -> str | list[str]:
    """Where a client of this role connects, with its credentials.

    Embedded NATS: the listener's URL with the role's user and password from the state dir (without
    them when watchd has not made any yet: that server is not running, and connecting says so).
    An external NATS: the configured URL(s), each of which may be an `env:`/`file:`/`cred:`
    reference, so credentials in it need not be written into the config."""
    url = loaded.nats_url()
    if loaded.config.nats.url != "embedded":
        urls = [url] if isinstance(url, str) else url
        resolved = [resolve_secret(u) or "" for u in urls]
        return resolved[0] if isinstance(url, str) else resolved
    assert isinstance(url, str)
    creds = load(loaded.state_dir)
    return creds.url(url, role) if creds is not None else url


def resolve_url(value: str) -> str:
    """A `--nats` value: a URL, or an `env:`/`file:`/`cred:` reference to one."""
    return resolve_secret(value) or ""
