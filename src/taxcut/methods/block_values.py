"""The one per-tensor resolver of ratios and per-block method parameters: :class:`BlockValues`.

Ratios (``alpha``, ``alphas``, ``layer_alphas``), and any list-valued method parameter (``density``, ``lambda``,
``t``, ...) are resolved the same way:

- one value: every tensor gets it;
- ``[v1, ..., vK]``: one value per block of contiguous decoder layers, split by :func:`split_blocks` unless
  explicit ``block_bounds`` are given; embeddings (token and position) take the first block's value and everything
  after the layers (final norm, lm_head) the mean of the K values (the block mean, what HMA holds at a; not the
  mean over the layers, which weighs each block by its size: :attr:`BlockValues.layer_mean`);
- one value per decoder layer: the same, with one-layer blocks (a depth profile too: it is resolved to one value
  per layer);
- name rules (``match`` glob or ``regex``, first match wins) override all of that. A tied embedding is matched by
  the name of the head it also serves as.

Pure logic on names and numbers: no files, no tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from taxcut.errors import TaxcutError
from taxcut.io.layers import LayerLayout


def split_blocks(num_layers: int, num_blocks: int, field: str = "alphas") -> list[tuple[int, int]]:
    """K contiguous near-equal blocks of ``num_layers`` layers as inclusive ``(first, last)`` pairs.

    Boundaries fall at ``floor(k * L / K + 1/2)``: 32 layers, K = 3 gives 0-10, 11-20, 21-31 (the paper's split).
    """
    if num_blocks > num_layers:
        raise TaxcutError(
            f"'{field}' asks for {num_blocks} blocks but the model has only {num_layers} decoder layers: "
            "give at most one value per layer"
        )
    starts = [int(k * num_layers / num_blocks + 0.5) for k in range(num_blocks)] + [num_layers]
    return [(starts[k], starts[k + 1] - 1) for k in range(num_blocks)]


class Rule(Protocol):
    """A name rule: :class:`taxcut.spec.merge.NameRule` is one."""

    alpha: float

    @property
    def pattern(self) -> str: ...

    def matches(self, tensor_name: str) -> bool: ...


@dataclass(frozen=True)
class Decision:
    """The value of one parameter for one tensor and the group that decided it (what ``taxcut plan`` prints)."""

    value: float
    group: str
    order: float = 0.0  # where the group stands in a printed plan: embeddings, blocks bottom to top, head, rules
    block: int | None = None  # the index of the block whose value this is (None: a rule or the mean)

    @property
    def alpha(self) -> float:
        """The value, read as a ratio ``a`` (for the averaging parameter)."""
        return self.value


@dataclass(frozen=True)
class Block:
    first: int
    last: int
    value: float

    @property
    def alpha(self) -> float:
        return self.value

    @property
    def label(self) -> str:
        return f"layers {self.first}-{self.last}" if self.last > self.first else f"layer {self.first}"


class BlockValues:
    """One parameter resolved against a checkpoint's :class:`LayerLayout`; :meth:`value_for` answers per tensor.

    Give exactly one of ``value`` (everywhere), ``blocks`` (per block, optionally with ``block_bounds``) or
    ``layers`` (per decoder layer). ``field`` names the parameter in error messages and ``noun`` what a value is
    ("ratio", "value") in the group labels of a printed plan.
    """

    def __init__(
        self,
        layout: LayerLayout,
        *,
        field: str,
        value: float | None = None,
        blocks: Sequence[float] | None = None,
        block_bounds: Sequence[tuple[int, int]] | None = None,
        layers: Sequence[float] | None = None,
        rules: Sequence[Rule] = (),
        tied_head_of: dict[str, str] | None = None,
        noun: str = "value",
    ):
        self.layout, self.field, self.value, self.rules, self.noun = layout, field, value, list(rules), noun
        self.tied_head_of = tied_head_of or {}  # embedding name -> the head name it also serves as
        self.per_layer = layers is not None
        self.blocks = self._blocks(value, blocks, block_bounds, layers)
        values = [value] if value is not None else list(blocks if blocks is not None else layers)
        # Two means. ``mean``: of the values as given, one per block (or layer); what HMA holds at a, and what the
        # tensors after the layers (final norm, lm_head) get. ``layer_mean``: weighted by the layers each block
        # covers, the mean over the decoder layers; the two differ only when the blocks are of unequal size.
        self.mean = sum(values) / len(values)
        self.layer_values = [b.value for b in self.blocks for _ in range(b.first, b.last + 1)]
        self.layer_mean = sum(self.layer_values) / len(self.layer_values) if self.layer_values else self.mean
        self.used_rules: set[int] = set()

    @classmethod
    def of(cls, layout: LayerLayout, field: str, value: float | list[float]) -> BlockValues:
        """A method parameter: one number, or a list with one number per block of decoder layers."""
        if isinstance(value, list):
            return cls(layout, field=field, blocks=value)
        return cls(layout, field=field, value=value)

    def _blocks(self, value, blocks, block_bounds, layers) -> list[Block]:
        num_layers = self.layout.num_layers
        if value is not None:
            return [Block(0, num_layers - 1, value)] if num_layers else []
        if num_layers == 0:
            raise TaxcutError(
                f"no decoder layers found in the tensor names, so per-block or per-layer values of '{self.field}' "
                "cannot apply: give one value (and name rules) instead (see taxcut.io.layers for the known layer "
                "name patterns)"
            )
        if layers is not None:
            if len(layers) != num_layers:
                raise TaxcutError(
                    f"'{self.field}' has {len(layers)} {self.noun}s but the model has {num_layers} decoder layers: "
                    "give one value per layer"
                )
            return [Block(i, i, v) for i, v in enumerate(layers)]
        bounds = block_bounds or split_blocks(num_layers, len(blocks), field=self.field)
        if bounds[-1][1] != num_layers - 1:
            raise TaxcutError(
                f"'block_bounds' ends at layer {bounds[-1][1]} but the model's last decoder layer is "
                f"{num_layers - 1}: the blocks must cover every layer"
            )
        return [Block(first, last, v) for (first, last), v in zip(bounds, blocks)]

    @property
    def unequal_means(self) -> bool:
        """Whether the block mean and the layer-weighted mean differ (blocks of unequal size)."""
        return not math.isclose(self.mean, self.layer_mean, rel_tol=1e-9, abs_tol=1e-12)

    def block_of_layer(self, layer: int) -> int:
        return next(i for i, b in enumerate(self.blocks) if b.first <= layer <= b.last)

    def value_for(self, tensor_name: str) -> Decision:
        """The value for ``tensor_name``: first matching rule, else its layer's block, else the outside defaults."""
        names = [tensor_name] + ([self.tied_head_of[tensor_name]] if tensor_name in self.tied_head_of else [])
        for index, rule in enumerate(self.rules):
            if any(rule.matches(name) for name in names):
                self.used_rules.add(index)
                return Decision(rule.alpha, f"rule {index + 1} ({rule.pattern})", 1e9 + index)
        layer = self.layout.layer_of.get(tensor_name)
        if layer is not None:
            index = self.block_of_layer(layer)
            block = self.blocks[index]
            if self.value is not None:
                return Decision(block.value, f"decoder layers ({self.field})", 0)
            if self.per_layer:
                return Decision(block.value, block.label, block.first, index)
            return Decision(block.value, f"block {index + 1} ({block.label})", block.first, index)
        if self.value is not None:
            return Decision(self.value, f"outside the layers ({self.field})", 1e6)
        if self.layout.is_embedding(tensor_name):
            tied = f", tied to {self.tied_head_of[tensor_name]}" if tensor_name in self.tied_head_of else ""
            return Decision(self.blocks[0].value, f"embeddings (first block's {self.noun}{tied})", -1, 0)
        of_blocks = " of the blocks" if self.unequal_means else ""
        return Decision(self.mean, f"outside the layers, after them (mean {self.noun}{of_blocks})", 1e6)

    def unused_rules(self) -> list[int]:
        """The (0-based) rules that matched no tensor asked about so far."""
        return [i for i in range(len(self.rules)) if i not in self.used_rules]
