"""Result types shared by every module: bounded label sets and the frozen results of probes.

Senders and watchers return these; only `agent.monitoring.recorder` turns them into Prometheus
series. Every enum here is a bounded label set, pre-created at zero by the recorder.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "AUTH_ABSENT",
    "Arrival",
    "AuthDetail",
    "AuthMethod",
    "AuthResult",
    "AuthVerdicts",
    "BounceCounted",
    "BounceReason",
    "BounceSource",
    "BounceType",
    "ConfigLoaded",
    "DkimSignature",
    "DmarcCounted",
    "ErrorKind",
    "EspComplaint",
    "EspDelivered",
    "EspEvent",
    "EspEventReceived",
    "EspEventType",
    "EspKind",
    "EspReceiverStage",
    "EspSuppressed",
    "EspUnmatched",
    "FoundBy",
    "ImapCalibration",
    "ImapHealth",
    "InFlight",
    "InboxCategory",
    "LedgerErrorKind",
    "LedgerHealth",
    "LoopLag",
    "MessageSkipped",
    "NewestReport",
    "Outcome",
    "PairInFlight",
    "ProbeError",
    "ProbeFinished",
    "ProbeLate",
    "ProbeSent",
    "ProbeStarted",
    "ReplyClass",
    "ReportKind",
    "ReportProblem",
    "ReportRead",
    "ReportResult",
    "SendResult",
    "ShardOwnership",
    "SkipReason",
    "SmtpReply",
    "SmtpTransaction",
    "SpamCategory",
    "SpamSource",
    "SpamVerdict",
    "Stage",
    "TlsMode",
    "TlsSessionsCounted",
    "TokenRefreshed",
    "WebhookRefusal",
    "WebhookRefused",
]


class TlsMode(enum.StrEnum):
    """How a connection (SMTP or IMAP) is protected."""

    STARTTLS = "starttls"  # plain connect, then STARTTLS is required
    IMPLICIT = "implicit"  # TLS from the first byte (SMTPS 465, IMAPS 993)
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, plain otherwise (MX port 25)
    NONE = "none"


class Outcome(enum.StrEnum):
    """The one final outcome of a probe."""

    INBOX = "inbox"
    SPAM = "spam"
    OTHER = "other"  # delivered to a folder that is neither the inbox nor junk
    MISSING = "missing"  # accepted, but not seen by the deadline
    REJECTED = "rejected"  # a 5xx reply ended the transaction
    BOUNCED = "bounced"  # accepted, then a hard bounce (DSN) came back before it was seen
    DEFERRED = "deferred"  # a 4xx reply ended the transaction
    ERROR = "error"  # no SMTP verdict: connect, TLS, auth, timeout, protocol


class BounceType(enum.StrEnum):
    """Hard: permanent failure (5.x.x). Soft: transient (4.x.x, or a delay notice)."""

    HARD = "hard"
    SOFT = "soft"


class BounceReason(enum.StrEnum):
    """Why a bounce failed, in the few classes an operator acts on differently."""

    RECIPIENT_INVALID = "recipient_invalid"  # the address or its domain does not exist
    POLICY = "policy"  # refused by the receiver's policy (5.7.x): reputation, SPF/DMARC, spam
    MAILBOX_FULL = "mailbox_full"  # x.2.2, over quota
    SUPPRESSED = "suppressed"  # an ESP dropped it: the address is on its suppression list
    OTHER = "other"


class BounceSource(enum.StrEnum):
    """Where a bounce was learned: the SMTP transaction itself, or a DSN that came back later."""

    SMTP = "smtp"
    DSN = "dsn"
    ESP = "esp"  # an ESP's event webhook (the ESP rewrote the envelope sender, so no DSN comes)


class Stage(enum.StrEnum):
    """The stages of one SMTP transaction, in order."""

    CONNECT = "connect"
    BANNER = "banner"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    END_OF_DATA = "end_of_data"
    QUIT = "quit"


class ReplyClass(enum.StrEnum):
    """Class of an SMTP reply code, by its first digit."""

    SUCCESS = "2xx"
    INTERMEDIATE = "3xx"
    TRANSIENT = "4xx"
    PERMANENT = "5xx"
    INVALID = "invalid"

    @classmethod
    def of(cls, code: int) -> ReplyClass:
        return {2: cls.SUCCESS, 3: cls.INTERMEDIATE, 4: cls.TRANSIENT, 5: cls.PERMANENT}.get(
            code // 100, cls.INVALID
        )


class ErrorKind(enum.StrEnum):
    """Why an SMTP transaction or an IMAP connection ended without a verdict from the server."""

    CONNECT = "connect"
    TIMEOUT = "timeout"
    TLS = "tls"
    AUTH = "auth"
    PROTOCOL = "protocol"
    CLOSED = "closed"
    TOKEN = "token"  # no OAuth access token to sign in with (agent.oauth.TokenError)


class FoundBy(enum.StrEnum):
    """What made a mailbox watcher look for, and find, a message: the pass that handed it over."""

    SELECT = "select"  # already in the folder when the watcher selected it (start, reconnect)
    PUSH = "push"  # the server announced it while the watcher was in IDLE
    CHECK = "check"  # the periodic check out of IDLE found it: the server had not announced it
    POLL = "poll"  # a poll (the server has no IDLE, or IDLE is off)


class InboxCategory(enum.StrEnum):
    """The Gmail inbox tab of a probe delivered to the inbox (read with X-GM-RAW `category:`)."""

    PRIMARY = "primary"
    PROMOTIONS = "promotions"
    SOCIAL = "social"
    UPDATES = "updates"
    FORUMS = "forums"


class AuthMethod(enum.StrEnum):
    """Authentication-Results methods the agent reports."""

    SPF = "spf"
    DKIM = "dkim"
    DMARC = "dmarc"
    ARC = "arc"


class AuthResult(enum.StrEnum):
    """Authentication-Results result values (RFC 8601 and RFC 8617), plus `none` when absent."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"
    POLICY = "policy"

    @classmethod
    def parse(cls, value: str) -> AuthResult:
        """Map a header's result token to the enum; unknown tokens count as `permerror`."""
        try:
            return cls(value.strip().lower())
        except ValueError:
            return cls.PERMERROR


@dataclass(frozen=True, slots=True)
class SmtpReply:
    """One server reply at one stage of the transaction."""

    stage: Stage
    code: int
    enhanced_code: str | None  # "5.1.1", or None when the server sent none
    text: str

    @property
    def reply_class(self) -> ReplyClass:
        return ReplyClass.of(self.code)


@dataclass(frozen=True, slots=True)
class ProbeError:
    """A transaction that ended without a server verdict; `message` never contains a secret."""

    stage: Stage
    kind: ErrorKind
    message: str


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the SMTP sender learned about one probe."""

    transcript: tuple[SmtpReply, ...]
    accepted: bool  # the server answered 250 to the end of data
    accepted_at: float | None  # wall-clock time (time.time()) of that 250 reply
    duration_seconds: float
    error: ProbeError | None = None
    tls_version: str | None = None
    tls_cert_not_after: float | None = None  # peer certificate expiry, epoch seconds


# The `result` label of a summary method the trusted fields did not report (no trusted field at
# all, or the receiver left the method out): not an RFC 8601 word, so not an AuthResult.
AUTH_ABSENT = "absent"


@dataclass(frozen=True, slots=True)
class AuthDetail:
    """One resinfo of a trusted Authentication-Results field, as the receiver wrote it."""

    method: str  # lowercase, as written: "spf", "compauth", "bimi", "x-ptr"
    result: AuthResult  # in RFC 8601's words (tempfail -> temperror, ...)
    raw_result: str  # lowercase, as written ("bestguesspass")
    authserv_id: str | None  # of its field; None: the field had none (Microsoft)
    reason: str | None = None  # reason= (compauth's code, a DKIM failure's text)
    comment: str | None = None  # the resinfo's comments, joined
    properties: tuple[tuple[str, str], ...] = ()  # ("header.d", "example.com"), in order


@dataclass(frozen=True, slots=True)
class DkimSignature:
    """One DKIM result of the trusted run: the signature's domain (d=, or i='s domain) and
    selector when the receiver named them."""

    domain: str | None
    selector: str | None
    result: AuthResult
    raw_result: str


@dataclass(frozen=True, slots=True)
class AuthVerdicts:
    """Verdicts read from trusted Authentication-Results fields: the spf/dkim/dmarc/arc
    summaries (None: not reported), every method's deciding result by name, each resinfo, and
    each DKIM signature."""

    spf: AuthResult | None = None
    dkim: AuthResult | None = None
    dmarc: AuthResult | None = None
    arc: AuthResult | None = None
    # hash=False: a mapping is not hashable; the verdicts are compared, never hashed.
    methods: Mapping[str, AuthResult] = field(default_factory=dict, hash=False)
    details: tuple[AuthDetail, ...] = ()
    dkim_signatures: tuple[DkimSignature, ...] = ()

    def items(self) -> tuple[tuple[AuthMethod, AuthResult | None], ...]:
        return (
            (AuthMethod.SPF, self.spf),
            (AuthMethod.DKIM, self.dkim),
            (AuthMethod.DMARC, self.dmarc),
            (AuthMethod.ARC, self.arc),
        )


class SpamSource(enum.StrEnum):
    """The spam filter a verdict came from (agent.reading.spam says which fields each writes)."""

    RSPAMD = "rspamd"
    SPAMASSASSIN = "spamassassin"
    MICROSOFT = "microsoft"  # Exchange Online Protection / Outlook.com


class SpamCategory(enum.StrEnum):
    """What a spam filter said the message is, folded into one small set across filters."""

    HAM = "ham"
    SPAM = "spam"
    BULK = "bulk"
    PHISH = "phish"
    MALWARE = "malware"
    SPOOF = "spoof"
    IMPERSONATION = "impersonation"
    OTHER = "other"  # a category the filter names that is none of the above
    UNKNOWN = "unknown"  # the filter gave a score but no verdict


@dataclass(frozen=True, slots=True)
class SpamVerdict:
    """One receiving spam filter's verdict on a probe, normalised across filters.

    `score` and `threshold` are on the filter's own scale (rspamd and SpamAssassin points,
    Microsoft's SCL -1..9); None where the filter did not write them.
    """

    source: SpamSource
    score: float | None
    threshold: float | None
    is_spam: bool | None
    category: SpamCategory
    bulk_level: int | None = None  # Microsoft's bulk complaint level (BCL 0..9)


@dataclass(frozen=True, slots=True)
class Arrival:
    """A probe found in a seed mailbox: where it landed and every verdict read from the message.

    The one result of reading a message, from the matcher to the ledger (stored whole, also when
    the probe was seen before its send result was stored) and on to the recorder; a new verdict
    is a field added here and read along that one chain.
    """

    probe_id: str
    mailbox: str
    folder: str
    placement: Outcome  # INBOX, SPAM or OTHER
    seen_at: float  # wall-clock time the watcher saw the message
    auth: AuthVerdicts = field(default_factory=AuthVerdicts)
    found_by: FoundBy | None = None  # None: not recorded (an arrival stored by an older version)
    # The Gmail tab, for inbox placements on servers with X-GM-EXT-1; None: not known or asked
    category: InboxCategory | None = None
    spam: tuple[SpamVerdict, ...] = ()  # the receiving hop's spam filters, one per source


# --- what the recorder is handed: one frozen result per thing that happened ---------------------


@dataclass(frozen=True, slots=True)
class ProbeSent:
    """A probe was recorded and its SMTP transaction is about to start."""

    route: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class SmtpTransaction:
    """What one route's SMTP server said to one probe."""

    route: str
    result: SendResult


@dataclass(frozen=True, slots=True)
class ProbeFinished:
    """A probe got its one final outcome (the ledger said this call set it)."""

    route: str
    mailbox: str
    outcome: Outcome
    finished_at: float
    latency_seconds: float | None = None
    arrival: Arrival | None = None  # for inbox, spam and other: what was read from the message


@dataclass(frozen=True, slots=True)
class ProbeLate:
    """A probe already final as `missing` arrived after all (counted once)."""

    route: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class BounceCounted:
    """A bounce of a probe, counted once per type and source."""

    route: str
    bounce_type: BounceType
    source: BounceSource
    reason: BounceReason = BounceReason.OTHER


class SkipReason(enum.StrEnum):
    """Why a message in a seed mailbox was counted and skipped."""

    MALFORMED = "malformed"  # could not be parsed safely
    FORGED = "forged"  # looked like a probe, but its signature is invalid
    # Signed, but not in this agent's ledger: another replica's probe (sharded agents share the
    # secret) or one pruned long ago; left in the mailbox for its sender.
    FOREIGN = "foreign"


@dataclass(frozen=True, slots=True)
class MessageSkipped:
    """A message in a seed mailbox that was counted and skipped."""

    mailbox: str
    reason: SkipReason


@dataclass(frozen=True, slots=True)
class ImapHealth:
    """A mailbox watcher's connection state changed, or an error cost it an operation."""

    mailbox: str
    up: bool
    error: ErrorKind | None = None


@dataclass(frozen=True, slots=True)
class ImapCalibration:
    """A watched folder's IDLE notification delay was measured (`delay_seconds`), or the folder
    cannot be calibrated (None: no IDLE, APPEND refused, no push, an error), its latency raw."""

    mailbox: str
    folder: str
    delay_seconds: float | None


class LedgerErrorKind(enum.StrEnum):
    """Why the ledger refused an operation, from SQLite's primary result code."""

    DISK_FULL = "disk_full"  # SQLITE_FULL: the file system (or the file's page cap) is full
    READ_ONLY = "read_only"  # SQLITE_READONLY, SQLITE_PERM: the file or its directory is read-only
    IO = "io"  # SQLITE_IOERR, SQLITE_CANTOPEN: the operating system failed a read or a write
    BUSY = "busy"  # SQLITE_BUSY, SQLITE_LOCKED: another process held the lock past the timeout
    CORRUPT = "corrupt"  # SQLITE_CORRUPT, SQLITE_NOTADB, or a row this agent cannot decode
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class LedgerHealth:
    """An operation on the ledger failed (`error` says why), or a write succeeded again after a
    failed one. `writable` is whether the ledger's last write succeeded; `detail` is SQLite's
    message, for /readyz and the log, never a label."""

    writable: bool
    error: LedgerErrorKind | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class InFlight:
    """Probes without a final outcome, per (route, mailbox), as the ledger counts them: every
    pair at once (at start and after a reload)."""

    counts: Mapping[tuple[str, str], int]


@dataclass(frozen=True, slots=True)
class ShardOwnership:
    """Which shard this agent is (`index` of `count`) and, for every configured seed mailbox,
    whether it owns it (`agent.sharding`); at start and after every reload."""

    index: int
    count: int
    owned: Mapping[str, bool]


@dataclass(frozen=True, slots=True)
class ProbeStarted:
    """A scheduled probe job started, `lag_seconds` after its planned time."""

    lag_seconds: float


@dataclass(frozen=True, slots=True)
class LoopLag:
    """The agent's event loop ran a heartbeat `seconds` after it was due: how long every other
    callback waited, at most, for the loop at that moment."""

    seconds: float


@dataclass(frozen=True, slots=True)
class PairInFlight:
    """One pair's count of probes without a final outcome changed: O(1) per probe event."""

    route: str
    mailbox: str
    count: int


@dataclass(frozen=True, slots=True)
class ConfigLoaded:
    """A configuration load or reload finished; `at` is its wall-clock time."""

    ok: bool
    at: float


# --- DMARC aggregate and SMTP TLS reports (agent.reading.reports, agent.reports) ----------------


class ReportKind(enum.StrEnum):
    DMARC = "dmarc"
    TLSRPT = "tlsrpt"
    UNKNOWN = "unknown"  # not read far enough to know


class ReportProblem(enum.StrEnum):
    """Why a report was skipped."""

    NO_REPORT = "no_report"  # a message without any attachment that could be a report
    TRUNCATED = "truncated"  # the message was cut at the watcher's size cap
    TOO_LARGE = "too_large"  # decompressed past the cap (a gzip or zip bomb)
    BAD_ARCHIVE = "bad_archive"  # a corrupt gzip or zip, or a zip without exactly one member
    BAD_ENCODING = "bad_encoding"  # not UTF-8 where UTF-8 is declared or implied
    FORBIDDEN_XML = "forbidden_xml"  # a DTD or entity declarations (XML bombs, external entities)
    BAD_SYNTAX = "bad_syntax"  # neither well-formed XML nor JSON
    BAD_FIELD = "bad_field"  # a required field missing or of the wrong type


class ReportResult(enum.StrEnum):
    """What became of a report; the problems of `ReportProblem` are results too."""

    COUNTED = "counted"
    DUPLICATE = "duplicate"  # the same reporter's report id was counted before


@dataclass(frozen=True, slots=True)
class ReportRead:
    """One report in a report mailbox, or one attachment that could not be read as one."""

    mailbox: str
    kind: ReportKind
    result: ReportResult | ReportProblem


@dataclass(frozen=True, slots=True)
class NewestReport:
    """The end of the period covered by the newest report of a kind counted from a mailbox."""

    mailbox: str
    kind: ReportKind
    end: float


@dataclass(frozen=True, slots=True)
class DmarcCounted:
    """One row of a counted DMARC aggregate report, its labels already bounded."""

    mailbox: str
    org: str
    header_from: str
    disposition: str
    dkim: bool  # aligned and passing, as the receiver evaluated it
    spf: bool
    source_ip: str  # one of the mailbox's top sources, or "other"
    count: int


@dataclass(frozen=True, slots=True)
class TlsSessionsCounted:
    """Sessions of one policy and result in a counted TLS report, its labels already bounded."""

    mailbox: str
    org: str
    policy_domain: str
    policy_type: str
    result: str  # "success", an RFC 8460 result type, or "other"
    count: int


@dataclass(frozen=True, slots=True)
class TokenRefreshed:
    """One OAuth access-token request of a credential ended: `result` is "ok" or the
    TokenErrorKind's value; `expires_at` the new token's expiry (Unix time), if known."""

    credential: str
    result: str
    at: float
    expires_at: float | None = None


# --- ESP event webhooks ---------------------------------------------------------------------------


class EspKind(enum.StrEnum):
    """The ESPs whose event webhooks the agent verifies and reads (agent.webhooks)."""

    SENDGRID = "sendgrid"
    SES = "ses"  # Amazon SES, through an SNS topic
    MAILGUN = "mailgun"
    POSTMARK = "postmark"
    GENERIC = "generic"  # this agent's own JSON form, signed with an HMAC secret


class EspEventType(enum.StrEnum):
    """What an ESP said happened to a message, folded into what changes a probe."""

    DELIVERED = "delivered"  # the receiving server accepted it, as the ESP saw it
    BOUNCE = "bounce"  # permanent failure: the probe ends `bounced`
    SOFT_BOUNCE = "soft_bounce"  # transient failure: recorded, not final
    DEFERRED = "deferred"  # the ESP retries: recorded, not final
    DROPPED = "dropped"  # never sent (suppression list): the probe ends `rejected`
    COMPLAINT = "complaint"  # a recipient marked it spam: a counter, never an outcome
    OTHER = "other"  # opens, clicks, processed, sends: ignored


class WebhookRefusal(enum.StrEnum):
    """Why a post to a webhook was refused; it never touches the ledger."""

    UNSIGNED = "unsigned"  # no signature or credentials (401)
    BAD_SIGNATURE = "bad_signature"  # a signature or credentials that do not verify (403)
    REPLAYED = "replayed"  # timestamp outside the window, or a token already used (403)
    TOO_LARGE = "too_large"  # a body over the limit (413)
    MALFORMED = "malformed"  # not the provider's format (400)
    CERTIFICATE = "certificate"  # SNS: the signing certificate URL is refused or unreachable


@dataclass(frozen=True, slots=True)
class EspEvent:
    """One ESP event read from a verified post: what happened and how to find the probe."""

    event_type: EspEventType
    at: float | None  # when the ESP says it happened (epoch seconds); None: not said
    message_id: str | None = None  # the ESP's message id, as its 250 reply gave it
    probe_id: str | None = None  # from the metadata the agent passed at send
    status: str | None = None  # enhanced status code, e.g. 5.1.1
    smtp_code: str | None = None
    diagnostic: str | None = None  # the receiver's words, as the ESP reports them
    recipient: str | None = None


@dataclass(frozen=True, slots=True)
class WebhookRefused:
    """A post to a configured route's webhook was refused."""

    route: str
    reason: WebhookRefusal


@dataclass(frozen=True, slots=True)
class EspEventReceived:
    """A verified event arrived on a route's webhook (matched to a probe or not)."""

    route: str
    event_type: EspEventType
    received_at: float


@dataclass(frozen=True, slots=True)
class EspUnmatched:
    """A verified event named no probe the ledger knows on its route (other mail, or pruned)."""

    route: str


@dataclass(frozen=True, slots=True)
class EspDelivered:
    """The ESP delivered a probe (once per probe); latency from its 250 to that delivery."""

    route: str
    latency_seconds: float | None


@dataclass(frozen=True, slots=True)
class EspReceiverStage:
    """A probe the ESP delivered was seen in its mailbox: seconds from the ESP's delivered event
    to the sighting (the receiver's own stage), once per probe."""

    route: str
    seconds: float


@dataclass(frozen=True, slots=True)
class EspSuppressed:
    """The ESP dropped a probe because the address is on its suppression list (once per probe)."""

    route: str


@dataclass(frozen=True, slots=True)
class EspComplaint:
    """A complaint about a probe (once per probe)."""

    route: str
