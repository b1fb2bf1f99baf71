"""The lab build is never silent: its SFT and RAFT stages report progress on stderr, a line every ~10% of the steps
when stderr is not a terminal (as under pytest), a bar with ETA when it is."""

from __future__ import annotations

import io
import json
import re

from taxcut.lab.build import LabConfig, build_lab
from taxcut.training import StageProgress

LINE = re.compile(r"^lab: (sft step|raft iteration) (\d+)/(\d+) \((\d+)%\), (.*), (\d+) s, about (\d+) s left$")


def test_the_quick_lab_prints_sft_and_raft_progress_lines_on_stderr(tmp_path, capsys):
    lab = build_lab(LabConfig.quick(seed=0), tmp_path / "lab", log=lambda *_: None)
    lines = capsys.readouterr().err.splitlines()
    matched = [LINE.match(line) for line in lines]
    assert all(matched), [line for line, m in zip(lines, matched) if not m]
    sft = [m for m in matched if m.group(1) == "sft step"]
    raft = [m for m in matched if m.group(1) == "raft iteration"]
    # 20 SFT steps: a line every 2 (10%); 2 RAFT iterations: a line each
    assert [(int(m.group(2)), int(m.group(3)), int(m.group(4))) for m in sft] == [
        (s, 20, 5 * s) for s in range(2, 21, 2)
    ]
    assert [(int(m.group(2)), int(m.group(4))) for m in raft] == [(1, 50), (2, 100)]
    assert sft[-1].group(7) == "0" and raft[-1].group(7) == "0"  # nothing left at the end
    manifest = json.loads((lab.folder / "lab.json").read_text())
    assert sft[-1].group(5) == f"loss {manifest['sft_final_loss']:.3f}"
    last = manifest["raft"][-1]
    assert raft[-1].group(5) == f"reward {last['sample_reward']:.3f}, loss {last['final_loss']:.3f}"


def test_progress_can_be_turned_off(tmp_path, capsys):
    build_lab(LabConfig.quick(seed=0), tmp_path / "lab", log=lambda *_: None, progress=False)
    assert capsys.readouterr().err == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_with_eta_and_no_lines():
    stream = Terminal()
    with StageProgress("lab: sft", 40, stream=stream) as bar:
        for step in range(40):
            bar.update(loss=1.0 / (step + 1))
    shown = stream.getvalue()
    assert "lab: sft" in shown and "40/40" in shown and "loss 0.025" in shown
    assert "<" in shown  # tqdm's "elapsed<remaining"
    assert "about" not in shown  # no line-per-10% output on a terminal


def test_lines_come_every_tenth_of_an_uneven_total():
    stream = io.StringIO()
    with StageProgress("lab: sft", 25, stream=stream) as bar:
        for _ in range(25):
            bar.update(loss=0.5)
    steps = [int(re.search(r"step (\d+)/25", line).group(1)) for line in stream.getvalue().splitlines()]
    assert steps == [3, 6, 9, 12, 15, 18, 21, 24, 25]
