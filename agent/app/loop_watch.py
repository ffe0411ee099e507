"""A heartbeat on the agent's event loop: how late it runs, and whether a handler held the loop.

Every probe, watcher, reload and status page shares one event loop; a callback that computes for a
second stops all of them for that second (issue 15: a status page at 10,000 pairs held it for
minutes). The watch sleeps `interval` seconds at a time and, at each wake-up, measures two things:

* the lag: how late it woke against when it was due, in wall time. That is the longest any other
  callback waited for the loop at that moment; every beat's lag goes to
  `deliverability_event_loop_lag_seconds`.
* the CPU time the loop's thread spent since the previous beat. Between two beats the loop runs
  at most one iteration's worth of ready callbacks past the due time, so more CPU than the interval
  plus a bound means one iteration (in practice one callback) computed that long. Unlike wall
  time, it does not grow when other processes take the cores, which is what lets a test hold the
  agent to a bound without being flaky on a busy machine.

A lag over `BLOCKED_WARNING_SECONDS` is logged once per occurrence as a WARNING.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from agent.model import LoopLag
from agent.monitoring.recorder import Recorder

__all__ = ["BLOCKED_WARNING_SECONDS", "HEARTBEAT_SECONDS", "LoopWatch", "Stall"]

log = logging.getLogger(__name__)

# Every wake-up of a sleeping process costs ~0.2 ms of CPU on the 2-core VM (measured): a beat
# every 0.1 s cost 2 ms of CPU a second, every 0.5 s costs 0.4 ms. A hold shorter than the
# interval is seen when the beat falls due inside it (with its remaining part as the lag).
HEARTBEAT_SECONDS = 0.5
BLOCKED_WARNING_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Stall:
    """The longest gap between two heartbeats seen so far."""

    lag_seconds: float = 0.0  # wall time past the due time
    cpu_seconds: float = 0.0  # the loop thread's CPU time between the two beats


@dataclass(slots=True)
class LoopWatch:
    """Run `run()` as a task on the loop to watch; read `worst` (and await `beat`) from it."""

    recorder: Recorder | None = None
    interval: float = HEARTBEAT_SECONDS
    worst: Stall = field(default_factory=Stall)  # the largest cpu_seconds, with its lag
    worst_lag: float = 0.0
    beats: int = 0
    _beat: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        cpu = time.thread_time()  # run() runs on the loop's thread: its CPU is the loop's
        due = loop.time() + self.interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now, now_cpu = loop.time(), time.thread_time()
            lag = max(0.0, now - due)
            self.observe(lag, now_cpu - cpu)
            cpu = now_cpu
            # The next beat is due one interval after this one ran, not after it was due: after
            # a block the watch does not fire a burst of beats to catch up.
            due = now + self.interval

    def observe(self, lag: float, cpu: float) -> None:
        """Account for one beat that ran `lag` seconds late after `cpu` seconds of loop CPU."""
        self.beats += 1
        if cpu > self.worst.cpu_seconds:
            self.worst = Stall(lag, cpu)
        self.worst_lag = max(self.worst_lag, lag)
        if self.recorder is not None:
            self.recorder.record(LoopLag(lag))
        if lag > BLOCKED_WARNING_SECONDS:
            log.warning(
                "the event loop was held for %.1f s (%.1f s of CPU): probes, watchers and "
                "/healthz waited that long",
                lag,
                cpu,
            )
        self._beat.set()
        self._beat = asyncio.Event()

    async def beat(self) -> None:
        """Return after the next heartbeat: everything scheduled before it has been measured."""
        await self._beat.wait()
