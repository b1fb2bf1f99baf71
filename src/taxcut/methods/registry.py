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


def _numbers(value) -> list:
    return value if isinstance(value, list) else [value]


# Checks of the parameters the built-in methods read: name -> (test on each value, what it must be).
PARAMETER_CHECKS = {
    "density": (lambda v: 0 < v <= 1, "a number in (0, 1] (or a list of them, one per block)"),
    "lambda": (lambda v: True, "a number (or a list of numbers, one per block)"),
    "t": (lambda v: 0 <= v <= 1, "a number in [0, 1] (or a list of them, one per block)"),
    "alpha": (lambda v: True, "a number"),
    "seed": (lambda v: float(v).is_integer(), "a whole number"),
    "init": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "lr": (lambda v: v > 0, "a positive number"),
}


def check_parameters(name: str, parameters: dict) -> None:
    """One clear message for a parameter of the wrong kind, before any tensor is read."""
    for key, (test, wanted) in PARAMETER_CHECKS.items():
        if key not in parameters:
            continue
        values = _numbers(parameters[key])
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and test(v) for v in values):
            raise TaxcutError(f"method '{name}': parameter '{key}' must be {wanted}; got {parameters[key]!r}")
    if parameters.get("majority_sign_method", "total") not in ("total", "frequency"):
        raise TaxcutError(f"method '{name}': 'majority_sign_method' is 'total' or 'frequency'")
    if parameters.get("granularity", "layer") not in ("layer", "task"):
        raise TaxcutError(f"method '{name}': 'granularity' is 'layer' or 'task'")
    if name == "adamerging" and "coefficients" in parameters and "layers" not in parameters:
        raise TaxcutError("method 'adamerging': given 'coefficients' need 'layers' (the decoder layer count) too")
