"""Request bodies for the simulator tests (a uniquely named module so it imports from any rootdir)."""

from __future__ import annotations

from typing import Any

API_KEY = "sk-or-test"


def chat_body(
    user: Any, *, schema: dict[str, Any] | None = None, name: str = "test_schema", **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "system", "content": "You are a test."}, {"role": "user", "content": user}],
        **extra,
    }
    if schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": name, "strict": True, "schema": schema},
        }
    return body
