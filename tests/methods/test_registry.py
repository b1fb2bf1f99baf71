"""The registry: every method owns its name, its parameters and its paper."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import taxcut
from taxcut import TaxcutError
from taxcut.methods.registry import METHODS, get_method

PACKAGE = Path(taxcut.__file__).parent
# The toolkit spec's `checkpoints:` section picks the input folders of any method; it is not the method's name.
INPUT_SELECTION_FIELD = ("spec/toolkit.py", "checkpoints")


def test_every_method_declares_its_paper_and_parameters():
    get_method("linear")  # loads the catalog
    assert len(METHODS) >= 13
    for name, method in METHODS.items():
        assert method.name == name and method.paper
        assert type(method).__doc__ or type(method).merge.__doc__ or __import__(type(method).__module__).__doc__
        if not any(field.is_required() for field in method.Parameters.model_fields.values()):
            method.Parameters()  # every parameter has a default


def test_no_module_names_a_method_but_its_own():
    """No `if spec.method == "..."`, no lookup by a literal name, outside the method's own module."""
    get_method("linear")
    owner = {
        name: Path(type(method).__module__.replace(".", "/") + ".py").relative_to("taxcut").as_posix()
        for name, method in METHODS.items()
    }
    found = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text())
        mergekit_names = {
            id(value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Dict)  # mergekit's names
            for key, value in zip(node.keys, node.values)
            if isinstance(key, ast.Constant) and key.value == "merge_method"
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and id(node) not in mergekit_names
                and node.value in owner
                and owner[node.value] != relative
                and (relative, node.value) != INPUT_SELECTION_FIELD
            ):
                found.append(f"{relative}:{node.lineno} names {node.value!r}")
    assert not found, found


def test_unknown_method_gets_close_matches():
    with pytest.raises(TaxcutError, match="unknown merge method 'tie'; did you mean ties"):
        get_method("tie")
