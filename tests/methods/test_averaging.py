"""Averaging methods (linear soups, checkpoint averaging, ExPO, sparse soups, variance correction) against
independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import load_weights, merged, numpy_of, run_method_merge

from taxcut import TaxcutError
from taxcut.spec.toolkit import ToolkitSpec


def test_linear_soup(trio, tmp_path):
    _, models = trio
    weights = [1.0, 2.0, 0.5]
    out = merged(tmp_path, "linear", list(zip(models, weights)))
    inputs = [numpy_of(m) for m in models]
    for name, tensor in out.items():
        expected = sum(w * x[name] for w, x in zip(weights, inputs)) / sum(weights)
        np.testing.assert_allclose(tensor.numpy(), expected, rtol=0, atol=1e-6)


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


def test_sparse_soup_keeps_the_shared_mask_and_refuses_others(trio, tmp_path):
    from safetensors.torch import save_file

    _, models = trio
    mask_generator = torch.Generator().manual_seed(1)
    masks = {k: torch.rand(v.shape, generator=mask_generator) > 0.5 for k, v in load_weights(models[0]).items()}
    sparse = []
    for index, model in enumerate(models[::2]):
        folder = tmp_path / f"sparse{index}"
        folder.mkdir()
        save_file(
            {k: v * masks[k] for k, v in load_weights(model).items()},
            folder / "model.safetensors",
            metadata={"format": "pt"},
        )
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
    for selection, weights in (
        ({}, {3: 1, 20: 1, 100: 1}),
        ({"last": 2}, {20: 1, 100: 1}),
        ({"ema": 0.5}, {3: 0.25, 20: 0.25, 100: 0.5}),
    ):
        spec = ToolkitSpec(
            method="checkpoints",
            checkpoints={"folder": run, **selection},
            out=tmp_path / f"out-{len(weights)}-{selection.get('ema')}",
        )
        out = load_weights(run_method_merge(spec, progress=False))
        total = sum(weights.values())
        for name, tensor in out.items():
            expected = sum(w * by_step[s][name] for s, w in weights.items()) / total
            np.testing.assert_allclose(tensor.numpy(), expected, rtol=0, atol=1e-6)
