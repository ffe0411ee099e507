"""Pure parsing and judging of the DNS records that decide deliverability; no I/O here.

`agent.dns.checks` fetches records and hands the text to these functions. Libraries do what they
do best: dkimpy (`dkim.evaluate_pk`, the code its verifier runs) parses DKIM key records and sizes
RSA keys, and its RFC 6376 tag=value parser reads DMARC, MTA-STS and TLS-RPT records, which share
that syntax. The SPF grammar is checked here, term by term against RFC 7208's ABNF, because the
whole-tree lookup count needs the parsed terms and no library offers a parser without its own DNS;
whether an IP is authorised is left to pyspf (see `agent.dns.checks`).

Every malformed record raises `RecordError`, whose message says what is wrong in words an operator
can act on.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import dkim  # type: ignore[import-untyped]
import dkim.util  # type: ignore[import-untyped]

from agent.errors import AgentError, ErrorCategory

__all__ = [
    "DKIM_MIN_RSA_BITS",
    "SPF_LOOKUP_LIMIT",
    "Alignment",
    "BlocklistAnswer",
    "BlocklistResult",
    "CheckResult",
    "DkimKey",
    "DkimKeyResult",
    "DmarcFinding",
    "DmarcPolicy",
    "DmarcRecord",
    "DnsCheck",
    "DnsReport",
    "MtaStsRecord",
    "RecordError",
    "SpfRecord",
    "SpfTerm",
    "TlsRptRecord",
    "blocklist_query_name",
    "classify_blocklist_answer",
    "dkim_key_problem",
    "dmarc_names",
    "is_ip",
    "parse_dkim_key",
    "parse_dmarc",
    "parse_mta_sts",
    "parse_spf",
    "parse_tls_rpt",
    "same_address",
    "select_dmarc",
    "select_mta_sts",
    "select_spf",
    "select_tls_rpt",
]


class DnsCheck(enum.StrEnum):
    """What one DNS check verifies; the bounded `check` label of the DNS metrics."""

    SPF = "spf"  # one SPF record, valid, and every record it includes too
    SPF_LOOKUPS = "spf_lookups"  # at most 10 DNS-querying terms over the whole include tree
    SPF_AUTHORIZED = "spf_authorized"  # every configured sending IP of the domain passes SPF
    DKIM = "dkim"  # every configured selector publishes a usable key
    DMARC = "dmarc"  # one valid DMARC record applies (at the domain or a parent)
    DMARC_ENFORCED = "dmarc_enforced"  # its policy is quarantine or reject
    DMARC_REPORTING = "dmarc_reporting"  # it asks for aggregate reports (rua) at valid URIs
    MX = "mx"  # a seed domain has MX hosts that resolve
    MTA_STS = "mta_sts"  # one valid _mta-sts TXT record
    TLS_RPT = "tls_rpt"  # one valid _smtp._tls TXT record
    RDNS = "rdns"  # a sending IP has a PTR record
    FCRDNS = "fcrdns"  # ... whose name resolves back to the IP
    DNSBL = "dnsbl"  # blocklist lookups (errors only; listings have their own metric)


_E = TypeVar("_E", bound=enum.StrEnum)


class RecordError(AgentError, ValueError):
    """A published record that receivers will not accept as it is."""

    category = ErrorCategory.INPUT


# --- helpers ---------------------------------------------------------------------------------


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def same_address(a: str, b: str) -> bool:
    """Whether two textual IP addresses are the same address (IPv6 spellings differ)."""
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _tags(text: str, what: str) -> dict[str, str]:
    """The tag=value list of a DKIM, DMARC, MTA-STS or TLS-RPT record (RFC 6376 section 3.2)."""
    try:
        raw = dkim.util.parse_tag_value(text.encode("utf-8"))
    except dkim.util.DuplicateTag as exc:
        raise RecordError(f"{what}: tag {_decode(exc.args[0])} appears twice") from None
    except dkim.util.InvalidTagValueList as exc:
        spec = _decode(exc.args[0]).strip() if exc.args else ""
        raise RecordError(f"{what}: malformed tag {spec!r} (expected tag=value)") from None
    return {_decode(key): _decode(value) for key, value in raw.items()}


def _decode(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _select(txts: Iterable[str], version: str) -> list[str]:
    """The records whose first tag is v=<version> (case-insensitive, as receivers compare)."""
    pattern = re.compile(rf"v\s*=\s*{re.escape(version)}\s*(;|$)", re.IGNORECASE)
    return [txt for txt in txts if pattern.match(txt.strip())]


def _versioned_tags(text: str, version: str, what: str) -> dict[str, str]:
    tags = _tags(text, what)
    first = next(iter(tags), None)
    if first != "v" or tags["v"].lower() != version.lower():
        raise RecordError(f"{what}: expected v={version} as the first tag")
    return tags


# --- SPF (RFC 7208) --------------------------------------------------------------------------

SPF_LOOKUP_LIMIT: Final = 10  # RFC 7208 section 4.6.4: more is a permerror at the receiver
_SPF_VERSION_RE: Final = re.compile(r"v=spf1(?: |$)", re.IGNORECASE)
_MODIFIER_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)=(.*)", re.DOTALL)
_MECHANISMS: Final = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_LOOKUP_TERMS: Final = frozenset({"include", "a", "mx", "ptr", "exists", "redirect"})
_QUALIFIERS: Final = "+-~?"
# "%{" letter, transformers (digits, optional r), delimiters, "}"; or an escape: %% %_ %-.
_MACRO_RE: Final = re.compile(r"%(?:\{([slodiphv])(\d*)(r?)([.\-+,/_=]*)\}|[%_-])", re.IGNORECASE)
_TOPLABEL_RE: Final = re.compile(
    r"(?:[0-9A-Za-z]*[A-Za-z][0-9A-Za-z]*|[0-9A-Za-z]+-[0-9A-Za-z-]*[0-9A-Za-z])"
)
_CIDR_RE: Final = r"(?:0|[1-9]\d{0,2})"
_DUAL_CIDR_RE: Final = re.compile(rf"(?:/({_CIDR_RE}))?(?://({_CIDR_RE}))?$")


def select_spf(txts: Iterable[str]) -> list[str]:
    """The TXT records that are SPF records: exactly "v=spf1", then a space or the end."""
    return [txt for txt in txts if _SPF_VERSION_RE.match(txt)]


@dataclass(frozen=True, slots=True)
class SpfTerm:
    """One directive (mechanism with its qualifier) or modifier of an SPF record."""

    text: str  # as written
    name: str  # mechanism or modifier name, lower case
    qualifier: str  # "+", "-", "~" or "?" for mechanisms ("+" when omitted); "" for modifiers
    value: str  # domain-spec, network or modifier value; "" when absent
    modifier: bool = False

    @property
    def counts_lookup(self) -> bool:
        """Whether the term costs one of the 10 DNS lookups an evaluation may make."""
        return self.name in _LOOKUP_TERMS

    @property
    def has_macro(self) -> bool:
        """Whether the value depends on the message (expanded per sender/IP at evaluation)."""
        return "%{" in self.value


@dataclass(frozen=True, slots=True)
class SpfRecord:
    text: str
    terms: tuple[SpfTerm, ...]

    @property
    def has_all(self) -> bool:
        return any(term.name == "all" and not term.modifier for term in self.terms)

    @property
    def redirect(self) -> str | None:
        """The redirect= target, if the record has one that takes effect (no "all" mechanism)."""
        if self.has_all:
            return None  # RFC 7208 section 6.1: redirect is ignored when "all" is present
        return next((t.value for t in self.terms if t.modifier and t.name == "redirect"), None)

    @property
    def includes(self) -> tuple[str, ...]:
        return tuple(t.value for t in self.terms if t.name == "include" and not t.modifier)

    @property
    def lookups(self) -> int:
        """DNS lookups this record alone costs an evaluation that reaches every term."""
        counted = [t for t in self.terms if t.counts_lookup and t.name != "redirect"]
        return len(counted) + (1 if self.redirect is not None else 0)


def parse_spf(text: str) -> SpfRecord:
    """Parse and validate one SPF record; RecordError names the first bad term."""
    if not text.isascii():
        raise RecordError("SPF record: contains non-ASCII characters")
    parts = text.split(" ")
    if not _SPF_VERSION_RE.match(text) or parts[0].lower() != "v=spf1":
        raise RecordError("SPF record: expected to start with v=spf1")
    terms: list[SpfTerm] = []
    seen_modifiers: set[str] = set()
    for part in parts[1:]:
        if not part:
            continue  # several spaces in a row are allowed
        term = _spf_term(part)
        if term.modifier and term.name in ("redirect", "exp"):
            if term.name in seen_modifiers:
                raise RecordError(f"SPF record: {term.name}= appears more than once")
            seen_modifiers.add(term.name)
        terms.append(term)
    return SpfRecord(text, tuple(terms))


def _spf_term(text: str) -> SpfTerm:
    if any(not 0x21 <= ord(c) <= 0x7E for c in text):
        raise RecordError(f"SPF term {text!r}: contains a character that is not allowed")
    modifier = _MODIFIER_RE.fullmatch(text)
    if modifier is not None:
        name, value = modifier.group(1).lower(), modifier.group(2)
        if name in ("redirect", "exp"):
            _domain_spec(value, text)
        else:
            _macro_string(value, text)  # unknown modifiers are ignored, but must be well formed
        return SpfTerm(text, name, "", value, modifier=True)
    qualifier = "+"
    body = text
    if body[0] in _QUALIFIERS:
        qualifier, body = body[0], body[1:]
    match = re.match(r"[A-Za-z0-9]*", body)
    name = match.group(0).lower() if match else ""
    rest = body[len(name) :]
    if name not in _MECHANISMS:
        raise RecordError(f"SPF term {text!r}: unknown mechanism {name or body!r}")
    value = ""
    if name == "all":
        if rest:
            raise RecordError(f"SPF term {text!r}: all takes no argument")
    elif name in ("include", "exists"):
        if not rest.startswith(":") or len(rest) == 1:
            raise RecordError(f"SPF term {text!r}: {name} needs a domain ({name}:example.com)")
        value = rest[1:]
        _domain_spec(value, text)
    elif name == "ptr":
        if rest:
            if not rest.startswith(":"):
                raise RecordError(f"SPF term {text!r}: expected ptr or ptr:domain")
            value = rest[1:]
            _domain_spec(value, text)
    elif name in ("a", "mx"):
        value = _a_or_mx(name, rest, text)
    else:
        value = _ip_network(name, rest, text)
    return SpfTerm(text, name, qualifier, value)


def _a_or_mx(name: str, rest: str, text: str) -> str:
    cidr = _DUAL_CIDR_RE.search(rest)
    assert cidr is not None  # every group is optional, so it matches at the end
    spec = rest[: cidr.start()]
    ip4_len, ip6_len = cidr.group(1), cidr.group(2)
    if ip4_len is not None and int(ip4_len) > 32:
        raise RecordError(f"SPF term {text!r}: IPv4 prefix length over 32")
    if ip6_len is not None and int(ip6_len) > 128:
        raise RecordError(f"SPF term {text!r}: IPv6 prefix length over 128")
    if not spec:
        return ""
    if not spec.startswith(":") or len(spec) == 1:
        raise RecordError(f"SPF term {text!r}: expected {name}, {name}:domain or a prefix length")
    _domain_spec(spec[1:], text)
    return spec[1:]


def _ip_network(name: str, rest: str, text: str) -> str:
    if not rest.startswith(":"):
        raise RecordError(f"SPF term {text!r}: {name} needs an address ({name}:192.0.2.0/24)")
    address, _, length = rest[1:].partition("/")
    limit = 32 if name == "ip4" else 128
    if "/" in rest[1:] and not (re.fullmatch(_CIDR_RE, length) and int(length) <= limit):
        raise RecordError(f"SPF term {text!r}: expected a prefix length from 0 to {limit}")
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        parsed = None
    if parsed is None or parsed.version != (4 if name == "ip4" else 6):
        raise RecordError(f"SPF term {text!r}: not an IPv{4 if name == 'ip4' else 6} address")
    return rest[1:]


def _macro_string(value: str, text: str) -> None:
    index = 0
    while index < len(value):
        if value[index] != "%":
            index += 1
            continue
        macro = _MACRO_RE.match(value, index)
        if macro is None:
            raise RecordError(
                f"SPF term {text!r}: bad macro at {value[index : index + 4]!r} "
                "(expected %{s}, %{l}, %{o}, %{d}, %{i}, %{p}, %{h}, %{v}, %%, %_ or %-)"
            )
        index = macro.end()


def _domain_spec(value: str, text: str) -> None:
    """RFC 7208 domain-spec: a macro-string ending in "." toplabel ["."] or in a macro."""
    if not value:
        raise RecordError(f"SPF term {text!r}: empty domain")
    _macro_string(value, text)
    if re.search(r"%\{[^}]*\}$", value):
        return  # ends with a macro expansion: the domain is only known at evaluation
    domain = value.removesuffix(".")
    if "%" not in domain:
        labels = domain.split(".")
        if len(domain) > 253 or any(not 0 < len(label) <= 63 for label in labels):
            raise RecordError(f"SPF term {text!r}: {value!r} is not a valid domain name")
    last = domain.rpartition(".")
    if not last[1] or not _TOPLABEL_RE.fullmatch(last[2]):
        raise RecordError(
            f"SPF term {text!r}: {value!r} is not a fully qualified domain (example.com)"
        )


# --- DMARC (RFC 7489) ------------------------------------------------------------------------


class DmarcPolicy(enum.StrEnum):
    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class Alignment(enum.StrEnum):
    RELAXED = "r"
    STRICT = "s"


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    policy: DmarcPolicy  # p=
    subdomain_policy: DmarcPolicy | None  # sp=; None: subdomains get p=
    adkim: Alignment
    aspf: Alignment
    pct: int
    rua: tuple[str, ...]  # aggregate report URIs that are well formed
    ruf: tuple[str, ...]  # failure report URIs that are well formed
    bad_uris: tuple[str, ...]  # rua/ruf entries that are not (receivers ignore them)

    def effective_policy(self, *, inherited: bool) -> DmarcPolicy:
        """The policy for the domain asked about; `inherited`: the record is at a parent."""
        if inherited and self.subdomain_policy is not None:
            return self.subdomain_policy
        return self.policy


def select_dmarc(txts: Iterable[str]) -> list[str]:
    return _select(txts, "DMARC1")


def dmarc_names(domain: str) -> list[str]:
    """Where the DMARC record of `domain` may be, in order: the domain, then its parents.

    DMARCbis' tree walk, which needs no public-suffix list; it stops before the top-level
    domain (nobody publishes a policy for one, and asking would only add a failure mode).
    """
    labels = domain.rstrip(".").split(".")
    if len(labels) > 8:
        labels_tries = [labels, *(labels[-n:] for n in range(7, 1, -1))]
    else:
        labels_tries = [labels[i:] for i in range(len(labels) - 1)] or [labels]
    return ["_dmarc." + ".".join(parts) for parts in labels_tries]


def parse_dmarc(text: str) -> DmarcRecord:
    tags = _versioned_tags(text, "DMARC1", "DMARC record")
    if "p" not in tags:
        raise RecordError("DMARC record: no p= (policy)")
    policy = _enum(DmarcPolicy, tags["p"], "DMARC record: p=")
    sp = tags.get("sp")
    subdomain_policy = None if sp is None else _enum(DmarcPolicy, sp, "DMARC record: sp=")
    adkim = _enum(Alignment, tags.get("adkim", "r"), "DMARC record: adkim=")
    aspf = _enum(Alignment, tags.get("aspf", "r"), "DMARC record: aspf=")
    pct_text = tags.get("pct", "100")
    if not pct_text.isdigit() or int(pct_text) > 100:
        raise RecordError(f"DMARC record: pct= expected 0 to 100, got {pct_text!r}")
    rua, bad_rua = _report_uris(tags.get("rua", ""))
    ruf, bad_ruf = _report_uris(tags.get("ruf", ""))
    return DmarcRecord(
        policy, subdomain_policy, adkim, aspf, int(pct_text), rua, ruf, (*bad_rua, *bad_ruf)
    )


def _enum(kind: type[_E], value: str, what: str) -> _E:
    try:
        return kind(value.lower())
    except ValueError:
        names = [member.value for member in kind]
        expected = ", ".join(names[:-1]) + f" or {names[-1]}"
        raise RecordError(f"{what} expected {expected}, got {value!r}") from None


_MAILTO_RE: Final = re.compile(r"mailto:[^@\s,]+@[^@\s,!]+\.[^@\s,!]+(?:![0-9]+[kmgt]?)?", re.I)
_HTTPS_RE: Final = re.compile(r"https://[^\s,]+", re.IGNORECASE)


def _report_uris(value: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    good: list[str] = []
    bad: list[str] = []
    for uri in (part.strip() for part in value.split(",")):
        if not uri:
            continue
        (good if _MAILTO_RE.fullmatch(uri) or _HTTPS_RE.fullmatch(uri) else bad).append(uri)
    return tuple(good), tuple(bad)


# --- DKIM (RFC 6376, RFC 8463) ---------------------------------------------------------------

DKIM_MIN_RSA_BITS: Final = 1024  # RFC 8301: verifiers must not accept smaller RSA keys


@dataclass(frozen=True, slots=True)
class DkimKey:
    key_type: str  # "rsa" or "ed25519"
    bits: int
    testing: bool  # t=y: receivers may treat failures as unsigned


def parse_dkim_key(text: str, *, name: str = "DKIM key") -> DkimKey:
    """Parse a DKIM key record as verifiers do; RecordError when they could not use it."""
    tags = _tags(text, name)
    if "p" not in tags:
        raise RecordError(f"{name}: no p= (public key)")
    if not re.sub(r"\s", "", tags["p"]):
        raise RecordError(f"{name}: key revoked (empty p=)")
    key_type = tags.get("k", "rsa").lower()
    testing = "y" in tags.get("t", "").lower().replace(" ", "").split(":")
    if key_type == "ed25519":
        # dkimpy needs PyNaCl to load Ed25519 keys; sizing one only takes its length (RFC 8463).
        try:
            raw = base64.b64decode(re.sub(r"\s", "", tags["p"]), validate=True)
        except binascii.Error:
            raise RecordError(f"{name}: p= is not valid base64") from None
        if len(raw) != 32:
            raise RecordError(f"{name}: an Ed25519 key has 32 bytes, this one {len(raw)}")
        return DkimKey("ed25519", 256, testing)
    if key_type != "rsa":
        raise RecordError(f"{name}: unknown key type k={key_type}")
    try:
        _, bits, _, _ = dkim.evaluate_pk(name.encode(), text.encode("utf-8"))
    except dkim.DKIMException as exc:
        raise RecordError(f"{name}: {_decode(exc.args[0]) if exc.args else exc}") from None
    except (binascii.Error, ValueError, TypeError, IndexError):
        raise RecordError(f"{name}: p= is not a valid RSA public key") from None
    return DkimKey("rsa", int(bits), testing)


def dkim_key_problem(key: DkimKey) -> str | None:
    """Why receivers would not accept signatures made with this key, or None."""
    if key.key_type == "rsa" and key.bits < DKIM_MIN_RSA_BITS:
        return f"RSA key of {key.bits} bits: verifiers refuse keys under {DKIM_MIN_RSA_BITS}"
    return None


# --- MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class MtaStsRecord:
    id: str


@dataclass(frozen=True, slots=True)
class TlsRptRecord:
    rua: tuple[str, ...]


def select_mta_sts(txts: Iterable[str]) -> list[str]:
    return _select(txts, "STSv1")


def select_tls_rpt(txts: Iterable[str]) -> list[str]:
    return _select(txts, "TLSRPTv1")


def parse_mta_sts(text: str) -> MtaStsRecord:
    tags = _versioned_tags(text, "STSv1", "MTA-STS record")
    sts_id = tags.get("id")
    if sts_id is None:
        raise RecordError("MTA-STS record: no id=")
    if not re.fullmatch(r"[A-Za-z0-9]{1,32}", sts_id):
        raise RecordError(f"MTA-STS record: id= expected 1 to 32 letters or digits, got {sts_id!r}")
    return MtaStsRecord(sts_id)


def parse_tls_rpt(text: str) -> TlsRptRecord:
    tags = _versioned_tags(text, "TLSRPTv1", "TLS-RPT record")
    if not tags.get("rua"):
        raise RecordError("TLS-RPT record: no rua= (where reports go)")
    uris = [uri.strip() for uri in tags["rua"].split(",")]
    for uri in uris:
        if not (re.fullmatch(r"mailto:[^@\s]+@[^@\s]+", uri, re.I) or _HTTPS_RE.fullmatch(uri)):
            raise RecordError(f"TLS-RPT record: rua= expected mailto: or https: URIs, got {uri!r}")
    return TlsRptRecord(tuple(uris))


# --- DNS blocklists (RFC 5782) ---------------------------------------------------------------

# Answers that are not listings: Spamhaus and others answer 127.255.255.0/24 for errors (252 a
# malformed query, 254 a query through a public resolver, 255 too many queries); the Spamhaus DBL
# answers 127.0.1.255 to IP queries; RFC 5782 reserves 127.0.0.1 (never listed, and URIBL and
# SURBL answer it when they refuse a query). Anything outside 127/8 is a resolver rewriting
# NXDOMAIN, not a blocklist answer.
_LISTING_NET: Final = ipaddress.ip_network("127.0.0.0/8")
_ERROR_NETS: Final = (
    ipaddress.ip_network("127.255.255.0/24"),
    ipaddress.ip_network("127.0.1.255/32"),
    ipaddress.ip_network("127.0.0.1/32"),
)


@dataclass(frozen=True, slots=True)
class BlocklistAnswer:
    listed: bool | None  # None: the zone answered with an error code, not a verdict
    codes: tuple[str, ...]  # the A records answered
    error: str | None = None


def blocklist_query_name(target: str, zone: str) -> str:
    """`4.3.2.1.zone` for IP 1.2.3.4, nibbles for IPv6, `example.com.zone` for a domain."""
    zone = zone.rstrip(".")
    try:
        address = ipaddress.ip_address(target)
    except ValueError:
        return f"{target.rstrip('.')}.{zone}"
    pointer = address.reverse_pointer  # "4.3.2.1.in-addr.arpa" or nibbles ".ip6.arpa"
    return pointer.rsplit(".", 2)[0] + "." + zone


def classify_blocklist_answer(addresses: Sequence[str]) -> BlocklistAnswer:
    """A blocklist's A answer read as listed, not listed, or an error answer (RFC 5782)."""
    codes = tuple(addresses)
    if not codes:
        return BlocklistAnswer(False, codes)
    errors = []
    for code in codes:
        try:
            address = ipaddress.ip_address(code)
        except ValueError:
            errors.append(code)
            continue
        if address not in _LISTING_NET or any(address in net for net in _ERROR_NETS):
            errors.append(code)
    if errors:
        return BlocklistAnswer(
            None, codes, f"error answer {', '.join(errors)} (not a listing; see the zone's usage)"
        )
    return BlocklistAnswer(True, codes)


# --- results of a run of checks --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict of one check on one target (a domain, or an IP for rdns and fcrdns)."""

    target: str
    check: DnsCheck
    passed: bool | None  # None: not decided, the lookups failed (`detail` says how)
    detail: str


@dataclass(frozen=True, slots=True)
class DkimKeyResult:
    domain: str
    selector: str
    key: DkimKey | None  # None: no usable key published


@dataclass(frozen=True, slots=True)
class DmarcFinding:
    """The DMARC record that applies to `domain`, found at `found_at` (the domain or a parent)."""

    domain: str
    found_at: str
    record: DmarcRecord

    @property
    def policy(self) -> DmarcPolicy:
        return self.record.effective_policy(inherited=self.found_at != self.domain)


@dataclass(frozen=True, slots=True)
class BlocklistResult:
    target: str  # a sending IP or domain
    zone: str
    listed: bool | None  # None: an error answer or a failed lookup, not a verdict
    detail: str


@dataclass(frozen=True, slots=True)
class DnsReport:
    """Everything one run of the DNS checks found."""

    checks: tuple[CheckResult, ...] = ()
    blocklists: tuple[BlocklistResult, ...] = ()
    dkim_keys: tuple[DkimKeyResult, ...] = ()
    dmarc: tuple[DmarcFinding, ...] = ()
    spf_lookups: tuple[tuple[str, int], ...] = ()  # (domain, DNS lookups over its SPF tree)
    duration_seconds: float = 0.0

    def check(self, target: str, check: DnsCheck) -> CheckResult:
        """The result of `check` on `target`; KeyError if the run had none."""
        for result in self.checks:
            if result.target == target and result.check is check:
                return result
        raise KeyError((target, check))
