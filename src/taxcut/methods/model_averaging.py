"""Model averaging (MA) and heterogeneous model averaging (HMA), from "Mitigating the Alignment Tax of RLHF"
(Lin et al., EMNLP 2024, arXiv 2309.06256):

    theta = (1 - a_t) * theta_sft + a_t * theta_aligned      (a weighs the ALIGNED model; a > 1 is ExPO)

``a_t`` is one ratio for every tensor (MA), one per block of decoder layers or per layer (HMA), with name rules on
top; :class:`taxcut.methods.block_values.BlockValues` resolves it per tensor (see :mod:`taxcut.spec.merge` for the
conventions). This is the two-input member of the linear family: the inputs are the SFT model, then the aligned
one, and the kernel is :func:`taxcut.methods.interpolation.interpolate` (float32 arithmetic on cache-sized blocks,
cast last). The paper's reference code weighs the SFT model instead: its ``alpha=0.2`` is our ``a=0.8``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from taxcut.methods.block_values import BlockValues
from taxcut.methods.interpolation import interpolate
from taxcut.methods.parameters import MethodParameters
from taxcut.methods.registry import MergeMethod, register
from taxcut.methods.request import MergeRequest, ModelInput
from taxcut.spec.merge import MergeSpec, RatioFields, profile_ratios, spec_from_dict
from taxcut.spec.mergekit_config import evaluate_setting, layer_t

RATIO = "alpha"  # the name of the per-tensor ratio


class AveragingParameters(RatioFields, MethodParameters):
    """The ratio fields of a :class:`~taxcut.spec.merge.MergeSpec` (validated there), and whether ratios may leave
    [0, 1]."""

    extrapolate: bool = False

    @classmethod
    def of(cls, spec: MergeSpec) -> AveragingParameters:
        return cls(**{name: getattr(spec, name) for name in cls.model_fields})


@register
class ModelAveraging(MergeMethod):
    name = "model_averaging"
    paper = "Lin et al. 2024, 'Mitigating the Alignment Tax of RLHF' (MA/HMA): (1 - a) * sft + a * aligned"
    Parameters = AveragingParameters
    min_models = max_models = 2
    elementwise = True
    spec_type = MergeSpec

    def parameters(self, raw):
        """As a toolkit method (``models: [sft, aligned]``): the ratio fields, checked as a merge spec checks them."""
        checked = spec_from_dict({"sft": "sft", "aligned": "aligned", **raw}, source="parameters")
        return AveragingParameters.of(checked)

    def request_from_spec(self, spec: MergeSpec) -> MergeRequest:
        return MergeRequest(
            method=self,
            inputs=(ModelInput("sft", Path(spec.sft)), ModelInput("aligned", Path(spec.aligned))),
            parameters=AveragingParameters.of(spec),
            out=spec.out,
            dtype=spec.dtype,
            max_shard_bytes=spec.max_shard_bytes,
            side_files_from=0 if spec.files_from == "sft" else 1,
            spec=spec,
        )

    def block_values(self, parameters, layout, tied_head_of):
        p = parameters
        if p.profile is not None:  # LiNeS: the per-layer ratios, once L is known (then exactly as layer_alphas)
            layers = profile_ratios(*p.profile, layout.num_layers) if layout.num_layers else None
            return {
                RATIO: BlockValues(
                    layout, field="profile", layers=layers, rules=p.rules, tied_head_of=tied_head_of, noun="ratio"
                )
            }
        field = "alpha" if p.alpha is not None else "alphas" if p.alphas is not None else "layer_alphas"
        return {
            RATIO: BlockValues(
                layout,
                field=field,
                value=p.alpha,
                blocks=p.alphas,
                block_bounds=p.block_bounds,
                layers=p.layer_alphas,
                rules=p.rules,
                tied_head_of=tied_head_of,
                noun="ratio",
            )
        }

    def plan_lines(self, plan) -> list[str]:
        """The ratio convention and the mean a (with blocks of unequal size, both the block mean and the mean over
        the layers), then each group of tensors with its ratio a."""
        resolver = plan.resolver
        lines = [
            "ratio    a weighs the ALIGNED model: theta = (1 - a) * sft + a * aligned",
            *mean_lines(resolver),
            "",
            f"{'group':<58} {'a':>8} {'tensors':>8} {'params':>12}",
        ]
        for group, members in plan.groups().items():
            params = sum(m.info.numel for m in members)
            lines.append(f"{group:<58} {members[0].decision.value:>8.4g} {len(members):>8} {params:>12,}")
            if len(members) <= 3 and not group.startswith(("block", "layer ", "decoder")):
                lines.extend(f"    {m.name}" for m in members)
        return lines

    def describe(self, parameters) -> str:
        return "model averaging (MA/HMA): (1 - a) * sft + a * aligned"

    def merge(self, models, base, weights, parameters, site):
        sft, aligned = models
        return (1.0 - parameters.alpha) * sft + parameters.alpha * aligned

    def merge_into(self, models, base, weights, parameters, site, out, scratch) -> bool:
        sft, aligned = models
        return interpolate(sft, aligned, parameters.alpha, out, scratch=scratch)

    def overflow_hint(self, parameters) -> str:
        return f"averaging with a = {parameters.alpha:g} overflows; choose a wider 'dtype' (float32) or a smaller ratio"

    def mergekit(self, plan) -> dict:
        """mergekit's ``linear`` merge of the two models, weights ``1 - a`` and ``a``, computing the same bytes as
        :func:`interpolate` (its arithmetic is mergekit's): one weight per decoder layer as a gradient list, and
        ``filter`` entries, first, for every tensor the gradient would not give its exact float32 weight: tensors
        outside the layers (mergekit gives them a gradient's *first* value; taxcut gives embeddings the first
        block's ratio and the head side the mean), name rules inside the layers (by full name) and the layers where
        mergekit's ``t * (n - 1)`` misses the layer's index by a rounding (from 23 layers on; by layer prefix).
        The working ``dtype`` is float32, as taxcut's, and ``out_dtype`` the output's."""
        per_layer = plan.resolver.layer_values
        gradient = [(_weight(a, 0), _weight(a, 1)) for a in per_layer]
        exceptions, outside, layers = {}, {}, {}
        for tensor in plan.tensors:
            ratio, layer = tensor.decision.value, tensor.site.layer
            if layer is None:
                outside[tensor.name.removesuffix(".weight").removesuffix(".bias")] = ratio
            elif per_layer and ratio != per_layer[layer]:
                exceptions[tensor.name] = ratio
            elif per_layer and not _gradient_exact(gradient, ratio, layer):
                layers[_layer_filter(plan, layer) or tensor.name] = ratio

        def weights(side: int) -> list:
            entries = [
                {"filter": name, "value": _weight(a, side)}
                for found in (exceptions, outside, layers)
                for name, a in sorted(found.items())
            ]
            return entries + [
                {"value": [pair[side] for pair in gradient] if per_layer else _weight(plan.resolver.mean, side)}
            ]

        sft, aligned = (checkpoint.source.reference for checkpoint in plan.checkpoints)  # Hub IDs with their commit
        return {
            "comment": "theta = (1 - a) * sft + a * aligned, one weight per layer;\n# tensors whose ratio "
            "differs (outside the layers, name rules) are listed by name first",
            "merge_method": "linear",
            "dtype": "float32",
            "out_dtype": plan.request.dtype or plan.out_dtype,
            "parameters": {"normalize": False},
            "models": [
                {"model": sft, "parameters": {"weight": weights(0)}},
                {"model": aligned, "parameters": {"weight": weights(1)}},
            ],
        }


def _float32(value: float) -> float:
    return torch.tensor(value, dtype=torch.float32).item()


def _weight(alpha: float, side: int) -> float:
    """The sft (side 0) or aligned (side 1) weight of ratio ``alpha``, rounded to 10 digits for the reader unless
    that changes the float32 weight :func:`interpolate` uses (``1 - alpha`` or ``alpha``)."""
    exact = 1.0 - alpha if side == 0 else alpha
    shown = round(exact, 10)
    return shown if _float32(shown) == _float32(exact) else exact


def _gradient_exact(gradient: list[tuple[float, float]], alpha: float, layer: int) -> bool:
    """Whether mergekit's gradient interpolation gives layer ``layer`` exactly the float32 weights of ``alpha``."""
    t = layer_t(layer, len(gradient))
    return all(
        _float32(evaluate_setting("", [pair[side] for pair in gradient], t, float))
        == _float32(1.0 - alpha if side == 0 else alpha)
        for side in (0, 1)
    )


def _layer_filter(plan, layer: int) -> str | None:
    """The name prefix of layer ``layer``'s tensors (``model.layers.5.``), if it is a substring of no other tensor's
    name (mergekit's filters match substrings)."""
    names = [t.name for t in plan.tensors if t.site.layer == layer]
    prefix = os.path.commonprefix(names)
    prefix = prefix[: prefix.rfind(".") + 1]
    if not prefix or any(prefix in t.name for t in plan.tensors if t.site.layer != layer):
        return None
    return prefix


def mean_lines(resolver) -> list[str]:
    """How ``taxcut plan`` states the mean a: one number when every block has as many layers, else the mean of the
    block ratios (what HMA holds at a, and what the tensors after the layers get) and the mean over the layers."""
    if not resolver.unequal_means:
        return [f"mean a   {resolver.mean:.4g} (of the decoder layers; the tensors after the layers get it)"]
    blocks = (
        f"mean a   {resolver.mean:.4g} over the {len(resolver.blocks)} blocks (what HMA holds at a; the tensors "
        "after the layers get it)"
    )
    layers = (
        f"         {resolver.layer_mean:.4g} over the {len(resolver.layer_values)} layers (each block weighted "
        "by its number of layers)"
    )
    return [blocks, layers]
