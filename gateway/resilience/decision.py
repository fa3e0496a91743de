"""The verdict on one attempt: what the request path does next, as one immutable value.

:meth:`gateway.resilience.Resilience.decide` reads an attempt's
:class:`~gateway.outcome.Outcome` and the request's state and returns a :class:`Decision`;
the proxy only carries it out (stream the answer, answer with an error, sleep and try again,
or fetch a new token and replay). Keeping the decision apart from the I/O is what lets the
README's resilience table be one function, tested row by row with a fake clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import GatewayError
from gateway.resilience.retry import RetryReason, SkipReason


class Action(enum.Enum):
    ANSWER = "answer"  # stream EXACT's response to the caller
    REFUSE = "refuse"  # answer with the gateway error in ``error``
    RETRY = "retry"  # wait ``wait`` seconds, then another attempt
    REPLAY = "replay"  # EXACT refused the token: get a new one, send again if the body allows


class RequestState(Protocol):
    """What the decision needs to know about the request so far (the proxy's exchange)."""

    @property
    def method(self) -> str: ...

    @property
    def attempts(self) -> int: ...  # attempts made, this one included

    @property
    def deadline(self) -> float: ...  # monotonic time by which the caller must have an answer

    @property
    def keyed(self) -> bool: ...  # an Idempotency-Key goes upstream

    @property
    def replayable(self) -> bool: ...  # the body can be sent again

    @property
    def token_replaced(self) -> bool: ...  # a 401 already led to a new token

    @property
    def caller_stalled(self) -> bool: ...  # the attempt was waiting on the caller's body


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    error: GatewayError | None = None
    wait: float = 0.0
    retry: RetryReason | None = None  # why it is retried
    skipped: SkipReason | None = None  # why a retryable outcome is not retried


ANSWER = Decision(Action.ANSWER)
REPLAY = Decision(Action.REPLAY)
