"""Firecrawl's scrape API (``POST /v2/scrape``) as its adapter uses it, for tests over real HTTP.

Answers ``{success: true, data: {markdown, metadata}}``; errors are ``{success: false, error}``.
Pages a test registers with :meth:`FirecrawlFake.page` are served as they are; any other URL gets a
generated page.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from http_fake import FakeProvider

API_KEY = "fc-test"
_ERRORS = {
    400: "Bad Request",
    401: "Unauthorized: Invalid token",
    402: "Payment required to access this resource.",
    408: "Request timed out",
    429: "Request rate limit exceeded. Please wait and try again later.",
    500: "An unexpected error occurred. Please contact help@firecrawl.com for help.",
}


class FirecrawlFake(FakeProvider):
    route = "/v2/scrape"

    def __init__(self, api_key: str) -> None:
        super().__init__(api_key)
        self._pages: dict[str, dict[str, Any]] = {}

    def page(
        self, url: str, *, title: str, markdown: str, status: int = 200, final_url: str | None = None
    ) -> None:
        self._pages[url] = {
            "title": title,
            "markdown": markdown,
            "statusCode": status,
            "url": final_url or url,
        }

    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def error_body(self, status: int, message: str | None = None) -> Any:
        return {"success": False, "error": message or _ERRORS.get(status, f"HTTP {status}")}

    async def answer(self, request: web.Request, body: Any) -> web.StreamResponse:
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            return web.json_response(
                {
                    "success": False,
                    "error": "Bad Request",
                    "details": [{"path": ["url"], "message": "Required"}],
                },
                status=400,
            )
        url = body["url"]
        page = self._pages.get(url) or {
            "title": "Example Domain",
            "markdown": "# Example Domain\n\nThis domain is for use in documentation examples.",
            "statusCode": 200,
            "url": url,
        }
        data: dict[str, Any] = {
            "markdown": page["markdown"],
            "metadata": {
                "title": page["title"],
                "language": "en",
                "sourceURL": url,
                "url": page["url"],
                "statusCode": page["statusCode"],
                "contentType": "text/html; charset=utf-8",
                "scrapeId": str(uuid.uuid4()),
                "creditsUsed": 1,
            },
        }
        if "html" in body.get("formats", []):
            data["html"] = f"<h1>{page['title']}</h1>"
        if "links" in body.get("formats", []):
            data["links"] = ["https://www.iana.org/domains/example"]
        return web.json_response({"success": True, "data": data})
