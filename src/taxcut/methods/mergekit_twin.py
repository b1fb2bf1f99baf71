"""Running a mergekit config: a taxcut method computing exactly what mergekit 0.1.5 computes for it.

A method that reads mergekit configs declares ``mergekit_parameters`` (mergekit's names, types, scopes and
defaults for it) and ``mergekit_merge`` (mergekit's kernel, in mergekit's working dtype and operation order) next to
its own ``merge``; :class:`MergekitTwin` wraps it for one config: every tensor's parameters are resolved up front,
from the headers, with mergekit's gradients, filters and precedence (:mod:`taxcut.spec.mergekit_config`), and the
engine streams it like any method (one whole tensor of each input at a time).

mergekit's working dtype is the config's ``dtype``, else the inputs' promoted dtype; the result is cast to
``out_dtype`` (else the working dtype) by the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import TypeAdapter, ValidationError

from taxcut.errors import TaxcutError
from taxcut.io.dtypes import TORCH_DTYPES
from taxcut.methods.registry import MergeMethod, TensorSite
from taxcut.spec.mergekit_config import MergekitConfig, layer_t, resolve_setting

MISSING = object()


@dataclass(frozen=True)
class MergekitParameter:
    """One of mergekit's parameters of a method: ``shared`` (one per tensor), ``input`` (one per input) or
    ``non_base`` (one per input but the base); without a default it is required."""

    name: str
    type: type
    scope: Literal["shared", "input", "non_base"] = "shared"
    default: Any = MISSING

    def validate(self, value: Any) -> Any:
        return TypeAdapter(self.type).validate_python(value)


class MergekitTwin(MergeMethod):
    """``inner``'s mergekit kernel over one config's inputs (mergekit's order: models, then the base)."""

    elementwise = False
    needs_base = False  # every input, base included, reaches the kernel in mergekit's order; base_index says which

    def __init__(self, inner: MergeMethod, config: MergekitConfig):
        self.inner, self.config = inner, config
        self.name, self.paper = inner.name, inner.paper
        names = config.inputs()
        self.base_index = names.index(config.base_model) if config.base_model is not None else None
        self.resolved: dict[str, dict[str, Any]] = {}  # tensor name -> its parameters (per-input ones as lists)
        self.dtypes: dict[str, torch.dtype] = {}

    def resolve(self, tensor_name: str, layer: int | None, num_layers: int) -> dict[str, Any]:
        """Every parameter of ``inner`` for one tensor, as mergekit resolves it (a missing required one is refused,
        naming the tensor and model)."""
        t, values = layer_t(layer, num_layers), {}
        for parameter in self.inner.mergekit_parameters:
            if parameter.scope == "shared":
                values[parameter.name] = self._one(parameter, None, tensor_name, t)
                continue
            values[parameter.name] = [
                None
                if parameter.scope == "non_base" and i == self.base_index
                else self._one(parameter, model, tensor_name, t)
                for i, model in enumerate(self.config.inputs())
            ]
        return values

    def _one(self, parameter: MergekitParameter, model: str | None, tensor_name: str, t: float) -> Any:
        try:
            value = resolve_setting(parameter.name, self.config.sources(model), tensor_name, t, parameter.validate)
        except ValidationError as exc:
            raise TaxcutError(
                f"parameter '{parameter.name}' for tensor '{tensor_name}': {exc.errors()[0]['msg']}"
            ) from None
        if value is not None:
            return value
        if parameter.default is MISSING:
            who = f"model '{model}'" if model is not None else "the merge"
            raise TaxcutError(
                f"mergekit's '{self.name}' needs parameter '{parameter.name}' for {who} at tensor "
                f"'{tensor_name}': set it in that model's 'parameters' or the top-level 'parameters'"
            )
        return parameter.validate(parameter.default)

    def merge(self, models, base, weights, parameters, site: TensorSite) -> torch.Tensor:
        dtype = self.working_dtype(site.name)
        values = self.resolved.get(site.name) or self.resolve(site.name, site.layer, site.num_layers)
        return self.inner.mergekit_merge([m.to(dtype) for m in models], self.base_index, values, site)

    def working_dtype(self, tensor_name: str) -> torch.dtype:
        if self.config.dtype is not None:
            return TORCH_DTYPES[self.config.dtype]
        return self.dtypes[tensor_name]

    def describe(self, parameters) -> str:
        return f"{self.name} as mergekit computes it, from a mergekit config ({self.paper})"

    def plan_lines(self, plan) -> list[str]:
        """mergekit's method and working dtype, then each tensor's resolved parameters (runs of equal ones joined)."""
        working = self.config.dtype or "the inputs' own"
        base = f", base = input {self.base_index + 1}" if self.base_index is not None else ""
        lines = [f"mergekit merge_method {self.name}; working dtype {working}; inputs in mergekit's order{base}"]
        previous, run = None, []
        for tensor in plan.tensors + [None]:
            shown = _shown(self.resolved[tensor.name]) if tensor is not None else None
            if run and shown != previous:
                lines.append(f"{run[0] if len(run) == 1 else f'{run[0]} .. {run[-1]}'}: {previous}")
                run = []
            if tensor is not None:
                previous = shown
                run.append(tensor.name)
        return lines

    def mergekit(self, plan) -> dict:
        """The config itself (what ``taxcut export-mergekit`` prints for a mergekit config)."""
        config = self.config.model_dump(
            mode="json", exclude_none=True, exclude={"out", "max_shard_size", "allow_tokenizer_mismatch"}
        )
        names = [checkpoint.source.reference for checkpoint in plan.checkpoints]
        by_name = dict(zip(self.config.inputs(), names))
        for model in config["models"]:
            model["model"] = by_name[model["model"]]
        if self.config.base_model is not None:
            config["base_model"] = by_name[self.config.base_model]
        return config


def _shown(values: dict[str, Any]) -> str:
    def number(value):
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    return ", ".join(
        f"{k}={'[' + ', '.join(number(v) for v in x) + ']' if isinstance(x, list) else number(x)}"
        for k, x in values.items()
    )
