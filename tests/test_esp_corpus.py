"""The ESPs' published event samples (tests/corpus/esp/manifest.yaml) read as the manifest says,
and hostile bodies are refused as malformed, never a crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.model import EspKind, WebhookRefusal
from agent.webhooks.payloads import parse_events, read_json
from agent.webhooks.signatures import Refused

CORPUS = Path(__file__).parent / "corpus" / "esp"
MANIFEST: list[dict[str, Any]] = yaml.safe_load((CORPUS / "manifest.yaml").read_text())["samples"]


def _body(sample: dict[str, Any]) -> bytes:
    data: bytes = (CORPUS / sample["file"]).read_bytes()
    if sample["kind"] == "sendgrid":  # the signed test vector: the body is one of its fields
        return str(json.loads(data)["body"]).encode()
    return data


def test_every_corpus_file_is_in_the_manifest_with_source_and_licence() -> None:
    listed = {sample["file"] for sample in MANIFEST}
    assert listed == {p.name for p in CORPUS.glob("*.json")}
    for sample in MANIFEST:
        assert sample["source"].startswith("https://") and sample["licence"], sample["file"]


@pytest.mark.parametrize("sample", MANIFEST, ids=[s["file"] for s in MANIFEST])
def test_published_sample_reads_as_its_manifest_says(sample: dict[str, Any]) -> None:
    [event] = parse_events(EspKind(sample["kind"]), read_json(_body(sample)), metadata_key="probe")
    expected = sample["expected"]
    assert event.event_type.value == expected["type"]
    for key in ("message_id", "status", "smtp_code", "recipient"):
        if key in expected:
            assert getattr(event, key) == expected[key], key
    assert event.at is not None


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (EspKind.SENDGRID, b"\xff\xfe not utf-8"),
        (EspKind.SENDGRID, b"[" * 100000 + b"]" * 100000),  # nesting past the parser's recursion
        (EspKind.SENDGRID, b'{"event": "bounce"}'),  # an object where SendGrid posts a list
        (EspKind.MAILGUN, b'{"signature": {}, "event-data": "x"}'),
        (EspKind.GENERIC, b'{"events": ' + b"[{}" + b",{}" * 6000 + b"]}"),  # over MAX_EVENTS
        (EspKind.SES, b'"just a string"'),
    ],
)
def test_hostile_bodies_are_refused_as_malformed(kind: EspKind, body: bytes) -> None:
    with pytest.raises(Refused) as refused:
        parse_events(kind, read_json(body), metadata_key="probe")
    assert refused.value.reason is WebhookRefusal.MALFORMED


def test_fields_of_the_wrong_type_read_as_absent() -> None:
    body = json.dumps(
        [{"event": "bounce", "sg_message_id": ["x"], "timestamp": "soon", "email": 7, "reason": {}}]
    ).encode()
    [event] = parse_events(EspKind.SENDGRID, read_json(body), metadata_key="probe")
    assert (event.message_id, event.at, event.diagnostic) == (None, None, None)
