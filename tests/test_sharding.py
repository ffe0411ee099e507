"""Sharding (pure): rendezvous ownership of seed mailboxes, and the shard from flags, environment
or the pod's hostname."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from agent.app.cli import main
from agent.app.service import Agent
from agent.config import Config, validate_config
from agent.errors import ErrorCategory
from agent.model import Outcome
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder
from agent.sharding import (
    ENV_COUNT,
    ENV_INDEX,
    Shard,
    ShardError,
    lingering_mailboxes,
    owner,
    shard_from,
    shard_view,
)
from tests.agent_process import WAIT
from tests.one_pair_config import one_pair_config
from tests.scripted_smtp import Script, ScriptedSmtpServer

MAILBOXES = [f"seed-{number:04d}" for number in range(2000)]


def _owners(count: int) -> dict[str, int]:
    return {name: owner(name, count) for name in MAILBOXES}


def test_every_mailbox_has_exactly_one_owner_and_shards_get_even_shares() -> None:
    shards = [Shard(index, 4) for index in range(4)]
    for name in MAILBOXES:
        assert sum(shard.owns(name) for shard in shards) == 1
    shares = Counter(_owners(4).values())
    assert set(shares) == {0, 1, 2, 3}
    for share in shares.values():
        assert 400 < share < 600  # 500 expected; a uniform hash of 2,000 names stays near it


def test_ownership_is_stable_across_processes_not_pythons_salted_hash() -> None:
    # Fixed values, computed once: the same in every process and release, whatever
    # PYTHONHASHSEED is; a change here would move every deployed mailbox to another replica.
    assert [owner(name, 3) for name in ("seed1", "seed2", "box000", "box001")] == [2, 1, 2, 2]
    assert [owner(name, 4) for name in ("seed1", "seed2", "box000", "box001")] == [3, 1, 2, 2]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 10])
def test_adding_a_shard_moves_only_the_mailboxes_the_new_shard_takes(count: int) -> None:
    before, after = _owners(count), _owners(count + 1)
    moved = [name for name in MAILBOXES if before[name] != after[name]]
    assert all(after[name] == count for name in moved)  # every move is to the new shard
    # ~1/(N+1) of the mailboxes move, not a reshuffle.
    assert abs(len(moved) / len(MAILBOXES) - 1 / (count + 1)) < 0.05


@pytest.mark.parametrize("count", [2, 3, 5, 10])
def test_removing_the_last_shard_moves_only_its_own_mailboxes(count: int) -> None:
    before, after = _owners(count), _owners(count - 1)
    moved = {name for name in MAILBOXES if before[name] != after[name]}
    assert moved == {name for name in MAILBOXES if before[name] == count - 1}
    assert abs(len(moved) / len(MAILBOXES) - 1 / count) < 0.05


def test_one_shard_owns_everything() -> None:
    assert all(Shard().owns(name) for name in MAILBOXES)
    assert not Shard().sharded


def _shard(
    *,
    index: str | None = None,
    count: str | None = None,
    from_hostname: bool = False,
    environ: dict[str, str] | None = None,
    hostname: str = "",
) -> Shard:
    return shard_from(
        index=index,
        count=count,
        from_hostname=from_hostname,
        environ=environ or {},
        hostname=hostname,
    )


def test_no_flags_and_no_environment_is_one_shard() -> None:
    assert _shard() == Shard(0, 1)


def test_shard_from_flags() -> None:
    assert _shard(index="2", count="3") == Shard(2, 3)


def test_shard_from_environment() -> None:
    assert _shard(environ={ENV_INDEX: "1", ENV_COUNT: "4"}) == Shard(1, 4)


def test_flags_win_over_the_environment() -> None:
    assert _shard(index="0", count="2", environ={ENV_INDEX: "3", ENV_COUNT: "5"}) == Shard(0, 2)


def test_shard_index_from_a_statefulset_pod_name() -> None:
    shard = _shard(from_hostname=True, hostname="deliverability-agent-2", count="3")
    assert shard == Shard(2, 3)
    # The environment's index does not stand in for the hostname's.
    shard = _shard(
        from_hostname=True,
        hostname="deliverability-agent-0",
        environ={ENV_INDEX: "2", ENV_COUNT: "3"},
    )
    assert shard == Shard(0, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"index": "1"},
            "--shard-index: needs a shard count (--shard-count or DELIVERABILITY_SHARD_COUNT)",
        ),
        (
            {"count": "3"},
            "--shard-count: needs a shard index (--shard-index, DELIVERABILITY_SHARD_INDEX or "
            "--shard-index-from-hostname)",
        ),
        (
            {"index": "3", "count": "3"},
            "--shard-index: expected a shard index from 0 to 2 (the shard count is 3), got 3",
        ),
        (
            {"index": "-1", "count": "3"},
            "--shard-index: expected a shard index from 0 to 2 (the shard count is 3), got -1",
        ),
        ({"index": "x", "count": "3"}, "--shard-index: expected a whole number from 0 to 2"),
        (
            {"index": "0", "count": "0"},
            "--shard-count: expected a whole number of shards from 1 to 1000, got 0",
        ),
        (
            {"environ": {ENV_INDEX: "0", ENV_COUNT: "two"}},
            "DELIVERABILITY_SHARD_COUNT: expected a whole number of shards from 1 to 1000, "
            "got 'two'",
        ),
        (
            {"environ": {ENV_INDEX: "5", ENV_COUNT: "2"}},
            "DELIVERABILITY_SHARD_INDEX: expected a shard index from 0 to 1",
        ),
        (
            {"from_hostname": True, "hostname": "agent", "count": "3"},
            "--shard-index-from-hostname: expected a hostname ending in -<ordinal> "
            "(a StatefulSet pod, e.g. deliverability-agent-2), got 'agent'",
        ),
        (
            {"from_hostname": True, "hostname": "agent-7", "count": "3"},
            "the ordinal of hostname 'agent-7': expected a shard index from 0 to 2",
        ),
        (
            {"from_hostname": True, "hostname": "agent-1", "index": "1", "count": "3"},
            "--shard-index-from-hostname: expected either it or --shard-index, not both",
        ),
    ],
)
def test_bad_shard_settings_name_the_flag_or_variable_and_what_was_expected(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ShardError) as caught:
        _shard(**kwargs)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)
    assert caught.value.category is ErrorCategory.CONFIG


def _config(
    tmp_path: Path, *, pairs: bool = False, dns: bool = False, sender_wide: bool = False
) -> Config:
    mailboxes = [
        {
            "name": name,
            "host": "127.0.0.1",
            "port": 1,
            "tls": "none",
            "allow_plaintext_auth": True,
            "auth": {"username": "u", "password": "imap-password-1"},
            "address": f"{name}@seed.test",
        }
        for name in ("seed1", "seed2", "box000", "box001")
    ]
    data: dict[str, object] = {
        "state_dir": str(tmp_path),
        "secret": "sharding-test-secret-0123456789",
        "routes": [
            {"name": name, "host": "127.0.0.1", "port": 1, "tls": "none", "from": "p@client.test"}
            for name in ("r1", "r2")
        ],
        "mailboxes": mailboxes,
    }
    if pairs:
        data["probes"] = {
            "pairs": [
                {"route": "r1", "mailbox": "seed1"},
                {"route": "r2", "mailbox": "seed2"},
                {"route": "r2", "mailbox": "box000"},
            ]
        }
    if dns:
        data["dns"] = {}
    if sender_wide:
        data["report_mailboxes"] = [{**mailboxes[0], "name": "dmarc-reports"}]
        data["reputation"] = {"snds": {"key": "snds-test-key-0123456789"}}
    return validate_config(data, base_dir=tmp_path, environ={})


def test_a_shards_view_holds_its_own_mailboxes_with_every_pair_of_them(tmp_path: Path) -> None:
    config = _config(tmp_path)
    views = [shard_view(config, Shard(index, 3)) for index in range(3)]
    names = ("seed1", "seed2", "box000", "box001")
    assert [[m.name for m in view.mailboxes] for view in views] == [
        [name for name in names if owner(name, 3) == index] for index in range(3)
    ]
    pairs = [(r.name, m.name) for view in views for r, m in view.pairs()]
    assert sorted(pairs) == sorted((r, m) for r in ("r1", "r2") for m in names)
    for view in views:
        assert all(owner(m.name, 3) == views.index(view) for _, m in view.pairs())
    assert all(len(view.routes) == 2 for view in views)


def test_a_shards_view_keeps_only_the_listed_pairs_of_its_mailboxes(tmp_path: Path) -> None:
    config = _config(tmp_path, pairs=True)
    views = [shard_view(config, Shard(index, 3)) for index in range(3)]
    listed = [("r1", "seed1"), ("r2", "seed2"), ("r2", "box000")]
    assert [[(r.name, m.name) for r, m in view.pairs()] for view in views] == [
        [pair for pair in listed if owner(pair[1], 3) == index] for index in range(3)
    ]


def test_dns_checks_run_on_shard_zero_only(tmp_path: Path) -> None:
    config = _config(tmp_path, dns=True)
    views = [shard_view(config, Shard(index, 3)) for index in range(3)]
    assert [view.dns is not None for view in views] == [True, False, False]


def test_report_mailboxes_and_reputation_feeds_are_read_on_shard_zero_only(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, sender_wide=True)
    views = [shard_view(config, Shard(index, 3)) for index in range(3)]
    assert [len(view.report_mailboxes) for view in views] == [1, 0, 0]
    assert [view.reputation is not None for view in views] == [True, False, False]


def test_one_shard_sees_the_config_unchanged(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert shard_view(config, Shard()) is config


def test_run_with_a_bad_shard_setting_exits_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "secret: sharding-test-secret-0123456789\n"
        "routes: [{name: r, host: 127.0.0.1, port: 1, tls: none, from: p@client.test}]\n"
        "mailboxes: [{name: m, host: 127.0.0.1, port: 1, tls: none, allow_plaintext_auth: true,"
        " auth: {username: u, password: imap-password-1}, address: s@seed.test}]\n"
    )
    monkeypatch.setenv(ENV_COUNT, "3")
    monkeypatch.setenv("HOSTNAME", "deliverability-agent")
    assert main(["run", "--config", str(path), "--shard-index-from-hostname"]) == 2
    assert capsys.readouterr().err == (
        "deliverability-agent: --shard-index-from-hostname: expected a hostname ending in "
        "-<ordinal> (a StatefulSet pod, e.g. deliverability-agent-2), got 'deliverability-agent'\n"
    )
    monkeypatch.delenv(ENV_COUNT)
    assert main(["run", "--config", str(path), "--shard-index", "1"]) == 2
    assert "--shard-index: needs a shard count" in capsys.readouterr().err


def test_mailboxes_with_our_probes_in_flight_stay_watched_until_they_finish() -> None:
    in_flight = {("r1", "seed1"): 2, ("r2", "seed1"): 1, ("r1", "box000"): 0, ("r1", "seed2"): 1}
    assert lingering_mailboxes(in_flight, owned=["seed2"]) == ["seed1"]
    assert lingering_mailboxes(in_flight, owned=["seed1", "seed2"]) == []
    assert lingering_mailboxes({}, owned=[]) == []


async def test_a_replica_watches_a_mailbox_it_no_longer_owns_until_its_probes_there_finish(
    tmp_path: Path,
) -> None:
    async with ScriptedSmtpServer(Script()) as server:
        config = one_pair_config(tmp_path, smtp_port=server.port, probes={"deadline": "5s"})
        before = Agent(config, recorder=Recorder(new_registry()))  # one agent: owns "m"
        await before.start()
        probe_id = await before.probe_pair("r", "m")
        await before.stop()
    assert probe_id is not None
    # Rescaled: this replica's shard no longer owns "m", its ledger has a probe in flight there.
    now = [time.time()]
    registry = new_registry()
    shard = Shard(1 - owner("m", 2), 2)
    agent = Agent(config, recorder=Recorder(registry), shard=shard, clock=lambda: now[0])
    await agent.start()
    try:
        assert agent.config.mailboxes == () and agent.config.pairs() == []
        assert agent.watched_mailboxes() == ["m"]
        assert (
            registry.get_sample_value("deliverability_shard_mailbox_owned", {"mailbox": "m"}) == 0
        )
        now[0] += 10  # past the probe's deadline: the reaper finishes it, the watch ends
        for _ in range(2):  # a sweep may have begun before the clock moved
            agent.swept.clear()
            await asyncio.wait_for(agent.swept.wait(), WAIT)
        assert agent.watched_mailboxes() == []
        record = agent.ledger.get(probe_id)
        assert record is not None and record.outcome is Outcome.MISSING
    finally:
        await agent.stop()
    # Counted once, by the replica that sent it; no stale last-outcome series for a pair it
    # does not probe.
    labels = {"route": "r", "mailbox": "m", "outcome": "missing"}
    assert registry.get_sample_value("deliverability_probes_total", labels) == 1
    last = "deliverability_last_outcome_timestamp_seconds"
    assert registry.get_sample_value(last, labels) is None
