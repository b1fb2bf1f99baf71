"""Each bad input gets one clear line naming the culprit, a non-zero exit, and no destination folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from models import load_weights
from safetensors.torch import save_file

from taxcut.cli import main


def copy_pair(pair: tuple[Path, Path], root: Path) -> tuple[Path, Path]:
    return tuple(Path(shutil.copytree(p, root / p.name)) for p in pair)  # type: ignore[return-value]


def rewrite(folder: Path, change) -> None:
    """Load a folder's single safetensors file, let ``change`` edit the dict, save it back."""
    tensors = load_weights(folder)
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def run_failing(capsys, tmp_path: Path, *args: str) -> str:
    out = tmp_path / "merged"
    code = main(["merge", *args, "--out", str(out)] if "--out" not in args else ["merge", *args])
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taxcut: error: "), captured.err
    assert "Traceback" not in captured.err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".taxcut-" in p.name]  # no staging folder left either
    return lines[0]


@pytest.fixture
def pair(llama_pair, tmp_path) -> tuple[Path, Path]:
    return copy_pair(llama_pair, tmp_path / "inputs")


def args_for(pair, *extra: str) -> list[str]:
    return ["--sft", str(pair[0]), "--aligned", str(pair[1]), "--alpha", "0.5", *extra]


def test_missing_folder(capsys, tmp_path, pair):
    message = run_failing(
        capsys, tmp_path, "--sft", str(tmp_path / "nope"), "--aligned", str(pair[1]), "--alpha", "0.5"
    )
    assert "nope: the sft model folder does not exist" in message


def test_folder_without_weights(capsys, tmp_path, pair):
    (pair[1] / "model.safetensors").unlink()
    message = run_failing(capsys, tmp_path, *args_for(pair))
    assert f"{pair[1]}: no weights in the aligned model folder; expected model.safetensors" in message


def test_folder_without_config(capsys, tmp_path, pair):
    (pair[0] / "config.json").unlink()
    assert "no config.json, so the sft model is not a Hugging Face model folder" in run_failing(
        capsys, tmp_path, *args_for(pair)
    )


def test_adapter_folder(capsys, tmp_path, pair):
    (pair[1] / "model.safetensors").unlink()
    (pair[1] / "adapter_config.json").write_text("{}")
    assert "the aligned adapter's base model None is neither a local folder nor a Hub repo ID" in run_failing(
        capsys, tmp_path, *args_for(pair)
    )


def test_tensor_in_one_model_only(capsys, tmp_path, pair):
    rewrite(pair[1], lambda t: t.pop("model.layers.2.mlp.up_proj.weight"))
    message = run_failing(capsys, tmp_path, *args_for(pair))
    assert "tensor 'model.layers.2.mlp.up_proj.weight' is in the sft model but not in the aligned model" in message


def test_shape_mismatch(capsys, tmp_path, pair):
    rewrite(pair[1], lambda t: t.update({"model.layers.1.mlp.up_proj.weight": torch.zeros(64, 16)}))
    message = run_failing(capsys, tmp_path, *args_for(pair))
    assert "tensor 'model.layers.1.mlp.up_proj.weight' has shape [64, 32] in the sft model but [64, 16]" in message


def test_vocabulary_mismatch(capsys, tmp_path, pair):
    def grow(tensors):
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            tensors[name] = torch.cat([tensors[name], torch.zeros(2, 32)])

    rewrite(pair[1], grow)
    message = run_failing(capsys, tmp_path, *args_for(pair))
    assert "vocabulary sizes differ (sft 64 rows, aligned 66 rows)" in message
    assert "resize_token_embeddings" in message


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input(capsys, tmp_path, pair, value):
    def poison(tensors):
        tensors["model.layers.3.self_attn.o_proj.weight"][2, 5] = value

    rewrite(pair[1], poison)
    message = run_failing(capsys, tmp_path, *args_for(pair))
    assert "tensor 'model.layers.3.self_attn.o_proj.weight' of the aligned model" in message
    assert "contains NaN or Inf values" in message


def test_integer_tensor_that_differs(capsys, tmp_path, pair):
    for index, folder in enumerate(pair):
        rewrite(folder, lambda t, i=index: t.update({"model.layers.0.self_attn.position_ids": torch.arange(4) + i}))
    message = run_failing(capsys, tmp_path, *args_for(pair))
    assert "tensor 'model.layers.0.self_attn.position_ids' (torch.int64) is not floating point and differs" in message


def test_truncated_safetensors(capsys, tmp_path, pair):
    path = pair[0] / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    message = run_failing(capsys, tmp_path, *args_for(pair))
    assert f"{path}: truncated: tensor" in message and "re-download or re-save it" in message


def test_corrupt_safetensors_header(capsys, tmp_path, pair):
    path = pair[0] / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json at!"
    path.write_bytes(bytes(data))
    assert f"{path}: corrupt safetensors header" in run_failing(capsys, tmp_path, *args_for(pair))


def test_garbage_file(capsys, tmp_path, pair):
    (pair[0] / "model.safetensors").write_bytes(b"\xff" * 100)
    assert "corrupt or truncated safetensors header" in run_failing(capsys, tmp_path, *args_for(pair))


def test_different_architectures(capsys, tmp_path, pairs):
    args = ["--sft", str(pairs["llama"][0]), "--aligned", str(pairs["gpt2"][1]), "--alpha", "0.5"]
    assert "config.json 'model_type' is 'gpt2' but the sft model's is 'llama'" in run_failing(capsys, tmp_path, *args)


def test_invalid_spec_field(capsys, tmp_path, pair):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"sft: {pair[0]}\naligned: {pair[1]}\nalphas: [0.2, 1.4]\n")
    message = run_failing(capsys, tmp_path, str(spec))
    assert message == (
        f"taxcut: error: {spec}: 'alphas[1]' = 1.4 is outside [0, 1]; set 'extrapolate: true' (on "
        "the command line: --extrapolate) to extrapolate past a model (ExPO)"
    )


def test_unknown_spec_field(capsys, tmp_path, pair):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"sft: {pair[0]}\naligned: {pair[1]}\nalpha: 0.3\nshard_size: 1GB\n")
    assert "field 'shard_size' is not a known field" in run_failing(capsys, tmp_path, str(spec))


def test_alpha_flag_out_of_range(capsys, tmp_path, pair):
    assert "'alpha' = 1.5 is outside [0, 1]" in run_failing(
        capsys, tmp_path, "--sft", str(pair[0]), "--aligned", str(pair[1]), "--alpha", "1.5"
    )


def test_too_many_layer_ratios(capsys, tmp_path, pair):
    assert "'layer_alphas' has 5 ratios but the model has 4 decoder layers" in run_failing(
        capsys, tmp_path, "--sft", str(pair[0]), "--aligned", str(pair[1]), "--layer-alphas", "0,0,0,0,0"
    )


def test_unpicklable_bin_is_refused(capsys, tmp_path, pair):
    (pair[0] / "model.safetensors").unlink()
    torch.save({"weight": torch.zeros(2), "extra": Path("x")}, pair[0] / "pytorch_model.bin")
    message = run_failing(capsys, tmp_path, *args_for(pair))
    assert (
        "cannot load with torch.load(weights_only=True)" in message
        and "convert the checkpoint to safetensors" in message
    )


def test_existing_destination_needs_overwrite(capsys, tmp_path, pair):
    out = tmp_path / "merged"
    assert main(["merge", *args_for(pair), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["merge", *args_for(pair), "--out", str(out)]) != 0
    assert f"{out}: exists and is not empty; pass --overwrite to replace it" in capsys.readouterr().err


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_folder_taxcut_did_not_write_is_never_replaced(capsys, tmp_path, pair, overwrite):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    assert main(["merge", *args_for(pair), "--out", str(out), *overwrite]) != 0
    assert f"{out}: contains 1 file taxcut did not write, e.g. thesis.tex" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"] and (out / "thesis.tex").read_text() == "mine"


@pytest.mark.parametrize("out", ["", "  "])
def test_an_empty_out_is_refused(capsys, tmp_path, pair, monkeypatch, out):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    (here / "notes.txt").write_text("mine")
    assert main(["merge", *args_for(pair), "--out", out, "--overwrite"]) != 0
    assert "--out is empty" in capsys.readouterr().err
    assert sorted(p.name for p in here.iterdir()) == ["notes.txt"]


def test_an_empty_out_in_a_spec_is_refused(capsys, tmp_path, pair):
    spec = tmp_path / "soup.yaml"
    spec.write_text(f"method: linear\nmodels: [{pair[0]}, {pair[1]}]\nout: ''\n")
    assert main(["merge", str(spec), "--overwrite"]) != 0
    assert "'out' in" in capsys.readouterr().err and spec.is_file()


def test_the_spec_file_is_never_a_destination(capsys, tmp_path, pair):
    spec = tmp_path / "specs" / "soup.yaml"
    spec.parent.mkdir()
    spec.write_text(f"method: linear\nmodels: [{pair[0]}, {pair[1]}]\n")
    assert main(["merge", str(spec), "--out", str(spec.parent), "--overwrite"]) != 0
    assert "contains the spec file" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_destination_overlapping_an_input_is_refused(capsys, tmp_path, pair, where):
    out = {"same": pair[0], "inside": pair[0] / "merged", "contains": pair[0].parent}[where]
    before = sorted(p.name for p in pair[0].iterdir())
    code = main(["merge", *args_for(pair), "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert code != 0 and "write the merge somewhere outside the inputs" in err
    assert sorted(p.name for p in pair[0].iterdir()) == before


def test_debug_shows_the_traceback(tmp_path, pair):
    with pytest.raises(Exception, match="does not exist"):
        main(
            [
                "merge",
                "--sft",
                str(tmp_path / "nope"),
                "--aligned",
                str(pair[1]),
                "--alpha",
                "0.5",
                "--out",
                str(tmp_path / "o"),
                "--debug",
            ]
        )


def test_index_naming_a_missing_shard(capsys, tmp_path, pair):
    (pair[0] / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-1.safetensors"}}))
    assert "lists model-1.safetensors, which is not in the folder" in run_failing(capsys, tmp_path, *args_for(pair))


def test_tie_mismatch_is_refused(capsys, tmp_path, pair):
    config = json.loads((pair[1] / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (pair[1] / "config.json").write_text(json.dumps(config))
    assert "config.json 'tie_word_embeddings' is True but the sft model's is False" in run_failing(
        capsys, tmp_path, *args_for(pair)
    )


def test_float_against_integer_tensor(capsys, tmp_path, pair):
    rewrite(pair[1], lambda t: t.update({"model.norm.weight": torch.ones(32, dtype=torch.int64)}))
    assert "tensor 'model.norm.weight' is float32 in the sft model but int64 in the aligned model" in run_failing(
        capsys, tmp_path, *args_for(pair)
    )


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"[]", "corrupt safetensors header (not a JSON object)"),
        (b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": ["0", null]}}', "unreadable or unsupported header"),
        (b'{"x": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}', "unreadable or unsupported header"),
    ],
)
def test_malformed_headers(capsys, tmp_path, pair, header, message):
    header += b" " * (-len(header) % 8)
    (pair[0] / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    assert message in run_failing(capsys, tmp_path, *args_for(pair))


def test_index_with_non_string_file_names(capsys, tmp_path, pair):
    (pair[0] / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": 3}}))
    assert "not a valid weight index" in run_failing(capsys, tmp_path, *args_for(pair))


def test_text_config_must_be_an_object(capsys, tmp_path, pair):
    config = json.loads((pair[0] / "config.json").read_text())
    config["text_config"] = 3
    (pair[0] / "config.json").write_text(json.dumps(config))
    assert "'text_config' must be a JSON object" in run_failing(capsys, tmp_path, *args_for(pair))


def test_rules_field_of_the_wrong_type_with_a_rule_flag(capsys, tmp_path, pair):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"sft: {pair[0]}\naligned: {pair[1]}\nalpha: 0.5\nrules: 3\n")
    assert "field 'rules'" in run_failing(capsys, tmp_path, str(spec), "--rule", "lm_head.*=0.5")


def test_non_utf8_spec(capsys, tmp_path, pair):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"sft: \xff\xfe\n")
    assert "not a text file (YAML must be UTF-8)" in run_failing(capsys, tmp_path, str(spec))


def test_booleans_are_not_ratios(capsys, tmp_path, pair):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"sft: {pair[0]}\naligned: {pair[1]}\nalpha: true\n")
    assert "field 'alpha' expected a number, got true/false" in run_failing(capsys, tmp_path, str(spec))


def test_unwritable_destination(capsys, tmp_path, pair):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["merge", *args_for(pair), "--out", str(blocker / "merged")])
    err = capsys.readouterr().err
    assert (
        code != 0 and err.count("\n") == 1 and f"{blocker / 'merged'}: cannot write there ({blocker} is a file" in err
    )


@pytest.mark.parametrize("flags", [["--block-bounds", "0-1,2-3-4"], ["--rule", "lm_head*"], ["--alpha", "x"]])
def test_flag_errors_are_one_line(capsys, flags):
    with pytest.raises(SystemExit) as caught:
        main(["merge", "--sft", "a", "--aligned", "b", *flags])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.count("\n") == 1 and err.startswith("taxcut merge: error: ")


def write_index(folder: Path, change) -> None:
    """Give a single-file folder an index of its tensors (all in model.safetensors), edited by ``change``."""
    weight_map = {name: "model.safetensors" for name in load_weights(folder)}
    change(weight_map)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_index_naming_a_tensor_its_shard_lacks(capsys, tmp_path, pair):
    write_index(pair[1], lambda m: m.update({"model.layers.9.mlp.up_proj.weight": "model.safetensors"}))
    assert (
        "names tensor 'model.layers.9.mlp.up_proj.weight' in model.safetensors, but model.safetensors does not hold it"
    ) in run_failing(capsys, tmp_path, *args_for(pair))


def test_shard_tensor_missing_from_the_index(capsys, tmp_path, pair):
    write_index(pair[0], lambda m: m.pop("model.norm.weight"))
    assert (
        "model.safetensors: holds tensor 'model.norm.weight', which model.safetensors.index.json does not list"
        in run_failing(capsys, tmp_path, *args_for(pair))
    )


def test_index_pointing_outside_the_folder(capsys, tmp_path, pair):
    outside = str(pair[1] / "model.safetensors")
    write_index(pair[0], lambda m: m.update({name: outside for name in m}))
    assert f"names shard {outside!r}, which lies outside the model folder" in run_failing(
        capsys, tmp_path, *args_for(pair)
    )


@pytest.mark.parametrize("where", ["top level", "fit section"])
def test_alias_bomb_in_a_ratios_file(tmp_path, pair, where):
    """A ~400-byte file whose aliases expand to 9**10 values is refused at once (the timeout only guards a hang)."""
    import subprocess
    import sys

    levels = "abcdefghij"
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    bomb += [f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]" for prev, cur in zip(levels, levels[1:])]
    spec = f"sft: {pair[0]}\naligned: {pair[1]}\nalphas: [0.3, 0.5, 0.7]\n"
    spec += (
        "".join(f"{line}\n" for line in bomb)
        if where == "top level"
        else ("fit:\n" + "".join(f"  {line}\n" for line in bomb))
    )
    (tmp_path / "ratios.yaml").write_text(spec)
    out = tmp_path / "merged"
    result = subprocess.run(
        [sys.executable, "-m", "taxcut.cli", "merge", str(tmp_path / "ratios.yaml"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert f"taxcut: error: {tmp_path / 'ratios.yaml'}, line " in lines[0]
    assert "expands to more than 200000 values once its aliases (*name) are expanded" in lines[0]
    assert not out.exists()
