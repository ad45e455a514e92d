"""ElevenLabs' text-to-speech API as its adapter uses it, for tests over real HTTP.

``POST /v1/text-to-speech/{voice_id}?output_format=...`` with ``xi-api-key``; the answer is audio with
``request-id`` and ``character-cost`` headers; errors are ``{"detail": {"status", "message"}}``, and a
body FastAPI cannot validate gets its 422 ``{"detail": [{"loc", "msg", "type"}]}``.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from http_fake import FakeProvider

API_KEY = "sk_test_elevenlabs"
# An MPEG-1 Layer III frame header after an ID3 tag: enough for a sniffer to call it MP3.
MP3_BYTES = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + bytes(64)
LANGUAGE_CODE_MODELS = {"eleven_flash_v2_5", "eleven_turbo_v2_5"}

_ERRORS = {
    400: ("invalid_parameters", "The request is invalid."),
    401: ("invalid_api_key", "Invalid API key"),
    404: ("voice_not_found", "A voice with the voice_id was not found."),
    429: ("too_many_concurrent_requests", "Too many concurrent requests for your subscription."),
    500: ("internal_server_error", "An internal error occurred."),
    503: ("system_busy", "The system is busy, please retry later."),
}


class ElevenLabsFake(FakeProvider):
    route = "/v1/text-to-speech/{voice_id}"

    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("xi-api-key") == self.api_key

    def error_body(self, status: int, message: str | None = None) -> Any:
        code, default = _ERRORS.get(status, ("error", f"HTTP {status}"))
        return {"detail": {"status": code, "message": message or default}}

    def quota_exceeded(self) -> dict[str, Any]:
        return {
            "detail": {
                "status": "quota_exceeded",
                "message": "This request exceeds your quota of 10000. You have 12 credits remaining.",
            }
        }

    async def answer(self, request: web.Request, body: Any) -> web.StreamResponse:
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return web.json_response(
                {"detail": [{"loc": ["body", "text"], "msg": "Field required", "type": "missing"}]},
                status=422,
            )
        if "language_code" in body and body.get("model_id") not in LANGUAGE_CODE_MODELS:
            return self.error(400, f"Model '{body.get('model_id')}' does not support language_code.")
        output_format = request.query.get("output_format", "mp3_44100_128")
        if output_format.startswith("pcm_"):
            audio, content_type = bytes(480), "audio/pcm"
        else:
            audio, content_type = MP3_BYTES, "audio/mpeg"
        headers = {
            "Content-Type": content_type,
            "request-id": uuid.uuid4().hex,
            # Flash and Turbo models bill half a credit a character.
            "character-cost": str(
                len(body["text"]) // 2 if "flash" in str(body.get("model_id")) else len(body["text"])
            ),
        }
        return web.Response(body=audio, headers=headers)
