"""The simulator's HTTP surface: OpenRouter's chat completions and models, plus ``/_sim/*`` controls.

Request handling order for ``POST /chat/completions``: authentication (401), body validation (400),
fault rules (which may fail the request without executing it), the idempotency cache (a repeated
``Idempotency-Key`` replays the first answer), execution. Latency is applied after execution, so a
client that times out on a slow answer still leaves a completed, cached side effect behind, which is
what a real provider does too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import msgspec
from aiohttp import web

from omni_simulator.answers import BadRequest
from omni_simulator.completion import (
    MODELS,
    ChatRequest,
    build_completion,
    error_body,
    in_band_error,
    parse_chat_request,
    partial_then_error,
    stream_chunks,
    with_malformed_content,
    with_usage,
)
from omni_simulator.state import (
    CachedResponse,
    FaultRule,
    FaultSpec,
    RecordedRequest,
    RequestInfo,
    SimulatorState,
    UsageOverride,
)

logger = logging.getLogger(__name__)

STATE_KEY = web.AppKey("state", SimulatorState)

_RECORDED_HEADERS = ("idempotency-key", "http-referer", "x-title", "x-openrouter-title", "content-type")
_DEFAULT_MESSAGES = {
    400: "Bad Request",
    401: "No auth credentials found",
    402: "Insufficient credits. Add more using https://openrouter.ai/credits",
    403: "Forbidden",
    408: "Request timed out",
    422: "Unprocessable request",
    429: "Rate limit exceeded",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "No available model provider that meets your routing requirements",
}
_MALFORMED_BODY = b'{"id": "gen-truncated", "choices": [{"message": {"content": "{\\"text\\": '


def build_app(state: SimulatorState) -> web.Application:
    app = web.Application(middlewares=[_json_errors])
    app[STATE_KEY] = state
    for prefix in ("/api/v1", "/v1"):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_get(f"{prefix}/models", list_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/_sim/stats", sim_stats)
    app.router.add_post("/_sim/reset", sim_reset)
    app.router.add_get("/_sim/faults", sim_list_faults)
    app.router.add_post("/_sim/faults", sim_add_faults)
    app.router.add_delete("/_sim/faults", sim_clear_faults)
    app.router.add_get("/_sim/config", sim_get_config)
    app.router.add_post("/_sim/config", sim_set_config)
    app.router.add_get("/_sim/requests", sim_requests)
    return app


def _error(status: int, message: str | None = None, headers: Mapping[str, str] | None = None) -> web.Response:
    body = error_body(status, message or _DEFAULT_MESSAGES.get(status, "Error"))
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # Unknown paths and methods answer in OpenRouter's error shape, so clients see one error format.
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"data": [card.to_json() for card in MODELS]})


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _recorded_headers(request: web.Request) -> dict[str, str]:
    headers = {name: request.headers[name] for name in _RECORDED_HEADERS if name in request.headers}
    if "Authorization" in request.headers:
        headers["authorization"] = "Bearer ***"
    return headers


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        return await _chat_completions(request, state)
    finally:
        state.in_flight -= 1


async def _chat_completions(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    state.calls += 1
    key = request.headers.get("Idempotency-Key") or None
    if key is not None:
        state.by_key[key] += 1
    raw = await request.read()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = None
        parsed_ok = False
    else:
        parsed_ok = True

    def record(status: int, outcome: str) -> None:
        state.record(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers=_recorded_headers(request),
                body=body if parsed_ok else raw.decode("utf-8", errors="replace"),
                status=status,
                outcome=outcome,
            )
        )

    token = _bearer(request)
    if token is None or (state.expected_key is not None and token != state.expected_key):
        state.rejected += 1
        record(401, "rejected")
        return _error(401, "No auth credentials found" if token is None else "User not found.")
    if not parsed_ok:
        state.rejected += 1
        record(400, "rejected")
        return _error(400, "Request body is not valid JSON")
    try:
        chat = parse_chat_request(body)
    except BadRequest as exc:
        state.rejected += 1
        record(400, "rejected")
        return _error(400, str(exc))

    info = RequestInfo(
        model=chat.model,
        schema=chat.schema_name,
        idempotency_key=key,
        audio_output=chat.audio_format is not None,
    )
    state.by_schema[info.schema_label] += 1
    state.by_model[info.model] += 1
    rule = state.take_fault(info)
    delay_ms = rule.spec.delay_ms if rule is not None and rule.spec.delay_ms else state.latency_ms

    if rule is not None and rule.spec.fails:
        state.faulted += 1
        logger.info("fault %d applied to %s (%s)", rule.id, info.schema_label, info.model)
        await _sleep_ms(delay_ms)
        response = await _fault_response(request, rule, chat)
        record(response.status, "fault")
        return response

    fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    cached = state.responses.get(key) if key is not None else None
    if cached is not None and cached.fingerprint != fingerprint:
        state.rejected += 1
        record(422, "rejected")
        return _error(422, "Idempotency-Key was already used with a different request body")
    if cached is not None:
        state.duplicates += 1
        completion = cached.body
        outcome = "duplicate"
    else:
        completion = with_usage(build_completion(chat), state.usage)
        state.side_effects += 1
        if key is not None:
            state.responses[key] = CachedResponse(fingerprint=fingerprint, body=completion)
        outcome = "executed"
    record(200, outcome)
    await _sleep_ms(delay_ms)
    if chat.stream:
        return await _stream(request, stream_chunks(completion))
    return web.json_response(completion)


async def _sleep_ms(ms: int) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000)


async def _fault_response(request: web.Request, rule: FaultRule, chat: ChatRequest) -> web.StreamResponse:
    spec = rule.spec
    if spec.malformed:
        return web.Response(body=_MALFORMED_BODY, status=200, content_type="application/json")
    if spec.malformed_content:
        broken = with_malformed_content(build_completion(chat))
        if chat.stream:
            return await _stream(request, stream_chunks(broken))
        return web.json_response(broken)
    status = spec.status or 502
    message = spec.message or _DEFAULT_MESSAGES.get(status, "Simulated failure")
    if spec.in_band:
        if chat.stream:
            code: int | str = "server_error" if status >= 500 else status
            return await _stream(
                request, partial_then_error(build_completion(chat), code, message), done=False
            )
        return web.json_response(in_band_error(chat, status, message))
    headers: dict[str, str] = {}
    if spec.retry_after is not None:
        headers["Retry-After"] = f"{spec.retry_after:g}"
    return _error(status, message, headers)


async def _stream(
    request: web.Request, chunks: Iterable[Mapping[str, Any]], *, done: bool = True
) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    # OpenRouter interleaves SSE comments to keep connections alive; clients must skip them.
    await response.write(b": OPENROUTER PROCESSING\n\n")
    for chunk in chunks:
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    if done:
        await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


# --- /_sim controls ---------------------------------------------------------------------------------


async def sim_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].stats())


async def sim_reset(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.reset()
    return web.json_response(state.stats())


def _faults_json(state: SimulatorState) -> dict[str, Any]:
    return {"faults": [rule.to_json() for rule in state.faults]}


async def sim_list_faults(request: web.Request) -> web.Response:
    return web.json_response(_faults_json(request.app[STATE_KEY]))


async def sim_add_faults(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    raw = await request.read()
    try:
        decoded = msgspec.json.decode(raw)
        specs = msgspec.convert(decoded if isinstance(decoded, list) else [decoded], list[FaultSpec])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _error(400, f"invalid fault rule: {exc}")
    added = [state.add_fault(spec).to_json() for spec in specs]
    return web.json_response({"added": added, **_faults_json(state)})


async def sim_clear_faults(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.faults.clear()
    return web.json_response(_faults_json(state))


class _ConfigUpdate(msgspec.Struct, forbid_unknown_fields=True):
    latency_ms: int | None = None
    expected_key: str | None = None
    clear_expected_key: bool = False
    usage: UsageOverride | None = None  # what every answer reports as usage
    clear_usage: bool = False  # back to usage counted from the text


def _config_json(state: SimulatorState) -> dict[str, Any]:
    return {
        "latency_ms": state.latency_ms,
        "requires_specific_key": state.expected_key is not None,
        "usage": msgspec.to_builtins(state.usage) if state.usage else None,
    }


async def sim_get_config(request: web.Request) -> web.Response:
    return web.json_response(_config_json(request.app[STATE_KEY]))


async def sim_set_config(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        update = msgspec.json.decode(await request.read(), type=_ConfigUpdate)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _error(400, f"invalid config: {exc}")
    if update.latency_ms is not None:
        if update.latency_ms < 0:
            return _error(400, "latency_ms must be >= 0")
        state.latency_ms = update.latency_ms
    if update.clear_usage:
        state.usage = None
    elif update.usage is not None:
        state.usage = update.usage
    if update.clear_expected_key:
        state.expected_key = None
    elif update.expected_key is not None:
        state.expected_key = update.expected_key
    return web.json_response(_config_json(state))


async def sim_requests(request: web.Request) -> web.Response:
    return web.json_response({"requests": [item.to_json() for item in request.app[STATE_KEY].history]})
