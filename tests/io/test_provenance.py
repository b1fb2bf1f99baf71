"""Input fingerprints tell two models of one architecture apart; every output has a weight index."""

from __future__ import annotations

import json
import shutil

import torch
from models import load_weights
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from taxcut import MergeSpec, merge
from taxcut.io.checkpoint import Checkpoint
from taxcut.io.provenance import PROVENANCE_FILE, fingerprint


def copy_with(folder, destination, change):
    """A copy of ``folder`` whose tensors are changed by ``change`` (same names, shapes and dtypes)."""
    shutil.copytree(folder, destination)
    tensors = load_weights(folder)
    change(tensors)
    (destination / "model.safetensors").unlink()
    save_file(tensors, destination / "model.safetensors", metadata={"format": "pt"})
    return destination


def files_of(folder):
    with Checkpoint(folder) as checkpoint:
        return fingerprint(checkpoint)["files"]


def test_models_differing_in_one_tensor_have_different_fingerprints(llama_pair, tmp_path):
    sft = llama_pair[0]
    same = copy_with(sft, tmp_path / "same", lambda t: None)
    tuned = copy_with(sft, tmp_path / "tuned", lambda t: t["model.layers.2.mlp.up_proj.weight"].add_(1e-3))
    one_element = copy_with(sft, tmp_path / "one", lambda t: t["model.norm.weight"].view(-1)[7].add_(1.0))
    original, copied, changed, poked = (files_of(f) for f in (sft, same, tuned, one_element))
    assert original == copied  # the content, not the folder or the file times
    assert changed[0]["header_sha256"] == original[0]["header_sha256"]  # headers alone cannot tell them apart
    assert changed[0]["sample_sha256"] != original[0]["sample_sha256"]
    assert poked[0]["sample_sha256"] != original[0]["sample_sha256"]  # a small tensor is hashed whole


def test_a_large_tensor_is_sampled_across_its_length(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    tensors = {"model.layers.0.mlp.up_proj.weight": torch.zeros(256, 1024)}  # 1 MiB: sampled, not read whole
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    before = files_of(folder)[0]["sample_sha256"]
    tensors["model.layers.0.mlp.up_proj.weight"][-1, -1] = 1.0  # the last window ends at the last byte
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert files_of(folder)[0]["sample_sha256"] != before


def test_provenance_records_the_sampled_fingerprints(llama_pair, tmp_path):
    out = merge(MergeSpec(sft=llama_pair[0], aligned=llama_pair[1], alpha=0.5, out=tmp_path / "out"))
    inputs = json.loads((out / PROVENANCE_FILE).read_text())["inputs"]
    assert inputs["sft"]["files"][0]["sample_sha256"] != inputs["aligned"]["files"][0]["sample_sha256"]


def test_a_single_file_output_has_an_index_and_loads(llama_pair, tmp_path):
    out = merge(MergeSpec(sft=llama_pair[0], aligned=llama_pair[1], alpha=0.5, out=tmp_path / "out"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model.safetensors"}
    assert set(index["weight_map"]) == set(load_weights(out))
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in load_weights(out).values())
    loaded = AutoModelForCausalLM.from_pretrained(out)
    for name, tensor in load_weights(out).items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    again = merge(MergeSpec(sft=out, aligned=llama_pair[1], alpha=0.5, out=tmp_path / "again"))  # read back
    assert (again / "model.safetensors.index.json").is_file()
