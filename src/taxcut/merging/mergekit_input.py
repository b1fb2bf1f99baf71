"""A mergekit config made into a :class:`~taxcut.methods.request.MergeRequest` (``taxcut merge CONFIG.yml``).

The method is the taxcut method of mergekit's ``merge_method`` name, run as mergekit computes it
(:class:`~taxcut.methods.mergekit_twin.MergekitTwin`); the inputs are mergekit's (the models, then the base model
unless listed); every tensor's parameters are resolved here from the headers (gradients, filters), so a missing or
ill-typed value is refused before anything is read or written.
"""

from __future__ import annotations

from pathlib import Path

import torch

from taxcut.errors import TaxcutError
from taxcut.io.checkpoint import Checkpoint
from taxcut.io.layers import detect_layers
from taxcut.methods.mergekit_twin import MergekitTwin
from taxcut.methods.parameters import MethodParameters
from taxcut.methods.registry import mergekit_method
from taxcut.methods.request import MergeRequest, ModelInput
from taxcut.spec.mergekit_config import MergekitConfig, check_no_unknown


def mergekit_request(config: MergekitConfig) -> MergeRequest:
    """The request that runs ``config`` through taxcut's planner and engine."""
    method = mergekit_method(config.merge_method)
    check_no_unknown(config, [p.name for p in method.mergekit_parameters], config.merge_method)
    twin = MergekitTwin(method, config)
    names = config.inputs()
    inputs = tuple(
        ModelInput("base" if i == twin.base_index else f"model {i + 1}", Path(name)) for i, name in enumerate(names)
    )
    _resolve_every_tensor(twin, inputs)
    return MergeRequest(
        method=twin,
        inputs=inputs,
        parameters=MethodParameters(),
        out=config.out,
        dtype=config.out_dtype or config.dtype,
        max_shard_bytes=config.max_shard_bytes,
        side_files_from=_side_files_from(config, names, twin.base_index),
        spec=config,
    )


def _side_files_from(config: MergekitConfig, names: list[str], base_index: int | None) -> int:
    """mergekit's donor of config and tokenizer: ``tokenizer_source`` (``base`` or a model), else the base model,
    else the first model."""
    source = config.tokenizer_source
    if source is None:
        return base_index or 0
    if source == "base":
        if base_index is None:
            raise TaxcutError("'tokenizer_source: base' needs a 'base_model'")
        return base_index
    if source not in names:
        raise TaxcutError(
            f"'tokenizer_source' {source!r} is not one of the config's models; name one of them or 'base'"
        )
    return names.index(source)


def _resolve_every_tensor(twin: MergekitTwin, inputs: tuple[ModelInput, ...]) -> None:
    """Each tensor's parameters and working dtype (the inputs' promoted dtype), read from the headers."""
    checkpoints = []
    try:
        for model in inputs:
            checkpoints.append(Checkpoint(model.path, model.role))
        reference = checkpoints[0].tensors
        layout = detect_layers(reference)
        for name, info in reference.items():
            twin.resolved[name] = twin.resolve(name, layout.layer_of.get(name), layout.num_layers)
            dtype = info.dtype
            for checkpoint in checkpoints[1:]:
                if name in checkpoint.tensors:
                    dtype = torch.promote_types(dtype, checkpoint.tensors[name].dtype)
            twin.dtypes[name] = dtype
    finally:
        for checkpoint in checkpoints:
            checkpoint.close()
