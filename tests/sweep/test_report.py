"""The sweep's rows: every candidate kind is drawn, and the tables read the typed rows."""

from __future__ import annotations

import typing
from dataclasses import replace

from taxcut.spec.candidates import CandidateKind
from taxcut.sweep.pareto import select
from taxcut.sweep.report import KIND_STYLES, SweepRow, markdown_table, plot_front, write_csv


def rows() -> list[SweepRow]:
    return [
        SweepRow(
            id="a" * 12,
            label="MA a=0",
            kind="MA",
            mean_alpha=0.0,
            reward=0.0,
            reward_stderr=0.1,
            tax=0.0,
            primary={"mc": 0.8},
            scores={"mc": {"acc": 0.8}},
            pareto=True,
        ),
        SweepRow(
            id="b" * 12,
            label="raft-1",
            kind="model",
            mean_alpha=None,
            reward=1.0,
            reward_stderr=0.1,
            tax=0.3,
            primary={"mc": 0.5},
            scores={"mc": {"acc": 0.5}},
            pareto=True,
        ),
    ]


def test_every_kind_has_a_style():
    assert set(KIND_STYLES) == set(typing.get_args(CandidateKind))


def test_tables_of_typed_rows(tmp_path):
    write_csv(rows(), tmp_path / "c.csv")
    assert (tmp_path / "c.csv").read_text().splitlines() == [
        "id,label,mean_alpha,reward,reward_stderr,tax,tax_stderr,pareto,pareto_within_noise,mc.acc,mc.stderr",
        f"{'a' * 12},MA a=0,0.0,0.0,0.1,0.0,nan,True,False,0.8,",
        f"{'b' * 12},raft-1,,1.0,0.1,0.3,nan,True,False,0.5,",
    ]
    table = markdown_table(rows())
    assert f"| {'b' * 12} | raft-1 | — | 1.0000 ± 0.1000 | 0.3000 | ★ | 0.5000 |" in table  # no error recorded
    noisy = [
        replace(rows()[0], tax_stderr=0.02, primary_stderr={"mc": 0.04}),
        replace(rows()[1], pareto=False, pareto_within_noise=True),
    ]
    table = markdown_table(noisy)
    assert f"| {'a' * 12} | MA a=0 | 0 | 0.0000 ± 0.1000 | 0.0000 ± 0.0200 | ★ | 0.8000 ± 0.0400 |" in table
    assert f"| {'b' * 12} | raft-1 | — | 1.0000 ± 0.1000 | 0.3000 | ☆ | 0.5000 |" in table
    assert table.rstrip().endswith("beyond their error bars)")
    plot_front(noisy, tmp_path / "front.png")  # error bars and the ring of a front within the noise
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"
    assert select(rows(), "tax<=0.5").label == "raft-1"
