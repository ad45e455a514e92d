"""The security-service served in the test's event loop (the real process body, on the test's NATS
and database), and a client speaking its NATS endpoints as the gateway does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NATS
from omni_contract import subjects
from omni_contract.rpc import RpcError, RpcReply
from omni_contract.security import (
    AdminRequest,
    AuthenticateRequest,
    Credentials,
    Identity,
    new_api_key,
)
from omni_runtime.service import serve
from omni_security.main import body
from omni_security.settings import SecuritySettings
from omni_testkit import unique_name, wait_for


class Refused(Exception):
    def __init__(self, error: RpcError) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


@dataclass
class SecurityClient:
    nc: NATS
    ip_address: str = "192.0.2.10"

    async def _call(self, subject: str, request: msgspec.Struct) -> msgspec.Raw:
        msg = await self.nc.request(subject, msgspec.json.encode(request), timeout=10)
        reply = msgspec.json.decode(msg.data, type=RpcReply)
        if reply.error is not None:
            raise Refused(reply.error)
        return reply.result

    async def authenticate(
        self, key: str | None = None, *, bearer: str | None = None, ip_address: str | None = None
    ) -> Identity:
        request = AuthenticateRequest(
            credentials=Credentials(api_key=key, bearer=bearer),
            ip_address=ip_address or self.ip_address,
            user_agent="pytest",
        )
        return msgspec.json.decode(await self._call(subjects.SECURITY_AUTHENTICATE, request), type=Identity)

    async def admin(self, actor: Identity, op: str, **params: Any) -> Any:
        request = AdminRequest(op=op, actor=actor, params=params, ip_address=self.ip_address)
        return msgspec.json.decode(await self._call(subjects.SECURITY_ADMIN, request))


@dataclass
class RunningSecurity:
    admin_key: str
    client: SecurityClient
    admin: Identity


@asynccontextmanager
async def serving_security(
    nats_url: str, database_url: str, **settings: Any
) -> AsyncIterator[RunningSecurity]:
    admin_key = new_api_key()
    config = SecuritySettings(
        nats_url=nats_url,
        database_url=database_url,
        admin_key=admin_key,
        instance=unique_name("security"),
        log_format="console",
        shutdown_grace_s=5.0,
        **settings,
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(
        serve(subjects.SECURITY_SERVICE_NAME, config, body, install_signals=False, stopping=stopping)
    )
    nc = await nats.connect(nats_url)
    client = SecurityClient(nc)

    async def answering() -> Identity | None:
        if task.done():
            task.result()  # a failed start: raise its error here
        try:
            return await client.authenticate(admin_key)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return None

    try:
        admin = await wait_for(answering, timeout=60, message="the security-service answering")
        yield RunningSecurity(admin_key=admin_key, client=client, admin=admin)
    finally:
        await nc.drain()
        stopping.set()
        try:
            await asyncio.wait_for(task, timeout=30)
        except TimeoutError:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
