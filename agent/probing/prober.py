"""Sends one probe for one (route, mailbox) pair and records what the SMTP server said.

The probe is written to the ledger before the SMTP transaction starts, so a crash mid-send is
known after a restart. An accepted probe is then forgotten by the sender: the mailbox watchers and
the reaper take it from there.
"""

from __future__ import annotations

import email.policy
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from agent.config import Config, Mailbox, Route
from agent.monitoring.recorder import Recorder
from agent.probing.outcomes import Outcomes
from agent.reading.probe_token import build_probe_message, new_probe_id
from agent.smtp.replies import verdict_of
from agent.smtp.sender import SmtpTarget, send_probe
from agent.store.ledger import Ledger

__all__ = ["Prober", "smtp_target"]

log = logging.getLogger(__name__)


def smtp_target(route: Route) -> SmtpTarget:
    """The SMTP adapter's view of a configured route."""
    return SmtpTarget(
        route=route.name,
        host=route.host,
        port=route.port,
        tls=route.tls,
        tls_verify=route.tls_verify,
        ca_file=route.ca_file,
        username=route.auth.username if route.auth else None,
        password=route.auth.password.get_secret_value() if route.auth else None,
        ehlo_name=route.ehlo_name,
        connect_timeout=route.timeouts.connect,
        stage_timeout=route.timeouts.stage,
        total_timeout=route.timeouts.total,
    )


class Prober:
    """Sends probes; one instance serves every pair."""

    def __init__(
        self,
        *,
        config: Config,
        ledger: Ledger,
        recorder: Recorder,
        outcomes: Outcomes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._secret = config.secret.get_secret_value().encode()
        self._deadline = config.probes.deadline
        self._ledger = ledger
        self._recorder = recorder
        self._outcomes = outcomes
        self._clock = clock

    async def probe(self, route: Route, mailbox: Mailbox) -> str:
        """Send one probe from `route` to `mailbox`; returns its id once the transaction ended."""
        probe_id = new_probe_id()
        created_at = self._clock()
        message = build_probe_message(
            probe_id=probe_id,
            secret=self._secret,
            header_from=route.from_,
            to=mailbox.address,
            route=route.name,
            mailbox=mailbox.name,
            sent_at=datetime.fromtimestamp(created_at, UTC),
        )
        self._ledger.record_sending(
            probe_id=probe_id,
            route=route.name,
            mailbox=mailbox.name,
            created_at=created_at,
            deadline_at=created_at + self._deadline,
        )
        self._recorder.probe_sent(route.name, mailbox.name)
        self._outcomes.refresh_in_flight()

        result = await send_probe(
            smtp_target(route),
            envelope_from=self._config.envelope_from(route, probe_id),
            recipients=[mailbox.address],
            message=message.as_bytes(policy=email.policy.SMTP),
        )
        self._ledger.record_send_result(probe_id, result)
        self._recorder.smtp_result(route.name, result)
        verdict = verdict_of(result)
        if verdict is None:
            log.debug(
                "probe %s accepted by %s in %.2f s", probe_id, route.name, result.duration_seconds
            )
            return probe_id
        if result.error is not None:
            log.warning(
                "probe %s via %s failed at %s (%s): %s",
                probe_id,
                route.name,
                result.error.stage,
                result.error.kind,
                result.error.message,
            )
        record = self._ledger.get(probe_id)
        assert record is not None  # written above
        self._outcomes.smtp_verdict(record, result, verdict, finished_at=self._clock())
        return probe_id
