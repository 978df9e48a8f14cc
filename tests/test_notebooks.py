"""The notebooks, their parameter files and the nbval references stay consistent with each other.

`make nbval` re-executes the reference notebooks in tests/notebooks/ and compares the cells marked
``# NBVAL_CHECK_OUTPUT``; these tests make sure that comparison means something.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from mimic_utils.artifacts import repo_root

ROOT = repo_root(Path(__file__).parent)
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REFERENCES = ROOT / "tests" / "notebooks"


def code_cells(nb) -> list[str]:
    """Code cells as the author wrote them (papermill's injected-parameters cell left out)."""
    return [c.source for c in nb.cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


def test_the_six_study_notebooks_exist():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_reference_is_the_current_notebook_executed_under_smoke(notebook):
    reference = REFERENCES / notebook.name
    assert reference.is_file(), f"{reference} missing: run `make references`"
    ref = nbformat.read(reference, as_version=4)
    assert code_cells(ref) == code_cells(nbformat.read(notebook, as_version=4)), (
        f"{reference.name} is stale: the notebook changed since `make references`")
    injected = [c for c in ref.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and 'profile = "smoke"' in injected[0].source


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_reference_has_a_checked_cell_with_stored_output(notebook):
    ref = nbformat.read(REFERENCES / notebook.name, as_version=4)
    checked = [c for c in ref.cells if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source]
    assert checked, f"{notebook.name}: no cell marked NBVAL_CHECK_OUTPUT, so nbval would check nothing"
    assert all(c.outputs for c in checked), f"{notebook.name}: a checked cell has no stored output"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_defaults_are_the_cpu_profile(notebook):
    """Opened in JupyterLab without papermill, a notebook reproduces the committed cpu run."""
    declared = papermill.inspect_notebook(str(notebook))
    values = yaml.safe_load((ROOT / "params" / "cpu" / f"{notebook.stem}.yaml").read_text()) or {}
    for key, value in values.items():
        assert ast.literal_eval(declared[key]["default"]) == value, f"{notebook.stem}: default of {key!r}"
    assert ast.literal_eval(declared["profile"]["default"]) == "cpu"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_assignment_of_the_parameters_cell(notebook):
    """papermill skips lines it cannot parse (e.g. some comments); the runner would then refuse the key."""
    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assigned = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert assigned == set(papermill.inspect_notebook(str(notebook)))
