"""What config.toml and a watch file hold: the msgspec Structs `watchd.config` reads and checks
them into (it re-exports each, so `watchd.config.TelegramNotifier` is this module's)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from watchd.limits import HTTP_LISTEN, MAX_EVENT_BYTES, MAX_HTTP_BODY_BYTES, NATS_LISTEN
from watchd.sources.settings import SourceSettings


def _range(low: float, high: float) -> msgspec.Meta:
    """Bounds of a number setting, checked by `validate` with file:line (structcheck): a value outside
    them fails or hurts at run time (a negative size, a count no window can hold)."""
    return msgspec.Meta(ge=low, le=high)


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# ---- watches ---------------------------------------------------------------------------------


class Pattern(_Strict, kw_only=True):
    subject: str
    where: str | None = None
    key: str | None = None


class Opens(_Strict, kw_only=True):
    """What opens a deadline window: a schedule (`cron`) or an event per key (`subject`)."""

    cron: str | None = None
    timezone: str | None = None
    subject: str | None = None
    where: str | None = None
    key: str | None = None

    def pattern(self) -> Pattern | None:
        return Pattern(subject=self.subject, where=self.where, key=self.key) if self.subject else None


class Quiet(_Strict, kw_only=True):
    from_: str = msgspec.field(name="from")
    to: str
    timezone: str | None = None


class _WatchBase(_Strict, tag_field="kind", kw_only=True):
    id: str
    description: str = ""
    then: list[str] = msgspec.field(default_factory=list)
    message: str | None = None
    mode: Literal["live", "shadow"] = "live"
    enabled: bool = True
    quiet: Quiet | None = None
    urgent: bool = False
    repeat: str | None = None  # hand off again this often while the incident is open and not acked


class MatchWatch(_WatchBase, tag="match", kw_only=True):
    on: Pattern
    count: int | None = None
    window: str | None = None
    cooldown: str | None = None


class AbsentWatch(_WatchBase, tag="absent", kw_only=True):
    expect: Pattern
    for_: str = msgspec.field(name="for")
    keys: list[str] = msgspec.field(default_factory=list)
    recover: bool = False


class DeadlineWatch(_WatchBase, tag="deadline", kw_only=True):
    opens: Opens
    expect: Pattern
    within: str


Watch = MatchWatch | AbsentWatch | DeadlineWatch


# ---- config ----------------------------------------------------------------------------------


class NatsConfig(_Strict, kw_only=True):
    url: str | list[str] = "embedded"
    listen: str = NATS_LISTEN
    # JetStream fsync interval for the embedded server. "always" because a personal machine is
    # where power is lost, and the server's 2-minute default loses acknowledged writes then.
    sync: str = "always"
    # The EVENTS stream's size limit (oldest events are dropped past it). Default: a quarter of the
    # free disk when the stream is created, at most 1 GiB (watchd/storage.py).
    events_max_bytes: Annotated[int, _range(1 << 20, 1 << 50)] | None = None


class ClusterConfig(_Strict, kw_only=True):
    """Instances on one NATS with the same name are one deployment (SPEC section 9)."""

    name: str = "watchd"
    takeover: str = "15s"  # how soon a standby takes over from a holder that died
    # Copies the NATS cluster keeps of the streams and buckets watchd creates or updates (3 on a
    # 3-node cluster survives the loss of a node). None: new ones R1, existing ones as they are.
    replicas: Annotated[int, _range(1, 5)] | None = None
    # How many parts the watches are split into, each decided by the one live instance holding its
    # lease (watchd/shards.py). 1: one instance decides everything, the others stand by.
    shards: Annotated[int, _range(1, 64)] = 1


class HttpConfig(_Strict, kw_only=True):
    listen: str = HTTP_LISTEN
    token: str | None = None
    max_body: Annotated[int, _range(1, 16 * 1024 * 1024)] = MAX_HTTP_BODY_BYTES
    allowed_hosts: list[str] = msgspec.field(default_factory=list)  # Host names a reverse proxy forwards
    max_connections: Annotated[int, _range(1, 65_536)] | None = None  # default: limits.default_max_connections()
    dashboard: Literal["on", "read-only", "off"] = "on"  # the web pages at /; "read-only" offers no actions


class EngineConfig(_Strict, kw_only=True):
    # At most half the embedded server's max_payload: a handoff carries its evidence events.
    max_event_bytes: Annotated[int, _range(1024, 512 * 1024)] = MAX_EVENT_BYTES
    decisions_keep_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 30
    decisions_keep_rows: Annotated[int, _range(1, 10**9)] = 1_000_000


class BackupConfig(_Strict, kw_only=True):
    # verified backups kept; older ones are removed only after a new one verified
    keep: Annotated[int, _range(1, 1000)] = 7
    dir: str = ""  # default: <state_dir>/backups


class ConsoleNotifier(_Strict, tag_field="type", tag="console", kw_only=True):
    pass


class TelegramNotifier(_Strict, tag_field="type", tag="telegram", kw_only=True):
    token: str
    chat_id: str
    api_base: str = "https://api.telegram.org"
    buttons: bool = True  # Ack / Snooze 1h / Mute 24h under each notification of a watch


class SlackNotifier(_Strict, tag_field="type", tag="slack", kw_only=True):
    webhook_url: str | None = None
    token: str | None = None
    channel: str | None = None
    api_base: str = "https://slack.com/api"
    buttons: bool = True  # Ack / Snooze 1h / Mute 24h under each notification of a watch


class WebhookNotifier(_Strict, tag_field="type", tag="webhook", kw_only=True):
    url: str
    secret: str | None = None
    header: str = "X-Watchd-Signature-256"


Notifier = ConsoleNotifier | TelegramNotifier | SlackNotifier | WebhookNotifier


class _AgentBase(_Strict, tag_field="type", kw_only=True):
    timeout: str = "5m"
    probe: list[str] | None = None  # the canary runs it: exit 0 means the agent can work
    version: list[str] | None = None  # its output changing (an upgrade) runs the release canary
    # run when a new release fails its canary (e.g. reinstall the last good one); then canaried in turn
    rollback: list[str] | None = None


EscalationClass = Literal["overloaded", "rate_limited", "server_error", "timeout", "tool_error"]


class AnthropicAgent(_AgentBase, tag="anthropic", kw_only=True):
    model: str = ""
    # cheapest first: a run starts on the first and moves up on `escalate(reason)` or an `escalate_on` failure
    models: list[str] = msgspec.field(default_factory=list)
    escalate_on: list[EscalationClass] = msgspec.field(default_factory=list)
    # a JSON document kept across runs: one per agent, or one per watch and key (README: agent state)
    state: Literal["agent", "per-key"] | None = None
    instructions: str = ""
    api_key: str = "env:ANTHROPIC_API_KEY"
    base_url: str | None = None
    max_tokens: Annotated[int, _range(1, 1_000_000)] = 1024
    max_steps: Annotated[int, _range(1, 1000)] = 4
    run_token_budget: Annotated[int, _range(1, 10**9)] = 20_000
    daily_token_budget: Annotated[int, _range(1, 10**10)] = 200_000
    tools: list[str] = msgspec.field(default_factory=list)  # "notify.<name>", "emit", "watch" ("done" is always on)
    batch: bool = False
    fallback_model: str | None = None  # a larger-context model for a prompt that is too long
    cache_ttl: Literal["5m", "1h"] = "5m"  # prompt-cache lifetime of system + tools (README: why 5m)
    watch_mode: Literal["shadow", "live"] = "shadow"  # follow-up watches the agent creates
    max_watch_for: str = "7d"  # the longest a follow-up watch may live


class CommandAgent(_AgentBase, tag="command", kw_only=True):
    command: list[str]
    # what runs the handoffs while a new release that failed its canary is held (README: release channels)
    stable_command: list[str] | None = None
    state: Literal["agent", "per-key"] | None = None  # a state file handed to each run (README: agent state)
    reject_exit_code: Annotated[int, _range(1, 255)] = 75


class NatsAgent(_AgentBase, tag="nats", kw_only=True):
    ack_timeout: str = "30s"


Agent = AnthropicAgent | CommandAgent | NatsAgent


class Schedule(_Strict, kw_only=True):
    cron: str | None = None
    every: str | None = None
    at: str | None = None
    timezone: str | None = None
    job: Literal["heartbeat", "backup", "canary"] | None = None
    run: list[str] | None = None
    then: list[str] | None = None
    missed: Literal["skip", "coalesce", "replay"] = "skip"
    overlap: Literal["forbid", "allow", "replace"] = "forbid"
    max_lateness: str | None = None
    jitter: str | None = None
    dst_gap: Literal["shift", "skip"] = "shift"
    dst_fold: Literal["once", "both"] = "once"
    timeout: str = "1h"
    ping_url: str | None = None  # heartbeat: GET after each good run (a dead-man's switch); may be env:NAME
    enabled: bool = True  # false turns a schedule off (a built-in default too, by its name)
    # A failed run is tried again `retries` times, `retry_backoff` doubled each time (with jitter);
    # one that exhausts them is a dead letter (`watchd dlq`). 0: a failure is final, as before.
    retries: Annotated[int, _range(0, 100)] = 0
    retry_backoff: str = "1m"
    # Runs after the named schedules' runs for the same tick end `on` success, failure or either
    # (instead of cron, every or at).
    after: list[str] | None = None
    on: Literal["success", "failure", "always"] = "success"


# What the daemon runs when the config says nothing: a [schedule.<name>] of the same name replaces
# one, and `enabled = false` turns it off. Maintenance wants to run after a laptop wakes, not never:
# hence coalesce (one run for everything missed), not the general default skip.
DEFAULT_SCHEDULES: dict[str, Schedule] = {
    "heartbeat": Schedule(every="5m", job="heartbeat", missed="coalesce", timeout="2m"),
    "backup": Schedule(cron="30 3 * * *", job="backup", missed="coalesce", timeout="1h"),
    "canary": Schedule(cron="45 6 * * *", job="canary", missed="coalesce", timeout="5m"),
}


def effective_schedules(config: Config) -> dict[str, Schedule]:
    """Every schedule that runs: the defaults, replaced by same-named [schedule.x], minus disabled ones."""
    merged = {**DEFAULT_SCHEDULES, **config.schedule}
    return {name: s for name, s in merged.items() if s.enabled}


class BudgetConfig(_Strict, kw_only=True):
    # all agents together per UTC day; None: only the per-agent budgets
    daily_tokens: Annotated[int, _range(1, 10**12)] | None = None


class Price(_Strict, kw_only=True):
    """US dollars per million tokens; cache prices default to the API's multiples of `input`."""

    input: Annotated[float, _range(0, 10_000)]
    output: Annotated[float, _range(0, 10_000)]
    cache_write: Annotated[float, _range(0, 10_000)] | None = None
    cache_read: Annotated[float, _range(0, 10_000)] | None = None


class Config(_Strict, kw_only=True):
    watches: list[str] = msgspec.field(default_factory=lambda: ["watches/"])
    state_dir: str = ""
    timezone: str | None = None
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    backup: BackupConfig = msgspec.field(default_factory=BackupConfig)
    budget: BudgetConfig = msgspec.field(default_factory=BudgetConfig)
    prices: dict[str, Price] = msgspec.field(default_factory=dict)
    notify: dict[str, Notifier] = msgspec.field(default_factory=dict)
    agent: dict[str, Agent] = msgspec.field(default_factory=dict)
    source: dict[str, SourceSettings] = msgspec.field(default_factory=dict)
    schedule: dict[str, Schedule] = msgspec.field(default_factory=dict)
    alert: list[str] | None = None  # targets of the built-in alert watches; default: the notifiers
