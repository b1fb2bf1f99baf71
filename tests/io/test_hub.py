"""Hub repo IDs as models, resolved offline from a cache laid out here in huggingface_hub's own format
(``models--org--name/{blobs,refs,snapshots}``), so huggingface_hub's own resolution code runs: nothing is patched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from hub_cache import lay_out
from models import build_pair, build_reward_model, load_weights

from taxcut import MergeSpec, TaxcutError, merge
from taxcut.cli import main
from taxcut.evaluation.loading import load_causal_lm, load_tokenizer
from taxcut.evaluation.reward import RewardModelScorer
from taxcut.io.checkpoint import Checkpoint
from taxcut.io.hub import files_to_fetch, is_hub_id, parse_hub_id, resolve_model
from taxcut.io.provenance import PROVENANCE_FILE, weights_identity
from taxcut.spec.evaluation import EvaluationSpec
from taxcut.spec.toolkit import ToolkitSpec

MISSING = (
    "org/missing: not in the local Hugging Face cache and HF_HUB_OFFLINE=1; download it first or unset HF_HUB_OFFLINE"
)


def test_hub_id_forms():
    assert parse_hub_id("org/name") == ("org/name", None)
    assert parse_hub_id("HuggingFaceH4/zephyr-7b-beta@refs/pr/1") == ("HuggingFaceH4/zephyr-7b-beta", "refs/pr/1")
    for local in ("/abs/org/name", "./org/name", "org/name/sub", "org", "~/models", "org/na--me", "../x"):
        assert parse_hub_id(local) is None


def test_merge_from_hub_ids_equals_the_local_merge(hub, tmp_path, llama_pair, capsys):
    commits = hub[1]
    assert main(["merge", "--sft", "org/sft", "--aligned", "org/aligned", "--alpha", "0.3", "--out", "hub-out"]) == 0
    err = capsys.readouterr().err
    assert f"taxcut: using org/sft from the Hugging Face Hub (commit {commits['sft']})" in err
    local = merge(MergeSpec(sft=llama_pair[0], aligned=llama_pair[1], alpha=0.3, out=tmp_path / "local-out"))
    for name, tensor in load_weights(local).items():
        assert torch.equal(load_weights(tmp_path / "hub-out")[name], tensor)
    provenance = json.loads((tmp_path / "hub-out" / PROVENANCE_FILE).read_text())
    assert provenance["inputs"]["sft"]["hub"] == {"repo_id": "org/sft", "revision": "main", "commit": commits["sft"]}
    assert provenance["spec"]["sft"] == "org/sft"  # as written, not made a path of the working folder
    assert "- Sft model: `org/sft`" in (tmp_path / "hub-out" / "README.md").read_text()


def test_a_spec_file_keeps_hub_ids(hub, tmp_path):
    spec = tmp_path / "specs" / "merge.yaml"
    spec.parent.mkdir()
    (tmp_path / "specs" / "local").mkdir()
    spec.write_text(yaml.safe_dump({"sft": "org/sft", "aligned": "org/aligned", "alpha": 0.5, "out": "x"}))
    loaded = MergeSpec.from_yaml(spec)
    assert (loaded.sft, loaded.out) == (Path("org/sft"), tmp_path / "specs" / "x")
    toolkit = tmp_path / "specs" / "soup.yaml"
    toolkit.write_text(yaml.safe_dump({"method": "linear", "models": ["org/sft", {"path": "org/aligned"}, "local"]}))
    assert [m.path for m in ToolkitSpec.from_yaml(toolkit).models] == [
        Path("org/sft"),
        Path("org/aligned"),
        tmp_path / "specs" / "local",
    ]
    evaluation = EvaluationSpec(reward={"prompts": "p.jsonl", "model": "org/rm"}).relative_to(tmp_path / "specs")
    assert (evaluation.reward.model, evaluation.reward.prompts) == (Path("org/rm"), tmp_path / "specs" / "p.jsonl")


def test_a_revision(hub, tmp_path):
    cache, commits = hub
    other = build_pair(tmp_path / "v2", "llama", seed=3)[1]
    tagged = lay_out(cache, "org/aligned", other, refs=("v2",))
    assert resolve_model("org/aligned").commit == commits["aligned"]
    resolved = resolve_model("org/aligned@v2")
    assert (resolved.repo_id, resolved.revision, resolved.commit) == ("org/aligned", "v2", tagged)
    assert resolve_model(f"org/aligned@{tagged}").commit == tagged  # a commit hash is a revision too
    with Checkpoint("org/aligned@v2", "aligned") as checkpoint:
        info = checkpoint.tensors["model.norm.weight"]
        assert torch.equal(checkpoint.read(info), load_weights(other)["model.norm.weight"])
    with pytest.raises(TaxcutError, match=r"^org/aligned@v3: not in the local Hugging Face cache and HF_HUB_OFFLINE"):
        resolve_model("org/aligned@v3")


def test_a_missing_repo_offline_is_one_line(hub, capsys):
    with pytest.raises(TaxcutError) as caught:
        resolve_model("org/missing")
    assert str(caught.value) == MISSING
    assert main(["plan", "--sft", "org/missing", "--aligned", "org/aligned", "--alpha", "0.5"]) == 2
    assert capsys.readouterr().err == f"taxcut: error: {MISSING}\n"


def test_a_local_folder_wins_and_says_so(hub, tmp_path, llama_pair, capsys):
    local = tmp_path / "org" / "sft"
    local.parent.mkdir()
    local.symlink_to(llama_pair[1])  # a local org/sft holding other weights than the Hub's
    with Checkpoint("org/sft", "sft") as checkpoint:
        assert checkpoint.folder == Path("org/sft") and not checkpoint.source.from_hub
    said = capsys.readouterr().err
    assert "taxcut: using the local folder org/sft, not the Hugging Face Hub repo of that name" in said
    assert not is_hub_id("org/sft") and is_hub_id("org/aligned")


def test_models_tokenizers_and_reward_models_load_from_the_hub(hub, tmp_path, llama_pair):
    cache = hub[0]
    model = load_causal_lm("org/sft")
    local = load_causal_lm(llama_pair[0])
    for (name, value), (_, expected) in zip(model.state_dict().items(), local.state_dict().items()):
        assert torch.equal(value, expected), name
    assert load_tokenizer("org/sft").chat_template
    reward_folder = build_reward_model(tmp_path / "rm")
    lay_out(cache, "org/rm", reward_folder)
    prompts, responses = ["w1 w2", "w5"], ["w3", "w9 w9"]
    assert RewardModelScorer(Path("org/rm"))(prompts, responses) == RewardModelScorer(reward_folder)(prompts, responses)


def test_an_adapters_base_on_the_hub(hub, tmp_path, llama_pair):
    from models import make_adapter

    reference = make_adapter(llama_pair[0], tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "org/sft"  # as peft writes it for a base loaded from the Hub
    config_path.write_text(json.dumps(config))
    with Checkpoint(tmp_path / "adapter", "aligned") as checkpoint:
        assert checkpoint.adapter.base_source.repo_id == "org/sft"
        for name, info in checkpoint.tensors.items():
            torch.testing.assert_close(checkpoint.read(info), reference[name], rtol=0, atol=1e-6)
    out = merge(MergeSpec(sft=llama_pair[0], aligned=tmp_path / "adapter", alpha=0.5, out=tmp_path / "out"))
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["inputs"]["aligned"]["base_hub"]["repo_id"] == "org/sft"
    config["base_model_name_or_path"] = "org/missing"
    config_path.write_text(json.dumps(config))
    with pytest.raises(TaxcutError, match=f"adapter: the aligned adapter's base model: {MISSING}"):
        Checkpoint(tmp_path / "adapter", "aligned")


def test_a_new_commit_is_a_new_weights_identity(hub, tmp_path):
    cache, commits = hub
    before = weights_identity("org/aligned")
    assert before[0] == {"hub": f"org/aligned@{commits['aligned']}"}
    assert weights_identity("org/aligned") == before
    lay_out(cache, "org/aligned", build_pair(tmp_path / "new", "llama", seed=4)[1])  # refs/main moves on
    assert weights_identity("org/aligned") != before


def test_only_what_taxcut_reads_is_fetched():
    sharded = [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "consolidated.safetensors",
        "pytorch_model.bin.index.json",
        "pytorch_model-00001-of-00002.bin",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
        "README.md",
        "original/consolidated.00.pth",
        "onnx/model.onnx",
        "additional_chat_templates/tool_use.jinja",
        "training_args.bin",
        "optimizer.pt",
    ]
    files, index = files_to_fetch(sharded)
    assert index == "model.safetensors.index.json"  # its shards are fetched once it is read
    assert files == [
        "additional_chat_templates/tool_use.jinja",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert files_to_fetch(["config.json", "model.safetensors", "pytorch_model.bin"]) == (
        ["config.json", "model.safetensors"],
        None,
    )
    assert files_to_fetch(["config.json", "pytorch_model.bin", "vocab.json", "merges.txt"]) == (
        ["config.json", "merges.txt", "pytorch_model.bin", "vocab.json"],
        None,
    )  # .bin only without safetensors
    assert files_to_fetch(["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"]) == (
        ["adapter_config.json", "adapter_model.safetensors"],
        None,
    )


def test_a_sweep_over_hub_models_measures_a_new_commit_again(hub, tmp_path, capsys):
    from test_sweep import write_sweep

    cache = hub[0]
    spec = write_sweep(tmp_path, ("org/sft", "org/aligned"), alphas=(0.0, 1.0), patterns=())
    results = tmp_path / "sweep-out" / "results.jsonl"
    assert main(["sweep", str(spec), "--no-progress"]) == 0
    first = [json.loads(line) for line in results.read_text().splitlines()]
    assert {(r["sft"], r["aligned"]) for r in first} == {("org/sft", "org/aligned")}
    assert main(["sweep", str(spec), "--no-progress"]) == 0  # the same commits: nothing is measured again
    assert len(results.read_text().splitlines()) == len(first)
    lay_out(cache, "org/aligned", build_pair(tmp_path / "new", "llama", seed=5)[1])  # refs/main moves on
    assert main(["sweep", str(spec), "--no-progress"]) == 0
    assert len(results.read_text().splitlines()) == 2 * len(first)
    assert "using org/aligned from the Hugging Face Hub (commit" in capsys.readouterr().err


def test_hf_home_locates_the_cache(tmp_path, monkeypatch, llama_pair):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = lay_out(tmp_path / "hf-home" / "hub", "org/home", llama_pair[0])
    assert resolve_model("org/home").path == tmp_path / "hf-home" / "hub" / "models--org--home" / "snapshots" / commit
