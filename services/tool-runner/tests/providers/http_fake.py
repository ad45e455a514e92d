"""A provider fake for adapter tests: a real aiohttp server on a free port, with faults a test injects.

Each provider's fake (``elevenlabs_fake``, ``perplexity_fake``, ``firecrawl_fake``) subclasses
:class:`FakeProvider` with the provider's route, authentication, answers and error bodies; this module
holds what they share: serving, recording what arrived, and answering with the next queued fault.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from omni_testkit import serving_app


@dataclass(frozen=True, slots=True)
class Fault:
    """How to answer the next request instead of normally.

    ``status`` None answers normally (after ``delay_s``: a slow provider). ``body`` None sends the
    provider's own error body for ``status``; bytes or a string are sent as they are (malformed
    answers); anything else is sent as JSON.
    """

    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Recorded:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any


class FakeProvider:
    """One provider's HTTP API, as far as its adapter uses it."""

    route: str = "/"
    methods: str = "POST"  # what the route answers ("*": every method)

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.base_url = ""  # set while served
        self.requests: list[Recorded] = []
        self._faults: list[Fault] = []

    def fail_next(self, fault: Fault, *, times: int = 1) -> None:
        self._faults.extend([fault] * times)

    # --- what a provider fake defines --------------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        raise NotImplementedError

    def error_body(self, status: int, message: str | None = None) -> Any:
        """The provider's JSON error body for ``status``."""
        raise NotImplementedError

    async def answer(self, request: web.Request, body: Any) -> web.StreamResponse:
        raise NotImplementedError

    # --- serving ------------------------------------------------------------------------------------

    def error(
        self, status: int, message: str | None = None, headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.json_response(self.error_body(status, message), status=status, headers=headers)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.requests.append(
            Recorded(path=request.path, query=dict(request.query), headers=dict(request.headers), json=body)
        )
        if not self.authorized(request):
            return self.error(401)
        fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            await asyncio.sleep(fault.delay_s)
            if fault.status is not None:
                return self._fault_response(fault)
        return await self.answer(request, body)

    def _fault_response(self, fault: Fault, error_body: Any = None) -> web.Response:
        """The fault's answer: its own body, else ``error_body``, else the provider's error body."""
        assert fault.status is not None
        body = fault.body
        if body is None:
            body = error_body if error_body is not None else self.error_body(fault.status)
        if isinstance(body, str):
            body = body.encode()
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        return web.Response(
            status=fault.status, body=body, headers={"Content-Type": fault.content_type, **fault.headers}
        )


@asynccontextmanager
async def serving(fake: FakeProvider) -> AsyncIterator[str]:
    """Serve ``fake`` on a free port for the block; yields its base URL."""
    app = web.Application()
    app.router.add_route(fake.methods, fake.route, fake._handle)
    async with serving_app(app) as base_url:
        fake.base_url = base_url
        yield base_url
