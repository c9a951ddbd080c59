"""Scheduling control through the running daemon (in process, virtual clock, real NATS, SQLite and
HTTP): `watchd run-now [--wait]`, a scheduled run that exhausts its retries in `watchd dlq` with
its output tail and replayed with the same key, the API's refusals, and the dashboard's buttons."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from support.inprocess import InProcessDaemon
from support.scheduling import OFF
from support.waiting import until

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def flaky(flag: Path) -> str:
    script = f'echo "checking {flag.name}"; test -f {flag} || {{ echo "disk full"; exit 4; }}; echo ok'
    return json.dumps(["sh", "-c", script])


def rows(d: InProcessDaemon, name: str) -> list[dict[str, Any]]:
    cols = ("key", "state", "trigger", "attempt", "summary", "payload")
    sql = f"SELECT {', '.join(cols)} FROM schedule_ticks WHERE schedule = ? ORDER BY started_at"
    return [dict(zip(cols, r, strict=True)) for r in d.query(sql, (name,))]


async def post_json(d: InProcessDaemon, path: str, body: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(d.http_url + path, json=body, **kw) as r:
        return r.status, await r.json()


async def test_run_now_from_the_command_line_waits_for_the_outcome_and_explain_shows_who(
    daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    flag = tmp_path / "ok"
    sched = f'[schedule.report]\ncron = "0 6 * * *"\nrun = {flaky(flag)}\n'
    d = await daemon_factory(extra_config=OFF + sched).start()

    failed = await d.cli("run-now", "report", "--wait")
    assert failed.returncode == 4, failed  # the command's exit code
    assert "report: failed — exit 4: disk full" in failed.stdout and "disk full" in failed.stdout

    flag.write_text("")
    ok = await d.cli("run-now", "report", "--wait", "--json")
    assert ok.returncode == 0, ok
    answer = json.loads(ok.stdout)
    assert answer["state"] == "done" and answer["trigger"] == "manual" and answer["by"].startswith("cli:")
    assert answer["exit_code"] == 0 and answer["output_tail"] == "checking ok\nok"
    runs = rows(d, "report")
    assert [(r["trigger"], r["state"]) for r in runs] == [("manual", "failed"), ("manual", "done")]
    assert runs[1]["key"] == answer["key"]

    explain = await d.cli("explain", "--schedule", "report", "--json")
    timeline = json.loads(explain.stdout)["timeline"]
    assert [t["by"] for t in timeline] == [answer["by"], answer["by"]]
    text = await d.cli("explain", "--schedule", "report")
    assert f"(run now by {answer['by']})" in text.stdout

    started = await d.cli("run-now", "report")
    assert started.returncode == 0 and "report: started t_" in started.stdout
    unknown = await d.cli("run-now", "nope")
    assert unknown.returncode == 1 and "no schedule named 'nope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    await d.running.scheduler.idle()  # type: ignore[union-attr]


async def test_a_run_that_exhausts_its_retries_is_a_dead_letter_replayed_with_its_key(
    daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    flag = tmp_path / "ok"
    sched = f'[schedule.sync]\ncron = "0 3 * * *"\nrun = {flaky(flag)}\nretries = 2\nretry_backoff = "1m"\n'
    d = await daemon_factory(extra_config=OFF + sched).start()
    status, answer = await post_json(d, "/api/run-now", {"schedule": "sync", "by": "cli:ops"})
    assert status == 202 and answer["by"] == "cli:ops"
    key = answer["key"]
    await d.advance_until(lambda: rows(d, "sync")[0]["state"] == "dead", step_s=30, limit_s=600, what="a dead run")
    (dead,) = rows(d, "sync")
    assert dead["attempt"] == 3 and dead["key"] == key

    listed = await d.cli("dlq", "list")
    assert key in listed.stdout and "schedule sync" in listed.stdout and "3 attempts" in listed.stdout
    assert "| disk full" in listed.stdout  # the output tail
    (item,) = json.loads((await d.cli("dlq", "list", "--json")).stdout)
    assert item["id"] == key and item["kind"] == "schedule" and item["output_tail"] == "checking ok\ndisk full"
    status_json = json.loads((await d.cli("status", "--json")).stdout)
    assert status_json["dead_letters"] == 1

    flag.write_text("")
    replayed = await d.cli("dlq", "replay", key[:12])
    assert replayed.returncode == 0 and f"replaying {key} (schedule sync)" in replayed.stdout, replayed
    await until(lambda: rows(d, "sync")[0]["state"] == "done", what="the replayed run")
    (done,) = rows(d, "sync")
    assert done["key"] == key and done["attempt"] == 1
    again = await d.cli("dlq", "replay", key)
    assert again.returncode == 1 and "no dead scheduled run" in again.stderr


async def test_the_run_now_api_refuses_what_it_cannot_do(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    sched = '[schedule.slow]\ncron = "0 3 * * *"\nrun = ["sleep", "30"]\n'
    d = await daemon_factory(extra_config=OFF + sched).start()
    assert (await post_json(d, "/api/run-now", {}))[0] == 400
    status, answer = await post_json(d, "/api/run-now", {"schedule": "nope"})
    assert status == 404 and "known schedules: slow" in answer["hint"]
    assert (await post_json(d, "/api/run-now", {"schedule": "slow"}))[0] == 202
    status, answer = await post_json(d, "/api/run-now", {"schedule": "slow"})
    assert status == 409 and "overlap=forbid" in answer["error"]
    async with (
        aiohttp.ClientSession() as s,
        s.post(d.http_url + "/api/run-now", data=b'{"schedule": "slow"}') as r,  # no JSON content type
    ):
        assert r.status == 415
    assert (await post_json(d, "/api/replay", {"id": "t_nothing"}))[0] == 404
    await d.running.scheduler.stop_runs("test over")  # type: ignore[union-attr]


async def test_the_dashboard_runs_a_schedule_now_and_replays_its_dead_letter(
    daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    flag = tmp_path / "ok"
    sched = f'[schedule.sync]\ncron = "0 3 * * *"\nrun = {flaky(flag)}\nretries = 1\nretry_backoff = "1m"\n'
    d = await daemon_factory(extra_config=OFF + sched).start()
    async with aiohttp.ClientSession() as s:
        async with s.get(d.http_url + "/schedules/sync") as r:
            html = await r.text()
        assert "/actions/schedules/sync/run-now" in html
        csrf = CSRF.search(html)
        assert csrf is not None
        async with s.post(d.http_url + "/actions/schedules/sync/run-now", data={}, allow_redirects=False) as r:
            assert r.status == 403 and not rows(d, "sync")  # no CSRF token: nothing runs
        form = {"csrf": csrf.group(1)}
        async with s.post(d.http_url + "/actions/schedules/sync/run-now", data=form, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].startswith("/schedules/sync?notice=running%20sync")
        await d.advance_until(lambda: rows(d, "sync")[0]["state"] == "dead", step_s=30, limit_s=600, what="dead")
        (dead,) = rows(d, "sync")
        assert json.loads(dead["payload"])["by"] == "http:dashboard"
        async with s.get(d.http_url + "/schedules/sync") as r:
            html = await r.text()
        assert f"/actions/dlq/{dead['key']}/replay" in html and "DEAD LETTER after 2 attempts" in html
        flag.write_text("")
        async with s.post(d.http_url + f"/actions/dlq/{dead['key']}/replay", data=form, allow_redirects=False) as r:
            assert r.status == 303 and "replaying" in r.headers["Location"]
    await until(lambda: rows(d, "sync")[0]["state"] == "done", what="the replayed run")
    await asyncio.sleep(0)
