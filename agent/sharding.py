"""Sharded replicas: which seed mailboxes this agent owns, and from where it learns its shard.

N replicas run over one configuration; each owns the seed mailboxes that rendezvous
(highest-random-weight) hashing gives its shard index, with every pair of an owned mailbox, so one
replica holds a mailbox's IMAP connections. A mailbox's score for shard i is a BLAKE2b hash of
(i, name): the same in every process and release (unlike Python's salted `hash()`), and a shard's
scores do not depend on how many shards there are. So scaling from N to N+1 moves only the
mailboxes the new shard wins (about 1/(N+1) of them), and scaling from N to N-1 (a StatefulSet
removes its highest ordinal) moves only the removed shard's mailboxes.

Bounce mailboxes are not sharded: a bounce comes back to the route's bounce mailbox whichever
replica sent the probe, so every replica watches every bounce mailbox and reads only the bounces
of probes in its own ledger (see `agent.probing.matcher`).

The shard comes from `run --shard-index I --shard-count N`, from DELIVERABILITY_SHARD_INDEX and
DELIVERABILITY_SHARD_COUNT, or, with `--shard-index-from-hostname`, from the ordinal at the end
of the pod's name (HOSTNAME=deliverability-agent-2 -> 2), as kube-state-metrics' automated
sharding does. Without any of them the agent is one shard that owns everything.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from agent.errors import AgentError, ErrorCategory

if TYPE_CHECKING:
    from agent.config import Config

__all__ = [
    "ENV_COUNT",
    "ENV_INDEX",
    "MAX_SHARDS",
    "Shard",
    "ShardError",
    "lingering_mailboxes",
    "owner",
    "shard_from",
    "shard_view",
]

ENV_INDEX = "DELIVERABILITY_SHARD_INDEX"
ENV_COUNT = "DELIVERABILITY_SHARD_COUNT"
MAX_SHARDS = 1000  # a bound on the owner computation (O(shards) per mailbox), far above any need

_ORDINAL = re.compile(r"-(\d+)\Z")


class ShardError(AgentError):
    """The shard index or count given on the command line or in the environment is unusable."""

    category: ClassVar[ErrorCategory] = ErrorCategory.CONFIG


def _score(shard: int, name: str) -> int:
    digest = hashlib.blake2b(f"{shard}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(name: str, count: int) -> int:
    """The shard (0 .. count-1) that owns the mailbox called `name`: the highest score wins."""
    if count < 1:
        raise ValueError(f"shard count {count}: expected at least 1")
    return max(range(count), key=lambda shard: _score(shard, name))


@dataclass(frozen=True, slots=True)
class Shard:
    """This agent's place among `count` replicas; `Shard()` is the one shard of a lone agent."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}")

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def owns(self, mailbox: str) -> bool:
        return not self.sharded or owner(mailbox, self.count) == self.index

    def owned(self, mailboxes: Iterable[str]) -> list[str]:
        return [name for name in mailboxes if self.owns(name)]

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"


def _integer(text: str, source: str, expected: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ShardError(f"{source}: expected {expected}, got {text!r}") from None


def shard_from(
    *,
    index: str | None,
    count: str | None,
    from_hostname: bool,
    environ: Mapping[str, str],
    hostname: str,
) -> Shard:
    """The shard from the flags (`index`, `count` as typed, None when absent), else from the
    environment; with `from_hostname` the index is the hostname's trailing ordinal. Every error
    names the flag or variable and what was expected."""
    index_source, count_source = "--shard-index", "--shard-count"
    if index is None and not from_hostname and ENV_INDEX in environ:
        index, index_source = environ[ENV_INDEX], ENV_INDEX
    if count is None and ENV_COUNT in environ:
        count, count_source = environ[ENV_COUNT], ENV_COUNT
    if from_hostname:
        if index is not None:
            raise ShardError(
                "--shard-index-from-hostname: expected either it or --shard-index, not both"
            )
        match = _ORDINAL.search(hostname)
        if match is None:
            raise ShardError(
                f"--shard-index-from-hostname: expected a hostname ending in -<ordinal> "
                f"(a StatefulSet pod, e.g. deliverability-agent-2), got {hostname!r}"
            )
        index, index_source = match.group(1), f"the ordinal of hostname {hostname!r}"
    if index is None and count is None:
        return Shard()
    if count is None:
        raise ShardError(f"{index_source}: needs a shard count (--shard-count or {ENV_COUNT})")
    total = _integer(count, count_source, f"a whole number of shards from 1 to {MAX_SHARDS}")
    if not 1 <= total <= MAX_SHARDS:
        raise ShardError(
            f"{count_source}: expected a whole number of shards from 1 to {MAX_SHARDS}, got {total}"
        )
    if index is None:
        if total == 1:
            return Shard()
        raise ShardError(
            f"{count_source}: needs a shard index (--shard-index, {ENV_INDEX} or "
            "--shard-index-from-hostname)"
        )
    number = _integer(index, index_source, f"a whole number from 0 to {total - 1}")
    if not 0 <= number < total:
        raise ShardError(
            f"{index_source}: expected a shard index from 0 to {total - 1} "
            f"(the shard count is {total}), got {number}"
        )
    return Shard(number, total)


def shard_view(config: Config, shard: Shard) -> Config:
    """The configuration as this shard probes it: its own seed mailboxes and their pairs, every
    route and bounce mailbox; DNS checks, report mailboxes and reputation feeds on shard 0 only
    (they are about the sender, not the seed mailboxes, and a report or feed read by every
    replica would be counted, and fetched, by each). The config itself when unsharded."""
    if not shard.sharded:
        return config
    owned = tuple(mailbox for mailbox in config.mailboxes if shard.owns(mailbox.name))
    names = {mailbox.name for mailbox in owned}
    probes = config.probes
    if probes.pairs is not None:
        probes = probes.model_copy(
            update={"pairs": tuple(pair for pair in probes.pairs if pair.mailbox in names)}
        )
    return config.model_copy(
        update={
            "mailboxes": owned,
            "probes": probes,
            "dns": config.dns if shard.index == 0 else None,
            "report_mailboxes": config.report_mailboxes if shard.index == 0 else (),
            "reputation": config.reputation if shard.index == 0 else None,
        }
    )


def lingering_mailboxes(
    in_flight: Mapping[tuple[str, str], int], owned: Iterable[str]
) -> list[str]:
    """Seed mailboxes this shard does not own but must keep watching: its ledger has probes in
    flight to them (`in_flight`: counts per (route, mailbox)), sent before a rescale moved the
    mailbox to another shard. Sorted, for stable logs."""
    mine = set(owned)
    return sorted({mailbox for (_, mailbox), count in in_flight.items() if count > 0} - mine)
