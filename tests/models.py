"""Tiny models of several architectures, built locally and saved as Hugging Face folders (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config,
)

VOCAB = 64
_COMMON = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)

CONFIGS = {
    "llama": lambda: LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
                                 **_COMMON),
    "qwen2": lambda: Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
                                 **_COMMON),
    "gpt2": lambda: GPT2Config(n_embd=32, n_layer=4, n_head=4, n_positions=64, **_COMMON),
    "gpt_neox": lambda: GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                      num_attention_heads=4, max_position_embeddings=64, tie_word_embeddings=False,
                                      **_COMMON),
}


def save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over VOCAB tokens, saved as an ordinary tokenizer folder."""
    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 4)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tokenizer.save_pretrained(folder)


def build_pair(root: Path, arch: str, *, dtype: torch.dtype = torch.float32, max_shard_size: str | None = None,
               seed: int = 0) -> tuple[Path, Path]:
    """An "sft" model and an "aligned" one (the sft weights plus noise), saved under ``root``."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[arch]()).to(dtype)
    folders = root / f"{arch}-sft", root / f"{arch}-aligned"
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folders[0], **kwargs)
    save_tokenizer(folders[0])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(folders[1], **kwargs)
    save_tokenizer(folders[1])
    return folders


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's safetensors files, read with the safetensors library (independent of taxcut)."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def write_synthetic_pair(root: Path, *, layers: int, elements: int, dtype: torch.dtype = torch.float32,
                         max_shard_bytes: int | None = None) -> tuple[Path, Path]:
    """A Llama-named pair of raw safetensors folders (no transformers model): ``layers`` x 2 tensors of ``elements``."""
    import json

    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    folders = root / "big-sft", root / "big-aligned"
    for folder in folders:
        folder.mkdir(parents=True)
        tensors = {
            f"model.layers.{i}.mlp.{part}.weight": torch.randn(elements, generator=generator).to(dtype)
            for i in range(layers) for part in ("up_proj", "down_proj")
        }
        tensors["model.norm.weight"] = torch.ones(8, dtype=dtype)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": layers}
        (folder / "config.json").write_text(json.dumps(config))
    return folders
