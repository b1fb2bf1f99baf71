from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from taxcut import MergeSpec, TaxcutError
from taxcut.spec import parse_size, spec_from_dict


def test_yaml_round_trip(tmp_path):
    spec = MergeSpec(
        sft="a",
        aligned="b",
        out="c",
        alphas=[0.2, 0.5, 0.8],
        block_bounds=[(0, 1), (2, 2), (3, 5)],
        rules=[{"match": "lm_head.*", "alpha": 0.4}, {"regex": r"model\.norm\..*", "alpha": 0.1}],
        dtype="bfloat16",
        max_shard_size="2GB",
    )
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    again = MergeSpec.from_yaml(path)
    assert again.alphas == [0.2, 0.5, 0.8]
    assert again.block_bounds == [(0, 1), (2, 2), (3, 5)]
    assert again.rules == spec.rules
    assert again.sft == tmp_path / "a"  # relative paths are relative to the spec file's folder
    assert again.max_shard_bytes == 2 * 10**9
    assert again.mean_alpha == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "give exactly one of 'alpha', 'alphas' (per block) or 'layer_alphas' (per layer); got none"),
        ({"alpha": 0.5, "alphas": [0.5]}, "got 'alpha', 'alphas'"),
        ({"alpha": 1.3}, "'alpha' = 1.3 is outside [0, 1]; set 'extrapolate: true'"),
        ({"alphas": [0.2, -0.1]}, "'alphas[1]' = -0.1 is outside [0, 1]"),
        ({"alpha": 0.5, "rules": [{"match": "x", "alpha": 2}]}, "'rules[0].alpha' = 2.0 is outside [0, 1]"),
        ({"alpha": float("nan")}, "'alpha' = nan is not a finite number"),
        ({"alphas": []}, "'alphas' is empty"),
        ({"alphas": [0.1, 0.2], "block_bounds": [[0, 3]]}, "'block_bounds' has 1 blocks but 'alphas' has 2"),
        (
            {"alphas": [0.1, 0.2], "block_bounds": [[0, 3], [5, 6]]},
            "'block_bounds[1]' = [5, 6]: blocks must be contiguous",
        ),
        ({"alphas": [0.1, 0.2], "block_bounds": [[1, 3], [4, 6]]}, "should start at 0"),
        ({"alpha": 0.5, "block_bounds": [[0, 3]]}, "'block_bounds' goes with 'alphas'"),
        ({"alpha": 0.5, "rules": [{"alpha": 0.1}]}, "a rule needs exactly one of 'match' (a glob) or 'regex'"),
        ({"alpha": 0.5, "rules": [{"regex": "(", "alpha": 0.1}]}, "regex '(' does not compile"),
        ({"alpha": 0.5, "max_shard_size": "lots"}, "field 'max_shard_size' cannot read 'lots' as a size"),
        ({"alpha": 0.5, "aplha": 0.3}, "field 'aplha' is not a known field (check its spelling)"),
        ({"alpha": 0.5, "dtype": "int8"}, "field 'dtype'"),
    ],
)
def test_invalid_fields_are_named(fields, message):
    with pytest.raises(TaxcutError) as caught:
        spec_from_dict({"sft": "a", "aligned": "b", **fields}, source="my.yaml")
    assert str(caught.value).startswith("my.yaml: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_field_is_named():
    with pytest.raises(TaxcutError, match="field 'aligned' is required"):
        spec_from_dict({"sft": "a", "alpha": 0.5})


def test_extrapolation_allowed_when_asked():
    assert MergeSpec(sft="a", aligned="b", alpha=1.5, extrapolate=True).alpha == 1.5


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sft: [unclosed\n")
    with pytest.raises(TaxcutError, match=r"bad.yaml: not valid YAML \(line"):
        MergeSpec.from_yaml(path)
    path.write_text("- a list\n")
    with pytest.raises(TaxcutError, match="a spec must be a YAML mapping"):
        MergeSpec.from_yaml(path)
    with pytest.raises(TaxcutError, match="spec file not found"):
        MergeSpec.from_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30), (1234, 1234), ("1.5KB", 1500), ("10", 10)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_spec_yaml_is_plain_yaml():
    data = yaml.safe_load(MergeSpec(sft=Path("/x/sft"), aligned="/x/dpo", alpha=0.25).to_yaml())
    assert data == {"sft": "/x/sft", "aligned": "/x/dpo", "alpha": 0.25}
