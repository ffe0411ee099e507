"""What a message in a report mailbox holds: DMARC aggregate reports and SMTP TLS reports.

Pure: bytes in, frozen reports (or the reason they could not be read) out. Anybody can mail a
report mailbox, so every step assumes hostile input:

* A report is an attachment (or the whole body) found by media type or file name: XML, JSON,
  gzip or zip. What it is (DMARC or TLS-RPT) is decided by its content once decompressed (`<` or
  `{`), since reporters label attachments loosely (`application/octet-stream`).
* Decompression streams with a cap (`MAX_REPORT_BYTES`): a gzip bomb stops at the cap, and a zip
  must hold exactly one member whose declared and actual sizes are both under it.
* XML goes through defusedxml with DTDs forbidden: no entity expansion (billion laughs), no
  external entities. DMARC reports never carry a DTD.
* Text that claims UTF-8 (or claims nothing) must be UTF-8: otherwise `bad_encoding`.
* Every value that becomes a label is normalised here (a domain lower-cased and checked, an IP
  address in its canonical form, an organisation name cut to `ORG_MAX` printable characters);
  keeping the number of distinct values bounded is the consumer's job (`agent.reports`).

DMARC: RFC 7489 appendix C and the DMARCbis aggregate format (RFC 9990: a namespace,
`disposition` may be `pass`, `np` and `discovery_method` in the published policy); namespaces are
ignored, so both read alike. TLS-RPT: RFC 8460 section 4 (JSON, `application/tlsrpt+json` and
`application/tlsrpt+gzip`).
"""

from __future__ import annotations

import io
import ipaddress
import json
import re
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import Message
from email.parser import BytesParser
from typing import Any, Final
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from agent.model import ReportKind, ReportProblem

__all__ = [
    "DISPOSITIONS",
    "INVALID",
    "MAX_REPORT_BYTES",
    "ORG_MAX",
    "OTHER",
    "TLS_POLICY_TYPES",
    "TLS_RESULT_TYPES",
    "DmarcReport",
    "DmarcRow",
    "ReportError",
    "ReportKind",
    "ReportProblem",
    "TlsPolicy",
    "TlsReport",
    "Unreadable",
    "decompress",
    "parse_dmarc",
    "parse_report",
    "parse_tlsrpt",
    "read_reports",
]

MAX_REPORT_BYTES: Final = 20 * 1024 * 1024  # one report, decompressed
ORG_MAX: Final = 64  # characters of a reporting organisation's name kept as a label
_COUNT_MAX: Final = 10**12  # a count beyond any real day's mail is a malformed report

# RFC 7489's DispositionType and RFC 9990's `pass`; anything else is `other`.
DISPOSITIONS: Final = ("none", "pass", "quarantine", "reject")
# RFC 8460 4.4 and 4.3: the policy types and the result types a reporter may use.
TLS_POLICY_TYPES: Final = ("tlsa", "sts", "no-policy-found")
TLS_RESULT_TYPES: Final = (
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
)
OTHER: Final = "other"
INVALID: Final = "invalid"

_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9_-]{1,63}")
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*\bencoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_REPORT_TYPES: Final = frozenset(
    {
        "application/gzip",
        "application/x-gzip",
        "application/zip",
        "application/x-zip",
        "application/x-zip-compressed",
        "application/xml",
        "text/xml",
        "application/json",
        "application/tlsrpt+gzip",
        "application/tlsrpt+json",
    }
)
_REPORT_SUFFIXES: Final = (".xml", ".gz", ".zip", ".json")
_CHUNK: Final = 64 * 1024


class ReportError(Exception):
    def __init__(self, problem: ReportProblem, detail: str, kind: ReportKind) -> None:
        super().__init__(detail)
        self.problem = problem
        self.kind = kind


@dataclass(frozen=True, slots=True)
class DmarcRow:
    """One `record` of a DMARC report: `count` messages from one source with one verdict."""

    source_ip: str  # canonical form, or "invalid"
    count: int
    header_from: str  # lower-cased domain, or "invalid"
    disposition: str  # one of DISPOSITIONS or "other"
    dkim: bool  # DKIM aligned and passing (policy_evaluated)
    spf: bool  # SPF aligned and passing (policy_evaluated)

    @property
    def dmarc_pass(self) -> bool:
        return self.dkim or self.spf


@dataclass(frozen=True, slots=True)
class DmarcReport:
    org: str
    report_id: str
    begin: float
    end: float
    domain: str  # policy_published
    rows: tuple[DmarcRow, ...]

    kind = ReportKind.DMARC


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """One policy of a TLS report: its session counts, failures by result type."""

    policy_domain: str
    policy_type: str  # one of TLS_POLICY_TYPES or "other"
    successful: int
    failed: int  # the summary's total
    failures: tuple[tuple[str, int], ...]  # (result type or "other", sessions), summed per type


@dataclass(frozen=True, slots=True)
class TlsReport:
    org: str
    report_id: str
    begin: float
    end: float
    policies: tuple[TlsPolicy, ...]

    kind = ReportKind.TLSRPT


@dataclass(frozen=True, slots=True)
class Unreadable:
    """An attachment (or a whole message) that could not be read as a report."""

    kind: ReportKind
    problem: ReportProblem
    detail: str


# --- messages -------------------------------------------------------------------------------------


def read_reports(
    raw: bytes, *, truncated: bool = False
) -> list[DmarcReport | TlsReport | Unreadable]:
    """Every report attached to one message, in order; a message without one gives one
    `Unreadable(no_report)`, a message cut at the watcher's cap one `Unreadable(truncated)`."""
    if truncated:
        return [Unreadable(ReportKind.UNKNOWN, ReportProblem.TRUNCATED, "message cut at the cap")]
    message = BytesParser(policy=policy.compat32).parsebytes(raw)
    found: list[DmarcReport | TlsReport | Unreadable] = []
    for part in message.walk():
        if part.is_multipart() or not _is_report_part(part):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        found.append(parse_report(payload, name=part.get_filename() or ""))
    if not found:
        return [Unreadable(ReportKind.UNKNOWN, ReportProblem.NO_REPORT, "no report attachment")]
    return found


def _is_report_part(part: Message) -> bool:
    if part.get_content_type() in _REPORT_TYPES:
        return True
    name = (part.get_filename() or "").lower()
    return name.endswith(_REPORT_SUFFIXES)


def parse_report(data: bytes, *, name: str = "") -> DmarcReport | TlsReport | Unreadable:
    """One attachment's bytes (compressed or not) as a report, or why it is not one."""
    try:
        text = decompress(data)
        kind = _sniff(text)
        if kind is ReportKind.DMARC:
            return parse_dmarc(text)
        if kind is ReportKind.TLSRPT:
            return parse_tlsrpt(text)
        raise ReportError(ReportProblem.BAD_SYNTAX, "neither XML nor JSON", ReportKind.UNKNOWN)
    except ReportError as exc:
        return Unreadable(exc.kind, exc.problem, f"{name or 'attachment'}: {exc}")


def _sniff(text: bytes) -> ReportKind:
    start = text.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if start == b"<":
        return ReportKind.DMARC
    if start == b"{":
        return ReportKind.TLSRPT
    return ReportKind.UNKNOWN


# --- decompression --------------------------------------------------------------------------------


def decompress(data: bytes, *, limit: int = MAX_REPORT_BYTES) -> bytes:
    """`data` itself, or what a gzip or zip file holds; never more than `limit` bytes."""
    if data[:2] == b"\x1f\x8b":
        return _gunzip(data, limit)
    if data[:2] == b"PK":  # a local file header, or the end record of an empty archive
        return _unzip(data, limit)
    if len(data) > limit:
        raise ReportError(ReportProblem.TOO_LARGE, f"over {limit} bytes", ReportKind.UNKNOWN)
    return data


def _gunzip(data: bytes, limit: int) -> bytes:
    # One gzip member, decompressed in steps of at most what is left under the cap: a bomb costs
    # `limit` bytes of memory, never its full size.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = bytearray()
    pending = data
    try:
        while pending and not inflater.eof:
            out += inflater.decompress(pending, min(_CHUNK * 16, limit + 1 - len(out)))
            if len(out) > limit:
                raise ReportError(
                    ReportProblem.TOO_LARGE, f"gzip holds over {limit} bytes", ReportKind.UNKNOWN
                )
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise ReportError(ReportProblem.BAD_ARCHIVE, f"gzip: {exc}", ReportKind.UNKNOWN) from exc
    if not inflater.eof:
        raise ReportError(ReportProblem.BAD_ARCHIVE, "gzip: truncated", ReportKind.UNKNOWN)
    return bytes(out)


def _unzip(data: bytes, limit: int) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            if len(members) != 1:
                raise ReportError(
                    ReportProblem.BAD_ARCHIVE,
                    f"zip: expected one member, found {len(members)}",
                    ReportKind.UNKNOWN,
                )
            member = members[0]
            if member.file_size > limit:
                raise ReportError(
                    ReportProblem.TOO_LARGE,
                    f"zip member declares {member.file_size} bytes (over {limit})",
                    ReportKind.UNKNOWN,
                )
            out = bytearray()
            # The declared size is the sender's word: read in chunks and stop at the cap.
            with archive.open(member) as stream:
                while chunk := stream.read(_CHUNK):
                    out += chunk
                    if len(out) > limit:
                        raise ReportError(
                            ReportProblem.TOO_LARGE,
                            f"zip member holds over {limit} bytes",
                            ReportKind.UNKNOWN,
                        )
            return bytes(out)
    except ReportError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError,
            ValueError) as exc:  # fmt: skip
        # Corrupt, encrypted (RuntimeError) or an unsupported method (NotImplementedError).
        raise ReportError(ReportProblem.BAD_ARCHIVE, f"zip: {exc}", ReportKind.UNKNOWN) from exc


# --- DMARC ----------------------------------------------------------------------------------------


def parse_dmarc(text: bytes) -> DmarcReport:
    """An aggregate report (RFC 7489 appendix C, RFC 9990) from its XML bytes."""
    declared = _XML_ENCODING.match(text)
    encoding = declared.group(1).decode().lower().replace("_", "-") if declared else "utf-8"
    if encoding in ("utf-8", "utf8"):
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _dmarc_error(ReportProblem.BAD_ENCODING, f"not UTF-8: {exc}") from exc
    try:
        root = fromstring(text, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise _dmarc_error(ReportProblem.FORBIDDEN_XML, type(exc).__name__) from exc
    except (ParseError, ValueError, LookupError) as exc:  # LookupError: an unknown encoding
        raise _dmarc_error(ReportProblem.BAD_SYNTAX, f"XML: {exc}") from exc
    _strip_namespaces(root)
    if root.tag != "feedback":
        raise _dmarc_error(ReportProblem.BAD_FIELD, f"root element {root.tag!r}, not feedback")
    meta = _child(root, "report_metadata")
    published = _child(root, "policy_published")
    domain = _domain(_text(published, "domain"))
    rows: list[DmarcRow] = []
    for record in root.iter("record"):
        row = _child(record, "row")
        evaluated = _child(row, "policy_evaluated")
        identifiers = record.find("identifiers")
        header_from = _optional_text(identifiers, "header_from")
        disposition = _text(evaluated, "disposition").strip().lower()
        rows.append(
            DmarcRow(
                source_ip=_ip(_text(row, "source_ip")),
                count=_count(_text(row, "count"), "count"),
                header_from=_domain(header_from) if header_from else domain,
                disposition=disposition if disposition in DISPOSITIONS else OTHER,
                dkim=_optional_text(evaluated, "dkim").strip().lower() == "pass",
                spf=_optional_text(evaluated, "spf").strip().lower() == "pass",
            )
        )
    date_range = _child(meta, "date_range")
    return DmarcReport(
        # Some reporters leave org_name empty: their contact address's domain names them.
        org=_org(
            _optional_text(meta, "org_name") or _optional_text(meta, "email").rpartition("@")[2]
        ),
        report_id=_report_id(_text(meta, "report_id"), ReportKind.DMARC),
        begin=_epoch(_text(date_range, "begin")),
        end=_epoch(_text(date_range, "end")),
        domain=domain,
        rows=tuple(rows),
    )


def _dmarc_error(problem: ReportProblem, detail: str) -> ReportError:
    return ReportError(problem, detail, ReportKind.DMARC)


def _strip_namespaces(root: Element) -> None:
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith("{"):
            element.tag = element.tag.split("}", 1)[1]


def _child(parent: Element, tag: str) -> Element:
    found = parent.find(tag)
    if found is None:
        raise _dmarc_error(ReportProblem.BAD_FIELD, f"no <{tag}> in <{parent.tag}>")
    return found


def _text(parent: Element, tag: str) -> str:
    text = _child(parent, tag).text
    if text is None or not text.strip():
        raise _dmarc_error(ReportProblem.BAD_FIELD, f"empty <{tag}> in <{parent.tag}>")
    return text.strip()


def _optional_text(parent: Element | None, tag: str) -> str:
    found = parent.find(tag) if parent is not None else None
    return (found.text or "").strip() if found is not None else ""


def _epoch(text: str) -> float:
    try:
        value = int(text)
    except ValueError as exc:
        raise _dmarc_error(ReportProblem.BAD_FIELD, f"date {text[:40]!r} is not a number") from exc
    if not 0 <= value < 2**40:
        raise _dmarc_error(ReportProblem.BAD_FIELD, f"date {value} out of range")
    return float(value)


# --- TLS-RPT --------------------------------------------------------------------------------------


def parse_tlsrpt(text: bytes) -> TlsReport:
    """An SMTP TLS report (RFC 8460 section 4) from its JSON bytes."""
    try:
        document = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _tls_error(ReportProblem.BAD_ENCODING, f"not UTF-8: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise _tls_error(ReportProblem.BAD_SYNTAX, f"JSON: {exc}") from exc
    report = _object(document, "report")
    date_range = _object(report.get("date-range"), "date-range")
    policies: list[TlsPolicy] = []
    raw_policies = report.get("policies")
    if not isinstance(raw_policies, list):
        raise _tls_error(ReportProblem.BAD_FIELD, "policies: expected a list")
    for entry in raw_policies:
        entry = _object(entry, "policies[]")
        policy_ = _object(entry.get("policy"), "policy")
        summary = _object(entry.get("summary"), "summary")
        policy_type = str(policy_.get("policy-type", "")).strip().lower()
        failures: dict[str, int] = {}
        details = entry.get("failure-details", [])
        if not isinstance(details, list):
            raise _tls_error(ReportProblem.BAD_FIELD, "failure-details: expected a list")
        for detail in details:
            detail = _object(detail, "failure-details[]")
            result = str(detail.get("result-type", "")).strip().lower()
            result = result if result in TLS_RESULT_TYPES else OTHER
            sessions = _json_count(detail.get("failed-session-count"), "failed-session-count")
            failures[result] = failures.get(result, 0) + sessions
        policies.append(
            TlsPolicy(
                policy_domain=_domain(_string(policy_.get("policy-domain"), "policy-domain")),
                policy_type=policy_type if policy_type in TLS_POLICY_TYPES else OTHER,
                successful=_json_count(
                    summary.get("total-successful-session-count"), "total-successful-session-count"
                ),
                failed=_json_count(
                    summary.get("total-failure-session-count"), "total-failure-session-count"
                ),
                failures=tuple(sorted(failures.items())),
            )
        )
    return TlsReport(
        org=_org(_string(report.get("organization-name"), "organization-name")),
        report_id=_report_id(_string(report.get("report-id"), "report-id"), ReportKind.TLSRPT),
        begin=_datetime(date_range.get("start-datetime"), "start-datetime"),
        end=_datetime(date_range.get("end-datetime"), "end-datetime"),
        policies=tuple(policies),
    )


def _tls_error(problem: ReportProblem, detail: str) -> ReportError:
    return ReportError(problem, detail, ReportKind.TLSRPT)


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _tls_error(ReportProblem.BAD_FIELD, f"{name}: expected an object")
    return value


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _tls_error(ReportProblem.BAD_FIELD, f"{name}: expected a non-empty string")
    return value.strip()


def _json_count(value: Any, name: str) -> int:
    # bool is an int in Python; a JSON true is not a count.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _COUNT_MAX:
        raise _tls_error(ReportProblem.BAD_FIELD, f"{name}: expected a count")
    return value


def _datetime(value: Any, name: str) -> float:
    try:
        return datetime.fromisoformat(_string(value, name)).timestamp()
    except ValueError as exc:
        raise _tls_error(ReportProblem.BAD_FIELD, f"{name}: expected an RFC 3339 time") from exc


# --- labels ---------------------------------------------------------------------------------------


def _domain(text: str) -> str:
    domain = text.strip().rstrip(".").lower()
    return domain if _DOMAIN.fullmatch(domain) else INVALID


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return INVALID


def _org(text: str) -> str:
    printable = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(printable.split())[:ORG_MAX] or INVALID


def _report_id(text: str, kind: ReportKind) -> str:
    if len(text) > 1000:
        raise ReportError(ReportProblem.BAD_FIELD, "report id over 1000 characters", kind)
    return text


def _count(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise _dmarc_error(ReportProblem.BAD_FIELD, f"{name}: {text[:40]!r} is no count") from exc
    if not 0 <= value <= _COUNT_MAX:
        raise _dmarc_error(ReportProblem.BAD_FIELD, f"{name}: {value} out of range")
    return value
