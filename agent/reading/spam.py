"""Spam-filter verdicts written by the receiving hop: rspamd, SpamAssassin, Microsoft.

Which fields are the receiver's. A sender can write any `X-Spam-*` or `X-Forefront-*` field into
the message it sends, and a sending relay's own outbound filter often does. The receiving hop adds
its fields in one of two places: prepended at the top, above everything it received (amavis,
filters that insert at the top, the receiver's Authentication-Results), or appended at the bottom,
below everything it received (Postfix milters' add-header, rspamd's `milter_headers` through
Postfix, Exchange Online's stamps). For a probe the agent knows where the sent message ends: its
own `X-Deliverability-Probe` field is the last field it writes. So a field counts only when it is

- above the lowest trusted Authentication-Results field (the run `authresults` trusts: the
  receiver's, since a sender cannot write above the receiver's fields); with none trusted, above
  the topmost Received field (the last hop's: SpamAssassin under Exim or amavis writes there), or
- below the probe's own `X-Deliverability-Probe` field (appended after the probe was written).

Everything between (the sent message's own fields and whatever the sending side put above them)
is never read. Per field name the receiver's nearest instance decides: the topmost one above, or
failing that the bottom-most one below (a receiver appends after any sending relay did).

Left open by position alone: a sending relay that appends a filter's fields below the probe header
looks like the receiver. Receivers' filters replace their own fields (rspamd's `milter_headers`
removes an existing `X-Spam-Status`; SpamAssassin removes `X-Spam-*`; Exchange renames incoming
`X-Forefront-Antispam-Report` and `X-Microsoft-Antispam` to `...-Untrusted`), which covers the
filter the receiver runs; another filter's fields appended by the sending side would still be read.

Normalised per source to `SpamVerdict(source, score, threshold, is_spam, category)`:

- rspamd: `X-Spamd-Result: default: False [2.00 / 50.00]` gives score, threshold (the reject
  action's score, the only one rspamd writes there) and rspamd's own flag (true at reject);
  `X-Spam-Status: Yes, score=25.40` (rspamd's form has no `required=`) gives the add-header verdict,
  which overrides the flag; `X-Rspamd-Score` a score only. Category ham or spam.
- SpamAssassin: `X-Spam-Status: Yes, score=6.1 required=5.0 tests=...` gives all three;
  `X-Spam-Flag: YES` says spam; `X-Spam-Score` a score. Category ham or spam.
- Microsoft: SCL (from `X-Forefront-Antispam-Report`, else `X-MS-Exchange-Organization-SCL`) is
  the score on its -1..9 scale, threshold 5 (Microsoft: SCL 5 and 6 are spam, 9 high confidence);
  is_spam from the mailbox delivery `dest:J` (junk) or `dest:I` (inbox), else the filter verdict
  SFV, else SCL >= 5; category from CAT; BCL from `X-Microsoft-Antispam` as `bulk_level`.

Pure: a parsed message in, verdicts out; never raises on content.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.message import Message

from agent.model import SpamCategory, SpamSource, SpamVerdict
from agent.reading.probe_token import PROBE_HEADER

__all__ = ["MICROSOFT_SCL_THRESHOLD", "read_spam_verdicts", "verdicts_of_fields"]

MICROSOFT_SCL_THRESHOLD = 5.0
_MAX_VALUE_CHARS = 16384  # Forefront reports run to ~2 KiB; beyond this a field is not read

_FOLD = re.compile(r"\r\n|\r|\n")
_NUMBER = r"[-+]?\d{1,6}(?:\.\d{1,6})?"
_SPAMD_RESULT = re.compile(
    rf"^\s*[\w-]+\s*:\s*(true|false)\s*\[\s*({_NUMBER})\s*/\s*({_NUMBER})\s*\]", re.IGNORECASE
)
_SPAM_STATUS = re.compile(r"^\s*(yes|no)\b", re.IGNORECASE)
_SCORE = re.compile(rf"\b(?:score|hits)\s*=\s*({_NUMBER})", re.IGNORECASE)
_REQUIRED = re.compile(rf"\brequired\s*=\s*({_NUMBER})", re.IGNORECASE)
_LEADING_NUMBER = re.compile(rf"^\s*({_NUMBER})")

_AUTH_RESULTS = "authentication-results"
_RSPAMD_FIELDS = ("x-spamd-result", "x-rspamd-score")
_STATUS = "x-spam-status"
_SPAMASSASSIN_FIELDS = ("x-spam-flag", "x-spam-score")
_FOREFRONT = "x-forefront-antispam-report"
_MS_ANTISPAM = "x-microsoft-antispam"
_MS_SCL = "x-ms-exchange-organization-scl"
_MS_DELIVERY = "x-microsoft-antispam-mailbox-delivery"
_MICROSOFT_FIELDS = (_FOREFRONT, _MS_ANTISPAM, _MS_SCL, _MS_DELIVERY)
_NAMES = frozenset({*_RSPAMD_FIELDS, _STATUS, *_SPAMASSASSIN_FIELDS, *_MICROSOFT_FIELDS})

# Microsoft's SFV (spam filtering verdict): which say spam and which say not spam; the rest
# (unknown values) leave the decision to SCL.
_SFV_SPAM = frozenset({"spm", "sks", "skb", "blk"})
_SFV_HAM = frozenset({"nspm", "sfe", "ska", "skn", "ski", "skq"})
# Microsoft's CAT (the protection policy that acted), folded into the bounded categories.
_CAT = {
    "spm": SpamCategory.SPAM,
    "hspm": SpamCategory.SPAM,
    "ospm": SpamCategory.SPAM,
    "bulk": SpamCategory.BULK,
    "phsh": SpamCategory.PHISH,
    "hphsh": SpamCategory.PHISH,
    "hphish": SpamCategory.PHISH,
    "malw": SpamCategory.MALWARE,
    "amp": SpamCategory.MALWARE,
    "sap": SpamCategory.MALWARE,
    "spoof": SpamCategory.SPOOF,
    "dimp": SpamCategory.IMPERSONATION,
    "uimp": SpamCategory.IMPERSONATION,
    "gimp": SpamCategory.IMPERSONATION,
}


def _number(text: str | None) -> float | None:
    return None if text is None else float(text)


def _pairs(value: str) -> dict[str, str]:
    """`KEY:value;KEY:value` (Microsoft's fields) as a dict with lowercase keys; first wins."""
    found: dict[str, str] = {}
    for item in value.split(";"):
        key, colon, text = item.partition(":")
        if colon:
            found.setdefault(key.strip().lower(), text.strip())
    return found


def _flag_verdict(is_spam: bool | None) -> SpamCategory:
    if is_spam is None:
        return SpamCategory.UNKNOWN
    return SpamCategory.SPAM if is_spam else SpamCategory.HAM


def _rspamd(fields: dict[str, str], status: str | None) -> SpamVerdict | None:
    score = threshold = None
    is_spam: bool | None = None
    if (result := fields.get("x-spamd-result")) and (match := _SPAMD_RESULT.match(result)):
        is_spam = match[1].lower() == "true"
        score, threshold = float(match[2]), float(match[3])
    if status is not None and (match := _SPAM_STATUS.match(status)):
        is_spam = match[1].lower() == "yes"
        if score is None and (found := _SCORE.search(status)):
            score = float(found[1])
    if score is None and (text := fields.get("x-rspamd-score")):
        score = _number(match[1]) if (match := _LEADING_NUMBER.match(text)) else None
    if score is None and is_spam is None:
        return None
    return SpamVerdict(SpamSource.RSPAMD, score, threshold, is_spam, _flag_verdict(is_spam))


def _spamassassin(fields: dict[str, str], status: str | None) -> SpamVerdict | None:
    score = threshold = None
    is_spam: bool | None = None
    if status is not None and (match := _SPAM_STATUS.match(status)):
        is_spam = match[1].lower() == "yes"
        score = _number(found[1]) if (found := _SCORE.search(status)) else None
        threshold = _number(found[1]) if (found := _REQUIRED.search(status)) else None
    if (flag := fields.get("x-spam-flag")) is not None and is_spam is None:
        word = flag.strip().lower()
        is_spam = True if word == "yes" else False if word == "no" else None
    if score is None and (text := fields.get("x-spam-score")):
        score = _number(match[1]) if (match := _LEADING_NUMBER.match(text)) else None
    if score is None and is_spam is None:
        return None
    return SpamVerdict(SpamSource.SPAMASSASSIN, score, threshold, is_spam, _flag_verdict(is_spam))


def _microsoft(fields: dict[str, str]) -> SpamVerdict | None:
    report = _pairs(fields.get(_FOREFRONT, ""))
    antispam = _pairs(fields.get(_MS_ANTISPAM, ""))
    delivery = _pairs(fields.get(_MS_DELIVERY, ""))
    scl_text = report.get("scl") or fields.get(_MS_SCL, "")
    scl = _number(match[1]) if (match := _LEADING_NUMBER.match(scl_text)) else None
    bcl_text = antispam.get("bcl", "")
    bulk_level = int(bcl_text) if bcl_text.isdigit() and len(bcl_text) < 3 else None
    sfv = report.get("sfv", "").lower()
    dest = delivery.get("dest", "").lower()
    is_spam: bool | None
    if dest in ("j", "i"):  # where Exchange filed it: the decision the user sees
        is_spam = dest == "j"
    elif sfv in _SFV_SPAM or sfv in _SFV_HAM:
        is_spam = sfv in _SFV_SPAM
    elif scl is not None:
        is_spam = scl >= MICROSOFT_SCL_THRESHOLD
    else:
        is_spam = None
    cat = report.get("cat", "").lower()
    # CAT:NONE: no protection policy acted; the verdict alone says ham or spam.
    category = _flag_verdict(is_spam) if cat in ("", "none") else _CAT.get(cat, SpamCategory.OTHER)
    if scl is None and is_spam is None and bulk_level is None and category is SpamCategory.UNKNOWN:
        return None
    threshold = MICROSOFT_SCL_THRESHOLD if scl is not None else None
    return SpamVerdict(SpamSource.MICROSOFT, scl, threshold, is_spam, category, bulk_level)


def verdicts_of_fields(fields: Sequence[tuple[str, str]]) -> tuple[SpamVerdict, ...]:
    """The verdicts of the receiving hop's spam fields, given in order of precedence (the first
    instance of a name decides). At most one verdict per source, in `SpamSource` order."""
    chosen: dict[str, str] = {}
    for name, value in fields:
        key = name.strip().lower()
        if key in _NAMES:
            # An oversized field still takes its name's place (as empty): never a lower one's.
            text = _FOLD.sub("", value).strip() if len(value) <= _MAX_VALUE_CHARS else ""
            chosen.setdefault(key, text)
    # X-Spam-Status is written by both: SpamAssassin's form always says `required=`, rspamd's never.
    status = chosen.get(_STATUS)
    by_spamassassin = status is not None and _REQUIRED.search(status) is not None
    verdicts = (
        _rspamd(chosen, None if by_spamassassin else status),
        _spamassassin(chosen, status if by_spamassassin else None),
        _microsoft(chosen),
    )
    return tuple(verdict for verdict in verdicts if verdict is not None)


def read_spam_verdicts(message: Message, *, trusted_auth_results: int) -> tuple[SpamVerdict, ...]:
    """The spam verdicts the receiving hop wrote into a probe (see the module docstring).

    `trusted_auth_results`: how many Authentication-Results fields, from the top, are trusted
    (`AuthReading.trusted`). Fields between the receiver's and the probe header are the sender's.
    """
    try:
        items = [(str(name), str(value)) for name, value in message.raw_items()]
        names = [name.strip().lower() for name, _ in items]
        # Fields [0, top_end) were prepended by the receiver: down to its lowest trusted
        # Authentication-Results field or, with none trusted, above the topmost Received field.
        top_end = names.index("received") if "received" in names else 0
        seen = 0
        for index, name in enumerate(names):
            if seen >= trusted_auth_results:
                break
            if name == _AUTH_RESULTS:
                seen += 1
                top_end = index + 1
        probe = PROBE_HEADER.lower()
        bottom_start = len(items)  # fields [bottom_start, end) were appended after the probe
        for index in range(len(names) - 1, -1, -1):
            if names[index] == probe:
                bottom_start = index + 1
                break
        bottom_start = max(bottom_start, top_end)
        ordered = [*items[:top_end], *reversed(items[bottom_start:])]
        return verdicts_of_fields(ordered)
    except Exception:  # hostile input must not stop a watcher; no verdict is the safe answer
        return ()
