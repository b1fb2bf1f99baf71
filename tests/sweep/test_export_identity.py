"""Export writes exactly the candidate that was measured: a results line must be whole JSON,
its id must be its candidate's, it must record the inputs, and today's inputs must have the content it records;
a results file that is a symbolic link is never followed. Each refusal leaves the user's files as they were."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import yaml
from test_sweep import write_sweep

from taxcut import TaxcutError
from taxcut.cli import main
from taxcut.spec.candidates import ma_candidate
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.results import ResultsStore
from taxcut.sweep.runner import RESULTS_FILE, run_sweep


def digest(path: Path) -> str:
    """A hash of a file, or of a folder's files with their names."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return hashlib.sha256(
        b"".join(p.name.encode() + digest(p).encode() for p in sorted(path.rglob("*")) if p.is_file())
    ).hexdigest()


@pytest.fixture
def swept(llama_pair, tmp_path):
    """A finished sweep (MA a=0 and a=0.5) over copies of the llama pair: (results file, sft, aligned)."""
    sft, aligned = (Path(shutil.copytree(p, tmp_path / "models" / p.name)) for p in llama_pair)
    run_sweep(
        SweepSpec.from_yaml(write_sweep(tmp_path, (sft, aligned), alphas=(0.0, 0.5), patterns=())), progress=False
    )
    return tmp_path / "sweep-out" / RESULTS_FILE, sft, aligned


def lines(results: Path) -> list[dict]:
    return [json.loads(line) for line in results.read_text().splitlines()]


def rewrite(results: Path, records: list[dict]) -> None:
    results.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def export(results: Path, candidate: str, out: Path, *extra: str) -> int:
    return main(["export", str(results), "--candidate", candidate, "--out", str(out), *extra])


def state(*paths: Path) -> list[str]:
    return [digest(p) for p in paths]


MID = ma_candidate(0.5).id


def test_a_line_without_inputs_exports_only_with_force_and_a_warning(swept, tmp_path, capsys):
    results, sft, aligned = swept
    rewrite(results, [{k: v for k, v in r.items() if k != "inputs"} for r in lines(results)])  # an older line
    before = state(results, sft, aligned)
    assert export(results, MID, tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert (
        f"{results}, line 2: candidate {MID} (MA a=0.5): its line does not record the inputs it was measured "
        "on, so its scores cannot be checked against today's weights; rerun the sweep, or pass --force" in err
    )
    assert err.count("\n") == 1 and not (tmp_path / "x").exists() and state(results, sft, aligned) == before

    assert export(results, MID, tmp_path / "forced", "--force") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        f"taxcut: warning: {results}, line 2: candidate {MID} (MA a=0.5): its scores cannot be "
        "checked against today's weights (its line does not record the inputs it was measured on); "
        "exporting it as --force asks"
    ]
    exported = json.loads((tmp_path / "forced" / "taxcut_provenance.json").read_text())["exported"]
    assert exported["inputs_verified"] is False and exported["line"] == 2
    assert exported["forced_despite"] == "its line does not record the inputs it was measured on"
    assert state(results, sft, aligned) == before


def test_a_line_that_records_file_times_only_is_unchecked(swept, tmp_path, capsys):
    results, sft, aligned = swept
    records = lines(results)
    for record in records:  # what taxcut wrote before content hashes: (name, size, mtime)
        record["inputs"] = {role: [["model.safetensors", 1, 2]] for role in ("sft", "aligned")}
    rewrite(results, records)
    assert export(results, MID, tmp_path / "x") == 2
    assert "records its inputs by file times only (an older taxcut)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_swapped_candidate_id_is_refused_in_export_and_in_resume(swept, tmp_path, capsys):
    results, sft, aligned = swept
    first, second = lines(results)
    first["candidate_id"], second["candidate_id"] = second["candidate_id"], first["candidate_id"]
    rewrite(results, [first, second])
    before = state(results, sft, aligned)
    assert export(results, MID, tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert (
        f"{results}, line 1: candidate_id '{MID}' is not the id of the line's candidate fields "
        f"({ma_candidate(0.0).id}): the line was edited; restore it, or delete it and rerun the sweep" in err
    )
    with pytest.raises(TaxcutError, match=f"line 1: candidate_id '{MID}' is not the id"):
        run_sweep(SweepSpec.from_yaml(tmp_path / "sweep.yaml"), progress=False)  # a forged line is never reused
    assert not (tmp_path / "x").exists() and state(results, sft, aligned) == before


def test_an_alpha_edited_under_its_id_is_refused(swept, tmp_path, capsys):
    results, sft, aligned = swept
    records = lines(results)
    records[1]["candidate"]["alpha"] = 0.9  # the scores of a=0.5 would be exported as a=0.9
    rewrite(results, records)
    before = state(results, sft, aligned)
    assert export(results, MID, tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert (
        f"{results}, line 2: candidate_id '{MID}' is not the id of the line's candidate fields ({ma_candidate(0.9).id})"
        in err
        and err.count("\n") == 1
    )
    assert not (tmp_path / "x").exists() and state(results, sft, aligned) == before


def first_tensor_offset(path: Path) -> int:
    """Where the first tensor's data starts in a safetensors file."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return 8 + length + min(meta["data_offsets"][0] for name, meta in header.items() if name != "__metadata__")


def edit_in_place(path: Path, offset: int, data: bytes) -> None:
    """Overwrite bytes of a file and set its times back: the same name, size and modification time."""
    times = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert path.stat().st_mtime_ns == times.st_mtime_ns


def test_a_weight_file_changed_in_place_with_its_time_restored_is_refused(swept, tmp_path, capsys):
    results, sft, aligned = swept
    weights = aligned / "model.safetensors"
    edit_in_place(weights, first_tensor_offset(weights), b"\x7f\x7f\x7f\x7f")
    before = state(results, sft, aligned)
    assert export(results, MID, tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert (
        f"{results}, line 2: candidate {MID} (MA a=0.5): was measured on other inputs: the aligned model's "
        "model.safetensors changed since; rerun the sweep, or pass --force" in err
    )
    assert not (tmp_path / "x").exists() and state(results, sft, aligned) == before


@pytest.mark.parametrize("name", ["tokenizer.json", "generation_config.json", "config.json"])
def test_a_file_the_merge_copies_is_part_of_the_identity(swept, tmp_path, capsys, name):
    results, sft, aligned = swept
    path = sft / name
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "edited_by_hand": 1}))
    before = state(results, sft, aligned)
    assert export(results, MID, tmp_path / "x") == 2
    assert f"was measured on other inputs: the sft model's {name} changed since" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and state(results, sft, aligned) == before


def test_a_chat_template_added_since_is_a_change(swept, tmp_path, capsys):
    results, sft, aligned = swept
    (aligned / "chat_template.jinja").write_text("{{ messages }}")
    assert export(results, MID, tmp_path / "x") == 2
    assert "the aligned model's chat_template.jinja changed since" in capsys.readouterr().err


def test_verify_full_compares_whole_files_when_the_sweep_recorded_them(llama_pair, tmp_path, capsys):
    sft, aligned = (Path(shutil.copytree(p, tmp_path / "models" / p.name)) for p in llama_pair)
    spec_path = write_sweep(tmp_path, (sft, aligned), alphas=(0.0, 0.5), patterns=())
    spec_path.write_text(yaml.safe_dump({**yaml.safe_load(spec_path.read_text()), "input_hashes": "full"}))
    run_sweep(SweepSpec.from_yaml(spec_path), progress=False)
    results = tmp_path / "sweep-out" / RESULTS_FILE
    assert all("sha256" in entry for r in lines(results) for entry in r["inputs"]["aligned"])
    assert export(results, MID, tmp_path / "full", "--verify", "full") == 0
    assert json.loads((tmp_path / "full" / "taxcut_provenance.json").read_text())["exported"]["verified_by"] == "full"

    weights = aligned / "model.safetensors"  # a byte no sample covers: the header's metadata
    at = weights.read_bytes().index(b'"format":"pt"')
    edit_in_place(weights, at, b'"format":"px"')
    before = state(results, sft, aligned)
    assert export(results, MID, tmp_path / "x", "--verify", "full") == 2
    assert "the aligned model's model.safetensors changed since" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and state(results, sft, aligned) == before
    assert export(results, MID, tmp_path / "sampled") == 0  # the sample cannot see it: --verify full is the check


def test_verify_full_without_recorded_full_hashes_is_refused(swept, tmp_path, capsys):
    results, sft, aligned = swept
    before = state(results, sft, aligned)
    assert export(results, MID, tmp_path / "x", "--verify", "full", "--force") == 2
    assert (
        "the sweep recorded sampled hashes of its inputs only, so --verify full has nothing to compare with; "
        "rerun the sweep with 'input_hashes: full', or export with --verify sample" in capsys.readouterr().err
    )
    assert not (tmp_path / "x").exists() and state(results, sft, aligned) == before


@pytest.mark.parametrize("bad", ["hello", '{"candidate_id": 1}}', "[1, 2", '{"a": 1 "b": 2}', "{'a': 1}"])
def test_a_line_that_is_not_json_names_file_and_line(swept, tmp_path, capsys, bad):
    results, sft, aligned = swept
    text = results.read_text()
    results.write_text(text + bad + "\n")
    before = state(results, sft, aligned)
    message = f"{results}, line 3: not JSON; fix or delete the line"
    with pytest.raises(TaxcutError, match=f"^{message}$"):
        ResultsStore(results).records()
    assert export(results, MID, tmp_path / "x") == 2 and capsys.readouterr().err == f"taxcut: error: {message}\n"
    with pytest.raises(TaxcutError, match=message):
        run_sweep(SweepSpec.from_yaml(tmp_path / "sweep.yaml"), progress=False)
    assert not (tmp_path / "x").exists() and state(results, sft, aligned) == before


def test_a_line_cut_short_anywhere_is_skipped(swept):
    results = swept[0]
    whole = results.read_text().splitlines()
    store = ResultsStore(results.with_name("cut.jsonl"))
    line = whole[1][:-1] + ', "note": "caf\\u00e9 \\\\ \\"q\\"", "n": [true, false, null, -1.5e-3, {}]}'
    for cut in range(1, len(line)):  # a kill can stop a write after any byte
        store.path.write_text(whole[0] + "\n" + line[:cut] + "\n")
        assert [r.candidate_id for r in store.records()] == [ma_candidate(0.0).id], line[:cut]


@pytest.mark.parametrize("dangling", [False, True])
def test_a_results_file_that_is_a_symbolic_link_is_refused(swept, tmp_path, capsys, dangling):
    results, sft, aligned = swept
    record = ResultsStore(results).records()[0]
    target = tmp_path / "elsewhere.jsonl"
    results.rename(target)
    if dangling:
        target.unlink()
    results.symlink_to(target)
    before = state(sft, aligned) + ([] if dangling else state(target))
    message = f"{results} is a symbolic link; taxcut does not follow links for its results: remove it"
    with pytest.raises(TaxcutError, match=f"^{message}$"):
        ResultsStore(results).records()
    with pytest.raises(TaxcutError, match=f"^{message}$"):
        ResultsStore(results).append(record)
    assert export(results, MID, tmp_path / "x") == 2 and capsys.readouterr().err == f"taxcut: error: {message}\n"
    with pytest.raises(TaxcutError, match=message):
        run_sweep(SweepSpec.from_yaml(tmp_path / "sweep.yaml"), progress=False)
    assert results.is_symlink() and not (tmp_path / "x").exists()
    assert state(sft, aligned) + ([] if dangling else state(target)) == before
    assert target.exists() is not dangling  # a dangling link's target is never created
