from __future__ import annotations

import pytest

from taxcut.io.layers import detect_layers


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("model.layers.7.mlp.up_proj.weight", 7),
        ("transformer.h.3.attn.c_attn.weight", 3),
        ("gpt_neox.layers.11.attention.dense.bias", 11),
        ("model.decoder.layers.2.fc1.weight", 2),
        ("transformer.blocks.5.ffn.up_proj.weight", 5),
        ("model.language_model.layers.9.mlp.up_proj.weight", 9),
    ],
)
def test_layer_templates(name, layer):
    layout = detect_layers([name, "some.other.weight"])
    assert layout.layer_of == {name: layer}
    assert layout.num_layers == layer + 1


def test_vision_tower_layers_are_not_decoder_layers():
    names = [
        "model.vision_tower.encoder.layers.0.mlp.fc1.weight",
        "model.language_model.layers.0.mlp.up_proj.weight",
        "model.language_model.layers.1.mlp.up_proj.weight",
    ]
    layout = detect_layers(names)
    assert layout.num_layers == 2
    assert names[0] not in layout.layer_of
