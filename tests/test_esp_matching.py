"""ESP events matched to probes: a real ledger and recorder, events as the receiver hands them over.

Duplicates, out-of-order and early events; drops, complaints and the ESP's latency stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.config import Config
from agent.model import (
    BounceReason,
    BounceSource,
    BounceType,
    EspEvent,
    EspEventType,
    Outcome,
    SendResult,
    SmtpReply,
    Stage,
    WebhookRefusal,
    WebhookRefused,
)
from agent.monitoring.recorder import Recorder
from agent.probing.esp import PENDING_TTL, EspEvents
from agent.probing.outcomes import Outcomes
from agent.probing.prober import _esp_message_id
from agent.store.ledger import Ledger
from agent.webhooks.payloads import message_id_from_reply
from agent.webhooks.receiver import EspPost
from tests.one_pair_config import one_pair_config

T0 = 1_765_000_000.0
ESP_ID = "0000014a3f5e4f8c-ses-id-000000"


def _config(tmp_path: Path, match: str) -> Config:
    esp = {"kind": "generic", "webhook": {"hmac_secret": "x" * 20}, "match": match}
    return one_pair_config(tmp_path, route={"esp": esp})


class World:
    def __init__(self, tmp_path: Path, match: str) -> None:
        self.config = _config(tmp_path, match)
        self.registry = CollectorRegistry()
        self.recorder = Recorder(self.registry)
        self.recorder.declare([("r", "m")])
        self.recorder.declare_esp(["r"])
        self.ledger = Ledger(tmp_path / "ledger.sqlite3")
        self.outcomes = Outcomes(self.ledger, self.recorder)
        self.esp = EspEvents(
            ledger=self.ledger, outcomes=self.outcomes, config=lambda: self.config, clock=lambda: T0
        )

    def sending(self, probe_id: str) -> None:
        self.outcomes.sending(
            probe_id=probe_id, route="r", mailbox="m", created_at=T0, deadline_at=T0 + 600
        )

    def sent(self, probe_id: str, esp_message_id: str | None = ESP_ID) -> None:
        result = SendResult(
            transcript=(SmtpReply(Stage.END_OF_DATA, 250, None, f"Ok {ESP_ID}"),),
            accepted=True,
            accepted_at=T0 + 1,
            duration_seconds=1.0,
        )
        record = self.outcomes.sent(probe_id, result, esp_message_id=esp_message_id)
        self.outcomes.settle_arrival(record)

    def post(self, *events: EspEvent, at: float = T0 + 10) -> None:
        self.esp.receive(EspPost("r", events, at))

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def outcome(self, probe_id: str) -> Outcome | None:
        record = self.ledger.get(probe_id)
        assert record is not None
        return record.outcome


@pytest.fixture
def by_id(tmp_path: Path) -> World:
    return World(tmp_path, "message_id")


@pytest.fixture
def by_metadata(tmp_path: Path) -> World:
    return World(tmp_path, "metadata")


def _event(kind: EspEventType, **fields: Any) -> EspEvent:
    return EspEvent(kind, fields.pop("at", T0 + 5), **{"message_id": ESP_ID, **fields})


def test_a_hard_bounce_ends_the_probe_bounced_once_however_often_the_esp_retries(
    by_id: World,
) -> None:
    by_id.sending("p1")
    by_id.sent("p1")
    bounce = _event(EspEventType.BOUNCE, status="5.1.1", smtp_code="550", diagnostic="no user")
    by_id.post(bounce)
    by_id.post(bounce)
    assert by_id.outcome("p1") is Outcome.BOUNCED
    [stored] = by_id.ledger.bounces("p1")
    assert (stored.source, stored.reason, stored.status) == (
        BounceSource.ESP,
        BounceReason.RECIPIENT_INVALID,
        "5.1.1",
    )
    labels = {"route": "r", "type": "hard", "source": "esp", "reason": "recipient_invalid"}
    assert by_id.value("deliverability_bounces_total", **labels) == 1
    assert (
        by_id.value("deliverability_probes_total", route="r", mailbox="m", outcome="bounced") == 1
    )
    assert by_id.value("deliverability_esp_events_total", route="r", type="bounce") == 2
    assert by_id.value("deliverability_webhook_last_event_timestamp_seconds", route="r") == T0 + 10


def test_a_soft_bounce_or_deferral_is_recorded_and_leaves_the_probe_open(by_id: World) -> None:
    by_id.sending("p1")
    by_id.sent("p1")
    by_id.post(_event(EspEventType.DEFERRED, status="4.2.0"), _event(EspEventType.SOFT_BOUNCE))
    assert by_id.outcome("p1") is None
    assert [b.bounce_type for b in by_id.ledger.bounces("p1")] == [BounceType.SOFT]


def test_a_final_outcome_stays_when_a_bounce_comes_after_the_probe_was_seen(
    by_id: World,
) -> None:
    by_id.sending("p1")
    by_id.sent("p1")
    record = by_id.ledger.get("p1")
    assert record is not None
    by_id.outcomes.finalize(record, Outcome.INBOX, finished_at=T0 + 3)
    by_id.post(_event(EspEventType.BOUNCE, status="5.7.1"))
    assert by_id.outcome("p1") is Outcome.INBOX


def test_a_drop_is_rejected_with_the_reason_suppressed_counted_once(by_id: World) -> None:
    by_id.sending("p1")
    by_id.sent("p1")
    drop = _event(EspEventType.DROPPED, diagnostic="Bounced Address")
    by_id.post(drop, drop)
    assert by_id.outcome("p1") is Outcome.REJECTED
    assert by_id.value("deliverability_esp_suppressed_total", route="r") == 1
    labels = {"route": "r", "type": "hard", "source": "esp", "reason": "suppressed"}
    assert by_id.value("deliverability_bounces_total", **labels) == 1


def test_delivered_is_the_esp_latency_stage_and_a_complaint_only_a_counter(by_id: World) -> None:
    by_id.sending("p1")
    by_id.sent("p1")
    delivered = _event(EspEventType.DELIVERED, at=T0 + 4)
    complaint = _event(EspEventType.COMPLAINT, at=T0 + 50)
    by_id.post(delivered, complaint, delivered, complaint)
    assert by_id.outcome("p1") is None
    assert by_id.value("deliverability_esp_delivery_seconds_count", route="r") == 1
    assert by_id.value("deliverability_esp_delivery_seconds_sum", route="r") == 3.0
    assert by_id.value("deliverability_esp_complaints_total", route="r") == 1


def test_an_event_before_the_250_is_stored_is_kept_and_applied_when_it_is(by_id: World) -> None:
    by_id.sending("p1")
    by_id.post(_event(EspEventType.BOUNCE, status="5.1.1"))
    assert by_id.ledger.pending_esp_events() == 1
    assert by_id.value("deliverability_esp_unmatched_events_total", route="r") == 1
    by_id.sent("p1")
    assert by_id.esp.settle("p1") == 1
    assert by_id.outcome("p1") is Outcome.BOUNCED
    assert by_id.ledger.pending_esp_events() == 0


def test_early_events_expire_and_are_bounded(by_id: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.probing.esp.PENDING_CAP", 3)
    for index in range(5):
        by_id.post(_event(EspEventType.BOUNCE, message_id=f"other-{index}"), at=T0 + index)
    assert by_id.ledger.pending_esp_events() == 3
    by_id.post(_event(EspEventType.OTHER), at=T0 + 10 + PENDING_TTL)
    assert by_id.ledger.pending_esp_events() == 0


def test_metadata_matching_finds_the_probe_by_its_id_and_keeps_it_while_sending(
    by_metadata: World,
) -> None:
    by_metadata.sending("p1")
    by_metadata.post(_event(EspEventType.DROPPED, message_id=None, probe_id="p1"))
    assert by_metadata.outcome("p1") is None  # still being sent: kept
    by_metadata.sent("p1", esp_message_id=None)
    assert by_metadata.esp.settle("p1") == 1
    assert by_metadata.outcome("p1") is Outcome.REJECTED
    by_metadata.post(_event(EspEventType.BOUNCE, message_id=None, probe_id="nope"))
    assert by_metadata.value("deliverability_esp_unmatched_events_total", route="r") == 1


async def test_a_refusal_is_counted_and_touches_no_probe(by_id: World) -> None:
    await by_id.esp.take(WebhookRefused("r", WebhookRefusal.REPLAYED))
    assert by_id.value("deliverability_webhook_refusals_total", route="r", reason="replayed") == 1
    assert by_id.ledger.recent(10) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Ok 0000014a3f5e4f8c-7c3d5f0e-1a2b-4c5d-9e8f-000000",
            "0000014a3f5e4f8c-7c3d5f0e-1a2b-4c5d-9e8f-000000",
        ),
        ("Ok: queued as LRzXl_NHStOGhQ4kofSm_A", "LRzXl_NHStOGhQ4kofSm_A"),
        ("2.0.0 Ok: queued as 4dKx3Q1Zqvz9v", "4dKx3Q1Zqvz9v"),
        ("Ok: queued as <abc@host>", "abc@host"),
        ("Great success", None),
    ],
)
def test_the_esps_message_id_is_read_from_the_250_reply(text: str, expected: str | None) -> None:
    assert message_id_from_reply(text) == expected


def test_no_message_id_is_taken_from_a_reply_that_did_not_accept() -> None:
    result = SendResult(
        transcript=(SmtpReply(Stage.END_OF_DATA, 554, "5.7.1", "queued as nothing"),),
        accepted=False,
        accepted_at=None,
        duration_seconds=1.0,
    )
    assert _esp_message_id(result) is None


def test_the_worked_examples_of_the_configuration_reference_validate() -> None:
    import re as regex

    import yaml

    from agent.config.esp import Esp

    docs = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    section = docs.split("## ESP event webhooks", 1)[1].split("\n## ", 1)[0]
    blocks = regex.findall(r"```yaml\n(.*?)```", section, regex.DOTALL)
    kinds = []
    for block in blocks:
        # ${VAR} and secret files stand for the operator's own values here.
        text = regex.sub(r"\$\{[A-Z_]+\}", "value-from-the-environment", block)
        text = text.replace("password_file: /run/secrets/postmark-webhook", "password: pw")
        esp = Esp.model_validate(yaml.safe_load(text)["routes"][0]["esp"])
        kinds.append(esp.kind.value)
    assert kinds == ["sendgrid", "ses", "mailgun", "postmark", "generic"]


async def test_the_status_page_shows_each_webhooks_last_post_and_refusals(by_id: World) -> None:
    from agent.web.status_page import Health, collect, render

    await by_id.esp.take(WebhookRefused("r", WebhookRefusal.BAD_SIGNATURE))
    by_id.post(_event(EspEventType.OTHER), at=T0 + 10)
    health = by_id.esp.health()
    assert health["r"].last_post_at == T0 + 10 and health["r"].refused == 1
    page = render(
        collect(
            by_id.ledger,
            by_id.config,
            Health(
                version="1",
                ready=True,
                ready_detail="ok",
                started_at=T0,
                config_ok=True,
                config_loaded_at=T0,
                webhooks={
                    route: (h.last_post_at, h.refused, h.last_refusal)
                    for route, h in health.items()
                },
            ),
            now=T0 + 70,
        )
    )
    assert "<dt>webhook r</dt><dd>last verified post 60 s ago" in page
    assert "1 refused</span> (last: bad_signature)" in page


def test_a_route_that_loses_its_esp_loses_its_webhook_series(by_id: World) -> None:
    assert (
        by_id.registry.get_sample_value(
            "deliverability_webhook_refusals_total", {"route": "r", "reason": "unsigned"}
        )
        == 0
    )
    by_id.recorder.declare_esp([])
    assert (
        by_id.registry.get_sample_value(
            "deliverability_webhook_refusals_total", {"route": "r", "reason": "unsigned"}
        )
        is None
    )
    esp_bounce = {"route": "r", "type": "hard", "source": "esp", "reason": "suppressed"}
    assert by_id.registry.get_sample_value("deliverability_bounces_total", esp_bounce) is None
    smtp_bounce = {"route": "r", "type": "hard", "source": "smtp", "reason": "policy"}
    assert by_id.registry.get_sample_value("deliverability_bounces_total", smtp_bounce) == 0


@pytest.mark.parametrize("delivered_first", [True, False])
def test_the_receivers_stage_is_observed_once_whichever_comes_first(
    by_id: World, delivered_first: bool
) -> None:
    from agent.model import Arrival

    by_id.sending("p1")
    by_id.sent("p1")
    delivered = _event(EspEventType.DELIVERED, at=T0 + 4)
    arrival = Arrival("p1", "m", "INBOX", Outcome.INBOX, seen_at=T0 + 9)
    if delivered_first:
        by_id.post(delivered)
    record = by_id.ledger.get("p1")
    assert record is not None
    by_id.outcomes.arrived(record, arrival)
    by_id.post(delivered)
    assert by_id.value("deliverability_esp_receiver_seconds_count", route="r") == 1
    assert by_id.value("deliverability_esp_receiver_seconds_sum", route="r") == 5.0
