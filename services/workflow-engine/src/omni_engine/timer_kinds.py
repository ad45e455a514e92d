"""What a durable timer is for: the ``data`` stored with it (table ``timers``), one struct per kind.

The kind is the tag of a msgspec union (``{"kind": "retry", ...}``), so a timer's row decodes
straight into its struct and ``Decider.timer_fired`` dispatches on the class. A timer is named
after what it times (``retry:<address>:<attempt>`` and so on), so setting it again replaces it.
"""

from __future__ import annotations

import msgspec


class TimerData(msgspec.Struct, kw_only=True, tag_field="kind"):
    """The data of one durable timer."""

    @property
    def kind(self) -> str:
        return str(self.__struct_config__.tag)


class RetryDue(TimerData, kw_only=True, tag="retry"):
    """The back-off after a failed attempt is over: the next attempt on the same provider."""

    step: str
    attempt: int


class AttemptTimeout(TimerData, kw_only=True, tag="timeout"):
    """An attempt's ``config.timeout`` ran out before its result came."""

    step: str
    attempt: int
    timeout_ms: int


class RunDeadline(TimerData, kw_only=True, tag="deadline"):
    """The run's ``guards.budget.maxMs`` passed."""


class WaitTimeout(TimerData, kw_only=True, tag="wait"):
    """A ``wait`` step's event did not come within its ``timeout``."""

    step: str


AnyTimer = RetryDue | AttemptTimeout | RunDeadline | WaitTimeout


def retry_timer(address: str, attempt: int) -> str:
    return f"retry:{address}:{attempt}"


def timeout_timer(address: str, attempt: int) -> str:
    return f"timeout:{address}:{attempt}"


def wait_timer(step: str) -> str:
    return f"wait:{step}"


DEADLINE_TIMER = "deadline"
