"""The merge plan: everything decided from headers alone, before any weight is read.

:func:`build_plan` opens both checkpoints' headers, checks that they can be averaged (same tensors, same shapes,
same architecture), finds the decoder layers, gives every tensor its ratio and output dtype and lays out the output
shards. ``taxcut plan`` prints it; ``taxcut merge`` executes it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from taxcut.errors import TaxcutError
from taxcut.io.checkpoint import Checkpoint, TensorInfo
from taxcut.io.dtypes import TORCH_DTYPES, dtype_label
from taxcut.io.writer import OutputTensor, Shard, plan_shards
from taxcut.io.layers import (
    TIED_HEAD_NAMES, LayerLayout, config_layer_count, config_ties_embeddings, detect_layers,
)
from taxcut.merging.ratios import RatioDecision, RatioResolver
from taxcut.spec import MergeSpec


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: where its two inputs are, the ratio it gets and why, and its output dtype."""

    sft: TensorInfo
    aligned: TensorInfo
    decision: RatioDecision
    out_dtype: torch.dtype

    @property
    def name(self) -> str:
        return self.sft.name

    @property
    def averaged(self) -> bool:
        return self.sft.dtype.is_floating_point


@dataclass
class MergePlan:
    spec: MergeSpec
    sft: Checkpoint
    aligned: Checkpoint
    layout: LayerLayout
    resolver: RatioResolver
    tensors: list[PlannedTensor]
    shards: list[Shard]
    dropped_tied: dict[str, str]  # head name -> the embedding it is tied to (not written: one tensor, one ratio)
    out_dtype: str
    notes: list[str] = field(default_factory=list)

    def __enter__(self) -> MergePlan:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.sft.close()
        self.aligned.close()

    def ratio_of(self, tensor_name: str) -> float:
        return next(t.decision.alpha for t in self.tensors if t.name == tensor_name)

    @property
    def total_bytes(self) -> int:
        return sum(shard.nbytes for shard in self.shards)

    def groups(self) -> dict[str, list[PlannedTensor]]:
        """Tensors by the group that decided their ratio: embeddings, blocks bottom to top, the head side, rules."""
        grouped: dict[str, list[PlannedTensor]] = defaultdict(list)
        for tensor in sorted(self.tensors, key=lambda t: t.decision.order):
            grouped[tensor.decision.group].append(tensor)
        return dict(grouped)

    def summary(self) -> dict:
        """The plan as plain data (for ``--json`` and the provenance file)."""
        return {
            "decoder_layers": self.layout.num_layers,
            "layer_family": self.layout.family,
            "blocks": [{"first": b.first, "last": b.last, "alpha": b.alpha} for b in self.resolver.blocks],
            "mean_alpha": self.resolver.mean_alpha,
            "out_dtype": self.out_dtype,
            "groups": [
                {"group": group, "alpha": members[0].decision.alpha, "tensors": [m.name for m in members]}
                for group, members in self.groups().items()
            ],
            "not_written_tied": self.dropped_tied,
            "shards": [{"file": s.file_name, "bytes": s.nbytes} for s in self.shards],
            "notes": self.notes,
        }

    def render(self) -> str:
        """A human-readable plan: inputs, layer blocks and the ratio each group of tensors gets."""
        spec = self.spec
        lines = [
            f"sft      {spec.sft}  ({_describe(self.sft)})",
            f"aligned  {spec.aligned}  ({_describe(self.aligned)})",
            f"out      {spec.out if spec.out else '(not set)'}  ({self.out_dtype}, {len(self.shards)} file(s), "
            f"{_human_bytes(self.total_bytes)})",
            f"layers   {self.layout.num_layers} decoder layers"
            + (f" [{self.layout.family}]" if self.layout.family else " (none found)"),
            "ratio    a weighs the ALIGNED model: theta = (1 - a) * sft + a * aligned;"
            f" mean a of the layers = {self.resolver.mean_alpha:.4g}",
            "",
            f"{'group':<58} {'a':>8} {'tensors':>8} {'params':>12}",
        ]
        for group, members in self.groups().items():
            params = sum(m.sft.numel for m in members)
            lines.append(f"{group:<58} {members[0].decision.alpha:>8.4g} {len(members):>8} {params:>12,}")
            if len(members) <= 3 and not group.startswith(("block", "layer ", "decoder")):
                lines.extend(f"    {m.name}" for m in members)
        for head, embedding in self.dropped_tied.items():
            lines.append(f"not written: {head} (tied to {embedding}, which carries its ratio)")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def build_plan(spec: MergeSpec) -> MergePlan:
    """Open both checkpoints' headers, check them against each other and resolve every tensor's ratio."""
    sft = Checkpoint(spec.sft, "sft")
    try:
        aligned = Checkpoint(spec.aligned, "aligned")
    except BaseException:
        sft.close()
        raise
    try:
        return _plan(spec, sft, aligned)
    except BaseException:
        sft.close()
        aligned.close()
        raise


def _plan(spec: MergeSpec, sft: Checkpoint, aligned: Checkpoint) -> MergePlan:
    _check_same_architecture(spec, sft, aligned)
    layout = detect_layers(sft.tensors)
    dropped_tied = stored_tied_heads(layout, sft, aligned) if config_ties_embeddings(sft.config) else {}
    names = [name for name in sft.tensors if name not in dropped_tied]
    notes = _check_same_tensors(spec, sft, aligned, set(dropped_tied), layout)
    tied_head_of = {embedding: head for head, embedding in dropped_tied.items()}
    if config_ties_embeddings(sft.config) and not dropped_tied and layout.token_embedding:
        tied_head_of[layout.token_embedding] = "lm_head.weight"
    resolver = RatioResolver(spec, layout, tied_head_of)
    out_dtype = TORCH_DTYPES[spec.dtype] if spec.dtype else None
    tensors = []
    for name in names:
        source = sft.tensors[name]
        dtype = (out_dtype or source.dtype) if source.dtype.is_floating_point else source.dtype
        tensors.append(PlannedTensor(source, aligned.tensors[name], resolver.ratio_for(name), dtype))
    shards = plan_shards([OutputTensor(t.name, t.out_dtype, t.sft.shape) for t in tensors], spec.max_shard_bytes)
    stated = config_layer_count(sft.config)
    if stated is not None and stated != layout.num_layers:
        notes.append(f"config.json states {stated} decoder layers but the tensor names show {layout.num_layers}")
    used = {t.decision.group for t in tensors}
    unused = [str(i + 1) for i, rule in enumerate(spec.rules) if f"rule {i + 1} ({rule.pattern})" not in used]
    if unused:
        notes.append(f"rule(s) {', '.join(unused)} match no tensor")
    if spec.sft.expanduser().resolve() == spec.aligned.expanduser().resolve():
        notes.append("sft and aligned are the same folder: every ratio gives that model back")
    return MergePlan(
        spec, sft, aligned, layout, resolver, tensors, shards, dropped_tied, _majority_dtype(tensors), notes
    )


def _check_same_architecture(spec: MergeSpec, sft: Checkpoint, aligned: Checkpoint) -> None:
    for key in ("model_type", "architectures"):
        left, right = sft.config.get(key), aligned.config.get(key)
        if left is not None and right is not None and left != right:
            raise TaxcutError(
                f"{spec.aligned}: config.json '{key}' is {right!r} but the sft model's is {left!r}; "
                "both models must have the same architecture"
            )
    if config_ties_embeddings(sft.config) != config_ties_embeddings(aligned.config):
        raise TaxcutError(
            f"{spec.aligned}: config.json 'tie_word_embeddings' is {config_ties_embeddings(aligned.config)} but the "
            f"sft model's is {config_ties_embeddings(sft.config)}; both models must tie (or untie) the same way"
        )


def stored_tied_heads(layout: LayerLayout, sft: Checkpoint, aligned: Checkpoint) -> dict[str, str]:
    """Heads stored beside a tied token embedding: ``{head name: embedding name}``; they are not written."""
    embedding = layout.token_embedding
    if embedding is None:
        return {}
    return {
        head: embedding
        for head in TIED_HEAD_NAMES
        for checkpoint in (sft, aligned)
        if head in checkpoint.tensors and checkpoint.tensors[head].shape == sft.tensors[embedding].shape
    }


def _check_same_tensors(spec: MergeSpec, sft: Checkpoint, aligned: Checkpoint, ignored: set[str],
                        layout: LayerLayout) -> list[str]:
    """Refuse tensors that are not in both models or that differ in shape or kind; return notes on dtypes."""
    sft_names, aligned_names = set(sft.tensors) - ignored, set(aligned.tensors) - ignored
    for missing_from, present, names in (("aligned", "sft", sft_names - aligned_names),
                                          ("sft", "aligned", aligned_names - sft_names)):
        if names:
            first = sorted(names)[0]
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise TaxcutError(
                f"tensor '{first}'{more} is in the {present} model but not in the {missing_from} model "
                f"({getattr(spec, missing_from)}); both must have the same architecture"
            )
    embeddings = layout.embedding_names | set(TIED_HEAD_NAMES)
    mixed_dtypes = []
    for name in sorted(sft_names):
        left, right = sft.tensors[name], aligned.tensors[name]
        if left.shape != right.shape:
            if name in embeddings and len(left.shape) == len(right.shape) and left.shape[1:] == right.shape[1:]:
                raise TaxcutError(
                    f"tensor '{name}': vocabulary sizes differ (sft {left.shape[0]} rows, aligned {right.shape[0]} "
                    "rows); resize the sft model's embeddings to the aligned model's tokenizer "
                    "(model.resize_token_embeddings) and save it before merging"
                )
            raise TaxcutError(
                f"tensor '{name}' has shape {list(left.shape)} in the sft model but {list(right.shape)} in the aligned "
                "model; both must have the same architecture"
            )
        if left.dtype.is_floating_point != right.dtype.is_floating_point:
            raise TaxcutError(
                f"tensor '{name}' is {dtype_label(left.dtype)} in the sft model but {dtype_label(right.dtype)} in the "
                "aligned model; a floating-point tensor cannot be averaged with an integer one"
            )
        if left.dtype != right.dtype:
            mixed_dtypes.append(name)
    if mixed_dtypes:
        return [f"{len(mixed_dtypes)} tensor(s) have different float dtypes in the two models (e.g. "
                f"'{mixed_dtypes[0]}'); they are averaged in float32 and written in the sft model's dtype unless "
                "'dtype' says otherwise"]
    return []


def _majority_dtype(tensors: list[PlannedTensor]) -> str:
    by_dtype: dict[torch.dtype, int] = defaultdict(int)
    for tensor in tensors:
        if tensor.out_dtype.is_floating_point:
            by_dtype[tensor.out_dtype] += tensor.sft.numel
    return dtype_label(max(by_dtype, key=by_dtype.get)) if by_dtype else "float32"


def _describe(checkpoint: Checkpoint) -> str:
    dtypes = sorted({dtype_label(t.dtype) for t in checkpoint.tensors.values()})
    params = sum(t.numel for t in checkpoint.tensors.values())
    kind = checkpoint.config.get("model_type", "unknown type")
    return f"{kind}, {len(checkpoint.tensors)} tensors, {params:,} params, {'/'.join(dtypes)}, {len(checkpoint.files)} file(s)"


def _human_bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count} B"
