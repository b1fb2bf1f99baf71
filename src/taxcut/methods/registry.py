"""The registry of merge methods, and what a method is.

A method is a subclass of :class:`MergeMethod` in its own module of :mod:`taxcut.methods`, registered with
:func:`register`. It declares

- its name, the paper it comes from, which inputs it takes (a base model? how many models?);
- its parameters, as a pydantic model (types, defaults, validation). A field annotated :data:`PerBlock` takes one
  number or a list with one number per block of decoder layers, resolved per tensor by
  :class:`taxcut.methods.block_values.BlockValues`;
- ``merge``: a pure function on one tensor of every input (float32 in, float32 out), or, for ``elementwise``
  methods, on equal element ranges of them (the engine then streams chunks and memory does not grow with tensor
  size);
- optionally ``prepare``: work done on data before the merge streams (choosing ingredients, fitting coefficients),
  returning the request to execute.

Nothing outside a method's module names the method: the planner and the engine only call these hooks.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import ValidationError

from taxcut.errors import TaxcutError
from taxcut.io.layers import LayerLayout
from taxcut.methods.block_values import BlockValues
from taxcut.methods.interpolation import all_finite
from taxcut.methods.parameters import MethodParameters, describe_parameter_error


@dataclass(frozen=True)
class TensorSite:
    """Where a tensor sits in the model: its stored name and its decoder layer (None outside the layers)."""

    name: str
    layer: int | None
    num_layers: int


class MergeMethod:
    """A merge method (subclass it, set the class attributes, implement :meth:`merge`, then :func:`register`)."""

    name: ClassVar[str]
    paper: ClassVar[str]  # the paper the method comes from, cited in provenance, model cards and `taxcut plan`
    Parameters: ClassVar[type[MethodParameters]] = MethodParameters
    needs_base: ClassVar[bool] = False  # works on task vectors theta_i - theta_base
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = None
    elementwise: ClassVar[bool] = False  # each output element depends only on the same element of every input
    spec_type: ClassVar[type | None] = None  # a spec class of its own (model averaging's MergeSpec), if any

    # --- what the planner calls -------------------------------------------------------------------------------

    def parameters(self, raw: dict[str, Any]) -> MethodParameters:
        """Validate a spec's ``parameters`` mapping into this method's typed parameters (one-line errors)."""
        try:
            return self.Parameters.model_validate(raw)
        except ValidationError as exc:
            raise TaxcutError(describe_parameter_error(self.name, exc)) from None

    def block_values(
        self, parameters: MethodParameters, layout: LayerLayout, tied_head_of: dict[str, str]
    ) -> dict[str, Any]:
        """One :class:`~taxcut.methods.block_values.BlockValues` per per-block parameter given as a list (the planner
        resolves each tensor's value with them)."""
        return {
            name: BlockValues.of(layout, f"parameters.{name}", getattr(parameters, name))
            for name in parameters.per_block_fields()
            if isinstance(getattr(parameters, name), list)
        }

    def check(self, parameters: MethodParameters, layout: LayerLayout) -> None:
        """Refuse parameters that do not fit the checkpoints (called once the layout is known)."""

    def prepare(self, request, log: Callable[[str], None]):
        """Work on data before the merge (choose ingredients, fit coefficients); return the request to execute."""
        return request

    def input_files(self, request) -> list[tuple[str, Path]]:
        """Files the method reads besides the models (data, evaluation files), as (role, path): never destinations."""
        return request.evaluation.input_files() if request.evaluation is not None else []

    def validate(self, request) -> None:
        """Refuse a request that cannot work (a missing evaluation, data file, ...) before any file is read."""

    def plan_lines(self, plan) -> list[str] | None:
        """``taxcut plan``'s lines about this method's parameters (None: each parameter, per block where listed)."""
        return None

    def describe(self, parameters: MethodParameters) -> str:
        """One line for provenance and the model card."""
        return f"{self.name} ({self.paper})"

    # --- what the engine calls --------------------------------------------------------------------------------

    def merge(
        self,
        models: list[torch.Tensor],
        base: torch.Tensor | None,
        weights: list[float],
        parameters: MethodParameters,
        site: TensorSite,
    ) -> torch.Tensor:
        """The merged tensor from float32 ``models`` (and ``base``); ``parameters`` are resolved for this tensor."""
        raise NotImplementedError

    def merge_into(
        self,
        models: Sequence[torch.Tensor],
        base: torch.Tensor | None,
        weights: list[float],
        parameters: MethodParameters,
        site: TensorSite,
        out: torch.Tensor,
        scratch: torch.Tensor,
    ) -> bool:
        """Write the merge of the inputs (in their stored dtypes) into ``out`` (the output dtype); return whether
        every value is finite. Methods with a faster kernel override this; ``scratch`` is float32 working space."""
        merged = self.merge(
            [m.float() for m in models], base.float() if base is not None else None, weights, parameters, site
        )
        out.copy_(merged.reshape(out.shape))
        return all_finite(out)

    def overflow_hint(self, parameters: MethodParameters) -> str:
        """What to tell a user whose merge overflowed the output dtype (inputs were finite)."""
        return "choose a wider 'dtype' (float32) or check the method's parameters"

    def mergekit(self, plan) -> dict:
        """The mergekit configuration that computes the same merge (``taxcut export-mergekit``)."""
        raise TaxcutError(f"method '{self.name}' has no mergekit twin")

    # --- reading mergekit configs (taxcut.methods.mergekit_twin): mergekit's parameters and kernel, if any --------

    mergekit_parameters: ClassVar[tuple] = ()  # MergekitParameter entries; empty: mergekit configs naming it refused

    def mergekit_merge(
        self, tensors: list[torch.Tensor], base_index: int | None, values: dict[str, Any], site: TensorSite
    ) -> torch.Tensor:
        """What mergekit computes for one tensor: ``tensors`` in mergekit's input order and working dtype,
        ``values`` its parameters resolved for this tensor (per-input ones as lists)."""
        raise TaxcutError(f"method '{self.name}' does not read mergekit configs")


METHODS: dict[str, MergeMethod] = {}


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    """Class decorator: add a method to the registry under its ``name``."""
    METHODS[cls.name] = cls()
    return cls


def _load_builtin_methods() -> None:
    import taxcut.methods.catalog  # noqa: F401 - importing it registers the built-in methods


def get_method(name: str) -> MergeMethod:
    """The method registered as ``name``; an unknown name gets close matches."""
    _load_builtin_methods()
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(METHODS))}"
        raise TaxcutError(f"unknown merge method {name!r}{hint}")
    return METHODS[name]


def mergekit_method(name: str) -> MergeMethod:
    """The method that runs a mergekit config's ``merge_method``; one that taxcut does not run is refused, listing
    those it does."""
    _load_builtin_methods()
    method = METHODS.get(name)
    if method is None or not method.mergekit_parameters:
        readers = ", ".join(sorted(n for n, m in METHODS.items() if m.mergekit_parameters))
        raise TaxcutError(f"mergekit merge_method {name!r} is not run by taxcut; it runs {readers}")
    return method


def method_for_spec(spec: object) -> MergeMethod:
    """The method a spec asks for: its ``method`` field, or the method that owns the spec's type."""
    name = getattr(spec, "method", None)
    if isinstance(name, str):
        return get_method(name)
    _load_builtin_methods()
    for method in METHODS.values():
        if method.spec_type is not None and isinstance(spec, method.spec_type):
            return method
    raise TaxcutError(f"no merge method takes a {type(spec).__name__}")
