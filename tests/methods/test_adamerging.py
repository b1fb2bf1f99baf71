"""AdaMerging: the coefficient fit (prepare step) and the merge with given coefficients."""

from __future__ import annotations

import json

import numpy as np
import yaml
from models import load_weights, numpy_of

from taxcut.cli import main


def test_adamerging_learns_coefficients_that_lower_entropy_and_merges_with_them(trio, tmp_path):
    from taxcut.io.layers import detect_layers
    from taxcut.tuning.adamerging import fit_adamerging

    base, models = trio
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 3} w{i + 5}"}) + "\n" for i in range(4, 20)))
    learned = fit_adamerging(
        base, [models[0], models[2]], prompts, granularity="layer", epochs=6, batch_size=16, lr=0.05
    )
    assert len(learned["coefficients"]) == 2 and len(learned["coefficients"][0]) == learned["layers"] + 1 == 5
    assert learned["entropy"][-1] < learned["entropy"][0]
    assert all(0.0 <= c <= 1.0 for row in learned["coefficients"] for c in row)
    spec = tmp_path / "ada.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "method": "adamerging",
                "base": str(base),
                "models": [str(models[0]), str(models[2])],
                "parameters": {"coefficients": learned["coefficients"], "layers": 4},
            }
        )
    )
    assert main(["merge", str(spec), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    out, b = load_weights(tmp_path / "out"), numpy_of(base)
    inputs = [numpy_of(models[0]), numpy_of(models[2])]
    layout = detect_layers(out)
    assert layout.num_layers == 4
    for name, tensor in out.items():
        group = layout.layer_of.get(name, 4)
        expected = b[name] + sum(
            np.float32(row[group]) * (x[name] - b[name]) for row, x in zip(learned["coefficients"], inputs)
        )
        np.testing.assert_allclose(tensor.numpy(), expected, rtol=0, atol=1e-6, err_msg=name)
    task_wise = fit_adamerging(base, [models[0]], prompts, granularity="task", epochs=1)
    assert len(task_wise["coefficients"][0]) == 1


def test_adamerging_fits_then_merges_from_a_spec(trio, tmp_path):
    base, models = trio
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}"}) + "\n" for i in range(4, 44)))
    spec = tmp_path / "ada.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "method": "adamerging",
                "base": str(base),
                "models": [str(m) for m in models[:2]],
                "parameters": {"data": "prompts.jsonl", "batch_size": 8},
            }
        )
    )
    assert main(["merge", str(spec), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    provenance = json.loads((tmp_path / "out" / "taxcut_provenance.json").read_text())
    assert len(provenance["spec"]["parameters"]["coefficients"]) == 2 and provenance["spec"]["parameters"]["fit"]
