"""YAML read with limits: size, aliases expanded, nesting; each refusal is one line naming the file and line."""

from __future__ import annotations

import pytest

from taxcut import TaxcutError
from taxcut.io.yaml_file import MAX_BYTES, read_yaml_mapping


def alias_bomb(indent: str = "") -> str:
    """About 400 bytes that expand to 9**10 values: ten levels, each nine aliases of the one below."""
    levels = "abcdefghij"
    lines = [f'{indent}a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{indent}{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]" for prev, cur in zip(levels, levels[1:])]
    return "\n".join(lines) + "\n"


def refused(tmp_path, content: str | bytes) -> str:
    path = tmp_path / "spec.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TaxcutError) as caught:
        read_yaml_mapping(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


@pytest.mark.parametrize("content", [alias_bomb(), "sft: a\naligned: b\nalpha: 0.5\nfit:\n" + alias_bomb("  ")])
def test_alias_bomb(tmp_path, content):
    assert len(content) < 500
    assert "expands to more than 200000 values once its aliases (*name) are expanded" in refused(tmp_path, content)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a: &x [1, *x]\n", "spec.yaml, line 1: alias *x refers to a value that contains it"),
        ("a: " + "[" * 40 + "]" * 40 + "\n", "spec.yaml, line 1: nested deeper than 32 levels"),
        ("a: " + "[" * 200_000 + "]" * 200_000 + "\n", "spec.yaml, line 1: nested deeper than 32 levels"),
        ("a: 1\nb: *nope\n", "spec.yaml: not valid YAML (line 2): found undefined alias 'nope'"),
        ("a: &x 1\nb: &x 2\n", "found duplicate anchor 'x' (second occurrence)"),
        ("a: " + "9" * 5000 + "\n", "a value cannot be read (Exceeds the limit (4300 digits)"),
        ("a: !!python/object/apply:os.system [echo]\n", "not valid YAML (line 1): could not determine a constructor"),
        (b"a: 1\nb: caf\xe9\n", "spec.yaml, line 2: not a text file (YAML must be UTF-8)"),
        ("- 1\n", "a spec must be a YAML mapping of fields, got list"),
    ],
)
def test_refusals_name_the_file_and_line(tmp_path, content, message):
    assert message in refused(tmp_path, content)


def test_size_limit(tmp_path):
    assert f"{MAX_BYTES + 1} bytes; a spec file is at most 1 MB" in refused(tmp_path, "#" * (MAX_BYTES + 1))


def test_ordinary_yaml_and_modest_aliases_still_read(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("alphas: &three [0.3, 0.5, 0.7]\nother: *three\nrules:\n  - {match: 'lm_head.*', alpha: 0.5}\n")
    assert read_yaml_mapping(path) == {
        "alphas": [0.3, 0.5, 0.7],
        "other": [0.3, 0.5, 0.7],
        "rules": [{"match": "lm_head.*", "alpha": 0.5}],
    }
    path.write_text("")
    assert read_yaml_mapping(path) == {}
    with pytest.raises(TaxcutError, match="missing.yaml: spec file not found"):
        read_yaml_mapping(tmp_path / "missing.yaml")
