"""Which configured sources feed a watch, and which of those are silent: for `explain`.

A source feeds a watch when a subject it can publish matches one of the watch's patterns; a
template field (`github.{header:X-GitHub-Event}`) stands for any one token. A source with
`expect_every` that has published nothing for longer is silent, and the watch's explanation says
so: "no events from source 'github' since 09:12".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from watchd.config import WatchDef
from watchd.sources.settings import SourceSettings, subject_of, type_name
from watchd.store.engine_state import Heard


def _template_tokens(template: str) -> list[str]:
    out = []
    for token in template.split("."):
        out.append("*" if "{" in token else token)
    return out


def _intersect(a: list[str], b: list[str]) -> bool:
    """Whether two subject patterns (tokens, `*`, a final `>`) have a subject in common."""
    for x, y in zip(a, b, strict=False):
        if x == ">" or y == ">":  # the rest of the other, as long as it has one token more
            return True
        if x != y and x != "*" and y != "*":
            return False
    return len(a) == len(b)


def watch_patterns(d: WatchDef) -> list[str]:
    w: Any = d.watch
    found = [p.subject for p in (getattr(w, "on", None), getattr(w, "expect", None)) if p is not None]
    opens = getattr(w, "opens", None)
    if opens is not None and opens.subject:
        found.append(opens.subject)
    return found


def source_subjects(settings: SourceSettings) -> list[str]:
    subject = subject_of(settings)
    if subject is None:
        return []
    return [subject, subject + ".failed"] if type_name(settings) == "poll" else [subject]


def feeders(sources: dict[str, SourceSettings], patterns: Sequence[str]) -> list[str]:
    """The names of the sources whose events can match one of `patterns`."""
    out = []
    for name, settings in sorted(sources.items()):
        subjects = [_template_tokens(s) for s in source_subjects(settings)]
        if any(_intersect(s, p.split(".")) for s in subjects for p in patterns):
            out.append(name)
    return out


def last_heard(name: str, settings: SourceSettings, heard: Sequence[Heard]) -> float | None:
    subjects = [_template_tokens(s) for s in source_subjects(settings)]
    times = [
        h.last_at for h in heard if h.last_source == name or any(_intersect(s, h.subject.split(".")) for s in subjects)
    ]
    return max(times, default=None)


def silent_feeders(
    sources: dict[str, SourceSettings], d: WatchDef, heard: Sequence[Heard], now: float
) -> list[tuple[str, float | None]]:
    """(source, last event time or None) for each source that feeds the watch and is silent."""
    from watchd.cron.schedule import ScheduleError, parse_duration

    out = []
    for name in feeders(sources, watch_patterns(d)):
        settings = sources[name]
        if not settings.expect_every:
            continue
        try:
            every = parse_duration(settings.expect_every)
        except ScheduleError:
            continue
        last = last_heard(name, settings, heard)
        if last is None or now - last > every:
            out.append((name, last))
    return out
