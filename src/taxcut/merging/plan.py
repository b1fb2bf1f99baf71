"""The merge plan: everything decided from headers alone, before any weight is read.

:func:`build_plan` turns a spec into a :class:`~taxcut.methods.request.MergeRequest`, opens every input's headers,
checks that the inputs fit together (same architecture and tying, same tokenizer, same tensors, shapes and kinds),
finds the decoder layers, resolves every tensor's parameters (a ratio per block, a density per layer, ...) and
its output dtype, and lays out the output shards. ``taxcut plan`` prints it; :mod:`taxcut.merging.engine`
executes it. One plan type serves every method: model averaging is the two-input case.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from taxcut.errors import TaxcutError
from taxcut.io.checkpoint import Checkpoint, TensorInfo
from taxcut.io.dtypes import TORCH_DTYPES, dtype_label
from taxcut.io.layers import (
    TIED_HEAD_NAMES,
    LayerLayout,
    config_layer_count,
    config_ties_embeddings,
    detect_layers,
)
from taxcut.io.tokenizer_files import tokenizer_aspects, tokenizer_difference
from taxcut.io.writer import OutputTensor, Shard, plan_shards
from taxcut.merging.report import render_plan
from taxcut.merging.request import request_for
from taxcut.methods.block_values import BlockValues, Decision
from taxcut.methods.parameters import MethodParameters
from taxcut.methods.registry import TensorSite
from taxcut.methods.request import MergeRequest, ModelInput


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: where it is in every input, its parameters (resolved for it) and why, its dtype."""

    sources: tuple[TensorInfo, ...]  # one per input, in the request's order
    site: TensorSite
    parameters: MethodParameters
    decisions: dict[str, Decision]  # how each per-block parameter got its value here
    out_dtype: torch.dtype

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def info(self) -> TensorInfo:
        """The reference input's header entry (shape, numel)."""
        return self.sources[0]

    @property
    def floating(self) -> bool:
        return self.sources[0].dtype.is_floating_point

    @property
    def decision(self) -> Decision | None:
        """The decision of the method's first per-block parameter (model averaging: the ratio a)."""
        return next(iter(self.decisions.values()), None)


@dataclass
class MergePlan:
    request: MergeRequest
    checkpoints: list[Checkpoint]  # one per input, in the request's order
    layout: LayerLayout
    block_values: dict[str, BlockValues]  # per-block parameters given as lists, by name
    tensors: list[PlannedTensor]
    shards: list[Shard]
    dropped_tied: dict[str, str]  # head name -> the embedding it is tied to (not written: one tensor, one value)
    out_dtype: str
    notes: list[str] = field(default_factory=list)

    def __enter__(self) -> MergePlan:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for checkpoint in self.checkpoints:
            checkpoint.close()

    @property
    def method(self):
        return self.request.method

    @property
    def spec(self):
        return self.request.spec

    @property
    def resolver(self) -> BlockValues | None:
        """The first per-block parameter's resolver (model averaging: the ratios)."""
        return next(iter(self.block_values.values()), None)

    def ratio_of(self, tensor_name: str) -> float:
        """The value of the first per-block parameter (model averaging: the ratio a) that ``tensor_name`` gets."""
        return self.resolver.value_for(tensor_name).value

    @property
    def total_bytes(self) -> int:
        return sum(shard.nbytes for shard in self.shards)

    def groups(self) -> dict[str, list[PlannedTensor]]:
        """Tensors by the group that decided their first per-block parameter: embeddings, blocks bottom to top,
        the head side, rules."""
        grouped: dict[str, list[PlannedTensor]] = defaultdict(list)
        for tensor in sorted(self.tensors, key=lambda t: t.decision.order if t.decision else 0):
            grouped[tensor.decision.group if tensor.decision else "all tensors"].append(tensor)
        return dict(grouped)

    def summary(self) -> dict:
        """The plan as plain data (for ``--json`` and the provenance file)."""
        resolver = self.resolver
        return {
            "method": self.method.name,
            "inputs": [{"role": i.role, "path": str(i.path), "weight": i.weight} for i in self.request.inputs],
            "decoder_layers": self.layout.num_layers,
            "layer_family": self.layout.family,
            "blocks": [{"first": b.first, "last": b.last, "alpha": b.value} for b in resolver.blocks]
            if resolver
            else [],
            "mean_alpha": resolver.mean if resolver else None,  # of the blocks: what the tensors after the layers get
            "layer_mean_alpha": resolver.layer_mean if resolver else None,  # over the layers (block sizes weighed)
            "out_dtype": self.out_dtype,
            "groups": [
                {
                    "group": group,
                    "alpha": members[0].decision.value if members[0].decision else None,
                    "tensors": [m.name for m in members],
                }
                for group, members in self.groups().items()
            ],
            "not_written_tied": self.dropped_tied,
            "shards": [{"file": s.file_name, "bytes": s.nbytes} for s in self.shards],
            "notes": self.notes,
        }

    def render(self) -> str:
        """A human-readable plan: inputs, layer blocks and the value each group of tensors gets."""
        return render_plan(self)


def build_plan(spec_or_request) -> MergePlan:
    """Open every input's headers, check them against each other and resolve every tensor's parameters."""
    request = spec_or_request if isinstance(spec_or_request, MergeRequest) else request_for(spec_or_request)
    checkpoints: list[Checkpoint] = []
    try:
        for model in request.inputs:
            checkpoints.append(Checkpoint(model.path, model.role))
        return _plan(request, checkpoints)
    except BaseException:
        for checkpoint in checkpoints:
            checkpoint.close()
        raise


def _plan(request: MergeRequest, checkpoints: list[Checkpoint]) -> MergePlan:
    reference = checkpoints[0]
    _check_same_architecture(request.inputs, checkpoints)
    tokenizer_notes = check_same_tokenizer(
        request.inputs, checkpoints, allow=bool(getattr(request.spec, "allow_tokenizer_mismatch", False))
    )
    layout = detect_layers(reference.tensors)
    dropped_tied = stored_tied_heads(layout, checkpoints) if config_ties_embeddings(reference.config) else {}
    names = [name for name in reference.tensors if name not in dropped_tied]
    notes = _check_same_tensors(request.inputs, checkpoints, set(dropped_tied), layout)
    tied_head_of = {embedding: head for head, embedding in dropped_tied.items()}
    if config_ties_embeddings(reference.config) and not dropped_tied and layout.token_embedding:
        tied_head_of[layout.token_embedding] = "lm_head.weight"
    method, parameters = request.method, request.parameters
    method.check(parameters, layout)
    block_values = method.block_values(parameters, layout, tied_head_of)
    out_dtype = TORCH_DTYPES[request.dtype] if request.dtype else None
    tensors = []
    for name in names:
        sources = tuple(checkpoint.tensors[name] for checkpoint in checkpoints)
        decisions = {key: values.value_for(name) for key, values in block_values.items()}
        resolved = parameters.model_copy(update={k: d.value for k, d in decisions.items()}) if decisions else parameters
        dtype = (out_dtype or sources[0].dtype) if sources[0].dtype.is_floating_point else sources[0].dtype
        site = TensorSite(name, layout.layer_of.get(name), layout.num_layers)
        tensors.append(PlannedTensor(sources, site, resolved, decisions, dtype))
    shards = plan_shards([OutputTensor(t.name, t.out_dtype, t.info.shape) for t in tensors], request.max_shard_bytes)
    stated = config_layer_count(reference.config)
    if stated is not None and stated != layout.num_layers:
        notes.append(f"config.json states {stated} decoder layers but the tensor names show {layout.num_layers}")
    notes.extend(tokenizer_notes)
    for values in block_values.values():
        unused = [str(i + 1) for i in values.unused_rules()]
        if unused:
            notes.append(f"rule(s) {', '.join(unused)} match no tensor")
    folders = [model.path.expanduser().resolve() for model in request.inputs]
    if len(set(folders)) < len(folders):
        roles = [m.role for m, f in zip(request.inputs, folders) if folders.count(f) > 1]
        notes.append(
            f"{' and '.join(roles)} are the same folder"
            + (": every ratio gives that model back" if len(folders) == 2 else "")
        )
    return MergePlan(
        request, checkpoints, layout, block_values, tensors, shards, dropped_tied, _majority_dtype(tensors), notes
    )


def _check_same_architecture(inputs: tuple[ModelInput, ...], checkpoints: list[Checkpoint]) -> None:
    reference, first = checkpoints[0], inputs[0]
    for model, checkpoint in zip(inputs[1:], checkpoints[1:]):
        for key in ("model_type", "architectures"):
            left, right = reference.config.get(key), checkpoint.config.get(key)
            if left is not None and right is not None and left != right:
                raise TaxcutError(
                    f"{model.path}: config.json '{key}' is {right!r} but the {first.label}'s is {left!r}; "
                    "all models must have the same architecture"
                )
        tied, reference_tied = config_ties_embeddings(checkpoint.config), config_ties_embeddings(reference.config)
        if tied != reference_tied:
            raise TaxcutError(
                f"{model.path}: config.json 'tie_word_embeddings' is {tied} but the {first.label}'s is "
                f"{reference_tied}; all models must tie (or untie) the same way"
            )


def check_same_tokenizer(
    inputs: tuple[ModelInput, ...], checkpoints: list[Checkpoint], *, allow: bool = False
) -> list[str]:
    """Refuse inputs whose tokenizer files give the same text other ids than the first input's (row i of their
    embeddings would mean other tokens), unless ``allow``; return notes on what could not be compared."""
    first, reference = inputs[0], tokenizer_aspects(checkpoints[0].side_file_folders)
    notes = []
    for model, checkpoint in zip(inputs[1:], checkpoints[1:]):
        aspects = tokenizer_aspects(checkpoint.side_file_folders)
        if bool(reference) != bool(aspects):
            lacking = model if reference else first
            notes.append(
                f"the {lacking.label} ({lacking.path}) has no tokenizer files: its tokenizer is not compared "
                "with the others'"
            )
            continue
        difference = tokenizer_difference(reference, aspects, (first.label, model.label))
        if difference is None:
            continue
        if not allow:
            raise TaxcutError(
                f"{model.path}: the {model.label}'s tokenizer does not match the {first.label}'s ({difference}), so "
                "the same text becomes other token ids; merge models that share a tokenizer, or pass "
                "--allow-tokenizer-mismatch (spec: 'allow_tokenizer_mismatch: true') to merge anyway"
            )
        notes.append(
            f"the {model.label}'s tokenizer does not match the {first.label}'s ({difference}); merged "
            "anyway (allow_tokenizer_mismatch)"
        )
    return notes


def stored_tied_heads(layout: LayerLayout, checkpoints: list[Checkpoint]) -> dict[str, str]:
    """Heads stored beside a tied token embedding: ``{head name: embedding name}``; they are not written."""
    embedding = layout.token_embedding
    if embedding is None:
        return {}
    shape = checkpoints[0].tensors[embedding].shape
    return {
        head: embedding
        for head in TIED_HEAD_NAMES
        for checkpoint in checkpoints
        if head in checkpoint.tensors and checkpoint.tensors[head].shape == shape
    }


def _check_same_tensors(
    inputs: tuple[ModelInput, ...], checkpoints: list[Checkpoint], ignored: set[str], layout: LayerLayout
) -> list[str]:
    """Refuse tensors that are not in every model or that differ in shape or kind; return notes on dtypes."""
    reference, first = checkpoints[0], inputs[0]
    expected = set(reference.tensors) - ignored
    embeddings = layout.embedding_names | set(TIED_HEAD_NAMES)
    mixed_dtypes = []
    for model, checkpoint in zip(inputs[1:], checkpoints[1:]):
        names = set(checkpoint.tensors) - ignored
        for missing_from, present, missing in ((model, first, expected - names), (first, model, names - expected)):
            if missing:
                name = sorted(missing)[0]
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise TaxcutError(
                    f"tensor '{name}'{more} is in the {present.label} but not in the {missing_from.label} "
                    f"({missing_from.path}); all models must have the same architecture"
                )
        for name in sorted(expected):
            left, right = reference.tensors[name], checkpoint.tensors[name]
            if left.shape != right.shape:
                if name in embeddings and len(left.shape) == len(right.shape) and left.shape[1:] == right.shape[1:]:
                    raise TaxcutError(
                        f"tensor '{name}': vocabulary sizes differ ({first.role} {left.shape[0]} rows, {model.role} "
                        f"{right.shape[0]} rows); resize the {first.label}'s embeddings to the {model.label}'s "
                        "tokenizer (model.resize_token_embeddings) and save it before merging"
                    )
                raise TaxcutError(
                    f"tensor '{name}' has shape {list(left.shape)} in the {first.label} but {list(right.shape)} in "
                    f"the {model.label}; all models must have the same architecture"
                )
            if left.dtype.is_floating_point != right.dtype.is_floating_point:
                raise TaxcutError(
                    f"tensor '{name}' is {dtype_label(left.dtype)} in the {first.label} but "
                    f"{dtype_label(right.dtype)} in the {model.label}; a floating-point tensor cannot be merged with "
                    "an integer one"
                )
            if left.dtype != right.dtype:
                mixed_dtypes.append(name)
    if mixed_dtypes:
        return [
            f"{len(set(mixed_dtypes))} tensor(s) have different float dtypes in the inputs (e.g. "
            f"'{mixed_dtypes[0]}'); they are merged in float32 and written in the {first.label}'s dtype unless "
            "'dtype' says otherwise"
        ]
    return []


def _majority_dtype(tensors: list[PlannedTensor]) -> str:
    """The float dtype that holds the most elements (what config.json records)."""
    by_dtype: dict[torch.dtype, int] = defaultdict(int)
    for tensor in tensors:
        if tensor.out_dtype.is_floating_point:
            by_dtype[tensor.out_dtype] += tensor.info.numel
    return dtype_label(max(by_dtype, key=by_dtype.get)) if by_dtype else "float32"
