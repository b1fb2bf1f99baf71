"""A loaded model's parameters read from a checkpoint folder by the names they are stored under.

transformers may rename weights when it loads them (GPT-NeoX's ``embed_out`` becomes ``lm_head``); the helpers here
map each parameter of a model in memory to its stored name and read the stored tensors one at a time. They take a
model object; this module itself never imports transformers at import time.
"""

from __future__ import annotations

from pathlib import Path

import torch

from taxcut.errors import TaxcutError
from taxcut.io.checkpoint import Checkpoint


def read_parameters(folder: Path, parameters: dict, stored_name: dict[str, str], role: str):
    """Yield ``(parameter name, tensor)`` for each of ``parameters``, read one at a time from ``folder`` under its
    stored name; the tensor is None where the folder has no tensor of that name and shape."""
    with Checkpoint(folder, role) as checkpoint:
        for name, parameter in parameters.items():
            info = checkpoint.tensors.get(stored_name[name])
            yield name, (checkpoint.read(info) if info is not None and info.shape == tuple(parameter.shape) else None)


def architecture_mismatch(folder: Path, stored: str) -> TaxcutError:
    return TaxcutError(
        f"{folder}: tensor '{stored}' is missing or has another shape; all models must share one architecture"
    )


def checkpoint_names(model) -> dict[str, str]:
    """The name under which each parameter is stored in a checkpoint.

    transformers may rename weights on load (GPT-NeoX's ``embed_out`` becomes ``lm_head``); its own reverse
    mapping, the one ``save_pretrained`` uses, is applied here to placeholder tensors.
    """
    names = {name: name for name, _ in model.named_parameters()}
    try:
        from transformers.core_model_loading import revert_weight_conversion  # given a model: transformers is loaded
    except ImportError:
        return names
    placeholders = {name: torch.empty(p.shape, device="meta") for name, p in model.named_parameters()}
    reverted = revert_weight_conversion(model, dict(placeholders))
    stored = {id(tensor): name for name, tensor in reverted.items()}
    return {name: stored.get(id(tensor), name) for name, tensor in placeholders.items()}
