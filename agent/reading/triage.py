"""What a message in a seed mailbox is: our probe, a forgery, a bounce, an auto-reply, or noise.

Only a message whose own `X-Deliverability-Probe` header carries a valid signature is a probe, and
never one that looks like a bounce or an auto-reply: those often quote or attach the whole probe,
signature included, and counting them would report a placement that never happened. For them the
quoted probe id is still returned, as information for whoever tracks bounces.

Input is hostile by assumption (anyone can mail a seed mailbox), so the message is parsed with the
`compat32` policy, whose header access does not parse lazily and raise, headers are read raw, and
anything unexpected ends as MALFORMED rather than an exception in a watcher.
"""

from __future__ import annotations

import enum
import re
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.utils import collapse_rfc2231_value, decode_rfc2231, parseaddr

from agent.model import AuthVerdicts, Outcome, SpamVerdict
from agent.reading.authresults import read_auth_results
from agent.reading.probe_token import (
    PROBE_HEADER,
    PROBE_ID_PATTERN,
    SIGNATURE_PATTERN,
    SUBJECT_PREFIX,
    KeyRing,
    parse_probe_header,
)
from agent.reading.spam import read_spam_verdicts

__all__ = [
    "MAX_HEADER_BYTES",
    "Triage",
    "TriageKind",
    "classify_reply",
    "own_parts",
    "placement_of",
    "triage_message",
]

MAX_HEADER_BYTES = 1 << 20  # real header sections are tens of KiB; beyond this, refuse to look
_MAX_SCAN_CHARS = 4 << 20  # text searched for a quoted probe id in bounces and auto-replies
_MAX_FIELD_CHARS = 4096  # of From and Subject given to the stdlib decoders, which are superlinear


class TriageKind(enum.StrEnum):
    """What a message in a seed mailbox is."""

    PROBE = "probe"
    FORGED = "forged"  # a probe header without a valid signature
    BOUNCE = "bounce"
    AUTO_REPLY = "auto_reply"
    UNRELATED = "unrelated"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Triage:
    """The verdict on one message; `reason` is short, for logs, and never holds the secret."""

    kind: TriageKind
    probe_id: str | None  # PROBE: the probe; BOUNCE/AUTO_REPLY: the probe it quotes, if found
    auth: AuthVerdicts
    reason: str
    probe_id_signed: bool = False  # probe_id came with a valid signature (always for PROBE)
    auth_unparseable: int = 0  # Authentication-Results headers that could not be read
    spam: tuple[SpamVerdict, ...] = ()  # PROBE: the receiving hop's spam-filter verdicts


_BARE_CR = re.compile(rb"\r(?!\n)")
# Every Content-Type field, folded lines included, in any part: the stdlib's parameter parser is
# superlinear, and the parser itself reads "boundary" from each multipart one.
_CONTENT_TYPE_FIELD = re.compile(rb"(?im)^content-type:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*")
_MAX_CONTENT_TYPE_BYTES = 8192  # real ones are well under 1 KiB
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FOLD = re.compile(r"\r\n|\r|\n")
_COMMENT = re.compile(r"\([^()]*\)")  # no "(" inside: linear even on "((((..."
_MAX_TOKEN_CHARS = 1024
_MAX_OWN_PARTS = 256  # MIME parts looked at for a DSN part; real bounces have a handful

_BOUNCE_SUBJECT = re.compile(
    r"\s*(?:undeliver(?:ed|able)|delivery status notification|returned mail"
    r"|(?:mail )?delivery (?:has )?failed|delivery failure|failure notice|non-?delivery"
    r"|mail system error|delayed mail|warning: could not send)",
    re.IGNORECASE,
)
_AUTO_REPLY_SUBJECT = re.compile(
    r"\s*(?:automatic reply|auto[- ]?reply|auto[- ]?response|auto:|autosvar|abwesenheitsnotiz"
    r"|automatische antwort|r[ée]ponse automatique|respuesta autom[áa]tica"
    r"|risposta automatica|resposta autom[áa]tica|automatisch antwoord"
    r"|.*\bout of (?:the )?office\b)",
    re.IGNORECASE,
)
_BOUNCE_SENDERS = frozenset({"mailer-daemon", "postmaster"})
_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_REPORT_TYPES = frozenset({"delivery-status", "disposition-notification", "feedback-report"})
_AUTO_SUBMITTED = frozenset({"auto-generated", "auto-replied", "auto-notified"})
_AUTO_REPLY_HEADERS = ("X-Autoreply", "X-Autorespond")

_QUOTED_HEADER = re.compile(
    rf"(?i:{PROBE_HEADER}):\s*id\s*=\s*({PROBE_ID_PATTERN})\s*;\s*sig\s*=\s*({SIGNATURE_PATTERN})"
)
_QUOTED_MESSAGE_ID = re.compile(rf"\b({PROBE_ID_PATTERN})\.({SIGNATURE_PATTERN})@")
_QUOTED_SUBJECT = re.compile(rf"(?i:{SUBJECT_PREFIX})\s+({PROBE_ID_PATTERN})\b")
_MAX_VERIFICATIONS = 64  # quoted ids checked per message: bounds HMAC work on a crafted flood


# Each message's (and part's) fields by lowercased name, built at the first look: triage asks
# for a dozen names, and a received message has dozens of fields, so not one pass over all of
# them per name (issue 15). Weak keys: gone with the parsed message.
_FIELDS: weakref.WeakKeyDictionary[Message, dict[str, list[str]]] = weakref.WeakKeyDictionary()


def _headers(message: Message, name: str) -> list[str]:
    """Raw, unfolded values of every `name` header (compat32 keeps undecodable bytes escaped)."""
    fields = _FIELDS.get(message)
    if fields is None:
        fields = {}
        for key, value in message.raw_items():
            fields.setdefault(key.strip().lower(), []).append(str(value))
        _FIELDS[message] = fields
    return [_FOLD.sub("", value).strip() for value in fields.get(name.lower(), ())]


def _first(message: Message, name: str) -> str:
    values = _headers(message, name)
    return values[0] if values else ""


def _decoded(value: str) -> str:
    """An RFC 2047-decoded header value; the raw value when it does not decode."""
    value = value[:_MAX_FIELD_CHARS]
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # unknown charsets, bad base64, escaped 8-bit bytes
        return value


def _local_part(sender: str) -> str:
    """The local part of a From value's address, lowercased; "" when it does not parse."""
    try:
        address = parseaddr(sender[:_MAX_FIELD_CHARS])[1]
    except Exception:  # parseaddr recurses per nested comment: RecursionError
        return ""
    return (address.rpartition("@")[0] if "@" in address else address).lower()


def _token(value: str) -> str:
    """The first token of a structured value: `auto-replied; owner-email=x` -> `auto-replied`."""
    return _COMMENT.sub(" ", value[:_MAX_TOKEN_CHARS]).split(";", 1)[0].strip().lower()


def _report_type(message: Message) -> str:
    value = message.get_param("report-type")
    if isinstance(value, tuple):  # RFC 2231 encoded
        value = collapse_rfc2231_value(value)
    if value is None:  # the stdlib decodes RFC 2231 only for names without "-"
        extended = message.get_param("report-type*")
        if isinstance(extended, str):
            charset, language, text = decode_rfc2231(extended)  # a list at runtime, not a tuple
            value = collapse_rfc2231_value((charset, language, text))
    return _token(value or "")


def own_parts(message: Message) -> Iterator[Message]:
    """The message and its MIME parts, without descending into attached messages: a bounce
    forwarded as an attachment (message/rfc822) is a forward, not a bounce."""
    stack = [message]
    seen = 0
    while stack and seen < _MAX_OWN_PARTS:
        part = stack.pop()
        seen += 1
        yield part
        if part.get_content_maintype() == "message" or not part.is_multipart():
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend(p for p in reversed(payload) if isinstance(p, Message))


def _dsn_reason(message: Message) -> str | None:
    """A delivery-status report of this message itself (RFC 3464), not of one attached to it."""
    if message.get_content_type() == "multipart/report" and _report_type(message) in (
        "delivery-status",
        "global-delivery-status",
    ):
        return "bounce: multipart/report delivery-status"
    if any(part.get_content_type() in _DSN_TYPES for part in own_parts(message)):
        return "bounce: delivery-status part"
    return None


def _auto_reply_marker(message: Message, subject: str) -> str | None:
    """What only auto-responders write. A bounce's subject can quote an auto-reply's
    ("Undeliverable: Automatic reply: ..."), so the subject counts only without a bounce one."""
    for name in _AUTO_REPLY_HEADERS:
        if _headers(message, name):
            return f"auto-reply: {name}"
    if any(_token(value) == "auto_reply" for value in _headers(message, "Precedence")):
        return "auto-reply: Precedence auto_reply"
    if _AUTO_REPLY_SUBJECT.match(subject) and not _BOUNCE_SUBJECT.match(subject):
        return "auto-reply: subject"
    return None


def _text_bounce_marker(message: Message, subject: str) -> str | None:
    """A bounce without a DSN part: sent by the mail system, or titled like one."""
    sender = _first(message, "From")
    # parseaddr is costly and only these two local parts matter: skip it when neither is there.
    lowered = sender.lower()
    if any(name in lowered for name in _BOUNCE_SENDERS) and _local_part(sender) in _BOUNCE_SENDERS:
        return "bounce: From mailer-daemon/postmaster"
    if _BOUNCE_SUBJECT.match(subject):
        return "bounce: subject"
    return None


def _auto_submitted(message: Message, looks_ours: bool) -> str | None:
    if message.get_content_type() == "multipart/report":
        report_type = _report_type(message)
        shown = report_type if report_type in _REPORT_TYPES else "other"
        return f"auto-reply: multipart/report {shown}"
    for value in _headers(message, "Auto-Submitted"):
        token = _token(value)
        # Our probes say auto-generated; whether one is really ours is the signature's call.
        if token in ("no", "") or (token == "auto-generated" and looks_ours):
            continue
        shown = token if token in _AUTO_SUBMITTED else "other"
        return f"auto-reply: Auto-Submitted {shown}"
    if _headers(message, "X-MS-Exchange-Inbox-Rules-Loop"):
        return "auto-reply: X-MS-Exchange-Inbox-Rules-Loop"  # sent by an Exchange inbox rule
    return None


def classify_reply(
    message: Message, subject: str, looks_ours: bool
) -> tuple[TriageKind, str] | None:
    """BOUNCE or AUTO_REPLY with the reason, or None for anything else.

    Order matters, strongest evidence first: a DSN part of the message itself; what only
    auto-responders write (X-Autoreply, an "Automatic reply:" subject: Exchange sends these
    with an empty Return-Path, like a bounce); a text bounce (mailer-daemon, a bounce subject;
    Exim and Postfix bounces also say Auto-Submitted); Auto-Submitted and other reports; last,
    an empty Return-Path alone."""
    if reason := _dsn_reason(message):
        return TriageKind.BOUNCE, reason
    if reason := _auto_reply_marker(message, subject):
        return TriageKind.AUTO_REPLY, reason
    if reason := _text_bounce_marker(message, subject):
        return TriageKind.BOUNCE, reason
    if reason := _auto_submitted(message, looks_ours):
        return TriageKind.AUTO_REPLY, reason
    if any(re.sub(r"\s", "", value) == "<>" for value in _headers(message, "Return-Path")):
        return TriageKind.BOUNCE, "bounce: empty Return-Path"
    return None


def _scan_texts(message: Message, raw: bytes) -> Iterator[str]:
    """Text a quoted probe may hide in: the raw message, then decoded parts (base64, QP)."""
    budget = _MAX_SCAN_CHARS
    yield raw[:budget].decode("latin-1")
    budget -= min(len(raw), budget)
    for part in message.walk():
        if budget <= 0:
            return
        if part.is_multipart():
            continue
        if _token(_first(part, "Content-Transfer-Encoding")) not in ("base64", "quoted-printable"):
            continue  # already searched as it stands in the raw message
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            yield payload[:budget].decode("latin-1")
            budget -= min(len(payload), budget)


def _quoted_probe(message: Message, raw: bytes, subject: str, keys: KeyRing) -> tuple[str, bool]:
    """The probe a bounce or auto-reply is about: (id, signed) or ("", False) if none is found."""
    for part in message.walk():
        for value in _headers(part, PROBE_HEADER):
            token = parse_probe_header(value)
            if token and keys.verify(token.probe_id, token.signature):
                return token.probe_id, True
    unsigned = ""
    checks = 0
    for text in (subject, *_scan_texts(message, raw)):
        for pattern in (_QUOTED_HEADER, _QUOTED_MESSAGE_ID):
            for match in pattern.finditer(text):
                if checks >= _MAX_VERIFICATIONS:
                    break
                checks += 1
                if keys.verify(match[1], match[2]):
                    return match[1], True
        if not unsigned and (quoted := _QUOTED_SUBJECT.search(text)):
            unsigned = quoted[1]
    return unsigned, False


def _triage(raw: bytes, keys: KeyRing, trusted_authserv_ids: Sequence[str]) -> Triage:
    none = AuthVerdicts()
    if not raw.strip():
        return Triage(TriageKind.MALFORMED, None, none, "empty message")
    end = _HEADER_END.search(raw)
    head = raw[: end.start()] if end else raw
    if len(head) > MAX_HEADER_BYTES:
        return Triage(TriageKind.MALFORMED, None, none, "header section too large")
    # A lone CR or a NUL makes a header line that one parser sees and another does not.
    if _BARE_CR.search(head) or b"\x00" in head:
        return Triage(TriageKind.MALFORMED, None, none, "bare CR or NUL in header section")
    if any(
        match.end() - match.start() > _MAX_CONTENT_TYPE_BYTES
        for match in _CONTENT_TYPE_FIELD.finditer(raw)
    ):
        return Triage(TriageKind.MALFORMED, None, none, "Content-Type field too long")
    message = BytesParser(policy=policy.compat32).parsebytes(raw)
    if not message.keys():
        return Triage(TriageKind.MALFORMED, None, none, "no header fields")

    reading = read_auth_results(message, trusted_authserv_ids=trusted_authserv_ids)
    auth, unparseable = reading.verdicts, reading.unparseable
    subject = _decoded(_first(message, "Subject"))
    probe_headers = _headers(message, PROBE_HEADER)
    # A probe that lost its header on the way still has our Message-ID; its "auto-generated" is
    # ours, not an auto-responder's.
    ours_by_id = _QUOTED_MESSAGE_ID.search(_first(message, "Message-ID")) is not None

    replied = classify_reply(message, subject, bool(probe_headers) or ours_by_id)
    if replied is not None:
        kind, reason = replied
        probe_id, signed = _quoted_probe(message, raw, subject, keys)
        return Triage(kind, probe_id or None, auth, reason, signed, unparseable)

    if not probe_headers:
        reason = "probe header missing" if ours_by_id else "no probe header"
        return Triage(TriageKind.UNRELATED, None, auth, reason, False, unparseable)
    if len(probe_headers) > 1:
        return Triage(TriageKind.FORGED, None, auth, "several probe headers", False, unparseable)
    token = parse_probe_header(probe_headers[0])
    if token is None:
        return Triage(TriageKind.FORGED, None, auth, "probe header malformed", False, unparseable)
    if not keys.verify(token.probe_id, token.signature):
        return Triage(TriageKind.FORGED, None, auth, "probe signature invalid", False, unparseable)
    spam = read_spam_verdicts(message, trusted_auth_results=reading.trusted)
    return Triage(TriageKind.PROBE, token.probe_id, auth, "signed probe", True, unparseable, spam)


def triage_message(raw: bytes, *, keys: KeyRing, trusted_authserv_ids: Sequence[str]) -> Triage:
    """Classify one raw message from a seed mailbox; never raises on the message's content.
    A probe signed with any secret of `keys` is ours."""
    try:
        return _triage(bytes(raw), keys, trusted_authserv_ids)
    except Exception as exc:  # last line of defence: hostile input must not stop a watcher
        reason = f"unreadable message ({type(exc).__name__})"
        return Triage(TriageKind.MALFORMED, None, AuthVerdicts(), reason)


def _same_mailbox(left: str, right: str) -> bool:
    # RFC 3501 5.1: INBOX is case-insensitive; every other name is compared exactly.
    if left.upper() == "INBOX" and right.upper() == "INBOX":
        return True
    return left == right


def placement_of(folder: str, *, inbox: str, junk: str | None) -> Outcome:
    """Where a probe found in `folder` landed: INBOX, SPAM (the junk folder) or OTHER."""
    if _same_mailbox(folder, inbox):
        return Outcome.INBOX
    if junk is not None and _same_mailbox(folder, junk):
        return Outcome.SPAM
    return Outcome.OTHER
