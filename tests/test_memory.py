"""What a running daemon loads: only what its config uses. A test of imports (as `python -X
importtime` of the real `watchd run` reports them), not of megabytes: the CEL binding only for an
expression outside the compiled subset, the Anthropic SDK only for an anthropic agent.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.processes import DaemonProc
from support.waiting import wait_until

from watchd.model import make_event

WATCH = """
[[watch]]
id = "hot"
kind = "match"
on = {{ subject = "disk.usage", where = '{where}', key = "data.host" }}
then = ["notify.console"]
"""


def _loaded(d: DaemonProc) -> set[str]:
    return {
        line.rsplit("|", 1)[1].strip()
        for line in d.stderr().splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize(
    ("where", "binding"),
    [('data.percent > 95 && data.host.startsWith("nas")', False), ("data.percent + 1 > 96", True)],
    ids=["compiled where", "where outside the subset"],
)
def test_a_daemon_loads_what_its_config_uses(
    process_factory: Callable[..., DaemonProc], where: str, binding: bool
) -> None:
    d = process_factory({"w.toml": WATCH.format(where=where)}, env={"PYTHONPROFILEIMPORTTIME": "1"}).start()
    d.publish(make_event("disk.usage", {"percent": 97, "host": "nas1"}))
    wait_until(lambda: d.decisions("hot", "fired"), 30, "the watch fired")
    assert d.term() == 0
    loaded = _loaded(d)
    assert "watchd.engine" in loaded  # the import report is there at all
    assert "anthropic" not in loaded
    assert "jinja2" not in loaded  # the dashboard's pages are loaded by the first request to one
    # The console notifier wrote its line to a pipe, without rich (which the CEL binding imports).
    assert ("rich" in loaded) is binding
    assert ("cel" in loaded) is binding


def test_an_idle_daemon_loads_no_page_no_console_and_no_binding(process_factory: Callable[..., DaemonProc]) -> None:
    """Started and left alone: the dashboard's pages, rich (the console notifier's and the command
    line's printing), prometheus_client (/metrics) and the CEL binding are loaded by what first
    uses them, and nothing did; the built-in schedules (every day at one time) are walked without
    croniter."""
    where = 'data.percent > 95 && data.host.startsWith("nas")'
    d = process_factory({"w.toml": WATCH.format(where=where)}, env={"PYTHONPROFILEIMPORTTIME": "1"}).start()
    assert d.term() == 0
    loaded = _loaded(d)
    assert "watchd.engine" in loaded
    heavy = {"jinja2", "rich", "cel", "anthropic", "watchd.web.app", "croniter", "prometheus_client"}
    assert not loaded & heavy
