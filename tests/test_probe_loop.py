"""The probe loop end to end against the real mail system: every outcome reproduced for real."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.policy import SMTP
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.app.service import Agent
from agent.config import Config, validate_config
from agent.model import (
    AuthResult,
    BounceCounted,
    BounceReason,
    BounceSource,
    BounceType,
    ErrorKind,
    ImapHealth,
    MessageSkipped,
    Outcome,
    ProbeLate,
    SendResult,
    SkipReason,
    SpamCategory,
    SpamSource,
    Stage,
)
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder, Result
from agent.probing.probe_message import build_probe_message
from agent.reading.probe_token import new_probe_id
from agent.store.ledger import Ledger, ProbeRecord
from tests.agent_setup import BAD_SENDER, TEST_SECRET, AgentSetup
from tests.imap_helpers import watch_log
from tests.mailsystem import MailSystem
from tests.mailsystem.topology import SEED_DOMAIN, Account

pytestmark = pytest.mark.mailsystem

WAIT = 60.0  # generous bound on any single wait; tests never pass or fail on timing


@pytest.fixture
def setup(mail_system: MailSystem, tmp_path: Path) -> AgentSetup:
    return AgentSetup(mail_system, tmp_path)


class SignallingRecorder(Recorder):
    """A Recorder that also sets an event per recorded kind, so tests await instead of polling."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.events: dict[str, asyncio.Event] = {}

    def event(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())

    def record(self, result: Result) -> None:
        super().record(result)
        match result:
            case MessageSkipped(_, SkipReason.FORGED):
                self.event("forged").set()
            case MessageSkipped(_, SkipReason.MALFORMED):
                self.event("malformed").set()
            case MessageSkipped(_, SkipReason.FOREIGN):
                self.event("foreign").set()
            case ProbeLate():
                self.event("late").set()
            case BounceCounted():
                self.event("bounce").set()
            case ImapHealth(_, up, error):
                if error is not None:
                    self.event(f"imap_error:{error}").set()
                if up:
                    self.event("imap_up").set()


@asynccontextmanager
async def running(
    config: Config, registry: CollectorRegistry | None = None
) -> AsyncIterator[Agent]:
    recorder = SignallingRecorder(registry or new_registry())
    agent = Agent(config, recorder=recorder, poll_interval=0.5)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop(drain_timeout=WAIT)


async def probe_once(agent: Agent, route: str, mailbox: str) -> ProbeRecord:
    probe_id = await agent.probe_pair(route, mailbox)
    assert probe_id is not None
    async with asyncio.timeout(WAIT):
        await agent.outcomes.wait(probe_id)
    record = agent.ledger.get(probe_id)
    assert record is not None
    return record


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_probe_from_the_good_domain_lands_in_inbox_with_spf_dkim_dmarc_pass(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    config = setup.route("good").mailbox("seed", mail_system.new_mailbox()).load()
    registry = new_registry()
    async with running(config, registry) as agent:
        record = await probe_once(agent, "good", "seed")
    assert record.outcome is Outcome.INBOX
    assert record.folder == "INBOX"
    assert record.latency_seconds is not None and record.latency_seconds >= 0
    assert record.auth is not None
    assert (record.auth.spf, record.auth.dkim, record.auth.dmarc) == (
        AuthResult.PASS,
        AuthResult.PASS,
        AuthResult.PASS,
    )
    # rspamd's own field, read resinfo by resinfo and kept in the ledger: each method with its
    # properties, and the DKIM signature of the route's domain.
    assert {"spf", "dkim", "dmarc"} <= set(record.auth.methods)
    assert [(s.domain, s.selector, s.result) for s in record.auth.dkim_signatures] == [
        ("good.test", "sel1", AuthResult.PASS)
    ]
    dmarc = next(detail for detail in record.auth.details if detail.method == "dmarc")
    assert ("header.from", "good.test") in dmarc.properties
    assert (
        metric(
            registry,
            "deliverability_auth_results_total",
            method="arc",
            result="absent",
            route="good",
            mailbox="seed",
        )
        == 1
    )
    stages = [reply.stage for reply in record.transcript]
    assert stages[:8] == [
        Stage.BANNER,
        Stage.EHLO,
        Stage.STARTTLS,
        Stage.EHLO,
        Stage.AUTH,
        Stage.MAIL,
        Stage.RCPT,
        Stage.DATA,
    ]
    assert Stage.END_OF_DATA in stages
    labels = {"route": "good", "mailbox": "seed"}
    assert metric(registry, "deliverability_probes_total", outcome="inbox", **labels) == 1
    assert metric(registry, "deliverability_probes_sent_total", route="good") == 1
    # TLS health of the route: the version negotiated and the certificate's expiry (the test CA's
    # certificates are valid for about a year).
    assert record.tls_version is not None
    assert (
        metric(
            registry, "deliverability_tls_version_info", route="good", version=record.tls_version
        )
        == 1
    )
    expiry = metric(registry, "deliverability_tls_cert_expiry_timestamp_seconds", route="good")
    assert record.accepted_at is not None and expiry > record.accepted_at + 30 * 86400
    assert metric(registry, "deliverability_probes_in_flight", **labels) == 0
    assert metric(registry, "deliverability_pair_delivery_seconds_count", **labels) == 1
    assert metric(registry, "deliverability_delivery_seconds_count", mailbox="seed") == 1
    assert (
        metric(
            registry, "deliverability_auth_results_total", method="dmarc", result="pass", **labels
        )
        == 1
    )


async def test_a_probe_dovecot_announces_in_idle_is_counted_as_found_by_push(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    config = setup.route("good").mailbox("seed", mail_system.new_mailbox()).load()
    registry = new_registry()
    with watch_log("waiting in IDLE") as idling:
        async with running(config, registry) as agent:
            await idling.wait_for(2)  # the INBOX and Junk watchers both wait for a push
            record = await probe_once(agent, "good", "seed")
    assert record.outcome is Outcome.INBOX
    found = {
        way: metric(registry, "deliverability_probes_found_total", mailbox="seed", found_by=way)
        for way in ("push", "check", "poll", "select")
    }
    assert found == {"push": 1, "check": 0, "poll": 0, "select": 0}


async def test_imap_up_is_1_once_every_watched_folder_is_selected(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    config = setup.route("good").mailbox("seed", mail_system.new_mailbox()).load()
    registry = new_registry()
    async with running(config, registry) as agent:
        assert metric(registry, "deliverability_imap_up", mailbox="seed") == 0
        async with asyncio.timeout(WAIT):
            await recorder_of(agent).event("imap_up").wait()
        assert metric(registry, "deliverability_imap_up", mailbox="seed") == 1


async def test_wrong_imap_password_keeps_imap_up_at_0_and_counts_auth_errors(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    box = mail_system.new_mailbox()
    wrong = Account(box.address, "not-the-imap-password")
    config = setup.route("good").mailbox("seed", wrong).load()
    registry = new_registry()
    async with running(config, registry) as agent:
        async with asyncio.timeout(WAIT):
            await recorder_of(agent).event("imap_error:auth").wait()
        assert metric(registry, "deliverability_imap_up", mailbox="seed") == 0
        assert (
            metric(registry, "deliverability_imap_errors_total", mailbox="seed", kind="auth") >= 1
        )


async def test_probe_from_the_misconfigured_domain_lands_in_spam_with_dmarc_fail(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    config = setup.route("bad", sender=BAD_SENDER).mailbox("seed", mail_system.new_mailbox()).load()
    async with running(config) as agent:
        record = await probe_once(agent, "bad", "seed")
    assert record.outcome is Outcome.SPAM
    assert record.folder == "Junk"
    assert record.auth is not None
    assert record.auth.dmarc is AuthResult.FAIL
    assert record.auth.spf is AuthResult.FAIL
    # rspamd's verdict, from the fields it appended below the probe's own: spam (add header).
    (spam,) = record.spam
    assert (spam.source, spam.is_spam, spam.category) == (
        SpamSource.RSPAMD,
        True,
        SpamCategory.SPAM,
    )


async def test_a_probes_rspamd_verdict_is_read_stored_and_counted(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    config = setup.route("good").mailbox("seed", mail_system.new_mailbox()).load()
    registry = new_registry()
    async with running(config, registry) as agent:
        record = await probe_once(agent, "good", "seed")
        stored = agent.ledger.get(record.probe_id)
    assert record.outcome is Outcome.INBOX
    (spam,) = record.spam
    assert (spam.source, spam.threshold, spam.is_spam, spam.category) == (
        SpamSource.RSPAMD,
        50.0,  # the reject action's score (tests/mailsystem/configs.py), as X-Spamd-Result says
        False,
        SpamCategory.HAM,
    )
    assert spam.score is not None and spam.score < 6.0  # under the add-header action
    assert stored is not None and stored.spam == record.spam  # read back from the ledger
    labels = {"route": "good", "mailbox": "seed", "source": "rspamd"}
    assert metric(registry, "deliverability_spam_verdicts_total", category="ham", **labels) == 1
    assert metric(registry, "deliverability_spam_verdicts_total", category="spam", **labels) == 0
    per_mailbox = {"mailbox": "seed", "source": "rspamd"}  # scores: the receiver's own scale
    assert metric(registry, "deliverability_spam_score_count", **per_mailbox) == 1
    assert metric(registry, "deliverability_spam_score_sum", **per_mailbox) == spam.score


async def test_spam_fields_a_sender_wrote_into_a_probe_are_not_its_verdict(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    # A probe whose own fields carry a forged "not spam" from SpamAssassin and Microsoft, sent
    # straight to the real MX: unsigned for good.test, so DMARC fails and rspamd appends "spam"
    # below it; the forged verdicts stay among the sender's fields and are not read.
    box = mail_system.new_mailbox()
    config = setup.route("good").mailbox("seed", box).load()
    probe_id = new_probe_id()
    message = build_probe_message(
        probe_id=probe_id,
        secret=TEST_SECRET.encode(),
        header_from="sender@good.test",
        to=box.address,
        route="good",
        mailbox="seed",
        sent_at=datetime.now(UTC),
    )
    forged = (
        b"X-Spam-Flag: NO\r\n"
        b"X-Spam-Score: -5.0\r\n"
        b"X-Forefront-Antispam-Report: CIP:192.0.2.1;SCL:-1;SFV:SKN;CAT:NONE;\r\n"
    )
    raw = message.as_bytes(policy=SMTP).replace(
        b"X-Deliverability-Probe:", forged + b"X-Deliverability-Probe:", 1
    )
    async with running(config) as agent:
        now = datetime.now(UTC).timestamp()
        agent.ledger.record_sending(
            probe_id=probe_id, route="good", mailbox="seed", created_at=now, deadline_at=now + WAIT
        )
        agent.outcomes.sent(
            probe_id, SendResult((), accepted=True, accepted_at=now, duration_seconds=0.0)
        )
        _deliver_raw(mail_system, box.address, raw)
        async with asyncio.timeout(WAIT):
            await agent.outcomes.wait(probe_id)
        record = agent.ledger.get(probe_id)
    assert record is not None and record.outcome is Outcome.SPAM
    (spam,) = record.spam
    assert (spam.source, spam.is_spam) == (SpamSource.RSPAMD, True)


async def test_rcpt_5xx_is_rejected_with_its_enhanced_code(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    config = (
        setup.route("good")
        .mailbox("seed", mail_system.new_mailbox(), address=f"reject-550@{SEED_DOMAIN}")
        .load()
    )
    registry = new_registry()
    async with running(config, registry) as agent:
        record = await probe_once(agent, "good", "seed")
        bounces = agent.ledger.bounces(record.probe_id)
    assert record.outcome is Outcome.REJECTED
    rcpt = [reply for reply in record.transcript if reply.stage is Stage.RCPT]
    assert [(r.code, r.enhanced_code) for r in rcpt] == [(550, "5.7.1")]
    assert (
        metric(
            registry,
            "deliverability_bounces_total",
            route="good",
            type="hard",
            source="smtp",
            reason="policy",
        )
        == 1
    )
    # A 5.7.1 refusal is a policy block, with the reply code kept beside the status.
    assert [(b.bounce_type, b.source, b.status, b.reason, b.smtp_code) for b in bounces] == [
        (BounceType.HARD, BounceSource.SMTP, "5.7.1", BounceReason.POLICY, "550")
    ]
    assert (
        metric(
            registry,
            "deliverability_smtp_replies_total",
            route="good",
            stage="rcpt",
            code="550",
            enhanced_code="5.7.1",
            **{"class": "5xx"},
        )
        == 1
    )


async def test_rcpt_4xx_is_deferred(setup: AgentSetup, mail_system: MailSystem) -> None:
    config = (
        setup.route("good")
        .mailbox("seed", mail_system.new_mailbox(), address=f"defer-451@{SEED_DOMAIN}")
        .load()
    )
    registry = new_registry()
    async with running(config, registry) as agent:
        record = await probe_once(agent, "good", "seed")
    assert record.outcome is Outcome.DEFERRED
    assert (
        metric(
            registry,
            "deliverability_bounces_total",
            route="good",
            type="soft",
            source="smtp",
            reason="policy",  # 451 4.7.1
        )
        == 1
    )
    assert record.transcript[-2].code == 451 or any(
        r.code == 451 and r.enhanced_code == "4.7.1" for r in record.transcript
    )


async def test_wrong_password_is_an_auth_error_with_the_535_in_the_transcript(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    config = (
        setup.route("good", password="not-the-password")
        .mailbox("seed", mail_system.new_mailbox())
        .load()
    )
    registry = new_registry()
    async with running(config, registry) as agent:
        record = await probe_once(agent, "good", "seed")
    assert record.outcome is Outcome.ERROR
    assert record.send_error is not None
    assert (record.send_error.stage, record.send_error.kind) == (Stage.AUTH, ErrorKind.AUTH)
    assert any(r.stage is Stage.AUTH and r.code == 535 for r in record.transcript)
    assert "not-the-password" not in repr(record)
    assert (
        metric(
            registry, "deliverability_smtp_errors_total", route="good", stage="auth", kind="auth"
        )
        == 1
    )


@pytest.mark.parametrize(
    ("tls", "port_name"),
    [("starttls", "submissions"), ("implicit", "submission")],
    ids=["starttls-on-the-implicit-tls-port", "implicit-tls-on-the-starttls-port"],
)
async def test_tls_mode_mismatch_fails_as_a_tls_error(
    setup: AgentSetup, mail_system: MailSystem, tls: str, port_name: str
) -> None:
    port = getattr(mail_system.ports, port_name)
    config = (
        setup.route("mismatch", port=port, tls=tls)
        .mailbox("seed", mail_system.new_mailbox())
        .load()
    )
    async with running(config) as agent:
        record = await probe_once(agent, "mismatch", "seed")
    assert record.outcome is Outcome.ERROR
    assert record.send_error is not None
    assert record.send_error.kind is ErrorKind.TLS


async def test_probe_not_seen_by_its_deadline_is_missing(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    # Probes go to one mailbox while the agent watches another: they can never be seen.
    elsewhere = mail_system.new_mailbox()
    setup.probes["deadline"] = "2s"
    config = (
        setup.route("good")
        .mailbox("seed", mail_system.new_mailbox(), address=elsewhere.address)
        .load()
    )
    registry = new_registry()
    async with running(config, registry) as agent:
        record = await probe_once(agent, "good", "seed")
    assert record.outcome is Outcome.MISSING
    assert (
        metric(
            registry, "deliverability_probes_total", route="good", mailbox="seed", outcome="missing"
        )
        == 1
    )


async def test_probe_seen_after_its_deadline_stays_missing_and_counts_as_late(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    held = mail_system.new_held_mailbox()
    setup.probes["deadline"] = "1s"
    config = setup.route("good").mailbox("seed", held).load()
    registry = new_registry()
    async with running(config, registry) as agent:
        record = await probe_once(agent, "good", "seed")
        assert record.outcome is Outcome.MISSING
        mail_system.release_held()
        async with asyncio.timeout(WAIT):
            await recorder_of(agent).event("late").wait()
    with Ledger(config.state_dir / "ledger.sqlite3") as ledger:
        late = ledger.get(record.probe_id)
    assert late is not None
    assert late.outcome is Outcome.MISSING
    assert late.late_folder == "INBOX"
    labels = {"route": "good", "mailbox": "seed"}
    assert metric(registry, "deliverability_late_probes_total", **labels) == 1
    assert metric(registry, "deliverability_probes_total", outcome="missing", **labels) == 1
    assert metric(registry, "deliverability_probes_total", outcome="inbox", **labels) == 0


def _deliver_raw(mail_system: MailSystem, to: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", mail_system.ports.mx, timeout=30) as smtp:
        smtp.sendmail("someone@elsewhere.test", [to], raw)


def recorder_of(agent: Agent) -> SignallingRecorder:
    recorder = agent.recorder
    assert isinstance(recorder, SignallingRecorder)
    return recorder


async def test_forged_probe_is_counted_and_never_matched(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    box = mail_system.new_mailbox()
    config = setup.route("good").mailbox("seed", box).load()
    registry = new_registry()
    async with running(config, registry) as agent:
        forged = build_probe_message(
            probe_id=new_probe_id(),
            secret=b"some-other-agent-secret-000000",
            header_from="sender@good.test",
            to=box.address,
            route="good",
            mailbox="seed",
            sent_at=datetime.now(UTC),
        )
        _deliver_raw(mail_system, box.address, forged.as_bytes())
        async with asyncio.timeout(WAIT):
            await recorder_of(agent).event("forged").wait()
        assert metric(registry, "deliverability_forged_messages_total", mailbox="seed") == 1
        # The agent still works, and the forged message did not finalize anything.
        record = await probe_once(agent, "good", "seed")
    assert record.outcome is Outcome.INBOX
    assert (
        metric(
            registry, "deliverability_probes_total", route="good", mailbox="seed", outcome="inbox"
        )
        == 1
    )


# Planted with IMAP APPEND: no MTA cleans them up on the way (Dovecot still normalises line ends).
HOSTILE_MESSAGES = [
    b"\x00\xff\xfe garbage that is not a message at all \x00\x00\r\n\r\n\x01\x02",  # malformed
    # A bare CR hiding a header: Dovecot stores it as a line break, so it reads as unrelated.
    b"Subject: hi\rX-Hidden: 1\r\nFrom: a@b.test\r\n\r\nbody\r\n",
    b"Subject: =?utf-8?B?////?=\r\nContent-Type: multipart/mixed; boundary=\r\n"
    b"X-Deliverability-Probe: id=../../etc/passwd; sig=\r\n\r\n--\r\n--\r\n",  # forged
    b"From: a@b.test\r\nContent-Type: text/plain; x="
    + b"y" * 10_000
    + b"\r\n\r\nb\r\n",  # malformed
    b"From: " + b"A" * 200_000 + b"\r\n\r\nbody\r\n",  # unrelated (not a probe, not broken)
    b"Subject: cut off in the middle",  # unrelated
]
HOSTILE_COUNTS = (2.0, 1.0)  # (malformed, forged)


async def test_hostile_messages_in_the_seed_mailbox_are_skipped_without_a_crash(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    box = mail_system.new_mailbox()
    for raw in HOSTILE_MESSAGES:
        mail_system.append(box, raw)
    config = setup.route("good").mailbox("seed", box).load()
    registry = new_registry()
    async with running(config, registry) as agent:
        # The watcher hands over in UID order: the hostile messages before the probe.
        record = await probe_once(agent, "good", "seed")
    assert record.outcome is Outcome.INBOX
    skipped = metric(registry, "deliverability_malformed_messages_total", mailbox="seed")
    forged = metric(registry, "deliverability_forged_messages_total", mailbox="seed")
    assert (skipped, forged) == HOSTILE_COUNTS


async def test_restart_with_a_probe_in_flight_reaches_its_outcome_exactly_once(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    held = mail_system.new_held_mailbox()
    config = setup.route("good").mailbox("seed", held).load()
    first_registry = new_registry()
    async with running(config, first_registry) as first:
        probe_id = await first.probe_pair("good", "seed")
        assert probe_id is not None
    # The first agent stopped with the probe accepted and awaiting delivery.
    with Ledger(config.state_dir / "ledger.sqlite3") as ledger:
        before = ledger.get(probe_id)
    assert before is not None and before.outcome is None and before.accepted
    mail_system.release_held()
    second_registry = new_registry()
    async with running(config, second_registry) as second:
        assert (
            metric(second_registry, "deliverability_probes_in_flight", route="good", mailbox="seed")
            == 1
        )
        async with asyncio.timeout(WAIT):
            final = await second.outcomes.wait(probe_id)
    assert final.outcome is Outcome.INBOX
    labels = {"route": "good", "mailbox": "seed"}
    assert metric(first_registry, "deliverability_probes_total", outcome="inbox", **labels) == 0
    assert metric(second_registry, "deliverability_probes_total", outcome="inbox", **labels) == 1
    with Ledger(config.state_dir / "ledger.sqlite3") as ledger:
        after = ledger.get(probe_id)
    assert after is not None and after.outcome is Outcome.INBOX


async def test_probe_in_flight_still_matches_after_a_reload_rotates_the_secret(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    held = mail_system.new_held_mailbox()
    config = setup.route("good").mailbox("seed", held).load()
    registry = new_registry()
    async with running(config, registry) as agent:
        probe_id = await agent.probe_pair("good", "seed")
        assert probe_id is not None
        rotated = setup.data()
        rotated["secret"] = "a-brand-new-secret-after-rotation-0001"
        await agent.reload(validate_config(rotated, base_dir=setup.directory, environ={}))
        mail_system.release_held()
        async with asyncio.timeout(WAIT):
            final = await agent.outcomes.wait(probe_id)
    assert final.outcome is Outcome.INBOX
    assert metric(registry, "deliverability_forged_messages_total", mailbox="seed") == 0
