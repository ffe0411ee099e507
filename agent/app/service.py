"""The running agent: wires config, ledger, prober, watchers, reaper, scheduler and metrics.

Data flows one way: the scheduler asks the prober to send; the prober records the probe in the
ledger and forgets it; one watcher per watched folder of each seed mailbox hands every arrival to
the matcher; the reaper turns probes past their deadline into `missing`. Every final outcome goes
through `Outcomes`, which writes the ledger first and the metrics second.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import hashlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.job import Job
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from agent.app.loop_watch import LoopWatch
from agent.config import Cleanup, Config, Mailbox, ReportMailbox, StartMode
from agent.dns.checks import declare_dns_series, run_dns_checks
from agent.imap import (
    Disposition,
    FetchedMessage,
    FolderWatcher,
    ImapError,
    OnCalibration,
    OnMessage,
    backoff_delay,
    detect_folders,
)
from agent.imap.calibration import CalibrationFailure
from agent.model import (
    ErrorKind,
    ImapCalibration,
    ImapHealth,
    LedgerHealth,
    Outcome,
    ProbeStarted,
    ShardOwnership,
)
from agent.monitoring.recorder import Recorder
from agent.oauth.lifecycle import CredentialState
from agent.oauth.sources import TokenSources
from agent.probing.esp import EspEvents
from agent.probing.matcher import Matcher
from agent.probing.outcomes import FinalOutcome, Outcomes
from agent.probing.prober import Prober
from agent.probing.reaper import reap
from agent.probing.targets import imap_target
from agent.reading.probe_token import KeyRing
from agent.reports import ReportReader, ReportStore
from agent.reputation.feeds import FeedState, ReputationFeeds
from agent.sharding import Shard, lingering_mailboxes, shard_view
from agent.smtp.replies import verdict_of
from agent.store.ledger import Ledger, LedgerError, ProbeState

__all__ = ["Agent"]

log = logging.getLogger(__name__)

REAP_INTERVAL = 5.0  # seconds between deadline sweeps
PRUNE_INTERVAL = 3600.0  # seconds between ledger retention sweeps
RELOAD_CLEANUP_GRACE = 30.0  # seconds a reload waits for a changed mailbox's clean-up under way
PRUNE_BATCH = 2000  # rows a prune deletes before letting the event loop run (tens of ms)
RESTORE_STEP = 100  # pairs whose last outcomes are read per loop iteration (~5-10 ms)
DETECT_BACKOFF_MAX = 300.0
# A report mailbox's messages are read whole up to this size: a zipped report of a large sender
# is a few MiB, base64 adds a third, and the parser caps a decompressed report at 20 MiB.
REPORT_MESSAGE_BYTES = 32 * 1024 * 1024


class _Role(enum.Enum):
    SEED = "seed"
    BOUNCES = "bounces"  # its messages are read as bounces, not as probes
    REPORTS = "reports"  # DMARC aggregate and SMTP TLS reports


@dataclass
class _MailboxWatch:
    """The watchers of one seed mailbox, and what they found out about its folders."""

    mailbox: Mailbox
    role: _Role = _Role.SEED
    reports: ReportReader | None = None  # for a report mailbox
    junk: str | None = None
    task: asyncio.Task[None] | None = None
    watchers: list[FolderWatcher] = field(default_factory=list)  # once its folders are known
    folders_up: dict[str, bool] = field(default_factory=dict)


class Agent:
    """One agent process's probing machinery, for `run` and `once` alike."""

    def __init__(
        self,
        config: Config,
        *,
        recorder: Recorder,
        use_idle: bool = True,
        poll_interval: float = 15.0,
        clock: Callable[[], float] = time.time,
        shard: Shard = Shard(),  # noqa: B008 (frozen)
    ) -> None:
        # `config` is what this shard probes (its own mailboxes, agent.sharding); `full_config`
        # what was loaded, for what is not sharded (DNS checks, bounces of any mailbox).
        self.shard = shard
        self.full_config = config
        self.config = shard_view(config, shard)
        self.recorder = recorder
        self._clock = clock
        self._use_idle = use_idle
        self._poll_interval = poll_interval
        self._ledger_writable = True
        self.ledger = Ledger.in_state_dir(config.state_dir, on_health=self._ledger_health)
        self.recorder.record(self.ledger.health)
        self.outcomes = Outcomes(self.ledger, recorder)
        # One token source per OAuth credential, shared by its routes and mailboxes and kept
        # across reloads (with its cached token) while its auth section does not change.
        self.tokens = TokenSources(
            state_dir=config.state_dir, clock=clock, on_refresh=self.recorder.record
        )
        self.esp = EspEvents(
            ledger=self.ledger, outcomes=self.outcomes, config=lambda: self.config, clock=clock
        )
        self.matcher = Matcher(
            ledger=self.ledger,
            outcomes=self.outcomes,
            keys=KeyRing(config.secret.get_secret_value().encode()),
            cleanup=config.probes.cleanup,
            sharded=shard.sharded,
        )
        # Gmail Postmaster Tools and SNDS: their own tasks, started with the schedule (`run`).
        self.reputation = ReputationFeeds(
            record=self.recorder.record, token_source=self.tokens.standalone, clock=clock
        )
        self._build(self.config)
        self._watches: dict[str, _MailboxWatch] = {}
        self._scheduler: AsyncIOScheduler | None = None
        self._reaper: asyncio.Task[None] | None = None
        # Feeds deliverability_event_loop_lag_seconds while the agent runs.
        self.loop_watch = LoopWatch(recorder)
        self._loop_watch_task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[str]] = set()
        self._pair_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.report_store: ReportStore | None = None  # opened with the first report mailbox
        self.started = False
        self.draining = False
        # Set after each deadline and retention sweep, for whoever waits for one (tests do).
        self.swept = asyncio.Event()

    def _build(self, config: Config) -> None:
        secret = config.secret.get_secret_value().encode()
        self.tokens.update(config)
        self.prober = Prober(
            config=config,
            outcomes=self.outcomes,
            esp=self.esp,
            clock=self._clock,
            tokens=self.tokens,
        )
        # The matcher is kept across reloads: its key ring holds the secrets that signed probes
        # still in flight.
        self.matcher.reconfigure(secret=secret, cleanup=config.probes.cleanup)
        self.reputation.configure(config.reputation)

    # --- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover probes left by a previous run, declare series, start watchers and the reaper."""
        await self._declare()
        self._recover()
        await self._start_watches(_watched_mailboxes(self.config).values())
        self._watch_lingering()
        self._reaper = asyncio.create_task(self._reap_forever(), name="reaper")
        self._loop_watch_task = asyncio.create_task(self.loop_watch.run(), name="loop watch")
        self.started = True

    async def _declare(self) -> None:
        """Declare the config's series, letting the event loop run between steps: at 10,000
        pairs creating them is ~1.5 s of CPU, and restoring the last outcomes ~0.5 s more.
        A scrape in between may see part of them (at start, before /readyz says ready; on a
        reload, only pairs the reload added lack theirs)."""
        pairs = [(route.name, mailbox.name) for route, mailbox in self.config.pairs()]
        bounce_names = [mailbox.name for mailbox in self.config.bounce_mailboxes]
        report_names = [mailbox.name for mailbox in self.config.report_mailboxes]
        declared = self.recorder.declared_pairs
        steps = self.recorder.declare_steps(
            pairs,
            bounce_mailboxes=bounce_names,
            report_mailboxes=report_names,
            route_providers={route.name: route.provider for route in self.config.routes},
            mailbox_providers={
                mailbox.name: mailbox.provider
                for mailbox in (
                    *self.config.mailboxes,
                    *self.config.bounce_mailboxes,
                    *self.config.report_mailboxes,
                )
            },
        )
        # Only at start: a reload creates only what it adds (few objects), and freezing again
        # would keep for good whatever cyclic garbage a running agent has by then (old
        # watchers' tasks and their tracebacks).
        settle = _settle_heap if not self.started else _no_settle
        settle()
        for _ in steps:
            settle()
            # A timer that fell due during a step runs after the next step (asyncio runs what
            # was ready first), so the loop is held up to two steps: ~30 ms.
            await asyncio.sleep(0)
        settle()
        self.recorder.declare_esp(route.name for route in self.config.routes if route.esp)
        declare_dns_series(self._dns_config(), self.recorder)
        self.recorder.declare_credentials(
            [*self.tokens.credentials(), *self.reputation.credentials()]
        )
        owned = {mailbox.name for mailbox in self.config.mailboxes}
        self.recorder.record(
            ShardOwnership(
                self.shard.index,
                self.shard.count,
                {mailbox.name: mailbox.name in owned for mailbox in self.full_config.mailboxes},
            )
        )
        reputation = self.config.reputation
        google = reputation.google if reputation is not None else None
        snds = reputation.snds if reputation is not None else None
        self.recorder.declare_reputation(
            domains=google.domains if google is not None else (),
            snds_ips=snds.ips if snds is not None else None,
            feeds=[feed.value for feed in self.reputation.runners],
        )
        # Only the pairs this declaration added (at start: all): the others kept their gauges,
        # and declare() just removed the series of pairs no longer configured.
        added = [pair for pair in pairs if pair not in declared]
        for begin in range(0, len(added), RESTORE_STEP):
            chunk = added[begin : begin + RESTORE_STEP]
            self.recorder.restore_last_outcomes(self.ledger.last_finished_at(chunk))
            await asyncio.sleep(0)
        for mailbox in (
            *self.config.mailboxes,
            *self.config.bounce_mailboxes,
            *self.config.report_mailboxes,
        ):
            if mailbox.name not in self._watches:
                self.recorder.record(ImapHealth(mailbox.name, up=False))

    def _recover(self) -> None:
        """Give each probe a crash or kill interrupted its one outcome; keep awaiting the rest."""
        now = self._clock()
        for record in self.ledger.unsent_interrupted():
            if record.state is ProbeState.SENDING:
                # Seen in its mailbox before the restart cut its transaction: the arrival stored
                # on it is its outcome. Otherwise the server may still have taken it: it waits
                # for its arrival until its deadline, then ends `error` (interrupted).
                if not self.outcomes.settle_arrival(record):
                    self.outcomes.interrupted(record, at=now)
            else:
                result = record.send_result
                assert result is not None  # UNACCEPTED means a send result is stored
                verdict = verdict_of(result) or Outcome.ERROR
                self.outcomes.smtp_verdict(record, result, verdict, finished_at=now)
        for record in self.ledger.in_flight():
            # Accepted and seen, but the restart came before it was finalized.
            self.outcomes.settle_arrival(record)
        awaiting = self.ledger.in_flight()
        if awaiting:
            log.info("resuming %d probe(s) in flight from the previous run", len(awaiting))
        self.outcomes.refresh_in_flight()

    async def stop(self, *, drain_timeout: float = 60.0) -> None:
        """Stop scheduling, let SMTP transactions and watchers' clean-ups under way finish
        (within `drain_timeout` in all), stop watchers, close."""
        self.draining = True
        loop = asyncio.get_running_loop()
        drain_until = loop.time() + drain_timeout
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        if self._sending:
            log.info("waiting for %d SMTP transaction(s) to finish", len(self._sending))
            _, unfinished = await asyncio.wait(set(self._sending), timeout=drain_timeout)
            for task in unfinished:
                # Bounded stop: the probe stays "sending" in the ledger; the next start keeps
                # it open until its deadline (its arrival decides, else error, interrupted).
                task.cancel()
        await self.reputation.stop()
        await _stop_watches(self._watches.values(), grace=max(0.0, drain_until - loop.time()))
        for watch in self._watches.values():
            if watch.reports is not None:
                watch.reports.flush()  # counts still waiting for their series' first scrape
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        for background in (self._reaper, self._loop_watch_task):
            if background is not None:
                background.cancel()
                tasks.append(background)
        await asyncio.gather(*tasks, *self._sending, return_exceptions=True)
        self._watches.clear()
        self.ledger.close()
        if self.report_store is not None:
            self.report_store.close()
            self.report_store = None
        self.started = False

    # --- probing --------------------------------------------------------------------------------

    async def probe_pair(self, route_name: str, mailbox_name: str) -> str | None:
        """Send one probe for the pair; skipped (None) while the previous one is still sending."""
        if self.draining:
            return None
        lock = self._pair_locks.setdefault((route_name, mailbox_name), asyncio.Lock())
        if lock.locked():
            log.warning("previous probe %s -> %s still sending; skipped", route_name, mailbox_name)
            return None
        async with lock:
            route = self.config.route(route_name)
            mailbox = self.config.mailbox(mailbox_name)
            task = asyncio.create_task(self.prober.probe(route, mailbox))
            self._sending.add(task)
            try:
                probe_id = await asyncio.shield(task)
            except asyncio.CancelledError:
                if not self.draining:
                    raise
                # Stopping: the scheduler cancels the jobs it runs (the shielded send goes on and
                # stop() drains it), and stop() cancels sends still running after the drain
                # timeout. Neither is a job failure to log with a traceback; the ledger holds the
                # probe and the next start resolves it.
                if task.cancelled():
                    log.info(
                        "probe %s -> %s cut by shutdown mid-transaction", route_name, mailbox_name
                    )
                return None
            except LedgerError as exc:
                if exc.kind is None:
                    raise
                # The ledger cannot be written (a full disk): nothing was sent. The metric,
                # /readyz and the alert say so; a traceback per pair and interval would not help.
                log.warning("probe %s -> %s not sent: %s", route_name, mailbox_name, exc)
                return None
            finally:
                if task.done():
                    self._sending.discard(task)
                else:
                    task.add_done_callback(self._sending.discard)
            return probe_id

    async def probe_all_once(self) -> list[str]:
        """One probe for every configured pair, sent concurrently; their ids."""
        started = []
        for route, mailbox in self.config.pairs():
            started.append(asyncio.ensure_future(self.probe_pair(route.name, mailbox.name)))
            # One probe's start (its message, its ledger row) per loop iteration: all of them
            # in one iteration held the loop 2-5 ms a pair (0.9-2 s at 400 pairs, measured
            # with tests/test_loop_blocking.py's watch).
            await asyncio.sleep(0)
        results = await asyncio.gather(*started)
        return [probe_id for probe_id in results if probe_id is not None]

    async def wait_final(self, probe_ids: list[str]) -> list[FinalOutcome]:
        """Wait until every probe has its final outcome (the reaper bounds this by the deadline)."""
        return list(await asyncio.gather(*(self.outcomes.wait(pid) for pid in probe_ids)))

    def schedule(self) -> None:
        """Start the APScheduler jobs: one per pair, each on its own interval with jitter, at the
        pair's own phase (`probes.start: spread`) or first right away (`immediate`)."""
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        probes = self.config.probes
        now = self._clock()
        for route, mailbox in self.config.pairs():
            if probes.start is StartMode.SPREAD:
                # Runs at origin + k * interval: the same instants after every restart and
                # reload, and pairs spread evenly over the interval, so no herd at start.
                origin = pair_phase(route.name, mailbox.name) * probes.interval
                trigger = IntervalTrigger(
                    seconds=probes.interval,
                    jitter=probes.jitter or None,
                    start_date=_datetime(origin),
                )
                first = trigger.get_next_fire_time(None, _datetime(now))
            else:
                trigger = IntervalTrigger(seconds=probes.interval, jitter=probes.jitter or None)
                first = _datetime(
                    now + random.uniform(0.0, min(probes.jitter, probes.interval) or 1.0)
                )
            scheduler.add_job(
                self.probe_pair,
                trigger,
                args=(route.name, mailbox.name),
                id=f"probe:{route.name}:{mailbox.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=int(probes.interval),
                next_run_time=first,
            )
        self._schedule_dns_checks(scheduler, now)
        self.reputation.start()
        scheduler.add_listener(self._probe_job_submitted, EVENT_JOB_SUBMITTED)
        scheduler.start()
        self._scheduler = scheduler

    def _probe_job_submitted(self, event: JobSubmissionEvent) -> None:
        """Scheduler lag: how late a probe job starts against its planned (jittered) time. With
        coalesced misfires the latest planned time counts: the one the run stands for."""
        if not event.job_id.startswith("probe:") or not event.scheduled_run_times:
            return
        planned = max(event.scheduled_run_times).timestamp()
        self.recorder.record(ProbeStarted(self._clock() - planned))

    def _schedule_dns_checks(self, scheduler: AsyncIOScheduler, now: float) -> None:
        """The DNS checks (`agent.dns.checks`), if configured: one run now, then every interval."""
        if self.config.dns is None:
            return
        interval = self.config.dns.interval
        scheduler.add_job(
            self.check_dns,
            IntervalTrigger(seconds=interval),
            id="dns-checks",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=int(interval),
            next_run_time=_datetime(now),
        )

    async def check_dns(self) -> None:
        """One run of the configured DNS checks, recorded as metrics."""
        report = await run_dns_checks(self._dns_config())
        if report is not None:
            self.recorder.record(report)

    def _dns_config(self) -> Config:
        """DNS checks are about the routes: shard 0 runs them for the whole config."""
        return self.full_config if self.config.dns is not None else self.config

    def mailboxes_up(self) -> dict[str, bool]:
        """Each seed mailbox's IMAP state, as deliverability_imap_up shows it (up only while
        every watched folder's connection is), from the agent's own state: O(mailboxes), where
        asking the registry would collect every series once per mailbox."""
        states: dict[str, bool] = {}
        for mailbox in self.config.mailboxes:
            watch = self._watches.get(mailbox.name)
            folders = watch.folders_up if watch is not None else {}
            states[mailbox.name] = bool(folders) and all(folders.values())
        return states

    def credentials(self) -> list[CredentialState]:
        """Each OAuth credential's state (last refresh, error kind and message; no secret), for
        the status page and `once`."""
        return [*self.tokens.states(), *self.reputation.token_states()]

    def reputation_feeds(self) -> list[FeedState]:
        """Each reputation feed's health (last success, last error kind and message; no key or
        token), for the status page."""
        return self.reputation.states()

    def watched_mailboxes(self) -> list[str]:
        """The mailboxes this agent watches now: its own, its bounce mailboxes, and (sharded) the
        ones it no longer owns but has probes in flight to."""
        return sorted(self._watches)

    def scheduled_jobs(self) -> list[Job]:
        return self._scheduler.get_jobs() if self._scheduler is not None else []

    async def _reap_forever(self) -> None:
        interval = min(REAP_INTERVAL, max(0.5, self.config.probes.deadline / 10))
        next_prune = 0.0
        failing = False
        while True:
            now = self._clock()
            try:
                reap(self.ledger, self.outcomes, now=now)
                await self._release_lingering()
                if now >= next_prune:
                    next_prune = now + PRUNE_INTERVAL  # a failed prune waits for the next one
                    pruned = await self._prune(older_than=now - self.config.probes.retention)
                    if pruned:
                        log.info(
                            "removed %d finished probe(s) past retention from the ledger", pruned
                        )
                failing = False
            except LedgerError as exc:
                # Counted by the ledger; the next sweep tries again, so deadlines resume with it.
                log.log(logging.DEBUG if failing else logging.WARNING, "deadline sweep: %s", exc)
                failing = True
            self.swept.set()
            await asyncio.sleep(interval)  # a periodic sweep: deadlines are clock events

    async def _prune(self, *, older_than: float) -> int:
        """Delete finished probes past retention in batches, yielding to the event loop between
        them: the first prune after a long stop, or after retention was shortened, may have
        millions of rows to delete."""
        pruned = 0
        while True:
            deleted = self.ledger.prune(older_than=older_than, limit=PRUNE_BATCH)
            pruned += deleted
            if deleted < PRUNE_BATCH:
                return pruned
            await asyncio.sleep(0)

    # --- reload ---------------------------------------------------------------------------------

    async def reload(self, config: Config) -> None:
        """Switch to a new, already validated config without losing probes in flight."""
        if config.state_dir != self.config.state_dir:
            log.warning("state_dir changes need a restart; keeping %s", self.config.state_dir)
        if config.listen != self.config.listen:
            log.warning("listen changes need a restart; keeping %s", self.config.listen)
        rescheduling = self._scheduler is not None
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        old_mailboxes = _watched_mailboxes(self.config)
        self.full_config = config.model_copy(
            update={"state_dir": self.config.state_dir, "listen": self.config.listen}
        )
        self.config = shard_view(self.full_config, self.shard)
        self._build(self.config)
        new_mailboxes = _watched_mailboxes(self.config)
        changed = [
            name
            for name, watch in self._watches.items()
            if old_mailboxes.get(name) != new_mailboxes.get(name) and watch.task is not None
        ]
        # Stopped like at shutdown: a clean-up under way (STORE, then EXPUNGE) finishes first.
        await _stop_watches([self._watches[name] for name in changed], grace=RELOAD_CLEANUP_GRACE)
        for name in changed:
            reports = self._watches[name].reports
            if reports is not None:
                reports.flush()
            del self._watches[name]
        await self._declare()
        self.outcomes.refresh_in_flight()  # pairs added or removed: recount every pair once
        await self._start_watches(new_mailboxes.values())
        self._watch_lingering()
        if rescheduling:
            self.schedule()

    # --- sharding: finishing our own probes to mailboxes another replica owns -----------------

    def _watch_lingering(self) -> None:
        """Watch the mailboxes this shard does not own (any more: a rescale, a reload) while its
        ledger has probes in flight to them, so the replica that sent a probe finishes it."""
        owned = _watched_mailboxes(self.config)
        for name in lingering_mailboxes(self.ledger.in_flight_counts(), owned):
            if name in self._watches:
                continue
            try:
                mailbox = self.full_config.mailbox(name)
            except KeyError:
                continue  # no longer configured: the reaper ends its probes at their deadline
            log.info(
                "mailbox %s: owned by another shard; watching it for our probes in flight", name
            )
            self._start_watch(mailbox)

    async def _release_lingering(self) -> None:
        """Stop watching a mailbox we do not own once our last probe to it is finished."""
        owned = _watched_mailboxes(self.config)
        lingering = [name for name in self._watches if name not in owned]
        if not lingering:
            return
        still = lingering_mailboxes(self.ledger.in_flight_counts(), owned)
        done = [name for name in lingering if name not in still]
        if not done:
            return
        log.info("no more probes in flight to %s: stopped watching", ", ".join(done))
        await _stop_watches([self._watches[name] for name in done], grace=RELOAD_CLEANUP_GRACE)
        for name in done:
            self._watches.pop(name, None)

    # --- the ledger -----------------------------------------------------------------------------

    def _ledger_health(self, health: LedgerHealth) -> None:
        """Count every ledger failure; log when writes start failing and when they work again."""
        self.recorder.record(health)
        if health.writable == self._ledger_writable:
            return
        self._ledger_writable = health.writable
        if health.writable:
            log.info("the ledger takes writes again: probing resumes")
        else:
            log.error(
                "the ledger cannot be written (%s): %s; no probe is sent until a write succeeds",
                health.error,
                health.detail,
            )

    # --- watching -------------------------------------------------------------------------------

    async def _start_watches(self, mailboxes: Iterable[tuple[Mailbox, _Role]]) -> None:
        """Start a watcher for each mailbox not watched yet, each in a loop iteration of its own:
        started together, 100 mailboxes' first connections (and their answers or refusals) ran
        in one iteration, holding the loop for 0.1-0.16 s of CPU at start."""
        for mailbox, role in mailboxes:
            if mailbox.name not in self._watches:
                self._start_watch(mailbox, role=role)
                await asyncio.sleep(0)

    def _start_watch(self, mailbox: Mailbox, *, role: _Role = _Role.SEED) -> None:
        watch = _MailboxWatch(mailbox, role=role)
        if isinstance(mailbox, ReportMailbox) and role is _Role.REPORTS:
            if self.report_store is None:
                self.report_store = ReportStore.in_state_dir(self.config.state_dir)
            watch.reports = ReportReader(mailbox, store=self.report_store, recorder=self.recorder)
        watch.task = asyncio.create_task(self._watch_mailbox(watch), name=f"watch:{mailbox.name}")
        self._watches[mailbox.name] = watch

    async def _watch_mailbox(self, watch: _MailboxWatch) -> None:
        mailbox = watch.mailbox
        target = imap_target(mailbox, self.tokens.sign_in("mailbox", mailbox.name))
        attempt = 0
        while True:
            try:
                folders = await detect_folders(target, junk_override=mailbox.folders.junk)
                break
            except ImapError as exc:
                self._imap_state(watch, "*", False, exc.kind)
                # Jittered as the watchers' reconnects: mailboxes of one down server started
                # together would otherwise all retry in the same loop iteration.
                delay = backoff_delay(attempt, initial=1.0, maximum=DETECT_BACKOFF_MAX)
                attempt += 1
                log.warning(
                    "mailbox %s: cannot list folders (%s): %s; retrying in %.1f s",
                    mailbox.name,
                    exc.kind,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
        watch.junk = folders.junk
        if folders.junk is None:
            log.warning(
                "mailbox %s: no junk folder found (no SPECIAL-USE \\Junk, no well-known name); "
                "spam placement cannot be seen; set folders.junk",
                mailbox.name,
            )
        names = [mailbox.folders.inbox]
        if folders.junk:
            names.append(folders.junk)
        names.extend(f for f in mailbox.folders.extra if f not in names)
        log.info("mailbox %s: watching %s", mailbox.name, ", ".join(names))
        watchers = [
            FolderWatcher(
                target,
                folder,
                on_message=self._on_message_for(watch),
                on_state=self._on_state_for(watch, folder),
                use_idle=self._use_idle,
                poll_interval=self._poll_interval,
                idle_check_interval=mailbox.idle_check_interval,
                max_message_bytes=REPORT_MESSAGE_BYTES if watch.reports else 1_048_576,
                # Gmail tabs exist in the inbox only, and mean nothing for bounces or reports.
                inbox_categories=folder == mailbox.folders.inbox and watch.role is _Role.SEED,
                on_calibration=(
                    self._on_calibration_for(watch, folder)
                    if watch.role is _Role.SEED and mailbox.calibrate
                    else None
                ),
            )
            for folder in names
        ]
        watch.watchers = watchers
        async with asyncio.TaskGroup() as group:
            for watcher in watchers:
                group.create_task(watcher.run())

    def _on_message_for(self, watch: _MailboxWatch) -> OnMessage:
        async def on_message(message: FetchedMessage) -> Disposition:
            if watch.reports is not None:
                return await self._on_report(watch, watch.reports, message)
            try:
                if watch.role is _Role.BOUNCES:
                    delete = self.matcher.handle_bounce(
                        self.full_config, watch.mailbox, message.raw, seen_at=message.seen_at
                    )
                else:
                    delete = self.matcher.handle(
                        watch.mailbox,
                        message.folder,
                        message.raw,
                        seen_at=message.arrived_at,  # the notification delay taken off
                        junk=watch.junk,
                        found_by=message.found_by,
                        category=message.category,
                    )
            except LedgerError as exc:
                if exc.kind is None:
                    raise
                # Not recorded, so not deleted: the watcher hands it over again until it is.
                log.warning(
                    "mailbox %s: message kept to be read again: %s", watch.mailbox.name, exc
                )
                return Disposition.RETRY
            return Disposition.DELETE if delete else Disposition.KEEP

        return on_message

    async def _on_report(
        self, watch: _MailboxWatch, reader: ReportReader, message: FetchedMessage
    ) -> Disposition:
        try:
            only_reports = await reader.handle(message.raw, truncated=message.truncated)
        except sqlite3.Error as exc:
            # Nothing was counted: the watcher hands the message over again until it is.
            log.warning(
                "report mailbox %s: message kept to be read again: %s", watch.mailbox.name, exc
            )
            return Disposition.RETRY
        mailbox = watch.mailbox
        delete = (
            only_reports
            and isinstance(mailbox, ReportMailbox)
            and mailbox.cleanup is Cleanup.DELETE
        )
        return Disposition.DELETE if delete else Disposition.KEEP

    def _on_calibration_for(self, watch: _MailboxWatch, folder: str) -> OnCalibration:
        def on_calibration(delay: float | None, failure: CalibrationFailure | None) -> None:
            if failure is not None:
                log.info(
                    "mailbox %s/%s: not calibrated (%s): latency is the raw figure",
                    watch.mailbox.name,
                    folder,
                    failure,
                )
            self.recorder.record(ImapCalibration(watch.mailbox.name, folder, delay))

        return on_calibration

    def _on_state_for(
        self, watch: _MailboxWatch, folder: str
    ) -> Callable[[bool, ErrorKind | None], None]:
        def on_state(up: bool, kind: ErrorKind | None) -> None:
            self._imap_state(watch, folder, up, kind)

        return on_state

    def _imap_state(
        self, watch: _MailboxWatch, folder: str, up: bool, kind: ErrorKind | None
    ) -> None:
        """Track each watched folder's connection; "*" stands for the folder listing at start."""
        if folder != "*":
            watch.folders_up.pop("*", None)  # a folder watcher reporting means listing is done
        watch.folders_up[folder] = up
        # The mailbox is up only while every watched folder's connection is.
        self.recorder.record(
            ImapHealth(watch.mailbox.name, up=all(watch.folders_up.values()), error=kind)
        )


async def _stop_watches(watches: Iterable[_MailboxWatch], *, grace: float) -> None:
    """Stop every watcher, letting a hand-over under way finish within `grace` seconds: a probe
    matched just before the stop is also deleted (STORE and EXPUNGE), not left flagged."""
    running = {watch.task: watch for watch in watches if watch.task is not None}
    for task, watch in running.items():
        if not watch.watchers:
            task.cancel()  # still listing folders: nothing handed over yet
        for watcher in watch.watchers:
            watcher.stop()
    if not running:
        return
    _, late = await asyncio.wait(running, timeout=grace)
    for task in late:
        if any(watcher.handing_over for watcher in running[task].watchers):
            log.warning(
                "mailbox %s: abandoning a clean-up under way at the drain timeout; the next "
                "start deletes the message",
                running[task].mailbox.name,
            )
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


def _settle_heap() -> None:
    """Collect the young garbage, then move every object left out of the collector's sight
    (`gc.freeze`). The series' children are long-lived; at 10,000 pairs they are ~640k tracked
    objects, and each full collection that walked them held the event loop up to 0.15 s, several
    times while they were created and now and then after. Frozen objects are still freed by
    reference counting (a removed series goes); only cyclic garbage older than the young
    generations when this runs is kept for good, which is why those are collected first."""
    gc.collect(1)
    gc.freeze()


def _no_settle() -> None:
    """A reload's steps: the collector keeps its usual rhythm."""


def _watched_mailboxes(config: Config) -> dict[str, tuple[Mailbox, _Role]]:
    """Every mailbox to watch, by name, with what its messages are."""
    watched = {mailbox.name: (mailbox, _Role.SEED) for mailbox in config.mailboxes}
    watched.update((mailbox.name, (mailbox, _Role.BOUNCES)) for mailbox in config.bounce_mailboxes)
    watched.update((mailbox.name, (mailbox, _Role.REPORTS)) for mailbox in config.report_mailboxes)
    return watched


def pair_phase(route: str, mailbox: str) -> float:
    """Where in its interval a pair is probed, in [0, 1): a stable hash of the pair (the same in
    every process and release), so phases are spread evenly and do not move on a restart."""
    digest = hashlib.blake2b(f"{route}\0{mailbox}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
