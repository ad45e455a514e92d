"""The registry of provider declarations: what it accepts, what it derives, and the contract's table
generated from it. (What each adapter owes the runner is ``providers/test_adapter_contract.py``.)"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from omni_contract import provider_table, providers
from omni_toolrunner.adapters import (
    NO_CREDENTIALS,
    PER_TOOL_CREDENTIALS,
    PROVIDERS,
    bind_provider,
    declaration_of,
)
from omni_toolrunner.catalogue import CATALOGUE
from omni_toolrunner.provider_table import main, render
from omni_toolrunner.providers.openai_compatible import OPENROUTER
from omni_toolrunner.settings import ToolRunnerSettings

SERVICE_README = Path(__file__).resolve().parents[1] / "README.md"
ROOT_README = Path(__file__).resolve().parents[3] / "README.md"


def test_each_declaration_is_found_by_its_name_and_the_credential_sets_follow_them() -> None:
    assert all(declaration_of(provider.name) is provider for provider in PROVIDERS)
    assert {"local", "mock"} == NO_CREDENTIALS
    assert {"integrations"} == PER_TOOL_CREDENTIALS


async def test_an_unknown_provider_is_refused_naming_the_known_ones() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(ValueError, match=r"known: .*gemini"):
            bind_provider(ToolRunnerSettings(provider="nope"), client, environ={})


@pytest.mark.parametrize(("provider", "alias"), [("qwen", "DASHSCOPE_API_KEY"), ("grok", "XAI_API_KEY")])
async def test_the_providers_own_name_for_the_key_is_accepted_too(provider: str, alias: str) -> None:
    async with httpx.AsyncClient() as client:
        binding = bind_provider(ToolRunnerSettings(provider=provider), client, environ={alias: "sk-test"})
        assert binding.missing_credentials is None
        await binding.aclose()


def test_the_settings_read_openrouter_under_the_names_its_declaration_documents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = OPENROUTER.env
    assert env.api_key is not None
    assert env.base_url is not None
    assert env.model is not None
    monkeypatch.setenv(env.api_key, "sk-or-declared")
    monkeypatch.setenv(env.base_url, "http://127.0.0.1:9/api/v1")
    monkeypatch.setenv(env.model, "openai/gpt-4o")

    settings = ToolRunnerSettings()

    assert settings.openrouter_api_key is not None
    assert settings.openrouter_api_key.get_secret_value() == "sk-or-declared"
    assert (settings.openrouter_base_url, settings.openrouter_model) == (
        "http://127.0.0.1:9/api/v1",
        "openai/gpt-4o",
    )


def test_every_tool_has_one_description_whichever_providers_serve_it() -> None:
    for provider in PROVIDERS:
        for doc in provider.tools:
            assert CATALOGUE[doc.name] is doc, (provider.name, doc.name)


def test_the_contracts_provider_table_is_the_one_the_declarations_generate() -> None:
    assert Path(provider_table.__file__).read_text(encoding="utf-8") == render()
    assert dict(providers.PROVIDER_KEYS) == {
        provider.name: provider.env.key_variables for provider in PROVIDERS if provider.listed
    }
    assert {"openrouter", "local"} == providers.ALWAYS_STARTED
    assert "mock" not in providers.PROVIDER_KEYS  # a test double: listed only while it runs


def test_the_table_check_fails_on_a_stale_file_and_write_mends_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "provider_table.py"
    table.write_text(render().replace('"local": (),\n', ""), encoding="utf-8")

    assert main(["check", str(table)]) == 1
    assert "differs from the provider declarations" in capsys.readouterr().err
    assert main(["write", str(table)]) == 0
    assert main(["check", str(table)]) == 0
    assert main(["check", str(tmp_path / "absent.py")]) == 1
    assert main(["rewrite", str(table)]) == 2


def test_the_readmes_name_each_providers_tools_and_variables() -> None:
    rows = {
        found.group(1): line
        for line in SERVICE_README.read_text(encoding="utf-8").splitlines()
        if (found := re.match(r"^\| `([a-z0-9_-]+)`", line))
    }
    root = ROOT_README.read_text(encoding="utf-8")
    for provider in PROVIDERS:
        row = rows[provider.name]
        for variable in provider.env.variables:
            assert f"`{variable}`" in row, (provider.name, variable)
        if not provider.tools_at_run_time:
            named = sorted(re.findall(r"[a-z]+\.[a-z_]+", row.split("|")[2]))
            assert named == sorted(doc.name for doc in provider.tools), provider.name
        if provider.listed and provider.env.api_key:
            assert f"`{provider.env.api_key}`" in root, provider.name
