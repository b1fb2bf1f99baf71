"""One model in memory whose weights are set in place for each candidate: no disk write per candidate.

The SFT and aligned weights are kept beside the live parameters (three copies of the weights in all), and a
candidate is applied with the same plan (:func:`taxcut.merging.plan.build_plan`) and the same arithmetic
(:func:`taxcut.methods.interpolation.interpolate`) as ``taxcut merge``, so a candidate's weights are bit for bit
those of the merged folder of the same spec.

``sources="host"`` keeps the two source copies in (pinned) host memory instead of on the model's device: a
candidate then streams both over the host link, block by block, into the live parameters -- for a model whose three
copies do not fit the GPU (see README, "Scaling out").
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from taxcut.errors import TaxcutError
from taxcut.evaluation.loading import load_causal_lm, load_tokenizer
from taxcut.io.hub import model_path  # a Hub ID's snapshot in the cache
from taxcut.io.layers import detect_layers
from taxcut.io.parameters import checkpoint_names, read_parameters
from taxcut.merging.engine import run_merge
from taxcut.merging.plan import build_plan
from taxcut.methods.interpolation import BLOCK_ELEMENTS, interpolate
from taxcut.spec.candidates import Candidate


class ResidentModel:
    """The SFT model loaded once; :meth:`apply` turns it into any candidate in about one pass over the weights."""

    def __init__(
        self,
        sft: Path,
        aligned: Path,
        *,
        device: torch.device | str = "cpu",
        dtype: str | None = None,
        extrapolate: bool = False,
        sources: str = "device",
        allow_tokenizer_mismatch: bool = False,
    ):
        self.sft_folder, self.aligned_folder, self.extrapolate = model_path(sft), model_path(aligned), extrapolate
        self.allow_tokenizer_mismatch = allow_tokenizer_mismatch  # as the sweep allows it (same weights either way)
        self.device = device
        self.model = load_causal_lm(sft, device=device, dtype=dtype)  # the live parameters, in the sweep's dtype
        self.sources = torch.device("cpu") if sources == "host" else self.model.device  # where theta_sft/_aligned live
        self.tokenizer = load_tokenizer(aligned)  # the aligned model's tokenizer and chat template, as merges copy
        if (self.aligned_folder / "generation_config.json").is_file():  # and its generation config (eos ids ...)
            from taxcut.evaluation.loading import load_generation_config

            self.model.generation_config = load_generation_config(self.aligned_folder)
        self.parameters = dict(self.model.named_parameters())  # tied weights appear once
        self.stored_name = checkpoint_names(self.model)
        # theta_sft and theta_aligned in their stored dtype: interpolate first, cast last, as merge does
        self.sft = self._read(self.sft_folder)
        self.aligned = self._read(self.aligned_folder)
        self._scratch = torch.empty(2 * BLOCK_ELEMENTS, dtype=torch.float32, device=self.model.device)
        self.current: str | None = None

    def _read(self, folder: Path) -> dict[str, torch.Tensor]:
        """Every parameter's stored tensor in ``folder``, placed where the sources live."""
        return {name: self._placed(tensor) for name, tensor in self._tensors(folder)}

    def _tensors(self, folder: Path):
        """Yield ``(parameter, tensor)`` from ``folder``, one at a time; parameters that transformers fuses from
        several stored tensors (mixture-of-experts) are taken from the folder loaded by transformers instead."""
        fused = []
        for name, tensor in read_parameters(folder, self.parameters, self.stored_name, "candidate"):
            if tensor is None:
                fused.append(name)
            else:
                yield name, tensor
        if fused:
            loaded = dict(load_causal_lm(folder, device=self.sources).named_parameters())
            for name in fused:
                if name not in loaded or loaded[name].shape != self.parameters[name].shape:
                    shape = list(self.parameters[name].shape)
                    raise TaxcutError(
                        f"{folder}: has no parameter '{name}' of shape {shape}; a candidate must have "
                        "the sft model's architecture"
                    )
                yield name, loaded[name].detach()

    def _placed(self, tensor: torch.Tensor) -> torch.Tensor:
        """A source tensor where the sources live: on the model's device, or in host memory (pinned for a GPU model,
        so that a candidate's copies to the device run at the link's speed)."""
        tensor = tensor.to(self.sources)
        return tensor.pin_memory() if self.sources.type == "cpu" and self.model.device.type == "cuda" else tensor

    def ratios(self, candidate: Candidate) -> dict[str, float]:
        """The ratio of every parameter, resolved by the merge plan on the checkpoints' tensor names."""
        spec = candidate.merge_spec(
            self.sft_folder,
            self.aligned_folder,
            extrapolate=self.extrapolate,
            allow_tokenizer_mismatch=self.allow_tokenizer_mismatch,
        )
        with build_plan(spec) as plan:
            by_stored_name = {t.name: plan.ratio_of(t.name) for t in plan.tensors}
            fused = [name for name in self.parameters if self.stored_name[name] not in by_stored_name]
            if fused:  # parameters fused from several stored tensors: resolved on the parameter names
                request = plan.request
                by_parameter = request.method.block_values(request.parameters, detect_layers(self.parameters), {})
                resolver = next(iter(by_parameter.values()))
        return {
            name: by_stored_name[self.stored_name[name]] if name not in fused else resolver.value_for(name).value
            for name in self.parameters
        }

    def apply(self, candidate: Candidate) -> None:
        """Set the live parameters to ``candidate``'s weights, in place."""
        if candidate.model is not None:
            self._load(Path(candidate.model))
            self.current = candidate.id
            return
        if candidate.mergekit is not None:
            self._merge_and_load(candidate)
            self.current = candidate.id
            return
        with torch.no_grad():
            for name, ratio in self.ratios(candidate).items():
                interpolate(
                    self.sft[name],
                    self.aligned[name],
                    ratio,
                    self.parameters[name].data,
                    scratch=self._scratch,
                    check_finite=False,
                )
        self.current = candidate.id

    def _merge_and_load(self, candidate: Candidate) -> None:
        """A mergekit candidate: merged by the engine into a temporary folder exactly as ``taxcut merge`` merges its
        config (mergekit's methods rank, sort and normalise whole tensors, which the in-place kernel does not), then
        loaded like a checkpoint."""
        with tempfile.TemporaryDirectory(prefix="taxcut-mergekit-") as folder:
            spec = candidate.merge_spec(
                self.sft_folder,
                self.aligned_folder,
                out=Path(folder) / "candidate",
                allow_tokenizer_mismatch=self.allow_tokenizer_mismatch,
            )
            run_merge(build_plan(spec), progress=False, log=lambda _: None)
            self._load(Path(folder) / "candidate")

    def _load(self, folder: Path) -> None:
        """Copy another checkpoint of the same architecture into the live parameters, one tensor at a time (no
        second copy of the model)."""
        self.current = None  # a failure part way leaves no candidate in place
        with torch.no_grad():
            for name, tensor in self._tensors(folder):
                self.parameters[name].data.copy_(tensor)
