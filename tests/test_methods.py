"""The toolkit's methods against independent computations, on three tiny Llama models in mixed shard layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from models import build_pair, load_weights

from taxcut import TaxcutError
from taxcut.cli import main
from taxcut.merging.multi import run_method_merge
from taxcut.spec.toolkit import ToolkitSpec


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """A base model and three fine-tunes of it (noise added), saved whole, sharded and whole."""
    root = tmp_path_factory.mktemp("trio")
    base, first = build_pair(root / "a", "llama", seed=0)
    _, second = build_pair(root / "b", "llama", seed=0, max_shard_size="30KB")
    third_root = root / "c"
    third_root.mkdir()
    tensors = load_weights(first)
    generator = torch.Generator().manual_seed(7)
    from safetensors.torch import save_file

    third = third_root / "third"
    third.mkdir()
    save_file({k: v + 0.03 * torch.randn(v.shape, generator=generator) for k, v in tensors.items()},
              third / "model.safetensors", metadata={"format": "pt"})
    (third / "config.json").write_text((first / "config.json").read_text())
    return base, [first, second, third]


def merged(tmp_path, method, models, base=None, **parameters):
    spec = ToolkitSpec(method=method, models=[{"path": m, "weight": w} for m, w in models], base=base,
                       parameters=parameters, out=tmp_path / method)
    return load_weights(run_method_merge(spec, progress=False))


def numpy_of(folder):
    return {k: v.float().numpy() for k, v in load_weights(folder).items()}


def test_linear_soup(trio, tmp_path):
    _, models = trio
    weights = [1.0, 2.0, 0.5]
    out = merged(tmp_path, "linear", list(zip(models, weights)))
    inputs = [numpy_of(m) for m in models]
    for name, tensor in out.items():
        expected = sum(w * x[name] for w, x in zip(weights, inputs)) / sum(weights)
        np.testing.assert_allclose(tensor.numpy(), expected, rtol=0, atol=1e-6)


def test_task_arithmetic(trio, tmp_path):
    base, models = trio
    out = merged(tmp_path, "task_arithmetic", [(m, 1.0) for m in models], base=base, **{"lambda": 0.7})
    b, inputs = numpy_of(base), [numpy_of(m) for m in models]
    for name, tensor in out.items():
        expected = b[name] + 0.7 * sum(x[name] - b[name] for x in inputs)
        np.testing.assert_allclose(tensor.numpy(), expected, rtol=0, atol=1e-6)


def reference_ties(deltas: list[np.ndarray], density: float) -> np.ndarray:
    """TIES by hand: keep each task vector's top-|density| magnitudes, elect the sign of the summed kept values,
    average the kept values that agree with it."""
    trimmed = []
    for delta in deltas:
        keep = int(density * delta.size)
        flat = np.abs(delta).reshape(-1)
        mask = np.zeros(delta.size, dtype=bool)
        if keep:
            mask[np.argsort(-flat, kind="stable")[:keep]] = True
        trimmed.append(np.where(mask.reshape(delta.shape), delta, 0.0))
    stacked = np.stack(trimmed)
    sign = np.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = (np.sign(stacked) == sign) & (stacked != 0)
    return np.where(agree, stacked, 0.0).sum(0) / np.maximum(agree.sum(0), 1)


def test_ties(trio, tmp_path):
    base, models = trio
    out = merged(tmp_path, "ties", [(m, 1.0) for m in models], base=base, density=0.3)
    b, inputs = numpy_of(base), [numpy_of(m) for m in models]
    for name, tensor in out.items():
        expected = b[name] + reference_ties([x[name] - b[name] for x in inputs], 0.3)
        np.testing.assert_allclose(tensor.numpy(), expected, rtol=0, atol=1e-5, err_msg=name)


def test_dare_is_seeded_and_unbiased_at_full_density(trio, tmp_path):
    base, models = trio
    first = merged(tmp_path / "1", "dare_linear", [(m, 1.0) for m in models], base=base, density=0.5, seed=3)
    again = merged(tmp_path / "2", "dare_linear", [(m, 1.0) for m in models], base=base, density=0.5, seed=3)
    other = merged(tmp_path / "3", "dare_linear", [(m, 1.0) for m in models], base=base, density=0.5, seed=4)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    full = merged(tmp_path / "4", "dare_linear", [(m, 1.0) for m in models], base=base, density=1.0)
    arithmetic = merged(tmp_path / "5", "task_arithmetic", [(m, 1.0) for m in models], base=base)
    assert all(torch.allclose(full[k], arithmetic[k], atol=1e-6) for k in full)
    ties = merged(tmp_path / "6", "dare_ties", [(m, 1.0) for m in models], base=base, density=0.5, seed=3)
    assert all(torch.isfinite(t).all() for t in ties.values())


def test_slerp(trio, tmp_path):
    _, models = trio
    out = merged(tmp_path, "slerp", [(models[0], 1.0), (models[2], 1.0)], t=0.3)
    a_all, b_all = numpy_of(models[0]), numpy_of(models[2])
    for name, tensor in out.items():
        a, b = a_all[name].reshape(-1).astype(np.float64), b_all[name].reshape(-1).astype(np.float64)
        cosine = np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1)
        if abs(cosine) > 0.9995:  # (nearly) parallel: linear interpolation
            expected = (1 - 0.3) * a + 0.3 * b
        else:
            theta = math.acos(cosine)
            expected = (math.sin(0.7 * theta) * a + math.sin(0.3 * theta) * b) / math.sin(theta)
        np.testing.assert_allclose(tensor.numpy().reshape(-1), expected, rtol=0, atol=1e-6, err_msg=name)


def test_expo(trio, tmp_path):
    base, models = trio
    out = merged(tmp_path, "expo", [(models[0], 1.0)], base=base, alpha=0.5)
    b, a = numpy_of(base), numpy_of(models[0])
    for name, tensor in out.items():
        np.testing.assert_allclose(tensor.numpy(), a[name] + 0.5 * (a[name] - b[name]), rtol=0, atol=1e-6)


def test_variance_corrected(trio, tmp_path):
    _, models = trio
    out = merged(tmp_path, "variance_corrected", [(m, 1.0) for m in models])
    inputs = [numpy_of(m) for m in models]
    for name, tensor in out.items():
        if tensor.numel() < 2 or np.var(sum(x[name] for x in inputs)) == 0:
            continue
        values = tensor.double().numpy()
        target = np.mean([np.var(x[name].astype(np.float64), ddof=1) for x in inputs])
        assert np.var(values, ddof=1) == pytest.approx(target, rel=1e-4), name
        assert values.mean() == pytest.approx(np.mean(sum(x[name] for x in inputs) / 3), abs=1e-5)


def test_refusals(trio, tmp_path, pairs):
    base, models = trio
    with pytest.raises(TaxcutError, match="unknown merge method 'tie'; did you mean ties"):
        ToolkitSpec(method="tie", models=models)
    with pytest.raises(Exception, match="method 'ties' works on task vectors: give a 'base' model"):
        ToolkitSpec(method="ties", models=models)
    with pytest.raises(Exception, match="method 'slerp' takes exactly 2 model"):
        ToolkitSpec(method="slerp", models=models)
    spec = ToolkitSpec(method="linear", models=[models[0], pairs["gpt2"][0]], out=tmp_path / "x")
    with pytest.raises(TaxcutError, match="config.json 'model_type' is 'gpt2' but the model 1's is 'llama'"):
        run_method_merge(spec, progress=False)
    assert not (tmp_path / "x").exists()


def test_cli_routes_a_method_spec(trio, tmp_path, capsys):
    base, models = trio
    spec = tmp_path / "ties.yaml"
    spec.write_text(yaml.safe_dump({"method": "ties", "base": str(base), "models": [str(m) for m in models],
                                    "parameters": {"density": 0.5}}))
    assert main(["merge", str(spec), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    provenance = json.loads((tmp_path / "out" / "taxcut_provenance.json").read_text())
    assert provenance["method"].startswith("ties (Yadav et al. 2023")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_sparse_soup_keeps_the_shared_mask_and_refuses_others(trio, tmp_path):
    from safetensors.torch import save_file

    _, models = trio
    mask_generator = torch.Generator().manual_seed(1)
    masks = {k: torch.rand(v.shape, generator=mask_generator) > 0.5 for k, v in load_weights(models[0]).items()}
    sparse = []
    for index, model in enumerate(models[::2]):
        folder = tmp_path / f"sparse{index}"
        folder.mkdir()
        save_file({k: v * masks[k] for k, v in load_weights(model).items()}, folder / "model.safetensors",
                  metadata={"format": "pt"})
        (folder / "config.json").write_text((model / "config.json").read_text())
        sparse.append(folder)
    out = merged(tmp_path, "sparse_soup", [(m, 1.0) for m in sparse])
    inputs = [numpy_of(m) for m in sparse]
    for name, tensor in out.items():
        np.testing.assert_allclose(tensor.numpy(), (inputs[0][name] + inputs[1][name]) / 2, rtol=0, atol=1e-6)
        assert torch.equal(tensor != 0, masks[name] & (tensor != 0)) and not (tensor[~masks[name]] != 0).any()
    spec = ToolkitSpec(method="sparse_soup", models=[sparse[0], models[1]], out=tmp_path / "bad")
    with pytest.raises(TaxcutError, match="model 2's sparsity mask differs from model 1's at"):
        run_method_merge(spec, progress=False)
    assert not (tmp_path / "bad").exists()


def test_checkpoint_averaging_all_last_and_ema(trio, tmp_path):
    import shutil

    _, models = trio
    run = tmp_path / "run"
    for step, model in zip((100, 20, 3), models):  # sorted by step: 3, 20, 100
        shutil.copytree(model, run / f"checkpoint-{step}")
    by_step = {3: numpy_of(models[2]), 20: numpy_of(models[1]), 100: numpy_of(models[0])}
    for selection, weights in (({}, {3: 1, 20: 1, 100: 1}), ({"last": 2}, {20: 1, 100: 1}),
                               ({"ema": 0.5}, {3: 0.25, 20: 0.25, 100: 0.5})):
        spec = ToolkitSpec(method="checkpoints", checkpoints={"folder": run, **selection},
                           out=tmp_path / f"out-{len(weights)}-{selection.get('ema')}")
        out = load_weights(run_method_merge(spec, progress=False))
        total = sum(weights.values())
        for name, tensor in out.items():
            expected = sum(w * by_step[s][name] for s, w in weights.items()) / total
            np.testing.assert_allclose(tensor.numpy(), expected, rtol=0, atol=1e-6)


def test_export_mergekit_per_layer_and_outside(llama_pair, tmp_path, capsys):
    spec = tmp_path / "hma.yaml"
    spec.write_text(f"sft: {llama_pair[0]}\naligned: {llama_pair[1]}\nalphas: [0.2, 0.5, 0.8]\n")
    assert main(["export-mergekit", str(spec)]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    sft, aligned = config["models"]
    assert config["merge_method"] == "linear" and config["parameters"] == {"normalize": False}
    assert aligned["parameters"]["weight"][-1] == {"value": [0.2, 0.5, 0.5, 0.8]}  # one value per layer
    outside = {e["filter"]: e["value"] for e in aligned["parameters"]["weight"][:-1]}
    assert outside == {"model.embed_tokens": 0.2, "model.norm": 0.5, "lm_head": 0.5}  # not the list's first value
    assert sft["parameters"]["weight"][-1] == {"value": [0.8, 0.5, 0.5, 0.2]}
    toolkit = tmp_path / "ties.yaml"
    toolkit.write_text(yaml.safe_dump({"method": "ties", "base": str(llama_pair[0]), "models": [str(llama_pair[1])],
                                       "parameters": {"density": 0.3, "lambda": 0.9}}))
    assert main(["export-mergekit", str(toolkit)]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["merge_method"] == "ties" and config["parameters"] == {"lambda": 0.9}
    assert config["models"][0]["parameters"] == {"weight": 1.0, "density": 0.3}


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
    (tmp_path / "mc.jsonl").write_text("".join(
        json.dumps({"context": f"w{i}", "choices": [f"w{i + 1}", f"w{i - 1}"], "answer": 0}) + "\n"
        for i in range(5, 30)))
    spec = tmp_path / "soup.yaml"
    spec.write_text(yaml.safe_dump({
        "method": "greedy_soup", "models": [str(bad), str(good), str(twin)], "parameters": {"score": "mc"},
        "evaluation": {"tasks": [{"name": "mc", "type": "multiple_choice", "path": "mc.jsonl"}]}}))
    assert main(["merge", str(spec), "--out", str(tmp_path / "soup"), "--no-progress"]) == 0
    provenance = json.loads((tmp_path / "soup" / "taxcut_provenance.json").read_text())
    greedy = provenance["spec"]["parameters"]["greedy"]
    assert greedy["individual"] == {str(bad): 0.0, str(good): 1.0, str(twin): 1.0}
    assert [(Path(f).name, accepted) for f, _, accepted in greedy["trials"]] == [("twin", True), ("bad", False)]
    assert [Path(m["path"]).name for m in provenance["spec"]["models"]] == ["good", "twin"]
    soup, original = load_weights(tmp_path / "soup"), load_weights(good)
    assert all(torch.equal(soup[k], original[k]) for k in original)


def test_adamerging_learns_coefficients_that_lower_entropy_and_merges_with_them(trio, tmp_path):
    from taxcut.io.layers import detect_layers
    from taxcut.tuning.adamerging import fit_adamerging

    base, models = trio
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 3} w{i + 5}"}) + "\n" for i in range(4, 20)))
    learned = fit_adamerging(base, [models[0], models[2]], prompts, granularity="layer", epochs=6,
                             batch_size=16, lr=0.05)
    assert len(learned["coefficients"]) == 2 and len(learned["coefficients"][0]) == learned["layers"] + 1 == 5
    assert learned["entropy"][-1] < learned["entropy"][0]
    assert all(0.0 <= c <= 1.0 for row in learned["coefficients"] for c in row)
    spec = tmp_path / "ada.yaml"
    spec.write_text(yaml.safe_dump({"method": "adamerging", "base": str(base),
                                    "models": [str(models[0]), str(models[2])],
                                    "parameters": {"coefficients": learned["coefficients"], "layers": 4}}))
    assert main(["merge", str(spec), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    out, b = load_weights(tmp_path / "out"), numpy_of(base)
    inputs = [numpy_of(models[0]), numpy_of(models[2])]
    layout = detect_layers(out)
    assert layout.num_layers == 4
    for name, tensor in out.items():
        group = layout.layer_of.get(name, 4)
        expected = b[name] + sum(np.float32(row[group]) * (x[name] - b[name])
                                 for row, x in zip(learned["coefficients"], inputs))
        np.testing.assert_allclose(tensor.numpy(), expected, rtol=0, atol=1e-6, err_msg=name)
    task_wise = fit_adamerging(base, [models[0]], prompts, granularity="task", epochs=1)
    assert len(task_wise["coefficients"][0]) == 1


def test_per_block_parameters(trio, tmp_path):
    base, models = trio
    out = merged(tmp_path, "task_arithmetic", [(m, 1.0) for m in models], base=base, **{"lambda": [0.2, 0.6]})
    b, inputs = numpy_of(base), [numpy_of(m) for m in models]
    expected_lambda = {"model.layers.0.": 0.2, "model.layers.1.": 0.2, "model.layers.2.": 0.6, "model.layers.3.": 0.6,
                       "model.embed_tokens": 0.2, "model.norm": 0.4, "lm_head": 0.4}
    for name, tensor in out.items():
        lam = next(v for prefix, v in expected_lambda.items() if name.startswith(prefix))
        expected = b[name] + np.float32(lam) * sum(x[name] - b[name] for x in inputs)
        np.testing.assert_allclose(tensor.numpy(), expected, rtol=0, atol=1e-6, err_msg=name)


def test_dare_linear_against_its_definition(trio, tmp_path):
    """Drop each task-vector entry with probability 1 - density, rescale the kept ones by 1/density, add them up;
    the random stream is the one taxcut seeds for the tensor (seed and name)."""
    from taxcut.methods.task_vectors import _seed

    base, models = trio
    out = merged(tmp_path, "dare_linear", [(m, w) for m, w in zip(models, (1.0, 0.5, 2.0))], base=base,
                 density=0.3, seed=11)
    b, inputs = load_weights(base), [load_weights(m) for m in models]
    for name, tensor in out.items():
        torch.manual_seed(_seed({"seed": 11}, name))
        total = torch.zeros_like(b[name])
        for weight, x in zip((1.0, 0.5, 2.0), inputs):
            delta = x[name] - b[name]
            keep = torch.bernoulli(torch.full_like(delta, 0.3))
            total += weight * (delta * keep / 0.3)
        torch.testing.assert_close(tensor, b[name] + total, rtol=0, atol=1e-6)


def test_adamerging_fits_then_merges_from_a_spec(trio, tmp_path):
    base, models = trio
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}"}) + "\n" for i in range(4, 44)))
    spec = tmp_path / "ada.yaml"
    spec.write_text(yaml.safe_dump({"method": "adamerging", "base": str(base), "models": [str(m) for m in models[:2]],
                                    "parameters": {"data": "prompts.jsonl", "batch_size": 8}}))
    assert main(["merge", str(spec), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    provenance = json.loads((tmp_path / "out" / "taxcut_provenance.json").read_text())
    assert len(provenance["spec"]["parameters"]["coefficients"]) == 2 and provenance["spec"]["parameters"]["fit"]


@pytest.mark.parametrize(("parameters", "message"), [
    ({"density": "abc"}, "parameter 'density' must be a number in (0, 1]"),
    ({"density": 0}, "parameter 'density' must be a number in (0, 1]"),
    ({"majority_sign_method": "foo"}, "'majority_sign_method' is 'total' or 'frequency'"),
])
def test_bad_method_parameters(trio, tmp_path, capsys, parameters, message):
    base, models = trio
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"method": "ties", "base": str(base), "models": [str(m) for m in models],
                                    "parameters": parameters}))
    assert main(["merge", str(spec), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_method_specs_refuse_averaging_flags(trio, tmp_path, capsys):
    _, models = trio
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"method": "linear", "models": [str(m) for m in models]}))
    assert main(["merge", str(spec), "--alpha", "0.9", "--out", str(tmp_path / "o")]) == 2
    assert "--alpha apply to averaging an sft/aligned pair" in capsys.readouterr().err


def test_export_mergekit_refuses_what_mergekit_computes_differently(trio, tmp_path, capsys):
    base, models = trio
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"method": "ties", "base": str(base), "models": [{"path": str(models[0]),
                                    "weight": 2.0}, str(models[1])]}))
    assert main(["export-mergekit", str(spec)]) == 2
    assert "weighted ties" in capsys.readouterr().err


def test_plan_of_a_toolkit_spec(trio, tmp_path, capsys):
    base, models = trio
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"method": "ties", "base": str(base), "models": [str(m) for m in models],
                                    "parameters": {"density": [0.2, 0.8], "lambda": 1.0}}))
    assert main(["plan", str(spec)]) == 0
    text = capsys.readouterr().out
    assert "method   ties: Yadav et al. 2023" in text
    assert "density  layers 0-1: 0.2, layers 2-3: 0.8; embeddings 0.2; after the layers 0.5" in text
    assert "one whole tensor of each input at a time" in text
