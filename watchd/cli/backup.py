"""`watchd backup` and `watchd restore`: the backup job run now, and a backup put back."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from watchd import config
from watchd.cli.common import CONFIG_OPTION, dump_json, err, fail, out, progress_bar, publish_events
from watchd.config import Loaded
from watchd.errors import WatchdError
from watchd.model import own_event

if TYPE_CHECKING:
    from watchd.jobs import JobResult
    from watchd.jobs.meter import Progress

# The job, the store and tarfile are imported by the commands that use them: every other command
# starts without them.


@click.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help='{"ok", "summary", "data", "published"}; data is the event\'s')
def backup(config_path: str | None, as_json: bool) -> None:
    """Back up the state, the watch files and the config (secrets redacted) now, and prove it restores.

    The same job a `job = "backup"` schedule runs: the archive is read back, integrity-checked and
    its row counts compared before it counts; [backup] keep verified ones are kept. Its outcome is
    published as watchd.job.backup.done or watchd.job.backup.failed when NATS is up. Exit 1 on failure.

    \b
    Examples:
      watchd backup
      watchd backup --json | jq -r .data.path
    """
    loaded = _load_without_watches(config_path)
    with progress_bar("backing up", quiet=as_json, unit="bytes") as progress:
        result, published, note = asyncio.run(_run_backup(loaded, progress))
    if as_json:
        dump_json({"ok": result.ok, "summary": result.summary, "data": result.data, "published": published})
        if not result.ok:
            sys.exit(1)
        return
    if not result.ok:
        if note:
            err.print(Text(f"note: {note}", style="dim"))
        fail(result.summary, "the archive that failed is kept aside as …tar.gz.failed; older backups are untouched")
    out.print(Text(result.summary))
    out.print(Text(f"  {result.data['path']}"))
    if result.data["pruned"]:
        out.print(Text(f"  removed {len(result.data['pruned'])} older (keep = {loaded.config.backup.keep})"))
    if note:
        err.print(Text(f"note: {note}", style="dim"))


def _load_without_watches(config_path: str | None) -> Loaded:
    """The config alone: a watch file with a mistake must not stop a backup (it is backed up as it
    is) nor a restore (which may be how it gets fixed)."""
    loaded = config.load(config.find_config(config_path), watches=False)
    loaded.watch_files = config.watch_files_of(loaded.config, loaded.base_dir)
    return loaded


async def _run_backup(loaded: Loaded, progress: Progress | None) -> tuple[JobResult, str | None, str | None]:
    """Run the job as the scheduler does (with a progress bar on a terminal), then publish its
    outcome; a NATS that is down (watchd not running, with the embedded server) only costs the
    event, never the backup."""
    from watchd.jobs.backup import make_backup
    from watchd.store import Store, db_path

    db = db_path(loaded.state_dir)
    if not db.exists():
        hint = "has watchd run with this config? check state_dir"
        raise WatchdError(f"no watchd state at {db} to back up", hint=hint)

    async def emit(subject: str, data: dict[str, Any]) -> None:
        await publish_events(loaded, [own_event(subject, data)], role="admin")  # watchd.job.backup.*

    store = await Store.open(db)  # brings the schema up to date first, as the daemon would
    try:
        result = await asyncio.to_thread(make_backup, loaded, time.time(), progress)  # the job's own work
    finally:
        store.close()
    subject = f"watchd.job.backup.{'done' if result.ok else 'failed'}"
    try:
        await emit(subject, {"summary": result.summary, **result.data})  # as the scheduler publishes it
    except WatchdError as exc:
        return result, None, f"{subject} not published: {exc.message}"
    return result, subject, None


@click.command()
@CONFIG_OPTION
@click.argument("file", metavar="FILE")
@click.option(
    "--watches",
    "with_watches",
    is_flag=True,
    help="also put the backup's watch files back where they were (replaced ones are kept)",
)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def restore(config_path: str | None, file: str, with_watches: bool, yes: bool) -> None:
    """Put a backup back: prove FILE, keep the current database aside, and move the backup's in place.

    Refuses while watchd runs on the same state_dir. Watch files are restored only with --watches
    (they may have been edited since); the config in a backup has its secrets redacted and is never
    restored, it is there to read.

    \b
    Example:
      systemctl --user stop watchd
      watchd restore ~/.local/state/watchd/backups/watchd-20261122T013000Z.tar.gz
      systemctl --user start watchd
    """
    from watchd.jobs import backup as backup_job
    from watchd.jobs import restore as restoring

    if not yes and not sys.stdin.isatty():  # first: a script must learn how to confirm, not wait for a prompt
        fail(
            "restore replaces watchd's database and needs confirmation",
            hint="add --yes to confirm (no terminal to ask on)",
        )
    loaded = _load_without_watches(config_path)
    archive = Path(file).expanduser()
    if not archive.is_file():
        hint = f"backups are kept in {backup_job.backup_dir(loaded)}"
        raise WatchdError(f"backup file {file} not found", hint=hint)
    manifest = backup_job.read_manifest(archive)
    if not yes:
        prompt = f"Replace the state in {loaded.state_dir.absolute()} with the backup of {manifest.created_at}?"
        click.confirm(prompt, abort=True)
    with progress_bar("verifying the backup", unit="bytes") as progress:
        done = restoring.restore(loaded, archive, watches=with_watches, now=time.time(), progress=progress)
    m = done.manifest
    rows = sum(t.rows for t in m.tables.values())
    out.print(
        Text(
            f"verified {archive.name}: made {m.created_at} by watchd {m.watchd_version}, "
            f"{rows} rows in {len(m.tables)} tables, integrity ok, checksums match"
        )
    )
    if done.previous is not None:
        out.print(Text(f"kept the replaced database as {done.previous}"))
    out.print(Text(f"restored the database to {done.db}"))
    for target, kept in done.watch_files:
        out.print(Text(f"restored {target}" + (f" (previous kept as {kept.name})" if kept else "")))
    watch_members = [x for x in m.members if x.name.startswith(("files/", "external/"))]
    if watch_members and not with_watches:
        out.print(Text(f"the backup's {len(watch_members)} watch files were not restored (add --watches for that)"))
    out.print(
        Text(
            f"start watchd again: it resumes the event stream after seq {m.stream_seq}, "
            "replaying the events the stream still holds since the backup"
        )
    )
