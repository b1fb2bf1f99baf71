"""Greedy soups: the selection as the method's prepare step."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from models import load_weights

from taxcut.cli import main


def test_greedy_soup_keeps_what_helps(tmp_path):
    import shutil

    from models import VOCAB, build_successor_model
    from safetensors.torch import save_file

    good = build_successor_model(tmp_path / "good")
    twin = Path(shutil.copytree(good, tmp_path / "twin"))
    bad = Path(shutil.copytree(good, tmp_path / "bad"))
    tensors = load_weights(bad)
    head = torch.zeros(VOCAB, VOCAB)
    for token in range(5, VOCAB):  # predicts the predecessor, three times as confidently
        head[token - 1, token] = 30.0 / VOCAB**0.5
    tensors["lm_head.weight"] = head
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "mc.jsonl").write_text(
        "".join(
            json.dumps({"context": f"w{i}", "choices": [f"w{i + 1}", f"w{i - 1}"], "answer": 0}) + "\n"
            for i in range(5, 30)
        )
    )
    spec = tmp_path / "soup.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "method": "greedy_soup",
                "models": [str(bad), str(good), str(twin)],
                "parameters": {"score": "mc"},
                "evaluation": {"tasks": [{"name": "mc", "type": "multiple_choice", "path": "mc.jsonl"}]},
            }
        )
    )
    assert main(["merge", str(spec), "--out", str(tmp_path / "soup"), "--no-progress"]) == 0
    provenance = json.loads((tmp_path / "soup" / "taxcut_provenance.json").read_text())
    greedy = provenance["spec"]["parameters"]["greedy"]
    assert greedy["individual"] == {str(bad): 0.0, str(good): 1.0, str(twin): 1.0}
    assert [(Path(f).name, accepted) for f, _, accepted in greedy["trials"]] == [("twin", True), ("bad", False)]
    assert [Path(m["path"]).name for m in provenance["spec"]["models"]] == ["good", "twin"]
    soup, original = load_weights(tmp_path / "soup"), load_weights(good)
    assert all(torch.equal(soup[k], original[k]) for k in original)
