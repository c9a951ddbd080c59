"""Shadow mode end to end with the real daemon (in the test's event loop): would-fires are recorded
(status counts them per day, explain names them) and hand nothing off; promoting the watch to live is
a one-line change that hands off from then on and never replays the old would-fires."""

from __future__ import annotations

import json
from collections.abc import Callable

from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.model import make_event

SHADOW = """
[[watch]]
id = "disk-full"
kind = "match"
mode = "shadow"
on = { subject = "disk.usage", where = "data.percent >= 90" }
then = ["notify.console"]
"""


async def test_shadow_records_would_fires_then_promotion_hands_off_only_new_fires(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"disk.toml": SHADOW}).start()
    await d.publish(*(make_event("disk.usage", {"percent": p}) for p in (95, 50, 97, 99)))
    await until(lambda: len(d.decisions("disk-full", "would_fire")) == 3, what="three would-fires")
    assert d.handoffs("disk-full") == []

    status = json.loads((await d.cli("status", "--json")).stdout)
    (w,) = [w for w in status["watches"] if not w["file"].startswith("<built-in>")]  # the file's one watch
    assert (w["mode"], w["would_fire_today"]) == ("shadow", 3)
    assert "shadow (3 today)" in (await d.cli("status")).stdout
    verdict = json.loads((await d.cli("explain", "disk-full", "--json")).stdout)["verdict"]
    assert verdict.startswith("would have fired 3 times since ") and "(shadow mode: no handoffs)" in verdict

    # promotion: one line changes; the reload hands off nothing for the past
    d.write_watch("disk.toml", SHADOW.replace('mode = "shadow"\n', ""))
    await until(lambda: "reloaded: 1 watches" in d.logged(), what="reload")
    fresh = make_event("disk.usage", {"percent": 91})
    await d.publish(fresh)
    (h,) = await until(lambda: d.handoffs("disk-full"), what="the first live fire")
    assert [e["id"] for e in h["evidence"]] == [fresh.id]
    assert h["watch_version"] == 2
    await d.publish(make_event("disk.usage", {"percent": 10}))  # a miss after it: everything before is processed
    await until(
        lambda: (
            d.decisions("disk-full", "where_false")[-1:]
            and d.decisions("disk-full", "where_false")[-1]["reason"].endswith("(data.percent = 10)")
        ),
        what="the later miss",
    )
    assert len(d.handoffs("disk-full")) == 1
    status = json.loads((await d.cli("status", "--json")).stdout)
    assert (status["watches"][0]["mode"], status["watches"][0]["would_fire_today"]) == ("live", 3)
    await d.stop()
