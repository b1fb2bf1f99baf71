"""The registry of merge methods: name -> pure tensor function, with what each needs."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from taxcut.errors import TaxcutError

# (models: float32 tensors of the N inputs, base: float32 tensor or None, weights: per-model weights,
#  params: the method's parameters, name: the tensor's name) -> float32 tensor
MergeFunction = Callable[[list[torch.Tensor], "torch.Tensor | None", list[float], dict, str], torch.Tensor]


@dataclass(frozen=True)
class Method:
    name: str
    function: MergeFunction
    needs_base: bool
    min_models: int
    max_models: int | None
    paper: str
    elementwise: bool  # each output element depends only on the same element of the inputs: streamed in chunks


METHODS: dict[str, Method] = {}


def method(name: str, *, paper: str, needs_base: bool = False, min_models: int = 1, max_models: int | None = None,
           elementwise: bool = False):
    """Register ``function`` as merge method ``name`` (cite the paper it comes from). ``elementwise`` methods are
    streamed chunk by chunk (memory independent of tensor size); the others see whole tensors."""

    def register(function: MergeFunction) -> MergeFunction:
        METHODS[name] = Method(name, function, needs_base, min_models, max_models, paper, elementwise)
        return function

    return register


def get_method(name: str) -> Method:
    import taxcut.methods.catalog  # noqa: F401 - registers the built-in methods

    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(METHODS))}"
        raise TaxcutError(f"unknown merge method {name!r}{hint}")
    return METHODS[name]
