"""Reading and checking config.toml and the watch files (with `file:line:col` for each problem);
the Structs they are read into live in watchd/configtypes.py and are re-exported here."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from watchd import opsettings, structcheck
from watchd.configtypes import (
    DEFAULT_SCHEDULES as DEFAULT_SCHEDULES,
)
from watchd.configtypes import (
    AbsentWatch as AbsentWatch,
)
from watchd.configtypes import (
    Agent as Agent,
)
from watchd.configtypes import (
    AnthropicAgent as AnthropicAgent,
)
from watchd.configtypes import (
    BackupConfig as BackupConfig,
)
from watchd.configtypes import (
    BudgetConfig as BudgetConfig,
)
from watchd.configtypes import (
    ClusterConfig as ClusterConfig,
)
from watchd.configtypes import (
    CommandAgent as CommandAgent,
)
from watchd.configtypes import (
    Config as Config,
)
from watchd.configtypes import (
    ConsoleNotifier as ConsoleNotifier,
)
from watchd.configtypes import (
    DeadlineWatch as DeadlineWatch,
)
from watchd.configtypes import (
    EngineConfig as EngineConfig,
)
from watchd.configtypes import (
    EscalationClass as EscalationClass,
)
from watchd.configtypes import (
    HttpConfig as HttpConfig,
)
from watchd.configtypes import (
    MatchWatch as MatchWatch,
)
from watchd.configtypes import (
    NatsAgent as NatsAgent,
)
from watchd.configtypes import (
    NatsConfig as NatsConfig,
)
from watchd.configtypes import (
    Notifier as Notifier,
)
from watchd.configtypes import (
    Opens as Opens,
)
from watchd.configtypes import (
    Pattern as Pattern,
)
from watchd.configtypes import (
    Price as Price,
)
from watchd.configtypes import (
    Quiet as Quiet,
)
from watchd.configtypes import (
    Schedule as Schedule,
)
from watchd.configtypes import (
    SlackNotifier as SlackNotifier,
)
from watchd.configtypes import (
    TelegramNotifier as TelegramNotifier,
)
from watchd.configtypes import (
    Watch as Watch,
)
from watchd.configtypes import (
    WebhookNotifier as WebhookNotifier,
)
from watchd.configtypes import (
    effective_schedules as effective_schedules,
)
from watchd.errors import ConfigError, WatchdError
from watchd.limits import (
    MAX_WATCH_COUNT,
    client_host,
    split_listen,
    url_host,
)
from watchd.sources.checks import check_sources
from watchd.sources.settings import SECRET_KEYS as SOURCE_SECRET_KEYS
from watchd.sources.settings import SourceSettings
from watchd.tomlpos import FileProblems, PathPart, Problem, read_toml

REPEAT_MIN_S, REPEAT_MAX_S = 60.0, 30 * 86400.0  # the bounds of a watch's `repeat`
WATCH_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
CLUSTER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # it names KV buckets


_NAMED_SECTIONS: dict[str, Any] = {"notify": Notifier, "agent": Agent, "source": SourceSettings, "schedule": Schedule}


# ---- loading ---------------------------------------------------------------------------------


@dataclass
class WatchDef:
    """A watch as loaded: its definition, where it came from, and its content hash."""

    watch: Watch
    file: str
    line: int
    digest: str


@dataclass
class Loaded:
    config: Config
    config_path: Path | None
    base_dir: Path
    watches: list[WatchDef]
    watch_files: list[Path]
    warnings: list[str] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return resolve_path(self.base_dir, self.config.state_dir or default_state_dir())

    def targets(self) -> set[str]:
        return {f"notify.{n}" for n in self.config.notify} | {f"agent.{n}" for n in self.config.agent}

    def zone(self) -> str:
        return self.config.timezone or system_zone()

    def nats_url(self) -> str | list[str]:
        """Where clients reach NATS: the embedded server's listener, or the configured URL(s)."""
        url = self.config.nats.url
        if url != "embedded":
            return url
        host, port = split_listen(self.config.nats.listen, setting="[nats] listen")
        return f"nats://{url_host(client_host(host))}:{port}"


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "watchd")


def system_zone() -> str:
    """The system's IANA zone from $TZ or /etc/localtime, else UTC."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and _zone_ok(tz):
        return tz
    try:
        target = str(Path("/etc/localtime").resolve())
        if "zoneinfo/" in target:
            name = target.split("zoneinfo/", 1)[1]
            if _zone_ok(name):
                return name
    except OSError:
        pass
    return "UTC"


def _zone_ok(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def resolve_path(base: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p)


def find_config(explicit: str | None) -> Path | None:
    """SPEC 3 lookup: --config, $WATCHD_CONFIG, ./watchd.toml, $XDG_CONFIG_HOME/watchd/config.toml."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise WatchdError(f"config file {explicit} not found", hint="check the --config path")
        return path
    env = os.environ.get("WATCHD_CONFIG")
    if env:
        if not Path(env).is_file():
            raise WatchdError(f"config file {env} (from $WATCHD_CONFIG) not found")
        return Path(env)
    if Path("watchd.toml").is_file():
        return Path("watchd.toml")
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "watchd" / "config.toml"
    return xdg if xdg.is_file() else None


def _convert(value: Any, typ: Any, prefix: tuple[PathPart, ...], probs: FileProblems) -> Any:
    """`value` as `typ`, every problem recorded; what could be built (see structcheck), or None."""
    result, issues = structcheck.convert(value, typ, prefix)
    for issue in issues:
        probs.at(issue.path, issue.message)
        if issue.replaced:
            probs.replaced.append(issue.path)
    return result


def _load_config(path: Path | None, found: list[Problem]) -> tuple[Config, set[str]]:
    """The config, and the targets (`notify.x`, `agent.x`) that are defined but unusable."""
    if path is None:
        return Config(), set()
    display = str(path)
    parsed = read_toml(path, display, found)
    if parsed is None:
        return Config(), set()
    text, raw = parsed
    probs = FileProblems(display, text, found)
    top = {k: v for k, v in raw.items() if k not in _NAMED_SECTIONS}
    config = _convert(top, Config, (), probs) or Config()
    broken: set[str] = set()
    for section, typ in _NAMED_SECTIONS.items():
        entries = raw.get(section, {})
        if not isinstance(entries, dict):
            probs.at((section,), f"`{section}` must be a table of named entries, like [{section}.name]")
            continue
        converted = {}
        for name, value in entries.items():
            item = _convert(value, typ, (section, name), probs)
            if item is not None:
                converted[name] = item
            else:
                broken.add(f"{section}.{name}")  # its own problem is reported; `then` may still name it
        setattr(config, section, converted)
    _check_config(config, probs, broken)
    base = path.parent
    for i, entry in enumerate(config.watches):
        if entry != "watches/" and not resolve_path(base, entry).exists():  # the default may be absent
            probs.at(("watches", i), f"watch path {entry!r} not found (relative paths start at the config's folder)")
    anchor_secret_files(config, base)
    for setting, value in secret_settings(config):
        unreadable = opsettings.unreadable_secret_file(value)
        if unreadable is not None:
            probs.warn(setting, unreadable)
        name = unset_env(value)
        if name is None:
            continue
        if _key_path(setting) in probs.positions:  # written in the file, not a default
            probs.warn(setting, f"env:{name} is not set in this shell; the daemon needs it")
        else:
            key = setting_name(setting)[1]
            probs.warn(setting, f"`{key}` defaults to env:{name}, which is not set in this shell; the daemon needs it")
    return config, broken


def _check_config(config: Config, probs: FileProblems, broken: set[str]) -> None:
    if config.timezone and not _zone_ok(config.timezone):
        probs.at(("timezone",), f"unknown time zone {config.timezone!r}: use an IANA name like Europe/Berlin")
    if not CLUSTER_NAME_RE.match(config.cluster.name):
        probs.at(("cluster", "name"), f"cluster name {config.cluster.name!r} must match ^[A-Za-z0-9_-]+$")
    # Checked only when set: the duration parser loads croniter, which a plain config need not.
    takeover = config.cluster.takeover
    takeover_s = _check_duration(takeover, ("cluster", "takeover"), probs) if takeover != "15s" else None
    if takeover_s is not None and takeover_s < 1:
        probs.at(("cluster", "takeover"), "`takeover` must be at least 1s (the lease is renewed within it)")
    opsettings.check(config, probs)
    listen_host = config.http.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"  # as split_listen reads it
    check_sources(config.source, probs, listen_host)
    inherited = _inherited_zone(config.timezone or "UTC")
    targets = {f"notify.{n}" for n in (*config.notify, "console")} | {f"agent.{n}" for n in config.agent} | broken
    for name, sched in config.schedule.items():
        path: tuple[PathPart, ...] = ("schedule", name)
        if not WATCH_ID_RE.match(name):  # it is a token of the subject watchd.schedule.<name>.done
            probs.at(path, f"schedule name {name!r} must match ^[a-z0-9][a-z0-9_-]*$ (lowercase, digits, - and _)")
        if not sched.enabled and not (sched.cron or sched.every or sched.at):
            continue  # `[schedule.backup] enabled = false` turns a default off and needs nothing else
        kinds = [k for k in ("cron", "every", "at") if getattr(sched, k)]
        if sched.after is not None:
            if kinds:
                probs.at(
                    (*path, "after"),
                    f"`after` replaces {kinds[0]}: a schedule runs on its own timing or after another's",
                )
        elif len(kinds) != 1:
            probs.at(path, "a schedule needs exactly one of cron, every, at or after")
        if sched.at:
            _check_at(sched.at, sched.timezone or inherited, (*path, "at"), probs)
        for i, target in enumerate(sched.then or []):
            if target not in targets:
                probs.at(
                    (*path, "then", i),
                    f"unknown target {target!r}: define [notify.x] or [agent.x] (known: {', '.join(sorted(targets))})",
                )
        if sched.timezone and not _zone_ok(sched.timezone):
            probs.at((*path, "timezone"), f"unknown time zone {sched.timezone!r}: use an IANA name")
        elif sched.cron:
            _check_cron(sched.cron, sched.timezone or inherited, (*path, "cron"), probs, sched.dst_gap)
        for key in ("max_lateness", "jitter", "timeout", "retry_backoff"):
            _check_duration(getattr(sched, key), (*path, key), probs)
        if not (sched.job or sched.run or sched.then):
            probs.at(path, "a schedule needs something to do: job, run or then")
        if sched.run is not None and not sched.run:
            probs.at((*path, "run"), '`run` needs at least the program, e.g. ["restic", "backup", "/home"]')
        every_s = _check_duration(sched.every, (*path, "every"), probs)
        if every_s is not None and every_s < opsettings.MIN_EVERY_S:
            probs.at(
                (*path, "every"),
                f"`every` must be at least 1s, not {sched.every!r}: use cron for fixed times, a source for fast events",
            )
    _check_after(config, probs)
    for name, agent in config.agent.items():
        _check_duration(agent.timeout, ("agent", name, "timeout"), probs)
        if isinstance(agent, NatsAgent):
            _check_duration(agent.ack_timeout, ("agent", name, "ack_timeout"), probs)
        if isinstance(agent, AnthropicAgent):
            _check_anthropic(config, name, agent, probs)
        if isinstance(agent, CommandAgent) and not agent.command:
            probs.at(("agent", name, "command"), '`command` needs at least the program, e.g. ["my-agent", "--stdin"]')
        if isinstance(agent, CommandAgent) and agent.stable_command is not None and not agent.stable_command:
            probs.at(
                ("agent", name, "stable_command"),
                '`stable_command` needs at least the program, e.g. ["my-agent-1.4", "--stdin"], or leave it out',
            )
        if agent.rollback is not None and not agent.rollback:
            probs.at(
                ("agent", name, "rollback"),
                '`rollback` needs at least the program, e.g. ["pipx", "install", "my-agent==1.4.2"], or leave it out',
            )
    for i, target in enumerate(config.alert or []):
        if target not in targets:
            probs.at(
                ("alert", i),
                f"unknown target {target!r} in alert: use a [notify.x] or [agent.x] name "
                f"(known: {', '.join(sorted(targets))})",
            )


def _check_after(config: Config, probs: FileProblems) -> None:
    """`after` names schedules that run, never its own schedule, and no chain comes back round."""
    merged = {**DEFAULT_SCHEDULES, **config.schedule}
    running = effective_schedules(config)
    for name, sched in config.schedule.items():
        for i, upstream in enumerate(sched.after or []):
            here: tuple[PathPart, ...] = ("schedule", name, "after", i)
            if upstream == name:
                probs.at(here, f"schedule {name!r} cannot run after itself")
            elif upstream not in merged:
                probs.at(here, f"unknown schedule {upstream!r} in after (known: {', '.join(sorted(merged))})")
            elif upstream not in running and sched.enabled:
                probs.at(here, f"schedule {upstream!r} is disabled: {name!r} would never run")
        if sched.after is not None and not sched.after:
            probs.at(("schedule", name, "after"), '`after` needs at least one schedule, e.g. after = ["report"]')
    cycle = after_cycle({n: s.after or [] for n, s in merged.items()})
    if cycle:
        first = cycle[0]
        probs.at(("schedule", first, "after"), f"schedules run after each other in a cycle: {' → '.join(cycle)}")


def after_cycle(after: dict[str, list[str]]) -> list[str] | None:
    """A cycle of `after` (["a", "b", "a"]), or None; self-references are reported on their own."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done or node not in after:
            return None
        for nxt in after[node]:
            if nxt != node and (found := visit(nxt, [*path, node])):
                return found
        done.add(node)
        return None

    for start in sorted(after):
        if found := visit(start, []):
            return found
    return None


def model_tiers(agent: AnthropicAgent) -> list[str]:
    """The models a run may use, cheapest first: `models`, or the one `model`."""
    return list(agent.models) if agent.models else [agent.model]


def _check_anthropic(config: Config, name: str, agent: AnthropicAgent, probs: FileProblems) -> None:
    here: tuple[PathPart, ...] = ("agent", name)
    if not agent.model and not agent.models:
        probs.at(here, f'[agent.{name}] needs `model` (or `models`, cheapest first), e.g. model = "claude-haiku-4-5"')
    elif agent.model and agent.models:
        probs.at((*here, "models"), "set `model` or `models`, not both: `models` lists every tier, cheapest first")
    if agent.escalate_on and len(agent.models) < 2:
        probs.at((*here, "escalate_on"), "`escalate_on` needs `models` with at least two tiers to escalate to")
    _check_duration(agent.max_watch_for, (*here, "max_watch_for"), probs)
    notifiers = set(config.notify) | {"console"}
    for i, tool in enumerate(agent.tools):
        kind, _, target = tool.partition(".")
        if tool in ("emit", "watch", "done") or (kind == "notify" and target in notifiers):
            continue
        hint = (
            f"a notifier that is not defined (known: {', '.join(sorted(notifiers))})"
            if kind == "notify"
            else ('use "notify.<name>", "emit" or "watch"')
        )
        probs.at((*here, "tools", i), f"unknown tool {tool!r}: {hint}")


def _inherited_zone(zone: str) -> str:
    """The zone to check inheriting schedules and watches in: a bad top-level `timezone` is reported
    once, at its own line, and must not hide (or stand in for) their own cron or `at` errors."""
    return zone if _zone_ok(zone) else "UTC"


# The schedule maths (croniter) and CEL load only when a config has something for them to check,
# so a command that needs the config alone (`watchd emit`) starts at once.


def _check_cron(text: str, zone: str, path: tuple[PathPart, ...], probs: FileProblems, dst_gap: str = "shift") -> None:
    from watchd.cron.schedule import ScheduleError, dst_gap_warning, parse_cron

    try:
        spec = parse_cron(text, zone, dst_gap=dst_gap)  # type: ignore[arg-type]
    except ScheduleError as exc:
        probs.at(path, exc.message)
        return
    # A fixed time inside a spring-forward gap is legal but surprising: say what will happen.
    warning = dst_gap_warning(spec, datetime.now(UTC).year, years=2)
    if warning:
        probs.warn(path, warning)


def _check_duration(text: str | None, path: tuple[PathPart, ...], probs: FileProblems) -> float | None:
    if text is None:
        return None
    from watchd.cron.schedule import ScheduleError, parse_duration

    try:
        return parse_duration(text)
    except ScheduleError as exc:
        probs.at(path, exc.message)
        return None


def _check_at(text: str, zone: str, path: tuple[PathPart, ...], probs: FileProblems) -> None:
    from watchd.cron.schedule import ScheduleError, at_instant

    try:
        at_instant(text, zone)
    except ScheduleError as exc:
        probs.at(path, exc.message)


def watch_files_of(config: Config, base: Path) -> list[Path]:
    """The watch files `watches` names: files as given, folders' *.toml; missing ones are skipped
    (load reports them)."""
    files: list[Path] = []
    for entry in config.watches:
        p = resolve_path(base, entry)
        if p.is_dir():
            files.extend(sorted(p.glob("*.toml")))
        elif p.is_file():
            files.append(p)
    return files


def load(config_path: Path | None, *, watches: bool = True) -> Loaded:
    """Load and validate everything; raise ConfigError listing every problem, sorted by file and line.

    watches=False loads the config alone (targets, zone, NATS): `watchd test FILE` then loads just
    FILE with `load_watch_file`, so a problem in another watch file does not stop a backtest.
    """
    found: list[Problem] = []
    config, broken = _load_config(config_path, found)
    base = config_path.parent if config_path else Path.cwd()
    config.notify.setdefault("console", ConsoleNotifier())
    files = watch_files_of(config, base) if watches else []
    loaded = Loaded(config, config_path, base, [], files)
    seen: dict[str, str] = {}
    for path in files:
        zone = _inherited_zone(loaded.zone())
        loaded.watches.extend(_load_watch_file(path, loaded.targets() | broken, zone, seen, found))
    loaded.warnings = _raise_problems(found, "fix the lines above, then run `watchd validate` again")
    return loaded


def load_watch_file(loaded: Loaded, path: Path) -> tuple[list[WatchDef], list[str]]:
    """One watch file checked exactly as `load` checks it (targets and zone from `loaded`'s config):
    its watches and warnings; ConfigError with `file:line:col` problems."""
    found: list[Problem] = []
    defs = _load_watch_file(path, loaded.targets(), _inherited_zone(loaded.zone()), {}, found)
    return defs, _raise_problems(found, "fix the lines above, then run it again")


def _raise_problems(found: list[Problem], hint: str) -> list[str]:
    """The warnings, when there are no errors; else ConfigError with both, in file order."""
    found.sort()
    errors = [str(p) for p in found if not p.warning]
    if errors:
        raise ConfigError(errors, hint=hint, report=[str(p) for p in found])
    return [str(p) for p in found]


def _load_watch_file(
    path: Path, targets: set[str], zone: str, seen: dict[str, str], found: list[Problem]
) -> list[WatchDef]:
    defs: list[WatchDef] = []
    display = os.path.relpath(path) if not path.is_absolute() or str(path).startswith(os.getcwd()) else str(path)
    parsed = read_toml(path, display, found)
    if parsed is None:
        return defs
    text, raw = parsed
    probs = FileProblems(display, text, found)
    for extra in raw.keys() - {"watch"}:
        hint = "a watch file holds [[watch]] tables only"
        probs.at((extra,), structcheck.unknown_key(extra, ["watch"], "top-level key") + f" ({hint})")
    entries = raw.get("watch", [])
    if not isinstance(entries, list):
        probs.at(("watch",), "`watch` must be an array of tables: write [[watch]]")
        entries = []
    for i, entry in enumerate(entries):
        here: tuple[PathPart, ...] = ("watch", i)
        watch = _convert(entry, Watch, here, probs)
        if watch is not None:
            _check_watch(watch, here, probs, targets, zone)
            if watch.id in seen:
                probs.at((*here, "id"), f"duplicate watch id {watch.id!r} (also in {seen[watch.id]})")
                continue
            seen[watch.id] = f"{display}:{probs.line_of(here)}"
            digest = hashlib.sha256(msgspec.json.encode(watch)).hexdigest()[:16]
            defs.append(WatchDef(watch, display, probs.line_of(here), digest))
    return defs


def _check_watch(w: Watch, here: tuple[PathPart, ...], probs: FileProblems, targets: set[str], zone: str) -> None:
    if not WATCH_ID_RE.match(w.id):
        probs.at((*here, "id"), f"watch id {w.id!r} must match ^[a-z0-9][a-z0-9_-]*$ (lowercase, digits, - and _)")
    elif w.id.startswith("watchd-"):
        probs.at(
            (*here, "id"),
            f"watch id {w.id!r}: ids starting with watchd- belong to the built-in watches "
            "(watchd-canary, watchd-canary-failed, watchd-backup-failed, …): pick another id",
        )
    for i, target in enumerate(w.then):
        if target not in targets:
            known = ", ".join(sorted(targets)) or "none"
            probs.at((*here, "then", i), f"unknown target {target!r}: define [notify.x] or [agent.x] (known: {known})")
    patterns: list[tuple[str, Pattern]] = []
    if isinstance(w, MatchWatch):
        patterns.append(("on", w.on))
        if (w.count is None) != (w.window is None):
            probs.at(here, "`count` and `window` go together: fire when count matches fall inside window")
        if w.count is not None and w.count < 1:
            probs.at((*here, "count"), "`count` must be at least 1")
        elif w.count is not None and w.count > MAX_WATCH_COUNT:
            probs.at((*here, "count"), f"`count` must be at most {MAX_WATCH_COUNT:,}: count over a shorter window")
        for key in ("window", "cooldown"):
            _check_duration(getattr(w, key), (*here, key), probs)
    elif isinstance(w, AbsentWatch):
        patterns.append(("expect", w.expect))
        _check_duration(w.for_, (*here, "for"), probs)
    else:
        patterns.append(("expect", w.expect))
        _check_duration(w.within, (*here, "within"), probs)
        opens_pattern = w.opens.pattern()
        if bool(w.opens.cron) == bool(opens_pattern):
            probs.at((*here, "opens"), '`opens` needs either cron = "…" (a schedule) or subject = "…" (an event)')
        if w.opens.cron:
            zone_name = w.opens.timezone or zone
            if _zone_ok(zone_name):
                _check_cron(w.opens.cron, zone_name, (*here, "opens", "cron"), probs)
            else:
                probs.at((*here, "opens", "timezone"), f"unknown time zone {zone_name!r}: use an IANA name")
        if opens_pattern:
            patterns.append(("opens", opens_pattern))
    for name, pattern in patterns:
        _check_pattern(pattern, (*here, name), probs)
    if w.repeat is not None:
        _check_repeat(w.repeat, (*here, "repeat"), probs)
    if w.quiet:
        for key, value in (("from", w.quiet.from_), ("to", w.quiet.to)):
            if not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", value):
                probs.at((*here, "quiet", key), f"quiet `{key}` must be HH:MM, got {value!r}")
        if w.quiet.from_ == w.quiet.to:
            probs.at((*here, "quiet"), f"quiet `from` and `to` are both {w.quiet.to}: that window is empty")
        if w.quiet.timezone and not _zone_ok(w.quiet.timezone):
            probs.at((*here, "quiet", "timezone"), f"unknown time zone {w.quiet.timezone!r}")


def _check_repeat(text: str, path: tuple[PathPart, ...], probs: FileProblems) -> None:
    """A repeat is a reminder: under a minute it floods the chat, over REPEAT_MAX it never comes."""
    repeat_s = _check_duration(text, path, probs)
    if repeat_s is None:
        return
    if not REPEAT_MIN_S <= repeat_s <= REPEAT_MAX_S:
        probs.at(path, f'repeat = {text!r} is out of range: use 1m to 30d (e.g. repeat = "1h")')


def _check_pattern(p: Pattern, path: tuple[PathPart, ...], probs: FileProblems) -> None:
    from watchd import expr

    if not re.match(r"^([A-Za-z0-9_-]+|\*|>)(\.([A-Za-z0-9_-]+|\*|>))*$", p.subject) or ">." in p.subject:
        probs.at((*path, "subject"), f"bad subject pattern {p.subject!r}: dot-separated tokens, `*` or a final `>`")
    for key in ("where", "key"):
        source = getattr(p, key)
        if source is None:
            continue
        try:
            expr.compile_expr(source)
        except expr.ExprError as exc:
            probs.at((*path, key), f"CEL {key} does not compile: {exc.message}")


def resolve_secret(value: str | None) -> str | None:
    """`env:NAME`, `file:/path` or `cred:NAME` (systemd LoadCredential=); anything else is literal."""
    if value is None:
        return None
    scheme, _, rest = value.partition(":")
    if scheme == "env":
        if rest not in os.environ:
            raise WatchdError(f"env:{rest} is not set", hint=f"export {rest}=… before starting watchd")
        return os.environ[rest]
    if scheme in ("file", "cred"):
        if scheme == "cred":
            creds = os.environ.get("CREDENTIALS_DIRECTORY")
            if not creds:
                raise WatchdError(f"cred:{rest} needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)")
            rest = str(Path(creds) / rest)
        try:
            return Path(rest).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise WatchdError(f"cannot read {scheme}:{rest}: {exc.strerror}") from None
    return value


# Every setting the daemon reads through resolve_secret, by the table that holds it.
SECRET_SETTINGS: dict[type[msgspec.Struct], tuple[str, ...]] = {
    NatsConfig: ("url",),  # an external server's URL(s), which may carry credentials
    HttpConfig: ("token",),
    TelegramNotifier: ("token",),
    SlackNotifier: ("token", "webhook_url"),
    WebhookNotifier: ("url", "secret"),
    AnthropicAgent: ("api_key",),
    Schedule: ("ping_url",),
    **SOURCE_SECRET_KEYS,
}


def secret_settings(config: Config) -> Iterator[tuple[tuple[PathPart, ...], str]]:
    """Each secret setting in use and its raw value: (("notify", "phone", "token"), "env:TG_TOKEN");
    a list's items each with their index: (("nats", "url", 1), "env:NATS_URL_2")."""
    tables: list[tuple[tuple[str, ...], msgspec.Struct]] = [(("nats",), config.nats), (("http",), config.http)]
    tables += [(("notify", name), n) for name, n in config.notify.items()]
    tables += [(("agent", name), a) for name, a in config.agent.items()]
    tables += [(("schedule", name), s) for name, s in config.schedule.items() if s.enabled]
    tables += [(("source", name), s) for name, s in config.source.items()]
    for path, table in tables:
        for key in SECRET_SETTINGS.get(type(table), ()):
            value = getattr(table, key)
            if isinstance(value, str):
                yield (*path, key), value
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    yield (*path, key, i), item
            elif isinstance(value, dict):  # a poll's headers: each value may be a secret
                for name, item in value.items():
                    yield (*path, key, name), item


def anchor_secret_files(config: Config, base: Path) -> None:
    """A relative `file:` secret names a file beside the config, as every relative path there does:
    rewritten once at load, so whichever folder the daemon or a command runs from reads the same file."""
    for path, value in list(secret_settings(config)):
        scheme, _, rest = value.partition(":")
        if scheme != "file" or not rest or Path(os.path.expanduser(rest)).is_absolute():
            continue
        holder: Any = config
        for part in path[:-1]:  # tables by attribute, list items by index, header values by name
            holder = getattr(holder, part) if isinstance(part, str) and not isinstance(holder, dict) else holder[part]
        anchored = f"file:{resolve_path(base, rest)}"
        if isinstance(path[-1], str) and not isinstance(holder, dict):
            setattr(holder, path[-1], anchored)
        else:
            holder[path[-1]] = anchored


def resolved_secrets(config: Config) -> list[str]:
    """The values of the secrets in use that this process can read, to replace wherever text leaves
    watchd (a transcript, an error); one it cannot read is skipped, not an error."""
    found = []
    for _, value in secret_settings(config):
        with contextlib.suppress(WatchdError):
            secret = resolve_secret(value)
            if secret:
                found.append(secret)
    return found


def _key_path(path: tuple[PathPart, ...]) -> tuple[PathPart, ...]:
    """The path of the key itself: ("nats", "url", 1) -> ("nats", "url")."""
    return path[: max(i for i, part in enumerate(path) if isinstance(part, str)) + 1]


def setting_name(path: tuple[PathPart, ...]) -> tuple[str, str]:
    """("notify", "phone", "token") -> ("[notify.phone]", "token"); ("nats", "url", 1) -> ("[nats]", "url[1]")."""
    key = _key_path(path)
    table = ".".join(str(p) for p in key[:-1])
    return f"[{table}]", str(key[-1]) + "".join(f"[{i}]" for i in path[len(key) :])


def unset_env(value: str) -> str | None:
    """NAME, when `value` is `env:NAME` and this process has no such variable."""
    scheme, _, name = value.partition(":")
    return name if scheme == "env" and name not in os.environ else None


def require_env_secrets(config: Config) -> None:
    """Refuse to start with a secret whose environment variable is unset: naming the setting (never
    a value), rather than dead-lettering every handoff to that target later."""
    missing = []
    for path, value in secret_settings(config):
        name = unset_env(value)
        if name is not None:
            table, key = setting_name(path)
            missing.append(f"{table} {key} needs env:{name}, which is not set")
    if missing:
        raise WatchdError(
            "; ".join(missing),
            hint="set it in watchd's environment (systemd: Environment= or EnvironmentFile=), or use file: or cred:",
        )
