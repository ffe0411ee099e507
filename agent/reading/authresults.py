"""SPF, DKIM, DMARC and ARC verdicts from the Authentication-Results headers a receiver trusts.

Anyone can write an Authentication-Results header into a message they send; only the ones the
receiving side added mean anything (RFC 8601 section 7.1). The receiving side's headers are always a
prefix of the header list, since a sender cannot add headers above the receiver's. So:

- with no configured authserv-ids, only the topmost header is trusted;
- with a list, headers are trusted from the top down while their authserv-id is listed; the first
  one unlisted or unparseable ends the trusted run, since everything below it may be the sender's;
- per method the topmost trusted header that reports it decides, so a header the sender wrote with
  a listed authserv-id (receivers should strip those, not all do) cannot overrule the real verdict.

Headers are parsed with `authres`; a header it cannot parse is counted and ends the trusted run,
it never raises. Some real-world deviations are accepted first: Microsoft's headers carry no
authserv-id, Yahoo's end in ";", and non-ASCII text (legal in UTF-8 headers, only ever in comments
and values) would stop authres's ASCII-only grammar.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import Message

import authres
import authres.arc
import authres.dmarc

from agent.model import AuthMethod, AuthResult, AuthVerdicts

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_CHARS",
    "AuthReading",
    "parse_auth_verdicts",
    "read_auth_results",
]

HEADER_NAME = "authentication-results"
MAX_HEADER_CHARS = 8192  # real headers are under 2 KiB; authres is quadratic in the worst case
MAX_HEADERS = 16  # a backstop on work per message; receivers add a handful at most

# The DMARC and ARC modules give those methods their own result classes; only method and result
# are read here, but this keeps parsing identical to what authres documents for them.
_FEATURES = authres.FeatureContext(authres.dmarc, authres.arc)

# "spf=pass ..." with no "authserv-id;" in front: Microsoft 365 / Exchange Online Protection.
_NO_AUTHSERV_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\s*(?:/\s*\d+\s*)?=")
_PLACEHOLDER_ID = "authserv-id.invalid"
_FOLD = re.compile(r"\r\n|\r|\n")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")

_RESULT_ALIASES = {"hardfail": AuthResult.FAIL}  # RFC 5451's name for SPF fail, still seen
_METHODS = {method.value: method for method in AuthMethod}


@dataclass(frozen=True, slots=True)
class AuthReading:
    """The verdicts and how they were reached, for logging."""

    verdicts: AuthVerdicts
    trusted: int  # headers whose results were used
    unparseable: int  # headers examined but unreadable (bad syntax or over MAX_HEADER_CHARS)


@dataclass(frozen=True, slots=True)
class _Parsed:
    authserv_id: str | None  # None: the header had none (Microsoft's form)
    results: tuple[tuple[str, str], ...]  # (method, result), lowercase, in header order


def _header_values(message: Message) -> Iterator[str]:
    # raw_items(): the stored values, not the policy's parsed objects (which can raise lazily).
    for name, value in message.raw_items():
        if name.strip().lower() == HEADER_NAME:
            yield str(value)


def _normalise(value: str) -> str:
    text = _FOLD.sub("", value)
    text = _NON_ASCII.sub("?", text)  # also replaces the surrogates of undecodable 8-bit bytes
    return text.strip().rstrip(";").rstrip()


def _parse(value: str) -> _Parsed | None:
    if len(value) > MAX_HEADER_CHARS:
        return None
    text = _normalise(value)
    id_less = _NO_AUTHSERV_ID.match(text) is not None
    if id_less:
        text = f"{_PLACEHOLDER_ID}; {text}"
    try:
        header = _FEATURES.parse_value(text)
    except Exception:  # authres raises its own SyntaxError, but also RecursionError on nesting
        return None
    authserv_id = None if id_less else str(header.authserv_id).lower()
    results = tuple(
        (str(result.method).lower(), str(result.result).lower())
        for result in header.results
        if hasattr(result, "method")  # the lone `none` clause has neither method nor result
    )
    return _Parsed(authserv_id=authserv_id, results=results)


def _best(results: list[str]) -> AuthResult | None:
    if not results:
        return None
    verdicts = [_RESULT_ALIASES.get(result) or AuthResult.parse(result) for result in results]
    return AuthResult.PASS if AuthResult.PASS in verdicts else verdicts[0]


def read_auth_results(message: Message, *, trusted_authserv_ids: Sequence[str]) -> AuthReading:
    """The verdicts from `message`'s trusted Authentication-Results headers, with counts."""
    trusted_ids = {authserv_id.strip().lower() for authserv_id in trusted_authserv_ids}
    found: dict[AuthMethod, list[str]] = {}
    trusted = unparseable = 0
    for index, value in enumerate(_header_values(message)):
        if index >= MAX_HEADERS or (not trusted_ids and index >= 1):
            break
        parsed = _parse(value)
        if parsed is None:
            unparseable += 1
            break
        if trusted_ids and parsed.authserv_id not in trusted_ids:
            break
        trusted += 1
        in_header: dict[AuthMethod, list[str]] = {}
        for method_name, result in parsed.results:
            method = _METHODS.get(method_name)
            if method is not None:
                in_header.setdefault(method, []).append(result)
        for method, results in in_header.items():
            found.setdefault(method, results)  # the topmost header with the method decides
    verdicts = AuthVerdicts(
        spf=_best(found.get(AuthMethod.SPF, [])),
        dkim=_best(found.get(AuthMethod.DKIM, [])),
        dmarc=_best(found.get(AuthMethod.DMARC, [])),
        arc=_best(found.get(AuthMethod.ARC, [])),
    )
    return AuthReading(verdicts=verdicts, trusted=trusted, unparseable=unparseable)


def parse_auth_verdicts(message: Message, *, trusted_authserv_ids: Sequence[str]) -> AuthVerdicts:
    """The spf/dkim/dmarc/arc verdicts from `message`'s trusted Authentication-Results headers.

    Per method, the topmost trusted header reporting it decides; within it a `pass` wins (two
    DKIM signatures, one broken, is a pass), otherwise its first result counts. Use
    `read_auth_results` to also learn how many headers were unparseable.
    """
    return read_auth_results(message, trusted_authserv_ids=trusted_authserv_ids).verdicts
