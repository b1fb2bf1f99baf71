"""The one protocol every evaluator follows."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Evaluator(Protocol):
    """Scores one model. ``evaluate`` must not change the model's weights."""

    name: str

    def evaluate(self, model, tokenizer) -> dict[str, float]:
        """Named scores of ``model`` (a causal LM in memory) with its ``tokenizer``."""
        ...


@runtime_checkable
class TaxTask(Evaluator, Protocol):
    """A benchmark whose drop from the SFT model counts towards the alignment tax.

    ``primary_metric`` is the score the tax uses; ``higher_is_better`` gives its direction, so that the drop is
    ``sft - candidate`` for accuracies and ``candidate - sft`` for losses.
    """

    primary_metric: str
    higher_is_better: bool
