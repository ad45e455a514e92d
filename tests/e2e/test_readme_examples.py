"""Every command of the README's "Try it" section, run as written against the whole stack.

The commands are read from README.md itself (the fenced bash block under "## Try it") and run with
bash and the real curl, in the README's order: only ``localhost:8080`` (the stack's gateway) and
``<runId>`` (a run the test has) are substituted. Each command must be recognised by one example
below, which checks the answer's status and shape; a README command the test does not know fails
it, and so does an example the README no longer has. So the README and this test cannot drift.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from omni_devstack.supervisor import Stack
from omni_testkit import wait_for

from .stacks import ROOT

README = ROOT / "README.md"
README_HOST = "localhost:8080"
STATUS_MARK = "__omni_http_status__"
# Every curl of a README command also prints the HTTP status on a line of its own, after the body.
CURL_WRAPPER = f"curl() {{ command curl --max-time 120 -w '\\n{STATUS_MARK}%{{http_code}}\\n' \"$@\"; }}\n"

STEPS = [
    "speech_to_text",
    "natural_language_understanding",
    "machine_translation",
    "coach_feedback",
    "text_to_speech",
]
TERMINAL = {"completed", "failed", "cancelled", "timed_out", "budget_exceeded"}


def readme_commands(readme: Path = README) -> list[str]:
    """The shell commands of the fenced bash block in the README's "Try it" section, one string each
    (continuation lines and multi-line quoted arguments kept together; comment lines dropped)."""
    text = readme.read_text()
    assert "\n## Try it\n" in text, "README.md has no '## Try it' section"
    section = text.split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the 'Try it' section has no ```bash block"
    commands: list[str] = []
    pending = ""
    for line in block.group(1).splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line + "\n"
        try:
            shlex.split(pending, comments=True)
        except ValueError:
            continue  # inside a quoted argument that goes on over the next line
        if pending.rstrip().endswith("\\"):
            continue
        commands.append(pending.strip())
        pending = ""
    assert not pending, f"unterminated command in the README's 'Try it' block: {pending!r}"
    return commands


@dataclass
class Answer:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Session:
    """The README's commands against one stack, and what they leave for the commands after them."""

    stack: Stack
    client: httpx.AsyncClient
    run_id: str = ""  # the run the README's execute example started: its ``<runId>``
    seen_runs: set[str] = field(default_factory=set)
    env: dict[str, str] = field(default_factory=dict)  # what the README's export lines set

    async def curl(self, command: str, run_id: str | None = None) -> Answer:
        """Run one README command with bash (from the repository's root), against this stack."""
        assert README_HOST in command, f"a README example that does not call the gateway: {command}"
        host = urlsplit(self.stack.gateway_url).netloc
        script = command.replace(README_HOST, host)
        if "<runId>" in script:
            assert run_id or self.run_id, "an example needs <runId> before any run was started"
            script = script.replace("<runId>", run_id or self.run_id)
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            "set -o pipefail\n" + CURL_WRAPPER + script,
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=150)
        out = stdout.decode()
        assert process.returncode == 0, f"{command}\nexited {process.returncode}: {stderr.decode()}\n{out}"
        body, mark, status = out.rstrip("\n").rpartition(STATUS_MARK)
        assert mark, f"{command}\nprinted no HTTP status: {out!r}"
        return Answer(int(status), body.rstrip("\n"))

    async def run(self, run_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/runs/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        return run

    async def finished(self, run_id: str, timeout: float = 60) -> dict[str, Any]:  # noqa: ASYNC109
        async def done() -> dict[str, Any] | None:
            run = await self.run(run_id)
            return run if run["status"] in TERMINAL else None

        result: dict[str, Any] = await wait_for(done, timeout=timeout, message=f"run {run_id} ended")
        return result

    async def running_run(self) -> str:
        """A bilingual-coach run held up in its first step (the simulator answers it 8 s late)."""
        assert self.stack.sim_url
        fault = {"match": {"schema": "stt_transcribe"}, "delay_ms": 8000, "times": 1}
        async with httpx.AsyncClient(base_url=self.stack.sim_url, timeout=10) as sim:
            (await sim.post("/_sim/faults", json=fault)).raise_for_status()
        payload = {
            "userId": "u-1",
            "sessionId": "to-cancel",
            "sourceLanguage": "en",
            "targetLanguage": "es",
            "audioData": "UklGRiQAAABXQVZFZm10IA==",
        }
        response = await self.client.post(
            "/workflows/bilingual-coach/execute", params={"wait": "false"}, json={"payload": payload}
        )
        assert response.status_code == 202, response.text
        run_id: str = response.json()["runId"]

        async def in_flight() -> bool:
            run = await self.run(run_id)
            return run["status"] == "running" and any(w["kind"] == "step" for w in run.get("waiting", []))

        await wait_for(in_flight, timeout=30, message=f"run {run_id} waits for its first step")
        self.seen_runs.add(run_id)
        return run_id


# -- the examples, each checking one README command's answer ------------------------------------------


async def start_the_stack(s: Session, command: str) -> None:
    # ``make run &``: the ``stack`` fixture is that very Stack, already serving.
    response = await s.client.get("/readyz")
    assert response.status_code == 200, response.text


async def export_the_admin_key(s: Session, command: str) -> None:
    # ``.omni/`` is make run's OMNI_HOME; the stack's is a temporary directory.
    assert s.stack.admin_key_path is not None
    script = command.replace(".omni/admin-key", str(s.stack.admin_key_path)) + '\nprintf %s "$OMNI_KEY"'
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", script, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode() == s.stack.admin_key
    s.env["OMNI_KEY"] = stdout.decode()


async def execute(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status == 200, answer.body
    body = answer.json()
    assert body["status"] == "completed", body
    assert isinstance(body["runId"], str)
    assert body["runId"]
    assert isinstance(body["duration"], int | float)
    assert [step["name"] for step in body["steps"]] == STEPS
    assert all(step["status"] == "completed" for step in body["steps"]), body["steps"]
    assert isinstance(body["output"], dict)
    assert body["output"]
    s.run_id = body["runId"]
    s.seen_runs.add(s.run_id)


async def list_runs(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status == 200, answer.body
    runs = answer.json()["runs"]
    assert 1 <= len(runs) <= 5
    assert all(run["workflow"] == "bilingual-coach" and run["status"] for run in runs)
    assert s.run_id in [run["runId"] for run in runs]


async def run_events(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status == 200, answer.body
    events = answer.json()["events"]
    types = [event["type"] for event in events]
    assert types[0] == "run.started"
    assert types[-1] == "run.completed"
    assert types.count("step.completed") == len(STEPS)
    seqs = [event["seq"] for event in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)


async def stream(s: Session, command: str) -> None:
    # curl returns only because the stream ends after the run's terminal event.
    answer = await s.curl(command)
    assert answer.status == 200, answer.body
    records = []
    for block in answer.body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in fields:
            data = json.loads(fields["data"])
            assert data["runId"] == s.run_id
            assert data["type"] == fields["event"]
            assert str(data["seq"]) == fields["id"]
            records.append(data)
    assert records, answer.body
    assert records[0]["type"] == "run.started"
    assert records[-1]["type"] == "run.completed"


async def cancel(s: Session, command: str) -> None:
    run_id = await s.running_run()
    answer = await s.curl(command, run_id=run_id)
    assert answer.status == 202, answer.body
    body = answer.json()
    assert body["runId"] == run_id
    assert body["status"] in ("running", "compensating", "cancelled"), body
    run = await s.finished(run_id)
    assert run["status"] == "cancelled", run
    events = (await s.client.get(f"/runs/{run_id}/events")).json()["events"]
    reasons = [e["data"].get("reason") for e in events if e["type"] == "run.cancel_requested"]
    assert reasons == ["user left"], events


async def rerun(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status == 202, answer.body
    body = answer.json()
    new_id = body["runId"]
    assert new_id != s.run_id
    assert body["status"]
    s.seen_runs.add(new_id)
    run = await s.finished(new_id)
    assert run["status"] == "completed", run
    assert run["rerunOf"] == s.run_id
    assert run["rerunFromStep"] == "coach_feedback"
    assert [step["name"] for step in run["steps"]] == STEPS


async def deadletters(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status == 200, answer.body
    letters = answer.json()["deadLetters"]
    assert isinstance(letters, list)
    assert len(letters) <= 10
    for letter in letters:
        assert {"id", "kind", "reason", "originalSubject"} <= letter.keys(), letter


async def tools_of_a_category(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status == 200, answer.body
    tools = answer.json()["tools"]
    assert tools
    assert all(tool["category"] == "mt" for tool in tools), tools
    assert ("mt.translate", "openrouter") in {(tool["name"], tool["provider"]) for tool in tools}


async def servers(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status == 200, answer.body
    by_name = {server["name"]: server for server in answer.json()["servers"]}
    assert by_name["openrouter"]["status"] == "healthy", by_name["openrouter"]
    assert all(server["status"] for server in by_name.values())


async def call_a_tool(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status == 200, answer.body
    body = answer.json()
    assert body["success"] is True
    assert (body["tool"], body["provider"]) == ("mt.translate", "openrouter")
    assert body["output"]["translatedText"].startswith("[es]"), body["output"]


async def declared_tool_served(s: Session, name: str) -> dict[str, Any]:
    async def listed() -> dict[str, Any] | None:
        response = await s.client.get("/tools", params={"name": name})
        assert response.status_code == 200, response.text
        tools = [tool for tool in response.json()["tools"] if tool["provider"] == "integrations"]
        return tools[0] if tools else None

    tool: dict[str, Any] = await wait_for(listed, timeout=30, message=f"{name} registered by integrations")
    return tool


async def declare_json(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status in (200, 201), answer.body
    stored = answer.json()
    assert stored["declaration"]["name"] == "status.check"
    assert stored["origin"] == "api"
    assert stored["warnings"] == []  # written in ${...}, not the deprecated {{ ... }}
    tool = await declared_tool_served(s, "status.check")
    assert tool["status"] == "available", tool  # it needs no credential


async def declare_yaml(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status in (200, 201), answer.body
    stored = answer.json()
    assert stored["declaration"]["name"] == "my.create_issue"
    assert stored["declaration"]["request"]["method"] == "POST"
    assert stored["warnings"] == []
    # Served (available, or unavailable naming the missing token) moments later.
    await declared_tool_served(s, "my.create_issue")


async def whoami(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status == 200, answer.body
    me = answer.json()
    assert (me["principal"], me["tenant"], me["roles"]) == ("admin", "default", ["admin"])


async def create_principal(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status == 201, answer.body
    assert (answer.json()["id"], answer.json()["roles"]) == ("wallboard", ["viewer"])


async def create_key(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status == 201, answer.body
    created = answer.json()
    assert created["principal"] == "wallboard"
    assert created["expiresAt"]
    # The new key reads, and may not write.
    headers = {"Authorization": f"Bearer {created['key']}"}
    async with httpx.AsyncClient(base_url=s.stack.gateway_url, headers=headers, timeout=30) as wallboard:
        assert (await wallboard.get("/runs", params={"limit": 1})).status_code == 200
        denied = await wallboard.post("/workflows/bilingual-coach/execute", json={"payload": {}})
        assert denied.status_code == 403, denied.text
        assert denied.json()["error"]["details"] == [
            {"field": "permission", "message": "workflow:execute:bilingual-coach"}
        ]


async def audit(s: Session, command: str) -> None:
    async def logged() -> list[dict[str, Any]] | None:
        answer = await s.curl(command)
        assert answer.status == 200, answer.body
        records: list[dict[str, Any]] = answer.json()["records"]
        return records if records else None

    records = await wait_for(logged, timeout=30, message="authentications in the audit log")
    assert 1 <= len(records) <= 5
    assert all(r["action"].startswith("auth.") for r in records), records
    assert all(len(r["hash"]) == 64 for r in records)


async def verify(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status == 200, answer.body
    verified = answer.json()
    assert verified["ok"] is True, verified
    assert verified["checked"] > 0


async def publish_event(s: Session, command: str) -> None:
    answer = await s.curl(command)
    assert answer.status == 202, answer.body
    accepted = answer.json()
    assert accepted["subject"] == "app.coach.session.start"
    assert accepted["stream"] == "OMNI_APP_EVENTS"
    assert isinstance(accepted["seq"], int)
    assert accepted["id"]
    assert accepted["duplicate"] is False

    async def started() -> str | None:
        response = await s.client.get("/runs", params={"workflow": "bilingual-coach", "limit": 50})
        assert response.status_code == 200, response.text
        for run in response.json()["runs"]:
            if run["runId"] not in s.seen_runs:
                return str(run["runId"])
        return None

    run_id = await wait_for(started, timeout=30, message="a run started by the event")
    run = await s.finished(run_id)
    assert run["status"] == "completed", run
    assert run["payload"]["sessionId"] == "s-2"
    assert [step["status"] for step in run["steps"]] == ["completed"] * len(STEPS)


Example = Callable[[Session, str], Awaitable[None]]

# (a pattern the README command matches, the example that runs and checks it)
EXAMPLES: list[tuple[str, Example]] = [
    (r"^make run &$", start_the_stack),
    (r"^export OMNI_KEY=\$\(cat \.omni/admin-key\)$", export_the_admin_key),
    (r"/workflows/bilingual-coach/execute\b", execute),
    (r"/runs\?workflow=bilingual-coach&limit=5", list_runs),
    (r"/runs/<runId>/events\b", run_events),
    (r"^curl -N \S+/runs/<runId>/stream\b", stream),
    (r"-X POST \S+/runs/<runId>/cancel\b", cancel),
    (r"/runs/<runId>/rerun\b", rerun),
    (r"/deadletters\?limit=10", deadletters),
    (r"/tools\?category=mt", tools_of_a_category),
    (r"/servers'? ", servers),
    (r"/tools/mt/translate/openrouter\b", call_a_tool),
    (r"-X PUT \S+/tools/declarations/status\.check\b", declare_json),
    (r"\S+/tools/declarations/my\.create_issue\b.*application/yaml", declare_yaml),
    (r"/events/app\.coach\.session\.start\b", publish_event),
    (r"/security/whoami\b", whoami),
    (r"/security/principals\b", create_principal),
    (r"/security/keys\b", create_key),
    (r"/security/audit\?", audit),
    (r"/security/audit/verify\b", verify),
]


def example_for(command: str) -> Example:
    flat = " ".join(shlex.split(command.replace("\\\n", " "), comments=True))
    matches = [example for pattern, example in EXAMPLES if re.search(pattern, flat)]
    assert len(matches) == 1, (
        f"README example not recognised by tests/e2e/test_readme_examples.py "
        f"(matched {len(matches)} examples): {command}"
    )
    return matches[0]


# Needs no servers, so it runs with the unit tests too: a README edit fails fast.
def test_each_readme_command_is_recognised_by_exactly_one_example() -> None:
    commands = readme_commands()
    recognised = [example_for(command) for command in commands]
    missing = [example.__name__ for _, example in EXAMPLES if example not in recognised]
    assert not missing, f"examples the README no longer has: {missing}"
    assert len(recognised) == len(set(recognised)), "a README example is given twice"


@pytest.mark.e2e
async def test_every_readme_example_answers_as_documented_in_order(stack: Stack) -> None:
    commands = readme_commands()
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers=stack.auth_headers, timeout=60
    ) as client:
        session = Session(stack, client)
        for command in commands:
            await example_for(command)(session, command)
