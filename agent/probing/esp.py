"""ESP events matched to probes, on the agent's loop; every write goes through `Outcomes`.

A verified post's events (agent.webhooks) find their probe by the ESP's message id stored from
the 250 reply (`match: message_id`), or by the probe id the agent passed in the ESP's metadata
header (`match: metadata`). What each event means:

    delivered          -> the ESP's latency stage (250 -> delivered), once per probe
    bounce             -> a hard bounce (source esp) and the outcome `bounced`
    soft_bounce, deferred -> a soft bounce (source esp); the probe stays open
    dropped            -> a hard bounce with the reason `suppressed` and the outcome `rejected`
    complaint          -> a counter, once per probe; never an outcome
    other              -> counted as received, nothing else

ESPs retry and do not keep order: the ledger's write-once columns and bounce keys make every
event idempotent, and a final outcome is final. An event that comes before the probe's 250 was
stored (its message id is not known yet, or the probe is still being sent) is kept in the ledger
(bounded, expiring) and applied when the sender has stored the result (`settle`).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from agent.config import Config
from agent.config.esp import EspMatch
from agent.model import BounceSource, BounceType, EspEvent, EspEventType, Outcome, WebhookRefused
from agent.probing.outcomes import Outcomes
from agent.reading.bounces import bounce_reason
from agent.store.ledger import Ledger, ProbeRecord, ProbeState
from agent.webhooks.receiver import EspPost

__all__ = ["PENDING_CAP", "PENDING_TTL", "EspEvents", "WebhookHealth"]

log = logging.getLogger(__name__)

PENDING_CAP: Final = 10000  # early events kept at most (the oldest dropped first)
PENDING_TTL: Final = 3600.0  # seconds an early event waits for its probe's 250


@dataclass(frozen=True, slots=True)
class WebhookHealth:
    """A route's webhook since the agent started, for the status page."""

    last_post_at: float | None  # the last verified post; None: none yet
    refused: int  # posts refused
    last_refusal: str | None  # the reason of the last refused post


class EspEvents:
    """Takes what the webhook receiver hands over; call on the agent's loop only."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        outcomes: Outcomes,
        config: Callable[[], Config],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._outcomes = outcomes
        self._config = config
        self._clock = clock
        self._last_post: dict[str, float] = {}
        self._refused: collections.Counter[str] = collections.Counter()
        self._last_refusal: dict[str, str] = {}

    def health(self) -> dict[str, WebhookHealth]:
        """Per route with a webhook in the current config: its posts since the agent started."""
        routes = [route.name for route in self._config().routes if route.esp is not None]
        return {
            route: WebhookHealth(
                self._last_post.get(route), self._refused[route], self._last_refusal.get(route)
            )
            for route in routes
        }

    async def take(self, item: WebhookRefused | EspPost) -> None:
        """A refusal to count, or a verified post's events to apply (raises LedgerError when
        the ledger cannot take them: the post is then answered 503 and retried by the ESP)."""
        if isinstance(item, WebhookRefused):
            self._outcomes.webhook_refused(item)
            self._refused[item.route] += 1
            self._last_refusal[item.route] = item.reason.value
            return
        self.receive(item)

    def receive(self, post: EspPost) -> None:
        try:
            esp = self._config().route(post.route).esp
        except KeyError:
            esp = None
        if esp is None:
            return  # the route lost its webhook in a reload since the post was verified
        self._last_post[post.route] = post.received_at
        self._ledger.expire_esp_events(post.received_at - PENDING_TTL)
        for event in post.events:
            self._outcomes.esp_received(post.route, event.event_type, received_at=post.received_at)
            if event.event_type is EspEventType.OTHER:
                continue
            if esp.match is EspMatch.MESSAGE_ID:
                self._by_message_id(post.route, event, post.received_at)
            else:
                self._by_probe_id(post.route, event, post.received_at)

    def _by_message_id(self, route: str, event: EspEvent, received_at: float) -> None:
        if event.message_id is None:
            self._outcomes.esp_unmatched(route)
            return
        record = self._ledger.by_esp_message_id(route, event.message_id)
        if record is None:
            # Its probe's 250 may not be stored yet; or it is other mail of the ESP account.
            self._outcomes.esp_unmatched(route)
            self._keep(route, f"m:{event.message_id}", event, received_at)
            return
        self.apply(record, event, received_at=received_at)

    def _by_probe_id(self, route: str, event: EspEvent, received_at: float) -> None:
        record = None if event.probe_id is None else self._ledger.get(event.probe_id)
        if record is None or record.route != route:
            self._outcomes.esp_unmatched(route)
            return
        if record.state in (ProbeState.SENDING, ProbeState.INTERRUPTED):
            self._keep(route, f"p:{record.probe_id}", event, received_at)
            return
        self.apply(record, event, received_at=received_at)

    def _keep(self, route: str, key: str, event: EspEvent, received_at: float) -> None:
        self._ledger.keep_esp_event(route, key, event, received_at=received_at, cap=PENDING_CAP)

    def settle(self, probe_id: str) -> int:
        """Apply the events kept for a probe whose send result is now stored; how many."""
        record = self._ledger.get(probe_id)
        if record is None:
            return 0
        keys = [f"p:{probe_id}"]
        if record.esp_message_id is not None:
            keys.append(f"m:{record.esp_message_id}")
        events = self._ledger.take_esp_events(record.route, keys)
        for event in events:
            current = self._ledger.get(probe_id)
            if current is not None:
                self.apply(current, event, received_at=self._clock())
        return len(events)

    def apply(self, record: ProbeRecord, event: EspEvent, *, received_at: float) -> None:
        at = event.at if event.at is not None else received_at
        match event.event_type:
            case EspEventType.DELIVERED:
                self._outcomes.esp_delivered(record, at=at)
            case EspEventType.BOUNCE | EspEventType.SOFT_BOUNCE | EspEventType.DEFERRED:
                hard = event.event_type is EspEventType.BOUNCE
                self._outcomes.bounce(
                    record,
                    BounceType.HARD if hard else BounceType.SOFT,
                    BounceSource.ESP,
                    status=event.status,
                    reporting_mta=None,
                    seen_at=at,
                    reason=bounce_reason(event.status, event.smtp_code, event.diagnostic or ""),
                    smtp_code=event.smtp_code,
                    action="failed" if hard else "delayed",
                    recipient=event.recipient,
                )
                if hard and record.outcome is None:
                    self._outcomes.finalize(record, Outcome.BOUNCED, finished_at=at)
            case EspEventType.DROPPED:
                self._outcomes.esp_suppressed(
                    record, at=at, recipient=event.recipient, diagnostic=event.diagnostic
                )
            case EspEventType.COMPLAINT:
                self._outcomes.esp_complaint(record, at=at)
            case EspEventType.OTHER:
                pass
