"""What the reputation feeds produce: frozen results for the recorder, and their bounded labels.

A fetch of a feed ends in one result: `PostmasterFetched` (per configured domain, its newest day
with data, or none), `SndsFetched` (per labelled IP, its newest activity period and whether it is
blocked) or `FeedFailed` (why, as a bounded kind). "No data" is a state of its own: a domain
without a day of data has `day` None, and its rate series are removed, never set to zero.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import ClassVar

from agent.errors import AgentError, ErrorCategory

__all__ = [
    "ComplianceRequirement",
    "DeliveryError",
    "DomainDay",
    "DomainReport",
    "Feed",
    "FeedError",
    "FeedErrorKind",
    "FeedFailed",
    "FilterResult",
    "PostmasterFetched",
    "SndsFetched",
    "SndsIp",
]


class Feed(enum.StrEnum):
    POSTMASTER = "postmaster"  # Gmail Postmaster Tools API v2
    SNDS = "snds"  # Microsoft Smart Network Data Services, automated data access


class FeedErrorKind(enum.StrEnum):
    """Why a fetch failed or what was skipped: a bounded metric label."""

    AUTH = "auth"  # no access token, or the feed refused it / the key (HTTP 401)
    PERMISSION_DENIED = "permission_denied"  # HTTP 403: the domain is not the credential's
    QUOTA = "quota"  # HTTP 429: rate limited (Retry-After honoured)
    MALFORMED = "malformed"  # a body, or a row or entry of one, that is not the documented format
    ENDPOINT = "endpoint"  # unreachable, TLS, 5xx, any other status, or a body over the size cap
    TIMEOUT = "timeout"  # the whole fetch did not end within the feed's timeout


class FeedError(AgentError):
    """A fetch failed. The message never holds the SNDS key or an access token."""

    category: ClassVar[ErrorCategory] = ErrorCategory.PEER

    def __init__(
        self, kind: FeedErrorKind, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after  # seconds the server asked to wait (HTTP 429, 503)


class ComplianceRequirement(enum.StrEnum):
    """Gmail's bulk-sender requirements (v2 `ComplianceRowData.requirement`), lower-cased."""

    SPF = "spf"
    DKIM = "dkim"
    SPF_AND_DKIM = "spf_and_dkim"
    DMARC_POLICY = "dmarc_policy"
    DMARC_ALIGNMENT = "dmarc_alignment"
    MESSAGE_FORMATTING = "message_formatting"
    DNS_RECORDS = "dns_records"
    ENCRYPTION = "encryption"
    USER_REPORTED_SPAM_RATE = "user_reported_spam_rate"
    ONE_CLICK_UNSUBSCRIBE = "one_click_unsubscribe"
    HONOR_UNSUBSCRIBE = "honor_unsubscribe"


# Google's documented delivery error types and reasons (v2 StandardMetric DELIVERY_ERROR_RATE).
DELIVERY_ERRORS: tuple[tuple[str, str], ...] = (
    *(
        ("reject", reason)
        for reason in (
            "bad_attachment",
            "bad_or_missing_ptr_record",
            "ip_in_rbls",
            "low_domain_reputation",
            "low_ip_reputation",
            "spammy_content",
            "stamp_policy_error",
            "other",
        )
    ),
    ("temp_fail", "anomalous_traffic_pattern"),
    ("temp_fail", "other"),
)


@dataclass(frozen=True, slots=True)
class DeliveryError:
    type: str  # reject, temp_fail
    reason: str
    ratio: float


@dataclass(frozen=True, slots=True)
class DomainDay:
    """One domain's statistics for one day (ratios 0..1; None: Google sent no value)."""

    date: dt.date
    spam_ratio: float | None = None
    auth_success: tuple[tuple[str, float], ...] = ()  # (spf|dkim|dmarc, ratio)
    tls_inbound_ratio: float | None = None
    delivery_errors: tuple[DeliveryError, ...] = ()


@dataclass(frozen=True, slots=True)
class DomainReport:
    """A configured domain: its newest day with data (None: no data in the window) and its
    compliance rows (empty: Google sent none)."""

    domain: str
    day: DomainDay | None
    compliance: tuple[tuple[ComplianceRequirement, bool], ...] = ()  # (requirement, compliant)


@dataclass(frozen=True, slots=True)
class PostmasterFetched:
    domains: tuple[DomainReport, ...]
    at: float
    malformed: int = 0  # entries skipped


class FilterResult(enum.StrEnum):
    """SNDS' filter result for an IP's activity period (the column "Filter result")."""

    GREEN = "green"  # spam filter verdict on at most 10 % of its messages
    YELLOW = "yellow"  # between 10 % and 90 %
    RED = "red"  # more than 90 %


@dataclass(frozen=True, slots=True)
class SndsIp:
    """One labelled IP's newest activity period (`ip` "other": the unlabelled ones summed, the
    worst filter result, the highest complaint rate)."""

    ip: str
    period_end: float  # Unix time, UTC
    filter_result: FilterResult
    complaint_ratio: float  # "< 0.1%" is recorded as its bound, 0.001
    trap_hits: int
    rcpt_commands: int
    data_commands: int
    recipients: int


@dataclass(frozen=True, slots=True)
class SndsFetched:
    ips: tuple[SndsIp, ...]
    blocked: tuple[tuple[str, bool], ...]  # (labelled ip or "other", blocked)
    at: float
    malformed: int = 0  # rows skipped


@dataclass(frozen=True, slots=True)
class FeedFailed:
    feed: Feed
    kind: FeedErrorKind
    at: float
    message: str = ""
