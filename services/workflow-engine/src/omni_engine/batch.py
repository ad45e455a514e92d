"""One transaction of a run: the events it records, the outbox rows and timer changes they cause,
and the one progress notice that says the history grew.

Events are folded into the run's state as they are recorded, so each decision reads the state
its predecessors left. The engine writes a batch in one transaction.
"""

from __future__ import annotations

from omni_contract import events as ev
from omni_contract import subjects
from omni_contract.envelope import encode_envelope, new_envelope
from omni_contract.history import RunStarted, StepEvent

from omni_engine.state import NewEvent, RunState, apply
from omni_engine.store import Effects, OutboxMessage

SOURCE = "omni-workflow-engine"  # the CloudEvents source of what the engine publishes


class Batch:
    """The events, outbox rows and timer changes of one transaction, against the state they fold into."""

    def __init__(self, state: RunState, traceparent: str | None) -> None:
        self.state = state
        self.traceparent = traceparent
        self.events: list[NewEvent] = []
        self.outbox: list[OutboxMessage] = []
        self.effects = Effects()

    def record(self, event: NewEvent) -> None:
        if not isinstance(event.data, RunStarted):
            apply(self.state, self.state.run_id, event.data, event.at)
        self.state.last_seq += 1
        self.events.append(event)

    def seal(self) -> None:
        """Add the one progress notice of this batch: its last event, with the run's status.

        One notice per transaction rather than per event halves what observers and JetStream
        handle per step; a notice only says that the history grew up to ``seq``.
        """
        if not self.events:
            return
        if self.state.finished and self.state.timed:
            self.effects.clear_all = True  # its timers and waits, if any are left, go with it
        last = self.events[-1]
        progress = ev.RunProgress(
            run_id=self.state.run_id,
            workflow=self.state.workflow,
            seq=self.state.last_seq,
            event=last.type,
            status=self.state.status,
            at=last.at,
            step=last.data.step if isinstance(last.data, StepEvent) else None,
        )
        msg_id = f"{self.state.run_id}:{self.state.last_seq}"
        envelope = new_envelope(
            ev.RUN_PROGRESS_V1, SOURCE, progress, id_=msg_id, correlation_id=self.state.run_id
        )
        self.outbox.append(
            OutboxMessage(
                subject=subjects.run_event(self.state.run_id, last.type),
                msg_id=msg_id,
                body=encode_envelope(envelope),
                durable=False,
                traceparent=self.traceparent,
            )
        )
