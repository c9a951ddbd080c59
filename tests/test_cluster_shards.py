"""Scale-out (SPEC section 9, `[cluster] shards`): a deployment's watches split across its live
instances by lease, rebalanced when one joins or dies, each decision made once.

A real nats-server the test starts; watchd instances are real daemons with their own state dirs
(in the test's event loop, or processes for kill -9)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable

import aiohttp
import msgspec
from prometheus_client.parser import text_string_to_metric_families
from support import project
from support.clocks import utc
from support.inprocess import InProcessDaemon
from support.processes import DaemonProc
from support.waiting import until

from watchd import bus, cluster, shards
from watchd.bus import EmbeddedNats
from watchd.model import Event, make_event

SHARDS = 4


def one_per_shard(prefix: str) -> list[str]:
    """Watch ids `prefix-N`, the first found for each shard, so that every shard has work."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < SHARDS:
        found.setdefault(shards.shard_of(f"{prefix}-{n}", SHARDS), f"{prefix}-{n}")
        n += 1
    return [found[k] for k in range(SHARDS)]


JOBS = one_per_shard("jobs")  # match: one fire per event on `job.<n>`
TALLIES = one_per_shard("tally")  # count: one fire per key at its third event (state across a move)


def watch_files() -> dict[str, str]:
    text = ""
    for n, wid in enumerate(JOBS):
        text += f'[[watch]]\nid = "{wid}"\nkind = "match"\non = {{ subject = "job.{n}" }}\n'
        text += 'then = ["notify.console"]\n\n'
    for n, wid in enumerate(TALLIES):
        text += (
            f'[[watch]]\nid = "{wid}"\nkind = "match"\non = {{ subject = "tally.{n}", key = "data.k" }}\n'
            'count = 3\nwindow = "1h"\ncooldown = "1h"\nthen = ["notify.console"]\n\n'
        )
    return {"shards.toml": text}


CONFIG = f'[cluster]\ntakeover = "2s"\nshards = {SHARDS}\n'


def jobs(tag: str, n: int) -> list[Event]:
    return [make_event(f"job.{i % SHARDS}", id=f"{tag}-{i:03d}") for i in range(n)]


def tallies(tag: str, keys: int) -> list[Event]:
    """One event of each key on each tally subject."""
    return [make_event(f"tally.{s}", {"k": f"k{k}"}, id=f"{tag}-t{s}-k{k}") for s in range(SHARDS) for k in range(keys)]


Handed = tuple[str, str | None, tuple[str, ...]]


def delivered(*instances: project.Project) -> list[Handed]:
    """(watch, key, evidence ids) of every handoff delivered, over all instances: a handoff is
    delivered by whichever instance took it from the deployment's queue."""
    return sorted(
        (h["watch"], h["key"], tuple(sorted(e["id"] for e in h["evidence"])))
        for d in instances
        for h in d.handoffs()
        if h["state"] == "delivered" and h["watch"] in JOBS + TALLIES
    )


def decided_by(d: project.Project) -> set[str]:
    """The watches this instance decided a handoff of (not taken from the queue)."""
    rows = d.query(
        "SELECT watch FROM handoffs h WHERE NOT EXISTS (SELECT 1 FROM transitions t "
        "WHERE t.handoff_id = h.id AND t.detail LIKE 'from the deployment''s queue%')"
    )
    return {w for (w,) in rows}


def held(d: InProcessDaemon) -> list[int]:
    return [s.names.index for s in d.running.shards if s.active and s.lease is not None and s.lease.held()]


def expected(job_events: list[Event], tally_events: list[Event]) -> list[Handed]:
    """What one instance deciding alone hands off: each job event once; each tally key once, at
    its third event, with the three as evidence."""
    out: list[Handed] = [(JOBS[int(e.subject.split(".")[1])], None, (e.id,)) for e in job_events]
    seen: dict[tuple[str, str], list[str]] = {}
    for e in tally_events:
        at = (e.subject, str(e.data["k"]))
        ids = seen.setdefault(at, [])
        ids.append(e.id)
        if len(ids) == 3:
            out.append((TALLIES[int(e.subject.split(".")[1])], at[1], tuple(sorted(ids))))
    return sorted(out)


def balanced(instances: list[InProcessDaemon]) -> bool:
    counts = [len(held(d)) for d in instances]
    return sum(counts) == SHARDS and max(counts) - min(counts) <= 1


async def test_two_instances_split_the_shards_and_a_third_joins_without_losing_or_repeating(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    a = await daemon_factory(watch_files(), nats_url=nats_server.url, extra_config=CONFIG).start()
    assert held(a) == [0, 1, 2, 3]  # alone: every shard
    b = await daemon_factory(watch_files(), nats_url=nats_server.url, extra_config=CONFIG).start()
    await until(lambda: balanced([a, b]), timeout_s=15, what="a to hand two shards to b")
    assert 0 in held(a) and len(held(b)) == 2

    # Each shard's consumer reads only its watches' subjects.
    assert a.running.js is not None
    for k, shard in enumerate(a.running.shards):
        info = await a.running.js.consumer_info("EVENTS", shard.names.durable)
        filters = sorted(info.config.filter_subjects or [info.config.filter_subject or ""])
        assert f"watchd.events.job.{k}" in filters and f"watchd.events.tally.{k}" in filters, filters
        assert not any(f"job.{j}" in f for f in filters for j in range(SHARDS) if j != k), filters

    first_jobs, first_tallies = jobs("one", 40), tallies("one", 5)
    await a.publish(*first_jobs, *first_tallies, *tallies("two", 5)[: SHARDS * 5 // 2])
    await until(lambda: len(delivered(a, b)) >= 40, what="the first 40 job handoffs")
    assert decided_by(a) and decided_by(b), "both instances decide"
    assert decided_by(a).isdisjoint(decided_by(b)), "a watch was decided on both instances"

    # A third instance joins while events keep coming: one shard moves to it; the count state of
    # the tally watches (each key two events in) moves with its shard.
    c = daemon_factory(watch_files(), nats_url=nats_server.url, extra_config=CONFIG)
    second_jobs = jobs("two", 40)
    second_tallies = tallies("two", 5)
    starting = asyncio.create_task(c.start())
    for batch in range(4):
        await a.publish(*second_jobs[batch * 10 : (batch + 1) * 10])
        await asyncio.sleep(0.3)
    await starting
    await until(lambda: balanced([a, b, c]), timeout_s=15, what="the shards to even out over three")
    assert held(c), "the newcomer holds a shard"
    third_tallies = tallies("three", 5)
    await a.publish(*second_tallies[SHARDS * 5 // 2 :], *third_tallies)

    want = expected(first_jobs + second_jobs, first_tallies + second_tallies + third_tallies)
    await until(lambda: len(delivered(a, b, c)) >= len(want), timeout_s=20, what=f"{len(want)} handoffs")
    await asyncio.sleep(0.5)  # anything handed off twice would be by now
    assert delivered(a, b, c) == want
    for d in (a, b, c):
        assert d.running.failure is None

    status = json.loads((await c.cli("status", "--json")).stdout)["daemon"]["cluster"]
    assert sorted(s["shard"] for s in status["shards"]) == [0, 1, 2, 3]
    instances = {d.running.lease.me.instance for d in (a, b, c) if d.running.lease is not None}
    assert {s["holder"] for s in status["shards"]} == instances
    metrics: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    async with aiohttp.ClientSession() as session, session.get(c.http_url + "/metrics") as r:
        for family in text_string_to_metric_families(await r.text()):
            for sample in family.samples:
                metrics.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    assert metrics["watchd_cluster_shards_held"] == {
        (("cluster", "watchd"), ("instance", c.running.lease.me.instance if c.running.lease else "")): len(held(c))
    }
    assert sorted(dict(labels)["shard"] for labels in metrics["watchd_cluster_shard_holder"]) == ["0", "1", "2", "3"]
    rows = {w["id"]: w for w in json.loads((await c.cli("status", "--json")).stdout)["watches"]}
    assert {wid for wid in JOBS if rows[wid]["stepped_here"]} == {JOBS[k] for k in held(c)}
    assert all(rows[JOBS[k]]["shard"] == k for k in range(SHARDS))
    text = (await c.cli("status")).stdout
    elsewhere = next(k for k in range(SHARDS) if k not in held(c))
    line = next(ln for ln in text.splitlines() if ln.startswith(JOBS[elsewhere] + " "))
    assert f"(shard {elsewhere} elsewhere)" in line, text
    steps = ", ".join(map(str, held(c)))
    assert f"member {socket.gethostname()} pid {os.getpid()} state_dir {c.state_dir}, shards {steps}" in text, text


QUIET = one_per_shard("quiet")  # absent per host: a timer in every shard
SILENCE_S = 8


def quiet_files() -> dict[str, str]:
    text = ""
    for wid in QUIET:
        text += (
            f'[[watch]]\nid = "{wid}"\nkind = "absent"\nexpect = {{ subject = "hb", key = "data.host" }}\n'
            f'for = "{SILENCE_S}s"\nthen = ["notify.console"]\n\n'
        )
    return {"quiet.toml": text}


def proc_held(d: DaemonProc) -> list[int]:
    h = d.health()
    return sorted(h["cluster"]["holding"]) if h and h.get("cluster") else []


async def test_kill9_of_an_instance_its_shards_are_taken_over_and_their_timers_fire_once(
    nats_server: EmbeddedNats, process_factory: Callable[..., DaemonProc]
) -> None:
    cfg = f'[cluster]\ntakeover = "3s"\nshards = {SHARDS}\n'
    a = process_factory(quiet_files(), nats_url=nats_server.url, extra_config=cfg)
    b = process_factory(quiet_files(), nats_url=nats_server.url, extra_config=cfg)
    await asyncio.to_thread(a.start)
    await asyncio.to_thread(b.start)
    await until(
        lambda: len(proc_held(a)) == 2 and len(proc_held(b)) == 2, timeout_s=20, what="two shards on each instance"
    )
    hosts = ["h1", "h2", "h3"]
    await project.publish(nats_server.url, *[make_event("hb", {"host": h}, id=f"hb-{h}") for h in hosts])
    # Every shard's engine read the heartbeats: a timer per (watch, host) is armed on its holder.
    await until(
        lambda: all((d.health() or {}).get("last_seq", 0) >= len(hosts) for d in (a, b)), what="the heartbeats read"
    )
    await asyncio.sleep(1.0)
    await asyncio.to_thread(a.kill9)
    await until(lambda: len(proc_held(b)) == SHARDS, timeout_s=15, what="b to take a's shards")

    def fires() -> list[tuple[str, str | None]]:
        return sorted((h["watch"], h["key"]) for d in (a, b) for h in d.handoffs() if h["watch"] in QUIET)

    want = sorted((w, h) for w in QUIET for h in hosts)
    await until(lambda: len(fires()) >= len(want), timeout_s=SILENCE_S + 15, what="each silence to fire")
    await asyncio.sleep(1.0)
    assert fires() == want, "a silence fired twice or never"
    assert not [h for h in a.handoffs() if h["watch"] in QUIET], "a fired before it died"


async def test_an_answer_to_a_watch_of_any_shard_is_applied_by_its_shard(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    d = await daemon_factory(watch_files(), nats_url=nats_server.url, extra_config=CONFIG).start()
    assert held(d) == [0, 1, 2, 3]
    async with aiohttp.ClientSession() as http:
        for wid in (JOBS[3], JOBS[0]):  # shard 3's watch, then shard 0's
            async with http.post(f"{d.http_url}/api/ack", json={"target": wid}) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["applied"] is True
    assert [r["verdict"] for r in d.decisions(JOBS[3])] == ["acked"]
    assert [r["verdict"] for r in d.decisions(JOBS[0])] == ["acked"]


async def test_a_watch_on_answers_hears_answers_to_the_watches_of_other_shards(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    # A watch of shard 1 that follows every answer, and answers to watches of shards 3 and 0.
    listener = next(f"answers-{n}" for n in range(100) if shards.shard_of(f"answers-{n}", SHARDS) == 1)
    files = watch_files()
    files["answers.toml"] = (
        f'[[watch]]\nid = "{listener}"\nkind = "match"\non = {{ subject = "watchd.answer" }}\n'
        'then = ["notify.console"]\n'
    )
    d = await daemon_factory(files, nats_url=nats_server.url, extra_config=CONFIG).start()
    async with aiohttp.ClientSession() as http:
        for wid in (JOBS[3], JOBS[0]):
            async with http.post(f"{d.http_url}/api/ack", json={"target": wid}) as resp:
                assert resp.status == 200, await resp.text()
    await until(lambda: len(d.decisions(listener)) == 2, what="the listener to hear both answers")
    assert [r["verdict"] for r in d.decisions(listener)] == ["fired", "fired"]
    # Each answer applied once, by its watch's shard: no shard rejects it as an unknown watch.
    assert [r["verdict"] for r in d.decisions(JOBS[3])] == ["acked"]
    assert [r["verdict"] for r in d.decisions(JOBS[0])] == ["acked"]
    assert d.decisions(verdict="rejected") == []


async def test_a_shard_lease_found_taken_stops_that_shard_only_and_is_taken_again_once_free(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    d = await daemon_factory(watch_files(), nats_url=nats_server.url, extra_config=CONFIG).start()
    assert held(d) == [0, 1, 2, 3]
    nc = await bus.connect(nats_server.url, name="watchd-test")
    try:  # another instance's record where shard 3's lease was (as after a NATS stall it could not renew through)
        kv = await nc.jetstream().key_value(cluster.bucket_names("watchd")[0])
        other = cluster.Member(instance="other", host="elsewhere", pid=1, state_dir="/srv", started=0.0, watches="x")
        await kv.put(shards.ShardNames(3, SHARDS).lease_key, msgspec.json.encode(other))
        await until(lambda: held(d) == [0, 1, 2], timeout_s=5, what="shard 3 to stop here")
        assert not d.running.stop.is_set() and d.running.failure is None
        assert "lost the lease of cluster 'watchd' (shard 3 of 4) to watchd on elsewhere" in d.logged()

        events = [make_event(f"job.{k}", id=f"while-{k}") for k in range(SHARDS)]
        await d.publish(*events)
        await until(lambda: len(delivered(d)) >= 3, what="shards 0-2 to decide theirs")
        await asyncio.sleep(0.5)
        assert sorted(w for w, _, _ in delivered(d)) == sorted(JOBS[:3]), "shard 3 decided without its lease"

        await kv.delete(shards.ShardNames(3, SHARDS).lease_key)  # the other holder is gone
        await until(lambda: held(d) == [0, 1, 2, 3], timeout_s=5, what="shard 3 taken again")
        await until(lambda: len(delivered(d)) >= 4, what="shard 3 to decide what waited")
        await asyncio.sleep(0.3)
        assert delivered(d) == expected(events, [])
    finally:
        await nc.close()


async def test_a_deployment_that_grows_its_shards_decides_each_event_once_and_keeps_its_counts(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    d = daemon_factory(watch_files(), nats_url=nats_server.url, extra_config='[cluster]\ntakeover = "2s"\n')
    await d.start()
    before_jobs, before_tallies = jobs("before", 12), tallies("before", 3) + tallies("again", 3)
    await d.publish(*before_jobs, *before_tallies)
    await until(lambda: len(delivered(d)) >= 12, what="the first jobs handed off")
    await until(lambda: d.last_seq() == 12 + len(before_tallies), what="every event decided")
    await d.stop()

    # Every instance stopped, the watches split in four: the new shards' consumers start after
    # what one shard decided, and replay it for their state (each key's two tallies so far).
    d.write_config(CONFIG)
    await d.start()
    assert held(d) == [0, 1, 2, 3]
    assert "[cluster] shards changed from 1 to 4: a watch that changed shards is decided past seq" in d.logged()
    after_jobs, after_tallies = jobs("after", 12), tallies("third", 3)
    await d.publish(*after_jobs, *after_tallies)
    want = expected(before_jobs + after_jobs, before_tallies + after_tallies)
    await until(lambda: len(delivered(d)) >= len(want), what=f"{len(want)} handoffs")
    await asyncio.sleep(0.5)  # a shard that decided the old events again would have by now
    assert delivered(d) == want
    fired = [r["event_id"] for r in d.decisions(verdict="fired") if r["watch"] in JOBS]
    assert sorted(fired) == sorted(e.id for e in before_jobs + after_jobs), "an event was decided twice"
    assert not [r for r in d.decisions(verdict="suppressed") if "duplicate fire key" in r["reason"]]


# ---- schedules: spread like the watches, each tick once ----------------------------------------------


def one_schedule_per_shard(prefix: str) -> list[str]:
    """Schedule names `prefix-N`, the first found for each shard."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < SHARDS:
        found.setdefault(shards.schedule_shard(f"{prefix}-{n}", SHARDS), f"{prefix}-{n}")
        n += 1
    return [found[k] for k in range(SHARDS)]


MINUTELY = one_schedule_per_shard("minutely")  # missed = "skip" (the default): a tick taken for missed says so


def schedules_config() -> str:
    text = CONFIG
    for name in MINUTELY:
        text += f'[schedule.{name}]\ncron = "* * * * *"\nthen = ["notify.console"]\n'
    return text


async def schedule_events(url: str, what: str) -> list[tuple[str, str]]:
    """(schedule, tick) of every watchd.schedule.<name>.<what> event on the stream, in order."""
    nc = await bus.connect(url, name="watchd-test")
    try:
        js = nc.jetstream()
        last = (await js.stream_info(bus.EVENTS_STREAM)).state.last_seq
        out = []
        async for batch in cluster.read_range(js, 0, last):
            for m in batch:
                parts = m.subject.split(".")
                if parts[2:4] == ["watchd", "schedule"] and parts[-1] == what:
                    out.append((parts[4], json.loads(m.data)["data"]["tick"]))
        return out
    finally:
        await nc.close()


def ran_here(d: project.Project) -> set[tuple[str, float]]:
    """(schedule, tick) of every scheduled run this instance started."""
    rows = d.query("SELECT schedule, tick_at FROM schedule_ticks WHERE state != 'skipped' AND trigger = 'schedule'")
    return {(name, at) for name, at in rows if name in MINUTELY}


async def test_schedules_are_spread_over_the_instances_and_move_with_their_shards_each_tick_once(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    a = daemon_factory(watch_files(), nats_url=nats_server.url, extra_config=schedules_config())
    b = daemon_factory(watch_files(), nats_url=nats_server.url, extra_config=schedules_config())
    # Both machines' clocks agree and move together, a few seconds past a minute: each move below
    # brings one tick of each schedule due, well within its grace (a late one would be skipped).
    a.clock.offset = b.clock.offset = 65 - time.time() % 60
    await a.start()
    await b.start()
    await until(lambda: balanced([a, b]), timeout_s=15, what="a to hand two shards to b")

    async def minutes(n: int) -> None:
        for _ in range(n):
            step = 65 - a.clock() % 60
            await asyncio.gather(a.advance(step), b.advance(step))
            await asyncio.sleep(0.3)

    def runs() -> list[tuple[str, float]]:
        return sorted([*ran_here(a), *ran_here(b)])

    first = len(runs())  # a's alone: the tick due when it started
    await minutes(3)
    await until(lambda: len(runs()) >= first + 3 * len(MINUTELY), what="three ticks of each schedule")
    mine = {name for name in MINUTELY if shards.schedule_shard(name, SHARDS) in held(a)}
    assert mine and mine != set(MINUTELY)
    assert {name for name, _ in ran_here(b)} == set(MINUTELY) - mine, "each schedule runs on its shard's holder"
    assert {name for name, at in ran_here(a) if at > min(at for _, at in ran_here(b))} == mine
    rows = {sc["name"]: sc for sc in json.loads((await b.cli("status", "--json")).stdout)["schedules"]}
    assert {n for n in MINUTELY if rows[n]["run_here"]} == set(MINUTELY) - mine
    assert all(rows[n]["shard"] == shards.schedule_shard(n, SHARDS) for n in MINUTELY)
    elsewhere = min(mine)
    text = (await b.cli("status")).stdout
    line = next(ln for ln in text.splitlines() if ln.startswith(elsewhere + " "))
    assert f"(shard {shards.schedule_shard(elsewhere, SHARDS)} elsewhere)" in line, text

    # a stops: b takes its shards, and with them schedules its own store last knew when b started.
    await a.stop()
    await until(lambda: held(b) == [0, 1, 2, 3], timeout_s=10, what="b to take every shard")
    before = len(ran_here(b))
    await minutes(3)
    await until(lambda: len(runs()) >= first + 6 * len(MINUTELY), what="six more ticks of each schedule")
    await asyncio.sleep(0.5)  # a tick run twice would be by now
    assert len(ran_here(b)) - before == 3 * len(MINUTELY), "b runs every schedule now"
    started = await schedule_events(nats_server.url, "started")
    mins = [m for m in started if m[0] in MINUTELY]
    assert len(mins) == len(set(mins)) == first + 6 * len(MINUTELY), f"a tick ran twice or never: {sorted(mins)}"
    assert await schedule_events(nats_server.url, "skipped") == [], "a tick another instance ran was reported skipped"


OFTEN = one_schedule_per_shard("often")
EVERY_S = 4  # longer than a takeover: no interval passes with no instance to run it


async def test_kill9_of_an_instance_its_schedules_run_on_the_other_each_tick_once(
    nats_server: EmbeddedNats, process_factory: Callable[..., DaemonProc]
) -> None:
    cfg = f'[cluster]\ntakeover = "2s"\nshards = {SHARDS}\n'
    for name in OFTEN:
        cfg += f'[schedule.{name}]\nevery = "{EVERY_S}s"\nthen = ["notify.console"]\n'
    a = process_factory(quiet_files(), nats_url=nats_server.url, extra_config=cfg)
    b = process_factory(quiet_files(), nats_url=nats_server.url, extra_config=cfg)
    await asyncio.to_thread(a.start)
    await asyncio.to_thread(b.start)
    await until(
        lambda: len(proc_held(a)) == 2 and len(proc_held(b)) == 2, timeout_s=20, what="two shards on each instance"
    )

    def ran_by(d: DaemonProc) -> set[str]:
        return {n for (n,) in d.query("SELECT schedule FROM schedule_ticks WHERE state != 'skipped'") if n in OFTEN}

    await asyncio.sleep(2 * EVERY_S + 1)
    assert ran_by(a) and ran_by(b), "each instance runs schedules"
    on_a = {n for n in OFTEN if shards.schedule_shard(n, SHARDS) in proc_held(a)}
    await asyncio.to_thread(a.kill9)
    await until(lambda: len(proc_held(b)) == SHARDS, timeout_s=15, what="b to take a's shards")

    def runs_on_b() -> Counter[str]:
        return Counter(n for (n,) in b.query("SELECT schedule FROM schedule_ticks") if n in on_a)

    before = runs_on_b()
    await until(
        lambda: all(runs_on_b()[n] > before[n] for n in on_a), timeout_s=2 * EVERY_S + 5, what="b to run a's schedules"
    )
    await asyncio.sleep(EVERY_S)

    started = await schedule_events(nats_server.url, "started")
    skipped = await schedule_events(nats_server.url, "skipped")
    for name in OFTEN:
        ticks = sorted(utc(t) for n, t in started if n == name)
        assert len(ticks) == len(set(ticks)), f"{name}: a tick ran twice"
        gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
        assert min(gaps) >= EVERY_S - 0.002, f"{name}: a run less than {EVERY_S}s after the last one ended: {gaps}"
        assert not {t for n, t in skipped if n == name} & {t for n, t in started if n == name}, "a run reported skipped"


def moving(prefix: str, old: int, new: int) -> list[tuple[str, int]]:
    """For each (old shard, new shard) pair a watch can move by, a watch id `prefix-N` that moves
    that way, with N (4 → 2: a watch of old shard k goes to k mod 2, so four pairs, not eight)."""
    found: dict[tuple[int, int], int] = {}
    for n in range(500):
        found.setdefault((shards.shard_of(f"{prefix}-{n}", old), shards.shard_of(f"{prefix}-{n}", new)), n)
    return [(f"{prefix}-{n}", n) for n in sorted(found.values())]


def change_files(old: int, new: int) -> tuple[dict[str, str], list[str], list[str]]:
    """Count watches (`tally.N`, three per key) and per-host silences (`hb.N`), one of each for every
    way a watch can move from `old` shards to `new` ones."""
    text = ""
    tallies, quiet = moving("tally", old, new), moving("quiet", old, new)
    for wid, n in tallies:
        text += (
            f'[[watch]]\nid = "{wid}"\nkind = "match"\non = {{ subject = "tally.{n}", key = "data.k" }}\n'
            'count = 3\nwindow = "1h"\ncooldown = "1h"\nthen = ["notify.console"]\n\n'
        )
    for wid, n in quiet:
        text += (
            f'[[watch]]\nid = "{wid}"\nkind = "absent"\nexpect = {{ subject = "hb.{n}", key = "data.host" }}\n'
            'for = "30s"\nthen = ["notify.console"]\n\n'
        )
    return {"change.toml": text}, [w for w, _ in tallies], [w for w, _ in quiet]


async def change_shards_mid_stream(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon], old: int, new: int
) -> None:
    files, tally_ids, quiet_ids = change_files(old, new)
    tally_n = {w: int(w.rsplit("-", 1)[1]) for w in tally_ids}
    quiet_n = {w: int(w.rsplit("-", 1)[1]) for w in quiet_ids}
    cfg = '[cluster]\ntakeover = "2s"\nshards = {}\n'
    a = daemon_factory(files, nats_url=nats_server.url, extra_config=cfg.format(old))
    await a.start()

    def tally(w: str, k: str, tag: str) -> Event:
        return make_event(f"tally.{tally_n[w]}", {"k": k}, id=f"{tag}-{w}-{k}")

    # Before: per count watch, k0 three times (fires), k1 twice, k2 once; the tallies of one old
    # shard last, so that the old shards stop at different points of the stream.
    before: list[Event] = []
    for w in sorted(tally_ids, key=lambda w: shards.shard_of(w, old)):
        before += [tally(w, "k0", "b1"), tally(w, "k0", "b2"), tally(w, "k0", "b3")]
        before += [tally(w, "k1", "b1"), tally(w, "k1", "b2"), tally(w, "k2", "b1")]
    await a.publish(*[make_event(f"hb.{quiet_n[w]}", {"host": "h1"}, id=f"hb-{w}-h1") for w in quiet_ids])
    await a.publish(*before)
    total = len(quiet_ids) + len(before)
    await until(lambda: len(a.decisions(verdict="fired")) >= len(tally_ids), what="the first tallies")
    await a.advance(35)  # each h1 falls silent on a, under the old layout
    await until(lambda: len(a.decisions(verdict="fired")) >= 2 * len(tally_ids), what="the first silences")

    async def settled() -> bool:
        return await project.deployment_settled(nats_server.url)

    await until(settled, what="the old layout's events acknowledged")
    await a.stop()
    assert a.meta(shards.ShardNames(0, old).cursor_key) is not None
    assert total > 0

    # b, with a store of its own, is the first instance of the new layout; then a comes back with it.
    b = daemon_factory(files, nats_url=nats_server.url, extra_config=cfg.format(new))
    b.clock.advance(35)  # the same time as a's
    await b.start()
    a.write_config(cfg.format(new))
    await a.start()
    await until(lambda: balanced_over([a, b], new), timeout_s=15, what="the shards to even out")

    after: list[Event] = []
    for w in tally_ids:
        after += [tally(w, "k0", "a1"), tally(w, "k1", "a1"), tally(w, "k2", "a1")]
    await b.publish(*after)
    await b.publish(*[make_event(f"hb.{quiet_n[w]}", {"host": "h2"}, id=f"hb-{w}-h2") for w in quiet_ids])
    await until(lambda: fired_over(a, b, tally_ids) >= 2 * len(tally_ids), what="the k1 tallies")
    await asyncio.gather(a.advance(35), b.advance(35))  # each h2 falls silent, on the new layout

    # What one unsharded engine decides over the same events: k0 and k1 fire once each per watch,
    # with the three events of their count (two of k1's before the change); each host's silence once.
    want_tallies = sorted(
        (w, k, tuple(sorted(f"{t}-{w}-{k}" for t in tags)))
        for w in tally_ids
        for k, tags in (("k0", ("b1", "b2", "b3")), ("k1", ("b1", "b2", "a1")))
    )
    want_quiet = sorted((w, h) for w in quiet_ids for h in ("h1", "h2"))

    def silences() -> list[tuple[str, str | None]]:
        return sorted(
            (r["watch"], r["key"]) for d in (a, b) for r in d.decisions(verdict="fired") if r["watch"] in quiet_ids
        )

    await until(lambda: len(silences()) >= len(want_quiet), what="every silence")
    await asyncio.sleep(0.5)  # anything decided twice would be by now
    assert silences() == want_quiet, "a silence fired twice or never"
    handed = sorted(
        (h["watch"], h["key"], tuple(sorted(e["id"] for e in h["evidence"])))
        for d in (a, b)
        for h in d.handoffs()
        if h["watch"] in tally_ids and h["state"] == "delivered"
    )
    assert handed == want_tallies, "a count lost its events or fired twice"
    fired = sorted(
        (r["watch"], r["key"]) for d in (a, b) for r in d.decisions(verdict="fired") if r["watch"] in tally_ids
    )
    assert fired == sorted((w, k) for w, k, _ in want_tallies), "a count was decided twice"
    assert f"[cluster] shards changed from {old} to {new}" in b.logged()


def balanced_over(instances: list[InProcessDaemon], count: int) -> bool:
    held_by = [len(held(d)) for d in instances]
    return sum(held_by) == count and max(held_by) - min(held_by) <= 1


def fired_over(a: InProcessDaemon, b: InProcessDaemon, watches: list[str]) -> int:
    return sum(1 for d in (a, b) for r in d.decisions(verdict="fired") if r["watch"] in watches)


async def test_a_deployment_that_changes_from_two_shards_to_three_decides_each_event_once(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    await change_shards_mid_stream(nats_server, daemon_factory, 2, 3)


async def test_a_deployment_that_changes_from_four_shards_to_two_decides_each_event_once(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    await change_shards_mid_stream(nats_server, daemon_factory, 4, 2)
