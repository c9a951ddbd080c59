"""Scale-out (SPEC section 9): a deployment's watches split into `[cluster] shards`, each decided by
the one instance that holds its lease.

A watch belongs to the shard a stable hash of its id names, the same on every instance and across
restarts. Each shard has what one engine had before: a lease, a durable consumer on the EVENTS
stream (filtered to the subjects its watches read), a commit cursor in the store, and the position
the holder records for whoever takes the shard next. Shard 0 keeps the unsharded names, so that
`shards = 1` is exactly the single-engine deployment, and its holder also runs what a deployment
runs once (the sources).

Schedules are spread the same way (`schedule_shards`): each is run by the instance that holds its
shard (watchd/cron/shared.py says how a schedule moves without a tick run or reported twice).

How many shards an instance takes: up to its fair share of the live members; one holding more than
that gives shards up, one at a time, while another member holds fewer (see `should_release`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from watchd.model import EVENTS_PREFIX

ENGINE_DURABLE = "watchd-engine"
LEASE_KEY = "lease.engine"
POSITION_KEY = "engine.position"
WHOLE_STREAM = EVENTS_PREFIX + ">"


def shard_of(watch_id: str, shards: int) -> int:
    """The shard of a watch: a stable hash of its id (not Python's `hash`, which differs per process)."""
    if shards <= 1:
        return 0
    digest = hashlib.sha256(watch_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def schedule_shard(name: str, shards: int) -> int:
    """The shard of a schedule: as a watch's, from its name (prefixed: a watch and a schedule may
    share a name and still land apart)."""
    return shard_of("schedule:" + name, shards)


def schedule_shards(after: Mapping[str, Iterable[str]], shards: int) -> dict[str, int]:
    """The shard of each schedule (`after`: each one's upstreams). Schedules chained by `after`
    share one shard, that of the first name of their chain: a downstream runs once every upstream's
    run for a tick has ended, as the store of the instance that ran them records it."""
    parent = {name: name for name in after}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for name, upstreams in after.items():
        for up in upstreams:
            if up in parent:
                a, b = root(name), root(up)
                parent[max(a, b)] = min(a, b)
    return {name: schedule_shard(root(name), shards) for name in after}


@dataclass(frozen=True, slots=True)
class ShardNames:
    """Where one shard keeps its lease, consumer, cursor and recorded position. Shard 0 has the
    names the single engine always had, so a deployment that starts sharding keeps its state."""

    index: int
    count: int

    def _suffix(self, sep: str) -> str:
        return "" if self.index == 0 else f"{sep}{self.index}"

    @property
    def durable(self) -> str:
        return ENGINE_DURABLE + self._suffix("-")  # a consumer name allows no dots

    @property
    def lease_key(self) -> str:
        return LEASE_KEY + self._suffix(".")

    @property
    def position_key(self) -> str:
        return POSITION_KEY + self._suffix(".")

    @property
    def cursor_key(self) -> str:
        """The meta row of the last committed stream sequence."""
        return "last_seq" + self._suffix(".")

    @property
    def clock_key(self) -> str:
        """The meta row of the engine's clock."""
        return "clock" + self._suffix(".")

    @property
    def epoch_key(self) -> str:
        """The meta row of the layout's epoch under which this store last caught the shard up."""
        return "layout_epoch" + self._suffix(".")

    @property
    def task(self) -> str:
        """The name of the shard's engine loop (in /metrics and the log)."""
        return "engine" + self._suffix(".")

    def label(self) -> str:
        return f"shard {self.index} of {self.count}"


def subjects_collide(a: str, b: str) -> bool:
    """Whether some subject matches both patterns (NATS refuses such filters on one consumer)."""
    ta, tb = a.split("."), b.split(".")
    for i in range(max(len(ta), len(tb))):
        x = ta[i] if i < len(ta) else None
        y = tb[i] if i < len(tb) else None
        if x == ">" or y == ">":
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != y and x != "*" and y != "*":
            return False
    return True


def covers(wide: str, narrow: str) -> bool:
    """Whether every subject `narrow` matches, `wide` matches too."""
    tw, tn = wide.split("."), narrow.split(".")
    for i, w in enumerate(tw):
        if w == ">":
            return len(tn) > i
        if i >= len(tn):
            return False
        n = tn[i]
        if w == "*":
            if n == ">":
                return False
            continue
        if w != n:
            return False
    return len(tw) == len(tn)


def filter_subjects(subjects: Iterable[str]) -> list[str]:
    """The consumer filter for a shard whose watches read `subjects` (without the events prefix).

    A consumer's filters may not overlap: a pattern another one covers is dropped, and when two
    still overlap (`a.*.c` and `a.b.*`) the shard reads the whole stream: more than it needs, which
    the engine's own matching then ignores, never less. No subject at all: the whole stream too
    (a consumer needs a filter or none; the shard's engine has nothing to match)."""
    unique = sorted(set(subjects))
    kept = [s for s in unique if not any(o != s and covers(o, s) for o in unique)]
    if not kept or any(subjects_collide(a, b) for i, a in enumerate(kept) for b in kept[i + 1 :]):
        return [WHOLE_STREAM]
    return [EVENTS_PREFIX + s for s in kept]


def fair_share(shards: int, members: int) -> int:
    """The most shards one live member takes."""
    return math.ceil(shards / max(1, members))


def _counts(me: str, holders: Mapping[int, str | None], members: Iterable[str]) -> dict[str, int]:
    """Shards held by each live member (a holder whose member key lapsed is not counted: it is dying)."""
    counts = dict.fromkeys({*members, me}, 0)
    for holder in holders.values():
        if holder in counts:
            counts[holder] += 1
    return counts


def may_take(me: str, holders: Mapping[int, str | None], members: Iterable[str], shards: int) -> bool:
    """Whether this instance takes one more free shard: while it holds fewer than its fair share
    and no more than any other live member (the least loaded take first)."""
    counts = _counts(me, holders, members)
    mine = counts.pop(me)
    return mine < fair_share(shards, len(counts) + 1) and all(mine <= n for n in counts.values())


def should_release(me: str, holders: Mapping[int, str | None], members: Iterable[str]) -> int | None:
    """The shard this instance gives up now, if any: when it is the most loaded live member (ties:
    the smallest instance id) and holds at least two more than the least loaded one. The highest
    shard it holds, one at a time: the others see the change before it gives up another."""
    counts = _counts(me, holders, members)
    if len(counts) < 2:
        return None
    mine = counts[me]
    top = max(counts.values())
    if min(m for m, n in counts.items() if n == top) != me or mine - min(counts.values()) < 2:
        return None
    return max(k for k, h in holders.items() if h == me)
