"""What an evaluation cost: the tokens it generated, the tokens it read without generating, and its seconds.

The evaluators count as they work (:func:`count_generated`, :func:`count_scored`) into the meter that
:func:`metered` opens around one evaluation; outside a meter the counts go nowhere.

- ``generated_tokens``: the tokens of the responses (up to the end of each response, padding not counted);
- ``scored_tokens``: tokens read in a forward pass without being generated: the prompts before generation, the
  sequences of a log-likelihood task, the (prompt, response) pairs a reward model reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class EvaluationCost:
    generated_tokens: int = 0
    scored_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        """The cost a sweep strategy is judged by: generated plus scored tokens."""
        return self.generated_tokens + self.scored_tokens

    def __add__(self, other: EvaluationCost) -> EvaluationCost:
        return EvaluationCost(
            self.generated_tokens + other.generated_tokens,
            self.scored_tokens + other.scored_tokens,
            self.seconds + other.seconds,
        )


class TokenMeter:
    def __init__(self) -> None:
        self.generated = 0
        self.scored = 0
        self.started = time.perf_counter()

    def cost(self) -> EvaluationCost:
        return EvaluationCost(self.generated, self.scored, time.perf_counter() - self.started)


_METER: ContextVar[TokenMeter | None] = ContextVar("taxcut_token_meter", default=None)


@contextmanager
def metered() -> Iterator[TokenMeter]:
    """Count the tokens of everything evaluated inside the block."""
    meter = TokenMeter()
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


def count_generated(tokens: int) -> None:
    meter = _METER.get()
    if meter is not None:
        meter.generated += int(tokens)


def count_scored(tokens: int) -> None:
    meter = _METER.get()
    if meter is not None:
        meter.scored += int(tokens)
