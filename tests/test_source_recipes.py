"""The README's source recipes, taken from the README as written, run end to end in the daemon:
a web page changes (poll), a new file in a folder (file). Only the places change: the URL points
at a local page, the folder at a temporary one, and the targets at the console."""

from __future__ import annotations

from collections.abc import Callable

from support.inprocess import InProcessDaemon
from support.readme import console_targets, recipe
from support.sites import FakeSite
from support.waiting import until


async def test_recipe_a_web_page_changes(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    source, watches = recipe("a web page changes (a price)")
    async with FakeSite('<p>Kettle <span class="price">24,90 €</span></p>') as site:
        source = source.replace("https://shop.example/kettle", site.page_url)
        d = daemon_factory({"shop.toml": console_targets(watches)}, extra_config=source)
        await d.start()
        await until(lambda: len(site.requests) == 1, what="the first poll")
        site.set('<p>Kettle <span class="price">19,90 €</span></p>')
        await d.advance(30 * 60)
        await until(lambda: "Kettle: 24,90 € → 19,90 €" in d.printed(), what="the price change handed off")
        site.fail(502, times=3)
        for _ in range(3):
            polls = len(site.requests)
            await d.advance(30 * 60)
            await until(lambda n=polls: len(site.requests) > n, what="the next poll")
        await until(lambda: "failed three polls in a row" in d.printed(), what="the outage handed off")
        assert d.printed().count("failed three polls") == 1  # the first and second failures match nothing


async def test_recipe_a_new_file_in_a_folder(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    source, watches = recipe("a new file in a folder")
    d = daemon_factory({"scans.toml": console_targets(watches)}, extra_config="")
    scans = d.root / "Scans"
    scans.mkdir()
    d.write_config(source.replace("~/Scans", str(scans)))
    (scans / "before.pdf").write_bytes(b"old")
    await d.start()
    await until(lambda: (d.state_dir / "sources" / "scans.json").exists(), what="the first scan")
    (scans / "invoice.pdf").write_bytes(b"%PDF-1.7 invoice")
    (scans / "notes.txt").write_text("not a pdf")
    await until(lambda: "New scan" in d.printed(), what="the new scan handed off")
    assert f"New scan {scans / 'invoice.pdf'} (16 bytes)" in d.printed()
    assert "before.pdf" not in d.printed() and "notes.txt" not in d.printed()
