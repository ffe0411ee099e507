"""What the HTTP server calls for POST /webhooks/<route>, on one of its worker threads.

A post is verified and read here, off the agent's event loop, in bounded time (the body is at
most `MAX_BODY_BYTES`; an SNS certificate fetch has its own timeout and is cached). A refused
post is handed over as `WebhookRefused` and answered at once; it never reaches the ledger. The
events of a verified post are handed to the agent's loop (thread-safe, through `hand_over`) and
the post is answered 200 only once they are stored, so an ESP retries what a full disk or a
stopping agent could not take (503).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec

from agent.config.esp import Esp, sendgrid_public_key
from agent.model import EspEvent, EspKind, WebhookRefusal, WebhookRefused
from agent.webhooks.payloads import parse_events, read_json
from agent.webhooks.signatures import (
    Refused,
    TokenCache,
    check_basic_auth,
    check_timestamp,
    verify_generic,
    verify_mailgun,
    verify_sendgrid,
    verify_sns,
)
from agent.webhooks.sns import SnsCertificates

__all__ = ["MAX_BODY_BYTES", "EspPost", "HandOver", "WebhookReceiver", "WebhookReply"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 1024 * 1024  # 1 MiB: SendGrid batches stay far below it
HAND_OVER_TIMEOUT: Final = 10.0  # seconds for the agent's loop to store a post's events


@dataclass(frozen=True, slots=True)
class WebhookReply:
    status: int
    text: str


@dataclass(frozen=True, slots=True)
class EspPost:
    """The events of one verified post to a route's webhook."""

    route: str
    events: tuple[EspEvent, ...]
    received_at: float


# Hands a refusal or a post to the agent's loop; the future ends when it was handled there.
HandOver = Callable[[WebhookRefused | EspPost], "concurrent.futures.Future[None]"]


@functools.lru_cache(maxsize=64)
def _sendgrid_key(text: str) -> ec.EllipticCurvePublicKey:
    return sendgrid_public_key(text)


class WebhookReceiver:
    """Verifies and reads posts for the routes `routes()` currently configures with an ESP."""

    def __init__(
        self,
        *,
        routes: Callable[[], Mapping[str, Esp]],
        hand_over: HandOver,
        certificates: SnsCertificates | None = None,
        clock: Callable[[], float] = time.time,
        hand_over_timeout: float = HAND_OVER_TIMEOUT,
    ) -> None:
        self._routes = routes
        self._hand_over = hand_over
        self._certificates = certificates if certificates is not None else SnsCertificates()
        self._clock = clock
        self._timeout = hand_over_timeout
        self._tokens: dict[str, TokenCache] = {}
        self._lock = threading.Lock()

    def accepts(self, route: str) -> bool:
        """Whether `route` has a webhook (an unknown route is a 404, counted nowhere)."""
        return route in self._routes()

    def refuse(self, route: str, reason: str) -> None:
        """Count a post refused before its body was read (too large, no length)."""
        self._count(WebhookRefused(route, WebhookRefusal(reason)))

    def _count(self, refused: WebhookRefused) -> None:
        try:
            self._hand_over(refused)
        except RuntimeError:  # the agent's loop has ended (shutting down): nothing to count on
            log.debug("webhook %s: refusal not counted, the agent is stopping", refused.route)

    def __call__(self, route: str, headers: dict[str, str], body: bytes) -> WebhookReply:
        esp = self._routes().get(route)
        if esp is None:
            return WebhookReply(404, "no webhook for this route")
        now = self._clock()
        try:
            events = self._read(route, esp, headers, body, now)
        except Refused as refused:
            log.info("webhook %s: refused a post (%s): %s", route, refused.reason, refused)
            self._count(WebhookRefused(route, refused.reason))
            return WebhookReply(refused.status, f"refused: {refused.reason}")
        if events is None:
            return WebhookReply(200, "ok")
        try:
            self._hand_over(EspPost(route, events, now)).result(timeout=self._timeout)
        except Exception as exc:
            # Not stored: the ESP retries a non-2xx answer later.
            log.warning("webhook %s: %d events not stored: %s", route, len(events), exc)
            return WebhookReply(503, "not stored; retry later")
        return WebhookReply(200, f"ok: {len(events)} events")

    def _read(
        self, route: str, esp: Esp, headers: Mapping[str, str], body: bytes, now: float
    ) -> tuple[EspEvent, ...] | None:
        webhook, max_age = esp.webhook, esp.webhook.max_age
        payload: Any
        match esp.kind:
            case EspKind.SENDGRID:
                assert webhook.public_key is not None  # checked at load
                key = _sendgrid_key(webhook.public_key)
                verify_sendgrid(key, headers, body, now=now, max_age=max_age)
                payload = read_json(body)
            case EspKind.MAILGUN:
                assert webhook.signing_key is not None
                payload = read_json(body)
                secret = webhook.signing_key.get_secret_value().encode()
                verify_mailgun(secret, payload, self._token_cache(route), now=now, max_age=max_age)
            case EspKind.POSTMARK:
                assert webhook.basic_auth is not None
                auth = webhook.basic_auth
                password = auth.password.get_secret_value()
                check_basic_auth(auth.username, password, headers.get("authorization"))
                payload = read_json(body)
            case EspKind.GENERIC:
                assert webhook.hmac_secret is not None
                secret = webhook.hmac_secret.get_secret_value().encode()
                verify_generic(secret, headers, body, now=now, max_age=max_age)
                payload = read_json(body)
            case EspKind.SES:
                return self._sns(route, esp, body, now)
        return parse_events(esp.kind, payload, metadata_key=esp.metadata_key)

    def _sns(self, route: str, esp: Esp, body: bytes, now: float) -> tuple[EspEvent, ...] | None:
        message = read_json(body)
        if not isinstance(message, dict):
            raise Refused(WebhookRefusal.MALFORMED, "not an SNS message")
        verify_sns(message, self._certificates)
        # AWS signs every topic's messages alike: only the configured topic's are taken.
        if message.get("TopicArn") != esp.webhook.topic_arn:
            raise Refused(WebhookRefusal.BAD_SIGNATURE, "an SNS message of another topic")
        check_timestamp(_iso_epoch(message.get("Timestamp")), now=now, max_age=esp.webhook.max_age)
        kind = message["Type"]
        if kind == "SubscriptionConfirmation":
            url = str(message.get("SubscribeURL"))
            if esp.webhook.confirm_subscription:
                self._certificates.get(url)
                log.warning(
                    "webhook %s: confirmed the SNS subscription to %s", route, esp.webhook.topic_arn
                )
            else:
                log.warning(
                    "webhook %s: SNS asks to confirm the subscription to %s: open %s (or set "
                    "confirm_subscription: true)",
                    route,
                    esp.webhook.topic_arn,
                    url,
                )
            return None
        if kind == "UnsubscribeConfirmation":
            log.warning(
                "webhook %s: SNS unsubscribed this endpoint from %s", route, esp.webhook.topic_arn
            )
            return None
        inner = read_json(str(message.get("Message")).encode())
        return parse_events(EspKind.SES, inner, metadata_key=esp.metadata_key)

    def _token_cache(self, route: str) -> TokenCache:
        with self._lock:
            return self._tokens.setdefault(route, TokenCache())


def _iso_epoch(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise Refused(WebhookRefusal.MALFORMED, "an unreadable SNS Timestamp") from None
