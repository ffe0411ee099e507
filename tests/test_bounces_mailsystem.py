"""Bounces against the real mail system: DSNs produced by the real Postfix, read back, matched."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from agent.app.service import Agent
from agent.config import Config, load_config
from agent.model import BounceReason, BounceSource, BounceType, Outcome
from agent.monitoring.catalog import new_registry
from agent.reading.probe_token import new_probe_id
from agent.sharding import Shard, owner
from tests.agent_setup import AgentSetup
from tests.mailsystem import MailSystem
from tests.mailsystem.topology import SEED_DOMAIN, Account
from tests.test_probe_loop import WAIT, SignallingRecorder, metric, probe_once, recorder_of

pytestmark = pytest.mark.mailsystem


@pytest.fixture
def setup(mail_system: MailSystem, tmp_path: Path) -> AgentSetup:
    return AgentSetup(mail_system, tmp_path)


@asynccontextmanager
async def running(config: Config, registry: CollectorRegistry) -> AsyncIterator[Agent]:
    agent = Agent(config, recorder=SignallingRecorder(registry), poll_interval=0.5)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop(drain_timeout=WAIT)


def with_bounces(setup: AgentSetup, bounce_box: Account, *, to: str) -> Config:
    """A good route whose bounces go to `bounce_box`, probing a seed that receives at `to`."""
    setup.route("good")
    setup.routes[0]["bounce_mailbox"] = "bounces"
    setup.mailbox("seed", setup.system.new_mailbox(), address=to)
    setup.mailbox("bounces", bounce_box)
    bounce = setup.mailboxes.pop()
    data = setup.data()
    data["bounce_mailboxes"] = [bounce]
    data["probes"]["cleanup"] = os.environ.get("BOUNCE_TEST_CLEANUP", "delete")
    path = setup.directory / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def bounce_count(registry: CollectorRegistry, **labels: str) -> float:
    """Bounces with these labels, whatever their reason."""
    return sum(
        metric(registry, "deliverability_bounces_total", reason=reason.value, **labels)
        for reason in BounceReason
    )


async def test_a_dsn_for_an_unknown_recipient_bounces_the_probe_hard(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    # The submission server accepts any recipient; the MX then refuses it with 550 5.1.1 and the
    # submission server sends a DSN to the probe's VERP envelope sender.
    config = with_bounces(
        setup, mail_system.new_mailbox(), to=f"nobody-{uuid.uuid4().hex[:8]}@{SEED_DOMAIN}"
    )
    registry = new_registry()
    async with running(config, registry) as agent:
        record = await probe_once(agent, "good", "seed")
        bounces = agent.ledger.bounces(record.probe_id)
    assert record.outcome is Outcome.BOUNCED
    assert [(b.bounce_type, b.source, b.status) for b in bounces] == [
        (BounceType.HARD, BounceSource.DSN, "5.1.1")
    ]
    assert bounces[0].reporting_mta == "mail.good.test"
    # Everything else the DSN says about the probe's recipient is kept as well.
    assert (bounces[0].reason, bounces[0].smtp_code, bounces[0].action) == (
        BounceReason.RECIPIENT_INVALID,
        "550",
        "failed",
    )
    assert bounces[0].recipient == config.mailbox("seed").address.lower()
    assert bounces[0].original_message_id is not None
    assert bounces[0].original_message_id.startswith(record.probe_id)
    labels = {"route": "good"}
    assert (
        metric(
            registry,
            "deliverability_bounces_total",
            type="hard",
            source="dsn",
            reason="recipient_invalid",
            **labels,
        )
        == 1
    )
    assert bounce_count(registry, type="hard", source="smtp", **labels) == 0
    assert (
        metric(registry, "deliverability_probes_total", mailbox="seed", outcome="bounced", **labels)
        == 1
    )


async def test_a_delay_notice_counts_a_soft_bounce_and_the_probe_keeps_waiting(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    # The MX defers this recipient with 451 4.7.1; at its next attempt the submission server
    # sends a delay notice (delay_warning_time) to the VERP envelope sender.
    config = with_bounces(setup, mail_system.new_mailbox(), to=f"defer-mx-451@{SEED_DOMAIN}")
    registry = new_registry()
    async with running(config, registry) as agent:
        probe_id = await agent.probe_pair("good", "seed")
        assert probe_id is not None
        async with asyncio.timeout(WAIT):
            await recorder_of(agent).event("bounce").wait()
        record = agent.ledger.get(probe_id)
        bounces = agent.ledger.bounces(probe_id)
    assert record is not None and record.outcome is None  # still in flight: a delay is no verdict
    assert [(b.bounce_type, b.source, b.status) for b in bounces] == [
        (BounceType.SOFT, BounceSource.DSN, "4.7.1")
    ]
    assert bounce_count(registry, route="good", type="soft", source="dsn") == 1


async def test_a_forged_bounce_is_counted_and_changes_no_outcome(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    bounce_box = mail_system.new_mailbox()
    held = mail_system.new_held_mailbox()  # the probe stays in flight, accepted and unseen
    config = with_bounces(setup, bounce_box, to=held.address)
    registry = new_registry()
    async with running(config, registry) as agent:
        probe_id = await agent.probe_pair("good", "seed")
        assert probe_id is not None
        # Anyone who learns the probe id can write to bounces+<id>@; without the tag it is forged.
        local, domain = bounce_box.address.split("@")
        mail_system.append(
            bounce_box, _dsn_for(probe_id, f"{local}+{probe_id}@{domain}", held.address)
        )
        async with asyncio.timeout(WAIT):
            await recorder_of(agent).event("forged").wait()
        record = agent.ledger.get(probe_id)
        bounces = agent.ledger.bounces(probe_id)
    assert record is not None and record.outcome is None
    assert bounces == []
    assert metric(registry, "deliverability_forged_messages_total", mailbox="bounces") == 1
    assert bounce_count(registry, route="good", type="hard", source="dsn") == 0


async def test_a_sharded_replica_leaves_another_replicas_bounce_alone_and_not_as_forged(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    # Every replica watches every bounce mailbox; only the sender can check a bounce's VERP tag.
    bounce_box = mail_system.new_mailbox()
    held = mail_system.new_held_mailbox()
    config = with_bounces(setup, bounce_box, to=held.address)
    registry = new_registry()
    agent = Agent(
        config,
        recorder=SignallingRecorder(registry),
        poll_interval=0.5,
        shard=Shard(owner("seed", 2), 2),
    )
    await agent.start()
    try:
        probe_id = await agent.probe_pair("good", "seed")
        assert probe_id is not None
        local, domain = bounce_box.address.split("@")
        theirs = new_probe_id()  # another replica's probe: not in this ledger
        mail_system.append(bounce_box, _dsn_for(theirs, f"{local}+{theirs}@{domain}", held.address))
        async with asyncio.timeout(WAIT):
            await recorder_of(agent).event("foreign").wait()
        assert metric(registry, "deliverability_forged_messages_total", mailbox="bounces") == 0
        # A bounce naming this replica's own probe without its tag is still forged.
        mail_system.append(
            bounce_box, _dsn_for(probe_id, f"{local}+{probe_id}@{domain}", held.address)
        )
        async with asyncio.timeout(WAIT):
            await recorder_of(agent).event("forged").wait()
        record = agent.ledger.get(probe_id)
    finally:
        await agent.stop(drain_timeout=WAIT)
    assert record is not None and record.outcome is None
    assert metric(registry, "deliverability_foreign_probes_total", mailbox="bounces") == 1
    assert metric(registry, "deliverability_forged_messages_total", mailbox="bounces") == 1


async def test_auto_replies_and_foreign_bounces_are_never_counted(
    setup: AgentSetup, mail_system: MailSystem
) -> None:
    bounce_box = mail_system.new_mailbox()
    held = mail_system.new_held_mailbox()  # the probe stays in flight, accepted and unseen
    config = with_bounces(setup, bounce_box, to=held.address)
    registry = new_registry()
    async with running(config, registry) as agent:
        probe_id = await agent.probe_pair("good", "seed")
        assert probe_id is not None
        verp = config.envelope_from(config.routes[0], probe_id)
        out_of_office = (
            f"From: seed@seed.test\r\nTo: {verp}\r\nSubject: Out of Office: Deliverability probe "
            f"{probe_id}\r\nAuto-Submitted: auto-replied\r\nX-Autoreply: yes\r\n\r\n"
            "I am away until Monday.\r\n"
        ).encode()
        foreign = (
            Path(__file__).parent / "messages" / "postfix-dsn-hard-5.1.1.eml"
        ).read_bytes()  # a real DSN, but for a probe this ledger never sent
        mail_system.append(bounce_box, out_of_office)
        mail_system.append(bounce_box, foreign)
        # Then a real bounce of this agent's probe, so that we know both were read before it.
        mail_system.append(bounce_box, _dsn_for(probe_id, verp, held.address))
        async with asyncio.timeout(WAIT):
            await recorder_of(agent).event("bounce").wait()
        record = agent.ledger.get(probe_id)
    assert record is not None and record.outcome is Outcome.BOUNCED
    assert bounce_count(registry, route="good", type="hard", source="dsn") == 1


def _dsn_for(probe_id: str, verp: str, recipient: str) -> bytes:
    """A minimal RFC 3464 DSN (no returned message): only the VERP address names the probe."""
    return (
        "From: MAILER-DAEMON@relay.test\r\n"
        f"To: {verp}\r\n"
        "Subject: Delivery Status Notification (Failure)\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; relay.test\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.2.1\r\n\r\n"
        "--b--\r\n"
    ).encode()
