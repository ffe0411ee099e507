"""The report parsers (agent.reading.reports) against hostile and malformed input.

Every hostile report here is constructed in this file, not taken from a provider: XML bombs,
external entities, gzip and zip bombs, archives of the wrong shape, bad encodings and fields. Each
must come back as an `Unreadable` with its reason, never as an exception or a huge allocation.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from agent.model import ReportKind, ReportProblem
from agent.reading.reports import (
    MAX_REPORT_BYTES,
    DmarcReport,
    TlsReport,
    Unreadable,
    decompress,
    parse_report,
    read_reports,
)

CORPUS = Path(__file__).parent / "corpus" / "reports"
RFC8460 = (CORPUS / "tlsrpt-rfc8460.json").read_bytes()
OUTLOOK = (CORPUS / "dmarc-outlook.xml").read_bytes()


def _problem(data: bytes) -> tuple[ReportKind, ReportProblem]:
    found = parse_report(data)
    assert isinstance(found, Unreadable), found
    return found.kind, found.problem


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# --- XML attacks (constructed) -------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<feedback><report_metadata><org_name>&lol9;</org_name></report_metadata></feedback>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE feedback [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<feedback><report_metadata><org_name>&xxe;</org_name></report_metadata></feedback>
"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE feedback SYSTEM "http://127.0.0.1:9/evil.dtd">
<feedback/>
"""


@pytest.mark.parametrize(
    "document",
    [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD],
    ids=["billion-laughs", "external-entity", "external-dtd"],
)
def test_reports_refuse_xml_with_a_dtd_or_entities(document: bytes) -> None:
    assert _problem(document) == (ReportKind.DMARC, ReportProblem.FORBIDDEN_XML)
    # Compressed, the same: the check is on the XML, not on how it came.
    assert _problem(gzip.compress(document)) == (ReportKind.DMARC, ReportProblem.FORBIDDEN_XML)


# --- decompression bombs (constructed) -----------------------------------------------------------


def test_reports_stop_a_gzip_bomb_at_the_cap() -> None:
    # 64 MiB of zeros compress to ~64 KiB; the cap is passed as a small number so the test
    # allocates little, and the real cap is checked the same way below.
    bomb = gzip.compress(b"<" + b"\0" * (64 * 1024 * 1024))
    with pytest.raises(Exception) as caught:
        decompress(bomb, limit=1024 * 1024)
    assert getattr(caught.value, "problem", None) is ReportProblem.TOO_LARGE
    assert _problem(bomb) == (ReportKind.UNKNOWN, ReportProblem.TOO_LARGE)
    assert MAX_REPORT_BYTES < 64 * 1024 * 1024


def test_reports_refuse_a_zip_member_whose_declared_size_is_over_the_cap() -> None:
    bomb = _zip({"report.xml": b"<" + b"\0" * (MAX_REPORT_BYTES + 1)})
    assert _problem(bomb) == (ReportKind.UNKNOWN, ReportProblem.TOO_LARGE)


def test_reports_refuse_a_zip_member_that_lies_about_its_size() -> None:
    # The headers claim 100 bytes; the member inflates to 2 MiB. zipfile inflates no more than the
    # declared size (checked against the cap first), then fails the CRC: 100 bytes read, at most.
    honest = _zip({"report.xml": b"<" + b"\0" * (2 * 1024 * 1024)})
    info = zipfile.ZipFile(io.BytesIO(honest)).infolist()[0]
    lying = honest.replace(info.file_size.to_bytes(4, "little"), (100).to_bytes(4, "little"))
    assert lying != honest
    assert _problem(lying) == (ReportKind.UNKNOWN, ReportProblem.BAD_ARCHIVE)


def test_reports_refuse_a_zip_without_exactly_one_member() -> None:
    two = _zip({"a.xml": OUTLOOK, "b.xml": OUTLOOK})
    assert _problem(two) == (ReportKind.UNKNOWN, ReportProblem.BAD_ARCHIVE)
    assert _problem(_zip({})) == (ReportKind.UNKNOWN, ReportProblem.BAD_ARCHIVE)


def test_reports_refuse_corrupt_and_truncated_archives() -> None:
    packed = gzip.compress(OUTLOOK)
    assert _problem(packed[: len(packed) // 2]) == (ReportKind.UNKNOWN, ReportProblem.BAD_ARCHIVE)
    assert _problem(packed[:10] + b"\xff" * 40) == (ReportKind.UNKNOWN, ReportProblem.BAD_ARCHIVE)
    zipped = _zip({"report.xml": OUTLOOK})
    assert _problem(zipped[:60]) == (ReportKind.UNKNOWN, ReportProblem.BAD_ARCHIVE)


def test_reports_read_a_zipped_and_a_gzipped_report_like_the_plain_one() -> None:
    plain = parse_report(OUTLOOK)
    assert isinstance(plain, DmarcReport)
    assert parse_report(gzip.compress(OUTLOOK)) == plain
    assert parse_report(_zip({"report.xml": OUTLOOK})) == plain


# --- encodings and fields (constructed) ----------------------------------------------------------


def test_reports_refuse_json_that_is_not_utf8() -> None:
    latin = RFC8460.replace(b"Company-X", "Compa\u00f1\u00eda".encode("latin-1"))
    assert _problem(latin) == (ReportKind.TLSRPT, ReportProblem.BAD_ENCODING)


def test_reports_read_xml_in_the_encoding_it_declares() -> None:
    declared = OUTLOOK.replace(
        b'<?xml version="1.0"?>', b'<?xml version="1.0" encoding="ISO-8859-1"?>'
    ).replace(b"Outlook.com", "Outl\u00f6ok".encode("latin-1"))
    found = parse_report(declared)
    assert isinstance(found, DmarcReport)
    assert found.org == "Outl\u00f6ok"


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (b"<feedback><report_metadata>", ReportProblem.BAD_SYNTAX),
        (b"<other/>", ReportProblem.BAD_FIELD),
        (OUTLOOK.replace(b"<count>1</count>", b"<count>many</count>"), ReportProblem.BAD_FIELD),
        (OUTLOOK.replace(b"<count>1</count>", b"<count>-5</count>"), ReportProblem.BAD_FIELD),
        (
            OUTLOOK.replace(b"<report_id>", b"<report_idx>").replace(
                b"</report_id>", b"</report_idx>"
            ),
            ReportProblem.BAD_FIELD,
        ),
        (OUTLOOK.replace(b"<begin>1711756800", b"<begin>yesterday"), ReportProblem.BAD_FIELD),
    ],
    ids=["unclosed", "wrong-root", "count-not-a-number", "negative-count", "no-id", "bad-date"],
)
def test_reports_skip_a_malformed_dmarc_report_by_reason(
    document: bytes, problem: ReportProblem
) -> None:
    assert _problem(document) == (ReportKind.DMARC, problem)


def _tls(**changes: object) -> bytes:
    document = json.loads(RFC8460)
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (b"{not json", ReportProblem.BAD_SYNTAX),
        (b"[" * 100_000 + b"]" * 100_000, ReportProblem.BAD_SYNTAX),
        (b"{}", ReportProblem.BAD_FIELD),
        (_tls(policies="none"), ReportProblem.BAD_FIELD),
        (_tls(policies=[{"policy": {}, "summary": {}}]), ReportProblem.BAD_FIELD),
        (
            _tls(**{"date-range": {"start-datetime": "soon", "end-datetime": "later"}}),
            ReportProblem.BAD_FIELD,
        ),
        (
            _tls(
                policies=[
                    {
                        "policy": {"policy-type": "sts", "policy-domain": "example.com"},
                        "summary": {
                            "total-successful-session-count": True,
                            "total-failure-session-count": 0,
                        },
                    }
                ]
            ),
            ReportProblem.BAD_FIELD,
        ),
    ],
    ids=[
        "not-json",
        "deep-nesting",
        "empty",
        "policies-not-a-list",
        "empty-policy",
        "bad-dates",
        "bool-count",
    ],
)
def test_reports_skip_a_malformed_tls_report_by_reason(
    document: bytes, problem: ReportProblem
) -> None:
    found = parse_report(document)
    assert isinstance(found, Unreadable)
    assert found.problem is problem
    assert found.kind in (ReportKind.TLSRPT, ReportKind.UNKNOWN)


def test_reports_bound_every_label_value_they_read() -> None:
    hostile = (
        OUTLOOK.replace(b"Outlook.com", b"Evil\n\t Org " + b"x" * 500)
        .replace(b"100.24.188.149", b"not-an-ip")
        .replace(b"<header_from>example.com", b"<header_from>EXAMPLE.com.")
        .replace(b"<disposition>none", b"<disposition>shred")
    )
    found = parse_report(hostile)
    assert isinstance(found, DmarcReport)
    assert found.org.startswith("Evil Org xxx") and len(found.org) == 64
    [row] = found.rows
    assert (row.source_ip, row.header_from, row.disposition) == ("invalid", "example.com", "other")
    weird = RFC8460.replace(b'"sts"', b'"dane"').replace(b"certificate-expired", b"gremlins")
    tls = parse_report(weird)
    assert isinstance(tls, TlsReport)
    [policy] = tls.policies
    assert policy.policy_type == "other"
    assert dict(policy.failures)["other"] == 100


# --- messages -----------------------------------------------------------------------------------


def _message(attachments: list[tuple[bytes, str, str]]) -> bytes:
    message = EmailMessage()
    message["From"] = "noreply-dmarc-support@google.com"
    message["To"] = "dmarc@example.com"
    message["Subject"] = "Report domain: example.com"
    message.set_content("This is an aggregate report.")
    for data, media, name in attachments:
        maintype, subtype = media.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message.as_bytes()


def test_reports_in_a_message_are_found_by_media_type_or_file_name() -> None:
    raw = _message(
        [
            (gzip.compress(OUTLOOK), "application/gzip", "a.xml.gz"),
            (gzip.compress(RFC8460), "application/tlsrpt+gzip", "b.json.gz"),
            (OUTLOOK, "application/octet-stream", "c.xml"),
            (b"\x89PNG", "image/png", "logo.png"),
        ]
    )
    found = read_reports(raw)
    assert [type(item) for item in found] == [DmarcReport, TlsReport, DmarcReport]


def test_a_message_without_a_report_or_cut_at_the_cap_is_one_unreadable() -> None:
    [nothing] = read_reports(_message([]))
    assert isinstance(nothing, Unreadable) and nothing.problem is ReportProblem.NO_REPORT
    [cut] = read_reports(b"Subject: x\r\n\r\n", truncated=True)
    assert isinstance(cut, Unreadable) and cut.problem is ReportProblem.TRUNCATED
    [garbage] = read_reports(b"\xff\xfe\x00 not a message at all")
    assert isinstance(garbage, Unreadable)


def test_a_dmarc_report_without_an_org_name_is_named_by_its_contact_domain() -> None:
    # As in parsedmarc's sample "!large-example.com!...xml" (a real report, 909 KB, not kept).
    found = parse_report(OUTLOOK.replace(b"<org_name>Outlook.com</org_name>", b"<org_name/>"))
    assert isinstance(found, DmarcReport)
    assert found.org == "microsoft.com"
