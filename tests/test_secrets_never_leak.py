"""No configured secret, in any encoding, in anything watchd writes or says; its files are private.

A daemon runs with secrets given every way the config allows — `env:`, `file:`, literal, inside a
URL's user:password@, path and query — against receivers that fail and echo back what they got
(the Authorization header, the path, the query). Then the log, the console, every command's output
(status, explain, handoffs, dlq, check, backup, canary, run-now), /healthz and /metrics, the state
database, the nats-server log and every member of a backup are searched for each secret as is,
base64 (standard and URL-safe, with and without padding), URL-encoded and hex. The encodings are
written out here, not taken from watchd's own redaction code, so a gap there cannot hide itself.
"""

from __future__ import annotations

import json
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import aiohttp
from support.fake_telegram import FakeTelegram
from support.fakes import FakeSlack, FakeWebhook, Reply
from support.inprocess import InProcessDaemon
from support.secrets import leaks
from support.waiting import until

from watchd.model import make_event

TG_TOKEN = "123456:tg-SECRET-token-abc"
SIGNING = "whsec-SECRET-file-value-1"
HOOK_USER, HOOK_PASS = "hookuser", "hook-SECRET-pass/9"
HOOK_QUERY = "hook-SECRET-query-42"
HTTP_TOKEN = "http-SECRET-token-xyz"
SLACK_HOOK = "XXXXslack-SECRET-path-7"
PING = "ping-SECRET-uuid-5f0e"
SECRETS = [TG_TOKEN, SIGNING, f"{HOOK_USER}:{HOOK_PASS}", HOOK_PASS, HOOK_QUERY, HTTP_TOKEN, SLACK_HOOK, PING]

WATCH = """
[[watch]]
id = "alert"
kind = "match"
on = { subject = "alert.raised" }
then = ["notify.phone", "notify.hook", "notify.team"]
"""


def find_leaks(where: str, data: bytes | str) -> list[str]:
    return leaks(where, data, SECRETS)


def backup_members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


async def get(d: InProcessDaemon, path: str) -> str:
    headers = {"Authorization": f"Bearer {HTTP_TOKEN}"}
    async with aiohttp.ClientSession() as session, session.get(d.http_url + path, headers=headers) as resp:
        return await resp.text()


async def test_no_configured_secret_reaches_any_output_in_any_encoding(
    daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    signing_file = tmp_path / "signing"
    signing_file.write_text(SIGNING + "\n")
    signing_file.chmod(0o600)
    echo = Reply(status=500, text="receiver says no", echo=True, echo_headers=("Authorization",))
    slack = FakeSlack("webhook", hook_secret=SLACK_HOOK)
    async with FakeTelegram(token=TG_TOKEN) as tg, FakeWebhook() as wh, slack as sl:
        tg.script(Reply(status=401, text="Unauthorized", echo=True))
        wh.script(echo, echo, Reply(status=403, text="forbidden", echo=True, echo_headers=("Authorization",)))
        sl.script(Reply(status=404, text="no_service", echo=True))
        credentials = f"{HOOK_USER}:{quote(HOOK_PASS, safe='')}"
        hook_url = f"http://{credentials}@{wh.url.removeprefix('http://')}/hook?token={HOOK_QUERY}"
        d = daemon_factory(
            {"alert.toml": WATCH},
            extra_config=(
                f'token = "{HTTP_TOKEN}"\n'  # under [http]
                f'[notify.phone]\ntype = "telegram"\ntoken = "env:WATCHD_TEST_TG"\nchat_id = "42"\n'
                f'api_base = "{tg.url}"\n'
                f'[notify.hook]\ntype = "webhook"\nurl = "{hook_url}"\nsecret = "file:{signing_file}"\n'
                f'[notify.team]\ntype = "slack"\nwebhook_url = "env:WATCHD_TEST_SLACK"\n'
                f'[schedule.heartbeat]\nevery = "5m"\njob = "heartbeat"\nping_url = "http://127.0.0.1:9/{PING}"\n'
            ),
            env={"WATCHD_TEST_TG": TG_TOKEN, "WATCHD_TEST_SLACK": sl.webhook_url},
        )
        assert SLACK_HOOK in sl.webhook_url
        await d.start()
        (ack,) = await d.publish(make_event("alert.raised", {"host": "nas"}))
        await d.advance_until(
            lambda: all(h["state"] == "dead" for h in d.handoffs("alert")) and len(d.handoffs("alert")) == 3,
            step_s=30,
            what="every delivery to fail for good",
        )
        assert wh.requests and tg.requests_to() and sl.requests  # the echoes were sent back
        outputs: dict[str, str] = {}
        for args in (
            ("status",),
            ("status", "--json"),
            ("explain", "alert"),
            ("explain", "alert", "--json"),
            ("handoffs", "--json"),
            ("dlq", "list"),
            ("check",),
            ("run-now", "heartbeat", "--wait"),
            ("backup",),
        ):
            r = await d.cli(*args)
            outputs[" ".join(args)] = r.stdout + r.stderr
        event_id = d.handoffs("alert")[0]["evidence"][0]["id"]
        r = await d.cli("explain", "--event", event_id)
        outputs["explain --event"] = r.stdout + r.stderr
        r = await d.cli_process("canary")  # probes every notifier: connect failures name hosts only
        outputs["canary"] = r.stdout + r.stderr
        outputs["/healthz"] = await get(d, "/healthz")
        outputs["/metrics"] = await get(d, "/metrics")
        assert ack.seq >= 1
        await d.stop()

    leaks: list[str] = []
    for name, text in outputs.items():
        leaks += find_leaks(f"`{name}`", text)
    leaks += find_leaks("the log", d.logged()) + find_leaks("the console", d.printed())
    for path in sorted(d.state_dir.rglob("*")):
        if path.is_file() and path.name != "nats-credentials.json":  # watchd's own NATS passwords
            leaks += find_leaks(str(path.relative_to(d.root)), path.read_bytes())
    archives = sorted((d.state_dir / "backups").glob("*.tar.gz"))
    assert archives, outputs["backup"]
    for name, data in backup_members(archives[-1]).items():
        leaks += find_leaks(f"backup member {name}", data)
    config_copy = backup_members(archives[-1]).get("config.toml", b"").decode()
    assert "127.0.0.1" in config_copy and "/<redacted>" in config_copy  # the hook's host kept, its path not
    assert leaks == [], "\n".join(leaks)
    # The receivers' own words did come through, with the credentials they echoed cut out.
    assert "receiver says no *** Authorization: Basic ***" in d.logged()
    assert "forbidden" in json.dumps(d.handoffs("alert"))


async def test_state_files_and_folders_are_private(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    d = await daemon_factory({"alert.toml": WATCH.replace('"notify.phone", "notify.hook", "notify.team"', "")}).start()
    await d.publish(make_event("alert.raised", {}))
    await until(lambda: d.last_seq() >= 1, what="the event to be committed")
    assert (await d.cli("backup")).returncode == 0
    await d.stop()
    loose = []
    for path in [d.state_dir, *d.state_dir.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode):
            continue
        if stat.S_IMODE(mode) & 0o077:
            loose.append(f"{path.relative_to(d.root)}: {stat.filemode(mode)}")
    assert loose == [], "\n".join(loose)
