"""``GET /servers`` and ``GET /servers/{name}``: every provider Omni knows, and its health as its
runners see it.

Every tool-runner replica publishes its view of its provider with its registry heartbeats
(``omni_contract.tools.ProviderHealth`` in the KV bucket ``omni_providers``, expiring with the
replica). The list is every provider of ``omni_contract.providers`` plus any other with a live
replica (the tests' ``mock``). A provider's ``status``:

* with live replicas, merged over their views: ``open`` when its (shared) circuit is open,
  ``unconfigured`` when no replica can call it for want of its key (``missingVariable`` names
  it), ``down`` when no replica can call it for another reason, ``degraded`` when some recent calls
  failed, ``healthy`` otherwise;
* with none: ``unconfigured`` (naming ``missingVariable``) when the provider needs a key that the
  gateway's environment does not set either, else ``down`` (its runner should be running and is
  not).
"""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Mapping
from datetime import datetime

import msgspec
from aiohttp import web
from omni_contract.providers import PROVIDER_KEYS, configured, key_variables
from omni_contract.tools import (
    CIRCUIT_OPEN,
    DEGRADED,
    HEALTHY,
    PROVIDER_HEALTH_BUCKET,
    UNAVAILABLE,
    ProviderHealth,
    key_token,
)

from omni_gateway.apidoc import Operation, json_answer, needs, param_ref
from omni_gateway.bodies import respond
from omni_gateway.errors import ApiError
from omni_gateway.jetstream import Missing
from omni_gateway.state import GATEWAY
from omni_gateway.tools import jetstream_errors, read_entries, tools_unavailable


class ServerView(msgspec.Struct, kw_only=True):
    """One provider, merged over the runner replicas serving it."""

    name: str
    status: str  # healthy | degraded | open | down | unconfigured
    reasons: list[str]
    missing_variable: str | None  # the unset key variable of an unconfigured provider
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


# The statuses of GET /servers.
OPEN = "open"
DOWN = "down"
UNCONFIGURED = "unconfigured"
STATUSES = (HEALTHY, DEGRADED, OPEN, DOWN, UNCONFIGURED)


def merge(name: str, views: list[ProviderHealth], environ: Mapping[str, str]) -> ServerDetail:
    """``name``'s status over its live replicas' ``views`` (none: from the environment alone)."""
    statuses = {view.status for view in views}
    reasons = sorted({view.reason for view in views if view.reason})
    missing: str | None = None
    if not views:
        if configured(name, environ):
            status = DOWN
            reasons = [f"no runner of {name} is live"]
        else:
            status, missing = UNCONFIGURED, key_variables(name)[0]
            reasons = [f"{missing} is not set"]
    elif CIRCUIT_OPEN in statuses:
        status = OPEN
    elif statuses == {UNAVAILABLE}:
        missing = _missing_key(name, reasons)
        status = UNCONFIGURED if missing else DOWN
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
        reasons=reasons,
        missing_variable=missing,
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


def _missing_key(name: str, reasons: list[str]) -> str | None:
    """The key variable the replicas' reasons name, when they cannot call ``name`` for want of it."""
    return next((var for var in key_variables(name) if any(var in reason for reason in reasons)), None)


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


LIST_SERVERS = Operation(
    method="get",
    path="/servers",
    access=needs("server:read"),
    operation_id="listServers",
    tag="tools",
    summary="Every provider Omni knows, and any other with a live runner, with its health",
    responses={
        "200": json_answer(
            "Each provider: healthy, degraded, open (circuit), down (no live runner can call "
            "it) or unconfigured (missingVariable names its unset key)",
            "ServerList",
        )
    },
    errors=("BadRequest", "ToolsUnavailable"),
)


async def list_servers(request: web.Request) -> web.Response:
    if request.query:
        name = sorted(request.query)[0]
        raise ApiError.bad_request(name, f"unknown query parameter {name!r}: /servers takes none")
    live = await _health(request, None)
    names = sorted(set(PROVIDER_KEYS) | set(live))
    merged = [merge(name, live.get(name, []), os.environ) for name in names]
    views = [ServerView(**{f: getattr(m, f) for f in ServerView.__struct_fields__}) for m in merged]
    return respond(ServerList(servers=views))


GET_SERVER = Operation(
    method="get",
    path="/servers/{name}",
    access=needs("server:read:{name}"),
    operation_id="getServer",
    tag="tools",
    summary="One provider's health, with each runner replica's view",
    responses={
        "200": json_answer("The provider (a known one without runners too, with why)", "ServerDetail")
    },
    errors=("NotFound", "ToolsUnavailable"),
    parameters=(param_ref("ServerName"),),
)


async def get_server(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    views = (await _health(request, name)).get(name, [])
    if not views and name not in PROVIDER_KEYS:
        raise ApiError(404, "not_found", f"Omni knows no provider {name!r} and no runner of it is live")
    return respond(merge(name, views, os.environ))


OPERATIONS = (LIST_SERVERS, GET_SERVER)
