"""Benchmark: how fast the agent sees a delivered probe (IDLE vs polling), and its CPU per probe.

    .venv/bin/python -m tests.benchmarks.probe_loop [--probes N] [--poll-interval S]
        [--modes idle,poll] [--event-loop uvloop|asyncio] [--concurrency K]

Method: starts the real test mail system, then runs the agent in this process (on the event loop
`run` uses, uvloop where installed; `--event-loop asyncio` to compare) three times (IMAP IDLE with
the folder's notification delay calibrated, IDLE with `calibrate: false`, then polling every S
seconds), each time sending N probes through submission (STARTTLS + AUTH, DKIM-signed,
rspamd-checked, Sieve, LMTP) to fresh seed mailboxes, with cleanup `keep`: one after another to one
mailbox, or with `--concurrency K` to K mailboxes in rounds of K probes at once (as an agent with
many pairs has several in flight: the loop's fixed costs per wake-up are shared), after one round
not counted (the watchers' first pass, cold caches). For each probe it reads three instants: the 250
reply to end-of-data (`accepted_at`), the moment Dovecot wrote the message file into the Maildir
(its mtime), and the moment the agent's watcher saw the message (`seen_at`, the notification delay
taken off when calibrated: the time the ledger stores). With calibration, the probes are sent once
the first calibration of the inbox is done. It prints the distribution of arrival -> seen (the
agent's own reaction time; |arrival -> seen| too, the error of a calibrated figure) and 250 -> seen
(what the latency metric shows), the agent process's CPU time (user + system, all threads) divided
by the number of probes, and how the probes were found (deliverability_probes_found_total by
found_by).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from agent.app import event_loop
from agent.app.event_loop import EventLoopKind
from agent.app.service import Agent
from agent.model import FoundBy, ImapCalibration
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder, Result
from tests.agent_setup import AgentSetup
from tests.mailsystem import MailSystem
from tests.mailsystem.topology import Account


def _maildir_mtime(system: MailSystem, account: Account, probe_id: str) -> float:
    local, domain = account.address.split("@")
    maildir = system.layout.mail / domain / local / "Maildir"
    for sub in ("new", "cur"):
        for path in (maildir / sub).iterdir():
            if probe_id.encode() in path.read_bytes():
                return path.stat().st_mtime
    raise LookupError(f"probe {probe_id} not found in {maildir}")


class _CalibrationRecorder(Recorder):
    """The agent's recorder, which also says when the first calibration came."""

    def __init__(self, registry: CollectorRegistry, mailboxes: int) -> None:
        super().__init__(registry)
        self.calibrated = asyncio.Event()  # set once every mailbox's inbox was calibrated
        self.delay: float | None = None
        self._mailboxes = mailboxes
        self._calibrated: set[str] = set()

    def record(self, result: Result) -> None:
        super().record(result)
        if isinstance(result, ImapCalibration) and result.delay_seconds is not None:
            self.delay = result.delay_seconds
            if result.folder.upper() == "INBOX":
                self._calibrated.add(result.mailbox)
            if len(self._calibrated) >= self._mailboxes:
                self.calibrated.set()


async def _run_mode(
    system: MailSystem,
    workdir: Path,
    *,
    probes: int,
    concurrency: int,
    use_idle: bool,
    poll_interval: float,
    calibrate: bool,
) -> tuple[list[float], list[float], float, dict[str, float]]:
    accounts = {f"seed{index}": system.new_mailbox() for index in range(concurrency)}
    setup = AgentSetup(system, workdir).route("good")
    for name, account in accounts.items():
        setup.mailbox(name, account)
    for mailbox in setup.mailboxes:
        mailbox["calibrate"] = calibrate
    setup.probes["cleanup"] = "keep"
    config = setup.load()
    registry = new_registry()
    recorder = _CalibrationRecorder(registry, len(accounts))
    agent = Agent(config, recorder=recorder, use_idle=use_idle, poll_interval=poll_interval)
    await agent.start()
    if calibrate:
        async with asyncio.timeout(120):
            await recorder.calibrated.wait()
        assert recorder.delay is not None
        print(f"  calibrated: IDLE notification delay {recorder.delay * 1000:.1f} ms")

    async def probe(mailbox: str) -> str:
        probe_id = await agent.probe_pair("good", mailbox)
        assert probe_id is not None
        async with asyncio.timeout(120):
            await agent.outcomes.wait(probe_id)
        return probe_id

    # A warm-up round, not counted: the watchers' first pass, the first TLS session, cold caches.
    await asyncio.gather(*(probe(name) for name in accounts))
    probe_ids: list[str] = []
    rounds = max(1, probes // concurrency)
    cpu_start = time.process_time()
    try:
        for _ in range(rounds):
            probe_ids += await asyncio.gather(*(probe(name) for name in accounts))
        cpu = (time.process_time() - cpu_start) / len(probe_ids)
        # Read back after the timing: the benchmark's reading is not the agent's work.
        records = [agent.ledger.get(probe_id) for probe_id in probe_ids]
    finally:
        await agent.stop()
    arrival_to_seen, accepted_to_seen = [], []
    for record in records:
        assert record is not None
        assert record.finished_at is not None and record.accepted_at is not None, record
        arrived = _maildir_mtime(system, accounts[record.mailbox], record.probe_id)
        arrival_to_seen.append(record.finished_at - arrived)
        accepted_to_seen.append(record.finished_at - record.accepted_at)
    found = {
        way.value: sum(
            registry.get_sample_value(
                "deliverability_probes_found_total", {"mailbox": name, "found_by": way.value}
            )
            or 0.0
            for name in accounts
        )
        for way in FoundBy
    }
    return arrival_to_seen, accepted_to_seen, cpu, found


def _summary(values: list[float]) -> str:
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return (
        f"min {ordered[0] * 1000:7.1f} ms   median {statistics.median(ordered) * 1000:7.1f} ms   "
        f"p95 {rank(0.95) * 1000:7.1f} ms   p99 {rank(0.99) * 1000:7.1f} ms   "
        f"max {ordered[-1] * 1000:7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="K seed mailboxes, probed at once in rounds of K (default 1: one after another)",
    )
    parser.add_argument(
        "--modes", default="idle,poll", help="comma-separated: idle, poll (default both)"
    )
    event_loop.add_event_loop_option(parser)
    args = parser.parse_args()
    loop_kind = EventLoopKind(args.event_loop)
    modes = {mode.strip() for mode in args.modes.split(",")}
    if not modes <= {"idle", "poll"}:
        parser.error(f"--modes: expected idle and/or poll, got {args.modes!r}")
    system = MailSystem.create()
    system.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = {}
            runs = (
                ("IDLE, calibrated", True, True),
                ("IDLE, calibrate: false", True, False),
                (f"poll every {args.poll_interval:g} s", False, False),
            )
            for index, (name, use_idle, calibrate) in enumerate(runs):
                if ("idle" if use_idle else "poll") not in modes:
                    continue
                workdir = Path(tmp) / str(index)
                workdir.mkdir()
                print(name)
                results[name] = event_loop.run(
                    _run_mode(
                        system,
                        workdir,
                        probes=args.probes,
                        concurrency=args.concurrency,
                        use_idle=use_idle,
                        poll_interval=args.poll_interval,
                        calibrate=calibrate,
                    ),
                    loop_kind,
                )
    finally:
        system.stop()
    print(__doc__.split("Method: ")[1].strip())
    print(
        f"\n{args.probes} probes per mode, {args.concurrency} at a time, {loop_kind} event loop\n"
    )
    for name, (arrival, accepted, cpu, found) in results.items():
        print(f"{name}:")
        print(f"  arrival in mailbox -> seen by agent   {_summary(arrival)}")
        print(f"  |arrival -> seen|                     {_summary([abs(v) for v in arrival])}")
        print(f"  250 end-of-data -> seen by agent      {_summary(accepted)}")
        print(f"  agent CPU time per probe              {cpu * 1000:7.1f} ms")
        print(
            "  found by                              "
            + ", ".join(f"{way} {count:g}" for way, count in found.items() if count)
        )


if __name__ == "__main__":
    main()
