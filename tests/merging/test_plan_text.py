"""What `taxcut plan`, the model card and `export-mergekit` say: the two means of unequal blocks, tied embeddings,
weights rounded alike on both sides, the --extrapolate hint."""

from __future__ import annotations

import yaml

from taxcut import MergeSpec, merge
from taxcut.cli import main
from taxcut.merging.mergekit import mergekit_yaml
from taxcut.merging.plan import build_plan


def test_unequal_blocks_print_both_means(llama_pair, tmp_path, capsys):
    """--alphas 0.2,0.8 over blocks of 1 and 3 layers: the block mean is 0.5 (what the final norm gets, what HMA
    holds at a), the mean over the 4 layers 0.65."""
    sft, aligned = llama_pair
    assert (
        main(["plan", "--sft", str(sft), "--aligned", str(aligned), "--alphas", "0.2,0.8", "--block-bounds", "0-0,1-3"])
        == 0
    )
    out = capsys.readouterr().out
    assert "mean a   0.5 over the 2 blocks (what HMA holds at a; the tensors after the layers get it)" in out
    assert "0.65 over the 4 layers (each block weighted by its number of layers)" in out
    assert "outside the layers, after them (mean ratio of the blocks)" in out
    with build_plan(MergeSpec(sft=sft, aligned=aligned, alphas=[0.2, 0.8], block_bounds=[(0, 0), (1, 3)])) as plan:
        assert next(t for t in plan.tensors if t.name == "model.norm.weight").decision.value == 0.5
        assert (plan.resolver.mean, plan.resolver.layer_mean) == (0.5, 0.65)
        assert plan.summary()["layer_mean_alpha"] == 0.65
    out_folder = merge(
        MergeSpec(sft=sft, aligned=aligned, alphas=[0.2, 0.8], block_bounds=[(0, 0), (1, 3)], out=tmp_path / "out")
    )
    card = (out_folder / "README.md").read_text()
    assert (
        "Mean ratio of the 2 blocks (alphas; the tensors after the layers get it): 0.5; over the 4 decoder layers: 0.65"
    ) in card


def test_equal_blocks_print_one_mean(llama_pair, capsys):
    sft, aligned = llama_pair
    assert main(["plan", "--sft", str(sft), "--aligned", str(aligned), "--alphas", "0.2,0.8"]) == 0
    out = capsys.readouterr().out
    assert "mean a   0.5 (of the decoder layers; the tensors after the layers get it)" in out
    assert "over the 4 layers" not in out


def test_plan_says_the_embedding_is_tied(pairs, capsys):
    sft, aligned = pairs["qwen2"]  # tie_word_embeddings: true, no lm_head stored
    assert main(["plan", "--sft", str(sft), "--aligned", str(aligned), "--alpha", "0.3"]) == 0
    assert "tied     model.embed_tokens.weight is tied to lm_head" in capsys.readouterr().out
    assert main(["plan", "--sft", str(pairs["llama"][0]), "--aligned", str(pairs["llama"][1]), "--alpha", "0.3"]) == 0
    assert "tied" not in capsys.readouterr().out


def test_mergekit_weights_are_rounded_alike_on_both_sides(llama_pair):
    sft, aligned = llama_pair
    config = yaml.safe_load(mergekit_yaml(MergeSpec(sft=sft, aligned=aligned, alphas=[0.1 + 0.2, 0.7])))
    sft_weights, aligned_weights = (m["parameters"]["weight"] for m in config["models"])
    assert aligned_weights[-1] == {"value": [0.3, 0.3, 0.7, 0.7]}  # 0.1 + 0.2 = 0.30000000000000004, rounded
    assert sft_weights[-1] == {"value": [0.7, 0.7, 0.3, 0.3]}
    for left, right in zip(sft_weights, aligned_weights):
        values = (
            zip(left["value"], right["value"]) if isinstance(left["value"], list) else [(left["value"], right["value"])]
        )
        assert all(a + b == 1.0 for a, b in values)


def test_an_out_of_range_alpha_names_the_flag(llama_pair, capsys):
    sft, aligned = llama_pair
    assert main(["plan", "--sft", str(sft), "--aligned", str(aligned), "--alpha", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "'alpha' = 1.5 is outside [0, 1]; set 'extrapolate: true' (on the command line: --extrapolate)" in err
    assert main(["plan", "--sft", str(sft), "--aligned", str(aligned), "--alpha", "1.5", "--extrapolate"]) == 0
