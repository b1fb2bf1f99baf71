"""Depth profiles (LiNeS): ``profile: [alpha, beta]`` gives layer l of L the ratio
``clip(alpha + beta * l / (L - 1), 0, 1)``, resolved through the per-layer machinery, so that the merged tensors are
exactly those of ``interpolate`` at those ratios (as ``layer_alphas``: embeddings get ``alpha``, final norm and
lm_head the mean of the per-layer ratios)."""

from __future__ import annotations

import hashlib

import pytest
import torch
import yaml
from models import load_weights

from taxcut import TaxcutError, merge
from taxcut.cli import main
from taxcut.io.layers import detect_layers
from taxcut.methods.block_values import BlockValues
from taxcut.methods.interpolation import interpolate
from taxcut.spec.merge import MergeSpec, profile_mean, profile_ratios, spec_from_dict


@pytest.mark.parametrize(
    ("alpha", "beta", "layers", "expected"),
    [
        (0.2, 0.6, 4, [0.2, 0.4, 0.6, 0.8]),  # 0.2 + 0.6 * l / 3
        (0.5, 1.0, 5, [0.5, 0.75, 1.0, 1.0, 1.0]),  # clipped at 1 from the middle up
        (0.3, -0.9, 4, [0.3, 0.0, 0.0, 0.0]),  # clipped at 0: 0.3 - 0.3 = 0 exactly, then below
        (0.0, 0.0, 3, [0.0, 0.0, 0.0]),  # the SFT model
        (1.0, 0.0, 2, [1.0, 1.0]),  # the aligned model
        (0.4, 0.6, 2, [0.4, 1.0]),
        (0.7, 0.9, 1, [0.7]),  # one layer: alpha, whatever beta
    ],
)
def test_profile_ratios_by_hand(alpha, beta, layers, expected):
    assert profile_ratios(alpha, beta, layers) == pytest.approx(expected, abs=1e-12)
    assert all(0.0 <= r <= 1.0 for r in profile_ratios(alpha, beta, layers))


def test_profile_mean_is_the_layers_mean_unless_clipped():
    assert profile_mean(0.2, 0.6) == pytest.approx(0.5)
    for layers in (2, 4, 32):
        assert sum(profile_ratios(0.2, 0.6, layers)) / layers == pytest.approx(profile_mean(0.2, 0.6))
    assert profile_mean(0.5, 1.0) == pytest.approx(0.875)  # 0.5 -> 1 over the first half, then 1
    assert profile_mean(0.2, -0.6) == pytest.approx(0.2 / 3 / 2)  # reaches 0 at a third of the depth
    assert MergeSpec(sft="a", aligned="b", profile=[0.2, 0.6]).mean_alpha == pytest.approx(0.5)


def test_resolver_gives_the_layers_the_profile_embeddings_alpha_and_the_head_the_mean():
    names = [
        "model.embed_tokens.weight",
        *(f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)),
        "model.norm.weight",
        "lm_head.weight",
    ]
    layout = detect_layers(names)
    from taxcut.methods.model_averaging import AveragingParameters, ModelAveraging

    parameters = AveragingParameters(profile=[0.2, 0.6])
    resolver: BlockValues = ModelAveraging().block_values(parameters, layout, {})["alpha"]
    got = {name: resolver.value_for(name).value for name in names}
    assert [got[f"model.layers.{i}.mlp.up_proj.weight"] for i in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert got["model.embed_tokens.weight"] == 0.2
    assert got["model.norm.weight"] == got["lm_head.weight"] == pytest.approx(0.5)


def _expected(sft: dict, aligned: dict, ratio_of) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in sft.items():
        out[name] = torch.empty_like(tensor)
        interpolate(tensor, aligned[name], ratio_of(name), out[name])
    return out


def _layer(name: str) -> int | None:
    parts = name.split(".")
    for index, part in enumerate(parts[:-1]):
        if part in ("layers", "h") and parts[index + 1].isdigit():
            return int(parts[index + 1])
    return None


@pytest.mark.parametrize(
    ("arch", "profile"), [("llama", (0.2, 0.6)), ("llama", (0.5, 1.0)), ("qwen2", (0.1, 0.8)), ("gpt2", (0.6, -0.3))]
)
def test_merged_tensors_are_interpolate_at_the_profile_ratios(pairs, tmp_path, arch, profile):
    sft_folder, aligned_folder = pairs[arch]
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(sft_folder.rglob("*.safetensors"))]
    out = merge(MergeSpec(sft=sft_folder, aligned=aligned_folder, out=tmp_path / "m", profile=list(profile)))
    sft, aligned, merged = load_weights(sft_folder), load_weights(aligned_folder), load_weights(out)
    ratios = profile_ratios(*profile, 4)
    layout = detect_layers(sft)

    def ratio_of(name: str) -> float:
        if _layer(name) is not None:
            return ratios[_layer(name)]
        return ratios[0] if layout.is_embedding(name) else sum(ratios) / 4

    expected = _expected(sft, aligned, ratio_of)
    assert set(merged) == set(expected)
    for name, tensor in merged.items():
        assert torch.equal(tensor, expected[name]), name
    # the same merge given as layer_alphas: bit for bit
    again = merge(MergeSpec(sft=sft_folder, aligned=aligned_folder, out=tmp_path / "l", layer_alphas=ratios))
    for name, tensor in load_weights(again).items():
        assert torch.equal(tensor, merged[name]), name
    assert before == [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(sft_folder.rglob("*.safetensors"))]


def test_tied_embedding_is_one_tensor_with_one_ratio(pairs, tmp_path):
    """qwen2's lm_head is its embedding: one tensor written, at the bottom layer's ratio (the embedding's)."""
    sft_folder, aligned_folder = pairs["qwen2"]
    out = merge(MergeSpec(sft=sft_folder, aligned=aligned_folder, out=tmp_path / "m", profile=[0.3, 0.6]))
    merged, sft, aligned = load_weights(out), load_weights(sft_folder), load_weights(aligned_folder)
    assert "lm_head.weight" not in merged
    expected = torch.empty_like(sft["model.embed_tokens.weight"])
    interpolate(sft["model.embed_tokens.weight"], aligned["model.embed_tokens.weight"], 0.3, expected)
    assert torch.equal(merged["model.embed_tokens.weight"], expected)


def test_cli_merge_profile_equals_the_spec_field(llama_pair, tmp_path, capsys):
    sft, aligned = llama_pair
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"sft": str(sft), "aligned": str(aligned), "alphas": [0.1, 0.9]}))
    kept = spec.read_bytes()
    assert main(["merge", str(spec), "--profile", "0.2,0.6", "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    direct = merge(MergeSpec(sft=sft, aligned=aligned, out=tmp_path / "api", profile=[0.2, 0.6]))
    cli = load_weights(tmp_path / "cli")
    assert all(torch.equal(cli[name], tensor) for name, tensor in load_weights(direct).items())
    assert spec.read_bytes() == kept  # the flag replaced the file's alphas; the file is untouched
    assert main(["plan", "--sft", str(sft), "--aligned", str(aligned), "--profile", "0.2,0.6"]) == 0
    printed = capsys.readouterr().out
    assert "embeddings (first block's ratio)" in printed and "(mean ratio)" in printed and "layer 3" in printed


def test_spec_round_trip(tmp_path):
    spec = MergeSpec(sft=tmp_path / "a", aligned=tmp_path / "b", profile=[0.25, 0.5])
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    assert yaml.safe_load(path.read_text())["profile"] == [0.25, 0.5]
    again = MergeSpec.from_yaml(path)
    assert again.profile == [0.25, 0.5] and again.alpha is None and again == spec


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"profile": [0.2]}, "'profile' has 1 values: give two, [alpha, beta]"),
        ({"profile": [0.2, 0.3, 0.4]}, "'profile' has 3 values"),
        ({"profile": [float("nan"), 0.3]}, "'profile' alpha = nan is not a finite number"),
        ({"profile": [0.2, float("inf")]}, "'profile' beta = inf is not a finite number"),
        ({"profile": [1.2, 0.0]}, "'profile' alpha = 1.2 is outside [0, 1]"),
        ({"profile": [0.2, 0.3], "alpha": 0.5}, "got 'alpha', 'profile'"),
        ({"profile": [0.2, 0.3], "layer_alphas": [0.5]}, "got 'layer_alphas', 'profile'"),
        ({"profile": [True, 0.3]}, "field 'profile' expected a number"),
        ({"profile": "0.2,0.3"}, "field 'profile'"),
    ],
)
def test_bad_profiles_are_one_line_errors_naming_the_field(fields, message):
    with pytest.raises(TaxcutError) as caught:
        spec_from_dict({"sft": "a", "aligned": "b", **fields}, source="my.yaml")
    assert str(caught.value).startswith("my.yaml: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--profile", "0.2"], "'profile' has 1 values"),
        (["--profile", "nan,0.2"], "'profile' alpha = nan is not a finite number"),
    ],
)
def test_bad_profile_flags_write_nothing(llama_pair, tmp_path, capsys, flags, message):
    sft, aligned = llama_pair
    out = tmp_path / "never"
    assert main(["merge", "--sft", str(sft), "--aligned", str(aligned), "--out", str(out), *flags]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_profile_flag_excludes_the_other_ratio_flags(llama_pair, tmp_path, capsys):
    sft, aligned = llama_pair
    with pytest.raises(SystemExit):
        main(
            [
                "merge",
                "--sft",
                str(sft),
                "--aligned",
                str(aligned),
                "--out",
                str(tmp_path / "x"),
                "--profile",
                "0.2,0.2",
                "--alpha",
                "0.5",
            ]
        )
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_no_decoder_layers_is_refused_naming_profile():
    layout = detect_layers(["wte.weight", "head.weight"])
    from taxcut.methods.model_averaging import AveragingParameters, ModelAveraging

    with pytest.raises(TaxcutError, match="per-layer values of 'profile' cannot apply"):
        ModelAveraging().block_values(AveragingParameters(profile=[0.2, 0.5]), layout, {})
