"""What a scheduled run carries beside its tick (trigger, who asked, attempt, the period it covers,
the upstream runs it follows), and what its row keeps so that a later attempt is the same run."""

from __future__ import annotations

from typing import Any

import msgspec

from watchd.cron.ticks import Run
from watchd.model import iso
from watchd.store.schedules import TickRow


def payload_of(r: Run) -> dict[str, Any]:
    """What a run's events, environment and handoffs carry beside its tick: how it was triggered,
    by whom, which attempt, the period it covers and the upstream runs it follows."""
    out: dict[str, Any] = {"trigger": r.trigger, "attempt": r.attempt}
    if r.by:
        out["by"] = r.by
    if r.period is not None:
        out["period_start"], out["period_end"] = iso(r.period[0]), iso(r.period[1])
    if r.upstream:
        out["upstream"] = list(r.upstream)
        out["upstream_key"] = r.upstream[0]["key"]
    return out


def run_payload(r: Run) -> dict[str, Any]:
    """What a run's row keeps so that a later attempt (after a restart too) is the same run."""
    return {
        "by": r.by,
        "period": list(r.period) if r.period else None,
        "upstream": list(r.upstream),
        "backfill_from": r.backfill_from,
    }


def run_of_row(row: TickRow) -> Run:
    """The next attempt of the run a `retrying` row records."""
    p = msgspec.json.decode(row.payload) if row.payload else {}
    period = p.get("period")
    return Run(
        row.tick_at,
        0.0,
        backfill_from=p.get("backfill_from"),
        trigger=row.trigger if row.trigger in ("manual", "after") else "schedule",  # type: ignore[arg-type]
        by=p.get("by"),
        attempt=row.attempt + 1,
        key=row.key,
        period=(period[0], period[1]) if period else None,
        upstream=tuple(p.get("upstream") or ()),
    )
