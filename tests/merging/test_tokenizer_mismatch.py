"""Models whose tokenizers give the same text other ids are refused, unless allowed; a flag's
comma list with an empty element is refused (item 6); a protected file is never named "file file"."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from models import load_weights

from taxcut.cli import main
from taxcut.errors import TaxcutError
from taxcut.io.destination import check_destination
from taxcut.io.tokenizer_files import tokenizer_aspects, tokenizer_difference
from taxcut.merging.plan import build_plan
from taxcut.spec.merge import MergeSpec
from taxcut.spec.toolkit import ToolkitSpec


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def edit_tokenizer(folder: Path, change, *, indent: int | None = 2) -> None:
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=indent))


def swap_ids(data: dict, first: str = "w5", second: str = "w6") -> None:
    vocab = data["model"]["vocab"]
    vocab[first], vocab[second] = vocab[second], vocab[first]


@pytest.fixture
def pair(tmp_path, llama_pair) -> tuple[Path, Path]:
    """A private copy of the llama pair (the aligned model's tokenizer gets edited)."""
    return tuple(Path(shutil.copytree(folder, tmp_path / "models" / folder.name)) for folder in llama_pair)


def merge_args(pair, out: Path, *extra: str) -> list[str]:
    return ["merge", "--sft", str(pair[0]), "--aligned", str(pair[1]), "--alpha", "0.5", "--out", str(out), *extra]


def test_a_vocabulary_differing_in_one_id_is_refused_naming_the_file_and_token(capsys, tmp_path, pair):
    edit_tokenizer(pair[1], swap_ids)
    before = [digest(folder) for folder in pair]
    out = tmp_path / "merged"
    assert main(merge_args(pair, out)) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (
        f"taxcut: error: {pair[1]}: the aligned model's tokenizer does not match the sft model's (tokenizer.json: "
        "token 'w5' is id 9 in the sft model but 10 in the aligned model)"
    ) in err
    assert "--allow-tokenizer-mismatch" in err
    assert not out.exists() and [digest(folder) for folder in pair] == before


def test_the_flag_merges_anyway_with_a_note(capsys, tmp_path, pair):
    edit_tokenizer(pair[1], swap_ids)
    before = [digest(folder) for folder in pair]
    out = tmp_path / "merged"
    assert main(merge_args(pair, out, "--allow-tokenizer-mismatch")) == 0
    assert "token 'w5' is id 9 in the sft model but 10 in the aligned model); merged anyway" in capsys.readouterr().err
    sft, aligned, merged = load_weights(pair[0]), load_weights(pair[1]), load_weights(out)
    name = "model.layers.0.mlp.up_proj.weight"
    assert merged[name].allclose(0.5 * sft[name] + 0.5 * aligned[name])
    assert json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]["w5"] == 10  # the aligned model's
    assert [digest(folder) for folder in pair] == before


def test_the_spec_field_allows_it_too(capsys, tmp_path, pair):
    edit_tokenizer(pair[1], swap_ids)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"sft: {pair[0]}\naligned: {pair[1]}\nalpha: 0.3\nallow_tokenizer_mismatch: true\n")
    assert main(["merge", str(spec), "--out", str(tmp_path / "merged")]) == 0
    spec.write_text(f"sft: {pair[0]}\naligned: {pair[1]}\nalpha: 0.3\nallow_tokenizer_mismatch: yes please\n")
    assert main(["plan", str(spec)]) == 2
    assert "field 'allow_tokenizer_mismatch' expected true or false" in capsys.readouterr().err


def test_a_tokenizer_saved_again_with_other_formatting_is_accepted(capsys, tmp_path, pair):
    def resave(data):  # other key order and spacing, truncation and padding set, decoder changed
        data["truncation"] = {"max_length": 16, "strategy": "LongestFirst", "stride": 0, "direction": "Right"}
        data["padding"] = {
            "strategy": "BatchLongest",
            "direction": "Left",
            "pad_id": 0,
            "pad_type_id": 0,
            "pad_token": "<pad>",
            "pad_to_multiple_of": None,
        }
        data["decoder"] = {"type": "Fuse"}
        data["model"] = dict(reversed(list(data["model"].items())))
        data["added_tokens"] = list(reversed(data["added_tokens"]))

    edit_tokenizer(pair[1], resave, indent=None)
    config = pair[1] / "tokenizer_config.json"  # other settings, and a pad token set differently (it is masked)
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 64, "pad_token": "</s>"}))
    assert main(merge_args(pair, tmp_path / "merged")) == 0
    assert "tokenizer" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda d: d["added_tokens"].append({"id": 64, "content": "<|im_start|>", "special": True}),
            "tokenizer.json: token '<|im_start|>' (id 64) is in the aligned model but not in the sft model",
        ),
        (
            lambda d: d["model"]["vocab"].pop("w59"),
            "tokenizer.json: token 'w59' (id 63) is in the sft model but not in the aligned model",
        ),
        (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "tokenizer.json: the pre-tokenizer differs"),
        (lambda d: d.update(normalizer={"type": "Lowercase"}), "tokenizer.json: the normalizer differs"),
    ],
)
def test_what_decides_the_ids_is_compared(capsys, tmp_path, pair, change, expected):
    edit_tokenizer(pair[1], change)
    with pytest.raises(TaxcutError, match="does not match the sft model's") as caught:
        build_plan(MergeSpec(sft=pair[0], aligned=pair[1], alpha=0.5))
    assert expected in str(caught.value)


def test_special_tokens_are_compared(pair):
    config = pair[1] / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "eos_token": "<pad>"}))
    with pytest.raises(
        TaxcutError,
        match=r"tokenizer_config.json: 'eos_token' is '</s>' in the sft model but "
        r"'<pad>' in the aligned model",
    ):
        build_plan(MergeSpec(sft=pair[0], aligned=pair[1], alpha=0.5))


def test_a_model_without_tokenizer_files_is_noted(pair):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (pair[1] / name).unlink()
    with build_plan(MergeSpec(sft=pair[0], aligned=pair[1], alpha=0.5)) as plan:
        assert any(f"the aligned model ({pair[1]}) has no tokenizer files" in note for note in plan.notes)


def test_toolkit_inputs_are_compared_with_the_first(tmp_path, trio):
    base, models = trio
    third = Path(shutil.copytree(models[0], tmp_path / "third"))
    edit_tokenizer(third, swap_ids)
    spec = ToolkitSpec(method="task_arithmetic", base=base, models=[models[0], third], parameters={"lambda": 0.5})
    with pytest.raises(
        TaxcutError,
        match=r"the model 2's tokenizer does not match the base model's \(tokenizer.json: "
        r"token 'w5' is id 9",
    ):
        build_plan(spec)
    allowed = spec.model_copy(update={"allow_tokenizer_mismatch": True})
    with build_plan(allowed) as plan:
        assert any("merged anyway" in note for note in plan.notes)


def test_slow_tokenizer_files_are_compared_with_tokenizer_json(tmp_path):
    """vocab.json + merges.txt (a slow GPT-2 tokenizer) against tokenizer.json with merges in the newer pair form."""
    vocab = {"a": 0, "b": 1, "ab": 2}
    slow, fast = tmp_path / "slow", tmp_path / "fast"
    slow.mkdir(), fast.mkdir()
    (slow / "vocab.json").write_text(json.dumps(vocab))
    (slow / "merges.txt").write_text("#version: 0.2\na b\n")
    (fast / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": [["a", "b"]]}, "added_tokens": []})
    )
    names = ("sft model", "aligned model")
    assert tokenizer_difference(tokenizer_aspects([slow]), tokenizer_aspects([fast]), names) is None
    (slow / "merges.txt").write_text("#version: 0.2\nb a\n")
    assert tokenizer_difference(tokenizer_aspects([slow]), tokenizer_aspects([fast]), names) == (
        "tokenizer.json (the sft model's merges.txt): merge 0 is 'b a' in the sft model but 'a b' in the aligned model"
    )


def test_a_fit_of_mismatched_models_is_refused_before_loading_them(capsys, tmp_path, pair):
    edit_tokenizer(pair[1], swap_ids)
    data = tmp_path / "fit.jsonl"
    data.write_text('{"prompt": "w1 w2", "response": "w3 w4"}\n')
    out = tmp_path / "ratios.yaml"
    assert (
        main(
            [
                "fit",
                "--sft",
                str(pair[0]),
                "--aligned",
                str(pair[1]),
                "--data",
                str(data),
                "--alpha",
                "0.5",
                "--out",
                str(out),
            ]
        )
        != 0
    )
    assert "tokenizer.json: token 'w5' is id 9" in capsys.readouterr().err and not out.exists()
    assert (
        main(
            [
                "fit",
                "--sft",
                str(pair[0]),
                "--aligned",
                str(pair[1]),
                "--data",
                str(data),
                "--alpha",
                "0.5",
                "--out",
                str(out),
                "--allow-tokenizer-mismatch",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "allow_tokenizer_mismatch: true" in out.read_text()  # merging the ratios file allows it as the fit did
    assert main(["plan", str(out)]) == 0


@pytest.mark.parametrize(
    "argv, flag",
    [
        (
            [
                "fit",
                "--sft",
                "a",
                "--aligned",
                "b",
                "--data",
                "d",
                "--alpha",
                "0.5",
                "--out",
                "o",
                "--eps",
                "0,0.1,,0.2",
            ],
            "--eps",
        ),
        (
            ["fit", "--sft", "a", "--aligned", "b", "--data", "d", "--alpha", "0.5", "--out", "o", "--reg", "0.1,"],
            "--reg",
        ),
        (["merge", "--sft", "a", "--aligned", "b", "--alphas", "0.1,,0.2"], "--alphas"),
        (["merge", "--sft", "a", "--aligned", "b", "--layer-alphas", ",0.1"], "--layer-alphas"),
    ],
)
def test_an_empty_element_in_a_comma_list_is_refused(capsys, argv, flag):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.count("\n") == 1
    assert f"argument {flag}: a value between commas is empty" in err


def test_a_protected_file_is_not_called_file_file(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text("")
    with pytest.raises(TaxcutError) as caught:
        check_destination(results, overwrite=True, inputs=[("results file", results)], folder=False)
    assert "the destination is the results file " in str(caught.value) and "file file" not in str(caught.value)


def test_a_sweep_of_mismatched_models_is_refused_before_any_evaluation(capsys, tmp_path, pair):
    """The sweep plans every candidate first, so it refuses before evaluating anything."""
    from test_sweep import write_sweep

    edit_tokenizer(pair[1], swap_ids)
    path = write_sweep(tmp_path, pair, alphas=(0.0, 0.5), patterns=())
    assert main(["sweep", str(path), "--no-progress"]) != 0
    assert "tokenizer.json: token 'w5' is id 9 in the sft model but 10 in the aligned model" in capsys.readouterr().err
    assert not (tmp_path / "sweep-out" / "results.jsonl").exists()


def test_files_linked_to_blobs_are_read_by_their_names_and_binary_ones_by_bytes(tmp_path, pair):
    """A Hub snapshot's tokenizer.json links to a blob named by its hash; a sentencepiece model is compared whole."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (pair[1] / "tokenizer.json").rename(blobs / "0123abcd")
    (pair[1] / "tokenizer.json").symlink_to(blobs / "0123abcd")
    assert "vocabulary" in tokenizer_aspects([pair[1]])
    (pair[0] / "tokenizer.model").write_bytes(b"\x0a\x01a")
    (pair[1] / "tokenizer.model").write_bytes(b"\x0a\x01b")
    with pytest.raises(TaxcutError, match=r"\(tokenizer.model: the file's contents differ\)"):
        build_plan(MergeSpec(sft=pair[0], aligned=pair[1], alpha=0.5))
