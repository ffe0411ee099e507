"""Report mailboxes against the real mail system: real report messages APPENDed to a fresh
Dovecot mailbox, read by the agent's watcher, counted as metrics once, across a restart."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from agent.app.service import Agent
from agent.config import Config, load_config, validate_config
from agent.model import ReportRead
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder, Result
from agent.reports.store import FILE_NAME
from tests.agent_setup import AgentSetup
from tests.imap_helpers import folder_contents
from tests.mailsystem import MailSystem
from tests.mailsystem.topology import Account

pytestmark = pytest.mark.mailsystem

WAIT = 60.0  # generous bound on any single wait; tests never pass or fail on timing
CORPUS = Path(__file__).parent / "corpus" / "reports"
BOX = "reports"


class ReportCounter(Recorder):
    """A Recorder that lets a test await the n-th report read (counted, duplicate or skipped)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.read: list[ReportRead] = []
        self._changed = asyncio.Event()

    def record(self, result: Result) -> None:
        super().record(result)
        if isinstance(result, ReportRead):
            self.read.append(result)
            self._changed.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.read) < count:
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def running(
    config: Config,
) -> AsyncIterator[tuple[Agent, ReportCounter, CollectorRegistry]]:
    registry = new_registry()
    recorder = ReportCounter(registry)
    agent = Agent(config, recorder=recorder, poll_interval=0.5)
    await agent.start()
    try:
        yield agent, recorder, registry
    finally:
        await agent.stop(drain_timeout=WAIT)


def with_report_mailbox(setup: AgentSetup, account: Account, cleanup: str = "keep") -> Config:
    setup.route("good").mailbox("seed", setup.system.new_mailbox())
    setup.mailbox(BOX, account)
    reports = setup.mailboxes.pop()
    reports["top_sources"] = 5
    reports["cleanup"] = cleanup
    data = setup.data()
    data["report_mailboxes"] = [reports]
    path = setup.directory / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def report_message(data: bytes, name: str, media: str = "application/gzip") -> bytes:
    """A report as reporters send it: a short text and the compressed report attached."""
    message = EmailMessage()
    message["From"] = "dmarc-noreply@reporter.example"
    message["To"] = "reports@seed.test"
    message["Subject"] = f"Report domain: example.com Report-ID: {name}"
    message.set_content("This is a DMARC aggregate report.")
    maintype, subtype = media.split("/")
    message.add_attachment(gzip.compress(data), maintype=maintype, subtype=subtype, filename=name)
    return message.as_bytes()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, {"mailbox": BOX, **labels})
    return 0.0 if found is None else found


async def test_reports_appended_to_a_report_mailbox_become_metrics_once_across_a_restart(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    account = mail_system.new_mailbox()
    config = with_report_mailbox(AgentSetup(mail_system, tmp_path), account)
    # Google's real TLS report and a real DMARC report, whole messages; the Outlook report as
    # a gzip attachment; a billion-laughs report (constructed) that must be skipped.
    mail_system.append(account, (CORPUS / "tlsrpt-google.eml").read_bytes())
    mail_system.append(account, (CORPUS / "dmarc-twilight.eml").read_bytes())
    laughs = b'<!DOCTYPE l [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;">]><feedback>&l2;</feedback>'
    mail_system.append(account, report_message(laughs, "laughs.xml.gz"))

    async with running(config) as (_, recorder, registry):
        await recorder.wait_for(3)  # the messages already there when the folder was selected
        # One arriving while the agent watches (IDLE push or the check).
        outlook = (CORPUS / "dmarc-outlook.xml").read_bytes()
        mail_system.append(account, report_message(outlook, "outlook.xml.gz"))
        await recorder.wait_for(4)
        assert value(registry, "deliverability_imap_up") == 1

    def reports(kind: str, result: str) -> float:
        return value(registry, "deliverability_reports_total", kind=kind, result=result)

    assert reports("tlsrpt", "counted") == 1
    assert reports("dmarc", "counted") == 2
    assert reports("dmarc", "forbidden_xml") == 1
    assert (
        value(
            registry,
            "deliverability_tlsrpt_sessions_total",
            org="Google Inc.",
            policy_domain="cardinalhealth.ca",
            policy_type="no-policy-found",
            result="success",
        )
        == 48
    )
    assert (
        value(
            registry,
            "deliverability_dmarc_source_messages_total",
            header_from="example.com",
            source_ip="100.24.188.149",
            dmarc="fail",
        )
        == 1
    )
    assert (
        value(
            registry,
            "deliverability_dmarc_messages_total",
            org="google.com",
            header_from="twlnet.com",
            disposition="none",
            dkim="pass",
            spf="pass",
        )
        == 1
    )
    assert (
        value(registry, "deliverability_report_newest_end_timestamp_seconds", kind="dmarc")
        == 1711843200
    )
    assert (tmp_path / "state" / FILE_NAME).is_file()

    # A restart: the watcher hands the whole folder over again; nothing is counted twice. A
    # report resent by its reporter (a new message, the same report id) is a duplicate, and it
    # arrives after the old messages, so awaiting it means they were handed over too.
    mail_system.append(account, report_message(outlook, "outlook-resent.xml.gz"))
    async with running(config) as (_, recorder, registry):
        await recorder.wait_for(1)
        assert [(r.kind.value, r.result.value) for r in recorder.read] == [("dmarc", "duplicate")]
        assert (
            value(registry, "deliverability_report_newest_end_timestamp_seconds", kind="tlsrpt")
            == 1725407999
        )
        assert (
            value(
                registry,
                "deliverability_dmarc_source_messages_total",
                header_from="example.com",
                source_ip="100.24.188.149",
                dmarc="fail",
            )
            == 0
        )


async def test_cleanup_delete_removes_read_reports_and_keeps_a_message_without_one(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    account = mail_system.new_mailbox()
    config = with_report_mailbox(AgentSetup(mail_system, tmp_path), account, cleanup="delete")
    outlook = (CORPUS / "dmarc-outlook.xml").read_bytes()
    mail_system.append(account, report_message(outlook, "outlook.xml.gz"))
    mail_system.append(account, b"Subject: not a report\r\nFrom: someone@example.com\r\n\r\nhi\r\n")
    async with running(config) as (_, recorder, _):
        await recorder.wait_for(2)
    # stop() let the hand-over under way finish, its STORE and EXPUNGE included.
    assert list(await folder_contents(mail_system, account)) == ["not a report"]
    assert [(r.kind.value, r.result.value) for r in recorder.read] == [
        ("dmarc", "counted"),
        ("unknown", "no_report"),
    ]


async def test_a_report_mailbox_added_by_a_reload_is_read_and_one_removed_loses_its_series(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    account = mail_system.new_mailbox()
    setup = AgentSetup(mail_system, tmp_path)
    with_report_mailbox(setup, account)  # fills the setup's route and seed mailbox
    without = setup.data()
    with_reports = yaml.safe_load((tmp_path / "config.yaml").read_text())
    outlook = (CORPUS / "dmarc-outlook.xml").read_bytes()
    mail_system.append(account, report_message(outlook, "outlook.xml.gz"))

    def reload_to(data: dict[str, object]) -> Config:
        return validate_config(data, base_dir=tmp_path, environ={})

    async with running(reload_to(without)) as (agent, recorder, registry):
        assert (
            registry.get_sample_value(
                "deliverability_reports_total",
                {"mailbox": BOX, "kind": "dmarc", "result": "counted"},
            )
            is None
        )
        await agent.reload(reload_to(with_reports))
        await recorder.wait_for(1)
        assert value(registry, "deliverability_reports_total", kind="dmarc", result="counted") == 1
        await agent.reload(reload_to(without))
        assert (
            registry.get_sample_value(
                "deliverability_reports_total",
                {"mailbox": BOX, "kind": "dmarc", "result": "counted"},
            )
            is None
        )
        assert (
            registry.get_sample_value(
                "deliverability_report_newest_end_timestamp_seconds",
                {"mailbox": BOX, "kind": "dmarc"},
            )
            is None
        )
