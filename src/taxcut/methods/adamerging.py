"""AdaMerging (Yang et al. 2024, "AdaMerging: Adaptive Model Merging for Multi-Task Learning", ICLR): learn the
coefficients of the task vectors, one per model (task-wise) or per model and decoder layer (layer-wise), by
minimising the entropy of the merged model's next-token predictions on unlabelled prompts.

    theta = theta_base + sum_i c_(i,g) * (theta_i - theta_base),   g = the tensor's layer (or one group)

The fit shares HMA's machinery (:mod:`taxcut.training`): only the coefficients train, each weight is computed on
access from theta_base (the model's own parameters) and the inputs, and decoder layers are recomputed in the
backward pass. The merge then applies the learned coefficients chunk by chunk, with the same arithmetic.
"""

from __future__ import annotations


import torch

from taxcut.errors import TaxcutError
from taxcut.io.layers import LAYER_TEMPLATES
from taxcut.methods.registry import method
from taxcut.training import task_vector_sum


def group_of(name: str, layers: int) -> int:
    """The coefficient group of a tensor: its decoder layer, or ``layers`` for everything outside them."""
    import re

    for _, template in LAYER_TEMPLATES:
        found = re.match(template, name)
        if found:
            return int(found.group("index"))
    return layers


@method("adamerging", paper="Yang et al. 2024, 'AdaMerging: Adaptive Model Merging for Multi-Task Learning'",
        needs_base=True, elementwise=True)
def adamerging(models: list[torch.Tensor], base, weights: list[float], params: dict, name: str) -> torch.Tensor:
    coefficients = params["coefficients"]  # (models, groups), learned by fit_adamerging
    group = group_of(name, params["layers"]) if len(coefficients[0]) > 1 else 0
    return task_vector_sum(base, models, [row[group] for row in coefficients])
