"""The one error shape of the HTTP API: ``{"error": {"code", "message", "details": [...]}}``."""

from __future__ import annotations

import math

import msgspec
from aiohttp import web
from omni_contract.rpc import ERROR_HTTP_STATUS, RpcError


class ErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Which part of the request is wrong, and why. ``file``/``step`` locate a workflow problem."""

    field: str
    message: str
    file: str | None = None
    step: str | None = None


class ErrorInfo(msgspec.Struct, kw_only=True):
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorInfo


class ApiError(Exception):
    """An error the gateway answers with on purpose; the middleware renders it."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[ErrorDetail] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    @classmethod
    def bad_request(cls, field: str, message: str) -> ApiError:
        return cls(400, "bad_request", message, [ErrorDetail(field=field, message=message)])

    @classmethod
    def from_rpc(cls, error: RpcError) -> ApiError:
        details = [
            ErrorDetail(field=p.field, message=p.message, file=p.file, step=p.step) for p in error.details
        ]
        headers: dict[str, str] = {}
        if error.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
        if error.code == UNAUTHORIZED:
            headers["WWW-Authenticate"] = BEARER_CHALLENGE
        return cls(ERROR_HTTP_STATUS.get(error.code, 500), error.code, error.message, details, headers)

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message, self.details, self.headers)


# Seconds a client is asked to wait (``Retry-After``) when the engine, its database or NATS is away
# for now: an embedded server that died is back within a few seconds under ``omni run``.
RETRY_AFTER_S = 5


def engine_unavailable(reason: str) -> ApiError:
    """503 with ``Retry-After``: nobody answers for the engine (NATS unreachable, no instance)."""
    return ApiError(
        503,
        "engine_unavailable",
        f"workflow engine unavailable: {reason}",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def security_unavailable(reason: str) -> ApiError:
    """503 with ``Retry-After``: nobody answers for the security-service, so nobody is let in."""
    return ApiError(
        503,
        "security_unavailable",
        f"security-service unavailable: {reason}",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


UNAUTHORIZED = "unauthorized"
BEARER_CHALLENGE = 'Bearer realm="omni"'


def unauthorized(message: str) -> ApiError:
    """401 with the challenge RFC 6750 asks for."""
    return ApiError(401, UNAUTHORIZED, message, headers={"WWW-Authenticate": BEARER_CHALLENGE})


def forbidden(permission: str, reason: str) -> ApiError:
    """403 naming the permission that is missing."""
    return ApiError(
        403,
        "forbidden",
        f"permission {permission} is required: {reason}",
        [ErrorDetail(field="permission", message=permission)],
    )


def service_unavailable(message: str) -> ApiError:
    """503 with ``Retry-After``: the engine answered that its database cannot be reached now."""
    return ApiError(503, "unavailable", message, headers={"Retry-After": str(RETRY_AFTER_S)})


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = ErrorBody(error=ErrorInfo(code=code, message=message, details=details or []))
    if status == 503 and not any(name.lower() == "retry-after" for name in headers or {}):
        # Every 503 is "not now": say when to try again (the event store, dead letters, tools...).
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_S)}
    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type="application/json", headers=headers
    )
