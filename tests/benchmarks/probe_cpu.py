"""Benchmark: the CPU time of each per-probe step that issue 15 (item 4) made cheaper, then and now.

    .venv/bin/python -m tests.benchmarks.probe_cpu [--repeat 500]

Method: in this process, without sockets, each step is run `--repeat` times, five rounds; the
figure is the median round's CPU time (user + system, all threads) per call. "Old" is the way the
agent did it before (still callable: the stdlib builder, a fresh TLS context, authres on every
resinfo, one commit per ledger write); "now" is what the agent does today. The probe's whole
path, with the network and the mail system, is measured by `tests.benchmarks.probe_loop`.

- the probe message: `build_probe_message(...).as_bytes(policy=SMTP)` vs `probe_message_bytes`;
- the SMTP route's TLS context: `ssl.create_default_context` with a one-certificate CA file and
  with the system store, vs the cached context (a stat of the CA file);
- triage of a Gmail-shaped probe (tests/messages/gmail_inbox_probe.eml, 7 resinfos) with the
  resinfo-shape cache emptied before each call vs kept;
- the ledger writes of a refused probe after its send (result, bounce, outcome): three commits
  (each an fsync, synchronous=FULL in WAL) vs one transaction.
"""

from __future__ import annotations

import argparse
import email.policy
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import trustme

from agent.model import BounceSource, BounceType, Outcome, SendResult, SmtpReply, Stage
from agent.probing.probe_message import build_probe_message, probe_message_bytes
from agent.reading import authresults
from agent.reading.probe_token import KeyRing, new_probe_id
from agent.reading.triage import triage_message
from agent.store.ledger import Ledger
from agent.tls_contexts import cached_client_context, load_client_context

_MESSAGE = Path(__file__).parent.parent / "messages" / "gmail_inbox_probe.eml"
_REFUSED = SendResult(
    transcript=(
        SmtpReply(Stage.BANNER, 220, None, "mx.example ESMTP"),
        SmtpReply(Stage.RCPT, 550, "5.1.1", "no such user"),
    ),
    accepted=False,
    accepted_at=None,
    duration_seconds=0.25,
)


def _cpu_per_call(step: Callable[[], object], repeat: int) -> float:
    rounds = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(repeat):
            step()
        rounds.append((time.process_time() - started) / repeat)
    return statistics.median(rounds)


def _message_steps() -> tuple[Callable[[], object], Callable[[], object]]:
    options = {
        "secret": b"benchmark-secret-0123456789abcdef",
        "header_from": "Probe <probe@good.test>",
        "to": "box001@seed.test",
        "route": "good",
        "mailbox": "seed",
    }

    def old() -> bytes:
        message = build_probe_message(
            probe_id=new_probe_id(),
            sent_at=datetime.now(UTC),
            **options,  # type: ignore[arg-type]
        )
        return message.as_bytes(policy=email.policy.SMTP)

    def now() -> bytes:
        return probe_message_bytes(
            probe_id=new_probe_id(),
            sent_at=datetime.now(UTC),
            **options,  # type: ignore[arg-type]
        )

    return old, now


def _refused_writes(ledger: Ledger, *, one_transaction: bool) -> Callable[[], object]:
    def write() -> None:
        probe_id = new_probe_id()
        now = time.time()
        ledger.record_sending(
            probe_id=probe_id, route="r", mailbox="m", created_at=now, deadline_at=now + 600
        )
        started = time.process_time()
        if one_transaction:
            with ledger.transaction():
                _verdict(ledger, probe_id, now)
        else:
            _verdict(ledger, probe_id, now)
        write.cpu += time.process_time() - started  # type: ignore[attr-defined]

    write.cpu = 0.0  # type: ignore[attr-defined]
    return write


def _verdict(ledger: Ledger, probe_id: str, now: float) -> None:
    ledger.record_send_result(probe_id, _REFUSED)
    ledger.record_bounce(
        probe_id,
        bounce_type=BounceType.HARD,
        source=BounceSource.SMTP,
        status="5.1.1",
        reporting_mta=None,
        seen_at=now,
    )
    ledger.finalize(probe_id, outcome=Outcome.REJECTED, finished_at=now)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=500)
    args = parser.parse_args()
    repeat = args.repeat
    rows: list[tuple[str, float, float]] = []

    old, now = _message_steps()
    rows.append(("probe message", _cpu_per_call(old, repeat), _cpu_per_call(now, repeat)))

    with tempfile.TemporaryDirectory() as tmp:
        ca_file = Path(tmp) / "ca.pem"
        trustme.CA().cert_pem.write_to_path(str(ca_file))
        load_client_context(ca_file, verify=True)
        rows.append(
            (
                "TLS context, CA file",
                _cpu_per_call(lambda: ssl.create_default_context(cafile=str(ca_file)), repeat),
                _cpu_per_call(lambda: cached_client_context(ca_file, verify=True), repeat),
            )
        )
        load_client_context(None, verify=True)
        rows.append(
            (
                "TLS context, system store",
                _cpu_per_call(ssl.create_default_context, max(1, repeat // 20)),
                _cpu_per_call(lambda: cached_client_context(None, verify=True), repeat),
            )
        )

        raw, keys = _MESSAGE.read_bytes(), KeyRing(b"benchmark-secret-0123456789abcdef")
        trusted = ("mx.google.com",)

        def cold() -> object:
            authresults._parse_shape.cache_clear()
            return triage_message(raw, keys=keys, trusted_authserv_ids=trusted)

        rows.append(
            (
                "triage, Gmail probe",
                _cpu_per_call(cold, repeat),
                _cpu_per_call(
                    lambda: triage_message(raw, keys=keys, trusted_authserv_ids=trusted), repeat
                ),
            )
        )

        with Ledger(Path(tmp) / "ledger.sqlite3") as ledger:
            figures = []
            for one_transaction in (False, True):
                write = _refused_writes(ledger, one_transaction=one_transaction)
                for _ in range(repeat):
                    write()
                figures.append(write.cpu / repeat)  # type: ignore[attr-defined]
            rows.append(("refused probe's verdict writes", figures[0], figures[1]))

    print(__doc__.split("Method: ")[1].strip())
    print(f"\n{'step':34s} {'old':>10s} {'now':>10s}   (CPU per call)")
    for name, before, after in rows:
        print(f"{name:34s} {before * 1000:8.3f} ms {after * 1000:7.3f} ms")


if __name__ == "__main__":
    main()
