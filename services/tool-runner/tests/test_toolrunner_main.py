"""The entry points build the settings once and run the service under the provider's name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from omni_runtime.service import ServiceContext
from omni_runtime.settings import ServiceSettings
from omni_toolrunner import main as entry
from omni_toolrunner.settings import ToolRunnerSettings


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_run_service(
        name: str,
        settings: ServiceSettings,
        main: Callable[[ServiceContext], Awaitable[None]],
        *,
        description: str = "",
    ) -> None:
        calls.append({"name": name, "settings": settings, "main": main})

    monkeypatch.setattr(entry, "run_service", fake_run_service)
    return calls


def test_main_runs_the_runner_of_the_provider_it_is_given(started: list[dict[str, Any]]) -> None:
    entry.main(["--provider", "openrouter"])
    (call,) = started
    assert call["name"] == "tool-runner-openrouter"
    assert isinstance(call["settings"], ToolRunnerSettings)
    assert call["settings"].provider == "openrouter"


def test_main_openrouter_needs_no_arguments(
    started: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["omni-tool-runner-openrouter"])
    entry.main_openrouter()
    assert started[0]["name"] == "tool-runner-openrouter"


def test_settings_read_the_provider_credentials_under_their_usual_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-from-env")
    monkeypatch.setenv("OPENROUTER_BASE_URL", "http://127.0.0.1:9/api/v1")
    monkeypatch.setenv("OPENROUTER_MODEL", "openai/gpt-4o")
    monkeypatch.setenv("OMNI_TOOLRUNNER_ACK_WAIT_S", "2.5")
    monkeypatch.setenv("OMNI_TOOLRUNNER_MAX_CONCURRENCY", "8")
    settings = ToolRunnerSettings()
    assert settings.openrouter_api_key is not None
    assert settings.openrouter_api_key.get_secret_value() == "sk-or-from-env"
    assert "sk-or-from-env" not in repr(settings)
    assert settings.openrouter_base_url == "http://127.0.0.1:9/api/v1"
    assert settings.openrouter_model == "openai/gpt-4o"
    assert settings.ack_wait_s == 2.5
    assert settings.max_concurrency == 8
    assert settings.provider == "openrouter"


def test_an_unknown_provider_is_refused_before_anything_starts(
    started: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNI_TOOLRUNNER_PROVIDER", "nobody")
    with pytest.raises(SystemExit) as exit_info:
        entry.main([])
    assert exit_info.value.code == 2
    assert started == []
