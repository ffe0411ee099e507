"""What a message in a bounce mailbox says about our probes: which probe, hard or soft, why.

Triage first decides that the message is a bounce at all (auto-replies and everything else are
left alone). flufl.bounce then finds the failed recipients, temporary or permanent, across RFC 3464
DSNs and the common non-standard formats; where the bounce is a real DSN its own `Status`,
`Action` and `Reporting-MTA` fields give the status code and the reporting MTA.

Anybody can send a message to a bounce mailbox, and probe ids are not secret (every delivered
probe's Message-ID and the status page show them), so a bounce must prove which probe it is about:
it quotes the probe's signed token (the probe header or the signed Message-ID of the returned
original), or it was sent to the probe's VERP address, whose tag is a MAC of the id that appears
nowhere but in the envelope (`user+<probe-id>-<tag>@domain`, see `agent.reading.probe_token`). A
proven bounce must also be consistent: the token and the tag name the same probe, and the returned
original's Message-ID is the probe's. Anything else that names a probe is reported as forged; the
caller counts it and changes no outcome.

What a bounce says is read per failed recipient (`BounceFields`): hard or soft, the enhanced status
and SMTP reply code (from a DSN's Status and Diagnostic-Code, or from the text of a bounce that has
no DSN part), the action, the reporting MTA, the returned original's Message-ID, and a bounded
`BounceReason`. `read_bounce_fields` reads them from any message without a probe to prove, which
is what the sample corpus (tests/corpus/bounces) and `inspect` use.
"""

from __future__ import annotations

import enum
import logging
import re
import secrets
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser

from flufl.bounce import all_failures

from agent.model import BounceReason, BounceType
from agent.reading.probe_token import (
    PROBE_ID_PATTERN,
    SIGNATURE_PATTERN,
    VERP_PATTERN,
    KeyRing,
)
from agent.reading.triage import TriageKind, own_parts, triage_message

__all__ = [
    "BounceFields",
    "BounceKind",
    "BounceProof",
    "BounceReading",
    "BounceReport",
    "bounce_reason",
    "read_bounce",
    "read_bounce_fields",
]

log = logging.getLogger(__name__)

# ASCII: a Unicode case fold (the Kelvin sign is a "k") must not widen the match.
_VERP = re.compile(VERP_PATTERN, re.IGNORECASE | re.ASCII)
# Any probe id after a `+`, tagged or not: what a bounce claims even when it proves nothing.
_VERP_CLAIM = re.compile(rf"\+({PROBE_ID_PATTERN})[-@]", re.IGNORECASE | re.ASCII)
_PROBE_MESSAGE_ID = re.compile(
    rf"<\s*({PROBE_ID_PATTERN})\.({SIGNATURE_PATTERN})@", re.IGNORECASE | re.ASCII
)
_MAX_ORIGINALS = 8  # returned originals read from one bounce
_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# An enhanced status code in text: not part of an IP address or version number.
_STATUS_IN_TEXT = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\d|\.\d)")
# A failure reply code in text ("550 5.1.1", "550-5.1.1", "said: 552 Error"), 4xx or 5xx.
_SMTP_CODE = re.compile(r"(?<![\w.#+-])([45][0-5]\d)(?=[ -]|:\s|$)", re.MULTILINE)
# Where a text bounce starts quoting the returned message (qmail, Exim, Yahoo, Gmail, Exchange).
_QUOTE_START = re.compile(
    r"^[ \t]*-{2,}[ \t]*(?:below this line is a copy|this is a copy of|original message"
    r"|the original message|the header of the original)",
    re.IGNORECASE | re.MULTILINE,
)
_QUOTED_MESSAGE_ID_LINE = re.compile(r"^message-id:\s*<?([^\s<>]+)>?", re.IGNORECASE | re.MULTILINE)
_MAX_WINDOWS = 8  # mentions of one recipient looked at for its codes
_MAX_WINDOW_CHARS = 4096  # of text read after one mention
_MAX_TEXT_CHARS = 64 * 1024  # of a text bounce's own words; the quoted original follows them
_DELAY_WORDS = re.compile(
    r"has not yet been delivered|will (?:keep|continue) trying|still trying|will be retried"
    r"|delivery (?:is|has been) delayed",
    re.IGNORECASE,
)
_RECIPIENT_LINE = re.compile(r"^[ \t]*<([^<>\s@]+@[^<>\s@]+)>:[ \t]*$", re.MULTILINE)
_FOLD_WS = re.compile(r"\s+")
_DELAY_SUBJECT = re.compile(r"\s*(?:delayed mail|warning: could not send|.*\(delay\))", re.I)

# Reasons read from words, for replies whose status code is missing or generic (5.0.0, 550 alone).
_FULL_WORDS = re.compile(
    r"mailbox (?:is )?full|over ?quota|quota exceeded|exceeds? (?:the )?(?:storage|quota)"
    r"|disk quota|storage quota|insufficient (?:storage|disk space)|mailbox size limit"
    r"|mailbox exceeds|exceeded the local limit|mailbox is over",
    re.IGNORECASE,
)
_INVALID_WORDS = re.compile(
    r"user unknown|unknown user|no such (?:user|mailbox|recipient|address|account)"
    r"|(?:does|did) not exist|doesn'?t exist|user not found|recipient not found"
    r"|unknown (?:recipient|address|mailbox)|(?:recipient|address) unknown|invalid recipient"
    r"|no mailbox here by that name|not our customer|recipient no longer on server"
    r"|host or domain name not found|unrouteable address|no longer (?:available|active)",
    re.IGNORECASE,
)
_POLICY_WORDS = re.compile(
    r"\bspam|blocked|block ?list|black ?list|denied|policy|reputation|\bdmarc\b|\bspf\b"
    r"|not allowed|unauthenticated|authentication required|virus",
    re.IGNORECASE,
)
# 5.1.1 bad mailbox, 5.1.2 bad system (domain), 5.1.3 bad address syntax, 5.1.6 moved, 5.1.10
# null MX (RFC 3463, RFC 7505): the address, or its domain, does not exist.
_INVALID_STATUS = frozenset({"1.1", "1.2", "1.3", "1.6", "1.10"})
# Headers a bounce is addressed by: To (the envelope sender of the original), and what delivery
# agents add for the envelope recipient.
_ADDRESSED_BY = ("Delivered-To", "X-Original-To", "Envelope-To", "To")
_MAX_FIELDS = 64  # per-recipient blocks read from one DSN; more is not a real bounce


class BounceProof(enum.StrEnum):
    """How a bounce proved which probe it is about."""

    SIGNED_TOKEN = "signed token"  # the probe header or signed Message-ID, returned or quoted
    VERP_TAG = "verp tag"  # sent to the probe's VERP address, with the tag that only we can make


class BounceKind(enum.StrEnum):
    """What a message is, for someone reading bounces."""

    BOUNCE = "bounce"
    AUTO_REPLY = "auto_reply"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class BounceFields:
    """What a bounce says about one failed recipient; None where it says nothing."""

    bounce_type: BounceType
    status: str | None  # enhanced status code, e.g. "5.1.1"
    smtp_code: str | None  # the remote server's reply code, e.g. "550"
    recipient: str | None  # lower-cased; None when a text bounce names nobody
    reason: BounceReason
    action: str | None  # the DSN's Action, lower-cased: failed, delayed
    reporting_mta: str | None
    original_message_id: str | None  # of the returned message, without <>
    original_recipient: str | None = None  # the DSN's Original-Recipient, when it differs

    @property
    def recipient_invalid(self) -> bool:
        """The address or its domain does not exist."""
        return self.reason is BounceReason.RECIPIENT_INVALID


def _for_recipient(blocks: tuple[BounceFields, ...], recipient: str | None) -> BounceFields | None:
    """The block about `recipient` (final or original), or the first one when it is not named."""
    if recipient is not None:
        wanted = recipient.lower()
        for block in blocks:
            if wanted in (block.recipient, block.original_recipient):
                return block
    return blocks[0] if blocks else None


@dataclass(frozen=True, slots=True)
class BounceReading:
    """A message read as a bounce, with no probe to prove: its kind and, for a bounce, the
    fields about the recipient asked for (or the first failed one) and about every recipient."""

    kind: BounceKind
    why: str
    bounce: BounceFields | None
    blocks: tuple[BounceFields, ...] = ()


@dataclass(frozen=True, slots=True)
class BounceReport:
    """A bounce, as far as it could be read. `bounce_type` is None when it reports no failure."""

    probe_id: str | None  # the probe the bounce names, proven or not
    proof: BounceProof | None  # None: it names a probe but proves nothing
    bounce_type: BounceType | None
    status: str | None  # enhanced status code, e.g. "5.1.1"
    reporting_mta: str | None
    recipients: tuple[str, ...]  # the failed recipients, final and original, lower-cased
    reason: str
    forgery: str | None = None  # why a bounce that names a probe cannot be about it
    blocks: tuple[BounceFields, ...] = ()  # what it says per failed recipient

    @property
    def forged(self) -> bool:
        """Names a probe without proof, or with proof that contradicts itself."""
        return self.forgery is not None

    def fields_for(self, recipient: str | None) -> BounceFields | None:
        """What the bounce says about `recipient` (the probe's): in a DSN about several
        recipients, theirs, not the first block's."""
        return _for_recipient(self.blocks, recipient)


def bounce_reason(status: str | None, smtp_code: str | None, text: str = "") -> BounceReason:
    """The class of a failure from its enhanced status, reply code and words.

    A specific status decides (x.2.2 full, 5.1.1/5.1.2/5.1.3/5.1.6/5.1.10 invalid, x.7.x policy);
    otherwise the words do, because many servers send 550 or 5.0.0 with "User unknown". An
    address is invalid only on a permanent failure: a 4xx "domain not found" is a DNS hiccup."""
    permanent = (status or smtp_code or "5").startswith("5")
    if status is not None:
        _, _, rest = status.partition(".")
        if rest == "2.2":
            return BounceReason.MAILBOX_FULL
        if rest in _INVALID_STATUS and permanent:
            return BounceReason.RECIPIENT_INVALID
        if rest.startswith("7."):
            return BounceReason.POLICY
    if _FULL_WORDS.search(text):
        return BounceReason.MAILBOX_FULL
    if permanent and _INVALID_WORDS.search(text):
        return BounceReason.RECIPIENT_INVALID
    if _POLICY_WORDS.search(text):
        return BounceReason.POLICY
    return BounceReason.OTHER


def _address(field: object) -> str:
    return str(field or "").split(";", 1)[-1].strip().strip("<>").lower()


@dataclass(frozen=True, slots=True)
class _DsnBlock:
    recipient: str
    original: str
    action: str
    status: str
    diagnostic: str


def _dsn_fields(message: Message) -> tuple[str | None, list[_DsnBlock]]:
    """Reporting-MTA and the per-recipient blocks of a DSN."""
    reporting_mta: str | None = None
    blocks: list[_DsnBlock] = []
    for part in own_parts(message):
        if part.get_content_type() not in (
            "message/delivery-status",
            "message/global-delivery-status",
        ):
            continue
        payload = part.get_payload()
        if not isinstance(payload, list):
            continue
        for index, fields in enumerate(payload[: _MAX_FIELDS + 1]):
            if not isinstance(fields, Message):
                continue
            if index == 0:
                mta = str(fields.get("Reporting-MTA", "")).strip()
                reporting_mta = mta.split(";", 1)[-1].strip() or None
                continue
            original = _address(fields.get("Original-Recipient"))
            blocks.append(
                _DsnBlock(
                    recipient=_address(fields.get("Final-Recipient")) or original,
                    original=original,
                    action=str(fields.get("Action", "")).strip().lower(),
                    status=str(fields.get("Status", "")).strip(),
                    diagnostic=_FOLD_WS.sub(" ", str(fields.get("Diagnostic-Code", ""))),
                )
            )
    return reporting_mta, blocks


def _smtp_code(text: str) -> str | None:
    match = _SMTP_CODE.search(text)
    return match[1] if match else None


def _status_in_text(text: str) -> str | None:
    match = _STATUS_IN_TEXT.search(text)
    return ".".join(match.groups()) if match else None


def _dsn_block_fields(
    block: _DsnBlock, reporting_mta: str | None, original_message_id: str | None
) -> BounceFields | None:
    """One DSN block as fields; None when it reports no failure (delivered, relayed)."""
    diagnostic = block.diagnostic.split(";", 1)[-1]
    status = _status_code(block.status) or _status_in_text(diagnostic)
    smtp_code = _smtp_code(diagnostic)
    # `failed`: the message was returned and will not be delivered, whatever the code's class
    # (a 4.x.x that outlived the queue); `delayed`: still queued.
    if block.action == "failed":
        bounce_type = BounceType.HARD
    elif block.action == "delayed":
        bounce_type = BounceType.SOFT
    elif block.action == "" and status is not None and status[0] in "45":
        bounce_type = BounceType.HARD if status[0] == "5" else BounceType.SOFT
    else:
        return None
    return BounceFields(
        bounce_type=bounce_type,
        status=status,
        smtp_code=smtp_code,
        recipient=block.recipient or None,
        reason=bounce_reason(status, smtp_code, diagnostic),
        action=block.action or None,
        reporting_mta=reporting_mta,
        original_message_id=original_message_id,
        original_recipient=block.original if block.original != block.recipient else None,
    )


def _own_text(message: Message) -> str:
    """The bounce's own text parts (not attached messages), decoded."""
    texts: list[str] = []
    size = 0
    for part in own_parts(message):
        if part.get_content_type() not in ("text/plain", "text/html") or size > _MAX_TEXT_CHARS:
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload[: _MAX_TEXT_CHARS * 4].decode(charset, "replace")
        except LookupError:  # an unknown charset name
            text = payload[: _MAX_TEXT_CHARS * 4].decode("latin-1")
        texts.append(text)
        size += len(text)
    return "\n".join(texts)


def _line_start(text: str, position: int) -> int:
    return text.rfind("\n", 0, position) + 1


def _windows(text: str, recipients: list[str]) -> list[tuple[str | None, str]]:
    """(recipient, the text about it) for each recipient a text bounce names: from the line of
    one of its mentions to the line of the next other recipient's mention, preferring the first
    mention followed by a code (Sendmail lists the addresses first, the transcript after). A
    recipient the text never mentions gets the whole text."""
    recipients = recipients[:_MAX_FIELDS]
    lowered = text.lower()
    mentions = sorted(
        (m.start(), r) for r in recipients for m in re.finditer(re.escape(r), lowered)
    )[: _MAX_FIELDS * 4]
    if not mentions:
        only = recipients[0] if len(recipients) == 1 else None
        return [(only, text)]
    # One pass from the end: where the next mention of another recipient starts, per mention.
    ends = [len(text)] * len(mentions)
    nearest: tuple[int, str] | None = None  # the next mention
    nearest_other = len(text)  # the next mention of a recipient other than nearest's
    for index in range(len(mentions) - 1, -1, -1):
        position, who = mentions[index]
        if nearest is not None:
            ends[index] = nearest[0] if nearest[1] != who else nearest_other
            if nearest[1] != who:
                nearest_other = nearest[0]
        nearest = (position, who)
    windows: dict[str, list[str]] = {}
    for (position, who), end in zip(mentions, ends, strict=True):
        start = _line_start(text, position)
        found = windows.setdefault(who, [])
        if len(found) < _MAX_WINDOWS:
            found.append(text[start : max(start, _line_start(text, end))][:_MAX_WINDOW_CHARS])
    result: list[tuple[str | None, str]] = []
    for recipient in recipients:
        mentioned = windows.get(recipient)
        if not mentioned:
            result.append((recipient, text))
            continue
        coded = (w for w in mentioned if _STATUS_IN_TEXT.search(w) or _SMTP_CODE.search(w))
        result.append((recipient, next(coded, mentioned[0])))
    return result


def _text_fields(
    message: Message, recipients: list[str], original_message_id: str | None
) -> list[BounceFields]:
    """A bounce without a DSN part: codes and reason from its words, per recipient named."""
    text = _own_text(message)
    quote = _QUOTE_START.search(text)
    if original_message_id is None and quote is not None:
        quoted_id = _QUOTED_MESSAGE_ID_LINE.search(text, quote.start())
        original_message_id = quoted_id[1] if quoted_id else None
    own = text[: quote.start()] if quote else text
    own = own[:_MAX_TEXT_CHARS]
    subject = str(message.get("Subject", ""))
    delay = _DELAY_SUBJECT.match(subject) is not None or _DELAY_WORDS.search(own) is not None
    if not recipients:
        # qmail and Yahoo name each recipient on a line of its own, "<address>:"
        recipients = list(dict.fromkeys(m[1].lower() for m in _RECIPIENT_LINE.finditer(own)))
    blocks = []
    for recipient, window in _windows(own, recipients):
        status = _status_in_text(window)
        smtp_code = _smtp_code(window)
        reason = bounce_reason(status, smtp_code, window)
        if (
            recipient is None
            and status is None
            and smtp_code is None
            and reason is BounceReason.OTHER
        ):
            continue  # names nobody and says nothing: not enough to count a failure
        blocks.append(
            BounceFields(
                # Returned to the sender: final whatever the code (qmail gives up on a 4xx).
                bounce_type=BounceType.SOFT if delay else BounceType.HARD,
                status=status,
                smtp_code=smtp_code,
                recipient=recipient,
                reason=reason,
                action=None,
                reporting_mta=None,
                original_message_id=original_message_id,
            )
        )
    return blocks


def _status_code(text: str) -> str | None:
    match = _STATUS.match(text)
    return ".".join(match.groups()) if match else None


def _verp(message: Message, keys: KeyRing) -> tuple[str | None, str | None]:
    """(the probe a valid VERP tag proves, the probe a VERP address names at all)."""
    claimed: str | None = None
    for name in _ADDRESSED_BY:
        for value in (message.get_all(name) or [])[:_MAX_ORIGINALS]:
            text = str(value)
            for match in _VERP.finditer(text):
                if keys.verify_verp(match[1].lower(), match[2]):
                    return match[1].lower(), match[1].lower()
            if claimed is None and (claim := _VERP_CLAIM.search(text)):
                claimed = claim[1].lower()
    return None, claimed


def _original_message_ids(message: Message) -> list[str]:
    """The Message-ID of each returned original (whole or headers only), and what the bounce
    says it replies to."""
    found = [str(value) for value in message.get_all("In-Reply-To") or []]
    for part in message.walk():
        if len(found) >= _MAX_ORIGINALS:
            break
        content_type = part.get_content_type()
        if content_type in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            originals = payload if isinstance(payload, list) else []
        elif content_type in ("text/rfc822-headers", "message/global-headers"):
            text = part.get_payload(decode=True)
            originals = (
                [BytesParser(policy=policy.compat32).parsebytes(text, headersonly=True)]
                if isinstance(text, bytes)
                else []
            )
        else:
            continue
        found.extend(
            str(original["Message-ID"])
            for original in originals
            if isinstance(original, Message) and original["Message-ID"] is not None
        )
    return found[:_MAX_ORIGINALS]


def _forgery(
    signed_id: str | None,
    verp_id: str | None,
    original_ids: list[str],
    keys: KeyRing,
) -> str | None:
    """Why a bounce's proof does not hold, or None when it does."""
    if signed_id is None and verp_id is None:
        return "it carries neither the probe's signed token nor its VERP tag"
    if signed_id is not None and verp_id is not None and signed_id != verp_id:
        return f"its signed token names probe {signed_id} and its VERP tag probe {verp_id}"
    proven = signed_id or verp_id
    for message_id in original_ids:
        match = _PROBE_MESSAGE_ID.search(message_id)
        if (
            match is None
            or match[1].lower() != proven
            or not keys.verify(match[1].lower(), match[2].lower())
        ):
            return "the returned message's Message-ID is not the probe's"
    return None


def read_bounce(raw: bytes, *, keys: KeyRing) -> BounceReport:
    """Read one message from a bounce mailbox; never raises on the message's content."""
    triage = triage_message(raw, keys=keys, trusted_authserv_ids=())
    if triage.kind is not TriageKind.BOUNCE:
        return BounceReport(None, None, None, None, None, (), f"not a bounce: {triage.kind}")
    signed_id = triage.probe_id if triage.probe_id_signed else None
    unsigned_id = None if triage.probe_id_signed else triage.probe_id
    try:
        return _read(raw, keys, signed_id, unsigned_id)
    except Exception as exc:  # a hostile bounce must never stop the bounce watcher
        log.debug("unreadable bounce", exc_info=True)
        return BounceReport(
            None, None, None, None, None, (), f"unreadable bounce ({type(exc).__name__})"
        )


def _returned_message_id(message: Message) -> str | None:
    """The Message-ID of the returned original (whole or headers only), without <>."""
    for part in own_parts(message):
        if part.get_content_type() not in (
            "message/rfc822",
            "message/global",
            "text/rfc822-headers",
            "message/global-headers",
        ):
            continue
        found = _original_message_ids_of(part)
        if found:
            return found[0].strip().strip("<>").strip() or None
    return None


def _original_message_ids_of(part: Message) -> list[str]:
    payload = part.get_payload()
    if isinstance(payload, list):
        originals = payload
    else:
        text = part.get_payload(decode=True)
        if not isinstance(text, bytes):
            return []
        originals = [BytesParser(policy=policy.compat32).parsebytes(text, headersonly=True)]
    return [
        str(original["Message-ID"])
        for original in originals
        if isinstance(original, Message) and original["Message-ID"] is not None
    ]


def _blocks(message: Message, failed_recipients: set[str]) -> tuple[BounceFields, ...]:
    """What the bounce says per failed recipient: from its DSN part, or else from its words."""
    original_message_id = _returned_message_id(message)
    reporting_mta, dsn_blocks = _dsn_fields(message)
    if dsn_blocks:
        fields = (_dsn_block_fields(b, reporting_mta, original_message_id) for b in dsn_blocks)
        return tuple(f for f in fields if f is not None)
    if message.get_content_type() == "multipart/report":
        return ()  # a report whose status part is cut or broken: its words prove no failure
    return tuple(_text_fields(message, sorted(failed_recipients), original_message_id))


def _failures(message: Message) -> tuple[set[str], bool, bool]:
    """flufl.bounce's failed recipients, lower-cased, and whether any is temporary or permanent."""
    temporary, permanent = all_failures(message)

    def text(address: object) -> str:
        raw = address.decode("utf-8", "replace") if isinstance(address, bytes) else str(address)
        return raw.lower()

    return {text(a) for a in (*temporary, *permanent)}, bool(temporary), bool(permanent)


def read_bounce_fields(raw: bytes, *, recipient: str | None = None) -> BounceReading:
    """Read any message as a bounce, proving no probe: its kind and what it says about
    `recipient` (or its first failed recipient). Never raises on the message's content."""
    # A random secret matches no probe: classification only, nothing is taken as proof.
    triage = triage_message(raw, keys=KeyRing(secrets.token_bytes(32)), trusted_authserv_ids=())
    if triage.kind is TriageKind.AUTO_REPLY:
        return BounceReading(BounceKind.AUTO_REPLY, triage.reason, None)
    if triage.kind is not TriageKind.BOUNCE:
        return BounceReading(BounceKind.OTHER, triage.reason, None)
    try:
        message = BytesParser(policy=policy.compat32).parsebytes(raw)
        failed, _, _ = _failures(message)
        blocks = _blocks(message, failed)
    except Exception as exc:  # a hostile bounce must never stop whoever reads it
        log.debug("unreadable bounce", exc_info=True)
        return BounceReading(BounceKind.OTHER, f"unreadable bounce ({type(exc).__name__})", None)
    if not blocks:
        return BounceReading(BounceKind.OTHER, "a bounce that reports no failed recipient", None)
    return BounceReading(
        BounceKind.BOUNCE, triage.reason, _for_recipient(blocks, recipient), blocks
    )


def _read(
    raw: bytes, keys: KeyRing, signed_id: str | None, unsigned_id: str | None
) -> BounceReport:
    message = BytesParser(policy=policy.compat32).parsebytes(raw)
    recipients, temporary, permanent = _failures(message)
    blocks = _blocks(message, set(recipients))
    recipients.update(b.recipient for b in blocks if b.recipient)
    recipients.update(b.original_recipient for b in blocks if b.original_recipient)
    if permanent or any(b.bounce_type is BounceType.HARD for b in blocks):
        bounce_type: BounceType | None = BounceType.HARD
    elif temporary or blocks:
        bounce_type = BounceType.SOFT
    else:
        bounce_type = None
    wanted = "5" if bounce_type is BounceType.HARD else "4"
    statuses = [b.status for b in blocks if b.status is not None]
    status = next((c for c in statuses if c.startswith(wanted)), None)
    verp_id, verp_claim = _verp(message, keys)
    probe_id = signed_id or verp_id or verp_claim or unsigned_id
    forgery = None
    if probe_id is not None:
        forgery = _forgery(signed_id, verp_id, _original_message_ids(message), keys)
    proof = None
    if forgery is None:
        proof = BounceProof.SIGNED_TOKEN if signed_id is not None else BounceProof.VERP_TAG
    reason = f"{bounce_type} bounce" if bounce_type else "a bounce that reports no failed recipient"
    return BounceReport(
        probe_id=probe_id,
        proof=proof if probe_id is not None else None,
        bounce_type=bounce_type,
        status=status,
        reporting_mta=next((b.reporting_mta for b in blocks if b.reporting_mta), None),
        recipients=tuple(sorted(recipients)),
        reason=reason,
        forgery=forgery,
        blocks=blocks,
    )
