"""Which ratio each tensor gets: block splitting and name rules (see :mod:`taxcut.spec` for the conventions).

Pure logic on names and numbers: no files, no tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from taxcut.errors import TaxcutError
from taxcut.io.layers import LayerLayout
from taxcut.spec import MergeSpec


def split_blocks(num_layers: int, num_blocks: int, field: str = "alphas") -> list[tuple[int, int]]:
    """K contiguous near-equal blocks of ``num_layers`` layers as inclusive ``(first, last)`` pairs.

    Boundaries fall at ``floor(k * L / K + 1/2)``: 32 layers, K = 3 gives 0-10, 11-20, 21-31 (the paper's split).
    """
    if num_blocks > num_layers:
        raise TaxcutError(
            f"'{field}' asks for {num_blocks} blocks but the model has only {num_layers} decoder layers: "
            "give at most one ratio per layer"
        )
    starts = [int(k * num_layers / num_blocks + 0.5) for k in range(num_blocks)] + [num_layers]
    return [(starts[k], starts[k + 1] - 1) for k in range(num_blocks)]


@dataclass(frozen=True)
class RatioDecision:
    """The ratio of one tensor and the group that decided it (what ``taxcut plan`` prints)."""

    alpha: float
    group: str
    order: float = 0.0  # where the group stands in a printed plan: embeddings, blocks bottom to top, head, rules
    block: int | None = None  # the index of the block whose ratio this is (None: a rule or the mean)


@dataclass(frozen=True)
class Block:
    first: int
    last: int
    alpha: float

    @property
    def label(self) -> str:
        return f"layers {self.first}-{self.last}" if self.last > self.first else f"layer {self.first}"


class RatioResolver:
    """Resolves ``spec`` against a checkpoint's :class:`LayerLayout` and answers :meth:`ratio_for`."""

    def __init__(self, spec: MergeSpec, layout: LayerLayout, tied_head_of: dict[str, str] | None = None):
        self.spec = spec
        self.layout = layout
        self.tied_head_of = tied_head_of or {}  # embedding name -> the head name it also serves as
        self.blocks = self._blocks()
        self.layer_alphas = [block.alpha for block in self.blocks for _ in range(block.first, block.last + 1)]
        self.mean_alpha = spec.mean_alpha

    def _blocks(self) -> list[Block]:
        spec, num_layers = self.spec, self.layout.num_layers
        if spec.alpha is not None:
            return [Block(0, num_layers - 1, spec.alpha)] if num_layers else []
        if num_layers == 0:
            raise TaxcutError(
                "no decoder layers found in the tensor names, so per-block or per-layer ratios cannot apply: "
                "use one 'alpha' with 'rules' (see taxcut.io.layers for the known layer name patterns)"
            )
        if spec.layer_alphas is not None:
            if len(spec.layer_alphas) != num_layers:
                raise TaxcutError(
                    f"'layer_alphas' has {len(spec.layer_alphas)} ratios but the model has {num_layers} decoder "
                    "layers: give one ratio per layer"
                )
            return [Block(i, i, a) for i, a in enumerate(spec.layer_alphas)]
        bounds = spec.block_bounds or split_blocks(num_layers, len(spec.alphas))
        if bounds[-1][1] != num_layers - 1:
            raise TaxcutError(
                f"'block_bounds' ends at layer {bounds[-1][1]} but the model's last decoder layer is "
                f"{num_layers - 1}: the blocks must cover every layer"
            )
        return [Block(first, last, a) for (first, last), a in zip(bounds, spec.alphas)]

    def ratio_for(self, tensor_name: str) -> RatioDecision:
        """The ratio of ``tensor_name``: first matching rule, else its layer's block, else the outside defaults."""
        candidates = [tensor_name] + ([self.tied_head_of[tensor_name]] if tensor_name in self.tied_head_of else [])
        for index, rule in enumerate(self.spec.rules):
            if any(rule.matches(name) for name in candidates):
                return RatioDecision(rule.alpha, f"rule {index + 1} ({rule.pattern})", 1e9 + index)
        layer = self.layout.layer_of.get(tensor_name)
        if layer is not None:
            block = next(b for b in self.blocks if b.first <= layer <= b.last)
            if self.spec.alpha is not None:
                return RatioDecision(block.alpha, "decoder layers (alpha)", 0)
            index = self.blocks.index(block)
            if self.spec.layer_alphas is not None:
                return RatioDecision(block.alpha, block.label, block.first, index)
            return RatioDecision(block.alpha, f"block {index + 1} ({block.label})", block.first, index)
        if self.spec.alpha is not None:
            return RatioDecision(self.spec.alpha, "outside the layers (alpha)", 1e6)
        if self.layout.is_embedding(tensor_name):
            tied = f", tied to {self.tied_head_of[tensor_name]}" if tensor_name in self.tied_head_of else ""
            return RatioDecision(self.blocks[0].alpha, f"embeddings (first block's ratio{tied})", -1, 0)
        return RatioDecision(self.mean_alpha, "outside the layers, after them (mean ratio)", 1e6)
