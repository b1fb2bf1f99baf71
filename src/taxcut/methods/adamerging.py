"""AdaMerging (Yang et al. 2024, "AdaMerging: Adaptive Model Merging for Multi-Task Learning", ICLR): task-vector
coefficients, one per model (task-wise) or per model and decoder layer (layer-wise), learned by minimising the
entropy of the merged model's next-token predictions on unlabelled prompts.

    theta = theta_base + sum_i c_(i,g) * (theta_i - theta_base),   g = the tensor's decoder layer (or one group)

Layer-wise coefficients have ``L + 1`` groups per model: one per decoder layer and one for everything outside the
layers. The fit (:mod:`taxcut.tuning.adamerging`) runs as this method's prepare step unless ``coefficients`` are
given; the merge applies them chunk by chunk with the fit's own arithmetic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from taxcut.errors import TaxcutError
from taxcut.methods.parameters import MethodParameters
from taxcut.methods.registry import MergeMethod, TensorSite, register
from taxcut.training import task_vector_sum


class AdaMergingParameters(MethodParameters):
    data: Path | None = None  # unlabelled prompts (JSONL with "prompt") to fit the coefficients on
    granularity: Literal["layer", "task"] = "layer"
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(0.01, gt=0, allow_inf_nan=False)
    init: float = Field(0.3, ge=0, le=1)
    seed: int = 0
    device: str = "auto"
    coefficients: list[list[float]] | None = None  # (models, groups); learned unless given
    layers: int | None = None  # the decoder layer count the coefficients were learned for
    fit: dict[str, Any] | None = None  # the fit's record (entropy curve), written by the prepare step


@register
class AdaMerging(MergeMethod):
    """``theta_base + sum_i c_(i,g) * (theta_i - theta_base)`` with learned (or given) coefficients."""

    name = "adamerging"
    paper = "Yang et al. 2024, 'AdaMerging: Adaptive Model Merging for Multi-Task Learning'"
    Parameters = AdaMergingParameters
    needs_base, elementwise = True, True

    def validate(self, request) -> None:
        parameters = request.parameters
        if parameters.coefficients is None and parameters.data is None:
            raise TaxcutError(
                "adamerging needs parameters.data (a JSONL file of unlabelled prompts) to learn its "
                "coefficients, or the coefficients themselves"
            )
        if parameters.coefficients is not None and len(parameters.coefficients) != len(request.models):
            raise TaxcutError(
                f"adamerging: parameters.coefficients has {len(parameters.coefficients)} rows but "
                f"there are {len(request.models)} models; give one row per model"
            )

    def input_files(self, request) -> list[tuple[str, Path]]:
        data = request.parameters.data
        return [("AdaMerging prompts", data)] if data is not None else []

    def check(self, parameters, layout) -> None:
        if parameters.coefficients is None:
            return
        groups = {len(row) for row in parameters.coefficients}
        if groups - {1, layout.num_layers + 1} or len(groups) != 1:
            raise TaxcutError(
                f"adamerging: each row of parameters.coefficients needs 1 value (task-wise) or "
                f"{layout.num_layers + 1} (one per decoder layer, then one for the rest)"
            )
        if parameters.layers is not None and parameters.layers != layout.num_layers:
            raise TaxcutError(
                f"adamerging: the coefficients were learned for {parameters.layers} decoder layers "
                f"but the models have {layout.num_layers}"
            )

    def prepare(self, request, log):
        parameters = request.parameters
        if parameters.coefficients is not None:
            return request
        from taxcut.tuning.adamerging import fit_adamerging  # loads transformers: only when the fit runs

        learned = fit_adamerging(
            request.base.path,
            [m.path for m in request.models],
            parameters.data,
            granularity=parameters.granularity,
            epochs=parameters.epochs,
            batch_size=parameters.batch_size,
            lr=parameters.lr,
            init=parameters.init,
            seed=parameters.seed,
            device=parameters.device,
        )
        fitted = {
            "coefficients": learned["coefficients"],
            "layers": learned["layers"],
            "fit": {"entropy": learned["entropy"], "granularity": learned["granularity"]},
        }
        return request.replace(parameters=parameters.model_copy(update=fitted))

    def merge(self, models, base, weights, parameters, site: TensorSite):
        coefficients = parameters.coefficients
        if len(coefficients[0]) == 1:
            group = 0
        else:
            group = site.layer if site.layer is not None else site.num_layers
        return task_vector_sum(base, models, [row[group] for row in coefficients])
