"""The NATS grants per role: who may forge what, and what each service still may do."""

from __future__ import annotations

import pytest
from omni_contract import kv, streams, subjects
from omni_contract.declared import DECLARED_PROVIDER
from omni_contract.permissions import (
    MOCK_PROVIDER,
    ROLES,
    SERVICE_ROLES,
    Permissions,
    Role,
    acks,
    covers,
    durable_consumer,
    identity,
    inbox_prefix,
    js_api,
    kv_stream,
    kv_subject,
    permissions_for,
    provider_keys,
)

APP = permissions_for(Role.APPLICATION)
GATEWAY = permissions_for(Role.GATEWAY)
ENGINE = permissions_for(Role.ENGINE)
SECURITY = permissions_for(Role.SECURITY)
OPENROUTER = permissions_for(Role.TOOL_RUNNER, provider="openrouter")
SERVICES = {
    "gateway": GATEWAY,
    "engine": ENGINE,
    "security": SECURITY,
    "runner-openrouter": OPENROUTER,
    "runner-integrations": permissions_for(Role.TOOL_RUNNER, provider=DECLARED_PROVIDER),
    "runner-mock": permissions_for(Role.TOOL_RUNNER, provider=MOCK_PROVIDER),
}
NON_ADMIN = {"application": APP, **SERVICES}


def publishers(subject: str) -> set[str]:
    return {name for name, grant in NON_ADMIN.items() if grant.may_publish(subject)}


# -- wildcard matching ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "subject", "covered"),
    [
        ("app.>", "app.coach.session.start", True),
        ("app.>", "app", False),
        ("app.>", "app.>", True),
        ("omni.run.*.x", "omni.run.r1.x", True),
        ("omni.run.*.x", "omni.run.r1.y", False),
        ("omni.run.*.x", "omni.run.*.x", True),
        ("omni.run.*.x", "omni.run.>", False),
        ("omni.tool.result.a", "omni.tool.result.*", False),
        ("a.b", "a.b.c", False),
    ],
)
def test_a_grant_covers_exactly_the_subjects_its_wildcards_match(
    pattern: str, subject: str, covered: bool
) -> None:
    assert covers(pattern, subject) is covered


# -- the properties that matter ---------------------------------------------------------------------
def test_an_application_may_publish_trigger_events_and_nothing_of_omni() -> None:
    assert APP.may_publish("app.coach.session.start")
    for forged in (
        subjects.tool_result("openrouter"),
        subjects.tool_invoke("openrouter"),
        subjects.run_event("r1", "run.completed"),
        subjects.ENGINE_RUNS_START,
        subjects.SECURITY_AUTHENTICATE,
        subjects.audit("gateway"),
        subjects.deadletter("x"),
        kv_subject(kv.SECURITY_REVISION, "revision"),
        js_api("STREAM", "DELETE", streams.APP_EVENTS.name),
        js_api("CONSUMER", "CREATE", streams.TOOL_WORK.name),
        js_api("STREAM", "MSG", "GET", streams.TOOL_WORK.name),
    ):
        assert not APP.may_publish(forged), forged
    assert not APP.allow_responses


def test_an_application_may_hear_only_replies_on_the_default_inbox() -> None:
    assert APP.may_subscribe("_INBOX.abc.def")
    for watched in ("omni.>", subjects.RUN_EVENTS_ALL, subjects.TOOL_RESULT_ALL, "app.>", ">"):
        assert not APP.may_subscribe(watched), watched
    for service in SERVICE_ROLES:
        provider = "openrouter" if service is Role.TOOL_RUNNER else None
        assert not APP.may_subscribe(f"{inbox_prefix(service, provider=provider)}.abc")


def test_a_runner_publishes_only_its_own_providers_results() -> None:
    assert OPENROUTER.may_publish(subjects.tool_result("openrouter"))
    assert not OPENROUTER.may_publish(subjects.tool_result("gemini"))
    assert not OPENROUTER.may_publish(subjects.tool_invoke("openrouter"))
    assert not OPENROUTER.may_publish(subjects.tool_invoke("x"))
    assert not OPENROUTER.may_publish(subjects.run_event("r1", "run.completed"))


def test_only_the_engine_and_the_gateway_invoke_tools() -> None:
    assert publishers(subjects.tool_invoke("openrouter")) == {"engine", "gateway"}
    assert publishers(subjects.tool_invoke("gemini")) == {"engine", "gateway"}


def test_only_the_engine_publishes_run_notices() -> None:
    assert publishers(subjects.run_event("r1", "run.completed")) == {"engine"}


def test_a_providers_results_come_from_its_runner_or_a_gateway_redrive() -> None:
    assert publishers(subjects.tool_result("openrouter")) == {"runner-openrouter", "gateway"}
    assert publishers(subjects.tool_result(DECLARED_PROVIDER)) == {"runner-integrations", "gateway"}


def test_each_service_audits_under_its_own_name_only() -> None:
    assert publishers(subjects.audit("gateway")) == {"gateway"}
    assert publishers(subjects.audit(subjects.ENGINE_SERVICE_NAME)) == {"engine"}
    assert publishers(subjects.audit(subjects.SECURITY_SERVICE_NAME)) == {"security"}
    assert publishers(subjects.audit(identity(Role.TOOL_RUNNER, provider="openrouter"))) == {
        "runner-openrouter"
    }


def test_only_the_gateway_and_the_engine_ask_the_security_service_and_only_it_serves() -> None:
    assert publishers(subjects.SECURITY_AUTHENTICATE) == {"gateway", "engine"}
    servers = {name for name, grant in NON_ADMIN.items() if grant.may_subscribe(subjects.SECURITY_RPC_ALL)}
    assert servers == {"security"}


def test_only_the_gateway_calls_the_engine_and_only_the_engine_serves() -> None:
    assert publishers(subjects.ENGINE_RUNS_START) == {"gateway"}
    servers = {name for name, grant in NON_ADMIN.items() if grant.may_subscribe(subjects.ENGINE_RUNS_START)}
    assert servers == {"engine"}


def test_only_the_security_service_writes_its_revision() -> None:
    assert publishers(kv_subject(kv.SECURITY_REVISION, "revision")) == {"security"}


# -- the JetStream API ------------------------------------------------------------------------------
def test_no_one_but_the_admin_may_delete_streams_or_consumers_of_work() -> None:
    for spec in streams.ALL_STREAMS:
        assert publishers(js_api("STREAM", "DELETE", spec.name)) == set()
        assert publishers(js_api("STREAM", "PURGE", spec.name)) == set()
    for durable in (streams.ENGINE_TRIGGERS, streams.ENGINE_RESULTS, streams.SECURITY_AUDIT):
        assert publishers(js_api("CONSUMER", "DELETE", durable.stream, durable.durable)) == set()
    assert permissions_for(Role.ADMIN).may_publish(js_api("STREAM", "DELETE", streams.AUDIT.name))


def test_nobody_may_create_a_consumer_of_its_choosing_on_a_work_stream() -> None:
    for spec in (streams.TOOL_WORK, streams.TOOL_RESULTS, streams.APP_EVENTS, streams.AUDIT):
        ephemeral = js_api("CONSUMER", "CREATE", spec.name)
        assert publishers(ephemeral) == set(), spec.name
        assert publishers(js_api("CONSUMER", "DURABLE", "CREATE", spec.name, "mine")) == set()


def test_a_runners_durable_can_be_created_only_with_its_own_providers_filter() -> None:
    own = streams.tool_runner_consumer("openrouter")
    other = streams.tool_runner_consumer("gemini")
    create = js_api("CONSUMER", "CREATE", own.stream, own.durable)
    assert OPENROUTER.may_publish(f"{create}.{subjects.tool_invoke('openrouter')}")
    assert not OPENROUTER.may_publish(f"{create}.{subjects.tool_invoke('gemini')}")
    assert not OPENROUTER.may_publish(f"{create}.{subjects.TOOL_INVOKE_ALL}")
    assert not OPENROUTER.may_publish(create)  # no filter in the subject: any filter in the request
    assert not OPENROUTER.may_publish(js_api("CONSUMER", "DURABLE", "CREATE", own.stream, own.durable))
    assert not OPENROUTER.may_publish(js_api("CONSUMER", "MSG", "NEXT", other.stream, other.durable))
    assert not OPENROUTER.may_publish(f"{acks(other).removesuffix('>')}1.2.3.4.5")


def test_each_durable_is_pulled_and_acknowledged_by_its_consumer_only() -> None:
    for durable, holder in (
        (streams.ENGINE_TRIGGERS, "engine"),
        (streams.ENGINE_RESULTS, "engine"),
        (streams.SECURITY_AUDIT, "security"),
        (streams.tool_runner_consumer("openrouter"), "runner-openrouter"),
    ):
        for subject in durable_consumer(durable):
            if subject.endswith(">"):
                subject = subject.removesuffix(">") + "x"
            assert publishers(subject) == {holder}, subject


def test_a_runner_writes_only_its_providers_keys_of_shared_buckets() -> None:
    assert OPENROUTER.may_publish(kv_subject(kv.TOOL_REGISTRY, "openrouter.stt.transcribe.r1"))
    assert not OPENROUTER.may_publish(kv_subject(kv.TOOL_REGISTRY, "gemini.stt.transcribe.r1"))
    assert OPENROUTER.may_publish(kv_subject(kv.PROVIDER_HEALTH, "openrouter.r1"))
    assert not OPENROUTER.may_publish(kv_subject(kv.PROVIDER_HEALTH, "gemini.r1"))
    assert OPENROUTER.may_publish(kv_subject(kv.CIRCUITS, "openrouter"))
    assert not OPENROUTER.may_publish(kv_subject(kv.CIRCUITS, "gemini"))
    assert OPENROUTER.may_publish(kv_subject(kv.RATE_LIMITS, "openrouter.requests.123"))
    assert not OPENROUTER.may_publish(kv_subject(kv.RATE_LIMITS, "gemini.requests.123"))
    assert not OPENROUTER.may_publish(kv_subject(kv.DECLARED_TOOLS, "github.create_issue"))
    assert not OPENROUTER.may_publish(kv_subject(kv.SECURITY_REVISION, "revision"))


def test_provider_keys_follow_the_contracts_key_pattern() -> None:
    assert provider_keys(kv.TOOL_REGISTRY, "openrouter") == ("openrouter.*.*.*",)
    assert provider_keys(kv.PROVIDER_HEALTH, "openrouter") == ("openrouter.*",)
    with pytest.raises(ValueError, match="do not start with the provider"):
        provider_keys(kv.DECLARED_TOOLS, "openrouter")


def test_only_the_integrations_runner_and_the_gateway_write_declared_tools() -> None:
    assert publishers(kv_subject(kv.DECLARED_TOOLS, "github.create_issue")) == {
        "gateway",
        "runner-integrations",
    }


def test_only_the_mock_runner_among_services_reads_the_mock_rules() -> None:
    info = js_api("STREAM", "INFO", kv_stream(kv.MOCK_RULES))
    assert publishers(info) == {"runner-mock"}


# -- what each service needs --------------------------------------------------------------------------
def test_every_service_may_look_at_every_omni_stream_and_answer_discovery() -> None:
    for name, grant in SERVICES.items():
        assert grant.allow_responses, name
        for spec in streams.ALL_STREAMS:
            assert grant.may_publish(js_api("STREAM", "INFO", spec.name)), (name, spec.name)
        assert grant.may_subscribe("$SRV.PING")


def test_a_service_registers_for_discovery_under_its_own_name_only() -> None:
    assert ENGINE.may_subscribe(f"$SRV.INFO.{subjects.ENGINE_SERVICE_NAME}.abc")
    assert not ENGINE.may_subscribe(f"$SRV.INFO.{subjects.SECURITY_SERVICE_NAME}")
    assert not ENGINE.may_subscribe("$SRV.>")


@pytest.mark.parametrize(
    ("role", "provider", "stream"),
    [
        (Role.ENGINE, None, streams.APP_EVENTS),
        (Role.ENGINE, None, streams.TOOL_RESULTS),
        (Role.ENGINE, None, streams.TOOL_WORK),
        (Role.ENGINE, None, streams.RUN_EVENTS),
        (Role.ENGINE, None, streams.DEADLETTERS),
        (Role.GATEWAY, None, streams.APP_EVENTS),
        (Role.GATEWAY, None, streams.AUDIT),
        (Role.GATEWAY, None, streams.DEADLETTERS),
        (Role.TOOL_RUNNER, "openrouter", streams.TOOL_WORK),
        (Role.TOOL_RUNNER, "openrouter", streams.TOOL_RESULTS),
        (Role.SECURITY, None, streams.AUDIT),
    ],
)
def test_a_service_may_provision_the_streams_it_writes_or_reads(
    role: Role, provider: str | None, stream: streams.StreamSpec
) -> None:
    grant = permissions_for(role, provider=provider)
    for verb in ("INFO", "CREATE", "UPDATE"):
        assert grant.may_publish(js_api("STREAM", verb, stream.name))


def test_a_runner_may_not_reconfigure_the_streams_it_does_not_use() -> None:
    for spec in (streams.AUDIT, streams.APP_EVENTS, streams.RUN_EVENTS):
        assert not OPENROUTER.may_publish(js_api("STREAM", "UPDATE", spec.name))
        assert not OPENROUTER.may_publish(js_api("STREAM", "CREATE", spec.name))


def test_each_service_hears_replies_on_its_own_inbox_only() -> None:
    prefixes = {}
    for role in SERVICE_ROLES:
        provider = "openrouter" if role is Role.TOOL_RUNNER else None
        grant = permissions_for(role, provider=provider)
        prefix = inbox_prefix(role, provider=provider)
        prefixes[role] = prefix
        assert grant.may_subscribe(f"{prefix}.abc.def")
        assert not grant.may_subscribe("_INBOX.>")
        assert not grant.may_subscribe("_INBOX.abc")
    assert len(set(prefixes.values())) == len(prefixes)
    assert not OPENROUTER.may_subscribe(f"{inbox_prefix(Role.TOOL_RUNNER, provider='gemini')}.abc")


def test_a_service_may_publish_on_no_inbox_but_answers_through_allowed_responses() -> None:
    for name, grant in SERVICES.items():
        assert not grant.may_publish("_INBOX.abc.def"), name
        assert not any(grant.may_publish(f"{inbox_prefix(role)}.abc") for role in (Role.GATEWAY, Role.ENGINE))


# -- the identities -----------------------------------------------------------------------------------
def test_identities_are_the_service_names() -> None:
    assert identity(Role.ENGINE) == subjects.ENGINE_SERVICE_NAME
    assert identity(Role.SECURITY) == subjects.SECURITY_SERVICE_NAME
    assert (
        identity(Role.TOOL_RUNNER, provider="openrouter")
        == streams.tool_runner_consumer("openrouter").durable
    )
    assert identity("gateway") == "gateway"


def test_a_runners_grants_need_its_provider_and_no_other_role_takes_one() -> None:
    with pytest.raises(ValueError, match="one provider"):
        permissions_for(Role.TOOL_RUNNER)
    with pytest.raises(ValueError, match="has no provider"):
        permissions_for(Role.GATEWAY, provider="openrouter")
    with pytest.raises(ValueError, match="not a valid Role"):
        permissions_for("provider-simulator")  # HTTP only: no NATS role


def test_every_role_has_grants() -> None:
    for role in ROLES:
        grant = permissions_for(role, provider="openrouter" if role is Role.TOOL_RUNNER else None)
        assert isinstance(grant, Permissions)
        assert grant.publish
        assert grant.subscribe
