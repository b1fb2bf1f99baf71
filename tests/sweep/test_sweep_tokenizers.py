"""A sweep of models whose tokenizers differ: refused unless the sweep spec's
``allow_tokenizer_mismatch`` allows it; then its candidates, its HMA fits and their export merge with that allowance,
and sweeps that do not set it keep the results context they had."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from models import load_weights
from test_sweep import write_sweep

from taxcut.cli import main
from taxcut.errors import TaxcutError
from taxcut.evaluation.suite import EvaluationSuite
from taxcut.io.provenance import weights_identity
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.runner import RESULTS_FILE, export_candidate, sweep_context

MISMATCH = "tokenizer.json: token 'w5' is id 9 in the sft model but 10 in the aligned model"


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def pair(tmp_path, llama_pair) -> tuple[Path, Path]:
    """A private copy of the llama pair whose aligned tokenizer gives 'w5' and 'w6' each other's ids."""
    sft, aligned = (Path(shutil.copytree(folder, tmp_path / "models" / folder.name)) for folder in llama_pair)
    path = aligned / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    vocab["w5"], vocab["w6"] = vocab["w6"], vocab["w5"]
    path.write_text(json.dumps(data, indent=2))
    return sft, aligned


def sweep_file(tmp_path: Path, pair, **fields) -> Path:
    """The sweep of test_sweep (MA 0 and 0.5) with ``fields`` added to its spec."""
    path = write_sweep(tmp_path, pair, alphas=(0.0, 0.5), patterns=())
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **fields}))
    return path


def test_without_the_field_the_sweep_is_refused_naming_the_spec_field(capsys, tmp_path, pair):
    before = [digest(folder) for folder in pair]
    assert main(["sweep", str(sweep_file(tmp_path, pair)), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert MISMATCH in err and "'allow_tokenizer_mismatch: true'" in err
    assert not (tmp_path / "sweep-out" / RESULTS_FILE).exists()
    assert [digest(folder) for folder in pair] == before


def test_the_field_is_true_or_false(capsys, tmp_path, pair):
    path = sweep_file(tmp_path, pair, allow_tokenizer_mismatch="yes")
    assert main(["sweep", str(path), "--no-progress"]) == 2
    assert "field 'allow_tokenizer_mismatch' expected true or false" in capsys.readouterr().err
    with pytest.raises(TaxcutError, match="'allow_tokenizer_mismatch' expected true or false"):
        SweepSpec.from_yaml(sweep_file(tmp_path, pair, allow_tokenizer_mismatch=1))


def test_with_the_field_the_sweep_runs_and_its_candidate_exports_with_the_allowance(capsys, tmp_path, pair):
    before = [digest(folder) for folder in pair]
    fit_set = tmp_path / "fit.jsonl"
    fit_set.write_text(
        "".join(json.dumps({"prompt": f"w{i} w{i + 1}", "response": f"w{i + 2}"}) + "\n" for i in range(4, 8))
    )
    path = sweep_file(tmp_path, pair, allow_tokenizer_mismatch=True)
    spec = yaml.safe_load(path.read_text())
    spec["candidates"]["hma"] = {"data": str(fit_set), "mean_alphas": [0.5], "lr": 0.2}
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--no-progress", "--device", "cpu"]) == 0
    out = tmp_path / "sweep-out"
    records = [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]
    labels = [r["label"] for r in records]
    assert labels[:2] == ["MA a=0", "MA a=0.5"] and any(label.startswith("HMA a=0.5") for label in labels)
    assert all(r["allow_tokenizer_mismatch"] is True for r in records)
    ratios = next((out / "hma").glob("hma-a0.5-*.yaml"))
    assert yaml.safe_load(ratios.read_text())["allow_tokenizer_mismatch"] is True  # merged as it was fitted
    assert yaml.safe_load((out / "sweep.yaml").read_text())["allow_tokenizer_mismatch"] is True

    half = next(r for r in records if r["label"] == "MA a=0.5")
    merged = tmp_path / "exported"
    capsys.readouterr()
    assert main(["export", str(out), "--candidate", half["candidate_id"], "--out", str(merged)]) == 0
    assert "merged anyway (allow_tokenizer_mismatch)" in capsys.readouterr().err
    sft, aligned, weights = load_weights(pair[0]), load_weights(pair[1]), load_weights(merged)
    name = "model.layers.0.mlp.up_proj.weight"
    assert weights[name].allclose(0.5 * sft[name] + 0.5 * aligned[name])
    provenance = json.loads((merged / "taxcut_provenance.json").read_text())
    assert provenance["exported"]["allow_tokenizer_mismatch"] is True
    assert provenance["exported"]["candidate"] == half["candidate_id"]
    assert [digest(folder) for folder in pair] == before


def test_an_export_of_a_line_without_the_allowance_is_refused(capsys, tmp_path, pair):
    """The line, not today's spec, says whether the sweep allowed the mismatch: without it export refuses."""
    assert main(["sweep", str(sweep_file(tmp_path, pair, allow_tokenizer_mismatch=True)), "--no-progress"]) == 0
    results = tmp_path / "sweep-out" / RESULTS_FILE
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    for line in lines:
        del line["allow_tokenizer_mismatch"]
    results.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    kept = results.read_bytes()
    with pytest.raises(TaxcutError, match=MISMATCH):
        export_candidate(results, lines[1]["candidate_id"], tmp_path / "exported")
    assert not (tmp_path / "exported").exists() and results.read_bytes() == kept


def old_context(spec: SweepSpec, suite: EvaluationSuite) -> str:
    """sweep_context as it was before the field existed."""
    models = [weights_identity(folder) for folder in (spec.sft, spec.aligned)]
    payload = json.dumps(
        {"models": models, "evaluation": suite.fingerprint(), "dtype": spec.dtype, "extrapolate": spec.extrapolate},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def test_a_sweep_without_the_field_keeps_its_context_and_lines(tmp_path, llama_pair):
    spec = SweepSpec.from_yaml(write_sweep(tmp_path, llama_pair, alphas=(0.0, 0.5), patterns=()))
    assert "allow_tokenizer_mismatch" not in spec.model_fields_set and not spec.allow_tokenizer_mismatch
    suite = EvaluationSuite.from_spec(spec.evaluation, device="cpu")
    context = sweep_context(spec, suite)
    assert context == old_context(spec, suite)
    allowed = spec.model_copy(update={"allow_tokenizer_mismatch": True})  # the same weights: the same results
    assert sweep_context(allowed, suite) == context
    assert "allow_tokenizer_mismatch" not in spec.to_yaml()
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--no-progress"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "sweep-out" / RESULTS_FILE).read_text().splitlines()]
    assert {line["context"] for line in lines} == {context}
    assert all("allow_tokenizer_mismatch" not in line for line in lines)  # written only when true
