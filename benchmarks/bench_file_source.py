"""The file source under a burst: N files created at once in a watched folder, all announced once.

The source runs as the daemon runs it (watchfiles, snapshot, Publisher: JetStream ack, then the
position), on an embedded nats-server. The floor in the same run: the same number of events
published one at a time with a wait for each ack, as the Publisher does, without any files.

Prints: time from the first file written to the last event stored, events/s, the ratio to the
floor, and whether every file was announced exactly once.

Usage: python benchmarks/bench_file_source.py [--files 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

import msgspec

from watchd import bus
from watchd.jspublish import JetStreamPublisher
from watchd.model import make_event
from watchd.sources.base import SourceContext
from watchd.sources.files import FileSource
from watchd.sources.health import SourceHealth
from watchd.sources.publish import Publisher
from watchd.sources.settings import FileSettings
from watchd.sources.state import PositionStore


async def stored(js: bus.JetStreamContext, subject: str) -> int:
    info = await js.stream_info(bus.EVENTS_STREAM, subjects_filter=bus.EVENTS_PREFIX + subject)
    return int((info.state.subjects or {}).get(bus.EVENTS_PREFIX + subject, 0))


async def main(files: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = bus.EmbeddedNats(root / "nats", listen="127.0.0.1:0")
        await server.start()
        nc = await bus.connect(server.url)
        js = nc.jetstream()
        await bus.ensure_streams(js)
        try:
            # The floor: N events, one ack awaited at a time.
            start = time.perf_counter()
            for i in range(files):
                await bus.publish_event(js, make_event("bench.floor", {"i": i}, id=f"floor-{i}"))
            floor_s = time.perf_counter() - start

            drop = root / "drop"
            drop.mkdir()
            settings = FileSettings(paths=[str(drop / "*.dat")], subject="bench.files", debounce="200ms")
            health = SourceHealth("burst", "file")
            positions = PositionStore(root / "sources")
            ctx = SourceContext(
                "burst",
                root,
                {},
                Publisher("burst", JetStreamPublisher(nc).publish_events, positions, health, time.time),
                health,
                time.time,
            )
            task = asyncio.create_task(FileSource("burst", settings).run(ctx))
            while not (root / "sources" / "burst.json").exists():
                await asyncio.sleep(0.05)
            start = time.perf_counter()

            def burst() -> float:  # on a thread: the source works while the files appear
                for i in range(files):
                    (drop / f"f{i:05d}.dat").write_bytes(b"x" * (i % 100))
                return time.perf_counter() - start

            writer = asyncio.create_task(asyncio.to_thread(burst))
            while await stored(js, "bench.files") < files:
                await asyncio.sleep(0.05)
                if time.perf_counter() - start > 300:
                    raise TimeoutError(f"only {await stored(js, 'bench.files')} of {files} announced")
            total_s = time.perf_counter() - start
            written_s = await writer
            await asyncio.sleep(1.0)  # anything announced twice would arrive now
            ctx.stop.set()
            await asyncio.wait_for(task, 10)

            paths: Counter[str] = Counter()
            last = (await js.stream_info(bus.EVENTS_STREAM)).state.last_seq
            for seq in range(1, last + 1):
                msg = await js.get_msg(bus.EVENTS_STREAM, seq)
                if msg.subject == bus.EVENTS_PREFIX + "bench.files":
                    paths[msgspec.json.decode(msg.data or b"{}")["data"]["path"]] += 1
            once = len(paths) == files and set(paths.values()) == {1}
            print(f"files created: {files} in {written_s:.2f}s")
            print(f"all announced after {total_s:.2f}s: {files / total_s:,.0f} events/s")
            print(f"floor (publish + ack one at a time, no files): {floor_s:.2f}s, {files / floor_s:,.0f} events/s")
            print(f"ratio file source / floor: {floor_s / total_s:.2f}")
            print(f"every file announced exactly once: {once} ({len(paths)} paths, {sum(paths.values())} events)")
        finally:
            await nc.close()
            await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    asyncio.run(main(parser.parse_args().files))
