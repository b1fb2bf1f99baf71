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

from pathlib import Path

from taxcut.methods.block_values import BlockValues
from taxcut.methods.interpolation import interpolate
from taxcut.methods.parameters import MethodParameters
from taxcut.methods.registry import MergeMethod, register
from taxcut.methods.request import MergeRequest, ModelInput
from taxcut.spec.merge import MergeSpec, RatioFields, spec_from_dict

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
            method=self, inputs=(ModelInput("sft", Path(spec.sft)), ModelInput("aligned", Path(spec.aligned))),
            parameters=AveragingParameters.of(spec), out=spec.out, dtype=spec.dtype,
            max_shard_bytes=spec.max_shard_bytes, side_files_from=0 if spec.files_from == "sft" else 1, spec=spec)

    def block_values(self, parameters, layout, tied_head_of):
        p = parameters
        field = "alpha" if p.alpha is not None else "alphas" if p.alphas is not None else "layer_alphas"
        return {RATIO: BlockValues(layout, field=field, value=p.alpha, blocks=p.alphas, block_bounds=p.block_bounds,
                                   layers=p.layer_alphas, rules=p.rules, tied_head_of=tied_head_of, noun="ratio")}

    def plan_lines(self, plan) -> list[str]:
        """The ratio convention and the mean a (with blocks of unequal size, both the block mean and the mean over
        the layers), then each group of tensors with its ratio a."""
        resolver = plan.resolver
        lines = ["ratio    a weighs the ALIGNED model: theta = (1 - a) * sft + a * aligned", *mean_lines(resolver),
                 "", f"{'group':<58} {'a':>8} {'tensors':>8} {'params':>12}"]
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
        """mergekit's ``linear`` merge of the two models with one weight per decoder layer (a list of L values:
        mergekit's gradient interpolation then gives layer i exactly value i) and explicit ``filter`` entries for
        tensors outside the layers (mergekit gives them a gradient's *first* value; taxcut gives embeddings the first
        block's ratio and the head side the mean) and for name rules inside the layers (by full name)."""
        per_layer = plan.resolver.layer_values
        exceptions, outside = {}, {}
        for tensor in plan.tensors:
            ratio = tensor.decision.value
            if tensor.site.layer is None:
                outside[tensor.name.removesuffix(".weight").removesuffix(".bias")] = ratio
            elif per_layer and ratio != per_layer[tensor.site.layer]:
                exceptions[tensor.name] = ratio

        def weights(take) -> list:
            entries = [{"filter": name, "value": take(a)} for name, a in sorted(exceptions.items())]
            entries += [{"filter": name, "value": take(a)} for name, a in sorted(outside.items())]
            return entries + [{"value": [take(a) for a in per_layer] if per_layer else take(plan.resolver.mean)}]

        sft, aligned = (checkpoint.source.reference for checkpoint in plan.checkpoints)  # Hub IDs with their commit
        return {
            "comment": "theta = (1 - a) * sft + a * aligned, one weight per layer;\n# tensors whose ratio "
                       "differs (outside the layers, name rules) are listed by name first",
            "merge_method": "linear",
            "dtype": plan.request.dtype or plan.out_dtype,
            "parameters": {"normalize": False},
            "models": [
                {"model": sft, "parameters": {"weight": weights(lambda a: round(1 - a, 10))}},
                {"model": aligned, "parameters": {"weight": weights(lambda a: round(a, 10))}},
            ],
        }


def mean_lines(resolver) -> list[str]:
    """How ``taxcut plan`` states the mean a: one number when every block has as many layers, else the mean of the
    block ratios (what HMA holds at a, and what the tensors after the layers get) and the mean over the layers."""
    if not resolver.unequal_means:
        return [f"mean a   {resolver.mean:.4g} (of the decoder layers; the tensors after the layers get it)"]
    blocks = (f"mean a   {resolver.mean:.4g} over the {len(resolver.blocks)} blocks (what HMA holds at a; the tensors "
              "after the layers get it)")
    layers = (f"         {resolver.layer_mean:.4g} over the {len(resolver.layer_values)} layers (each block weighted "
              "by its number of layers)")
    return [blocks, layers]
