"""Definition history: what keeping every version costs a (re)load.

A project of N watches (default 1,000) in F watch files (default 20), recorded the way the daemon
does on a (re)load (`history.record` after the versions are assigned), on a real state file:

1. first load, no git repository: every watch's block read from its file and stored;
2. first load, the files in a git repository: the same, plus `git log -1` and `git status` per file;
3. a reload where one watch changed (its version bumped): only that one is recorded;
4. a reload where nothing changed: one query, nothing recorded.

Each is compared with the load itself (`config.load` of the same project) as a ratio, in one run.

Usage: python benchmarks/bench_history.py [--watches 1000] [--files 20]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

from watchd import config, history
from watchd.store import Store, db_path

WATCH = """[[watch]]
id = "w{i}"
kind = "match"
on = {{ subject = "bench.{i}", where = "data.n > {n}" }}
cooldown = "5m"
then = ["notify.console"]

"""


def project(root: Path, watches: int, files: int, n: int = 0) -> Path:
    (root / "watches").mkdir(parents=True, exist_ok=True)
    per = watches // files
    for f in range(files):
        text = "".join(WATCH.format(i=f * per + j, n=n if f * per + j == 0 else 0) for j in range(per))
        (root / "watches" / f"f{f}.toml").write_text(text)
    cfg = root / "config.toml"
    cfg.write_text('state_dir = "state"\ntimezone = "UTC"\n[notify.console]\ntype = "console"\n')
    return cfg


async def record(loaded: config.Loaded, store: Store, versions: dict[str, int]) -> float:
    started = time.perf_counter()
    await history.record(store, "watch", history.watches(loaded.watches, versions), time.time())
    return time.perf_counter() - started


async def scenario(root: Path, watches: int, files: int, use_git: bool) -> dict[str, float]:
    cfg = project(root, watches, files)
    if use_git:
        for args in (["init", "-q"], ["add", "."], ["-c", "user.name=B", "-c", "user.email=b@x", "commit", "-qm", "x"]):
            subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)
    started = time.perf_counter()
    loaded = config.load(cfg)
    load_s = time.perf_counter() - started
    store = Store(db_path(loaded.state_dir))
    try:
        versions = {d.watch.id: 1 for d in loaded.watches}
        first = await record(loaded, store, versions)
        project(root, watches, files, n=1)  # one watch changed
        loaded = config.load(cfg)
        one = await record(loaded, store, {**versions, "w0": 2})
        same = await record(loaded, store, {**versions, "w0": 2})
    finally:
        store.close()
    return {"load": load_s, "first": first, "one": one, "same": same}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--watches", type=int, default=1000)
    parser.add_argument("--files", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain = await scenario(Path(tmp) / "plain", args.watches, args.files, use_git=False)
        git = await scenario(Path(tmp) / "git", args.watches, args.files, use_git=True)
    print(f"{args.watches} watches in {args.files} files; config.load takes {plain['load'] * 1000:.1f} ms")
    for name, r in (("no git", plain), ("git repository", git)):
        print(
            f"{name:>15}: first load {r['first'] * 1000:7.1f} ms ({r['first'] / r['load']:.2f}x the load), "
            f"one watch changed {r['one'] * 1000:6.1f} ms ({r['one'] / r['load']:.3f}x), "
            f"nothing changed {r['same'] * 1000:5.2f} ms ({r['same'] / r['load']:.4f}x)"
        )


if __name__ == "__main__":
    asyncio.run(main())
