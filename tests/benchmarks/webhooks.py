"""Benchmark: signed ESP event posts through the real HTTP server into the real ledger.

    .venv/bin/python -m tests.benchmarks.webhooks [--posts 300] [--events 10]

Method: this process plays the agent: an asyncio loop on the main thread owning a ledger with one
probe per event (each with its ESP message id stored, as after its 250), the real Recorder,
EspEvents and WebhookReceiver, and the real HttpServer (4 workers). A client thread posts
`--posts` bodies of `--events` bounce events each, one connection kept alive, per kind:
generic (HMAC-SHA256), SendGrid (ECDSA P-256, key made here). Each post is answered 200 only
after its events are in the ledger. Printed: posts per second and the median / p95 time of one
post (request sent -> answer read), and the events that ended probes `bounced`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.config import Config, validate_config
from agent.model import SendResult, SmtpReply, Stage
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder
from agent.probing.esp import EspEvents
from agent.probing.outcomes import Outcomes
from agent.store.ledger import Ledger
from agent.web.http_server import HttpServer, Status
from agent.webhooks.receiver import WebhookReceiver

SECRET = "benchmark-hmac-secret-0123456789"


def _config(directory: Path, public_key: str) -> Config:
    route = {"host": "127.0.0.1", "port": 1, "tls": "none", "from": "p@example.com"}
    return validate_config(
        {
            "secret": "benchmark-secret-0123456789",
            "state_dir": str(directory),
            "routes": [
                {
                    **route,
                    "name": "gen",
                    "esp": {"kind": "generic", "webhook": {"hmac_secret": SECRET}},
                },
                {
                    **route,
                    "name": "sg",
                    "esp": {"kind": "sendgrid", "webhook": {"public_key": public_key}},
                },
            ],
            "mailboxes": [
                {
                    "name": "m",
                    "host": "127.0.0.1",
                    "port": 1,
                    "tls": "none",
                    "allow_plaintext_auth": True,
                    "auth": {"username": "u", "password": "p"},
                    "address": "seed@example.com",
                }
            ],
        },
        base_dir=directory,
        environ={},
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--events", type=int, default=10)
    args = parser.parse_args()
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    asyncio.run(_run(args.posts, args.events, key, public))


async def _run(posts: int, per_post: int, key: ec.EllipticCurvePrivateKey, public: str) -> None:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(Path(tmp), public)
        registry = new_registry()
        recorder = Recorder(registry)
        ledger = Ledger(Path(tmp) / "ledger.sqlite3")
        outcomes = Outcomes(ledger, recorder)
        esp = EspEvents(ledger=ledger, outcomes=outcomes, config=lambda: config)
        now = time.time()
        for route in ("gen", "sg"):
            for index in range(posts * per_post):
                probe_id = f"{route}-{index}"
                outcomes.sending(
                    probe_id=probe_id,
                    route=route,
                    mailbox="m",
                    created_at=now,
                    deadline_at=now + 3600,
                )
                result = SendResult(
                    (SmtpReply(Stage.END_OF_DATA, 250, None, "Ok"),), True, now, 0.1
                )
                outcomes.sent(probe_id, result, esp_message_id=probe_id)
        receiver = WebhookReceiver(
            routes=lambda: {r.name: r.esp for r in config.routes if r.esp is not None},
            hand_over=lambda item: asyncio.run_coroutine_threadsafe(esp.take(item), loop),
        )
        server = HttpServer(
            registry,
            host="127.0.0.1",
            port=0,
            health=lambda: Status(True, "ok"),
            readiness=lambda: Status(True, "ok"),
            webhooks=receiver,
        )
        try:
            for route in ("gen", "sg"):
                times = await asyncio.to_thread(_client, server.port, route, posts, per_post, key)
                total = sum(times)
                bounced = sum(
                    1
                    for i in range(posts * per_post)
                    if (r := ledger.get(f"{route}-{i}")) is not None and r.outcome is not None
                )
                print(
                    f"{route}: {posts} posts x {per_post} events: {posts / total:.0f} posts/s, "
                    f"median {statistics.median(times) * 1000:.1f} ms, "
                    f"p95 {sorted(times)[int(len(times) * 0.95)] * 1000:.1f} ms per post; "
                    f"{bounced} probes bounced"
                )
        finally:
            server.close()
            ledger.close()


def _client(
    port: int, route: str, posts: int, per_post: int, key: ec.EllipticCurvePrivateKey
) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for n in range(posts):
        events = [
            {"type": "bounce", "message_id": f"{route}-{n * per_post + i}", "status": "5.1.1"}
            if route == "gen"
            else {
                "event": "bounce",
                "type": "bounce",
                "sg_message_id": f"{route}-{n * per_post + i}.filter0",
                "status": "5.1.1",
            }
            for i in range(per_post)
        ]
        body = json.dumps({"events": events} if route == "gen" else events).encode()
        stamp = str(int(time.time()))
        if route == "gen":
            digest = hmac.new(SECRET.encode(), stamp.encode() + body, hashlib.sha256).hexdigest()
            headers = {"X-Deliverability-Timestamp": stamp, "X-Deliverability-Signature": digest}
        else:
            signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
            headers = {
                "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
                "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            }
        started = time.perf_counter()
        connection.request("POST", f"/webhooks/{route}", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        times.append(time.perf_counter() - started)
        assert response.status == 200, response.status
    connection.close()
    return times


if __name__ == "__main__":
    main()
