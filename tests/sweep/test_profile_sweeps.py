"""Depth profiles (LiNeS) as a sweep family: ``candidates: {profiles, profile_grid}``, their kind,
label, ids and marker, the adaptive grid's profile paths, the search's ``space: profile``, and a swept profile
exported bit for bit equal to ``taxcut merge --profile``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from models import load_weights

from taxcut.cli import main
from taxcut.errors import TaxcutError
from taxcut.spec.candidates import CandidateGrid, expand_grid, from_ratios_file, profile_candidate
from taxcut.spec.sweep import SearchSpec, SweepSpec
from taxcut.sweep.adaptive import Family, adaptive_search, lines_at, lines_mean
from taxcut.sweep.noise import NoisyPoint
from taxcut.sweep.report import KIND_STYLES, SweepRow, plot_front
from taxcut.sweep.resident import ResidentModel
from taxcut.sweep.runner import RESULTS_FILE, run_sweep
from taxcut.sweep.search import fits_search, search_candidates
from taxcut.sweep.strategy import SweepStrategy

TESTS = Path(__file__).parent.parent


def write_spec(tmp_path: Path, pair, *, candidates: dict) -> Path:
    """A small sweep of ``pair`` (a reward and one multiple-choice task) with these candidates."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}"}) + "\n" for i in range(4, 20)))
    (data / "mc.jsonl").write_text(
        "".join(
            json.dumps({"context": f"w{i}", "choices": [f"w{i + 1}", f"w{i + 7}"], "answer": 0}) + "\n"
            for i in range(4, 20)
        )
    )
    spec = {
        "sft": str(pair[0]),
        "aligned": str(pair[1]),
        "out": "sweep-out",
        "candidates": candidates,
        "evaluation": {
            "reward": {
                "prompts": "data/prompts.jsonl",
                "max_new_tokens": 2,
                "function": f"{TESTS / 'rewards.py'}:first_word_number",
            },
            "tasks": [{"name": "mc", "type": "multiple_choice", "path": "data/mc.jsonl"}],
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]


def test_profiles_and_grid_expand_to_lines_candidates_with_stable_ids():
    grid = CandidateGrid(
        grid=[0.5], profiles=[[0.2, 0.6], [0.0, 0.4]], profile_grid={"alpha": [0.0, 0.2], "beta": [0.4, 0.8]}
    )
    lines = [c for c in expand_grid(grid) if c.kind == "LiNeS"]
    assert [c.label for c in lines] == [
        "LiNeS a=0.2 b=0.6",
        "LiNeS a=0 b=0.4",
        "LiNeS a=0 b=0.8",
        "LiNeS a=0.2 b=0.4",
        "LiNeS a=0.2 b=0.8",
    ]  # [0, 0.4] given twice: once
    first = lines[0]
    assert first.profile == [0.2, 0.6] and first.mean_alpha == pytest.approx(0.5)
    canonical = json.dumps({"profile": [0.2, 0.6]}, sort_keys=True, separators=(",", ":"))
    assert first.id == hashlib.sha256(canonical.encode()).hexdigest()[:12]  # the same in every sweep
    assert first.id == profile_candidate([0.2, 0.6]).id == expand_grid(grid)[2].id
    assert first.id != profile_candidate([0.6, 0.2]).id
    ruled = expand_grid(CandidateGrid(profiles=[[0.2, 0.6]], rules=[{"match": "lm_head.*", "alpha": 0.0}]))
    assert ruled[-1].label == "LiNeS a=0.2 b=0.6 + lm_head.*=0" and ruled[-1].id != first.id


def test_a_ratios_file_with_a_profile_is_a_lines_candidate(tmp_path):
    path = tmp_path / "lines.yaml"
    path.write_text(yaml.safe_dump({"sft": "a", "aligned": "b", "profile": [0.2, 0.6]}))
    candidate = from_ratios_file(path)
    assert candidate.kind == "LiNeS" and candidate.id == profile_candidate([0.2, 0.6]).id


def test_sweep_spec_round_trips_profiles_and_the_search_space(llama_pair, tmp_path):
    path = write_spec(
        tmp_path,
        llama_pair,
        candidates={"grid": [0.5], "profiles": [[0.2, 0.6]], "profile_grid": {"alpha": [0.1], "beta": [0.3, 0.5]}},
    )
    data = yaml.safe_load(path.read_text())
    data["search"] = {"space": "profile", "budget": 4}
    path.write_text(yaml.safe_dump(data))
    spec = SweepSpec.from_yaml(path)
    again_path = tmp_path / "again.yaml"
    again_path.write_text(spec.to_yaml())
    again = SweepSpec.from_yaml(again_path)
    assert again.candidates.profiles == [[0.2, 0.6]]
    assert again.candidates.profile_grid.alpha == [0.1] and again.candidates.profile_grid.beta == [0.3, 0.5]
    assert again.search.space == "profile" and again.search.budget == 4
    assert [c.id for c in expand_grid(again.candidates)] == [c.id for c in expand_grid(spec.candidates)]


@pytest.mark.parametrize(
    ("candidates", "search", "message"),
    [
        ({"profiles": [[0.2]]}, None, "field 'candidates.profiles' has [0.2]: give each profile as [alpha, beta]"),
        ({"profiles": [[0.2, 0.3, 0.4]]}, None, "field 'candidates.profiles' has [0.2, 0.3, 0.4]"),
        (
            {"profiles": [[float("nan"), 0.3]]},
            None,
            "candidate LiNeS a=nan b=0.3: 'profile' alpha = nan is not a finite",
        ),
        ({"profile_grid": {"alpha": [1.5], "beta": [0.1]}}, None, "'profile' alpha = 1.5 is outside [0, 1]"),
        ({"profile_grid": {"alpha": [], "beta": [0.1]}}, None, "field 'candidates.profile_grid.alpha'"),
        ({"profile_grid": {"alpha": [0.1]}}, None, "field 'candidates.profile_grid.beta' is required"),
        ({}, {"space": "profile", "blocks": 4}, "'blocks' applies to 'space: blocks'"),
        ({}, {"space": "profile", "low": 0.5, "high": 1.5}, "give 0 <= low < high <= 1"),
        ({}, {"space": "profiles"}, "field 'search.space'"),
    ],
)
def test_bad_profile_sweeps_are_one_line_errors(llama_pair, tmp_path, candidates, search, message):
    path = write_spec(tmp_path, llama_pair, candidates={"grid": [0.5], **candidates})
    if search:
        data = yaml.safe_load(path.read_text())
        data["search"] = search
        path.write_text(yaml.safe_dump(data))
    kept = path.read_bytes()
    with pytest.raises(TaxcutError) as caught:
        SweepSpec.from_yaml(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert path.read_bytes() == kept and not (tmp_path / "sweep-out").exists()


def test_a_swept_profile_is_merge_profile_bit_for_bit(llama_pair, tmp_path):
    path = write_spec(tmp_path, llama_pair, candidates={"grid": [0.0], "profiles": [[0.2, 0.6], [0.5, 1.0]]})
    report = run_sweep(SweepSpec.from_yaml(path), progress=False)
    rows = {row.label: row for row in report.rows}
    assert rows["LiNeS a=0.2 b=0.6"].kind == "LiNeS" and rows["LiNeS a=0.2 b=0.6"].mean_alpha == pytest.approx(0.5)
    assert rows["LiNeS a=0.5 b=1"].mean_alpha == pytest.approx(0.875)  # 4 layers: 0.5, 0.83, 1, 1 -- clipped
    lines = {r["label"]: r for r in records(tmp_path / "sweep-out")}
    assert lines["LiNeS a=0.2 b=0.6"]["candidate"] == {"profile": [0.2, 0.6]}
    sft, aligned = llama_pair
    resident = ResidentModel(sft, aligned, device="cpu")
    for profile, label in (("0.2,0.6", "LiNeS a=0.2 b=0.6"), ("0.5,1", "LiNeS a=0.5 b=1")):
        candidate_id = lines[label]["candidate_id"]
        exported, merged = tmp_path / f"export-{candidate_id}", tmp_path / f"merge-{candidate_id}"
        assert main(["export", str(tmp_path / "sweep-out"), "--candidate", candidate_id, "--out", str(exported)]) == 0
        assert (
            main(
                [
                    "merge",
                    "--sft",
                    str(sft),
                    "--aligned",
                    str(aligned),
                    "--profile",
                    profile,
                    "--out",
                    str(merged),
                    "--no-progress",
                ]
            )
            == 0
        )
        by_export, by_merge = load_weights(exported), load_weights(merged)
        assert set(by_export) == set(by_merge)
        assert all(torch.equal(by_export[name], tensor) for name, tensor in by_merge.items())
        # and the weights the sweep evaluated (the resident model set in place) are those too
        candidate = next(c for c in expand_grid(SweepSpec.from_yaml(path).candidates) if c.id == candidate_id)
        resident.apply(candidate)
        live = resident.model.state_dict()
        assert all(torch.equal(live[name], tensor) for name, tensor in by_merge.items())


def test_lines_paths_move_a_profile_along_a():
    assert lines_at([0.2, 0.6], 0.5) == [0.2, 0.6]  # its own mean: the profile itself
    assert lines_mean([0.2, 0.6]) == pytest.approx(0.5) and lines_mean([0.5, 1.0]) == pytest.approx(0.75)
    assert lines_at([0.2, 0.6], 0.0) == [0.0, 0.0] and lines_at([0.2, 0.6], 1.0) == [1.0, 0.0]
    assert lines_at([0.2, 0.6], 0.25) == [0.1, 0.3]  # below its mean: scaled, the shape kept
    assert lines_at([0.2, 0.6], 0.75) == [0.6, 0.3]  # above: each end half its way to 1 (0.2 -> 0.6, 0.8 -> 0.9)
    for a in (0.1, 0.33, 0.62, 0.9):
        alpha, beta = lines_at([0.3, -0.2], a)
        assert alpha + beta / 2 == pytest.approx(a, abs=1e-5) and 0 <= alpha <= 1 and 0 <= alpha + beta <= 1
        assert beta <= 0  # a falling profile keeps falling


def test_the_adaptive_grid_has_a_lines_family_per_profile(llama_pair, tmp_path):
    path = write_spec(
        tmp_path,
        llama_pair,
        candidates={
            "strategy": "adaptive",
            "budget": 8,
            "block_patterns": [[0.5, 0.7, 0.9]],
            "profiles": [[0.2, 0.6]],
            "profile_grid": {"alpha": [0.0], "beta": [0.8]},
        },
    )
    strategy = SweepStrategy(SweepSpec.from_yaml(path), book=None, evaluate=None)
    families, fixed = strategy.families()
    assert [f.name for f in families] == ["MA", "blocks [0.5, 0.7, 0.9]", "LiNeS [0.2, 0.6]", "LiNeS [0, 0.8]"]
    assert [f.start_ratios() for f in families[2:]] == [[0.0, 0.5, 1.0], [0.0, 0.4, 1.0]]
    lines = families[2]
    assert lines.make(0.5).id == profile_candidate([0.2, 0.6]).id and lines.make(0.5).kind == "LiNeS"
    assert lines.make(0.25).profile == [0.1, 0.3]
    assert lines.make(0.0).id == strategy.baseline.id and lines.make(1.0).id == families[0].make(1.0).id
    assert fixed == []  # profiles are families, not fixed points


def test_adaptive_search_bisects_a_lines_path():
    lines = Family("LiNeS [0.2, 0.6]", lambda a: profile_candidate(lines_at([0.2, 0.6], a)), (0.5,))

    def measure(candidates):  # a concave front along the path: reward sqrt(a), tax a^2
        return {c.id: NoisyPoint(c.mean_alpha**0.5, c.mean_alpha**2) for c in candidates}

    outcome = adaptive_search([lines], measure, budget=5)
    assert [c.label for c in outcome.candidates] == [  # the ends, the profile, then midpoints of its path
        "LiNeS a=0 b=0",
        "LiNeS a=0.2 b=0.6",
        "LiNeS a=1 b=0",
        "LiNeS a=0.6 b=0.3",
        "LiNeS a=0.1 b=0.3",
    ]
    assert [c.mean_alpha for c in outcome.candidates] == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.25])


def _record(candidate, reward: float, score: float):
    result = SimpleNamespace(reward=SimpleNamespace(reward=reward), primary={"mc": score}, directions={"mc": True})
    return SimpleNamespace(candidate_id=candidate.id, candidate=candidate, result=result)


def test_search_space_profile_proposes_valid_profiles_and_resumes():
    pytest.importorskip("optuna")
    spec = SearchSpec(space="profile", budget=10, seed=3)
    baseline = _record(profile_candidate([0.0, 0.0]), 0.0, 1.0)
    asked = []

    def evaluate(candidates):
        asked.extend(candidates)
        return [_record(c, c.mean_alpha, 1.0 - c.mean_alpha**2) for c in candidates]

    found = search_candidates(spec, [], baseline, evaluate, batch=3)
    assert len(found) == 10 and len({c.id for c in asked}) == len(asked)
    for candidate in found:
        alpha, beta = candidate.profile
        assert candidate.kind == "search" and candidate.label.startswith("search LiNeS a=")
        assert 0.0 <= alpha <= 1.0 and -1.0 <= beta <= 1.0 and fits_search(candidate, spec)
        assert candidate.alpha is None and candidate.alphas is None
        candidate.merge_spec(Path("sft"), Path("aligned"))  # every proposal is a valid merge
    assert not fits_search(found[0], SearchSpec(budget=10))  # a profile is not a proposal of the block search
    assert not fits_search(found[0].model_copy(update={"kind": "LiNeS"}), spec)
    done = [_record(c, c.mean_alpha, 1.0 - c.mean_alpha**2) for c in found[:4]]
    asked.clear()
    resumed = search_candidates(SearchSpec(space="profile", budget=6, seed=3), done, baseline, evaluate)
    assert [c.id for c in resumed[:4]] == [c.id for c in found[:4]] and len(asked) == 2  # only the rest asked


def test_search_space_profile_in_a_sweep(llama_pair, tmp_path):
    pytest.importorskip("optuna")
    path = write_spec(tmp_path, llama_pair, candidates={"grid": [0.0, 1.0]})
    data = yaml.safe_load(path.read_text())
    data["search"] = {"space": "profile", "budget": 2, "seed": 1}
    path.write_text(yaml.safe_dump(data))
    report = run_sweep(SweepSpec.from_yaml(path), progress=False)
    searched = [r for r in records(tmp_path / "sweep-out") if r["kind"] == "search"]
    assert len(searched) == 2 and all(set(r["candidate"]) == {"profile"} for r in searched)
    assert sum(row.kind == "search" for row in report.rows) == 2
    before = (tmp_path / "sweep-out" / RESULTS_FILE).read_bytes()
    run_sweep(SweepSpec.from_yaml(path), progress=False)  # resumed: nothing evaluated again
    assert (tmp_path / "sweep-out" / RESULTS_FILE).read_bytes() == before


def test_lines_has_its_own_marker_on_the_plot(tmp_path):
    markers = [marker for marker, _ in KIND_STYLES.values()]
    assert (
        KIND_STYLES["LiNeS"][0]
        not in markers[: list(KIND_STYLES).index("LiNeS")] + markers[list(KIND_STYLES).index("LiNeS") + 1 :]
    )
    assert "LiNeS" in KIND_STYLES["LiNeS"][1]
    rows = [
        SweepRow(
            id=str(i), label=label, kind=kind, mean_alpha=a, reward=r, reward_stderr=0.01, tax=t, primary={}, scores={}
        )
        for i, (label, kind, a, r, t) in enumerate(
            [
                ("MA a=0", "MA", 0.0, 0.0, 0.0),
                ("MA a=1", "MA", 1.0, 1.0, 0.5),
                ("LiNeS a=0.2 b=0.6", "LiNeS", 0.5, 0.8, 0.1),
            ]
        )
    ]
    plot_front(rows, tmp_path / "front.png")
    assert (tmp_path / "front.png").stat().st_size > 0


def test_a_sweep_without_candidates_measures_the_recommended_profiles_and_one_with_them_lists_its_own(tmp_path):
    from taxcut.spec.candidates import RECOMMENDED_PROFILES
    from taxcut.spec.sweep import SweepSpec

    evaluation = {
        "reward": {"prompts": "p.jsonl", "function": "m:f"},
        "tasks": [{"name": "t", "type": "multiple_choice", "path": "x.jsonl"}],
    }
    base = {"sft": "sft", "aligned": "aligned", "out": "out", "evaluation": evaluation}
    bare = SweepSpec.model_validate(base)
    assert bare.candidates.profiles == RECOMMENDED_PROFILES
    labels = [c.label for c in expand_grid(bare.candidates)]
    assert "LiNeS a=0.2 b=1" in labels and "MA a=0.5" in labels
    listed = SweepSpec.model_validate({**base, "candidates": {"grid": [0.5]}})
    assert listed.candidates.profiles == []
    # the YAML round trip keeps the difference
    again = SweepSpec.model_validate(bare.model_dump(mode="json", exclude_defaults=True))
    assert again.candidates.profiles == RECOMMENDED_PROFILES
    assert SweepSpec.model_validate(listed.model_dump(mode="json", exclude_defaults=True)).candidates.profiles == []
