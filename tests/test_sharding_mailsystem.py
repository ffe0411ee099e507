"""Sharded replicas against the real mail system: three agent processes over one config, each
its own ledger, the shard index from the pod-like hostname as in the StatefulSet; then a rescale
from 3 to 2 and back with probes in flight (held mailboxes: accepted, delivered when the test
releases them). Nothing is lost and nothing is counted twice."""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent.sharding import owner
from agent.store.ledger import LEDGER_FILENAME
from tests.agent_process import WAIT, AgentProcess
from tests.agent_setup import AgentSetup
from tests.mailsystem import MailSystem

pytestmark = pytest.mark.mailsystem

# Four seed mailboxes; the test relies on these owners (rendezvous hashing, fixed forever):
# 3 shards: s3 -> 0, s2 -> 1, s0 and s1 -> 2; 2 shards: s1 and s3 -> 0, s0 and s2 -> 1.
MAILBOXES = ("s0", "s1", "s2", "s3")
OWNERS_3 = {"s0": 2, "s1": 2, "s2": 1, "s3": 0}
OWNERS_2 = {"s0": 1, "s1": 0, "s2": 1, "s3": 0}


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Replica:
    """One agent process as pod `deliverability-agent-<index>` of a StatefulSet with `count`
    replicas: one shared config file, its own state directory (its volume)."""

    def __init__(
        self, config: Path, state: Path, index: int, count: int, processes: list[AgentProcess]
    ) -> None:
        self.index, self.count, self.state = index, count, state
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DELIVERABILITY_")},
            "AGENT_STATE_DIR": str(state),
            "HOSTNAME": f"deliverability-agent-{index}",
            "DELIVERABILITY_SHARD_COUNT": str(count),
        }
        self.process = AgentProcess(config, args=["--shard-index-from-hostname"], env=env)
        processes.append(self.process)
        owned = sum(1 for name in MAILBOXES if owner(name, count) == index)
        self.process.wait_for(f"shard {index} of {count}: {owned} of {len(MAILBOXES)} seed")
        line = self.process.wait_for("metrics on http://127.0.0.1:")
        self.port = int(line.split("127.0.0.1:", 1)[1].split("/", 1)[0])
        self.owned = owned

    def wait_logged(self, text: str) -> None:
        """Until this process has logged a line with `text` (already or from now on)."""
        if not any(text in line for line in self.process.seen):
            self.process.wait_for(text)

    def wait_accepted(self, count: int) -> None:
        """Until this process has logged `count` accepted probes (one per owned pair here)."""
        seen = sum("accepted by good" in line for line in self.process.seen)
        while seen < count:
            self.process.wait_for("accepted by good")
            seen += 1

    def metrics(self) -> Samples:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as got:
            text = got.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def stop(self) -> None:
        assert self.process.stop() == 0


def ledger_rows(state: Path) -> list[tuple[str, str, str | None]]:
    """(probe_id, mailbox, outcome) of every probe in a replica's ledger, read-only while the
    replica may be running."""
    path = state / LEDGER_FILENAME
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return list(conn.execute("SELECT probe_id, mailbox, outcome FROM probes"))


def total(metrics: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in metrics.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def test_three_replicas_probe_each_pair_once_and_a_rescale_loses_and_doubles_nothing(
    mail_system: MailSystem, tmp_path: Path, processes: list[AgentProcess]
) -> None:
    assert {name: owner(name, 3) for name in MAILBOXES} == OWNERS_3
    assert {name: owner(name, 2) for name in MAILBOXES} == OWNERS_2
    setup = AgentSetup(mail_system, tmp_path).route("good")
    for name in MAILBOXES:
        setup.mailbox(name, mail_system.new_held_mailbox())
    setup.probes.update(interval="1h", deadline="10m")  # one probe per pair and start
    data = setup.data()
    data["state_dir"] = "${AGENT_STATE_DIR}"  # one config; each replica its own volume
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    states = [tmp_path / f"state-{index}" for index in range(3)]

    # Three replicas: every pair is probed by exactly one of them, its mailbox's owner.
    replicas = [Replica(config, states[index], index, 3, processes) for index in range(3)]
    for replica in replicas:
        replica.wait_accepted(replica.owned)
    scrapes = [replica.metrics() for replica in replicas]
    for name in MAILBOXES:
        owned_by = [
            scrape[("deliverability_shard_mailbox_owned", (("mailbox", name),))]
            for scrape in scrapes
        ]
        assert owned_by == [1.0 if index == OWNERS_3[name] else 0.0 for index in range(3)]
        # Held mail: each owner has its one probe to the mailbox in flight, the others none
        # (probes_sent_total is per route since the series budget).
        sent = [
            total(scrape, "deliverability_probes_in_flight", mailbox=name) for scrape in scrapes
        ]
        assert sent == [1.0 if index == OWNERS_3[name] else 0.0 for index in range(3)]
    for index, scrape in enumerate(scrapes):
        assert scrape[("deliverability_shard_info", (("shard", str(index)), ("total", "3")))] == 1
    for replica in replicas:
        replica.stop()
    round_a = {index: ledger_rows(states[index]) for index in range(3)}
    for index, rows in round_a.items():
        assert sorted(mailbox for _, mailbox, _ in rows) == sorted(
            name for name in MAILBOXES if OWNERS_3[name] == index
        )
        assert all(outcome is None for _, _, outcome in rows)  # held: in flight

    # Scale to 2 (replica 2 removed): 0 and 1 take its mailboxes and keep their own probes in
    # flight; replica 2's probes wait in its ledger (its volume).
    replicas = [Replica(config, states[index], index, 2, processes) for index in range(2)]
    for replica in replicas:
        replica.wait_accepted(replica.owned)
    for replica in replicas:
        replica.stop()

    # Back to 3: replica 2 resumes its probes; 0 and 1 keep watching s0 and s1, which they no
    # longer own, for the probes they sent there while they did.
    replicas = [Replica(config, states[index], index, 3, processes) for index in range(3)]
    for index in (0, 1):
        moved = next(name for name in MAILBOXES if OWNERS_2[name] == index and OWNERS_3[name] == 2)
        replicas[index].wait_logged(f"mailbox {moved}: owned by another shard")
    for replica in replicas:
        replica.wait_accepted(replica.owned)
    mail_system.release_held()

    # Every probe ends with an outcome in the ledger of the replica that sent it.
    deadline = time.monotonic() + WAIT
    while True:
        ledgers = {index: ledger_rows(states[index]) for index in range(3)}
        open_probes = [row for rows in ledgers.values() for row in rows if row[2] is None]
        if not open_probes:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"probes never finished: {open_probes}")
        time.sleep(0.2)  # another process's ledger can only be polled
    all_rows = [row for rows in ledgers.values() for row in rows]
    assert len(all_rows) == 3 * len(MAILBOXES)  # rounds at 3, 2 and 3 replicas
    assert {outcome for _, _, outcome in all_rows} == {"inbox"}
    ids = Counter(probe_id for probe_id, _, _ in all_rows)
    assert max(ids.values()) == 1  # no probe in two ledgers
    for index in range(3):  # round A's probes are still each replica's own
        assert {pid for pid, _, _ in round_a[index]} <= {pid for pid, _, _ in ledgers[index]}

    # /metrics summed across replicas counts each probe once; nobody counted another's as forged.
    for replica in replicas[:2]:
        replica.wait_logged("stopped watching")  # their last probe there finished
    scrapes = [replica.metrics() for replica in replicas]
    finished = [total(scrape, "deliverability_probes_total", outcome="inbox") for scrape in scrapes]
    assert sum(finished) == len(all_rows)
    assert [total(scrape, "deliverability_forged_messages_total") for scrape in scrapes] == [0] * 3
    for replica in replicas:
        replica.stop()
