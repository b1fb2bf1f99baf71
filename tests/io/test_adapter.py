"""LoRA adapter folders accepted wherever a model folder is: base + adapter, one tensor at a time."""

from __future__ import annotations

import json

import pytest
import torch
from models import build_pair, load_weights, make_adapter
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from taxcut import MergeSpec, TaxcutError, merge
from taxcut.io.checkpoint import Checkpoint


@pytest.mark.parametrize("rslora", [False, True])
def test_adapter_reads_as_the_merged_model(llama_pair, tmp_path, rslora):
    reference = make_adapter(llama_pair[0], tmp_path / "adapter", rslora=rslora)
    with Checkpoint(tmp_path / "adapter", "aligned") as checkpoint:
        assert checkpoint.adapter is not None
        for name, info in checkpoint.tensors.items():
            torch.testing.assert_close(checkpoint.read(info), reference[name], rtol=0, atol=1e-6)


def test_merge_with_an_adapter_as_the_aligned_model(llama_pair, tmp_path):
    reference = make_adapter(llama_pair[0], tmp_path / "adapter", save=())
    out = merge(MergeSpec(sft=llama_pair[0], aligned=tmp_path / "adapter", alpha=0.5, out=tmp_path / "out"))
    merged, sft = load_weights(out), load_weights(llama_pair[0])
    for name, tensor in merged.items():
        expected = 0.5 * sft[name].float() + 0.5 * reference[name].float()
        torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-6)
    assert (out / "config.json").is_file()  # from the adapter's base
    AutoModelForCausalLM.from_pretrained(out)


def test_adapter_for_another_base_is_refused(pairs, tmp_path, capsys):
    make_adapter(pairs["llama"][0], tmp_path / "adapter", save=())
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    small = build_pair(tmp_path / "other", "llama", seed=1)[0]
    state = load_weights(small)
    state["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(16, 32)
    from safetensors.torch import save_file

    save_file(state, small / "model.safetensors", metadata={"format": "pt"})
    config["base_model_name_or_path"] = str(small)
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(
        TaxcutError,
        match="adapter for another base: 'model.layers.0.self_attn.q_proj.weight' is "
        r"\[16, 32\]",
    ):
        Checkpoint(tmp_path / "adapter", "aligned")


def test_gpt2_conv1d_with_lora_bias(pairs, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(pairs["gpt2"][0])
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn"], init_lora_weights=False, fan_in_fan_out=True, lora_bias=True
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name and name.endswith("bias"):
                parameter.add_(0.3)
    peft_model.save_pretrained(tmp_path / "adapter")
    settings = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = str(pairs["gpt2"][0])
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(settings))
    reference = {k: v.detach() for k, v in peft_model.merge_and_unload().state_dict().items()}
    with Checkpoint(tmp_path / "adapter", "aligned") as checkpoint:
        for name, info in checkpoint.tensors.items():
            torch.testing.assert_close(checkpoint.read(info), reference[name], rtol=0, atol=1e-6)


def test_embedding_lora(llama_pair, tmp_path):
    reference = make_adapter(llama_pair[0], tmp_path / "adapter", targets=("embed_tokens", "q_proj"), save=())
    with Checkpoint(tmp_path / "adapter", "aligned") as checkpoint:
        for name, info in checkpoint.tensors.items():
            torch.testing.assert_close(checkpoint.read(info), reference[name], rtol=0, atol=1e-6)
        assert any(f.path.name == "adapter_model.safetensors" for f in checkpoint.files)
