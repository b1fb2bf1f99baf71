"""Tiny models of several architectures, built locally and saved as Hugging Face folders (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

VOCAB = 64
_COMMON = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)

CONFIGS = {
    "llama": lambda: LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        **_COMMON,
    ),
    "qwen2": lambda: Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        **_COMMON,
    ),
    "gpt2": lambda: GPT2Config(n_embd=32, n_layer=4, n_head=4, n_positions=64, **_COMMON),
    "gpt_neox": lambda: GPTNeoXConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        **_COMMON,
    ),
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


def build_pair(
    root: Path, arch: str, *, dtype: torch.dtype = torch.float32, max_shard_size: str | None = None, seed: int = 0
) -> tuple[Path, Path]:
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


def write_synthetic_pair(
    root: Path, *, layers: int, elements: int, dtype: torch.dtype = torch.float32, max_shard_bytes: int | None = None
) -> tuple[Path, Path]:
    """A Llama-named pair of raw safetensors folders (no transformers model): ``layers`` x 2 tensors of ``elements``."""
    import json

    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    folders = root / "big-sft", root / "big-aligned"
    for folder in folders:
        folder.mkdir(parents=True)
        tensors = {
            f"model.layers.{i}.mlp.{part}.weight": torch.randn(elements, generator=generator).to(dtype)
            for i in range(layers)
            for part in ("up_proj", "down_proj")
        }
        tensors["model.norm.weight"] = torch.ones(8, dtype=dtype)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": layers}
        (folder / "config.json").write_text(json.dumps(config))
    return folders


def build_successor_model(folder: Path, *, confidence: float = 10.0) -> Path:
    """A Llama whose next token is forced: after word ``w{i}`` it predicts ``w{i+1}`` (wrapping to ``w0``).

    Embeddings are one-hot, every layer writes zero into the residual stream, and the head maps the normalised
    one-hot of token t to logit ``confidence`` on its successor and 0 elsewhere. So greedy generation and
    log-likelihoods are known exactly: the log-probability of the successor is
    ``confidence - log(exp(confidence) + VOCAB - 1)``.
    """
    config = LlamaConfig(
        hidden_size=VOCAB,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        rms_norm_eps=1e-12,
        **_COMMON,
    )
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(VOCAB))
        model.model.norm.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        head = torch.zeros(VOCAB, VOCAB)
        for token in range(VOCAB):
            head[successor(token), token] = confidence / VOCAB**0.5  # the norm scales a one-hot by sqrt(VOCAB)
        model.lm_head.weight.copy_(head)
    model.save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def successor(token: int) -> int:
    """The token the successor model predicts after ``token``: word w{i} -> w{i+1}; special tokens -> w0."""
    first_word = 4
    return first_word if token < first_word or token == VOCAB - 1 else token + 1


def build_reward_model(folder: Path, seed: int = 0) -> Path:
    """A tiny randomly initialised Llama reward model (sequence classifier with one output)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    config = CONFIGS["llama"]()
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def merged(tmp_path: Path, method: str, models, base=None, **parameters) -> dict[str, torch.Tensor]:
    """The tensors of a toolkit merge of ``models`` (``(folder, weight)`` pairs), written under ``tmp_path``."""
    from taxcut.spec.toolkit import ToolkitSpec

    spec = ToolkitSpec(
        method=method,
        models=[{"path": m, "weight": w} for m, w in models],
        base=base,
        parameters=parameters,
        out=tmp_path / method,
    )
    return load_weights(run_method_merge(spec))


def run_method_merge(spec, progress: bool = False) -> Path:
    """Plan and execute a spec (what ``taxcut merge`` does)."""
    from taxcut.merging.engine import run_merge
    from taxcut.merging.plan import build_plan

    return run_merge(build_plan(spec), progress=progress)


def numpy_of(folder: Path) -> dict:
    return {k: v.float().numpy() for k, v in load_weights(folder).items()}


def build_trio(root: Path) -> tuple[Path, list[Path]]:
    """A base model and three fine-tunes of it (noise added), saved whole, sharded and whole."""
    from safetensors.torch import save_file

    base, first = build_pair(root / "a", "llama", seed=0)
    _, second = build_pair(root / "b", "llama", seed=0, max_shard_size="30KB")
    tensors = load_weights(first)
    generator = torch.Generator().manual_seed(7)
    third = root / "c" / "third"
    third.mkdir(parents=True)
    save_file(
        {k: v + 0.03 * torch.randn(v.shape, generator=generator) for k, v in tensors.items()},
        third / "model.safetensors",
        metadata={"format": "pt"},
    )
    (third / "config.json").write_text((first / "config.json").read_text())
    return base, [first, second, third]


def make_adapter(
    base_folder: Path,
    folder: Path,
    *,
    targets=("q_proj", "v_proj"),
    rslora: bool = False,
    save=("lm_head",),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A LoRA adapter of ``base_folder`` saved in ``folder`` (with non-zero B so it changes the model); returns
    the merged model's state dict computed by peft."""
    import json

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_folder)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=list(targets),
        init_lora_weights=False,
        use_rslora=rslora,
        modules_to_save=list(save) or None,
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "modules_to_save" in name:
                parameter.add_(0.1)
    peft_model.save_pretrained(folder)
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(base_folder)
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config))
    merged = peft_model.merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}
