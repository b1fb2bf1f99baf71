"""LoRA adapter folders (PEFT) read as if they were the merged model: base + adapter, one tensor at a time.

A LoRA module adds ``scale * B @ A`` to its base weight (``scale = lora_alpha / r``, or ``lora_alpha / sqrt(r)``
with rsLoRA; transposed for ``fan_in_fan_out`` layers such as GPT-2's Conv1D). Tensors saved whole in the adapter
(``modules_to_save``) replace the base's. The whole model is never materialised: each tensor is computed when it is
read, from the base tensor and the adapter's two small matrices.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from taxcut.errors import TaxcutError
from taxcut.io.hub import resolve_model

ADAPTER_CONFIG = "adapter_config.json"
_PREFIX = "base_model.model."


def is_adapter_folder(folder: Path) -> bool:
    has_weights = any(
        (folder / name).is_file()
        for name in (
            "model.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
        )
    )
    return (folder / ADAPTER_CONFIG).is_file() and not has_weights


class LoraAdapter:
    def __init__(self, folder: Path, role: str):
        self.folder = folder
        try:
            config = json.loads((folder / ADAPTER_CONFIG).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TaxcutError(f"{folder / ADAPTER_CONFIG}: not valid JSON ({exc})") from None
        if config.get("peft_type", "LORA") != "LORA":
            raise TaxcutError(f"{folder}: a {config.get('peft_type')} adapter; only LoRA adapters can be merged")
        if config.get("use_dora"):
            raise TaxcutError(f"{folder}: a DoRA adapter; only plain LoRA adapters can be merged")
        if config.get("rank_pattern") or config.get("alpha_pattern"):
            raise TaxcutError(f"{folder}: per-module ranks or alphas are not supported; merge it with peft first")
        base = config.get("base_model_name_or_path")
        base_folder = Path(base) if isinstance(base, str) and base else None
        if base_folder is not None and not base_folder.is_absolute() and (folder / base_folder).is_dir():
            base_folder = folder / base_folder
        try:
            self.base_source = resolve_model(base_folder) if base_folder is not None else None  # a Hub ID too
        except TaxcutError as exc:
            raise TaxcutError(f"{folder}: the {role} adapter's base model: {exc}") from None
        if self.base_source is None or not self.base_source.path.is_dir():
            raise TaxcutError(
                f"{folder}: the {role} adapter's base model {base!r} is neither a local folder nor a Hub repo ID; "
                "set 'base_model_name_or_path' in its adapter_config.json to the base model's folder or org/name"
            )
        self.base_folder = self.base_source.path
        rank, alpha = config.get("r", 8), config.get("lora_alpha", 8)
        self.scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        self.fan_in_fan_out = bool(config.get("fan_in_fan_out"))
        weights = folder / "adapter_model.safetensors"
        if not weights.is_file():
            raise TaxcutError(f"{folder}: no adapter_model.safetensors in the {role} adapter folder")
        stored = load_file(weights)  # small: two low-rank matrices per module
        self.weights_file = weights
        self.lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.embedding: set[str] = set()  # targets whose delta is (B @ A).T (LoRA on an embedding)
        self.bias: dict[str, torch.Tensor] = {}  # lora_bias: scale * lora_B.bias added to the base bias
        self.replaced: dict[str, torch.Tensor] = {}
        for key, tensor in stored.items():
            name = key.removeprefix(_PREFIX)
            if ".lora_A." in name or name.endswith(".lora_embedding_A"):
                marker = ".lora_A." if ".lora_A." in name else ".lora_embedding_A"
                target = name.split(marker)[0] + ".weight"
                partner = key.replace(".lora_A.", ".lora_B.").replace("lora_embedding_A", "lora_embedding_B")
                if partner not in stored:
                    raise TaxcutError(f"{weights}: '{key}' has no lora_B partner")
                self.lora[target] = (tensor, stored[partner])
                if marker == ".lora_embedding_A":
                    self.embedding.add(target)
            elif ".lora_B." in name:
                if name.endswith(".lora_B.bias") or name.endswith(".lora_B.default.bias"):
                    self.bias[name.split(".lora_B.")[0] + ".bias"] = tensor
            elif not name.endswith(".lora_embedding_B") and ".base_layer." not in name:  # base_layer: the base itself
                self.replaced[name.replace(".modules_to_save.default", "")] = tensor

    def check(self, shapes: dict[str, tuple[int, ...]], tied: bool = False) -> None:
        """Refuse an adapter made for another base (a target missing or of another shape)."""
        for target, (a, b) in self.lora.items():
            transposed = self.fan_in_fan_out or target in self.embedding
            expected = (a.shape[1], b.shape[0]) if transposed else (b.shape[0], a.shape[1])
            if target not in shapes and tied and target.endswith(("lm_head.weight", "embed_out.weight")):
                raise TaxcutError(
                    f"{self.folder}: LoRA on '{target}', which the base ties to its input embedding; "
                    "merge this adapter with peft (merge_and_unload) first"
                )
            if target not in shapes or tuple(shapes[target]) != expected:
                found = list(shapes[target]) if target in shapes else "absent"
                raise TaxcutError(
                    f"{self.folder}: adapter for another base: '{target}' is {found} in "
                    f"{self.base_folder} but the adapter expects {list(expected)}"
                )
        for name, tensor in self.replaced.items():
            if name not in shapes or tuple(shapes[name]) != tuple(tensor.shape):
                raise TaxcutError(
                    f"{self.folder}: adapter for another base: '{name}' does not match {self.base_folder}"
                )

    def applies_to(self, name: str) -> bool:
        return name in self.lora or name in self.replaced or name in self.bias

    def merged(self, name: str, base: torch.Tensor) -> torch.Tensor:
        """The merged tensor ``name`` (float32 arithmetic, cast to the base dtype)."""
        if name in self.replaced:
            return self.replaced[name].to(base.dtype)
        if name in self.bias:
            return (base.float() + self.scale * self.bias[name].float()).to(base.dtype)
        a, b = self.lora[name]
        delta = b.float() @ a.float()
        if self.fan_in_fan_out or name in self.embedding:
            delta = delta.T
        return (base.float() + self.scale * delta).to(base.dtype)
