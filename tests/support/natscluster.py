"""A real NATS cluster for tests: three nats-server processes on loopback ports, routed to each other,
with clustered JetStream (R3 streams survive the loss of one node). Nodes can be killed (-9) and
started again on the same ports and store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from pathlib import Path

import nats.errors
import nats.js.errors

from support.project import free_port
from watchd.bus import nats_server_binary
from watchd.link import Connection


class NatsCluster:
    def __init__(self, root: Path, size: int = 3, name: str = "watchd-test") -> None:
        self.root = root
        self.name = name
        self.client_ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.leaf_port = free_port()  # node 0 accepts leaf nodes here
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def url(self) -> str:
        """Every node, comma-separated: a client connects to any and fails over to the others."""
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.client_ports)

    def node_of(self, connected_url: str | None) -> int:
        """Which node a client's `connected_url` is."""
        return next(i for i, p in enumerate(self.client_ports) if f":{p}" in str(connected_url))

    def _config(self, i: int) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        q = json.dumps
        routes = ", ".join(q(f"nats-route://127.0.0.1:{p}") for j, p in enumerate(self.route_ports) if j != i)
        store = self.root / f"n{i}"
        store.mkdir(parents=True, exist_ok=True)
        path = self.root / f"n{i}.conf"
        path.write_text(
            f"server_name: {q(f'n{i}')}\n"
            f"listen: {q(f'127.0.0.1:{self.client_ports[i]}')}\n"
            f"jetstream {{ store_dir: {q(str(store))} }}\n"
            f"cluster {{ name: {q(self.name)}, listen: {q(f'127.0.0.1:{self.route_ports[i]}')}, routes: [{routes}] }}\n"
            + (f"leafnodes {{ listen: {q(f'127.0.0.1:{self.leaf_port}')} }}\n" if i == 0 else "")
        )
        return path

    def start_node(self, i: int) -> None:
        path = self._config(i)
        log = open(self.root / f"n{i}.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.procs[i] = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(path)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()

    async def start(self, timeout_s: float = 30.0) -> NatsCluster:
        for i in range(len(self.procs)):
            self.start_node(i)
        await self.ready(timeout_s)
        return self

    async def ready(self, timeout_s: float = 30.0) -> None:
        """Until clustered JetStream answers (its meta leader is elected) on every running node and,
        when every node runs, can place a stream on all of them: a meta leader answers before it has
        heard of every peer, and a stream of three replicas asked for then fails with "no suitable
        peers for placement"."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        running = [i for i, proc in enumerate(self.procs) if proc is not None and proc.poll() is None]
        for i in running:
            while True:
                try:
                    nc = Connection()
                    await nc.open(servers=[f"nats://127.0.0.1:{self.client_ports[i]}"], connect_timeout=1)
                    try:
                        js = nc.jetstream()
                        await js.account_info()
                        if i == running[-1] and len(running) == len(self.procs):
                            await js.add_stream(name="ready-probe", subjects=["ready.probe"], num_replicas=len(running))
                            await js.delete_stream("ready-probe")
                        break
                    finally:
                        await nc.close()
                except (OSError, TimeoutError, nats.errors.Error, nats.js.errors.Error):
                    if loop.time() > deadline:
                        raise AssertionError(f"NATS node n{i} not ready within {timeout_s:g}s") from None
                    await asyncio.sleep(0.2)

    def kill9(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.procs[i] = None

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


class LeafNode:
    """A nats-server of a machine of its own (no JetStream) joined to a cluster as a leaf node: what it
    is published locally reaches the cluster's streams through the leaf connection."""

    def __init__(self, root: Path, hub_leaf_port: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = root / "leaf.conf"
        q = json.dumps
        self.conf.write_text(
            f"server_name: leaf\nlisten: {q(f'127.0.0.1:{self.port}')}\n"
            f"leafnodes {{ remotes = [ {{ url: {q(f'nats-leaf://127.0.0.1:{hub_leaf_port}')} }} ] }}\n"
        )
        self.log = root / "leaf.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> LeafNode:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(nats_server_binary()), "-c", str(self.conf)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
