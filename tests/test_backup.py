"""Backups: a consistent snapshot that proves it restores, keeps N, holds no secret, and comes back."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from support.handoffs import make_handoff
from support.inprocess import InProcessDaemon
from support.waiting import until, wait_until

from watchd import config
from watchd.cli import cli
from watchd.engine import Decision, KeyState, WatchMeta
from watchd.jobs import JobContext, builtin
from watchd.jobs.backup import BackupInvalid, backup_line, make_backup, read_manifest, verify_archive
from watchd.jobs.restore import DaemonRunning, restore
from watchd.redact import redact_config
from watchd.status import collect
from watchd.store import Store, db_path

SECRET = "123456:ABCDEF-literal-telegram-token"
ENV_SECRET = "slack-url-from-env-must-not-appear-7"
DAY = 86400.0
T0 = 1_795_000_000.0  # 2026-11-18T…Z

WATCH = """[[watch]]
id = "nightly"
kind = "match"
on = { subject = "backup.done" }
then = ["notify.phone"]
"""


def write_config(root: Path, extra: str = "") -> Path:
    (root / "watches").mkdir(parents=True, exist_ok=True)
    (root / "watches" / "nightly.toml").write_text(WATCH)
    path = root / "config.toml"
    path.write_text(
        'watches = ["watches/"]\nstate_dir = "state"\ntimezone = "UTC"\n'
        f'[notify.phone]\ntype = "telegram"\ntoken = "{SECRET}"  # the token is {SECRET}\nchat_id = "42"\n'
        '[notify.team]\ntype = "slack"\nwebhook_url = "env:WATCHD_TEST_SLACK_URL"\n' + extra
    )
    return path


def fill(store: Store, start: int, n: int) -> None:
    """n decisions, one delivered handoff, key state and a subject, committed as the daemon does."""
    decisions = [
        Decision(float(start + i), "nightly", None, "matched", f"event {start + i}", f"e{start + i}", start + i)
        for i in range(n)
    ]
    handoff = make_handoff(
        id=f"h_{start}", watch="nightly", target="notify.phone", reason="matched", fired_at="2026-11-18T00:00:00Z"
    )
    rows: list[tuple[str, str | None, KeyState | None]] = [
        ("nightly", f"k{start}", KeyState(last_seen=float(start), hits=(float(start),)))
    ]
    changes = (
        rows,
        [("nightly", WatchMeta(activated_at=float(start)))],
        set[str](),
    )
    subjects = {"backup.done": (float(start), "exec", n)}
    store.commit_step(
        last_seq=start + n,
        clock=float(start + n),
        changes=changes,
        decisions=decisions,
        handoffs=[handoff],
        subjects=subjects,
        now=float(start),
    )
    store.finish(handoff.id, "delivered", float(start) + 0.5, None)


STATE_TABLES = ("decisions", "handoffs", "transitions", "key_state", "watch_meta", "meta", "subjects")


def dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in STATE_TABLES}
    finally:
        conn.close()


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[config.Loaded, Store]]:
    monkeypatch.setenv("WATCHD_TEST_SLACK_URL", ENV_SECRET)
    loaded = config.load(write_config(tmp_path))
    store = Store(db_path(loaded.state_dir))
    fill(store, 1, 50)
    try:
        yield loaded, store
    finally:
        store.close()


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def repack(archive: Path, change: Callable[[dict[str, bytes]], None], *, fix_checksums: bool = False) -> None:
    """Rewrite `archive` with its members changed, the manifest first as watchd writes it."""
    files = members(archive)
    change(files)
    manifest = json.loads(files.pop("manifest.json"))
    if fix_checksums:
        for m in manifest["members"]:
            m["sha256"] = hashlib.sha256(files[m["name"]]).hexdigest()
            m["size"] = len(files[m["name"]])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in [("manifest.json", json.dumps(manifest).encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    archive.write_bytes(buf.getvalue())


def overwrite(body: bytes, at: int, data: bytes) -> bytes:
    return body[:at] + data + body[at + len(data) :]


def with_db(sql: str) -> Callable[[dict[str, bytes]], None]:
    """A repack step that changes the archived database with SQL (it stays a sound database)."""

    def apply(files: dict[str, bytes]) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "x.db"
            path.write_bytes(files["watchd.db"])
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute(sql)
            conn.close()
            files["watchd.db"] = path.read_bytes()

    return apply


# ---- making and proving a backup -------------------------------------------------------------


async def test_backup_job_snapshots_state_and_definitions_and_proves_it(setup: tuple[config.Loaded, Store]) -> None:
    loaded, store = setup

    async def emit(subject: str, data: dict[str, Any]) -> None:
        raise AssertionError("the backup job publishes nothing itself: the scheduler does")

    ctx = JobContext(name="backup", loaded=loaded, store=store, clock=lambda: T0, emit=emit)
    result = await builtin("backup")(ctx)
    assert result.ok, result.summary
    data = result.data
    archive = Path(data["path"])
    assert data["verified"] is True and archive.name == "watchd-20261118T110640Z.tar.gz"
    assert data["size_bytes"] == archive.stat().st_size and data["duration_s"] > 0
    assert data["tables"]["decisions"] == 50 and data["tables"]["handoffs"] == 1
    assert data["config_redacted"] == ["notify.phone.token"]
    msgspec.json.encode(data)  # the event's data is plain JSON
    assert archive.stat().st_mode & 0o777 == 0o600 and archive.parent.stat().st_mode & 0o777 == 0o700

    manifest = read_manifest(archive)
    assert manifest.created_at == "2026-11-18T11:06:40Z" and manifest.stream_seq == 51
    assert manifest.tables["decisions"].rows == 50 and manifest.tables["decisions"].newest == 50
    assert manifest.tables["handoffs"].newest == 1.5  # MAX(updated_at): the delivery
    files = members(archive)
    assert next(iter(files)) == "manifest.json"  # first, so `status` reads it cheaply
    assert files["files/watches/nightly.toml"].decode() == WATCH
    assert {m.name for m in manifest.members} == {"watchd.db", "config.toml", "files/watches/nightly.toml"}
    # Nothing but the archive is left behind: no staging or verification directories.
    assert sorted(p.name for p in archive.parent.iterdir()) == [".lock", archive.name]


def test_secrets_never_reach_the_archive(setup: tuple[config.Loaded, Store]) -> None:
    loaded, _ = setup
    result = make_backup(loaded, T0)
    assert result.ok
    files = members(Path(result.data["path"]))
    raw = b"".join(files.values())
    assert SECRET.encode() not in raw and ENV_SECRET.encode() not in raw
    assert SECRET not in json.dumps(result.data) and ENV_SECRET not in json.dumps(result.data)
    restored_config = files["config.toml"].decode()
    assert 'token = "<redacted>"  # the token is <redacted>' in restored_config  # comments kept, redacted
    assert 'webhook_url = "env:WATCHD_TEST_SLACK_URL"' in restored_config  # a reference is not a secret


def test_redaction_covers_every_literal_form_and_leaves_the_rest() -> None:
    text = (
        '[nats]\nurl = "nats://alice:hunter2-hunter2@nats.example:4222"\n'
        "[http]\ntoken = 'literal-http-token-123'\n"
        '[notify.hook]\ntype = "webhook"\nurl = "https://example.com/x"\nsecret = """multi-line-secret-value"""\n'
        '[agent.a]\ntype = "anthropic"\nmodel = "m"\napi_key = "sk-ant-literal-key-000"\n'
        "instructions = \"say: token = 'not-a-secret-at-all'\"\n"
        '[source.gh]\ntype = "webhook"\nsecret = "env:GH_SECRET"\nextra = { password = "inline-password-9" }\n'
    )
    out, paths = redact_config(text)
    assert out is not None
    for secret in (
        "hunter2-hunter2",
        "literal-http-token-123",
        "multi-line-secret-value",
        "sk-ant-literal-key-000",
        "inline-password-9",
    ):
        assert secret not in out
    assert paths == ["agent.a.api_key", "http.token", "nats.url", "notify.hook.secret", "source.gh.extra.password"]
    assert "nats://***@nats.example:4222" in out and 'secret = "env:GH_SECRET"' in out
    assert "not-a-secret-at-all" in out  # text inside another string is not an assignment
    assert redact_config("broken = [")[0] is None  # unparseable: left out rather than risk it


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("flip", "damaged"),  # a checksum or the gzip CRC: either says so
        ("truncate", "cannot be read: it is truncated or damaged"),
        ("db_bytes", "watchd.db does not match its checksum"),
        ("db_pages", "the database"),
        ("db_rows", "table decisions has 49 rows, the snapshot had 50"),
        ("extra", "holds 'evil.sh', which its manifest does not list"),
    ],
)
def test_a_damaged_backup_fails_verification_with_the_reason(
    setup: tuple[config.Loaded, Store], tmp_path: Path, damage: str, reason: str
) -> None:
    loaded, _ = setup
    archive = Path(make_backup(loaded, T0).data["path"])
    verify_archive(archive, tmp_path / "ok")  # sound before the damage
    body = archive.read_bytes()
    if damage == "flip":
        middle = len(body) // 2
        archive.write_bytes(body[:middle] + bytes(b ^ 0xFF for b in body[middle : middle + 16]) + body[middle + 16 :])
    elif damage == "truncate":
        archive.write_bytes(body[: len(body) // 2])
    elif damage == "db_bytes":  # bytes of the database changed, the manifest as it was
        repack(archive, lambda f: f.update({"watchd.db": overwrite(f["watchd.db"], 8192, b"\0" * 4096)}))
    elif damage == "db_pages":  # pages overwritten, with checksums that agree: the database check must catch it
        repack(
            archive,
            lambda f: f.update({"watchd.db": overwrite(f["watchd.db"], 4096, b"\xa5" * 8192)}),
            fix_checksums=True,
        )
    elif damage == "db_rows":  # a sound database that is not the snapshot
        repack(archive, with_db("DELETE FROM decisions WHERE id = 50"), fix_checksums=True)
    else:
        repack(archive, lambda f: f.update({"evil.sh": b"rm -rf ~"}))
    with pytest.raises(BackupInvalid) as exc:
        verify_archive(archive, tmp_path / "bad")
    assert reason in exc.value.message
    assert not (tmp_path / "bad" / "evil.sh").exists()


def test_a_backup_that_does_not_verify_is_set_aside_and_never_counts(setup: tuple[config.Loaded, Store]) -> None:
    loaded, store = setup
    loaded.config.backup.keep = 1
    good = make_backup(loaded, T0)
    assert good.ok
    # A damaged live database (an orphaned index page) copies faithfully: the proof must refuse it.
    store.conn.execute("CREATE TABLE junk (x TEXT)")
    store.conn.execute("CREATE INDEX junk_x ON junk (x)")
    store.conn.executemany("INSERT INTO junk VALUES (?)", [(str(i),) for i in range(200)])
    store.conn.execute("PRAGMA writable_schema = ON")
    store.conn.execute("DELETE FROM sqlite_master WHERE name = 'junk_x'")
    store.conn.execute("PRAGMA writable_schema = OFF")
    bad = make_backup(loaded, T0 + DAY)
    assert not bad.ok and bad.data["verified"] is False
    assert "fails integrity_check" in bad.data["error"] and "never used" in bad.data["error"]
    assert bad.summary.startswith("backup watchd-20261119T110640Z.tar.gz.failed failed verification:")
    folder = Path(good.data["path"]).parent
    # The good one is still there (keep = 1 prunes only after a verified backup), the bad one beside it.
    assert sorted(p.name for p in folder.glob("watchd-*")) == [
        "watchd-20261118T110640Z.tar.gz",
        "watchd-20261119T110640Z.tar.gz.failed",
    ]
    last = collect(loaded, None, T0 + DAY)["last_backup"]
    assert last["verified"] is False and last["path"].endswith(".failed")
    assert last["last_verified"]["path"] == good.data["path"]
    assert "FAILED verification" in backup_line(last)


def test_keeps_n_verified_backups(setup: tuple[config.Loaded, Store]) -> None:
    loaded, store = setup
    loaded.config.backup.keep = 2
    paths = []
    for day in range(4):
        fill(store, 1000 * (day + 1), 5)
        result = make_backup(loaded, T0 + day * DAY)
        assert result.ok
        paths.append(Path(result.data["path"]))
    assert [p.exists() for p in paths] == [False, False, True, True]
    assert result.data["pruned"] == [paths[1].name]
    twin = make_backup(loaded, T0 + 3 * DAY)  # the same second: a new name, never an overwrite
    assert Path(twin.data["path"]).name == "watchd-20261121T110640Z-1.tar.gz"
    assert not paths[2].exists() and paths[3].exists()
    last = collect(loaded, None, T0 + 3 * DAY)["last_backup"]
    assert last == {
        "at": "2026-11-21T11:06:40Z",
        "verified": True,
        "path": twin.data["path"],
        "size_bytes": Path(twin.data["path"]).stat().st_size,
    }
    assert backup_line(last).startswith("last backup: 2026-11-21T11:06:40Z, verified, ")


WRITER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("PRAGMA synchronous=NORMAL")
n = 0
while True:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO decisions (at, watch, verdict, reason) VALUES (?, 'w', 'matched', 'r')",
                     [(float(n),)] * 20)
    conn.execute("INSERT INTO transitions (handoff_id, at, state) VALUES ('h', ?, 'pending')", (float(n),))
    conn.execute("COMMIT")
    n += 1
"""


def test_a_backup_taken_while_another_process_writes_is_consistent(setup: tuple[config.Loaded, Store]) -> None:
    loaded, store = setup
    fill(store, 10_000, 100_000)  # big enough that counting and copying take a while
    db = db_path(loaded.state_dir)

    def tally() -> tuple[int, int]:
        row = store.conn.execute("SELECT (SELECT COUNT(*) FROM decisions), (SELECT COUNT(*) FROM transitions)")
        return row.fetchone()  # type: ignore[no-any-return]

    # Each writer transaction adds 20 decisions and 1 transition: a snapshot of whole transactions keeps
    # decisions - 20 × transitions where it was.
    decisions, transitions = tally()
    invariant = decisions - 20 * transitions
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)])
    try:
        wait_until(lambda: tally()[1] > transitions + 10, 10, "the writer to get going", step_s=0.005)
        results = [make_backup(loaded, T0 + i) for i in range(3)]
        during = tally()[1]
        wait_until(lambda: tally()[1] > during + 10, 10, "the writer to go on", step_s=0.005)
    finally:
        writer.kill()
        writer.wait()
    for result in results:
        assert result.ok, result.summary  # integrity ok, counts and newest records equal the snapshot's
        snapshot = result.data["tables"]
        assert snapshot["decisions"] - 20 * snapshot["transitions"] == invariant
    counts = [r.data["tables"]["decisions"] for r in results]
    assert decisions < counts[0] < counts[1] < counts[2] < tally()[0]  # taken while the writes went on


# ---- putting one back ------------------------------------------------------------------------


def test_restore_brings_the_state_back_and_keeps_the_replaced_one(setup: tuple[config.Loaded, Store]) -> None:
    loaded, store = setup
    db = db_path(loaded.state_dir)
    archive = Path(make_backup(loaded, T0).data["path"])
    before = dump(db)
    fill(store, 500, 30)  # life goes on after the backup…
    store.conn.execute("DELETE FROM key_state")
    (loaded.base_dir / "watches" / "nightly.toml").write_text(WATCH.replace("nightly", "edited"))
    changed = dump(db)
    store.close()

    done = restore(loaded, archive, watches=False, now=T0 + DAY)
    assert dump(db) == before
    assert db.stat().st_mode & 0o777 == 0o600
    assert done.previous is not None and done.previous.name == "watchd-pre-restore-20261119T110640Z.db"
    assert dump(done.previous) == changed  # kept, with what its -wal held
    assert "edited" in (loaded.base_dir / "watches" / "nightly.toml").read_text()  # not without --watches
    assert done.manifest.stream_seq == 51

    done = restore(loaded, archive, watches=True, now=T0 + 2 * DAY)
    watch_file = loaded.base_dir / "watches" / "nightly.toml"
    assert watch_file.read_text() == WATCH
    kept = watch_file.with_name("nightly.toml.pre-restore-20261120T110640Z")
    assert done.watch_files == [(watch_file, kept)] and "edited" in kept.read_text()
    assert not list(loaded.state_dir.glob(".restore-*"))


def test_restore_refuses_a_damaged_backup_and_changes_nothing(setup: tuple[config.Loaded, Store]) -> None:
    loaded, _ = setup
    archive = Path(make_backup(loaded, T0).data["path"])
    archive.write_bytes(archive.read_bytes()[:-100])
    before = dump(db_path(loaded.state_dir))
    with pytest.raises(BackupInvalid) as exc:
        restore(loaded, archive, watches=True, now=T0)
    assert exc.value.message.startswith(f"{archive.name} did not verify: the archive cannot be read")
    assert exc.value.hint and "nothing was changed" in exc.value.hint
    assert dump(db_path(loaded.state_dir)) == before
    assert not list(loaded.state_dir.glob("watchd-pre-restore-*"))


async def test_backup_and_restore_commands_beside_a_running_daemon(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = daemon_factory(
        {
            "jobs.toml": '[[watch]]\nid = "backup-ok"\nkind = "match"\n'
            'on = { subject = "watchd.job.backup.done", where = "data.verified" }\n'
            'then = ["notify.console"]\n'
        }
    )
    await d.start()
    r = await d.cli("backup", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and report["published"] == "watchd.job.backup.done"
    archive = report["data"]["path"]
    # The running daemon took the outcome like any event: the watch on it fired.
    await until(lambda: d.handoffs("backup-ok"), 10, "the backup-ok handoff")

    r = await d.cli("restore", archive, "--yes")
    assert r.returncode == 1
    assert f"watchd (pid {d.pid}) is running" in r.stderr and "stop it first: systemctl --user stop watchd" in r.stderr
    assert "Traceback" not in r.stderr and not list(d.state_dir.glob("watchd-pre-restore-*"))

    await d.stop()
    runner = CliRunner()
    res = runner.invoke(cli, ["restore", archive, "--config", str(d.config_path)])
    assert res.exit_code == 1 and "add --yes to confirm" in res.stderr  # no terminal to confirm on
    res = runner.invoke(cli, ["restore", archive, "--yes", "--config", str(d.config_path)])
    assert res.exit_code == 0, res.output
    assert "integrity ok" in res.stdout and f"restored the database to {d.db_path}" in res.stdout
    assert len(list(d.state_dir.glob("watchd-pre-restore-*.db"))) == 1
    res = runner.invoke(cli, ["status", "--config", str(d.config_path)])
    made = report["data"]["created_at"][:19].replace("T", " ")  # status tells it in the zone (UTC here)
    assert res.exit_code == 0 and f"last backup: {made} UTC" in res.stdout
    assert ", verified, " in res.stdout


def test_restore_while_the_state_dir_is_locked_is_refused(setup: tuple[config.Loaded, Store]) -> None:
    from watchd.statelock import lock_state_dir

    loaded, _ = setup
    archive = Path(make_backup(loaded, T0).data["path"])
    (loaded.state_dir / "watchd.pid").write_text("4242")
    fd = lock_state_dir(loaded.state_dir, loaded.state_dir / "watchd.pid")
    try:
        with pytest.raises(DaemonRunning) as exc:
            restore(loaded, archive, watches=False, now=T0)
        assert "pid 4242" in exc.value.message and "the backup verified" in exc.value.message
    finally:
        os.close(fd)


def test_backup_with_no_state_is_a_clear_failure(tmp_path: Path) -> None:
    loaded = config.load(write_config(tmp_path))
    result = make_backup(loaded, time.time())
    assert not result.ok
    assert result.summary == f"backup failed: no watchd state at {db_path(loaded.state_dir)} to back up"
