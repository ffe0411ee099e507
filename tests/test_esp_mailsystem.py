"""End to end: a probe sent through the real mail system on a route configured as an ESP, then a
signed bounce event posted over real HTTP to the agent's own server for it.

The route is the mail system's submission server with `esp: {kind: generic}`: Postfix answers the
end of data with `250 2.0.0 Ok: queued as <queue id>`, which the agent stores as the ESP's message
id, as it would SendGrid's `queued as` or SES's `Ok <id>`. The seed mailbox is a held one, so the
probe stays accepted and unseen, as with an ESP whose receiver refuses it after the 250.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import time
from pathlib import Path

import pytest

from agent.app.cli import _webhooks
from agent.app.service import Agent
from agent.model import Outcome
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder
from agent.web.http_server import HttpServer, Status
from tests.agent_setup import AgentSetup
from tests.mailsystem import MailSystem

pytestmark = pytest.mark.mailsystem

SECRET = "esp-webhook-hmac-secret-0123456789"
WAIT = 60.0


def _request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


async def test_a_signed_esp_bounce_for_a_sent_probe_ends_it_bounced_in_the_ledger_and_metrics(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    setup = (
        AgentSetup(mail_system, tmp_path)
        .route("esp")
        .mailbox("seed", mail_system.new_held_mailbox())
    )
    setup.routes[-1]["esp"] = {"kind": "generic", "webhook": {"hmac_secret": SECRET}}
    config = setup.load()
    registry = new_registry()
    agent = Agent(config, recorder=Recorder(registry), poll_interval=0.5)
    await agent.start()
    server = HttpServer(
        registry,
        host="127.0.0.1",
        port=0,
        health=lambda: Status(True, "alive"),
        readiness=lambda: Status(True, "ready"),
        webhooks=_webhooks(agent, asyncio.get_running_loop()),
    )
    try:
        probe_id = await agent.probe_pair("esp", "seed")
        assert probe_id is not None
        record = agent.ledger.get(probe_id)
        assert record is not None and record.accepted and record.outcome is None
        assert record.esp_message_id is not None  # Postfix's queue id from "queued as"

        body = json.dumps(
            {
                "events": [
                    {
                        "type": "bounce",
                        "message_id": record.esp_message_id,
                        "timestamp": time.time(),
                        "status": "5.1.1",
                        "diagnostic": "smtp; 550 5.1.1 <seed@seed.test>: user unknown",
                        "recipient": "seed@seed.test",
                    }
                ]
            }
        ).encode()
        stamp = str(int(time.time()))
        signature = hmac.new(SECRET.encode(), stamp.encode() + body, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-Deliverability-Timestamp": stamp,
            "X-Deliverability-Signature": signature,
        }
        forged = {**headers, "X-Deliverability-Signature": "0" * 64}
        status, _ = await asyncio.to_thread(
            _request, server.port, "POST", "/webhooks/esp", body, forged
        )
        assert status == 403
        assert agent.ledger.get(probe_id) == record  # a refused post touched nothing

        status, text = await asyncio.to_thread(
            _request, server.port, "POST", "/webhooks/esp", body, headers
        )
        assert (status, text) == (200, "ok: 1 events\n")
        final = agent.ledger.get(probe_id)
        assert final is not None and final.outcome is Outcome.BOUNCED
        [bounce] = agent.ledger.bounces(probe_id)
        assert (bounce.source.value, bounce.status, bounce.smtp_code) == ("esp", "5.1.1", "550")

        status, metrics = await asyncio.to_thread(_request, server.port, "GET", "/metrics")
        assert status == 200
        assert (
            'deliverability_probes_total{mailbox="seed",outcome="bounced",route="esp"} 1.0'
            in metrics
        )
        assert (
            'deliverability_bounces_total{reason="recipient_invalid",route="esp",source="esp",'
            'type="hard"} 1.0' in metrics
        )
        assert (
            'deliverability_webhook_refusals_total{reason="bad_signature",route="esp"} 1.0'
            in metrics
        )
        assert 'deliverability_esp_events_total{route="esp",type="bounce"} 1.0' in metrics
    finally:
        server.close()
        await agent.stop(drain_timeout=WAIT)
