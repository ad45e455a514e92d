"""The decision rules of ``progress.Decider``, driven the way ``Engine`` drives them, without servers.

``Run`` stands in for the engine: it starts a run as ``Engine.start_run`` does, feeds tool results,
timers, outside events and cancel requests as ``Engine.on_result``, ``on_timer``, ``on_wait_event``
and ``cancel`` do, and keeps what a store would keep (the events, the timers and waits set, the
tool invocations sent) on a clock the test moves by hand.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
import pytest
from omni_contract.envelope import decode_envelope, payload_of
from omni_contract.events import RunStatus, StepStatus, ToolError, ToolInvoke, ToolResult, Usage
from omni_contract.history import (
    BudgetLimit,
    BudgetUsed,
    CompensationFailure,
    HistoryEvent,
    RunCompensating,
    RunCompleted,
    RunError,
    RunStarted,
    StepCompleted,
    StepError,
    StepEvent,
    StepFallback,
    StepRef,
    StepRetrying,
    StepTimedOut,
    StepWaiting,
    decode_data,
    encode_data,
)
from omni_engine.batch import Batch
from omni_engine.definition import parse_workflow
from omni_engine.progress import Decider
from omni_engine.state import NewEvent, RunState, StepState, TaskState, WaitState, apply
from omni_engine.timer_kinds import AnyTimer, AttemptTimeout, RetryDue, RunDeadline, WaitTimeout

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
RUN_ID = "run1"
H = TypeVar("H", bound=HistoryEvent)

HEADER = """\
name: test
version: "1"
trigger:
  event: app.test.start
  payload:
    text: string
    flag?: boolean
    list?: array
"""


def workflow(body: str) -> str:
    """A definition with the common header; ``body`` holds ``steps:`` and anything else."""
    return HEADER + textwrap.dedent(body)


class Run:
    """One run, moved on as the engine moves it; ``now`` is the clock its decisions read."""

    def __init__(
        self,
        definition: str,
        payload: dict[str, Any] | None = None,
        *,
        rng: float = 0.5,
        context: dict[str, Any] | None = None,
    ) -> None:
        self.spec = parse_workflow(definition)
        self.now = T0
        self.rng = rng
        self.events: list[NewEvent] = []
        self.timers: dict[str, dict[str, Any]] = {}  # name -> {"fire_at", "data": its TimerData}
        self.waits: dict[str, dict[str, Any]] = {}  # step -> {"subject", "key", "match"}
        self.invokes: list[ToolInvoke] = []
        self.last: Batch | None = None

        budget = self.spec.guards.budget if self.spec.guards else None
        deadline = self.now + timedelta(milliseconds=budget.max_ms) if budget and budget.max_ms else None
        started = NewEvent(
            data=RunStarted(
                workflow=self.spec.name,
                hash=self.spec.content_hash,
                version=self.spec.version,
                payload={"text": "hello"} if payload is None else payload,
                context=context or {},
                steps=[StepRef(name=s.name, tool=s.tool) for s in self.spec.steps],
                deadline_at=deadline,
            ),
            at=self.now,
        )
        self.state: RunState = apply(None, RUN_ID, started.data, self.now)
        batch = Batch(self.state, None)
        batch.record(started)
        if deadline is not None:
            batch.effects.timer("deadline", deadline, RunDeadline())
        self._decider(batch).advance()
        self._commit(batch)

    # -- driving ---------------------------------------------------------------------------
    def _decider(self, batch: Batch) -> Decider:
        return Decider(batch, self.spec, self.now, rng=lambda: self.rng)

    def _commit(self, batch: Batch) -> None:
        batch.seal()
        self.last = batch
        self.events.extend(batch.events)
        effects = batch.effects
        if effects.clear_all:
            self.timers.clear()
            self.waits.clear()
        for name in effects.cancel_timers:
            self.timers.pop(name, None)
        for step in effects.cancel_waits:
            self.waits.pop(step, None)
        for timer in effects.timers:
            self.timers[timer["name"]] = {"fire_at": timer["fire_at"], "data": timer["data"]}
        for wait in effects.waits:
            self.waits[wait["step"]] = {k: wait[k] for k in ("subject", "key", "match")}
        for message in batch.outbox:
            if message.durable:
                self.invokes.append(payload_of(decode_envelope(message.body), ToolInvoke))

    def _update(self, change: Callable[[Decider], bool], cancel_timers: tuple[str, ...] = ()) -> bool:
        """``Engine._update`` without the store: False when ``change`` found nothing to do."""
        batch = Batch(self.state, None)
        for name in cancel_timers:
            batch.effects.cancel_timer(name)
        decider = self._decider(batch)
        if self.state.finished or not change(decider):
            return False
        decider.advance()
        self._commit(batch)
        return True

    def _result(self, address: str, attempt: int | None, **fields: Any) -> bool:
        """A ``ToolResult`` for the task's current attempt (or ``attempt``): ``Engine.on_result``."""
        task = self.state.task(address)
        assert task is not None, f"no task {address}"
        attempt = task.attempt if attempt is None else attempt
        result = ToolResult(
            run_id=self.state.run_id,
            step=address,
            attempt=attempt,
            tool="t.t",
            provider=task.provider or "p",
            idempotency_key=f"{self.state.run_id}:{address}:{attempt}",
            runner="test",
            duration_ms=5.0,
            **fields,
        )
        return self._update(
            lambda decider: decider.take_result(result), cancel_timers=(f"timeout:{address}:{attempt}",)
        )

    def complete(
        self,
        address: str,
        output: dict[str, Any] | None = None,
        *,
        tokens: int | None = None,
        cost: float = 0.0,
        attempt: int | None = None,
    ) -> bool:
        """A successful tool result for the task's current attempt (or ``attempt``)."""
        usage = None if tokens is None else Usage(output_tokens=tokens, total_tokens=tokens, cost=cost)
        return self._result(
            address,
            attempt,
            success=True,
            output={"text": f"out-{address}"} if output is None else output,
            usage=usage,
        )

    def fail(self, address: str, kind: str, message: str = "boom", **extra: Any) -> bool:
        """A failed tool result (``ToolError``) for the task's current attempt."""
        return self._result(
            address, None, success=False, error=ToolError(kind=kind, message=message, **extra)
        )

    def fire(self, name: str) -> bool:
        """The durable timer ``name`` fires (the clock moves to its time): ``Engine.on_timer``."""
        timer = self.timers.pop(name)
        self.now = max(self.now, timer["fire_at"])
        data: AnyTimer = timer["data"]
        return self._update(lambda decider: decider.timer_fired(data), cancel_timers=(name,))

    def deliver(self, step: str, data: dict[str, Any]) -> bool:
        """The outside event ``step`` waits for arrives: ``Engine.on_wait_event``."""
        return self._update(
            lambda decider: decider.event_arrived(step, None, data), cancel_timers=(f"wait:{step}",)
        )

    def cancel(self, reason: str = "changed my mind") -> bool:
        return self._update(lambda decider: decider.request_cancel(reason))

    def later(self, ms: float) -> None:
        self.now += timedelta(milliseconds=ms)

    # -- reading ---------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return self.state.status

    def step(self, name: str) -> StepState:
        step = self.state.step(name)
        assert step is not None
        return step

    def task(self, address: str) -> TaskState:
        task = self.state.task(address)
        assert task is not None
        return task

    def of(self, cls: type[H], step: str | None = None) -> list[H]:
        """Every event of class ``cls`` (about ``step``, when given), in order."""
        return [
            e.data
            for e in self.events
            if isinstance(e.data, cls)
            and (step is None or (isinstance(e.data, StepEvent) and e.data.step == step))
        ]

    def invoked(self, address: str | None = None) -> list[ToolInvoke]:
        return [i for i in self.invokes if address is None or i.step == address]

    def in_flight(self) -> list[str]:
        """Addresses sent to a runner whose result has not come in, in dispatch order."""
        return [
            i.step
            for i in self.invokes
            if self.state.task(i.step) is not None
            and self.task(i.step).attempt == i.attempt
            and self.task(i.step).status in (StepStatus.SCHEDULED, StepStatus.RUNNING)
        ]


def statuses(state: RunState) -> dict[str, str]:
    return {s.name: s.status for s in state.steps}


# ---------------------------------------------------------------------------------------------
# The graph


JOIN = workflow(
    """
    steps:
      - name: left
        tool: text.upper
        provider: p1
        input: {text: "${trigger.payload.text}"}
      - name: right
        tool: text.lower
        provider: p1
        input: {text: "${trigger.payload.text}"}
      - name: join
        tool: text.concat
        provider: p1
        input: {a: "${steps.left.output.text}", b: "${steps.right.output.text}"}
    """
)


def test_independent_steps_are_dispatched_together_and_a_join_waits_for_both() -> None:
    run = Run(JOIN)
    assert run.in_flight() == ["left", "right"]
    assert run.step("join").status == StepStatus.PENDING

    run.complete("right", {"text": "r"})
    assert run.in_flight() == ["left"]
    assert run.step("join").status == StepStatus.PENDING

    run.complete("left", {"text": "L"})
    assert run.in_flight() == ["join"]
    assert run.invoked("join")[0].input == {"a": "L", "b": "r"}

    run.complete("join", {"text": "Lr"})
    assert run.status == RunStatus.COMPLETED
    assert run.of(RunCompleted)[0].output == {
        "left": {"text": "L"},
        "right": {"text": "r"},
        "join": {"text": "Lr"},
    }


def test_needs_orders_steps_that_share_no_data() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: first
                tool: text.echo
                provider: p1
              - name: second
                tool: text.echo
                provider: p1
                needs: first
              - name: free
                tool: text.echo
                provider: p1
            """
        )
    )
    assert run.in_flight() == ["first", "free"]
    run.complete("free")
    assert run.in_flight() == ["first"]
    run.complete("first")
    assert run.in_flight() == ["second"]


def test_a_step_that_needs_a_failed_step_is_skipped_and_the_run_fails() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: first
                tool: text.echo
                provider: p1
              - name: second
                tool: text.echo
                provider: p1
                needs: first
            """
        )
    )
    run.fail("first", "bad_request", "no")
    assert run.status == RunStatus.FAILED
    assert run.state.error is not None
    assert run.state.error.step == "first"
    assert run.state.error.kind == "bad_request"
    assert run.step("second").status == StepStatus.SKIPPED
    assert run.invoked("second") == []


# ---------------------------------------------------------------------------------------------
# when: and templates


def test_a_false_condition_skips_the_step_and_says_why() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: maybe
                when: has(trigger.payload.flag)
                tool: text.echo
                provider: p1
              - name: always
                tool: text.echo
                provider: p1
            """
        )
    )
    assert run.step("maybe").status == StepStatus.SKIPPED
    assert run.step("maybe").reason == "when: has(trigger.payload.flag) is false"
    assert run.invoked("maybe") == []
    run.complete("always")
    assert run.status == RunStatus.COMPLETED


WHEN_SCORE = workflow(
    """
    steps:
      - name: grade
        tool: text.grade
        provider: p1
      - name: praise
        when: steps.grade.output.score > 5
        tool: text.echo
        provider: p1
    """
)


@pytest.mark.parametrize(("score", "praised"), [(9, True), (5, False)])
def test_a_condition_reads_the_output_of_an_earlier_step(score: int, praised: bool) -> None:
    run = Run(WHEN_SCORE)
    assert run.in_flight() == ["grade"]  # the condition's step is a dependency
    run.complete("grade", {"score": score})
    assert (run.in_flight() == ["praise"]) is praised
    assert (run.step("praise").status == StepStatus.SKIPPED) is not praised


def test_a_condition_that_fails_at_run_time_fails_the_step_with_kind_condition() -> None:
    run = Run(WHEN_SCORE)
    run.complete("grade", {"mark": "A"})  # no score
    praise = run.step("praise")
    assert praise.status == StepStatus.FAILED
    assert praise.error is not None
    assert praise.error.kind == "condition"
    assert "score" in praise.error.message
    assert run.status == RunStatus.FAILED


def test_a_condition_sees_the_status_of_a_failed_step() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: risky
                tool: text.echo
                provider: p1
                on_error: continue
              - name: apologise
                when: steps.risky.status == 'failed'
                tool: text.echo
                provider: p1
            """
        )
    )
    run.fail("risky", "bad_request")
    assert run.in_flight() == ["apologise"]


def test_an_alternative_is_taken_when_the_first_step_was_skipped() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: transcribe
                when: has(trigger.payload.flag)
                tool: stt.transcribe
                provider: p1
              - name: reply
                tool: text.echo
                provider: p1
                input: {text: "${steps.transcribe.output.text ?? trigger.payload.text}"}
            """
        ),
        {"text": "typed"},
    )
    assert run.step("transcribe").status == StepStatus.SKIPPED
    assert run.invoked("reply")[0].input == {"text": "typed"}


# ---------------------------------------------------------------------------------------------
# Retries


def retrying(policy: str, provider: str = "p1") -> str:
    return workflow(
        f"""
        steps:
          - name: call
            tool: text.echo
            provider: {provider}
            retry: {policy}
        """
    )


def test_retry_delays_grow_by_the_backoff_rate_up_to_max_interval() -> None:
    run = Run(retrying("{maxAttempts: 5, initialInterval: 100, backoffRate: 3, maxInterval: 500, jitter: 0}"))
    delays = []
    for attempt in range(1, 5):
        run.fail("call", "server")
        retry = run.of(StepRetrying, "call")[-1]
        delays.append(retry.delay_ms)
        timer = run.timers[f"retry:call:{attempt}"]
        assert timer["fire_at"] == run.now + timedelta(milliseconds=retry.delay_ms)
        assert timer["data"] == RetryDue(step="call", attempt=attempt)
        assert run.step("call").status == StepStatus.RETRYING
        assert len(run.invoked("call")) == attempt  # nothing sent before the timer fires

        run.fire(f"retry:call:{attempt}")
        latest = run.invoked("call")[-1]
        assert (latest.attempt, latest.provider) == (attempt + 1, "p1")

    assert delays == [100, 300, 500, 500]
    run.fail("call", "server")  # the fifth attempt: the policy is spent
    assert run.step("call").status == StepStatus.FAILED
    assert run.status == RunStatus.FAILED


@pytest.mark.parametrize(("rng", "delay"), [(0.0, 800), (0.5, 1000), (1.0, 1200)])
def test_jitter_moves_the_delay_by_at_most_its_fraction(rng: float, delay: float) -> None:
    run = Run(retrying("{initialInterval: 1000, jitter: 0.2}"), rng=rng)
    run.fail("call", "timeout")
    assert run.of(StepRetrying, "call")[0].delay_ms == pytest.approx(delay)


@pytest.mark.parametrize(("retry_after_s", "delay"), [(7, 7000), (0.01, 1000)])
def test_retry_after_lengthens_the_delay_but_never_shortens_it(retry_after_s: float, delay: float) -> None:
    run = Run(retrying("{initialInterval: 1000, jitter: 0}"))
    run.fail("call", "rate_limited", retry_after_s=retry_after_s)
    assert run.of(StepRetrying, "call")[0].delay_ms == delay
    assert run.timers["retry:call:1"]["fire_at"] == T0 + timedelta(milliseconds=delay)


def test_a_bad_request_is_neither_retried_nor_sent_to_another_provider() -> None:
    run = Run(retrying("{maxAttempts: 5}", provider="p1|p2"))
    run.fail("call", "bad_request", "the text is empty")
    assert run.of(StepRetrying) == []
    assert run.of(StepFallback) == []
    assert [i.provider for i in run.invoked()] == ["p1"]
    assert run.step("call").status == StepStatus.FAILED
    assert run.state.error is not None
    assert run.state.error.message == "the text is empty"


def test_a_kind_outside_retry_on_falls_back_without_retrying() -> None:
    run = Run(retrying("{maxAttempts: 5, retryOn: [timeout]}", provider="p1|p2"))
    run.fail("call", "server")
    assert run.of(StepRetrying) == []
    assert [(i.provider, i.attempt) for i in run.invoked()] == [("p1", 1), ("p2", 2)]


def test_a_late_retry_timer_for_an_old_attempt_is_ignored() -> None:
    run = Run(retrying("{maxAttempts: 3, jitter: 0}"))
    run.fail("call", "server")
    timer = dict(run.timers["retry:call:1"])
    run.fire("retry:call:1")
    run.timers["retry:call:1"] = timer  # fires again (a redelivered timer)
    assert run.fire("retry:call:1") is False
    assert len(run.invoked("call")) == 2


# ---------------------------------------------------------------------------------------------
# Provider fallback chains


CHAIN = workflow(
    """
    steps:
      - name: speak
        tool: tts.speak
        provider: p1|p2
        config: {fallback: [p3, p1]}
        retry: {maxAttempts: 1}
        input: {text: "${trigger.payload.text}"}
    guards:
      fallbacks: {speak: p4, tts: p5}
    """
)


def test_the_chain_is_step_providers_then_config_fallback_then_guards_by_step_then_category() -> None:
    spec = parse_workflow(CHAIN)
    assert spec.provider_chain(spec.step("speak")) == ["p1", "p2", "p3", "p4", "p5"]


def test_each_failure_falls_back_to_the_next_provider_with_a_new_attempt() -> None:
    run = Run(CHAIN)
    for _ in range(4):
        run.fail("speak", "unavailable")
    sent = run.invoked("speak")
    assert [(i.provider, i.attempt) for i in sent] == [("p1", 1), ("p2", 2), ("p3", 3), ("p4", 4), ("p5", 5)]
    keys = [i.idempotency_key for i in sent]
    assert keys == [f"{RUN_ID}:speak:{n}" for n in range(1, 6)]
    fallbacks = run.of(StepFallback, "speak")
    assert [(f.from_, f.to) for f in fallbacks] == [
        ("p1", "p2"),
        ("p2", "p3"),
        ("p3", "p4"),
        ("p4", "p5"),
    ]
    assert fallbacks[0].reason == "unavailable from p1 after 1 attempt(s): falling back to p2"
    assert fallbacks[0].error.kind == "unavailable"

    run.fail("speak", "unavailable")  # the end of the chain
    assert run.step("speak").status == StepStatus.FAILED
    assert run.status == RunStatus.FAILED


def test_retries_are_counted_per_provider_and_attempts_across_the_chain() -> None:
    run = Run(retrying("{maxAttempts: 2, jitter: 0}", provider="p1|p2"))
    run.fail("call", "server")
    run.fire("retry:call:1")
    run.fail("call", "server")  # p1 spent after two attempts
    run.fail("call", "server")  # p2's first attempt: retried on p2
    run.fire("retry:call:3")
    assert [(i.provider, i.attempt) for i in run.invoked()] == [("p1", 1), ("p1", 2), ("p2", 3), ("p2", 4)]
    assert len({i.idempotency_key for i in run.invoked()}) == 4


def test_text_only_completes_the_step_with_its_text_without_calling_anyone() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: speak
                tool: tts.speak
                provider: voice|text-only
                retry: {maxAttempts: 1}
                input: {text: "${trigger.payload.text}", voice: calm}
            """
        ),
        {"text": "hola"},
    )
    run.fail("speak", "unavailable")
    assert [i.provider for i in run.invoked()] == ["voice"]
    speak = run.step("speak")
    assert speak.status == StepStatus.COMPLETED
    assert speak.output == {"text": "hola", "format": "text", "degraded": True}
    assert speak.provider == "text-only"
    assert speak.reason is not None
    assert speak.reason.startswith("degraded to text")
    completed = run.of(StepCompleted, "speak")[0]
    assert completed.degraded is True
    assert completed.attempt == 2
    assert run.status == RunStatus.COMPLETED


# ---------------------------------------------------------------------------------------------
# Step timeouts and run deadlines


def test_a_step_timeout_sets_a_timer_for_each_attempt() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: slow
                tool: text.echo
                provider: p1
                config: {timeout: 2000}
                retry: {maxAttempts: 2, initialInterval: 100, jitter: 0}
            """
        )
    )
    assert run.invoked("slow")[0].timeout_ms == 2000
    timer = run.timers["timeout:slow:1"]
    assert timer["fire_at"] == T0 + timedelta(seconds=2)
    assert timer["data"] == AttemptTimeout(step="slow", attempt=1, timeout_ms=2000)

    run.fire("timeout:slow:1")
    assert run.of(StepTimedOut, "slow")[0].error.kind == "timeout"
    assert run.step("slow").status == StepStatus.RETRYING  # timeouts are retried by default
    assert run.complete("slow", attempt=1) is False  # the late result of the timed-out attempt

    run.fire("retry:slow:1")
    assert run.timers["timeout:slow:2"]["fire_at"] == run.now + timedelta(seconds=2)
    run.complete("slow")
    assert "timeout:slow:2" not in run.timers  # a result cancels its timeout
    assert run.status == RunStatus.COMPLETED


def test_a_timeout_on_the_last_attempt_fails_the_step() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: slow
                tool: text.echo
                provider: p1
                config: {timeout: 50}
                retry: {maxAttempts: 1}
            """
        )
    )
    run.fire("timeout:slow:1")
    assert run.step("slow").status == StepStatus.FAILED
    assert run.state.error is not None
    assert run.state.error.kind == "timeout"


DEADLINE = workflow(
    """
    steps:
      - name: book
        tool: travel.book
        provider: p1
        compensate: {tool: travel.cancel, provider: p1, input: {id: "${steps.book.output.id}"}}
      - name: pay
        tool: pay.charge
        provider: p1
        needs: book
    guards:
      budget: {maxMs: 5000}
    """
)


def test_the_run_deadline_times_the_run_out_and_cancels_work_in_flight() -> None:
    run = Run(DEADLINE)
    assert run.timers["deadline"] == {"fire_at": T0 + timedelta(seconds=5), "data": RunDeadline()}
    assert run.state.deadline_at == T0 + timedelta(seconds=5)
    run.fire("deadline")
    assert run.status == RunStatus.TIMED_OUT
    assert run.state.error is not None
    assert run.state.error.kind == "deadline"
    assert run.step("book").status == StepStatus.CANCELLED
    assert run.step("pay").status == StepStatus.SKIPPED
    assert run.timers == {}


def test_the_run_deadline_compensates_completed_steps_before_timing_out() -> None:
    run = Run(DEADLINE)
    run.complete("book", {"id": "B7"})
    run.fire("deadline")
    assert run.status == RunStatus.COMPENSATING
    assert run.state.ending is not None
    assert run.state.ending.status == RunStatus.TIMED_OUT
    assert run.step("pay").status == StepStatus.CANCELLED
    undo = run.invoked("book~c")
    assert [(i.tool, i.input) for i in undo] == [("travel.cancel", {"id": "B7"})]

    run.complete("book~c")
    assert run.status == RunStatus.TIMED_OUT
    assert run.state.error is not None
    assert run.state.error.kind == "deadline"


# ---------------------------------------------------------------------------------------------
# Budgets


def budgeted(limit: str, *estimates: int | None) -> str:
    steps = []
    previous = None
    for n, estimate in enumerate(estimates):
        config = f"\n    config: {{maxTokens: {estimate}}}" if estimate is not None else ""
        needs = f"\n    needs: {previous}" if previous else ""
        steps.append(f"  - name: s{n}\n    tool: llm.chat\n    provider: p1{config}{needs}")
        previous = f"s{n}"
    return HEADER + "steps:\n" + "\n".join(steps) + f"\nguards:\n  budget: {limit}\n"


def test_a_step_whose_estimate_exceeds_what_is_left_is_not_dispatched() -> None:
    run = Run(budgeted("{maxTokens: 1000}", 400, 400))
    run.complete("s0", tokens=700)
    assert run.invoked("s1") == []
    assert run.status == RunStatus.BUDGET_EXCEEDED
    error = run.state.error
    assert error is not None
    assert error.kind == "budget"
    assert error.step == "s1"
    assert error.used == BudgetUsed(tokens=700, cost=0.0)
    assert error.limit == BudgetLimit(max_tokens=1000, max_cost=None)
    assert "700 used of 1000, the step may need 400" in error.message


def test_without_estimates_a_run_overshoots_its_budget_by_at_most_one_step() -> None:
    run = Run(budgeted("{maxTokens: 1000}", None, None, None))
    run.complete("s0", tokens=600)
    assert run.in_flight() == ["s1"]  # 400 left: enough to try
    run.complete("s1", tokens=600)
    assert run.invoked("s2") == []
    assert run.status == RunStatus.BUDGET_EXCEEDED
    assert run.state.usage is not None
    assert run.state.usage.total_tokens == 1200


def test_a_cost_budget_stops_the_run_like_a_token_budget() -> None:
    run = Run(budgeted("{maxCost: 0.05}", None, None))
    run.complete("s0", tokens=10, cost=0.06)
    assert run.status == RunStatus.BUDGET_EXCEEDED
    assert run.state.error is not None
    assert "cost: 0.06 used of 0.05" in run.state.error.message


def test_a_retry_is_not_refused_for_the_estimate_of_its_own_failed_attempt() -> None:
    run = Run(budgeted("{maxTokens: 1000}", 600))
    run.fail("s0", "server")
    run.fire("retry:s0:1")
    assert run.status == RunStatus.RUNNING
    assert [i.attempt for i in run.invoked("s0")] == [1, 2]


def test_a_fallback_is_not_refused_for_the_estimate_of_its_own_failed_attempt() -> None:
    definition = budgeted("{maxTokens: 1000}", 600).replace("provider: p1", "provider: p1|p2")
    run = Run(definition)
    run.fail("s0", "bad_gateway")  # not retried: straight to p2
    assert run.status == RunStatus.RUNNING
    assert [i.provider for i in run.invoked("s0")] == ["p1", "p2"]


def test_steps_in_flight_hold_their_estimates() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: a
                tool: llm.chat
                provider: p1
                config: {maxTokens: 600}
              - name: b
                tool: llm.chat
                provider: p1
                config: {maxTokens: 600}
            guards:
              budget: {maxTokens: 1000}
            """
        )
    )
    assert run.invoked("b") == []
    assert run.status == RunStatus.BUDGET_EXCEEDED
    assert run.step("a").status == StepStatus.CANCELLED


# ---------------------------------------------------------------------------------------------
# on_error


def test_on_error_continue_lets_dependents_run_and_the_run_complete() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: enrich
                tool: text.enrich
                provider: p1
                on_error: continue
              - name: reply
                tool: text.echo
                provider: p1
                input: {text: "${steps.enrich.output.text ?? trigger.payload.text}"}
              - name: strict
                tool: text.echo
                provider: p1
                input: {text: "${steps.enrich.output.text}"}
            """
        ),
        {"text": "plain"},
    )
    run.fail("enrich", "bad_request")
    assert run.step("enrich").handling == "continue"
    assert run.invoked("reply")[0].input == {"text": "plain"}
    # Without an alternative, the missing output is the dependent's own (template) failure.
    strict = run.step("strict")
    assert strict.status == StepStatus.FAILED
    assert strict.error is not None
    assert strict.error.kind == "template"


def test_on_error_continue_completes_the_run_when_the_rest_succeeds() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: enrich
                tool: text.enrich
                provider: p1
                on_error: continue
              - name: reply
                tool: text.echo
                provider: p1
                needs: enrich
            """
        )
    )
    run.fail("enrich", "bad_request")
    run.complete("reply")
    assert run.status == RunStatus.COMPLETED
    assert run.state.output == {"reply": {"text": "out-reply"}}


HANDLED = workflow(
    """
    steps:
      - name: primary
        tool: tts.speak
        provider: p1
        on_error: recover
      - name: recover
        tool: text.echo
        provider: p2
        input: {text: "${trigger.payload.text}"}
      - name: after
        tool: text.echo
        provider: p1
        input: {text: "${steps.primary.output.text ?? steps.recover.output.text}"}
    """
)


def test_a_handler_step_runs_when_its_step_fails() -> None:
    run = Run(HANDLED)
    assert run.in_flight() == ["primary"]  # the handler waits for a failure
    run.fail("primary", "bad_request")
    assert run.step("primary").handling == "recover"
    assert run.in_flight() == ["recover"]
    run.complete("recover", {"text": "rescued"})
    # A handled failure still skips the steps that need the failed step (only continue lets
    # them run), even one with an alternative for it.
    after = run.step("after")
    assert after.status == StepStatus.SKIPPED
    assert after.reason == "it needs primary, which failed"
    assert run.status == RunStatus.COMPLETED


def test_a_handler_step_is_skipped_when_its_step_succeeds_and_later_steps_go_on() -> None:
    run = Run(HANDLED)
    run.complete("primary", {"text": "spoken"})
    recover = run.step("recover")
    assert recover.status == StepStatus.SKIPPED
    assert recover.reason == "no failure for it to handle"
    assert run.invoked("recover") == []
    assert run.invoked("after")[0].input == {"text": "spoken"}
    run.complete("after")
    assert run.status == RunStatus.COMPLETED


def test_a_handler_that_needs_the_step_it_handles_runs_when_that_step_fails() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: primary
                tool: tts.speak
                provider: p1
                on_error: recover
              - name: recover
                tool: text.echo
                provider: p2
                needs: primary
            """
        )
    )
    run.fail("primary", "bad_request")
    assert run.in_flight() == ["recover"]
    run.complete("recover")
    assert run.status == RunStatus.COMPLETED


# ---------------------------------------------------------------------------------------------
# Compensation


SAGA = workflow(
    """
    steps:
      - name: reserve
        tool: shop.reserve
        provider: p1
        compensate: {tool: shop.release, provider: p1, input: {id: "${steps.reserve.output.id}"}}
      - name: charge
        tool: pay.charge
        provider: p1
        needs: reserve
        compensate: {tool: pay.refund, provider: p2, input: {id: "${steps.charge.output.id}"}}
      - name: note
        tool: text.echo
        provider: p1
        needs: reserve
      - name: ship
        tool: shop.ship
        provider: p1
        needs: [charge, note]
    """
)


def test_a_failing_run_compensates_completed_steps_latest_first_one_at_a_time() -> None:
    run = Run(SAGA)
    run.complete("reserve", {"id": "R1"})
    run.later(10)
    run.complete("note")
    run.later(10)
    run.complete("charge", {"id": "C1"})
    run.fail("ship", "bad_request", "no address")

    assert run.status == RunStatus.COMPENSATING
    started = run.of(RunCompensating)[0]
    assert started.queue == ["charge", "reserve"]  # note has no compensation
    assert started.status == RunStatus.FAILED
    assert run.in_flight() == ["charge~c"]
    refund = run.invoked("charge~c")[0]
    assert (refund.tool, refund.provider, refund.input) == ("pay.refund", "p2", {"id": "C1"})

    run.complete("charge~c")
    assert run.in_flight() == ["reserve~c"]
    assert run.invoked("reserve~c")[0].input == {"id": "R1"}

    run.complete("reserve~c")
    assert run.status == RunStatus.FAILED
    assert run.state.error is not None
    assert run.state.error.step == "ship"
    assert run.state.error.message == "no address"
    assert run.state.error.compensation_failures == []
    assert run.step("charge").status == StepStatus.COMPLETED
    assert run.task("charge~c").status == StepStatus.COMPLETED


def test_parallel_steps_are_compensated_in_the_order_they_completed() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: a
                tool: shop.reserve
                provider: p1
                compensate: {tool: shop.release, provider: p1}
              - name: b
                tool: shop.reserve
                provider: p1
                compensate: {tool: shop.release, provider: p1}
              - name: c
                tool: shop.ship
                provider: p1
                needs: [a, b]
            """
        )
    )
    run.complete("b")
    run.later(10)
    run.complete("a")
    run.fail("c", "bad_request")
    assert run.of(RunCompensating)[0].queue == ["a", "b"]


def test_a_failed_compensation_is_recorded_in_the_run_error_and_the_rest_still_run() -> None:
    run = Run(SAGA)
    run.complete("reserve", {"id": "R1"})
    run.complete("note")
    run.complete("charge", {"id": "C1"})
    run.fail("ship", "bad_request", "no address")
    run.fail("charge~c", "bad_request", "already refunded")

    assert run.task("charge~c").status == StepStatus.FAILED
    assert run.in_flight() == ["reserve~c"]
    run.complete("reserve~c")
    assert run.status == RunStatus.FAILED
    error = run.state.error
    assert error is not None
    assert error.step == "ship"
    assert error.compensation_failures == [
        CompensationFailure(step="charge", kind="bad_request", message="already refunded")
    ]


def test_a_compensation_is_retried_under_its_step_policy() -> None:
    run = Run(SAGA)
    run.complete("reserve", {"id": "R1"})
    run.complete("note")
    run.complete("charge", {"id": "C1"})
    run.fail("ship", "bad_request")
    run.fail("charge~c", "server")  # retried by default
    assert run.task("charge~c").status == StepStatus.RETRYING
    run.fire("retry:charge~c:1")
    assert [i.attempt for i in run.invoked("charge~c")] == [1, 2]


# ---------------------------------------------------------------------------------------------
# for_each


FAN_OUT = workflow(
    """
    steps:
      - name: each
        for_each: "${trigger.payload.list}"
        concurrency: 2
        tool: text.translate
        provider: p1
        input: {text: "${item.text}", position: "${index}", label: "line ${index}"}
        retry: {maxAttempts: 2, jitter: 0}
      - name: after
        tool: text.echo
        provider: p1
        input: {lines: "${steps.each.output.items}"}
    """
)
LINES = [{"text": w} for w in ("uno", "dos", "tres", "cuatro", "cinco")]


def test_for_each_keeps_at_most_concurrency_items_in_flight_and_keeps_item_order() -> None:
    run = Run(FAN_OUT, {"text": "x", "list": LINES})
    assert run.step("each").item_values == LINES
    assert run.in_flight() == ["each#0", "each#1"]
    assert run.invoked("each#1")[0].input == {"text": "dos", "position": 1, "label": "line 1"}

    run.complete("each#1", {"t": "two"})
    assert run.in_flight() == ["each#0", "each#2"]
    run.complete("each#2", {"t": "three"})
    assert run.in_flight() == ["each#0", "each#3"]
    run.complete("each#0", {"t": "one"})
    run.complete("each#4", {"t": "five"})
    assert run.step("each").status == StepStatus.RUNNING
    run.complete("each#3", {"t": "four"})

    each = run.step("each")
    assert each.status == StepStatus.COMPLETED
    expected = [{"t": t} for t in ("one", "two", "three", "four", "five")]
    assert each.output == {"items": expected}
    assert run.invoked("after")[0].input == {"lines": expected}
    assert max(len(_in_flight_after(run, n)) for n in range(len(run.events))) <= 2


def _in_flight_after(run: Run, count: int) -> list[str]:
    """The items in flight after the first ``count`` events, by refolding them."""
    state: RunState | None = None
    for event in run.events[: count + 1]:
        state = apply(state, RUN_ID, event.data, event.at)
    assert state is not None
    each = state.step("each")
    assert each is not None
    return [f"each#{n}" for n, item in enumerate(each.items or ()) if item.in_flight]


def test_an_item_that_fails_fails_the_step() -> None:
    run = Run(FAN_OUT, {"text": "x", "list": LINES})
    run.fail("each#1", "bad_request", "not a language")
    assert run.task("each#1").status == StepStatus.FAILED
    each = run.step("each")
    assert each.status == StepStatus.FAILED
    assert each.error is not None
    assert each.error.item == 1
    assert each.error.message == "item 1: not a language"
    assert run.status == RunStatus.FAILED
    assert run.invoked("each#2") == []
    assert run.complete("each#0") is False  # a late item of a step that has ended


def test_an_empty_list_completes_the_step_at_once() -> None:
    run = Run(FAN_OUT, {"text": "x", "list": []})
    assert run.step("each").output == {"items": []}
    assert run.in_flight() == ["after"]


def test_for_each_over_something_else_than_a_list_fails_the_step() -> None:
    run = Run(FAN_OUT, {"text": "x"})  # list is absent: null
    each = run.step("each")
    assert each.status == StepStatus.FAILED
    assert each.error == StepError(kind="template", message="for_each must name a list, got null")


def test_an_item_retrying_when_its_step_fails_is_not_dispatched_again() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: each
                for_each: "${trigger.payload.list}"
                tool: text.translate
                provider: p1
                on_error: continue
              - name: after
                tool: text.echo
                provider: p1
                needs: each
            """
        ),
        {"text": "x", "list": ["a", "b"]},
    )
    run.fail("each#0", "server")
    assert "retry:each#0:1" in run.timers
    run.fail("each#1", "bad_request")
    assert run.step("each").status == StepStatus.FAILED
    assert run.in_flight() == ["after"]
    # The back-off timer of the item still retrying goes with its step.
    assert "retry:each#0:1" not in run.timers
    assert len(run.invoked("each#0")) == 1


def for_each_budget(limit: int, concurrency: int) -> str:
    return workflow(
        f"""
        steps:
          - name: each
            for_each: "${{trigger.payload.list}}"
            concurrency: {concurrency}
            tool: llm.chat
            provider: p1
            config: {{maxTokens: 300}}
        guards:
          budget: {{maxTokens: {limit}}}
        """
    )


def test_a_for_each_item_is_not_refused_for_its_own_step_estimate() -> None:
    run = Run(for_each_budget(500, 1), {"text": "x", "list": ["a", "b"]})
    assert run.in_flight() == ["each#0"]
    run.complete("each#0", tokens=100)
    assert run.in_flight() == ["each#1"]
    run.complete("each#1", tokens=100)
    assert run.status == RunStatus.COMPLETED


def test_each_for_each_item_in_flight_holds_its_estimate() -> None:
    run = Run(for_each_budget(700, 3), {"text": "x", "list": ["a", "b", "c"]})
    assert [i.step for i in run.invoked()] == ["each#0", "each#1"]
    assert run.status == RunStatus.BUDGET_EXCEEDED
    assert run.state.error is not None
    assert run.state.error.step == "each"


# ---------------------------------------------------------------------------------------------
# Waiting for outside events


WAITING = workflow(
    """
    steps:
      - name: draft
        tool: text.echo
        provider: p1
      - name: approval
        wait: {event: app.review.decided, key: "${steps.draft.output.id}", match: draftId, timeout: 60000}
      - name: publish
        tool: text.publish
        provider: p1
        input: {verdict: "${steps.approval.output.verdict}"}
    """
)


def test_a_wait_step_records_its_rendered_key_and_sets_a_wait_and_a_timer() -> None:
    run = Run(WAITING)
    run.complete("draft", {"id": "D9"})
    waiting = run.of(StepWaiting, "approval")[0]
    until = T0 + timedelta(minutes=1)
    assert (waiting.event, waiting.key, waiting.match, waiting.until) == (
        "app.review.decided",
        "D9",
        "draftId",
        until,
    )
    assert run.step("approval").status == StepStatus.WAITING
    assert run.waits == {"approval": {"subject": "app.review.decided", "key": "D9", "match": "draftId"}}
    assert run.timers["wait:approval"] == {"fire_at": until, "data": WaitTimeout(step="approval")}
    assert run.invoked("approval") == []

    run.deliver("approval", {"draftId": "D9", "verdict": "yes"})
    assert run.waits == {}
    assert "wait:approval" not in run.timers
    assert run.invoked("publish")[0].input == {"verdict": "yes"}


def test_a_wait_that_times_out_fails_the_step() -> None:
    run = Run(WAITING)
    run.complete("draft", {"id": 9})
    assert run.step("approval").wait == WaitState(
        event="app.review.decided", key="9", until=T0 + timedelta(minutes=1)
    )
    run.fire("wait:approval")
    approval = run.step("approval")
    assert approval.status == StepStatus.FAILED
    assert approval.error is not None
    assert approval.error.kind == "timeout"
    assert run.status == RunStatus.FAILED
    assert run.invoked("publish") == []


# ---------------------------------------------------------------------------------------------
# Cancel


def test_cancel_abandons_work_in_flight_and_ends_the_run() -> None:
    run = Run(JOIN)
    run.complete("left", {"text": "L"})
    assert run.cancel("user left") is True
    assert run.status == RunStatus.CANCELLED
    assert run.state.error == RunError(kind="cancelled", message="user left")
    assert statuses(run.state) == {
        "left": StepStatus.COMPLETED,
        "right": StepStatus.CANCELLED,
        "join": StepStatus.SKIPPED,
    }
    assert run.complete("right") is False  # its late result is ignored
    assert run.cancel() is False


def test_cancel_compensates_completed_steps_first() -> None:
    run = Run(SAGA)
    run.complete("reserve", {"id": "R1"})
    run.cancel()
    assert run.status == RunStatus.COMPENSATING
    assert run.in_flight() == ["reserve~c"]
    run.complete("reserve~c")
    assert run.status == RunStatus.CANCELLED


# ---------------------------------------------------------------------------------------------
# Determinism


def test_refolding_the_stored_events_gives_the_live_state() -> None:
    run = Run(
        workflow(
            """
            steps:
              - name: book
                tool: travel.book
                provider: p1|p2
                retry: {maxAttempts: 2, jitter: 0}
                compensate: {tool: travel.cancel, provider: p1}
              - name: maybe
                when: has(trigger.payload.flag)
                tool: text.echo
                provider: p1
              - name: each
                for_each: "${trigger.payload.list}"
                concurrency: 2
                tool: text.translate
                provider: p1
                input: {text: "${item}"}
                needs: book
              - name: approval
                wait: {event: app.review.decided, key: "${trigger.payload.text}", match: id, timeout: 1000}
                needs: each
            """
        ),
        {"text": "t", "list": ["a", "b", "c"]},
    )
    run.fail("book", "server")
    run.fire("retry:book:1")
    run.fail("book", "unavailable")
    run.complete("book", tokens=12, cost=0.01)
    for n in range(3):
        run.complete(f"each#{n}", tokens=3)
    run.fire("wait:approval")
    run.complete("book~c")
    assert run.status == RunStatus.FAILED

    # As the store keeps them: JSON, read back into the struct of each row's type and version.
    state: RunState | None = None
    for seq, event in enumerate(run.events, 1):
        data = decode_data(RUN_ID, seq, event.type, event.data.VERSION, encode_data(event.data))
        state = apply(state, RUN_ID, data, event.at)
    assert state is not None
    assert msgspec.to_builtins(state.steps) == msgspec.to_builtins(run.state.steps)
    assert (state.status, state.error, state.usage) == (run.state.status, run.state.error, run.state.usage)
    assert state.status == RunStatus.FAILED


def test_idempotency_keys_are_unique_over_a_run() -> None:
    run = Run(CHAIN)
    run.fail("speak", "unavailable")
    run.fail("speak", "unavailable")
    keys = [i.idempotency_key for i in run.invoked()]
    assert len(keys) == len(set(keys)) == 3
