from __future__ import annotations

import pytest

from taxcut import MergeSpec, TaxcutError
from taxcut.io.layers import detect_layers
from taxcut.merging.request import request_for
from taxcut.methods.block_values import BlockValues, split_blocks


def test_paper_split_of_32_layers():
    assert split_blocks(32, 3) == [(0, 10), (11, 20), (21, 31)]


def test_near_equal_blocks_cover_every_layer():
    for layers in range(1, 40):
        for blocks in range(1, layers + 1):
            bounds = split_blocks(layers, blocks)
            sizes = [last - first + 1 for first, last in bounds]
            assert bounds[0][0] == 0 and bounds[-1][1] == layers - 1
            assert all(bounds[i][1] + 1 == bounds[i + 1][0] for i in range(blocks - 1))
            assert max(sizes) - min(sizes) <= 1


def test_more_blocks_than_layers_is_refused():
    with pytest.raises(TaxcutError, match="asks for 5 blocks but the model has only 4 decoder layers"):
        split_blocks(4, 5)


NAMES = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] + [
    f"model.layers.{i}.{part}" for i in range(6) for part in ("mlp.up_proj.weight", "self_attn.q_proj.weight")
]


def resolver(**fields) -> BlockValues:
    """The averaging ratios of a merge spec, resolved as the planner resolves them."""
    request = request_for(MergeSpec(sft="a", aligned="b", **fields))
    (ratios,) = request.method.block_values(request.parameters, detect_layers(NAMES), {}).values()
    return ratios


def test_uniform_alpha_everywhere():
    r = resolver(alpha=0.3)
    assert {r.value_for(n).alpha for n in NAMES} == {0.3}


def test_block_defaults_outside_the_layers():
    r = resolver(alphas=[0.2, 0.5, 0.8])
    assert [r.value_for(f"model.layers.{i}.mlp.up_proj.weight").alpha for i in range(6)] == [
        0.2,
        0.2,
        0.5,
        0.5,
        0.8,
        0.8,
    ]
    assert r.value_for("model.embed_tokens.weight").alpha == 0.2  # embeddings: the first block's ratio
    assert r.value_for("model.norm.weight").alpha == pytest.approx(0.5)  # the mean
    assert r.value_for("lm_head.weight").alpha == pytest.approx(0.5)


def test_explicit_bounds_and_per_layer():
    r = resolver(alphas=[0.1, 0.9], block_bounds=[[0, 0], [1, 5]])
    assert [r.value_for(f"model.layers.{i}.mlp.up_proj.weight").alpha for i in range(6)] == [0.1] + [0.9] * 5
    assert r.mean == pytest.approx(0.5)  # the mean of the block ratios, as in the paper
    per_layer = resolver(layer_alphas=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert per_layer.value_for("model.layers.3.self_attn.q_proj.weight").alpha == 0.6
    assert per_layer.value_for("model.embed_tokens.weight").alpha == 0.0


def test_rules_first_match_wins_over_everything():
    r = resolver(
        alphas=[0.2, 0.5, 0.8],
        rules=[
            {"match": "model.layers.*.mlp.*", "alpha": 0.05},
            {"regex": r"model\.layers\.[0-9]+\..*", "alpha": 0.9},
            {"match": "lm_head.weight", "alpha": 1.0},
        ],
    )
    assert r.value_for("model.layers.4.mlp.up_proj.weight").alpha == 0.05
    assert r.value_for("model.layers.4.self_attn.q_proj.weight").alpha == 0.9
    assert r.value_for("lm_head.weight").alpha == 1.0
    assert r.value_for("lm_head.weight").group == "rule 3 (lm_head.weight)"


def test_layer_count_mismatch_is_refused():
    with pytest.raises(TaxcutError, match="'layer_alphas' has 2 ratios but the model has 6 decoder layers"):
        resolver(layer_alphas=[0.1, 0.2])
    with pytest.raises(TaxcutError, match="'block_bounds' ends at layer 4 but the model's last decoder layer is 5"):
        resolver(alphas=[0.1, 0.2], block_bounds=[[0, 2], [3, 4]])


def test_a_method_parameter_per_block_is_resolved_like_ratios():
    density = BlockValues.of(detect_layers(NAMES), "parameters.density", [0.2, 0.5, 0.8])
    assert [density.value_for(f"model.layers.{i}.mlp.up_proj.weight").value for i in range(6)] == [
        0.2,
        0.2,
        0.5,
        0.5,
        0.8,
        0.8,
    ]
    assert density.value_for("model.embed_tokens.weight").value == 0.2
    assert density.value_for("lm_head.weight").value == pytest.approx(0.5)
    assert BlockValues.of(detect_layers(NAMES), "parameters.t", 0.3).value_for("lm_head.weight").value == 0.3
    with pytest.raises(TaxcutError, match="'parameters.density' asks for 7 blocks but the model has only 6"):
        BlockValues.of(detect_layers(NAMES), "parameters.density", [0.5] * 7)
