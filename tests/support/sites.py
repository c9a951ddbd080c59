"""A web page on loopback whose content a test changes: what the poll source watches.

`FakeSite` is a real aiohttp server (see fakes.FakeServer, whose scripting it keeps: `fail`,
`stall`…). It serves `page` at `path` with an ETag (and answers a matching If-None-Match with 304),
unless `etag` is turned off, in which case it serves Last-Modified only when `last_modified` is set.
"""

from __future__ import annotations

import hashlib
from typing import Any

from support.fakes import FakeServer, Reply, Request


class FakeSite(FakeServer):
    default_path = "/page"

    def __init__(self, page: str = "", content_type: str = "text/html", *, etag: bool = True) -> None:
        super().__init__()
        self.page = page
        self.content_type = content_type
        self.etag = etag
        self.not_modified = 0  # 304s answered

    def set(self, page: str) -> None:
        self.page = page

    @property
    def page_url(self) -> str:
        return self.url + self.default_path

    def current_etag(self) -> str:
        return '"' + hashlib.sha256(self.page.encode()).hexdigest()[:16] + '"'

    async def respond(self, req: Request) -> Reply:
        headers: dict[str, Any] = {"Content-Type": self.content_type}
        if self.etag:
            tag = self.current_etag()
            if req.headers.get("If-None-Match") == tag:
                self.not_modified += 1
                return Reply(304, text="", headers={"ETag": tag})
            headers["ETag"] = tag
        return Reply(200, text=self.page, headers=headers)
