"""The streaming merge against independent computations, on tiny models of four architectures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from models import build_pair, load_weights
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from taxcut import MergeSpec, merge, plan
from taxcut.io.checkpoint import Checkpoint

ARCHS = ["llama", "qwen2", "gpt2", "gpt_neox"]


def reference(sft: torch.Tensor, aligned: torch.Tensor, alpha: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """mergekit's linear on whole tensors: 0 + (1 - a) * sft, then a * aligned added fused (addcmul), in float32."""
    merged = torch.zeros(sft.shape, dtype=torch.float32)
    merged.addcmul_(sft.float(), torch.tensor(1.0 - alpha)).addcmul_(aligned.float(), torch.tensor(alpha))
    return merged.to(dtype or sft.dtype)


def recovered_ratio(sft: torch.Tensor, aligned: torch.Tensor, merged: torch.Tensor) -> float:
    """The ratio a with merged = sft + a * (aligned - sft), solved by least squares from the data."""
    delta = (aligned - sft).double().reshape(-1)
    return float(((merged - sft).double().reshape(-1) @ delta) / (delta @ delta))


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("arch", ARCHS)
def test_uniform_merge_equals_float32_reference(pairs, tmp_path, arch):
    sft_dir, aligned_dir = pairs[arch]
    before = file_hashes(sft_dir), file_hashes(aligned_dir)
    out = merge(MergeSpec(sft=sft_dir, aligned=aligned_dir, alpha=0.3, out=tmp_path / "out"))
    sft, aligned, merged = load_weights(sft_dir), load_weights(aligned_dir), load_weights(out)
    assert set(merged) == set(sft)
    for name, tensor in merged.items():
        assert torch.equal(tensor, reference(sft[name], aligned[name], 0.3)), name
    assert (file_hashes(sft_dir), file_hashes(aligned_dir)) == before  # inputs never modified


@pytest.mark.parametrize("arch", ARCHS)
def test_reloads_with_transformers_and_generates(pairs, tmp_path, arch):
    sft_dir, aligned_dir = pairs[arch]
    out = merge(MergeSpec(sft=sft_dir, aligned=aligned_dir, alphas=[0.1, 0.5, 0.9], out=tmp_path / "out"))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(out)  # the copied tokenizer files
    # The same averaging done on whole state dicts in memory with numpy, saved by the safetensors library.
    sft, aligned = load_weights(sft_dir), load_weights(aligned_dir)
    with plan(MergeSpec(sft=sft_dir, aligned=aligned_dir, alphas=[0.1, 0.5, 0.9])) as merge_plan:
        state = {name: reference(sft[name], aligned[name], merge_plan.ratio_of(name)) for name in sft}
    (tmp_path / "expected").mkdir()
    save_file(state, tmp_path / "expected" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "expected" / "config.json").write_text((sft_dir / "config.json").read_text())
    expected = AutoModelForCausalLM.from_pretrained(tmp_path / "expected").eval()
    inputs = tokenizer(["w1 w2 w3", "w4 w5 w6"], return_tensors="pt")
    assert inputs["input_ids"].tolist() == [[5, 6, 7], [8, 9, 10]]
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected(**inputs).logits, rtol=0, atol=0)
        generated = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 5)
    assert model.config.dtype == torch.float32


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"alphas": [0.1, 0.5, 0.9]},
            {
                "model.layers.0.": 0.1,
                "model.layers.1.": 0.5,
                "model.layers.2.": 0.5,
                "model.layers.3.": 0.9,
                "model.embed_tokens": 0.1,
                "model.norm": 0.5,
                "lm_head": 0.5,
            },
        ),
        (
            {"layer_alphas": [0.0, 0.25, 0.75, 1.0]},
            {"model.layers.1.": 0.25, "model.layers.3.": 1.0, "model.embed_tokens": 0.0, "lm_head": 0.5},
        ),
        (
            {
                "alphas": [0.2, 0.6],
                "block_bounds": [[0, 2], [3, 3]],
                "rules": [{"match": "*.mlp.*", "alpha": 0.05}, {"regex": r"lm_head\..*", "alpha": 0.95}],
            },
            {
                "model.layers.2.self_attn": 0.2,
                "model.layers.3.self_attn": 0.6,
                "model.layers.3.mlp": 0.05,
                "model.layers.0.mlp": 0.05,
                "lm_head": 0.95,
                "model.norm": 0.4,
            },
        ),
    ],
)
def test_each_tensor_gets_the_ratio_plan_promised(llama_pair, tmp_path, fields, expected):
    sft_dir, aligned_dir = llama_pair
    spec = MergeSpec(sft=sft_dir, aligned=aligned_dir, out=tmp_path / "out", **fields)
    with plan(spec) as merge_plan:
        promised = {t.name: t.decision.alpha for t in merge_plan.tensors}
    merge(spec)
    sft, aligned, merged = load_weights(sft_dir), load_weights(aligned_dir), load_weights(tmp_path / "out")
    for name, tensor in merged.items():
        assert recovered_ratio(sft[name], aligned[name], tensor) == pytest.approx(promised[name], abs=1e-5), name
        assert torch.equal(tensor, reference(sft[name], aligned[name], promised[name])), name
    for prefix, alpha in expected.items():  # the documented defaults, spelled out
        matching = [n for n in promised if n.startswith(prefix)]
        assert matching and all(promised[n] == pytest.approx(alpha) for n in matching), prefix


@pytest.mark.parametrize("layouts", [("20KB", "20KB"), ("20KB", None), (None, "30KB")])
def test_sharded_inputs_and_outputs(tmp_path, layouts):
    sharded = build_pair(tmp_path / "a", "llama", max_shard_size=layouts[0])[0]
    other = build_pair(tmp_path / "b", "llama", max_shard_size=layouts[1])[1]
    assert (layouts[0] is None) != (sharded / "model.safetensors.index.json").exists()
    out = merge(MergeSpec(sft=sharded, aligned=other, alpha=0.7, out=tmp_path / "out", max_shard_size="40KB"))
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    merged = load_weights(out)
    assert set(index["weight_map"]) == set(merged)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in merged.values())
    sft, aligned = load_weights(sharded), load_weights(other)
    for name, tensor in merged.items():
        assert torch.equal(tensor, reference(sft[name], aligned[name], 0.7)), name
    assert all((out / f).stat().st_size <= 40_000 + 4096 for f in files)
    AutoModelForCausalLM.from_pretrained(out)


def test_tied_embeddings_are_one_tensor_with_one_ratio(pairs, tmp_path):
    sft_dir, aligned_dir = pairs["qwen2"]
    out = merge(MergeSpec(sft=sft_dir, aligned=aligned_dir, alphas=[0.2, 0.5, 0.8], out=tmp_path / "out"))
    merged = load_weights(out)
    assert "lm_head.weight" not in merged
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    sft = load_weights(sft_dir)["model.embed_tokens.weight"]
    aligned = load_weights(aligned_dir)["model.embed_tokens.weight"]
    assert torch.equal(merged["model.embed_tokens.weight"], reference(sft, aligned, 0.2))


def test_tied_head_stored_twice_is_written_once(pairs, tmp_path):
    """A checkpoint that stores lm_head.weight beside a tied embedding: one tensor, one ratio, written once."""
    folders = []
    for role, source in zip(("sft", "aligned"), pairs["qwen2"]):
        folder = tmp_path / role
        folder.mkdir()
        tensors = load_weights(source)
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text((source / "config.json").read_text())
        folders.append(folder)
    spec = MergeSpec(
        sft=folders[0],
        aligned=folders[1],
        alphas=[0.2, 0.5, 0.8],
        out=tmp_path / "out",
        rules=[{"match": "lm_head.weight", "alpha": 0.6}],
    )
    with plan(spec) as merge_plan:
        assert merge_plan.dropped_tied == {"lm_head.weight": "model.embed_tokens.weight"}
        assert "not written: lm_head.weight (tied to model.embed_tokens.weight" in merge_plan.render()
        assert merge_plan.ratio_of("model.embed_tokens.weight") == 0.6  # a rule naming either name sets it
    merged = load_weights(merge(spec))
    assert "lm_head.weight" not in merged


def test_bfloat16_inputs_and_dtype_override(tmp_path):
    sft_dir, aligned_dir = build_pair(tmp_path, "llama", dtype=torch.bfloat16)
    sft, aligned = load_weights(sft_dir), load_weights(aligned_dir)
    out = merge(MergeSpec(sft=sft_dir, aligned=aligned_dir, alpha=0.45, out=tmp_path / "bf16"))
    merged = load_weights(out)
    assert all(t.dtype == torch.bfloat16 for t in merged.values())
    assert all(torch.equal(merged[n], reference(sft[n], aligned[n], 0.45)) for n in merged)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    out = merge(MergeSpec(sft=sft_dir, aligned=aligned_dir, alpha=0.45, out=tmp_path / "f32", dtype="float32"))
    merged = load_weights(out)
    assert all(torch.equal(merged[n], reference(sft[n], aligned[n], 0.45, torch.float32)) for n in merged)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.float32


def test_pytorch_bin_inputs(tmp_path):
    torch.manual_seed(3)
    folders = []
    for seed, role in ((0, "sft"), (1, "aligned")):
        sft_dir, _ = build_pair(tmp_path / role, "gpt_neox", seed=seed)
        model = AutoModelForCausalLM.from_pretrained(sft_dir)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        folder = tmp_path / f"{role}-bin"
        folder.mkdir()
        torch.save(state, folder / "pytorch_model.bin")
        (folder / "config.json").write_text((sft_dir / "config.json").read_text())
        folders.append((folder, state))
    out = merge(MergeSpec(sft=folders[0][0], aligned=folders[1][0], alpha=0.5, out=tmp_path / "out"))
    merged = load_weights(out)
    for name, tensor in merged.items():
        assert torch.equal(tensor, reference(folders[0][1][name], folders[1][1][name], 0.5)), name
    AutoModelForCausalLM.from_pretrained(out)


def test_side_files_provenance_and_card(pairs, tmp_path):
    sft_dir, aligned_dir = pairs["llama"]
    out = merge(MergeSpec(sft=sft_dir, aligned=aligned_dir, alpha=0.5, out=tmp_path / "out"))
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
        "taxcut_provenance.json",
    ):
        assert (out / name).is_file(), name
    assert (out / "chat_template.jinja").read_text() == (aligned_dir / "chat_template.jinja").read_text()
    provenance = json.loads((out / "taxcut_provenance.json").read_text())
    assert provenance["spec"]["alpha"] == 0.5
    assert provenance["spec"]["sft"] == str(sft_dir.resolve())
    assert provenance["inputs"]["aligned"]["files"][0]["name"] == "model.safetensors"
    assert len(provenance["inputs"]["aligned"]["files"][0]["header_sha256"]) == 64
    assert provenance["taxcut_version"]
    assert "(1 - a) * sft + a * aligned" in (out / "README.md").read_text()
    assert str(tmp_path) not in (out / "README.md").read_text()  # the card names folders, not machine paths


def test_plan_reads_headers_only(llama_pair, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("plan must not read tensor data")

    monkeypatch.setattr(Checkpoint, "read_into", no_reading)
    with plan(MergeSpec(sft=llama_pair[0], aligned=llama_pair[1], alphas=[0.3, 0.6])) as merge_plan:
        text = merge_plan.render()
    assert "block 1 (layers 0-1)" in text and "block 2 (layers 2-3)" in text
    assert "embeddings (first block's ratio)" in text


def test_overwrite_replaces_what_taxcut_wrote(llama_pair, tmp_path):
    out = tmp_path / "out"
    merge(MergeSpec(sft=llama_pair[0], aligned=llama_pair[1], alpha=0.2, out=out))
    first = load_weights(out)
    merge(MergeSpec(sft=llama_pair[0], aligned=llama_pair[1], alpha=0.5, out=out), overwrite=True)
    second = load_weights(out)
    assert not torch.equal(first["lm_head.weight"], second["lm_head.weight"])
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".taxcut-lock")] == ["out"]  # no staging left


def test_extrapolation_past_the_aligned_model(llama_pair, tmp_path):
    sft_dir, aligned_dir = llama_pair
    out = merge(MergeSpec(sft=sft_dir, aligned=aligned_dir, alpha=1.5, extrapolate=True, out=tmp_path / "expo"))
    sft, aligned, merged = load_weights(sft_dir), load_weights(aligned_dir), load_weights(out)
    assert all(torch.equal(merged[n], reference(sft[n], aligned[n], 1.5)) for n in merged)


def test_integer_buffers_are_copied_when_equal(tmp_path, llama_pair):
    folders = []
    for source in llama_pair:
        folder = tmp_path / source.name
        folder.mkdir()
        tensors = load_weights(source)
        tensors["model.layers.0.self_attn.position_ids"] = torch.arange(16)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text((source / "config.json").read_text())
        folders.append(folder)
    merged = load_weights(merge(MergeSpec(sft=folders[0], aligned=folders[1], alpha=0.5, out=tmp_path / "out")))
    assert torch.equal(merged["model.layers.0.self_attn.position_ids"], torch.arange(16))


def test_side_files_from_the_sft_model(llama_pair, tmp_path):
    sft_dir, aligned_dir = llama_pair
    (tmp_path / "sft").mkdir()
    for path in sft_dir.iterdir():
        (tmp_path / "sft" / path.name).write_bytes(path.read_bytes())
    (tmp_path / "sft" / "chat_template.jinja").write_text("SFT TEMPLATE")
    out = merge(MergeSpec(sft=tmp_path / "sft", aligned=aligned_dir, alpha=0.5, out=tmp_path / "out", files_from="sft"))
    assert (out / "chat_template.jinja").read_text() == "SFT TEMPLATE"


def test_merging_never_imports_transformers():
    import subprocess
    import sys

    code = (
        "import sys, taxcut, taxcut.merging.engine, taxcut.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'peft', 'accelerate')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_config_dtype_keys_are_both_updated(tmp_path):
    from taxcut.io.model_folder import set_config_dtype

    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "float32", "model_type": "llama"}))
    set_config_dtype(tmp_path, "bfloat16")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"


def test_tied_head_goes_with_the_token_embedding_not_positions(tmp_path):
    """GPT-2 with as many positions as tokens: the tied head is wte, never wpe (same shape)."""
    from transformers import GPT2Config

    torch.manual_seed(0)
    config = GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=64, vocab_size=64, bos_token_id=1, eos_token_id=2)
    folders = []
    for role in ("sft", "aligned"):
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(tmp_path / role)
        tensors = load_weights(tmp_path / role)
        tensors["lm_head.weight"] = tensors["transformer.wte.weight"].clone()
        save_file(tensors, tmp_path / role / "model.safetensors", metadata={"format": "pt"})
        folders.append(tmp_path / role)
    spec = MergeSpec(
        sft=folders[0], aligned=folders[1], alphas=[0.2, 0.8], rules=[{"match": "lm_head.weight", "alpha": 0.5}]
    )
    with plan(spec) as merge_plan:
        assert merge_plan.dropped_tied == {"lm_head.weight": "transformer.wte.weight"}
        assert merge_plan.ratio_of("transformer.wte.weight") == 0.5
        assert merge_plan.ratio_of("transformer.wpe.weight") == 0.2
        assert not any("match no tensor" in note for note in merge_plan.notes)


def test_home_folder_is_expanded(monkeypatch, llama_pair):
    monkeypatch.setenv("HOME", str(llama_pair[0].parent))
    spec = MergeSpec(sft=f"~/{llama_pair[0].name}", aligned=llama_pair[1], alpha=0.5)
    assert spec.sft == llama_pair[0]
