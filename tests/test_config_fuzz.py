"""Random configs and watch files never crash `validate`, reload or `run`, and whatever `validate`
accepts runs (tests/support/configgen.py makes them: mostly plausible, often wrong).

- validate: `config.load` returns, or raises ConfigError whose every problem is `file:line:col:
  message`; `watchd validate` exits 0 or 1 with no traceback.
- run: an accepted config starts the daemon (or, with an unset env: secret that validate warned
  about, `run` refuses with one clear line), takes events and a few minutes of its clock with no
  task failing, answers `status --json`, and stops cleanly.
- reload: a running daemon given any generated config and watch file either reloads or keeps its
  last good definitions, and stays healthy.

The CI run is small; for a long one: WATCHD_FUZZ_EXAMPLES=2000 pytest tests/test_config_fuzz.py
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support import configgen, tomlgen
from support.cli import run_cli
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd import config
from watchd.errors import ConfigError, WatchdError
from watchd.model import make_event

EXAMPLES = int(os.environ.get("WATCHD_FUZZ_EXAMPLES", "200"))
RUNS = max(5, EXAMPLES // 40)  # a daemon per example: fewer of those
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROBLEM = re.compile(r"^[^:\n]+:\d+:\d+: \S")

# What a run needs fixed: where its state and listeners are (ports are set per daemon).
FIXED: dict[str, Any] = {"watches": ["watches/"], "state_dir": "state", "nats": {"url": "embedded"}}


@pytest.fixture(autouse=True)
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(configgen.SET_SECRET_ENV, "fuzz-secret-value")
    monkeypatch.delenv(configgen.UNSET_SECRET_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def write(root: Path, cfg: dict[str, Any], watches: dict[str, Any]) -> Path:
    (root / "watches").mkdir(parents=True, exist_ok=True)
    (root / "watches" / "w.toml").write_text(tomlgen.dumps(watches))
    path = root / "config.toml"
    path.write_text(tomlgen.dumps(cfg))
    return path


def load_or_problems(path: Path) -> config.Loaded | list[str]:
    """validate's verdict: the loaded config, or its problems (each checked to be file:line:col)."""
    try:
        return config.load(path)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError without problems"
        for problem in exc.problems:
            assert PROBLEM.match(problem), problem
            assert "Traceback" not in problem
        return exc.problems


@FUZZ
@given(configgen.project({**FIXED, "nats": {"url": "embedded", "listen": "127.0.0.1:4222"}}))
def test_validate_never_crashes(generated: tuple[dict[str, Any], dict[str, Any]]) -> None:
    cfg, watches = generated
    with tempfile.TemporaryDirectory() as tmp:
        load_or_problems(write(Path(tmp), cfg, watches))


@settings(FUZZ, max_examples=max(10, EXAMPLES // 10))
@given(configgen.project({**FIXED, "nats": {"url": "embedded", "listen": "127.0.0.1:4222"}}))
def test_the_validate_command_answers_every_config_with_a_verdict(
    generated: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    cfg, watches = generated
    with tempfile.TemporaryDirectory() as tmp:
        r = run_cli("validate", "--config", str(write(Path(tmp), cfg, watches)))
        assert r.returncode in (0, 1), r
        assert "Traceback" not in r.stderr + r.stdout
        if r.returncode == 1:
            assert r.stderr.splitlines()[-1].startswith("hint: ") or "error:" in r.stderr, r.stderr


def test_the_generators_make_accepted_configs_too() -> None:
    """The fuzz is only worth something if a fair share of what it makes is accepted (and so run)."""
    accepted = 0

    @settings(FUZZ, max_examples=100, database=None)
    @given(configgen.project(FIXED))
    def count(generated: tuple[dict[str, Any], dict[str, Any]]) -> None:
        nonlocal accepted
        with tempfile.TemporaryDirectory() as tmp:
            accepted += isinstance(load_or_problems(write(Path(tmp), *generated)), config.Loaded)

    count()
    assert accepted >= 10, accepted


async def run_one(root: Path, cfg: dict[str, Any], watches: dict[str, Any], reloads: list[Any]) -> None:
    d = InProcessDaemon(root)
    fixed = {"nats": {"listen": f"127.0.0.1:{d.nats_port}"}, "http": {"listen": f"127.0.0.1:{d.http_port}"}}
    cfg = {**cfg, "nats": {**cfg.get("nats", {}), **fixed["nats"]}, "http": {**cfg.get("http", {}), **fixed["http"]}}
    path = write(root, cfg, watches)
    verdict = load_or_problems(path)
    assert isinstance(verdict, config.Loaded), verdict  # the ports it runs on change nothing
    try:
        try:
            config.require_env_secrets(verdict.config)  # what `watchd run` checks before starting
        except WatchdError as exc:
            assert any("is not set" in w for w in verdict.warnings), "run refused what validate did not warn about"
            assert "\n" not in exc.message
            return
        await d.start()
        await d.publish(make_event("a.b", {"x": 1, "size": 20}), make_event("x", {"host": "h1"}))
        for _ in range(3):
            await d.advance(60)
        await until(lambda: d.running.last_seq >= 2, what="the events to be decided")
        failed = {name: st.last_error for name, st in d.running.upkeep.stats.items() if st.failures}
        assert failed == {}, failed
        status = await d.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        json.loads(status.stdout)
        for watch in verdict.watches[:2]:
            explained = await d.cli("explain", watch.watch.id, "--json")
            assert explained.returncode == 0, explained.stderr
            assert "fired" in json.loads(explained.stdout)
        for new_cfg, new_watches in reloads:
            new_cfg = {**new_cfg, **{k: cfg[k] for k in ("nats", "http", "state_dir", "watches")}}
            write(root, new_cfg, new_watches)
            ok = await d.running.reload()
            assert ok == isinstance(load_or_problems(path), config.Loaded)
            assert d.running.health()["engine"], d.running.health()
        assert "Traceback" not in d.logged(), d.logged()
        await d.stop()
    finally:
        await d.cleanup()


@settings(FUZZ, max_examples=RUNS)
@given(configgen.project(FIXED), st.lists(configgen.project(FIXED), max_size=2))
def test_what_validate_accepts_runs_and_reloads(
    generated: tuple[dict[str, Any], dict[str, Any]], reloads: list[tuple[dict[str, Any], dict[str, Any]]]
) -> None:
    cfg, watches = generated
    with tempfile.TemporaryDirectory() as tmp:
        # Only what validate accepts is run: the others cost a daemon start for nothing.
        assume(isinstance(load_or_problems(write(Path(tmp), cfg, watches)), config.Loaded))
        asyncio.run(run_one(Path(tmp), cfg, watches, reloads))
