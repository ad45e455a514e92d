"""Each declared provider's API served locally, behind one interface, for the adapter contract tests.

:data:`FAKES` maps a provider name to a context manager that serves the fake speaking that
provider's real API (the provider simulator, in each OpenAI-compatible dialect; ``gemini_fake``; the
``http_fake`` fakes of ElevenLabs, Perplexity and Firecrawl; ``integrations_fake``) and yields a
:class:`ProviderFake`: the environment that points the provider at it, how to make its next answer
fail or come late, and what the last request carried. In-process providers (``local``, ``mock``)
have nothing to serve. :data:`EXAMPLE_INPUTS` holds one valid input per tool.

A new provider gets its fake here (and its tools an example input); the contract tests refuse a
declared provider without one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
from elevenlabs_fake import API_KEY as ELEVENLABS_KEY
from elevenlabs_fake import ElevenLabsFake
from firecrawl_fake import API_KEY as FIRECRAWL_KEY
from firecrawl_fake import FirecrawlFake
from gemini_fake import API_KEY as GEMINI_KEY
from gemini_fake import FakeGemini, running_fake_gemini
from http_fake import FakeProvider, Fault, serving
from integrations_fake import ASANA_TOKEN, ASANA_WORKSPACE, GITHUB_TOKEN, NOTION_TOKEN, IntegrationsFake
from omni_contract.declared import HttpToolDeclaration
from omni_simulator import RunningSimulator, running_simulator
from omni_toolrunner.declarations import load_files
from omni_toolrunner.providers import ProviderAdapter, elevenlabs, firecrawl, gemini, perplexity
from omni_toolrunner.providers.declaration import ProviderEnv
from omni_toolrunner.providers.declared import DeclaredHttpAdapter
from omni_toolrunner.providers.openai_compatible import PROFILES
from openai_dialects import dialect_simulator
from openrouter_fixtures import API_KEY as OPENAI_COMPATIBLE_KEY
from openrouter_fixtures import add_fault, learner_wav_base64, recorded_requests
from perplexity_fake import API_KEY as PERPLEXITY_KEY
from perplexity_fake import PerplexityFake

SHIPPED_DECLARATIONS = Path(__file__).resolve().parents[4] / "integrations"
REPOSITORY = ("omni-org", "omni")

EXAMPLE_INPUTS: Mapping[str, dict[str, Any]] = {
    "stt.transcribe": {"audioData": learner_wav_base64(), "language": "en"},
    "nlu.analyze": {"text": "Hello Maria, I goes to the market", "language": "en"},
    "mt.translate": {"text": "Good morning", "sourceLanguage": "en", "targetLanguage": "es"},
    "feedback.generate": {"text": "I goes to the market", "targetLanguage": "en"},
    "tts.speak": {"text": "Hola", "language": "es"},
    "search.answer": {"query": "How tall is the Eiffel Tower?"},
    "web.scrape": {"url": "https://example.com/"},
    "util.echo": {"text": "hi", "n": 1},
    "lang.detect": {"text": "Bonjour tout le monde, comment allez-vous ?"},
    "github.create_issue": {"owner": REPOSITORY[0], "repo": REPOSITORY[1], "title": "Contract test"},
    # Tools are called in name order, so the issue created just before exists.
    "github.get_issue": {"owner": REPOSITORY[0], "repo": REPOSITORY[1], "number": 1},
    "notion.create_page": {"databaseId": "d9824bdc84454327be8b5b47500af6ce", "title": "Weekly notes"},
    "asana.create_task": {"name": "Call the customer", "workspace": ASANA_WORKSPACE},
    "zapier.trigger": {"event": "lesson.finished", "score": 0.9},
}


class ProviderFake:
    """A provider's API as the contract tests drive it; the base is a provider with nothing to serve."""

    @property
    def environ(self) -> dict[str, str]:
        """The provider's variables (its key included) pointing it at this fake."""
        return {}

    @property
    def credential_variables(self) -> tuple[str, ...]:
        """The variables that hold its credentials, which a test without credentials leaves out."""
        return ()

    @property
    def run_time_tools(self) -> Mapping[str, Mapping[str, Any]]:
        """Tools named while the provider runs (declared tools), with their output schemas."""
        return {}

    def ready(self, adapter: ProviderAdapter) -> None:
        """Give a freshly bound adapter what it serves at run time."""

    def tool_sending_the_key(self, adapter: ProviderAdapter) -> tuple[str, dict[str, Any]]:
        """A tool of ``adapter`` whose declaration sends the idempotency key, and an input for it."""
        raise NotImplementedError(f"{type(self).__name__} has no tools that choose to send the key")

    async def fail_next(
        self, tool: str, status: int, message: str, retry_after_s: float | None = None
    ) -> None:
        """Answer the next call of ``tool`` with ``status`` and the provider's error body with ``message``."""
        raise NotImplementedError(f"{type(self).__name__} serves no HTTP")

    async def slow_next(self, delay_s: float) -> None:
        """Answer the next call normally, after ``delay_s``."""
        raise NotImplementedError(f"{type(self).__name__} serves no HTTP")

    async def requests_seen(self) -> int:
        return 0

    async def last_headers(self) -> Mapping[str, str]:
        """The headers of the last request that arrived, names in lower case."""
        raise NotImplementedError(f"{type(self).__name__} serves no HTTP")


class SimulatedOpenAICompatible(ProviderFake):
    """The provider simulator (OpenRouter's shape, or a dialect of it)."""

    def __init__(self, sim: RunningSimulator, env: ProviderEnv) -> None:
        self.sim, self.env = sim, env

    @property
    def environ(self) -> dict[str, str]:
        assert self.env.api_key
        assert self.env.base_url
        return {self.env.api_key: OPENAI_COMPATIBLE_KEY, self.env.base_url: self.sim.base_url}

    @property
    def credential_variables(self) -> tuple[str, ...]:
        return self.env.key_variables

    async def fail_next(
        self, tool: str, status: int, message: str, retry_after_s: float | None = None
    ) -> None:
        fault: dict[str, Any] = {"status": status, "message": message}
        if retry_after_s is not None:
            fault["retry_after"] = retry_after_s
        await add_fault(self.sim, fault)

    async def slow_next(self, delay_s: float) -> None:
        await add_fault(self.sim, {"delay_ms": int(delay_s * 1000)})

    async def requests_seen(self) -> int:
        return len(await recorded_requests(self.sim))

    async def last_headers(self) -> Mapping[str, str]:
        headers: dict[str, str] = (await recorded_requests(self.sim))[-1]["headers"]
        return {name.lower(): value for name, value in headers.items()}


class Gemini(ProviderFake):
    def __init__(self, fake: FakeGemini) -> None:
        self.fake = fake

    @property
    def environ(self) -> dict[str, str]:
        return {"GEMINI_API_KEY": GEMINI_KEY, "GEMINI_BASE_URL": self.fake.base_url}

    @property
    def credential_variables(self) -> tuple[str, ...]:
        return gemini.ENV.key_variables

    async def fail_next(
        self, tool: str, status: int, message: str, retry_after_s: float | None = None
    ) -> None:
        headers = {"Retry-After": f"{retry_after_s:g}"} if retry_after_s is not None else {}
        self.fake.inject(status=status, message=message, headers=headers)

    async def slow_next(self, delay_s: float) -> None:
        self.fake.inject(delay_s=delay_s)

    async def requests_seen(self) -> int:
        return self.fake.calls

    async def last_headers(self) -> Mapping[str, str]:
        return {name.lower(): value for name, value in self.fake.requests[-1].headers.items()}


class Served(ProviderFake):
    """A :class:`http_fake.FakeProvider` (ElevenLabs, Perplexity, Firecrawl)."""

    def __init__(self, fake: FakeProvider, env: ProviderEnv) -> None:
        self.fake, self.env = fake, env

    @property
    def environ(self) -> dict[str, str]:
        assert self.env.api_key
        assert self.env.base_url
        return {self.env.api_key: self.fake.api_key, self.env.base_url: self.fake.base_url}

    @property
    def credential_variables(self) -> tuple[str, ...]:
        return self.env.key_variables

    async def fail_next(
        self, tool: str, status: int, message: str, retry_after_s: float | None = None
    ) -> None:
        headers = {"Retry-After": f"{retry_after_s:g}"} if retry_after_s is not None else {}
        self.fake.fail_next(Fault(status=status, body=self.fake.error_body(status, message), headers=headers))

    async def slow_next(self, delay_s: float) -> None:
        self.fake.fail_next(Fault(delay_s=delay_s))

    async def requests_seen(self) -> int:
        return len(self.fake.requests)

    async def last_headers(self) -> Mapping[str, str]:
        return {name.lower(): value for name, value in self.fake.requests[-1].headers.items()}


class Integrations(Served):
    """GitHub, Notion, Asana and a Zapier hook, called by the shipped declarations."""

    fake: IntegrationsFake

    def __init__(self, fake: IntegrationsFake) -> None:
        super().__init__(fake, ProviderEnv())
        self.declarations = [declaration for _, declaration in load_files(SHIPPED_DECLARATIONS)]
        fake.repository(*REPOSITORY)

    @property
    def environ(self) -> dict[str, str]:
        return {
            "GITHUB_TOKEN": GITHUB_TOKEN,
            "GITHUB_API_URL": self.fake.github_url,
            "NOTION_TOKEN": NOTION_TOKEN,
            "NOTION_API_URL": self.fake.notion_url,
            "ASANA_TOKEN": ASANA_TOKEN,
            "ASANA_API_URL": self.fake.asana_url,
            "ZAPIER_HOOK_URL": self.fake.hook_url,
        }

    @property
    def credential_variables(self) -> tuple[str, ...]:
        return tuple(sorted({d.auth.env for d in self.declarations if d.auth is not None}))

    @property
    def run_time_tools(self) -> Mapping[str, Mapping[str, Any]]:
        return {declaration.name: declaration.output_schema for declaration in self.declarations}

    def ready(self, adapter: ProviderAdapter) -> None:
        assert isinstance(adapter, DeclaredHttpAdapter)
        adapter.replace(self.declarations)

    def tool_sending_the_key(self, adapter: ProviderAdapter) -> tuple[str, dict[str, Any]]:
        assert isinstance(adapter, DeclaredHttpAdapter)
        hook = next(d for d in self.declarations if d.name == "zapier.trigger")
        headers = {**hook.request.headers, "Idempotency-Key": "${idempotencyKey}"}
        keyed: HttpToolDeclaration = msgspec.structs.replace(
            hook, name="zapier.trigger_once", request=msgspec.structs.replace(hook.request, headers=headers)
        )
        adapter.replace([*self.declarations, keyed])
        return keyed.name, EXAMPLE_INPUTS[hook.name]

    async def fail_next(
        self, tool: str, status: int, message: str, retry_after_s: float | None = None
    ) -> None:
        integration = tool.partition(".")[0]
        headers = {"Retry-After": f"{retry_after_s:g}"} if retry_after_s is not None else {}
        body = self.fake.error_body(status, message, integration=integration)
        self.fake.fail_next(Fault(status=status, body=body, headers=headers), integration=integration)


@asynccontextmanager
async def _simulator(provider: str) -> AsyncIterator[ProviderFake]:
    async with running_simulator(port=0) as sim:
        yield SimulatedOpenAICompatible(sim, PROFILES[provider].env)


def _dialect(provider: str) -> Callable[[], AbstractAsyncContextManager[ProviderFake]]:
    @asynccontextmanager
    async def served() -> AsyncIterator[ProviderFake]:
        async with dialect_simulator(provider) as sim:
            yield SimulatedOpenAICompatible(sim, PROFILES[provider].env)

    return served


@asynccontextmanager
async def _gemini() -> AsyncIterator[ProviderFake]:
    async with running_fake_gemini() as fake:
        yield Gemini(fake)


def _served(fake: FakeProvider, env: ProviderEnv) -> Callable[[], AbstractAsyncContextManager[ProviderFake]]:
    @asynccontextmanager
    async def served() -> AsyncIterator[ProviderFake]:
        async with serving(fake):
            yield Served(fake, env)

    return served


@asynccontextmanager
async def _integrations() -> AsyncIterator[ProviderFake]:
    fake = IntegrationsFake()
    async with serving(fake):
        yield Integrations(fake)


@asynccontextmanager
async def _in_process() -> AsyncIterator[ProviderFake]:
    yield ProviderFake()


FAKES: Mapping[str, Callable[[], AbstractAsyncContextManager[ProviderFake]]] = {
    "openrouter": lambda: _simulator("openrouter"),
    **{name: _dialect(name) for name in ("deepseek", "qwen", "grok", "minimax")},
    "gemini": _gemini,
    "elevenlabs": lambda: _served(ElevenLabsFake(ELEVENLABS_KEY), elevenlabs.ENV)(),
    "perplexity": lambda: _served(PerplexityFake(PERPLEXITY_KEY), perplexity.ENV)(),
    "firecrawl": lambda: _served(FirecrawlFake(FIRECRAWL_KEY), firecrawl.ENV)(),
    "integrations": _integrations,
    "local": _in_process,
    "mock": _in_process,
}
