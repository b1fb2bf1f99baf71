"""The fit under ``accelerate launch`` with 2 CPU processes (gloo) learns what one process learns over the same
global batches, and only one process writes the ratios file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5  # on the learned block ratios: float rounding of two partial sums against one


def fit_command(pair, data: Path, out: Path, batch_size: int) -> list[str]:
    return [
        "-m",
        "taxcut.cli",
        "fit",
        "--sft",
        str(pair[0]),
        "--aligned",
        str(pair[1]),
        "--data",
        str(data),
        "--alpha",
        "0.5",
        "--blocks",
        "2",
        "--lr",
        "0.3",
        "--epochs",
        "2",
        "--batch-size",
        str(batch_size),
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def test_two_processes_learn_what_one_learns_over_the_same_global_batches(llama_pair, tmp_path):
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.fail("accelerate's launcher is missing from the environment")
    data = tmp_path / "fit.jsonl"  # responses of different lengths: the processes' batches count different tokens
    data.write_text(
        "".join(
            json.dumps({"prompt": f"w{i} w{i + 1}", "response": " ".join(f"w{j}" for j in range(i + 2, i + 3 + i % 4))})
            + "\n"
            for i in range(4, 16)
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, *fit_command(llama_pair, data, tmp_path / "one.yaml", 4)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    # `--multi_gpu` picks accelerate's multi-process launcher (torchrun); with --device cpu the fit's Accelerator
    # is a CPU one, so the two processes talk over gloo (`--cpu` would start a single process)
    two = subprocess.run(
        [
            launcher,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "0",
            *fit_command(llama_pair, data, tmp_path / "two.yaml", 2),
        ],
        capture_output=True,
        text=True,
        env={**env, "CUDA_VISIBLE_DEVICES": ""},
        timeout=300,
    )
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    assert two.stderr.count("fit: 12 examples") == 2 or two.stdout.count("fit: 12 examples") == 2  # two processes
    assert (two.stdout + two.stderr).count("wrote ") == 1  # only the main process writes
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".one.yaml.taxcut",
        ".two.yaml.taxcut",
        "fit.jsonl",
        "one.yaml",
        "two.yaml",
    ]
    single, double = (
        yaml.safe_load((tmp_path / "one.yaml").read_text()),
        yaml.safe_load((tmp_path / "two.yaml").read_text()),
    )
    assert single["alphas"] != [0.5, 0.5]  # the fit moved
    assert single["alphas"] == pytest.approx(double["alphas"], abs=TOLERANCE)
    assert single["fit"]["steps"] == double["fit"]["steps"] == 6  # 12 examples, 4 a step, 2 epochs
