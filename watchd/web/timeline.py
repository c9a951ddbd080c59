"""The explain timeline as a picture: one SVG with a time axis, each decision a mark (fires
stand out, near misses are faint), deadline windows and the wait for the next due instant as
bars, and every mark's reason in its hover title. Plain SVG: no script, readable in any browser and in a screenshot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from zoneinfo import ZoneInfo

WIDTH, HEIGHT = 960, 150
LEFT, RIGHT, AXIS_Y = 20, 20, 112
ROWS = {"fire": 30, "decided": 58, "miss": 86}  # the y of each lane


@dataclass(frozen=True)
class Mark:
    at: float
    verdict: str
    key: str | None
    reason: str


def lane(verdict: str) -> str:
    if verdict in ("fired", "would_fire", "suppressed"):
        return "fire"
    if verdict in ("where_false", "where_error", "key_error", "rejected"):
        return "miss"
    return "decided"


COLOURS = {
    "fired": "#c62828",
    "would_fire": "#ef6c00",
    "suppressed": "#8e6d00",
    "where_false": "#9e9e9e",
    "where_error": "#6a1b9a",
    "key_error": "#6a1b9a",
    "rejected": "#6a1b9a",
    "recovered": "#2e7d32",
    "window_closed": "#2e7d32",
}


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    key: str | None
    outcome: str  # met | missed | open


def windows(marks: Sequence[Mark], now: float, next_due: float | None) -> list[Window]:
    """Deadline windows from their decisions: opened, then closed in time (met), fired (missed), or
    still open (drawn to the next due instant)."""
    opened: dict[str | None, float] = {}
    found: list[Window] = []
    for m in sorted(marks, key=lambda m: m.at):
        if m.verdict == "window_opened":
            opened[m.key] = m.at
        elif m.key in opened and m.verdict in ("window_closed", "fired", "would_fire", "missed_while_down"):
            found.append(Window(opened.pop(m.key), m.at, m.key, "met" if m.verdict == "window_closed" else "missed"))
    found += [Window(at, max(now, next_due or now), key, "open") for key, at in opened.items()]
    return found


WINDOW_COLOURS = {"met": "#a5d6a7", "missed": "#ef9a9a", "open": "#ffe082"}


def render(marks: Sequence[Mark], now: float, next_due: float | None, zone: str, waiting: str = "") -> str:
    """An SVG document (a string) for the marks between the first mark and now (or the next due
    instant, when one is set)."""
    start = min((m.at for m in marks), default=now - 3600)
    end = max(now, next_due or now)
    if end - start < 60:
        start = end - 60
    span_s = end - start
    pad = span_s * 0.03
    start, end = start - pad, end + pad

    def x(ts: float) -> float:
        return LEFT + (ts - start) / (end - start) * (WIDTH - LEFT - RIGHT)

    tz = ZoneInfo(zone)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-label="timeline" class="timeline">',
        '<rect x="0" y="0" width="100%" height="100%" fill="#fafafa"/>',
    ]
    for name, y in ROWS.items():
        parts.append(f'<text x="{LEFT}" y="{y - 12}" class="lane">{name}</text>')
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y}" y2="{y}" stroke="#eee"/>')
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{AXIS_Y}" y2="{AXIS_Y}" stroke="#555"/>')
    for i in range(6):
        ts = start + (end - start) * i / 5
        label = datetime.fromtimestamp(ts, tz).strftime("%m-%d %H:%M" if span_s > 86400 else "%H:%M:%S")
        parts.append(f'<line x1="{x(ts):.1f}" x2="{x(ts):.1f}" y1="{AXIS_Y}" y2="{AXIS_Y + 5}" stroke="#555"/>')
        anchor = "start" if i == 0 else "end" if i == 5 else "middle"  # the end labels stay inside
        parts.append(f'<text x="{x(ts):.1f}" y="{AXIS_Y + 18}" text-anchor="{anchor}" class="tick">{label}</text>')
    if next_due is not None and next_due > now:
        title = escape(waiting or "waiting until the next due instant")
        parts.append(
            f'<rect class="wait" x="{x(now):.1f}" y="{ROWS["decided"] - 6}" '
            f'width="{max(2.0, x(next_due) - x(now)):.1f}" height="12" fill="#90caf9" opacity="0.6">'
            f"<title>{title}</title></rect>"
        )
    for w in windows(marks, now, next_due):
        key = f" [{w.key}]" if w.key else ""
        title = escape(f"window{key} {_clock(w.start, tz)} → {_clock(w.end, tz)}: {w.outcome}")
        parts.append(
            f'<rect class="window {w.outcome}" x="{x(w.start):.1f}" y="{ROWS["decided"] - 9}" '
            f'width="{max(2.0, x(w.end) - x(w.start)):.1f}" height="18" fill="{WINDOW_COLOURS[w.outcome]}" '
            f'opacity="0.7"><title>{title}</title></rect>'
        )
    parts.append(
        f'<line class="now" x1="{x(now):.1f}" x2="{x(now):.1f}" y1="10" y2="{AXIS_Y}" stroke="#1565c0" '
        'stroke-dasharray="3 3"><title>now</title></line>'
    )
    for m in marks:
        y = ROWS[lane(m.verdict)]
        colour = COLOURS.get(m.verdict, "#455a64")
        when = datetime.fromtimestamp(m.at, tz).strftime("%Y-%m-%d %H:%M:%S %Z")
        key = f" [{m.key}]" if m.key else ""
        title = escape(f"{when} {m.verdict}{key}: {m.reason}")
        if lane(m.verdict) == "fire":
            cx = x(m.at)
            points = f"{cx:.1f},{y - 8} {cx - 7:.1f},{y + 6} {cx + 7:.1f},{y + 6}"
            parts.append(
                f'<polygon class="mark {escape(m.verdict)}" points="{points}" fill="{colour}">'
                f"<title>{title}</title></polygon>"
            )
        else:
            parts.append(
                f'<circle class="mark {escape(m.verdict)}" cx="{x(m.at):.1f}" cy="{y}" r="5" fill="{colour}">'
                f"<title>{title}</title></circle>"
            )
    parts.append("</svg>")
    return "\n".join(parts)


def _clock(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S")
