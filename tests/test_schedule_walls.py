"""A cron expression is parsed once and the walls found are kept (1,000 schedules due together walk
their expressions many times a minute): the ticks must be croniter's own, from any instant (within a
millisecond of a minute too, where croniter's float may round up), with walks interleaved, and with
the same expression walked warm or cold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from watchd.cron.schedule import CronSpec, next_tick, ticks_between

EXPRS = ["* * * * *", "*/7 * * * *", "5 */3 * * 1-5", "0 9 * * 1#2", "15 0 L * *", "0 0 13 * 5", "30 4 1,15 * mon"]


def oracle(expr: str, after: datetime, n: int) -> list[datetime]:
    """n ticks after `after` (UTC, no DST: walls are instants), by a croniter of its own."""
    fields = expr.split()
    day_or = not (fields[2].startswith("*") or fields[4].startswith("*"))
    it = croniter(expr, after.replace(tzinfo=None), day_or=day_or)
    return [it.get_next(datetime).replace(tzinfo=UTC) for _ in range(n)]


@settings(max_examples=200, deadline=None)
@given(
    expr=st.sampled_from(EXPRS),
    start=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2039, 1, 1)),
    edge=st.sampled_from([None, 0, 999_000, 999_500, 999_999]),
)
def test_walls_are_croniters_from_any_instant(expr: str, start: datetime, edge: int | None) -> None:
    if edge is not None:  # a whole minute, or within a millisecond before the next one
        start = start.replace(second=59 if edge else 0, microsecond=edge)
    after = start.replace(tzinfo=UTC)
    spec = CronSpec(expr, "UTC")
    want = oracle(expr, after, 4)
    for _ in range(2):  # cold, then from what the first walk kept
        assert next_tick(spec, after) == want[0]
        assert [t.at for t in ticks_between(spec, after, want[3])] == want


def test_interleaved_walks_of_one_expression_do_not_share_a_position() -> None:
    spec = CronSpec("*/7 * * * *", "UTC")
    a, b = datetime(2026, 3, 2, 10, 0, tzinfo=UTC), datetime(2026, 7, 1, 0, 3, tzinfo=UTC)
    one = ticks_between(spec, a, a + timedelta(hours=2))
    two = ticks_between(spec, b, b + timedelta(hours=2))
    mixed = [(x.at, y.at) for x, y in zip(one, two, strict=False)]
    assert [x for x, _ in mixed] == oracle(spec.expr, a, len(mixed))
    assert [y for _, y in mixed] == oracle(spec.expr, b, len(mixed))
    assert len(mixed) == 18  # :07 … :56 of 10 (the start excluded), all nine of 11, and 12:00


def test_a_walk_across_more_walls_than_are_kept_stays_right() -> None:
    spec = CronSpec("* * * * *", "UTC")
    a = datetime(2026, 3, 2, 10, 0, 30, tzinfo=UTC)
    for _ in range(2):
        ticks = [t.at for t in ticks_between(spec, a, a + timedelta(hours=3))]
        assert ticks == oracle(spec.expr, a, 180)
