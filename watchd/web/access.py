"""Who may see the dashboard and act from it.

On a loopback listener with no `[http] token`, the machine's own user is trusted for reading, as
for the rest of the listener. With a token, every page and action needs it: as a bearer header
(scripts) or as the session cookie the login form sets (browsers). Every form carries a CSRF
token bound to the session, checked on POST beside the listener's own Origin and Host checks."""

from __future__ import annotations

import hashlib
import hmac
import secrets

SESSION_COOKIE = "watchd_session"


class Access:
    def __init__(self, token: str | None, key: bytes | None = None) -> None:
        self.token = token
        # Sessions and CSRF tokens are signed with a key that lives as long as the process: a
        # restart signs everyone out, which is fine for a dashboard on one's own machine.
        self.key = key or secrets.token_bytes(32)

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self.key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def new_session(self) -> str:
        nonce = secrets.token_hex(16)
        return f"{nonce}.{self._sign('session', nonce)}"

    def session_valid(self, cookie: str | None) -> bool:
        if not cookie or "." not in cookie:
            return False
        nonce, _, mac = cookie.partition(".")
        return hmac.compare_digest(mac, self._sign("session", nonce))

    def allowed(self, authorization: str | None, cookie: str | None) -> bool:
        if self.token is None:
            return True
        if authorization and authorization.startswith("Bearer ") and self.token_matches(authorization[7:]):
            return True
        return self.session_valid(cookie)

    def csrf_for(self, cookie: str | None) -> str:
        return self._sign("csrf", cookie or "-")

    def csrf_valid(self, cookie: str | None, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given, self.csrf_for(cookie))
