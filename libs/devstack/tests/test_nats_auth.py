"""NATS with authorization, on a real server: each identity connects with its own credentials, can
do what its service does, and is refused what would let it forge work, results or run notices.

A refused publish or subscription is reported to the client asynchronously (nats-py's error
callback); a refused JetStream request never gets an answer. So a refusal is awaited as its report,
and "it never arrived" is shown by order: a marker the same client may send, published after the
refused message, reaches the observer (the admin, who may see everything) and the refused one did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError
from nats.micro import add_service
from nats.micro.request import Request
from omni_contract import deadletters, kv, streams, subjects
from omni_contract.declared import DECLARED_PROVIDER
from omni_contract.permissions import Role, inbox_prefix, js_api
from omni_contract.streams import ConsumerSpec, StreamSpec
from omni_contract.tools import registry_key
from omni_devstack.nats_auth import NatsAuth, PasswordUser, ServiceIdentity
from omni_devstack.servers import NatsServer
from omni_runtime import nats as omni_nats
from omni_runtime.publish import publish
from omni_runtime.settings import NatsClientSettings
from omni_testkit import subscribed, wait_for

pytestmark = pytest.mark.integration

PROVIDERS = ("openrouter", "gemini", DECLARED_PROVIDER)
ENGINE_STREAMS = (
    streams.APP_EVENTS,
    streams.TOOL_WORK,
    streams.TOOL_RESULTS,
    streams.RUN_EVENTS,
    streams.DEADLETTERS,
)


@dataclass
class Secured:
    server: NatsServer
    auth: NatsAuth


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    auth = NatsAuth.in_home(tmp_path / "home")
    server = NatsServer(
        tmp_path / "nats",
        port_setting=None,
        monitoring_port_setting=None,
        config=auth.authorization(PROVIDERS),
    )
    server.start()
    try:
        yield Secured(server, auth)
    finally:
        server.stop()


@dataclass
class Client:
    """One connection, and what the server refused it."""

    nc: NATS
    refusals: list[str] = field(default_factory=list)

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    async def refused(self, what: str) -> None:
        """Return once the server has reported refusing ``what`` (a subject) to this client."""
        # nats-py reports the server's error in lower case.
        quoted = f'"{what.lower()}"'
        await wait_for(
            lambda: any("permissions violation" in r and quoted in r.lower() for r in self.refusals),
            message=f"a refusal of {what}",
        )

    async def refused_request(self, request: Awaitable[Any], subject: str) -> None:
        """Start ``request`` (a JetStream call that publishes to ``subject``), see it refused, and
        stop waiting for the answer that will not come."""
        task = asyncio.ensure_future(request)
        try:
            await self.refused(subject)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, nats.errors.Error, TimeoutError):
                await task


@contextlib.asynccontextmanager
async def connected(server: NatsServer, who: ServiceIdentity | PasswordUser) -> AsyncIterator[Client]:
    """Connect as ``who``: with its NKey seed and inbox prefix (what ``omni_runtime.nats.connect``
    passes), or with its password in the URL."""
    client = Client(nc=NATS())

    async def on_error(exc: Exception) -> None:
        client.refusals.append(str(exc))

    if isinstance(who, ServiceIdentity):
        await client.nc.connect(
            server.url,
            name=who.name,
            nkeys_seed=str(who.seed_file),
            inbox_prefix=who.inbox_prefix,
            error_cb=on_error,
            allow_reconnect=False,
        )
    else:
        await client.nc.connect(who.url(server.url), name=who.user, error_cb=on_error, allow_reconnect=False)
    try:
        yield client
    finally:
        await client.nc.close()


def pinned(spec: ConsumerSpec) -> ConsumerConfig:
    """The durable's configuration with its name set, so nats-py names its filter in the API
    subject (``CONSUMER.CREATE.<stream>.<durable>.<filter>``), the only creation granted."""
    return omni_nats.consumer_config(spec).evolve(name=spec.durable)


async def pull_one(js: JetStreamContext, nc: NATS, spec: ConsumerSpec) -> Msg:
    await js.add_consumer(spec.stream, pinned(spec))
    puller = omni_nats.Puller(nc, spec.stream, spec.durable, batch=1, expires_s=1.0)
    await puller.start()
    try:
        messages = await wait_for(
            lambda: puller.take(max_wait_s=0.5), message=f"a message from {spec.durable}"
        )
    finally:
        await puller.stop()
    return messages[0]


async def message_count(js: JetStreamContext, stream: StreamSpec) -> int:
    info = await js.stream_info(stream.name)
    return info.state.messages


class Observer:
    """The admin's subscription to ``subject``, to show what did and did not get through."""

    def __init__(self, admin: Client) -> None:
        self.admin = admin
        self.seen: list[str] = []

    async def watch(self, *subjects_: str) -> None:
        async def take(msg: Msg) -> None:
            self.seen.append(msg.subject)

        for subject in subjects_:
            await self.admin.nc.subscribe(subject, cb=take)
        await subscribed(self.admin.nc)

    async def saw(self, subject: str) -> None:
        await wait_for(lambda: subject in self.seen, message=f"{subject} delivered")


@contextlib.asynccontextmanager
async def admin_with_streams(secured: Secured) -> AsyncIterator[Client]:
    async with connected(secured.server, secured.auth.admin()) as admin:
        await omni_nats.ensure_streams(admin.js, streams.ALL_STREAMS)
        yield admin


# -- who gets in ------------------------------------------------------------------------------------
async def test_a_client_without_credentials_is_refused(secured: Secured) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secured.server.url, allow_reconnect=False, error_cb=_quiet)


async def test_a_client_with_an_unknown_key_or_a_wrong_password_is_refused(
    secured: Secured, tmp_path: Path
) -> None:
    stranger = NatsAuth(tmp_path / "elsewhere").service(Role.GATEWAY)  # same name, another key
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            secured.server.url, nkeys_seed=str(stranger.seed_file), allow_reconnect=False, error_cb=_quiet
        )
    app = secured.auth.application()
    wrong = PasswordUser(role=app.role, user=app.user, password="not-it", password_file=app.password_file)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(wrong.url(secured.server.url), allow_reconnect=False, error_cb=_quiet)


async def test_a_runner_of_a_provider_left_out_of_the_authorization_is_refused(secured: Secured) -> None:
    unlisted = secured.auth.service(Role.TOOL_RUNNER, provider="qwen")
    assert "qwen" not in PROVIDERS
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            secured.server.url, nkeys_seed=str(unlisted.seed_file), allow_reconnect=False, error_cb=_quiet
        )


def test_only_services_have_nkeys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="connects with a password"):
        NatsAuth(tmp_path / "creds").service(Role.APPLICATION)


async def _quiet(_: Exception) -> None:
    return None


async def test_omni_connect_authenticates_as_the_identity_in_the_environment(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = secured.auth.service(Role.GATEWAY)
    for name, value in gateway.env().items():
        monkeypatch.setenv(name, value)
    nc = await omni_nats.connect(secured.server.url, "gateway-test")
    try:
        assert nc.new_inbox().startswith(f"{gateway.inbox_prefix}.")
        # Needs the gateway's grants and its inbox: an answer comes only on _INBOX_gateway.
        await omni_nats.ensure_key_value(nc.jetstream(), kv.SECURITY_REVISION)
    finally:
        await nc.close()


async def test_omni_connect_takes_credentials_given_explicitly(secured: Secured) -> None:
    runner = secured.auth.service(Role.TOOL_RUNNER, provider="openrouter")
    credentials = NatsClientSettings(
        nats_nkey_seed_file=str(runner.seed_file), nats_inbox_prefix=runner.inbox_prefix
    )
    nc = await omni_nats.connect(secured.server.url, "runner-test", credentials=credentials)
    try:
        await omni_nats.ensure_streams(nc.jetstream(), (streams.TOOL_WORK, streams.TOOL_RESULTS))
    finally:
        await nc.close()


# -- the application --------------------------------------------------------------------------------
async def test_the_application_publishes_a_trigger_event_that_the_stream_keeps(secured: Secured) -> None:
    async with (
        admin_with_streams(secured) as admin,
        connected(secured.server, secured.auth.application()) as app,
    ):
        ack = await app.js.publish("app.coach.session.start", b'{"text": "hola"}')

        assert ack.stream == streams.APP_EVENTS.name
        stored = await admin.js.get_msg(streams.APP_EVENTS.name, seq=ack.seq)
        assert stored.subject == "app.coach.session.start"
        assert app.refusals == []


async def test_the_application_cannot_forge_a_tool_result(secured: Secured) -> None:
    async with (
        admin_with_streams(secured) as admin,
        connected(secured.server, secured.auth.application()) as app,
    ):
        observer = Observer(admin)
        await observer.watch(subjects.TOOL_RESULT_ALL, subjects.APP_ALL)
        forged = subjects.tool_result("openrouter")

        await app.nc.publish(forged, b'{"success": true, "output": "forged"}')
        await app.nc.publish("app.marker", b"{}")
        await app.refused(forged)
        await observer.saw("app.marker")

        assert forged not in observer.seen
        assert await message_count(admin.js, streams.TOOL_RESULTS) == 0
        # Through JetStream too: no acknowledgement ever comes, and nothing is stored.
        await app.refused_request(app.js.publish(forged, b"{}"), forged)
        assert await message_count(admin.js, streams.TOOL_RESULTS) == 0


async def test_the_application_cannot_make_a_runner_call_a_paid_provider(secured: Secured) -> None:
    async with (
        admin_with_streams(secured) as admin,
        connected(secured.server, secured.auth.application()) as app,
    ):
        observer = Observer(admin)
        await observer.watch(subjects.TOOL_INVOKE_ALL, subjects.APP_ALL)
        invoke = subjects.tool_invoke("openrouter")

        await app.nc.publish(invoke, b'{"tool": "llm.chat", "input": {"prompt": "spend"}}')
        await app.nc.publish("app.marker", b"{}")
        await app.refused(invoke)
        await observer.saw("app.marker")

        assert invoke not in observer.seen
        assert await message_count(admin.js, streams.TOOL_WORK) == 0


async def test_the_application_cannot_follow_runs_nor_reach_the_jetstream_api(secured: Secured) -> None:
    async with (
        admin_with_streams(secured) as admin,
        connected(secured.server, secured.auth.application()) as app,
    ):
        got: list[str] = []

        async def take(msg: Msg) -> None:
            got.append(msg.subject)

        await app.nc.subscribe(subjects.RUN_EVENTS_ALL, cb=take)
        await app.refused(subjects.RUN_EVENTS_ALL)
        marker = "_INBOX.marker"
        await app.nc.subscribe(marker, cb=take)
        await subscribed(app.nc)
        notice = subjects.run_event("r1", "run.completed")
        await admin.nc.publish(notice, b"{}")
        await admin.nc.publish(marker, b"")
        await wait_for(lambda: marker in got, message="the marker delivered")
        assert notice not in got

        delete = js_api("STREAM", "DELETE", streams.APP_EVENTS.name)
        await app.refused_request(app.js.delete_stream(streams.APP_EVENTS.name), delete)
        assert (await admin.js.stream_info(streams.APP_EVENTS.name)).config.name == streams.APP_EVENTS.name
        spy = js_api("CONSUMER", "CREATE", streams.TOOL_WORK.name)
        await app.refused_request(app.js.add_consumer(streams.TOOL_WORK.name, ConsumerConfig()), spy)


async def test_no_other_identity_hears_a_services_replies(secured: Secured) -> None:
    gateway_inbox = f"{inbox_prefix(Role.GATEWAY)}.>"
    runner = secured.auth.service(Role.TOOL_RUNNER, provider="openrouter")
    async with (
        connected(secured.server, secured.auth.application()) as app,
        connected(secured.server, runner) as openrouter,
    ):
        for client in (app, openrouter):
            await client.nc.subscribe(gateway_inbox)
            await client.refused(gateway_inbox)
        await app.nc.subscribe("_INBOX.>")  # its own: every reply to the application
        await openrouter.nc.subscribe("_INBOX.>")
        await openrouter.refused("_INBOX.>")
        await subscribed(app.nc)
        assert not any("_INBOX.>" in r for r in app.refusals)


# -- the tool-runner ----------------------------------------------------------------------------------
async def test_a_runner_cannot_publish_another_providers_result_nor_an_invoke(secured: Secured) -> None:
    runner = secured.auth.service(Role.TOOL_RUNNER, provider="openrouter")
    async with admin_with_streams(secured) as admin, connected(secured.server, runner) as openrouter:
        observer = Observer(admin)
        await observer.watch("omni.tool.>")
        own, other, invoke = (
            subjects.tool_result("openrouter"),
            subjects.tool_result("gemini"),
            subjects.tool_invoke("x"),
        )

        await openrouter.nc.publish(other, b"{}")
        await openrouter.nc.publish(invoke, b"{}")
        await openrouter.nc.publish(own, b"{}")
        await openrouter.refused(other)
        await openrouter.refused(invoke)
        await observer.saw(own)

        assert other not in observer.seen
        assert invoke not in observer.seen


async def test_a_runner_pulls_its_own_durable_and_publishes_its_result(secured: Secured) -> None:
    runner = secured.auth.service(Role.TOOL_RUNNER, provider="openrouter")
    async with (
        connected(secured.server, secured.auth.service(Role.ENGINE)) as engine,
        connected(secured.server, runner) as openrouter,
    ):
        await omni_nats.ensure_streams(engine.js, ENGINE_STREAMS)
        await omni_nats.ensure_streams(
            openrouter.js, (streams.TOOL_WORK, streams.TOOL_RESULTS, streams.DEADLETTERS)
        )
        await publish(
            engine.js,
            subjects.tool_invoke("openrouter"),
            b"{}",
            msg_id="r1:s1:1",
            stream=streams.TOOL_WORK.name,
        )

        work = await pull_one(openrouter.js, openrouter.nc, streams.tool_runner_consumer("openrouter"))
        await work.in_progress()
        result = await publish(
            openrouter.js,
            subjects.tool_result("openrouter"),
            b"{}",
            msg_id="r1:s1:1",
            stream=streams.TOOL_RESULTS.name,
        )
        await work.ack_sync()

        assert result.stream == streams.TOOL_RESULTS.name
        assert await message_count(engine.js, streams.TOOL_WORK) == 0  # acknowledged: off the work queue
        assert openrouter.refusals == []


async def test_a_runner_cannot_point_its_durable_at_another_providers_work(secured: Secured) -> None:
    runner = secured.auth.service(Role.TOOL_RUNNER, provider="openrouter")
    own = streams.tool_runner_consumer("openrouter")
    async with admin_with_streams(secured), connected(secured.server, runner) as openrouter:
        stolen = pinned(own).evolve(filter_subject=subjects.tool_invoke("gemini"))
        create = js_api("CONSUMER", "CREATE", own.stream, own.durable, subjects.tool_invoke("gemini"))
        await openrouter.refused_request(openrouter.js.add_consumer(own.stream, stolen), create)

        # The legacy form names no filter, so it is not granted at all.
        legacy = js_api("CONSUMER", "DURABLE", "CREATE", own.stream, own.durable)
        await openrouter.nc.publish(legacy, b"{}")
        await openrouter.refused(legacy)

        other = streams.tool_runner_consumer("gemini")
        next_ = js_api("CONSUMER", "MSG", "NEXT", other.stream, other.durable)
        await openrouter.nc.publish(next_, b"{}")
        await openrouter.refused(next_)


async def test_a_runner_writes_its_own_providers_keys_and_the_shared_results(secured: Secured) -> None:
    runner = secured.auth.service(Role.TOOL_RUNNER, provider="openrouter")
    async with connected(secured.server, runner) as openrouter:
        registry = await omni_nats.ensure_key_value(openrouter.js, kv.TOOL_REGISTRY)
        await registry.put(registry_key("openrouter", "stt.transcribe", "r1"), b"{}")
        results = await omni_nats.ensure_key_value(openrouter.js, kv.TOOL_RESULTS)
        await results.put("a" * 64, b"stored")
        assert (await results.get("a" * 64)).value == b"stored"  # a direct get

        theirs = registry_key("gemini", "stt.transcribe", "r1")
        await openrouter.refused_request(registry.put(theirs, b"{}"), f"$KV.{kv.TOOL_REGISTRY.name}.{theirs}")


# -- the engine -----------------------------------------------------------------------------------------
async def test_the_engine_provisions_its_streams_takes_a_trigger_and_dispatches_work(
    secured: Secured,
) -> None:
    async with (
        connected(secured.server, secured.auth.service(Role.ENGINE)) as engine,
        connected(secured.server, secured.auth.service(Role.GATEWAY)) as gateway,
        connected(secured.server, secured.auth.application()) as app,
    ):
        await omni_nats.ensure_streams(engine.js, ENGINE_STREAMS)  # creates them: the server is new
        await omni_nats.ensure_streams(engine.js, ENGINE_STREAMS)  # and brings them to the spec
        await app.js.publish("app.coach.session.start", b"{}")

        trigger = await pull_one(engine.js, engine.nc, streams.ENGINE_TRIGGERS)
        await trigger.ack_sync()
        notices: list[str] = []

        async def take(msg: Msg) -> None:
            notices.append(msg.subject)

        await gateway.nc.subscribe(subjects.run_events_of("r1"), cb=take)
        await subscribed(gateway.nc)
        invoke = await publish(
            engine.js,
            subjects.tool_invoke("openrouter"),
            b"{}",
            msg_id="r1:s1:1",
            stream=streams.TOOL_WORK.name,
        )
        await engine.nc.publish(subjects.run_event("r1", "step.scheduled"), b"{}")
        letter = deadletters.dead_letter(
            "trigger.rejected",
            "test",
            original_subject="app.x",
            original=b"{}",
            stream_seq=1,
            source="engine",
        )
        await publish(
            engine.js, letter.subject, letter.body, msg_id=letter.msg_id, stream=streams.DEADLETTERS.name
        )
        await engine.js.add_consumer(streams.TOOL_RESULTS.name, pinned(streams.ENGINE_RESULTS))
        with pytest.raises(NotFoundError):  # an answer, not a refusal: the timers may read results
            await engine.js.get_msg(
                streams.TOOL_RESULTS.name, seq=1, next=True, subject=subjects.TOOL_RESULT_ALL
            )

        assert invoke.stream == streams.TOOL_WORK.name
        await wait_for(
            lambda: notices == [subjects.run_event("r1", "step.scheduled")], message="the run notice"
        )
        assert engine.refusals == []


# -- the gateway and the services it asks -----------------------------------------------------------------
async def test_the_gateway_calls_the_engine_and_the_security_service(secured: Secured) -> None:
    async with (
        connected(secured.server, secured.auth.service(Role.ENGINE)) as engine,
        connected(secured.server, secured.auth.service(Role.SECURITY)) as security,
        connected(secured.server, secured.auth.service(Role.GATEWAY)) as gateway,
        connected(secured.server, secured.auth.admin()) as admin,
    ):
        service = await add_service(engine.nc, name=subjects.ENGINE_SERVICE_NAME, version="0.0.1")

        async def runs_get(request: Request) -> None:
            await request.respond(b'{"result": "run"}')

        await service.add_endpoint(name="runs-get", subject=subjects.ENGINE_RUNS_GET, handler=runs_get)

        async def authenticate(msg: Msg) -> None:
            await msg.respond(b'{"result": "identity"}')

        await security.nc.subscribe(
            subjects.SECURITY_AUTHENTICATE, queue=subjects.SECURITY_SERVICE_NAME, cb=authenticate
        )
        await subscribed(engine.nc)
        await subscribed(security.nc)

        run = await gateway.nc.request(subjects.ENGINE_RUNS_GET, b"{}", timeout=5)
        identity = await gateway.nc.request(subjects.SECURITY_AUTHENTICATE, b"{}", timeout=5)
        ping = await admin.nc.request(f"$SRV.PING.{subjects.ENGINE_SERVICE_NAME}", b"", timeout=5)

        assert run.data == b'{"result": "run"}'
        assert identity.data == b'{"result": "identity"}'
        assert b"workflow-engine" in ping.data
        assert run.subject.startswith(f"{inbox_prefix(Role.GATEWAY)}.")
        await service.stop()
        assert engine.refusals == security.refusals == gateway.refusals == []


async def test_the_gateway_reads_the_buckets_runners_and_the_security_service_write(secured: Secured) -> None:
    runner = secured.auth.service(Role.TOOL_RUNNER, provider="openrouter")
    async with (
        connected(secured.server, runner) as openrouter,
        connected(secured.server, secured.auth.service(Role.SECURITY)) as security,
        connected(secured.server, secured.auth.service(Role.GATEWAY)) as gateway,
    ):
        registry = await omni_nats.ensure_key_value(openrouter.js, kv.TOOL_REGISTRY)
        key = registry_key("openrouter", "stt.transcribe", "r1")
        await registry.put(key, b"{}")
        health = await omni_nats.ensure_key_value(openrouter.js, kv.PROVIDER_HEALTH)
        await health.put("openrouter.r1", b"{}")
        revision = await omni_nats.ensure_key_value(security.js, kv.SECURITY_REVISION)

        tools = await omni_nats.read_latest(await gateway.js.key_value(kv.TOOL_REGISTRY.name))
        providers = await omni_nats.read_latest(await gateway.js.key_value(kv.PROVIDER_HEALTH.name))
        watched = await omni_nats.watch(
            await omni_nats.ensure_key_value(gateway.js, kv.SECURITY_REVISION), ">"
        )
        try:
            # Empty so far: the watch says so, then delivers the change.
            assert await watched.updates(timeout=5) is None  # type: ignore[no-untyped-call]
            await revision.put("revision", b"1")
            changed = await watched.updates(timeout=5)  # type: ignore[no-untyped-call]
        finally:
            await omni_nats.stop_watch(watched)

        assert [entry.key for entry in tools] == [key]
        assert [entry.key for entry in providers] == ["openrouter.r1"]
        assert changed is not None
        assert changed.key == "revision"
        await gateway.refused_request(revision_put(gateway, "2"), f"$KV.{kv.SECURITY_REVISION.name}.revision")
        assert gateway.refusals[:-1] == []


async def revision_put(client: Client, value: str) -> None:
    bucket = await client.js.key_value(kv.SECURITY_REVISION.name)
    await bucket.put("revision", value.encode())


async def test_the_gateway_invokes_directly_and_manages_dead_letters(secured: Secured) -> None:
    async with (
        admin_with_streams(secured) as admin,
        connected(secured.server, secured.auth.service(Role.GATEWAY)) as gateway,
    ):
        letter = deadletters.dead_letter(
            "tool.invoke.malformed",
            "test",
            original_subject=subjects.tool_invoke("openrouter"),
            original=b"{}",
            stream_seq=7,
            source="tool-runner-openrouter",
        )
        stored = await publish(admin.js, letter.subject, letter.body, msg_id=letter.msg_id)

        info = await gateway.js.stream_info(streams.DEADLETTERS.name)
        read = await gateway.js.get_msg(streams.DEADLETTERS.name, seq=stored.seq)
        redriven = await publish(
            gateway.js, subjects.tool_invoke("openrouter"), b"{}", msg_id="redrive:1", envelope=False
        )
        await gateway.js.delete_msg(streams.DEADLETTERS.name, stored.seq)
        queued = await gateway.js.get_msg(streams.TOOL_WORK.name, seq=redriven.seq)
        await publish(
            gateway.js, "app.coach.session.start", b"{}", msg_id="e1", stream=streams.APP_EVENTS.name
        )
        await publish(gateway.js, subjects.audit("gateway"), b"{}", msg_id="a1", stream=streams.AUDIT.name)

        assert info.state.messages == 1
        assert read.subject == letter.subject
        assert queued.subject == subjects.tool_invoke("openrouter")
        assert await message_count(admin.js, streams.DEADLETTERS) == 0
        assert gateway.refusals == []


# -- the security-service -----------------------------------------------------------------------------------
async def test_the_security_service_takes_every_services_audit_events(secured: Secured) -> None:
    runner = secured.auth.service(Role.TOOL_RUNNER, provider="openrouter")
    async with (
        connected(secured.server, secured.auth.service(Role.SECURITY)) as security,
        connected(secured.server, secured.auth.service(Role.GATEWAY)) as gateway,
        connected(secured.server, runner) as openrouter,
    ):
        await omni_nats.ensure_streams(security.js, (streams.AUDIT,))
        await gateway.js.publish(subjects.audit("gateway"), b"{}")
        await openrouter.js.publish(subjects.audit(runner.name), b"{}")

        first = await pull_one(security.js, security.nc, streams.SECURITY_AUDIT)
        await first.ack_sync()
        second = await pull_one(security.js, security.nc, streams.SECURITY_AUDIT)
        await second.ack_sync()

        assert {first.subject, second.subject} == {subjects.audit("gateway"), subjects.audit(runner.name)}
        impersonated = subjects.audit(subjects.SECURITY_SERVICE_NAME)
        await gateway.nc.publish(impersonated, b"{}")
        await gateway.refused(impersonated)
        assert security.refusals == []


# -- the credentials themselves ------------------------------------------------------------------------------
def test_credentials_are_made_once_readable_by_their_owner_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = NatsAuth.in_home(home)
    engine = first.service(Role.ENGINE)
    app = first.application()
    again = NatsAuth.in_home(home)

    assert again.service(Role.ENGINE) == engine
    assert again.application().password == app.password
    assert again.service(Role.GATEWAY).public_key != engine.public_key
    assert stat.S_IMODE(engine.seed_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(app.password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(engine.seed_file.parent.stat().st_mode) == 0o700
    assert engine.env() == {
        "OMNI_NATS_NKEY_SEED_FILE": str(engine.seed_file),
        "OMNI_NATS_INBOX_PREFIX": inbox_prefix(Role.ENGINE),
    }


def test_a_secret_left_readable_by_others_is_made_private_again(tmp_path: Path) -> None:
    auth = NatsAuth(tmp_path / "creds")
    seed_file = auth.service(Role.GATEWAY).seed_file
    os.chmod(seed_file, 0o644)

    auth.service(Role.GATEWAY)

    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600


def test_a_file_that_holds_no_seed_is_named_rather_than_used(tmp_path: Path) -> None:
    auth = NatsAuth(tmp_path / "creds")
    seed_file = auth.service(Role.GATEWAY).seed_file
    seed_file.write_text("not a seed\n")

    with pytest.raises(ValueError, match=r"gateway\.nk holds no NKey seed"):
        auth.service(Role.GATEWAY)


def test_the_application_url_carries_its_password_to_every_server(tmp_path: Path) -> None:
    app = NatsAuth(tmp_path / "creds").application()

    url = app.url("nats://127.0.0.1:4222, nats://old:x@10.0.0.2:4223")

    assert url == f"nats://app:{app.password}@127.0.0.1:4222,nats://app:{app.password}@10.0.0.2:4223"


def test_the_server_configuration_is_readable_by_its_owner_only(secured: Secured) -> None:
    assert stat.S_IMODE(secured.server.config_path.stat().st_mode) == 0o600
    assert secured.auth.application().password in secured.server.config_path.read_text()
