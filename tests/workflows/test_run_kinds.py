"""Run kinds are registered classes: each answers for its module, data, validation rows and
summary, and no workflow tests ``run.kind == "spatial"`` by hand."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import histoxmodal
from histoxmodal.errors import UnknownNameError
from histoxmodal.workflows.run_kinds import (
    RUN_KINDS,
    CohortRunKind,
    SpatialRunKind,
    run_kind,
    run_kind_names,
)


def test_the_registered_kinds_and_an_unknown_name():
    assert run_kind_names() == ["cohort", "spatial"]
    assert isinstance(run_kind("spatial"), SpatialRunKind) and run_kind("spatial").name == "spatial"
    assert isinstance(run_kind("cohort"), CohortRunKind)
    assert run_kind("spatial").image_to_expression and not run_kind("cohort").image_to_expression
    assert (run_kind("spatial").default_split, run_kind("cohort").default_split) == (
        "random",
        "patient",
    )
    with pytest.raises(UnknownNameError, match=r"unknown run kind 'spatail'.*'spatial'"):
        run_kind("spatail")
    assert "spatial" in RUN_KINDS and "mil" not in RUN_KINDS


def test_validation_rows_per_kind():
    from histoxmodal.data.splits import Fold

    no_val = Fold("f", test=np.array([8, 9]), val=np.array([], int), held_out=["B1"])
    with_val = Fold("g", test=np.array([8, 9]), val=np.array([7]), held_out=["B1"])
    # a spot split without validation rows early-stops on its test rows; a cohort does not
    np.testing.assert_array_equal(run_kind("spatial").validation_rows(no_val), [8, 9])
    assert len(run_kind("cohort").validation_rows(no_val)) == 0
    np.testing.assert_array_equal(run_kind("spatial").validation_rows(with_val), [7])


def test_no_workflow_compares_a_run_kind_by_name():
    """``run.kind == "spatial"`` belongs in the kinds' classes, not in the workflows."""
    root = Path(histoxmodal.__file__).parent
    found = []
    for f in sorted((root / "workflows").glob("*.py")):
        if f.name == "run_kinds.py":
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                names = {s.value for s in sides if isinstance(s, ast.Constant)}
                kinds = [s for s in sides if isinstance(s, ast.Attribute) and s.attr == "kind"]
                if kinds and names & {"spatial", "cohort"}:
                    found.append(f"{f.name}:{node.lineno}")
    assert found == []
