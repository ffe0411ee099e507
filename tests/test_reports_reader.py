"""Counting reports once, with bounded labels (agent.reports): the reader and its SQLite store,
against a real registry and a store file in a temporary state directory."""

from __future__ import annotations

import gzip
from email.message import EmailMessage
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.config import ReportMailbox
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder
from agent.reports import ReportReader, ReportStore

CORPUS = Path(__file__).parent / "corpus" / "reports"
OUTLOOK = (CORPUS / "dmarc-outlook.xml").read_bytes()
BOX = "dmarc-reports"


def _mailbox(**bounds: int) -> ReportMailbox:
    return ReportMailbox.model_validate(
        {
            "name": BOX,
            "host": "127.0.0.1",
            "auth": {"username": "reports", "password": "reports-password"},
            "address": "reports@example.com",
            **bounds,
        }
    )


def _message(*attachments: tuple[bytes, str], subject: str = "Report") -> bytes:
    message = EmailMessage()
    message["From"] = "dmarc@reporter.example"
    message["To"] = "reports@example.com"
    message["Subject"] = subject
    message.set_content("An aggregate report.")
    for data, name in attachments:
        message.add_attachment(
            gzip.compress(data), maintype="application", subtype="gzip", filename=name
        )
    return message.as_bytes()


def _dmarc(
    report_id: str, rows: list[tuple[str, int, str, str]], *, end: int = 1711843200
) -> bytes:
    """A DMARC report in the shape of the Outlook sample, with rows (ip, count, dkim, spf)."""
    records = "".join(
        f"<record><row><source_ip>{ip}</source_ip><count>{count}</count><policy_evaluated>"
        f"<disposition>none</disposition><dkim>{dkim}</dkim><spf>{spf}</spf></policy_evaluated>"
        "</row><identifiers><header_from>example.com</header_from></identifiers></record>"
        for ip, count, dkim, spf in rows
    )
    return (
        "<feedback><report_metadata><org_name>Outlook.com</org_name>"
        f"<report_id>{report_id}</report_id><date_range><begin>{end - 86400}</begin>"
        f"<end>{end}</end></date_range></report_metadata><policy_published>"
        f"<domain>example.com</domain><p>none</p></policy_published>{records}</feedback>"
    ).encode()


class Counting:
    def __init__(self, tmp_path: Path, **bounds: int) -> None:
        self.registry: CollectorRegistry = new_registry()
        self.recorder = Recorder(self.registry)
        self.recorder.declare([], report_mailboxes=[BOX])
        self.store = ReportStore.in_state_dir(tmp_path / "state")
        self.reader = ReportReader(
            _mailbox(**bounds), store=self.store, recorder=self.recorder, clock=lambda: 1e9
        )

    def value(self, name: str, **labels: str) -> float:
        found = self.registry.get_sample_value(name, {"mailbox": BOX, **labels})
        return 0.0 if found is None else found

    def reports(self, kind: str, result: str) -> float:
        return self.value("deliverability_reports_total", kind=kind, result=result)

    def dmarc(self, **labels: str) -> float:
        return self.value("deliverability_dmarc_source_messages_total", **labels)


@pytest.fixture
def counting(tmp_path: Path) -> Counting:
    return Counting(tmp_path)


async def test_a_report_is_counted_once_and_a_resent_one_is_a_duplicate(
    counting: Counting,
) -> None:
    first = _message((OUTLOOK, "a.xml.gz"))
    await counting.reader.handle(first)
    await counting.reader.handle(first)  # the watcher hands it over again (a restart)
    counting.reader.flush()
    assert counting.reports("dmarc", "counted") == 1
    assert counting.reports("dmarc", "duplicate") == 0
    labels = {"header_from": "example.com", "source_ip": "100.24.188.149", "dmarc": "fail"}
    assert counting.dmarc(**labels) == 1

    # The reporter sends the same report again in a new message: not counted twice.
    await counting.reader.handle(_message((OUTLOOK, "a.xml.gz"), subject="Report (resent)"))
    assert counting.reports("dmarc", "duplicate") == 1
    assert counting.dmarc(**labels) == 1
    assert (
        counting.value(
            "deliverability_dmarc_messages_total",
            org="Outlook.com",
            header_from="example.com",
            disposition="none",
            dkim="fail",
            spf="fail",
        )
        == 1
    )
    assert (
        counting.value("deliverability_report_newest_end_timestamp_seconds", kind="dmarc")
        == 1711843200
    )


async def test_source_ips_past_the_bound_are_other_and_the_largest_keep_their_label(
    tmp_path: Path,
) -> None:
    counting = Counting(tmp_path, top_sources=2)
    rows = [("192.0.2.1", 5, "pass", "pass"), ("192.0.2.2", 50, "fail", "fail"),
            ("192.0.2.3", 500, "pass", "fail")]  # fmt: skip
    await counting.reader.handle(_message((_dmarc("r1", rows), "r1.xml.gz")))
    counting.reader.flush()
    assert counting.dmarc(header_from="example.com", source_ip="192.0.2.3", dmarc="pass") == 500
    assert counting.dmarc(header_from="example.com", source_ip="192.0.2.2", dmarc="fail") == 50
    assert counting.dmarc(header_from="example.com", source_ip="other", dmarc="pass") == 5
    assert counting.dmarc(header_from="example.com", source_ip="192.0.2.1", dmarc="pass") == 0

    # After a restart the store's top sources by volume keep their labels, even when a later
    # report has a new source first.
    restarted = Counting(tmp_path, top_sources=2)
    rows = [("192.0.2.9", 1000, "pass", "pass"), ("192.0.2.2", 1, "fail", "fail")]
    await restarted.reader.handle(_message((_dmarc("r2", rows), "r2.xml.gz")))
    restarted.reader.flush()
    assert restarted.dmarc(header_from="example.com", source_ip="other", dmarc="pass") == 1000
    assert restarted.dmarc(header_from="example.com", source_ip="192.0.2.2", dmarc="fail") == 1


async def test_a_restart_keeps_the_newest_report_end_and_counts_nothing_again(
    tmp_path: Path,
) -> None:
    first = Counting(tmp_path)
    message = _message((_dmarc("new", [("192.0.2.1", 3, "pass", "pass")], end=2000000), "n.gz"))
    older = _message((_dmarc("old", [("192.0.2.1", 4, "pass", "pass")], end=1000000), "o.gz"))
    await first.reader.handle(message)
    await first.reader.handle(older)  # reports arrive out of order: the newest end stays
    gauge = "deliverability_report_newest_end_timestamp_seconds"
    assert first.value(gauge, kind="dmarc") == 2000000
    first.store.close()

    again = Counting(tmp_path)
    assert again.value(gauge, kind="dmarc") == 2000000
    await again.reader.handle(message)
    await again.reader.handle(older)
    assert again.reports("dmarc", "counted") == 0
    assert again.reports("dmarc", "duplicate") == 0


async def test_tls_sessions_are_counted_by_result_and_a_short_detail_list_is_other(
    counting: Counting,
) -> None:
    for name in ("tlsrpt-rfc8460.json", "tlsrpt-mail.ru.json"):
        await counting.reader.handle(_message(((CORPUS / name).read_bytes(), f"{name}.gz")))
    counting.reader.flush()
    assert counting.reports("tlsrpt", "counted") == 2

    def sessions(org: str, domain: str, result: str) -> float:
        return counting.value(
            "deliverability_tlsrpt_sessions_total",
            org=org,
            policy_domain=domain,
            policy_type="sts",
            result=result,
        )

    assert sessions("Company-X", "company-y.example", "success") == 5326
    assert sessions("Company-X", "company-y.example", "certificate-expired") == 100
    assert sessions("Company-X", "company-y.example", "starttls-not-supported") == 200
    assert sessions("Company-X", "company-y.example", "validation-failure") == 3
    # Mail.ru's details add up to 2 where its summary says 1: the details decide.
    assert sessions("Mail.ru", "example.com", "sts-policy-fetch-error") == 2
    assert sessions("Mail.ru", "example.com", "other") == 0


async def test_unreadable_reports_are_counted_by_reason_and_nothing_else_moves(
    counting: Counting,
) -> None:
    bomb = b'<!DOCTYPE x [<!ENTITY a "aaaa">]><feedback>&a;</feedback>'  # constructed
    await counting.reader.handle(_message((bomb, "bomb.xml.gz")))
    await counting.reader.handle(_message())
    invalid = (CORPUS / "dmarc-invalid-utf-8.xml").read_bytes()
    await counting.reader.handle(_message((invalid, "invalid.xml.gz")))
    assert counting.reports("dmarc", "forbidden_xml") == 1
    assert counting.reports("unknown", "no_report") == 1
    assert counting.reports("dmarc", "bad_encoding") == 1
    assert counting.reports("dmarc", "counted") == 0
    assert (
        counting.registry.get_sample_value(
            "deliverability_report_newest_end_timestamp_seconds", {"mailbox": BOX, "kind": "dmarc"}
        )
        is None
    )


async def test_a_new_series_shows_zero_first_and_its_count_after_the_first_seen_delay(
    tmp_path: Path,
) -> None:
    # rate() and increase() need a sample before a counter's first jump: a label set's first
    # counts wait (an hour here; flush() stands for the timer, or for the agent's stop).
    counting = Counting(tmp_path)
    counting.reader = ReportReader(
        _mailbox(), store=counting.store, recorder=counting.recorder, first_seen_delay=3600.0
    )
    labels = {"header_from": "example.com", "source_ip": "192.0.2.1", "dmarc": "pass"}
    rows = [("192.0.2.1", 3, "pass", "pass")]
    await counting.reader.handle(_message((_dmarc("a", rows), "a.gz")))
    await counting.reader.handle(_message((_dmarc("b", rows), "b.gz")))  # same labels: waits too
    assert (
        counting.registry.get_sample_value(
            "deliverability_dmarc_source_messages_total", {"mailbox": BOX, **labels}
        )
        == 0
    )
    counting.reader.flush()
    assert counting.dmarc(**labels) == 6
    # Once its series has been seen at zero, a label set's counts are added at once.
    await counting.reader.handle(_message((_dmarc("c", rows), "c.gz")))
    assert counting.dmarc(**labels) == 9
