"""Who sent a webhook: the signature and token checks of SPEC section 8.

- `github`: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, raw body)>` (GitHub's "Validating
  webhook deliveries").
- `slack`: `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:<timestamp>:<raw body>")>` with
  `X-Slack-Request-Timestamp` at most five minutes from now, as Slack's "Verifying requests from
  Slack" asks, so a captured request cannot be replayed later.
- `hmac-sha256`: the same HMAC as GitHub's, in a configurable header behind a configurable prefix.
- `token`: `Authorization: Bearer <secret>` or `?token=<secret>`.

Every comparison is constant-time (hmac.compare_digest). A failure is a `RequestRefused` (401) with a short
reason word for counting and a message that names the header but never a header's value or the
secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from watchd.errors import RequestRefused

Scheme = Literal["github", "slack", "hmac-sha256", "token", "none"]

SLACK_TOLERANCE_S = 300.0  # Slack: "more than five minutes from local time … could be a replay attack"
GITHUB_HEADER = "X-Hub-Signature-256"
SLACK_SIGNATURE = "X-Slack-Signature"
SLACK_TIMESTAMP = "X-Slack-Request-Timestamp"
HMAC_HEADER = "X-Signature"
HMAC_PREFIX = "sha256="


def hmac_hex(secret: bytes, message: bytes) -> str:
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _raw(value: str) -> bytes:
    """A header value as the bytes that were sent (aiohttp keeps non-UTF-8 bytes as surrogate escapes)."""
    return value.encode("utf-8", "surrogateescape")


def _signed(header: str, given: str | None, expected: str, fix: str) -> None:
    if given is None:
        raise RequestRefused(401, "signature", f"the request has no {header} header: {fix}")
    if not hmac.compare_digest(_raw(given), expected.encode()):
        raise RequestRefused(401, "signature", f"{header} does not match the body: {fix}")


@dataclass(frozen=True, slots=True)
class Verifier:
    """One webhook's check, built once from its settings (the secret already resolved)."""

    scheme: Scheme
    secret: bytes = b""
    header: str = HMAC_HEADER  # hmac-sha256 only
    prefix: str = HMAC_PREFIX  # hmac-sha256 only
    tolerance_s: float = SLACK_TOLERANCE_S

    def check(self, headers: Mapping[str, str], query: Mapping[str, str], body: bytes, now_s: float) -> None:
        """Raise RequestRefused unless the request proves it comes from the secret's holder."""
        if self.scheme == "github":
            fix = "the webhook's secret in GitHub and in watchd must be the same"
            _signed(GITHUB_HEADER, headers.get(GITHUB_HEADER), "sha256=" + hmac_hex(self.secret, body), fix)
        elif self.scheme == "slack":
            self._check_slack(headers, body, now_s)
        elif self.scheme == "hmac-sha256":
            fix = f"the sender must sign the raw body with the shared secret as {self.prefix}<hex HMAC-SHA256>"
            _signed(self.header, headers.get(self.header), self.prefix + hmac_hex(self.secret, body), fix)
        elif self.scheme == "token":
            self._check_token(headers, query)

    def _check_slack(self, headers: Mapping[str, str], body: bytes, now_s: float) -> None:
        stamp = headers.get(SLACK_TIMESTAMP)
        fix = "the app's signing secret in Slack and in watchd must be the same"
        if stamp is None:
            raise RequestRefused(401, "signature", f"the request has no {SLACK_TIMESTAMP} header: {fix}")
        try:
            sent_s = int(stamp.strip())
        except ValueError:
            raise RequestRefused(401, "signature", f"{SLACK_TIMESTAMP} is not a number of seconds") from None
        if abs(now_s - sent_s) > self.tolerance_s:
            raise RequestRefused(
                401,
                "stale",
                f"{SLACK_TIMESTAMP} is {abs(now_s - sent_s):.0f}s from now, over {self.tolerance_s:g}s: "
                "a replayed request, or this machine's clock is wrong",
            )
        base = b"v0:" + _raw(stamp) + b":" + body
        _signed(SLACK_SIGNATURE, headers.get(SLACK_SIGNATURE), "v0=" + hmac_hex(self.secret, base), fix)

    def _check_token(self, headers: Mapping[str, str], query: Mapping[str, str]) -> None:
        auth = headers.get("Authorization")
        if auth is not None and auth.startswith("Bearer "):
            given = _raw(auth[7:])
        elif "token" in query:
            given = _raw(query["token"])
        else:
            raise RequestRefused(401, "token", "the request has no Authorization: Bearer token and no ?token=")
        # Digests of both: equal lengths, so not even the token's length shows in the timing.
        if not hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(self.secret).digest()):
            raise RequestRefused(401, "token", "wrong token")
