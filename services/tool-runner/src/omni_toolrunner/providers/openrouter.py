"""OpenRouter adapter: the bilingual-coach tools over OpenRouter's OpenAI-compatible chat completions.

OpenRouter is the OpenAI-compatible family's adapter (:mod:`openai_compatible`) with the
:data:`~omni_toolrunner.providers.openai_compatible.OPENROUTER` profile: all five tools (it routes
to audio chat models), strict ``json_schema`` output with ``provider.require_parameters`` so it only
routes to providers that honour it, ``Idempotency-Key``, the attribution headers ``HTTP-Referer`` /
``X-Title``, and ``usage.cost`` as the cost of a call. This module keeps the names callers import.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from omni_toolrunner.providers.http_errors import retry_after as _retry_after
from omni_toolrunner.providers.openai_compatible import (
    DEFAULT_APP_TITLE,
    OPENROUTER,
    OpenAICompatibleAdapter,
)

__all__ = [
    "DEFAULT_APP_TITLE",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "DEFAULT_TOOL_MODELS",
    "DEFAULT_VOICE",
    "MODEL_ALIASES",
    "PROVIDER",
    "OpenRouterAdapter",
    "_retry_after",
]

PROVIDER = OPENROUTER.name
DEFAULT_BASE_URL = OPENROUTER.base_url
DEFAULT_MODEL = OPENROUTER.default_model
DEFAULT_TOOL_MODELS: Mapping[str, str] = OPENROUTER.tool_models
MODEL_ALIASES: Mapping[str, str] = OPENROUTER.model_aliases
DEFAULT_VOICE = OPENROUTER.default_voice


class OpenRouterAdapter(OpenAICompatibleAdapter):
    """Serves ``stt.transcribe``, ``nlu.analyze``, ``mt.translate``, ``feedback.generate``, ``tts.speak``.

    Pass ``client`` to share a connection pool (the adapter then leaves closing it to you); without
    one the adapter owns a client and :meth:`aclose` closes it. An empty ``api_key`` makes every call
    fail with ``unavailable`` rather than failing construction, so a runner can still start, register
    and report why its tools do not work.
    """

    def __init__(
        self,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        default_model: str = DEFAULT_MODEL,
        client: httpx.AsyncClient | None = None,
        *,
        tool_models: Mapping[str, str] | None = None,
        app_url: str | None = None,
        app_title: str | None = DEFAULT_APP_TITLE,
        require_parameters: bool = True,
    ) -> None:
        super().__init__(
            OPENROUTER,
            api_key,
            base_url,
            default_model,
            client,
            tool_models=tool_models,
            app_url=app_url,
            app_title=app_title,
            require_parameters=require_parameters,
        )
