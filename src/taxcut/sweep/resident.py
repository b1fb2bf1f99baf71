"""One model in memory whose weights are set in place for each candidate: no disk write per candidate.

The SFT and aligned weights are kept beside the live parameters (three copies of the weights in all), and a
candidate is applied with the same plan (:func:`taxcut.merging.plan.build_plan`) and the same arithmetic
(:func:`taxcut.merging.interpolation.interpolate`) as ``taxcut merge``, so a candidate's weights are bit for bit
those of the merged folder of the same spec.
"""

from __future__ import annotations

from pathlib import Path

import torch

from taxcut.errors import TaxcutError
from taxcut.evaluation.loading import load_causal_lm, load_tokenizer
from taxcut.io.checkpoint import Checkpoint
from taxcut.merging.interpolation import BLOCK_ELEMENTS, interpolate
from taxcut.merging.plan import build_plan
from taxcut.sweep.candidates import Candidate


class ResidentModel:
    """The SFT model loaded once; :meth:`apply` turns it into any candidate in about one pass over the weights."""

    def __init__(self, sft: Path, aligned: Path, *, device: torch.device | str = "cpu", dtype: str | None = None,
                 extrapolate: bool = False):
        self.sft_folder, self.aligned_folder, self.extrapolate = Path(sft), Path(aligned), extrapolate
        self.model = load_causal_lm(sft, device=device, dtype=dtype)
        self.tokenizer = load_tokenizer(aligned)  # the aligned model's tokenizer and chat template, as merges copy
        aligned_params = dict(load_causal_lm(aligned, device=device, dtype=dtype).named_parameters())
        self.parameters = dict(self.model.named_parameters())  # tied weights appear once
        self.sft = {name: p.detach().clone() for name, p in self.parameters.items()}
        self.aligned = {name: aligned_params[name].detach() for name in self.parameters}
        del aligned_params
        self.stored_name = checkpoint_names(self.model)
        self._scratch = torch.empty(2 * BLOCK_ELEMENTS, dtype=torch.float32, device=self.model.device)
        self.current: str | None = None

    def ratios(self, candidate: Candidate) -> dict[str, float]:
        """The ratio of every parameter, resolved by the merge plan on the checkpoints' tensor names."""
        spec = candidate.merge_spec(self.sft_folder, self.aligned_folder, extrapolate=self.extrapolate)
        with build_plan(spec) as plan:
            by_stored_name = {t.name: t.decision.alpha for t in plan.tensors}
            resolver = plan.resolver
        return {
            name: by_stored_name[self.stored_name[name]] if self.stored_name[name] in by_stored_name
            else resolver.ratio_for(name).alpha  # a parameter fused from several stored tensors
            for name in self.parameters
        }

    def apply(self, candidate: Candidate) -> None:
        """Set the live parameters to ``candidate``'s weights, in place."""
        if candidate.model is not None:
            self._load(Path(candidate.model))
            self.current = candidate.id
            return
        with torch.no_grad():
            for name, ratio in self.ratios(candidate).items():
                interpolate(self.sft[name], self.aligned[name], ratio, self.parameters[name].data,
                            scratch=self._scratch, check_finite=False)
        self.current = candidate.id


    def _load(self, folder: Path) -> None:
        """Copy another checkpoint of the same architecture into the live parameters."""
        with Checkpoint(folder, "candidate") as checkpoint, torch.no_grad():
            for name, parameter in self.parameters.items():
                info = checkpoint.tensors.get(self.stored_name[name])
                if info is None or tuple(info.shape) != tuple(parameter.shape):
                    raise TaxcutError(
                        f"{folder}: tensor '{self.stored_name[name]}' is missing or has another shape; a model "
                        "candidate must have the sft model's architecture"
                    )
                parameter.data.copy_(checkpoint.read(info))


def checkpoint_names(model) -> dict[str, str]:
    """The name under which each parameter is stored in a checkpoint.

    transformers may rename weights on load (GPT-NeoX's ``embed_out`` becomes ``lm_head``); its own reverse
    mapping, the one ``save_pretrained`` uses, is applied here to placeholder tensors.
    """
    names = {name: name for name, _ in model.named_parameters()}
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return names
    placeholders = {name: torch.empty(p.shape, device="meta") for name, p in model.named_parameters()}
    reverted = revert_weight_conversion(model, dict(placeholders))
    stored = {id(tensor): name for name, tensor in reverted.items()}
    return {name: stored.get(id(tensor), name) for name, tensor in placeholders.items()}
