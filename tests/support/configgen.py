"""Hypothesis strategies for configs and watch files: mostly plausible, often wrong.

Each setting gets a value that could be right (a duration, a cron line, a subject, a CEL
expression, a size), one near its limits, or junk of any TOML type; tables sometimes carry an
unknown key. The point is the space between: a config that `validate` accepts must run, and no
config, however wrong, may make validate, reload or run crash.
"""

from __future__ import annotations

import string
from typing import Any

from hypothesis import strategies as st

SET_SECRET_ENV = "WATCHD_FUZZ_SECRET"  # set by the test: an env: secret that resolves
UNSET_SECRET_ENV = "WATCHD_FUZZ_UNSET"  # never set: validate warns, run refuses

junk = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.dictionaries(st.sampled_from(["a", "x", "subject"]), st.text(max_size=4), max_size=2),
)


def maybe(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = junk) -> st.SearchStrategy[Any]:
    """`good`, and one time in thirty `bad`: with a few dozen settings in a project, about half
    of the projects are still all good (and so are run), the rest wrong in one place or a few."""
    return st.integers(0, 29).flatmap(lambda i: bad if i == 13 else good)  # not 0: hypothesis favours it


bad_duration = st.one_of(
    st.sampled_from(["1e400d", "99999999999d", "-5m", "5 minutes", "", "30m1h", "nan", "1.5h", "3660d"]),
    st.builds(lambda n, u: f"{n}{u}", st.integers(min_value=10**6, max_value=10**30), st.sampled_from("smhdw")),
    junk,
)
duration = maybe(
    st.one_of(
        st.sampled_from(["90s", "15m", "2h", "1d", "1h30m", "500ms", "1w", "0s", "1s", "3650d"]),
        st.builds(lambda n, u: f"{n}{u}", st.integers(min_value=0, max_value=10**4), st.sampled_from("smhdw")),
    ),
    bad_duration,
)
cron = maybe(
    st.sampled_from(["*/5 * * * *", "0 1 * * *", "30 2 * * 1-5", "0 0 1 1 *", "@daily", "15 3 * * 0"]),
    st.one_of(st.sampled_from(["0 25 * * *", "61 * * * *", "* * *"]), st.text(alphabet=" */,-0123456789", max_size=14)),
)
zone = maybe(
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
    st.sampled_from(["Mars/Olympus", "", "utc"]),
)
token = st.text(alphabet=string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=6)
subject = maybe(
    st.one_of(
        st.lists(token, min_size=1, max_size=4).map(".".join),
        st.sampled_from(["a.*", "a.>", ">", "*", "a.b", "x", "watchd.job.*.failed"]),
    ),
    st.sampled_from(["a..b", "a.>.b", " a", ""]),
)
cel = maybe(
    st.sampled_from(
        [
            "data.x == 1",
            "data.size > 10",
            'data.from.endsWith("@example.com") && data.urgent',
            "has(data.n) && data.n % 2 == 0",
            "subject.startsWith('a')",
            "1/0 == 1",
            "data.list[5] == 1",
            "true",
        ]
    ),
    st.sampled_from(["data.x ==", "unknown_var", "(("]),
)
watch_id = maybe(token, st.sampled_from(["Bad Id", "watchd-canary", "", "x" * 70]))
port_listen = st.sampled_from(["127.0.0.1:0", "127.0.0.1:99999", "localhost", ":x", "[::1]:8787"])
secret = maybe(
    st.sampled_from([f"env:{SET_SECRET_ENV}", "literal-secret-value"]),
    st.sampled_from([f"env:{UNSET_SECRET_ENV}", "cred:nope", "file:/nonexistent/secret"]),
)
closed_url = maybe(
    st.sampled_from(["http://127.0.0.1:9/hook", "https://127.0.0.1:9/x?token=t"]),
    st.sampled_from(["ftp://x", "not a url"]),
)


@st.composite
def pattern(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {"subject": draw(maybe(subject))}
    if draw(st.booleans()):
        out["where"] = draw(maybe(cel))
    if draw(st.integers(0, 3)) == 0:
        out["key"] = draw(maybe(st.sampled_from(["data.host", "data.pr.number", "subject", "data.x +"])))
    if draw(st.integers(0, 29)) == 13:
        out[draw(st.sampled_from(["wehre", "extra"]))] = "x"
    return out


@st.composite
def watch(draw: st.DrawFn, targets: list[str]) -> dict[str, Any]:
    kind = draw(maybe(st.sampled_from(["match", "absent", "deadline"]), st.sampled_from(["nope", 3])))
    w: dict[str, Any] = {"id": draw(watch_id), "kind": kind}
    if kind == "match" or draw(st.integers(0, 29)) == 0:
        w["on"] = draw(pattern())
        if draw(st.booleans()):
            w["count"] = draw(maybe(st.integers(1, 20), st.integers(-(2**70), 2**70)))
            w["window"] = draw(maybe(duration))
        if draw(st.booleans()):
            w["cooldown"] = draw(maybe(duration))
    if kind == "absent" or draw(st.integers(0, 29)) == 0:
        w["expect"] = draw(pattern())
        w["for"] = draw(maybe(duration))
        if draw(st.booleans()):
            w["recover"] = draw(maybe(st.booleans()))
        if draw(st.integers(0, 3)) == 0:
            w["keys"] = draw(maybe(st.lists(token, max_size=3)))
    if kind == "deadline" or draw(st.integers(0, 29)) == 0:
        w["expect"] = draw(pattern())
        w["within"] = draw(maybe(duration))
        if draw(st.booleans()):
            w["opens"] = {"cron": draw(maybe(cron))} | ({"timezone": draw(zone)} if draw(st.booleans()) else {})
        else:
            w["opens"] = draw(pattern())
    w["then"] = draw(maybe(st.lists(st.sampled_from(targets), max_size=2), st.just(["notify.nope"])))
    if draw(st.integers(0, 4)) == 0:
        w["mode"] = draw(maybe(st.sampled_from(["live", "shadow"])))
    if draw(st.integers(0, 5)) == 0:
        w["quiet"] = {"from": draw(maybe(st.sampled_from(["22:00", "07:00", "25:00"]))), "to": "07:00"}
    if draw(st.integers(0, 6)) == 0:
        w["enabled"] = draw(maybe(st.booleans()))
    if draw(st.integers(0, 6)) == 0:
        w["message"] = draw(maybe(st.text(max_size=20)))
    return w


@st.composite
def notifier(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(maybe(st.sampled_from(["console", "telegram", "slack", "webhook"]), st.sampled_from(["sms", 1])))
    n: dict[str, Any] = {"type": kind}
    if kind == "telegram":
        n |= {"token": draw(secret), "chat_id": draw(maybe(st.just("42"))), "api_base": "http://127.0.0.1:9"}
    elif kind == "slack":
        n |= {"webhook_url": draw(maybe(closed_url))}
    elif kind == "webhook":
        n |= {"url": draw(maybe(closed_url))}
        if draw(st.booleans()):
            n["secret"] = draw(secret)
    return n


@st.composite
def schedule(draw: st.DrawFn, targets: list[str]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    which = draw(maybe(st.sampled_from(["cron", "every", "at"]), st.sampled_from(["none", "two"])))
    if which in ("cron", "two"):
        s["cron"] = draw(maybe(cron))
    if which in ("every", "two"):
        s["every"] = draw(maybe(duration))
    if which == "at":
        s["at"] = draw(maybe(st.sampled_from(["2030-01-01T09:00", "2020-01-01T00:00", "next tuesday"])))
    what = draw(maybe(st.sampled_from(["job", "run", "then"]), st.just("nothing")))
    if what == "job":
        s["job"] = draw(maybe(st.sampled_from(["heartbeat", "backup", "canary"]), st.just("reboot")))
    elif what == "run":
        s["run"] = draw(maybe(st.sampled_from([["true"], ["false"], []])))
    elif what == "then":
        s["then"] = draw(maybe(st.lists(st.sampled_from(targets), max_size=2), st.just(["agent.nope"])))
    for k, choices in (("missed", ["skip", "coalesce", "replay"]), ("overlap", ["forbid", "allow", "replace"])):
        if draw(st.booleans()):
            s[k] = draw(maybe(st.sampled_from(choices)))
    for k in ("timezone", "max_lateness", "jitter", "timeout"):
        if draw(st.integers(0, 4)) == 0:
            s[k] = draw(zone if k == "timezone" else maybe(duration))
    if draw(st.integers(0, 6)) == 0:
        s["enabled"] = draw(maybe(st.booleans()))
    return s


@st.composite
def config(draw: st.DrawFn, fixed: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A config (with `fixed` settings that a run needs, such as ports and state_dir, laid over it)
    and the targets it defines."""
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["timezone"] = draw(zone)
    nats: dict[str, Any] = {}
    if draw(st.booleans()):
        nats["sync"] = draw(maybe(st.sampled_from(["always", "2m", "1s", "1h"]), st.sampled_from(["sometimes", "1d"])))
    if draw(st.integers(0, 3)) == 0:
        nats["events_max_bytes"] = draw(maybe(st.integers(1 << 20, 64 << 20), st.integers(-(2**70), 2**70)))
    http: dict[str, Any] = {}
    for k, good in (("max_body", st.integers(1, 1 << 20)), ("max_connections", st.integers(1, 500))):
        if draw(st.integers(0, 3)) == 0:
            http[k] = draw(maybe(good, st.integers(-(2**70), 2**70)))
    if draw(st.integers(0, 4)) == 0:
        http["token"] = draw(secret)
    engine: dict[str, Any] = {}
    for k, good in (
        ("max_event_bytes", st.integers(1024, 512 * 1024)),
        ("decisions_keep_days", st.floats(0.01, 3650)),
        ("decisions_keep_rows", st.integers(1, 10**6)),
    ):
        if draw(st.integers(0, 3)) == 0:
            engine[k] = draw(maybe(good))
    for name, table in (("nats", nats), ("http", http), ("engine", engine)):
        if table:
            doc[name] = table
    if draw(st.integers(0, 3)) == 0:
        doc["backup"] = {"keep": draw(maybe(st.integers(1, 10)))}
    notify = draw(st.dictionaries(token, notifier(), max_size=2))
    targets = ["notify.console", *(f"notify.{n}" for n in notify)]
    agents: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        agents["cmd"] = {"type": "command", "command": draw(maybe(st.just(["true"]))), "timeout": draw(maybe(duration))}
        targets.append("agent.cmd")
    if notify:
        doc["notify"] = notify
    if agents:
        doc["agent"] = agents
    schedules = draw(st.dictionaries(maybe(token, st.just("Bad Name")), schedule(targets), max_size=2))
    if schedules:
        doc["schedule"] = schedules
    if draw(st.integers(0, 29)) == 13:
        doc[draw(st.sampled_from(["bogus", "nat"]))] = draw(junk)
    for section, values in fixed.items():
        if isinstance(values, dict):
            doc[section] = {**doc.get(section, {}), **values}
        else:
            doc[section] = values
    return doc, targets


@st.composite
def project(draw: st.DrawFn, fixed: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, watch file) as data."""
    cfg, targets = draw(config(fixed))
    watches = draw(st.lists(watch(targets), max_size=4))
    return cfg, {"watch": watches} if watches else {}
