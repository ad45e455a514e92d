"""How adapters turn HTTP failures into :class:`ProviderError` kinds, in one place.

Every adapter speaks JSON over one shared ``httpx.AsyncClient`` and meets the same failures: a status
code with a provider-shaped error body, a ``Retry-After`` header, a deadline that passes, a host that
cannot be reached. The status-to-kind table, the header parsing and the transport handling live here;
an adapter only says how its provider words an error message. (Step input that does not validate is
a ``bad_request`` too, so :func:`convert` is here as well.)
"""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import msgspec

from omni_toolrunner.providers.base import ProviderError, ProviderErrorKind

ERROR_MESSAGE_LIMIT = 300

_T = TypeVar("_T")

MessageOf = Callable[[Any], str | None]
"""Reads the human message out of a decoded JSON error body, or None when it has none."""


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    body: Mapping[str, Any],
    *,
    provider: str,
    headers: Mapping[str, str],
    timeout_s: float,
    params: Mapping[str, str] | None = None,
) -> httpx.Response:
    """POST ``body`` as JSON and return the whole response, whatever its status (see :func:`send`)."""
    request = client.build_request(
        "POST",
        url,
        content=msgspec.json.encode(body),
        params=params,
        headers={"Content-Type": "application/json", **headers},
    )
    return await send(client, request, provider=provider, timeout_s=timeout_s)


async def send(
    client: httpx.AsyncClient, request: httpx.Request, *, provider: str, timeout_s: float
) -> httpx.Response:
    """Send ``request`` and return the whole response, whatever its status.

    ``timeout_s`` bounds the entire exchange (connect, upload, waiting, download), not each phase,
    because it is the step's deadline. Timeouts become ``timeout``; a host that cannot be reached or
    drops the connection becomes a retryable ``unavailable``. ``provider`` names who did not answer.
    """
    request.extensions["timeout"] = httpx.Timeout(timeout_s).as_dict()
    try:
        async with asyncio.timeout(timeout_s):
            return await client.send(request)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise ProviderError(
            ProviderErrorKind.TIMEOUT, f"{provider} did not answer within {timeout_s:g}s"
        ) from exc
    except httpx.TransportError as exc:
        raise ProviderError(
            ProviderErrorKind.UNAVAILABLE, f"cannot reach {provider}: {exc!r}", retryable=True
        ) from exc


def convert(value: Mapping[str, Any], kind: type[_T], what: str) -> _T:
    """Validate a step's ``input`` or ``config``; the error names the offending field (``$.voice``)."""
    try:
        return msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ProviderError(ProviderErrorKind.BAD_REQUEST, f"invalid {what}: {exc}") from exc


def status_error(response: httpx.Response, message_of: MessageOf) -> ProviderError:
    """The error a non-2xx response stands for, with the provider's own message when it gave one."""
    message = error_message(response.content, message_of) or f"HTTP {response.status_code}"
    return classify_status(
        response.status_code, message, retry_after_s=retry_after(response.headers.get("Retry-After"))
    )


def classify_status(status: int, message: str, *, retry_after_s: float | None) -> ProviderError:
    """401/403 auth, 429 rate_limited, 408 timeout, 5xx server, any other status bad_request."""
    message = shorten(message)
    if status in (401, 403):
        return ProviderError(ProviderErrorKind.AUTH, message, status=status)
    if status == 429:
        return ProviderError(
            ProviderErrorKind.RATE_LIMITED, message, status=status, retry_after_s=retry_after_s
        )
    if status == 408:
        return ProviderError(ProviderErrorKind.TIMEOUT, message, status=status, retry_after_s=retry_after_s)
    if status >= 500:
        return ProviderError(ProviderErrorKind.SERVER, message, status=status, retry_after_s=retry_after_s)
    return ProviderError(ProviderErrorKind.BAD_REQUEST, message, status=status)


def out_of_credits(message: str, *, status: int | None) -> ProviderError:
    """The account has no credits or quota left: nothing is wrong with the request, and retrying
    will not help until someone tops the account up, so it is ``unavailable`` and not retryable."""
    return ProviderError(ProviderErrorKind.UNAVAILABLE, shorten(message), status=status, retryable=False)


def error_message(raw: bytes, message_of: MessageOf) -> str | None:
    """The message of an error body: ``message_of`` on its JSON, else the body as text."""
    try:
        body = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", errors="replace").strip()
        return text or None
    return message_of(body)


def openai_error_message(body: Any) -> str | None:
    """``{"error": {"message": ...}}`` (or ``{"error": "..."}``), the OpenAI-compatible envelope."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
    return None


def decode_json_object(raw: bytes, provider: str) -> dict[str, Any]:
    """A 2xx body that must be a JSON object; anything else breaks the contract."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ProviderError(
            ProviderErrorKind.MALFORMED_RESPONSE, f"the {provider} response body is not JSON"
        ) from exc
    if not isinstance(body, dict):
        raise ProviderError(
            ProviderErrorKind.MALFORMED_RESPONSE, f"the {provider} response body is not a JSON object"
        )
    return body


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def shorten(message: str) -> str:
    # Provider messages can echo prompt fragments; keep them short in errors that get logged and stored.
    return message if len(message) <= ERROR_MESSAGE_LIMIT else message[: ERROR_MESSAGE_LIMIT - 1] + "…"
