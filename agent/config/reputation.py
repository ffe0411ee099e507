"""The `reputation` section: the receivers' own view of the sender, fetched on a schedule.

`google` reads Gmail Postmaster Tools (API v2) for the configured domains with an OAuth access
token (the same `oauth2` / `token_command` / `token_file` shapes as a mailbox's `auth`); `snds`
reads Microsoft SNDS automated data access with its key. Each is off unless configured.
`base_url` and `ca_file` exist for tests (a scripted server on loopback), not for operators.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field

from agent.config.base import _Model
from agent.config.credentials import _LOOPBACK, MailAuth
from agent.config.errors import _invalid, _Problems
from agent.config.interpolation import _fail_closed
from agent.config.scalars import DnsName, ExistingFile, IpAddress, PositiveDuration, _duration
from agent.secrets import Secret

__all__ = [
    "GOOGLE_BASE_URL",
    "POSTMASTER_SCOPE",
    "SNDS_BASE_URL",
    "GoogleReputation",
    "Reputation",
    "Snds",
]

# Google's v2 reference: domainStats.query and getComplianceStatus accept `postmaster` or
# `postmaster.traffic.readonly`; the read-only one is enough (https://developers.google.com/
# workspace/gmail/postmaster/reference/rest/v2/domains.domainStats/query, "Authorization scopes").
POSTMASTER_SCOPE: Final = "https://www.googleapis.com/auth/postmaster.traffic.readonly"
GOOGLE_BASE_URL: Final = "https://gmailpostmastertools.googleapis.com"
SNDS_BASE_URL: Final = "https://sendersupport.olc.protection.outlook.com/snds"

_HOUR: Final = 3600.0


def _base_url(value: Any) -> str:
    # https anywhere; plain http only to loopback (a test server). No trailing slash.
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.hostname and (
            parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)
        ):
            return value.rstrip("/")
    raise _invalid("expected an https:// URL (http:// only to 127.0.0.1, ::1 or localhost)")


BaseUrl = Annotated[str, BeforeValidator(_base_url)]
# Both feeds publish daily with a lag: fetching more than hourly only spends quota.
FeedInterval = Annotated[float, _duration(minimum=_HOUR)]


class GoogleReputation(_Model):
    """Gmail Postmaster Tools: per domain and day spam rate, authentication, TLS, errors, and
    the bulk-sender compliance status."""

    domains: Annotated[tuple[DnsName, ...], Field(min_length=1, max_length=100)]
    auth: MailAuth  # oauth2 (service account or refresh token), token_command or token_file
    interval: FeedInterval = 6 * _HOUR
    timeout: PositiveDuration = 60.0  # one whole fetch: every request of every domain
    days: Annotated[int, Field(ge=2, le=30)] = 7  # how far back to look for the newest day
    base_url: BaseUrl = GOOGLE_BASE_URL  # tests only
    ca_file: ExistingFile | None = None  # tests only: verify base_url against this CA

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        auth = data.get("auth")
        if isinstance(auth, dict) and isinstance(auth.get("oauth2"), dict):
            # The provider preset's scope is Gmail's IMAP/SMTP one; Postmaster Tools needs its
            # own. Set before the nested model fills the preset in.
            oauth2 = dict(auth["oauth2"])
            oauth2.setdefault("scope", POSTMASTER_SCOPE)
            data["auth"] = {**auth, "oauth2": oauth2}

    def _check(self, problems: _Problems) -> None:
        if not self.auth.uses_token:
            problems.add(
                ("auth",),
                "expected oauth2, token_command or token_file (Postmaster Tools takes an OAuth "
                "access token, not a password)",
            )
        if self.auth.mechanism is not None:
            problems.add(("auth", "mechanism"), "expected only for a route or a mailbox")
        seen: set[str] = set()
        for index, domain in enumerate(self.domains):
            if domain in seen:
                problems.add(("domains", index), f"duplicate domain {domain!r}")
            seen.add(domain)


class Snds(_Model):
    """Microsoft SNDS automated data access: per IP filter result, complaints, traps, blocks."""

    key: Secret  # the automated data access key (SNDS > Automated Access)
    ips: tuple[IpAddress, ...] = ()  # the IPs labelled; empty: the first max_ips the key covers
    max_ips: Annotated[int, Field(ge=1, le=1000)] = 20  # the rest are summed under ip="other"
    interval: FeedInterval = 6 * _HOUR
    timeout: PositiveDuration = 60.0
    base_url: BaseUrl = SNDS_BASE_URL  # tests only
    ca_file: ExistingFile | None = None  # tests only

    def _check(self, problems: _Problems) -> None:
        _fail_closed(self.key, "key", problems)
        if not self.key.get_secret_value().strip():
            problems.add(("key",), "expected a non-empty SNDS automated access key")
        if len(self.ips) > self.max_ips:
            problems.add(("ips",), f"expected at most max_ips ({self.max_ips}) addresses")
        seen: set[str] = set()
        for index, ip in enumerate(self.ips):
            if ip in seen:
                problems.add(("ips", index), f"duplicate IP address {ip!r}")
            seen.add(ip)


class Reputation(_Model):
    """The receivers' reputation feeds; each is off unless configured."""

    google: GoogleReputation | None = None
    snds: Snds | None = None
