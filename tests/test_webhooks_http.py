"""ESP event webhooks over real HTTP: real posts to the real HttpServer, real signatures.

Keys are made here (ECDSA P-256 for SendGrid, HMAC keys, an RSA signing certificate from a trustme
CA that a loopback HTTPS server hands out as SNS would); SendGrid's own published signed post is
replayed from tests/corpus/esp/. What the receiver hands to the agent's loop is collected.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import http.client
import json
import logging
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from prometheus_client import CollectorRegistry

from agent.config.esp import Esp
from agent.model import EspEventType, WebhookRefusal, WebhookRefused
from agent.web.http_server import HttpServer, Status
from agent.webhooks.receiver import EspPost, WebhookReceiver
from agent.webhooks.signatures import sns_canonical
from agent.webhooks.sns import SnsCertificates, check_sns_url

CORPUS = Path(__file__).parent / "corpus" / "esp"
NOW = 1_765_000_000.0
TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-events"
MAILGUN_KEY = "key-mailgun-signing-0123456789"
GENERIC_SECRET = "generic-hmac-secret-0123456789"


class Collected:
    """What the receiver handed to the agent's loop."""

    def __init__(self) -> None:
        self.items: list[WebhookRefused | EspPost] = []
        self.lock = threading.Lock()

    def __call__(self, item: WebhookRefused | EspPost) -> concurrent.futures.Future[None]:
        with self.lock:
            self.items.append(item)
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        future.set_result(None)
        return future

    def refusals(self) -> list[WebhookRefusal]:
        return [i.reason for i in self.items if isinstance(i, WebhookRefused)]

    def posts(self) -> list[EspPost]:
        return [i for i in self.items if isinstance(i, EspPost)]


@pytest.fixture(scope="module")
def sendgrid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _public_b64(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


# --- a loopback "SNS" that hands out the signing certificate --------------------------------------


class _Sns:
    def __init__(self, ca: trustme.CA) -> None:
        self.signer = ca.issue_cert("sns.test", key_type=trustme.KeyType.RSA)
        key = serialization.load_pem_private_key(self.signer.private_key_pem.bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self.key = key
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                body = (
                    owner.signer.cert_chain_pems[0].bytes() if self.path.endswith(".pem") else b"ok"
                )
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def sign(self, message: dict[str, Any], version: str = "2") -> dict[str, Any]:
        message = {**message, "SignatureVersion": version, "SigningCertURL": self.url("/c.pem")}
        algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()
        signature = self.key.sign(sns_canonical(message), padding.PKCS1v15(), algorithm)
        return {**message, "Signature": base64.b64encode(signature).decode()}


@pytest.fixture(scope="module")
def sns(ca: trustme.CA) -> Iterator[_Sns]:
    server = _Sns(ca)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def certificates(sns: _Sns, ca_file: Path) -> SnsCertificates:
    return SnsCertificates(host=re.compile(r"127\.0\.0\.1"), port=sns.port, ca_file=ca_file)


# --- the agent's server with five webhooks --------------------------------------------------------


@pytest.fixture
def routes(sendgrid_key: ec.EllipticCurvePrivateKey) -> dict[str, Esp]:
    def esp(data: dict[str, Any]) -> Esp:
        return Esp.model_validate(data)

    return {
        "sg": esp({"kind": "sendgrid", "webhook": {"public_key": _public_b64(sendgrid_key)}}),
        "mg": esp({"kind": "mailgun", "webhook": {"signing_key": MAILGUN_KEY}}),
        "pm": esp(
            {
                "kind": "postmark",
                "webhook": {"basic_auth": {"username": "pm", "password": "pm-password"}},
            }
        ),
        "ses": esp({"kind": "ses", "webhook": {"topic_arn": TOPIC}}),
        "gen": esp({"kind": "generic", "webhook": {"hmac_secret": GENERIC_SECRET}}),
    }


@pytest.fixture
def collected() -> Collected:
    return Collected()


@pytest.fixture
def server(
    routes: dict[str, Esp], collected: Collected, certificates: SnsCertificates
) -> Iterator[HttpServer]:
    receiver = WebhookReceiver(
        routes=lambda: routes, hand_over=collected, certificates=certificates, clock=lambda: NOW
    )
    server = HttpServer(
        CollectorRegistry(),
        host="127.0.0.1",
        port=0,
        health=lambda: Status(True, "alive"),
        readiness=lambda: Status(True, "ready"),
        webhooks=receiver,
    )
    yield server
    server.close()


def _post(
    server: HttpServer,
    route: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, f"/webhooks/{route}", body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def _sendgrid_headers(
    key: ec.EllipticCurvePrivateKey, body: bytes, at: float = NOW
) -> dict[str, str]:
    timestamp = str(int(at))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


def _sendgrid_body(**fields: Any) -> bytes:
    event = {
        "event": "bounce",
        "type": "bounce",
        "sg_message_id": "abc123.filter0001.1.0",
        "email": "seed@example.com",
        "timestamp": int(NOW),
        "status": "5.1.1",
        "reason": "550 5.1.1 user unknown",
        **fields,
    }
    return json.dumps([event]).encode()


# --- SendGrid -------------------------------------------------------------------------------------


def test_sendgrid_post_signed_with_the_configured_key_is_taken(
    server: HttpServer, sendgrid_key: ec.EllipticCurvePrivateKey, collected: Collected
) -> None:
    body = _sendgrid_body()
    status, _ = _post(server, "sg", body, _sendgrid_headers(sendgrid_key, body))
    assert status == 200
    [post] = collected.posts()
    [event] = post.events
    assert (post.route, event.event_type, event.message_id) == ("sg", EspEventType.BOUNCE, "abc123")
    assert (event.status, event.smtp_code) == ("5.1.1", "550")


def test_sendgrid_forged_unsigned_and_stale_posts_are_refused_by_reason(
    server: HttpServer, sendgrid_key: ec.EllipticCurvePrivateKey, collected: Collected
) -> None:
    body = _sendgrid_body()
    other = ec.generate_private_key(ec.SECP256R1())
    assert _post(server, "sg", body, _sendgrid_headers(other, body))[0] == 403
    tampered = _sendgrid_headers(sendgrid_key, body)
    assert _post(server, "sg", body + b" ", tampered)[0] == 403
    assert _post(server, "sg", body)[0] == 401
    stale = _sendgrid_headers(sendgrid_key, body, at=NOW - 301)
    assert _post(server, "sg", body, stale)[0] == 403
    malformed = b"{not json"
    assert _post(server, "sg", malformed, _sendgrid_headers(sendgrid_key, malformed))[0] == 400
    assert collected.refusals() == [
        WebhookRefusal.BAD_SIGNATURE,
        WebhookRefusal.BAD_SIGNATURE,
        WebhookRefusal.UNSIGNED,
        WebhookRefusal.REPLAYED,
        WebhookRefusal.MALFORMED,
    ]
    assert collected.posts() == []


def test_sendgrids_published_signed_sample_verifies_and_reads_as_a_drop(
    collected: Collected, certificates: SnsCertificates
) -> None:
    sample = json.loads((CORPUS / "sendgrid_signed_dropped.json").read_text())
    esp = Esp.model_validate({"kind": "sendgrid", "webhook": {"public_key": sample["public_key"]}})
    receiver = WebhookReceiver(
        routes=lambda: {"sg": esp},
        hand_over=collected,
        certificates=certificates,
        clock=lambda: float(sample["timestamp"]),
    )
    headers = {
        "x-twilio-email-event-webhook-signature": sample["signature"],
        "x-twilio-email-event-webhook-timestamp": sample["timestamp"],
    }
    assert receiver("sg", headers, sample["body"].encode()).status == 200
    [event] = collected.posts()[0].events
    assert event.event_type is EspEventType.DROPPED
    assert event.message_id == "LRzXl_NHStOGhQ4kofSm_A"  # what SendGrid's 250 "queued as" names
    assert receiver("sg", headers, sample["body"].encode()[:-2]).status == 403


# --- Mailgun, Postmark, generic -------------------------------------------------------------------


def _mailgun_body(token: str, *, key: str = MAILGUN_KEY, at: float = NOW) -> bytes:
    timestamp = str(int(at))
    digest = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    return json.dumps(
        {
            "signature": {"timestamp": timestamp, "token": token, "signature": digest},
            "event-data": {
                "event": "failed",
                "severity": "permanent",
                "reason": "bounce",
                "timestamp": at,
                "recipient": "seed@example.com",
                "user-variables": {"probe": "p-1"},
                "delivery-status": {"code": 550, "message": "5.1.1 no such user"},
            },
        }
    ).encode()


def test_mailgun_token_is_taken_once_and_forgeries_are_refused(
    server: HttpServer, collected: Collected
) -> None:
    body = _mailgun_body("t" * 50)
    assert _post(server, "mg", body)[0] == 200
    assert _post(server, "mg", body)[0] == 403  # the same token again: a replay
    assert _post(server, "mg", _mailgun_body("u" * 50, key="wrong-key"))[0] == 403
    assert _post(server, "mg", _mailgun_body("v" * 50, at=NOW - 3600))[0] == 403
    assert _post(server, "mg", json.dumps({"event-data": {}}).encode())[0] == 401
    assert collected.refusals() == [
        WebhookRefusal.REPLAYED,
        WebhookRefusal.BAD_SIGNATURE,
        WebhookRefusal.REPLAYED,
        WebhookRefusal.UNSIGNED,
    ]
    [event] = collected.posts()[0].events
    assert (event.event_type, event.probe_id, event.status, event.smtp_code) == (
        EspEventType.BOUNCE,
        "p-1",
        "5.1.1",
        "550",
    )


def test_postmark_needs_its_basic_auth_credentials(
    server: HttpServer, collected: Collected
) -> None:
    body = json.dumps(
        {
            "RecordType": "Delivery",
            "MessageID": "m-1",
            "DeliveredAt": "2025-12-06T05:00:00Z",
            "Metadata": {"probe": "p-2"},
        }
    ).encode()

    def auth(user: str, password: str) -> dict[str, str]:
        return {
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        }

    assert _post(server, "pm", body, auth("pm", "pm-password"))[0] == 200
    assert _post(server, "pm", body, auth("pm", "guess"))[0] == 403
    assert _post(server, "pm", body)[0] == 401
    assert collected.refusals() == [WebhookRefusal.BAD_SIGNATURE, WebhookRefusal.UNSIGNED]
    [event] = collected.posts()[0].events
    assert (event.event_type, event.probe_id) == (EspEventType.DELIVERED, "p-2")


def _generic_headers(body: bytes, secret: str = GENERIC_SECRET, at: float = NOW) -> dict[str, str]:
    timestamp = str(int(at))
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).hexdigest()
    return {"X-Deliverability-Timestamp": timestamp, "X-Deliverability-Signature": digest}


def test_generic_post_is_checked_with_its_hmac_and_timestamp(
    server: HttpServer, collected: Collected
) -> None:
    body = json.dumps({"events": [{"type": "dropped", "message_id": "q1"}]}).encode()
    assert _post(server, "gen", body, _generic_headers(body))[0] == 200
    assert _post(server, "gen", body, _generic_headers(body, secret="x" * 20))[0] == 403
    assert _post(server, "gen", body, _generic_headers(body, at=NOW + 600))[0] == 403
    assert collected.refusals() == [WebhookRefusal.BAD_SIGNATURE, WebhookRefusal.REPLAYED]
    assert collected.posts()[0].events[0].event_type is EspEventType.DROPPED


# --- Amazon SES through SNS -----------------------------------------------------------------------


def _sns_notification(inner: dict[str, Any], topic: str = TOPIC) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": topic,
        "Message": json.dumps(inner),
        "Timestamp": "2025-12-06T05:46:40.000Z",
    }


SES_BOUNCE = {
    "notificationType": "Bounce",
    "bounce": {
        "bounceType": "Permanent",
        "bounceSubType": "General",
        "bouncedRecipients": [
            {
                "emailAddress": "seed@example.com",
                "status": "5.1.1",
                "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                "action": "failed",
            }
        ],
        "timestamp": "2025-12-06T05:46:39.000Z",
    },
    "mail": {"messageId": "0000014a-ses-id", "tags": {"probe": ["p-3"]}},
}


def test_sns_signatures_v1_and_v2_verify_with_a_certificate_fetched_once(
    server: HttpServer, sns: _Sns, certificates: SnsCertificates, collected: Collected
) -> None:
    for version in ("1", "2"):
        message = sns.sign(_sns_notification(SES_BOUNCE), version)
        assert _post(server, "ses", json.dumps(message).encode())[0] == 200
    assert certificates.fetches == 1
    events = [event for post in collected.posts() for event in post.events]
    assert [(e.event_type, e.message_id, e.status) for e in events] == [
        (EspEventType.BOUNCE, "0000014a-ses-id", "5.1.1")
    ] * 2


def test_sns_forgeries_other_topics_and_foreign_certificate_hosts_are_refused(
    server: HttpServer, sns: _Sns, certificates: SnsCertificates, collected: Collected
) -> None:
    signed = sns.sign(_sns_notification(SES_BOUNCE))
    forged = {**signed, "Message": json.dumps({**SES_BOUNCE, "mail": {"messageId": "other"}})}
    assert _post(server, "ses", json.dumps(forged).encode())[0] == 403
    other_topic = sns.sign(_sns_notification(SES_BOUNCE, topic=TOPIC + "-other"))
    assert _post(server, "ses", json.dumps(other_topic).encode())[0] == 403
    elsewhere = {**signed, "SigningCertURL": "https://evil.example/c.pem"}
    assert _post(server, "ses", json.dumps(elsewhere).encode())[0] == 403
    assert collected.refusals() == [
        WebhookRefusal.BAD_SIGNATURE,
        WebhookRefusal.BAD_SIGNATURE,
        WebhookRefusal.CERTIFICATE,
    ]
    assert not any(path != "/c.pem" for path in sns.requests)


def test_sns_subscription_confirmation_is_logged_with_its_url_or_confirmed(
    server: HttpServer, sns: _Sns, routes: dict[str, Esp], caplog: pytest.LogCaptureFixture
) -> None:
    message = sns.sign(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": "m",
            "Token": "tok",
            "TopicArn": TOPIC,
            "Message": "You have chosen to subscribe",
            "SubscribeURL": sns.url("/?Action=ConfirmSubscription&Token=tok"),
            "Timestamp": "2025-12-06T05:46:40.000Z",
        }
    )
    with caplog.at_level(logging.WARNING, logger="agent.webhooks.receiver"):
        assert _post(server, "ses", json.dumps(message).encode())[0] == 200
    assert message["SubscribeURL"] in caplog.text
    assert "/?Action=ConfirmSubscription&Token=tok" not in sns.requests
    routes["ses"] = Esp.model_validate(
        {"kind": "ses", "webhook": {"topic_arn": TOPIC, "confirm_subscription": True}}
    )
    assert _post(server, "ses", json.dumps(message).encode())[0] == 200
    assert "/?Action=ConfirmSubscription&Token=tok" in sns.requests


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.us-east-1.amazonaws.com/c.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/c.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/c.pem",
        "https://user@sns.us-east-1.amazonaws.com/c.pem",
        "https://sns.us-east-1.amazonaws.com:8443/c.pem",
        "https://sns.us-east-1.amazonaws.com/c.pem?x=1",
        "https://sns.us-east-1.amazonaws.com/c.txt",
        "https://sqs.us-east-1.amazonaws.com/c.pem",
        "https://sns.us-east-1.amazonaws.com\\@evil.example/c.pem",
    ],
)
def test_sns_certificate_url_must_be_https_on_an_sns_host(url: str) -> None:
    from agent.webhooks.signatures import Refused

    with pytest.raises(Refused):
        check_sns_url(url)


def test_sns_certificate_url_of_a_real_region_passes() -> None:
    url = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"
    assert check_sns_url(url) == url
    assert check_sns_url("https://sns.cn-north-1.amazonaws.com.cn/a.pem")


# --- what every webhook refuses before reading ---------------------------------------------------


def test_oversized_chunked_unknown_and_wrong_method_posts_get_their_status(
    server: HttpServer, collected: Collected
) -> None:
    sock_connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    sock_connection.putrequest("POST", "/webhooks/gen")
    sock_connection.putheader("Content-Length", str(1024 * 1024 + 1))
    sock_connection.endheaders()  # the body is never sent: the head alone is refused
    response = sock_connection.getresponse()
    assert response.status == 413
    sock_connection.close()
    # Head and chunked body in one write: the server answers from the head and closes.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as chunked:
        chunked.sendall(
            b"POST /webhooks/gen HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\n\r\n"
        )
        assert chunked.makefile("rb").readline().startswith(b"HTTP/1.1 411 ")
    assert _post(server, "nope", b"{}")[0] == 404
    assert _post(server, "gen", b"", method="GET")[0] == 405
    assert collected.refusals() == [WebhookRefusal.TOO_LARGE, WebhookRefusal.MALFORMED]


def test_a_body_on_any_other_path_is_still_refused(server: HttpServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("POST", "/metrics", body=b"x")
    assert connection.getresponse().status == 413
    connection.close()


def test_keep_alive_survives_taken_and_unknown_route_posts(
    server: HttpServer, collected: Collected
) -> None:
    body = json.dumps({"events": [{"type": "delivered", "message_id": "q2"}]}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    statuses = []
    for route in ("gen", "nope", "gen"):  # a 404's body is read too: the connection goes on
        connection.request("POST", f"/webhooks/{route}", body=body, headers=_generic_headers(body))
        response = connection.getresponse()
        response.read()
        statuses.append((response.status, response.getheader("Connection")))
    connection.close()
    assert statuses == [(200, "keep-alive"), (404, "keep-alive"), (200, "keep-alive")]
    assert len(collected.posts()) == 2
