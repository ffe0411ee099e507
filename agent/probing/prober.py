"""Sends one probe for one (route, mailbox) pair and hands what the SMTP server said on.

The probe is written to the ledger before the SMTP transaction starts, so a crash mid-send is
known after a restart, and a probe the ledger cannot take (a full disk) is never sent. The SMTP
adapter (`agent.smtp.sender.send_probe`) takes a frozen target and returns a frozen `SendResult`;
`Outcomes` stores it and records it, retried while the ledger refuses writes, since the probe went
out. An accepted probe is then forgotten by the sender: the mailbox watchers and the reaper take it
from there, and they meet the sender only in the ledger.
"""

from __future__ import annotations

import asyncio
import email.policy
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from agent.config import Config, Mailbox, Route
from agent.log_fields import probe_fields
from agent.model import SendResult, Stage
from agent.oauth.sources import TokenSources
from agent.probing.outcomes import Outcomes
from agent.probing.probe_message import (
    build_probe_message,
    esp_metadata_headers,
    probe_message_bytes,
)
from agent.probing.targets import smtp_target
from agent.reading.probe_token import new_probe_id
from agent.smtp.replies import verdict_of
from agent.smtp.sender import send_probe
from agent.store.ledger import LedgerError
from agent.webhooks.payloads import message_id_from_reply

if TYPE_CHECKING:
    from agent.probing.esp import EspEvents

__all__ = ["Prober"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds between attempts to store a sent probe's result in a ledger that refuses writes.
STORE_RETRY_INITIAL = 1.0
STORE_RETRY_MAX = 60.0


class Prober:
    """Sends probes; one instance serves every pair."""

    def __init__(
        self,
        *,
        config: Config,
        outcomes: Outcomes,
        esp: EspEvents | None = None,
        clock: Callable[[], float] = time.time,
        tokens: TokenSources | None = None,
    ) -> None:
        self._config = config
        self._tokens = tokens
        self._esp = esp
        self._secret = config.secret.get_secret_value().encode()
        self._deadline = config.probes.deadline
        self._outcomes = outcomes
        self._clock = clock

    async def probe(self, route: Route, mailbox: Mailbox) -> str:
        """Send one probe from `route` to `mailbox`; returns its id once the transaction ended."""
        probe_id = new_probe_id()
        created_at = self._clock()
        sent_at = datetime.fromtimestamp(created_at, UTC)
        if route.esp is None:
            message = probe_message_bytes(
                probe_id=probe_id,
                secret=self._secret,
                header_from=route.from_,
                to=mailbox.address,
                route=route.name,
                mailbox=mailbox.name,
                sent_at=sent_at,
            )
        else:
            # The ESP's metadata header carries the probe id: no template for these.
            message = build_probe_message(
                probe_id=probe_id,
                secret=self._secret,
                header_from=route.from_,
                to=mailbox.address,
                route=route.name,
                mailbox=mailbox.name,
                sent_at=sent_at,
                extra_headers=esp_metadata_headers(
                    route.esp.kind, route.esp.metadata_key, probe_id
                ),
            ).as_bytes(policy=email.policy.SMTP)
        self._outcomes.sending(
            probe_id=probe_id,
            route=route.name,
            mailbox=mailbox.name,
            created_at=created_at,
            deadline_at=created_at + self._deadline,
        )
        result = await send_probe(
            smtp_target(route, self._tokens.sign_in("route", route.name) if self._tokens else None),
            envelope_from=self._config.envelope_from(route, probe_id),
            recipients=[mailbox.address],
            message=message,
        )
        fields = probe_fields(route=route.name, mailbox=mailbox.name, probe_id=probe_id)
        # Stored before it is logged: a log line never claims what a crash could still undo.
        verdict = verdict_of(result)
        if verdict is not None:
            # Refused, deferred or failed: result, bounce and outcome in one ledger transaction.
            finished_at = self._clock()
            await _until_stored(
                lambda: self._outcomes.sent_with_verdict(
                    probe_id, result, verdict, finished_at=finished_at
                ),
                fields,
            )
            if result.error is not None:
                log.warning(
                    "probe %s via %s failed at %s (%s): %s",
                    probe_id,
                    route.name,
                    result.error.stage,
                    result.error.kind,
                    result.error.message,
                    extra=fields,
                )
            return probe_id
        esp_message_id = _esp_message_id(result) if route.esp is not None else None
        record = await _until_stored(
            lambda: self._outcomes.sent(probe_id, result, esp_message_id=esp_message_id), fields
        )
        log.debug(
            "probe %s accepted by %s in %.2f s",
            probe_id,
            route.name,
            result.duration_seconds,
            extra=fields,
        )
        # Seen in its mailbox before its result was stored: finalized from that arrival now.
        await _until_stored(lambda: self._outcomes.settle_arrival(record), fields)
        esp = self._esp
        if esp is not None and route.esp is not None:
            # Events that came before this 250 was stored wait in the ledger: apply them now.
            await _until_stored(lambda: esp.settle(probe_id), fields)
        return probe_id


def _esp_message_id(result: SendResult) -> str | None:
    """The ESP's message id in the 250 reply to end of data, if it gave one."""
    if not result.accepted:
        return None
    for reply in reversed(result.transcript):
        if reply.stage is Stage.END_OF_DATA and reply.code == 250:
            return message_id_from_reply(reply.text)
    return None


async def _until_stored(write: Callable[[], T], fields: dict[str, str]) -> T:
    """`write()`, again and again while the ledger fails (a full disk): the probe went out, and
    what it learned must not be lost. Each write is idempotent, so a retry never counts twice.
    Cancelled by a stop, the probe keeps what was stored and the next start settles the rest."""
    delay = STORE_RETRY_INITIAL
    while True:
        try:
            return write()
        except LedgerError as exc:
            if exc.kind is None:
                raise  # refused, not failed (a caller bug): retrying cannot help
            log.warning(
                "probe %s: not stored yet: %s; retrying in %.0f s",
                fields["probe_id"],
                exc,
                delay,
                extra=fields,
            )
        await asyncio.sleep(delay)  # backoff: nothing announces that space came back
        delay = min(delay * 2, STORE_RETRY_MAX)
