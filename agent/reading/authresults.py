"""Verdicts from the Authentication-Results fields a receiver wrote, read resinfo by resinfo.

Anyone can write an Authentication-Results field into a message they send; only the ones the
receiving side added mean anything (RFC 8601 section 7.1). The receiving side's fields are always
a prefix of the header list, since a sender cannot add fields above the receiver's. So fields are
trusted from the top down while a trust rule (`agent.providers`: an exact authserv-id, a
`*.suffix`, or `topmost`) matches them; the first field that matches none ends the trusted run,
since everything below it may be the sender's. ARC-Authentication-Results and vendor look-alikes
(`X-ME-Authentication-Results`) have other names and are never read.

Real receivers stray from the grammar, so a field is cut into its resinfos (at `;` outside
comments and quoted strings) and each resinfo is parsed on its own with `authres`: one that cannot
be parsed is counted and skipped, and neither ends the run nor drops its neighbours. Before
parsing, comments are taken out (kept as the resinfo's comment) and property values are swapped
for placeholders, because real values (`<>`, URLs, bare `@domain`) are outside authres's token
grammar; the values are put back from the placeholders afterwards.

Per method, the topmost trusted field reporting it decides (within it a `pass` wins), so a field
the sender wrote with a trusted id below the real one cannot overrule it. DKIM is the exception:
installations report signatures in several fields (iCloud, OpenDKIM next to OpenDMARC), so every
signature in the run is kept and any `pass` makes the summary `pass`; a lower field's signature
counts only if it names a signing domain no field above it reported, so a forged `dkim=pass`
below a real `dkim=fail` still changes nothing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any

import authres
import authres.arc
import authres.dmarc

from agent.model import AuthDetail, AuthMethod, AuthResult, AuthVerdicts, DkimSignature
from agent.providers import TrustRule, parse_trust_rule

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_CHARS",
    "RESULT_ALIASES",
    "AuthReading",
    "normalise_result",
    "parse_auth_verdicts",
    "read_auth_results",
]

HEADER_NAME = "authentication-results"
MAX_HEADER_CHARS = 8192  # real fields are under 2 KiB; a backstop on work per field
MAX_HEADERS = 16  # a backstop on work per message; receivers add a handful at most
MAX_RESINFOS = 64  # per field; the most seen in real fields is about a dozen
_SHAPES = 512  # resinfo shapes kept parsed: a few per receiver; at most 4 MiB of text

# The DMARC and ARC modules give those methods their own result classes; only method, result,
# reason and properties are read here.
_FEATURES = authres.FeatureContext(authres.dmarc, authres.arc)

# Result words outside RFC 8601's, as receivers write them, and what they mean in its words.
# The raw word is kept in each AuthDetail.
RESULT_ALIASES: dict[str, AuthResult] = {
    "hardfail": AuthResult.FAIL,  # RFC 5451's name for SPF fail, still seen
    "tempfail": AuthResult.TEMPERROR,  # old SPF/DKIM milters
    "unknown": AuthResult.PERMERROR,  # RFC 4408 drafts' name for permerror (Sender ID, SPF)
    # Microsoft: no DMARC record, but the message would have passed one. No policy was
    # evaluated, which is RFC 8601's `none`; counting it as `pass` would hide a missing record.
    "bestguesspass": AuthResult.NONE,
    # Microsoft compauth: "passed with low confidence". Neither a pass nor a failure.
    "softpass": AuthResult.NEUTRAL,
}

_FOLD = re.compile(r"\r\n|\r|\n")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# "method[/version]=result": the start of a resinfo. A field that starts with one has no
# authserv-id (Microsoft's form).
_RESINFO_START = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9_-]*)\s*(?:/\s*\d+\s*)?=")
_METHOD = re.compile(r"[a-z0-9][a-z0-9_-]*")
_RESULT = re.compile(r"[a-z][a-z-]*")
_QUOTED_SPLIT = re.compile(r"(\"(?:[^\"\\]|\\.)*\")")
_SPACED_DOT = re.compile(r"(?<=[A-Za-z0-9_-])\s*\.\s*(?=[A-Za-z])")
_TENANT = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_AUTHSERV_ID = re.compile(r"[A-Za-z0-9_.-]+|\"(?:[^\"\\]|\\.)*\"")
# key=value with the value a quoted string or a run of anything but space, ";" and quotes;
# possibly empty (Gmail once wrote "smtp.mail=" with nothing after it).
_ASSIGNMENT = re.compile(r"([A-Za-z0-9_.-]+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^\s\";]*)")


@dataclass(frozen=True, slots=True)
class AuthReading:
    """The verdicts and how they were reached, for logging."""

    verdicts: AuthVerdicts
    trusted: int  # fields whose results were used
    unparseable: int  # fields or resinfos examined but unreadable (bad syntax, over the caps)


@dataclass(frozen=True, slots=True)
class _Field:
    authserv_id: str | None  # None: the field had none (Microsoft's form)
    details: tuple[AuthDetail, ...]
    unparseable: int


def normalise_result(word: str) -> AuthResult:
    """A result word as RFC 8601 names it; words it does not know count as `permerror`."""
    word = word.strip().lower()
    return RESULT_ALIASES.get(word) or AuthResult.parse(word)


def _header_values(message: Message) -> Iterator[str]:
    # raw_items(): the stored values, not the policy's parsed objects (which can raise lazily).
    for name, value in message.raw_items():
        if name.strip().lower() == HEADER_NAME:
            yield str(value)


def _split(text: str) -> tuple[list[str], list[str]] | None:
    """`text` cut at top-level ";", each piece with its comments taken out, and the comments;
    None when a comment or a quoted string is not closed."""
    pieces: list[str] = []
    comments: list[list[str]] = [[]]
    current: list[str] = []
    comment: list[str] = []
    depth = 0
    quoted = escaped = False
    for char in text:
        if escaped:
            (comment if depth else current).append(char)
            escaped = False
        elif char == "\\" and (quoted or depth):
            (comment if depth else current).append(char)
            escaped = True
        elif quoted:
            current.append(char)
            quoted = char != '"'
        elif depth:
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if depth == 0:
                    comments[-1].append("".join(comment).strip())
                    comment = []
                    current.append(" ")  # a comment separates tokens, as whitespace does
                    continue
            comment.append(char)
        elif char == "(":
            depth = 1
        elif char == '"':
            quoted = True
            current.append(char)
        elif char == ";":
            pieces.append("".join(current))
            comments.append([])
            current = []
        else:
            current.append(char)
    if depth or quoted:
        return None
    pieces.append("".join(current))
    return pieces, [" ".join(c for c in group if c) for group in comments]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


# authres takes ~0.25 ms to parse one resinfo (seven in a Gmail field). With its values swapped
# for placeholders the text is only the resinfo's shape (method, result, property names), which
# repeats from probe to probe: each shape is parsed once. Bounded, since senders choose shapes.
@functools.lru_cache(maxsize=_SHAPES)
def _parse_shape(text: str) -> Any | None:
    """authres's reading of one resinfo's shape (never changed by its callers), or None."""
    try:
        header = _FEATURES.parse_value(text)
    except Exception:  # authres raises its own SyntaxError, and more on hostile input
        return None
    if len(header.results) != 1 or not hasattr(header.results[0], "method"):
        return None
    return header.results[0]


def _resinfo(piece: str, comment: str, authserv_id: str | None) -> AuthDetail | None:
    """One resinfo (comments already out) as a detail; None when it cannot be read."""
    match = _RESINFO_START.match(piece)
    if match is None:
        return None
    # Every value after the result goes in as a placeholder token authres accepts, whatever
    # it really is; the real values come back from `values`.
    values: dict[str, str] = {}
    rest = piece[match.end() :]
    result_match = re.match(r"\s*([A-Za-z0-9_-]+)", rest)
    if result_match is None:
        return None
    head = piece[: match.end()] + result_match.group(1)
    tail = rest[result_match.end() :]
    loose: list[tuple[str, str]] = []  # key=value without a ptype, which RFC 8601 has no place for

    def swap(assignment: re.Match[str]) -> str:
        key, value = assignment.group(1), _unquote(assignment.group(2))
        if key.lower() != "reason" and "." not in key:
            loose.append((key.lower(), value))
            return " "
        placeholder = f"v{len(values)}"
        values[placeholder] = value
        return f" {key}={placeholder} "

    # "policy . expired" (RFC 8601 B.7): CFWS is allowed around the dot of a property name.
    tail = "".join(
        part if part.startswith('"') else _SPACED_DOT.sub(".", part)
        for part in _QUOTED_SPLIT.split(tail)
    )
    if _ASSIGNMENT.sub("", tail).strip():  # words that are no key=value: not a resinfo
        return None
    tail = _ASSIGNMENT.sub(swap, tail)
    parsed = _parse_shape(f"x; {head} {tail}")
    if parsed is None:
        return None
    method, raw_result = str(parsed.method).lower(), str(parsed.result).lower()
    if not _METHOD.fullmatch(method) or not _RESULT.fullmatch(raw_result):
        return None
    reason = values.get(str(parsed.reason)) if parsed.reason is not None else None
    properties = tuple(
        (f"{prop.type}.{prop.name}".lower(), values.get(str(prop.value), str(prop.value)))
        for prop in parsed.properties
    )
    return AuthDetail(
        method=method,
        result=normalise_result(raw_result),
        raw_result=raw_result,
        authserv_id=authserv_id,
        reason=reason,
        comment=comment or None,
        properties=properties + tuple(loose),
    )


@dataclass(frozen=True, slots=True)
class _Head:
    """A field cut into its resinfos, with its authserv-id: enough to decide trust."""

    authserv_id: str | None  # None: the field had none (Microsoft's form)
    pieces: list[tuple[str, str]]  # the resinfos after the id, each with its comment


def _field_head(value: str) -> _Head | None:
    """A field's authserv-id and its resinfos, unparsed; None when not even the id can be
    read."""
    if len(value) > MAX_HEADER_CHARS:
        return None
    text = _NON_ASCII.sub("?", _FOLD.sub("", value))  # also the surrogates of 8-bit bytes
    split = _split(text)
    if split is None:
        return None
    pieces, comments = split
    first = pieces[0].strip()
    authserv_id: str | None
    if _RESINFO_START.match(first):
        authserv_id, start = None, 0
    else:
        id_match = _AUTHSERV_ID.match(first)
        if id_match is None:
            return None
        authserv_id = _unquote(id_match.group(0)).lower()
        version = first[id_match.end() :].strip()
        if version.isdigit() and version != "1":
            return None  # RFC 8601 section 2.2: a version this reader does not know
        # Anything else after the id (Yahoo's legacy "  from=yahoo.com") is not a resinfo.
        start = 1
    return _Head(authserv_id, list(zip(pieces, comments, strict=True))[start:][:MAX_RESINFOS])


def _parse_field(head: _Head) -> _Field:
    """A trusted field's readable resinfos (untrusted ones are never parsed: not worth it)."""
    details: list[AuthDetail] = []
    unparseable = 0
    for piece, comment in head.pieces:
        words = " ".join(piece.split())
        if not words or words.lower() == "none":
            continue
        if _TENANT.fullmatch(words):
            continue  # Microsoft repeats its tenant's domain between resinfos
        detail = _resinfo(words, comment, head.authserv_id)
        if detail is None:
            unparseable += 1
        else:
            details.append(detail)
    return _Field(authserv_id=head.authserv_id, details=tuple(details), unparseable=unparseable)


def _prop(detail: AuthDetail, *names: str) -> str | None:
    for name in names:
        for key, value in detail.properties:
            if key == name:
                return value
    return None


def _signature(detail: AuthDetail) -> DkimSignature:
    domain = _prop(detail, "header.d")
    identity = _prop(detail, "header.i")
    if domain is None and identity is not None and "@" in identity:
        domain = identity.rpartition("@")[2]
    return DkimSignature(
        domain=domain.lower() if domain and domain.lower() != "none" else None,
        selector=_prop(detail, "header.s", "header.selector"),
        result=detail.result,
        raw_result=detail.raw_result,
    )


def _summary(results: Sequence[AuthResult]) -> AuthResult | None:
    if not results:
        return None
    return AuthResult.PASS if AuthResult.PASS in results else results[0]


def _rules(trusted_authserv_ids: Sequence[str]) -> tuple[TrustRule, ...]:
    if not trusted_authserv_ids:
        return (parse_trust_rule("topmost"),)
    return tuple(parse_trust_rule(text) for text in trusted_authserv_ids)


def read_auth_results(message: Message, *, trusted_authserv_ids: Sequence[str]) -> AuthReading:
    """The verdicts from `message`'s trusted Authentication-Results fields, with counts.

    `trusted_authserv_ids` are trust rules (`agent.providers.parse_trust_rule`); empty means
    `topmost`. A rule that is not valid raises ValueError (the config validates them first).
    """
    rules = _rules(trusted_authserv_ids)
    fields: list[_Field] = []
    unparseable = 0
    for index, value in enumerate(_header_values(message)):
        if index >= MAX_HEADERS:
            break
        head = _field_head(value)
        authserv_id = head.authserv_id if head is not None else None
        if not any(rule.matches(authserv_id, index=index) for rule in rules):
            if head is None:
                unparseable += 1
            break
        if head is None:  # trusted by position, but unreadable: nothing below is the receiver's
            unparseable += 1
            break
        parsed = _parse_field(head)
        unparseable += parsed.unparseable
        fields.append(parsed)
    return AuthReading(verdicts=_verdicts(fields), trusted=len(fields), unparseable=unparseable)


def _verdicts(fields: Sequence[_Field]) -> AuthVerdicts:
    methods: dict[str, AuthResult] = {}
    for trusted_field in fields:
        in_field: dict[str, list[AuthResult]] = {}
        for detail in trusted_field.details:
            in_field.setdefault(detail.method, []).append(detail.result)
        for method, results in in_field.items():
            summary = _summary(results)
            if summary is not None:
                methods.setdefault(method, summary)  # the topmost field with the method decides
    signatures: list[DkimSignature] = []
    counted: list[DkimSignature] = []
    for trusted_field in fields:
        above = {signature.domain for signature in signatures}
        in_field_signatures = [
            _signature(detail)
            for detail in trusted_field.details
            if detail.method == AuthMethod.DKIM.value
        ]
        for signature in in_field_signatures:
            if not above or (signature.domain is not None and signature.domain not in above):
                counted.append(signature)
        signatures.extend(in_field_signatures)
    dkim = methods.get(AuthMethod.DKIM.value)
    if any(signature.result is AuthResult.PASS for signature in counted):
        dkim = AuthResult.PASS
    if dkim is not None:
        methods[AuthMethod.DKIM.value] = dkim
    return AuthVerdicts(
        spf=methods.get(AuthMethod.SPF.value),
        dkim=dkim,
        dmarc=methods.get(AuthMethod.DMARC.value),
        arc=methods.get(AuthMethod.ARC.value),
        methods=methods,
        details=tuple(detail for trusted_field in fields for detail in trusted_field.details),
        dkim_signatures=tuple(signatures),
    )


def parse_auth_verdicts(message: Message, *, trusted_authserv_ids: Sequence[str]) -> AuthVerdicts:
    """The verdicts from `message`'s trusted Authentication-Results fields (see the module
    docstring for the rules). Use `read_auth_results` to also learn how many fields and
    resinfos were unparseable."""
    return read_auth_results(message, trusted_authserv_ids=trusted_authserv_ids).verdicts
