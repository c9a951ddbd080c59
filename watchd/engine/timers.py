"""The engine's timers: when each key (and each watch) next needs the clock, earliest first.

An entry is (due, watch, key). A key is armed again when its due changes, and the entry it had
is not looked for: when an entry comes first, it counts only if the key's due is still that
instant (`due_of`); if the due is later, the entry is filed again for it, and if it is earlier
or gone, it is dropped (a key armed for an earlier due has an entry for it). So a key whose due
only moves later (an absent key heard again) need not be armed again at all: its entry is found
early and moved on, once per silence rather than once per event. The same order and liveness
as one heap of every entry, but most entries are far in the future (100,000 keys
of an absent watch each waiting an hour), and a heap entry is a tuple and a float: ~100 bytes a
key. Entries due before `horizon` are kept so, in one heap (`near`); later ones are filed by the
minute they fall in (`far`), as two references in two lists: ~16 bytes. When the near heap runs
out, the earliest minute is taken into it (each of its entries with its due read again).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable

BUCKET_S = 60.0  # how much of the future is taken into the near heap at a time
_FOREVER = 2**62  # the bucket of a due that is not a finite number

Entry = tuple[float, str, "str | None"]
DueOf = Callable[[str, "str | None"], "float | None"]


class Timers:
    def __init__(self, due_of: DueOf) -> None:
        self._due_of = due_of  # a key's (or watch's) due now, to tell a live entry from a stale one
        self._near: list[Entry] = []  # a heap of the entries due before the horizon
        self._horizon = -math.inf  # every entry due before it is in `near`, every later one in `far`
        self._far: dict[int, tuple[list[str], list[str | None]]] = {}  # bucket → (watches, keys)
        self._buckets: list[int] = []  # a heap of the buckets in `far`

    def push(self, due: float, wid: str, key: str | None) -> None:
        if due < self._horizon or self._horizon == math.inf:  # past the last bucket: all are near
            heapq.heappush(self._near, (due, wid, key))
            return
        b = int(due // BUCKET_S) if math.isfinite(due) else _FOREVER
        filed = self._far.get(b)
        if filed is None:
            filed = self._far[b] = ([], [])
            heapq.heappush(self._buckets, b)
        filed[0].append(wid)
        filed[1].append(key)

    def push_keys(self, wid: str, dues: Iterable[tuple[float, str | None]]) -> None:
        """Many keys of one watch at once, as `push` each (a restart arms 100,000 in one go)."""
        far, buckets, horizon = self._far, self._buckets, self._horizon
        for due, key in dues:
            if due < horizon or horizon == math.inf or not math.isfinite(due):
                self.push(due, wid, key)
                continue
            b = int(due // BUCKET_S)
            filed = far.get(b)
            if filed is None:
                filed = far[b] = ([], [])
                heapq.heappush(buckets, b)
            filed[0].append(wid)
            filed[1].append(key)

    def earliest_possible(self) -> float | None:
        """A lower bound of the next due, stale entries included: nothing is due before it."""
        if self._near:
            return self._near[0][0]
        if self._buckets:
            return self._buckets[0] * BUCKET_S
        return None

    def first(self, until: float = math.inf) -> Entry | None:
        """The earliest live entry (stale ones on the way are dropped), left in place; None when
        there is none, or none due by `until`. Only the minutes starting by `until` are taken into
        the near heap: a step that fires timers leaves a minute of 100,000 keys for later (taking
        it costs a few hundred ms, which would delay the commit of what the step fired)."""
        near, due_of = self._near, self._due_of
        while True:
            while near:
                entry = near[0]
                due = due_of(entry[1], entry[2])
                if due == entry[0]:
                    return entry if entry[0] <= until else None
                heapq.heappop(near)
                if due is not None and due > entry[0]:  # found early: filed again for its due
                    self.push(due, entry[1], entry[2])
            if not self._buckets or self._buckets[0] * BUCKET_S > until:
                return None
            self._take_bucket()

    def pop(self) -> Entry:
        """Take the entry `first` returned."""
        return heapq.heappop(self._near)

    def _take_bucket(self) -> None:
        b = heapq.heappop(self._buckets)
        wids, keys = self._far.pop(b)
        self._horizon = (b + 1) * BUCKET_S if b != _FOREVER else math.inf
        due_of, near = self._due_of, self._near
        taken: set[tuple[str, str | None]] = set()  # a key filed twice in the minute: once
        later: list[Entry] = []
        start = b * BUCKET_S
        for wid, key in zip(wids, keys, strict=True):
            due = due_of(wid, key)
            if due is None or due < start or (wid, key) in taken:
                continue  # no due, or an earlier entry of the key has it
            taken.add((wid, key))
            if due // BUCKET_S == b if b != _FOREVER else not math.isfinite(due):
                near.append((due, wid, key))
            else:  # its due moved later since it was filed
                later.append((due, wid, key))
        heapq.heapify(near)
        for due, wid, key in later:
            self.push(due, wid, key)

    def __len__(self) -> int:
        """Entries filed, stale ones included."""
        return len(self._near) + sum(len(keys) for _, keys in self._far.values())
