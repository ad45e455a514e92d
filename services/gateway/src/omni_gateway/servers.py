"""``GET /servers`` and ``GET /servers/{name}``: each provider's health, as its runners see it.

Every tool-runner replica publishes its view of its provider with its registry heartbeats
(``omni_contract.tools.ProviderHealth`` in the KV bucket ``omni_providers``, expiring with the
replica). A provider's status merges its replicas' views: ``circuit_open`` when its (shared)
circuit is open, ``unavailable`` when no replica can call it, ``degraded`` when some recent calls
failed, ``healthy`` otherwise.
"""

from __future__ import annotations

import asyncio
import statistics
from datetime import datetime

import msgspec
from aiohttp import web
from omni_contract.tools import (
    CIRCUIT_OPEN,
    DEGRADED,
    HEALTHY,
    PROVIDER_HEALTH_BUCKET,
    UNAVAILABLE,
    ProviderHealth,
    key_token,
)

from omni_gateway.bodies import respond
from omni_gateway.errors import ApiError
from omni_gateway.jetstream import Missing
from omni_gateway.state import GATEWAY
from omni_gateway.tools import jetstream_errors, read_entries, tools_unavailable


class ServerView(msgspec.Struct, kw_only=True):
    """One provider, merged over the runner replicas serving it."""

    name: str
    status: str  # healthy | degraded | unavailable | circuit_open
    reasons: list[str]
    circuit: str
    replicas: int
    calls: int  # recent calls over all replicas
    errors: int
    error_rate: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    last_error: str | None
    last_error_at: datetime | None
    throttled: int  # calls held back by the provider's rate limits (all replicas, since they started)
    updated_at: datetime | None


class ServerList(msgspec.Struct, kw_only=True):
    servers: list[ServerView]


class ServerDetail(ServerView, kw_only=True):
    runners: list[ProviderHealth]


def merge(name: str, views: list[ProviderHealth]) -> ServerDetail:
    statuses = {view.status for view in views}
    if CIRCUIT_OPEN in statuses:
        status = CIRCUIT_OPEN
    elif statuses == {UNAVAILABLE}:
        status = UNAVAILABLE
    elif DEGRADED in statuses:
        status = DEGRADED
    else:
        status = HEALTHY
    calls = sum(view.calls for view in views)
    errors = sum(view.errors for view in views)
    failed = [view for view in views if view.last_error_at is not None]
    last = max(failed, key=lambda view: view.last_error_at or datetime.min) if failed else None
    p50s = [view.latency_p50_ms for view in views if view.latency_p50_ms is not None]
    p95s = [view.latency_p95_ms for view in views if view.latency_p95_ms is not None]
    return ServerDetail(
        name=name,
        status=status,
        reasons=sorted({view.reason for view in views if view.reason}),
        circuit=next((view.circuit for view in views if view.circuit != "closed"), "closed"),
        replicas=len(views),
        calls=calls,
        errors=errors,
        error_rate=round(errors / calls, 4) if calls else 0.0,
        latency_p50_ms=round(statistics.median(p50s), 2) if p50s else None,
        latency_p95_ms=max(p95s) if p95s else None,
        last_error=last.last_error if last else None,
        last_error_at=last.last_error_at if last else None,
        throttled=sum(view.throttled for view in views),
        updated_at=max((view.updated_at for view in views if view.updated_at), default=None),
        runners=sorted(views, key=lambda view: view.runner),
    )


async def _health(request: web.Request, provider: str | None) -> dict[str, list[ProviderHealth]]:
    gateway = request.app[GATEWAY]
    pattern = f"{key_token(provider)}.*" if provider else ">"
    try:
        with jetstream_errors("read provider health"):
            kv = await gateway.js.key_value(PROVIDER_HEALTH_BUCKET)
            try:
                found = await asyncio.wait_for(
                    read_entries(kv, pattern, ProviderHealth, PROVIDER_HEALTH_BUCKET),
                    timeout=gateway.settings.rpc_timeout_s,
                )
            except TimeoutError:
                raise tools_unavailable("provider health was not read in time") from None
    except Missing:
        return {}  # no runner has started yet
    by_provider: dict[str, list[ProviderHealth]] = {}
    for view in found:
        if provider is None or view.provider == provider:
            by_provider.setdefault(view.provider, []).append(view)
    return by_provider


async def list_servers(request: web.Request) -> web.Response:
    if request.query:
        name = sorted(request.query)[0]
        raise ApiError.bad_request(name, f"unknown query parameter {name!r}: /servers takes none")
    merged = [merge(name, views) for name, views in sorted((await _health(request, None)).items())]
    views = [ServerView(**{f: getattr(m, f) for f in ServerView.__struct_fields__}) for m in merged]
    return respond(ServerList(servers=views))


async def get_server(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    views = (await _health(request, name)).get(name)
    if not views:
        raise ApiError(404, "not_found", f"no runner of provider {name!r} is live")
    return respond(merge(name, views))
