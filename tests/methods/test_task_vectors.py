"""Task arithmetic, TIES and DARE against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from models import load_weights, merged, numpy_of

from taxcut.cli import main


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


def test_dare_linear_against_its_definition(trio, tmp_path):
    """Drop each task-vector entry with probability 1 - density, rescale the kept ones by 1/density, add them up;
    the random stream is the one taxcut seeds for the tensor (seed and name)."""
    from taxcut.methods.task_vectors import tensor_seed

    base, models = trio
    out = merged(
        tmp_path, "dare_linear", [(m, w) for m, w in zip(models, (1.0, 0.5, 2.0))], base=base, density=0.3, seed=11
    )
    b, inputs = load_weights(base), [load_weights(m) for m in models]
    for name, tensor in out.items():
        torch.manual_seed(tensor_seed(11, name))
        total = torch.zeros_like(b[name])
        for weight, x in zip((1.0, 0.5, 2.0), inputs):
            delta = x[name] - b[name]
            keep = torch.bernoulli(torch.full_like(delta, 0.3))
            total += weight * (delta * keep / 0.3)
        torch.testing.assert_close(tensor, b[name] + total, rtol=0, atol=1e-6)


def test_per_block_parameters(trio, tmp_path):
    base, models = trio
    out = merged(tmp_path, "task_arithmetic", [(m, 1.0) for m in models], base=base, **{"lambda": [0.2, 0.6]})
    b, inputs = numpy_of(base), [numpy_of(m) for m in models]
    expected_lambda = {
        "model.layers.0.": 0.2,
        "model.layers.1.": 0.2,
        "model.layers.2.": 0.6,
        "model.layers.3.": 0.6,
        "model.embed_tokens": 0.2,
        "model.norm": 0.4,
        "lm_head": 0.4,
    }
    for name, tensor in out.items():
        lam = next(v for prefix, v in expected_lambda.items() if name.startswith(prefix))
        expected = b[name] + np.float32(lam) * sum(x[name] - b[name] for x in inputs)
        np.testing.assert_allclose(tensor.numpy(), expected, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"density": "abc"}, "parameter 'density' must be a number in (0, 1]"),
        ({"density": 0}, "parameter 'density' must be a number in (0, 1]"),
        ({"majority_sign_method": "foo"}, "'majority_sign_method' is 'total' or 'frequency'"),
    ],
)
def test_bad_method_parameters(trio, tmp_path, capsys, parameters, message):
    base, models = trio
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"method": "ties", "base": str(base), "models": [str(m) for m in models], "parameters": parameters}
        )
    )
    assert main(["merge", str(spec), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_dare_ties_against_its_definition(trio, tmp_path):
    """Drop each task-vector entry with probability 1 - density and rescale the kept ones by 1/density (the random
    stream taxcut seeds per tensor); elect each entry's sign from the sum of the rescaled task vectors; average the
    weighted entries that agree with it (dropped entries have no sign and do not count)."""
    from taxcut.methods.task_vectors import tensor_seed

    base, models = trio
    weights, density = (1.0, 0.5, 2.0), 0.4
    out = merged(
        tmp_path, "dare_ties", list(zip(models, weights)), base=base, density=density, seed=5, **{"lambda": 0.8}
    )
    b, inputs = load_weights(base), [load_weights(m) for m in models]
    for name, tensor in out.items():
        torch.manual_seed(tensor_seed(5, name))
        kept = []
        for x in inputs:
            delta = (x[name] - b[name]).double()
            keep = torch.bernoulli(torch.full_like(delta.float(), density)).double()
            kept.append(delta * keep / density)
        stacked = torch.stack(kept).numpy()
        majority = np.where(stacked.sum(axis=0) >= 0, 1.0, -1.0)
        agree = np.sign(stacked) == majority
        weighted = stacked * np.array(weights).reshape(-1, *[1] * (stacked.ndim - 1))
        expected = (weighted * agree).sum(axis=0) / np.maximum(agree.sum(axis=0), 1)
        np.testing.assert_allclose(
            tensor.double().numpy(), b[name].double().numpy() + 0.8 * expected, rtol=0, atol=1e-5, err_msg=name
        )
