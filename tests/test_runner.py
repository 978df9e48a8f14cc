"""The papermill runner: parameter files are validated before anything runs, failures name the cell."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nbformat
import pytest

from mimic_utils import runner
from mimic_utils.artifacts import repo_root

ROOT = repo_root(Path(__file__).parent)


def make_study(tmp_path: Path, cells: list[str], params: str | None = "answer: 2\n") -> Path:
    """A one-notebook study in a temporary checkout, so runs never touch the real outputs/."""
    (tmp_path / "mimic_utils").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('profile = "cpu"\nanswer = 1')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters] + [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "notebooks" / "01_demo.ipynb")
    (tmp_path / "params" / "smoke").mkdir(parents=True)
    if params is not None:
        (tmp_path / "params" / "smoke" / "01_demo.yaml").write_text(params)
    return tmp_path


def test_every_profile_has_a_valid_parameter_file_for_every_notebook():
    for profile in ("smoke", "cpu", "paper"):
        chosen = runner.run(profile, check=True, root=ROOT)
        assert [nb.number for nb in chosen] == ["01", "02", "03", "04", "05", "06"]


def test_a_typo_in_a_parameter_key_is_refused_naming_file_and_key(tmp_path):
    root = make_study(tmp_path, ["print(answer)"], params="answr: 2\n")
    with pytest.raises(runner.ParameterError, match=r"01_demo.yaml: unknown key 'answr'.*did you mean 'answer'"):
        runner.run("smoke", root=root)
    assert not (root / "outputs").exists()  # refused before anything ran


def test_a_missing_parameter_file_is_refused(tmp_path):
    root = make_study(tmp_path, ["print(answer)"], params=None)
    with pytest.raises(runner.ParameterError, match=r"params/smoke/01_demo.yaml: missing parameter file"):
        runner.run("smoke", root=root)


def test_profile_may_not_be_set_in_a_parameter_file(tmp_path):
    root = make_study(tmp_path, ["print(answer)"], params="profile: cpu\n")
    with pytest.raises(runner.ParameterError, match="set by the runner"):
        runner.run("smoke", root=root)


def test_selection_flags_reject_unknown_notebooks():
    notebooks = runner.discover("smoke", ROOT)
    assert [nb.number for nb in runner.select(notebooks, only="1,3")] == ["01", "03"]
    assert [nb.number for nb in runner.select(notebooks, start="04")] == ["04", "05", "06"]
    with pytest.raises(runner.ParameterError, match="--only"):
        runner.select(notebooks, only="09")


@pytest.mark.slow
def test_run_executes_injects_parameters_and_records_timings(tmp_path):
    root = make_study(tmp_path, ["assert profile == 'smoke' and answer == 2"])
    runner.run("smoke", root=root)
    assert (root / "outputs" / "smoke" / "executed" / "01_demo.ipynb").is_file()
    rows = list(csv.DictReader((root / "outputs" / "smoke" / "timings.csv").open()))
    assert rows[0]["notebook"] == "01_demo" and rows[0]["status"] == "ok"


@pytest.mark.slow
def test_a_failing_cell_stops_the_run_naming_notebook_and_cell(tmp_path):
    root = make_study(tmp_path, ["x = 1", "raise RuntimeError('boom')"])
    with pytest.raises(runner.NotebookFailed, match=r"01_demo failed in cell \d+ .*starting \"raise RuntimeError\('boom'\)\"\): RuntimeError: boom"):
        runner.run("smoke", root=root)
    executed = root / "outputs" / "smoke" / "executed"
    assert (executed / "01_demo.FAILED.ipynb").is_file() and not (executed / "01_demo.ipynb").exists()
    assert "failed" in (root / "outputs" / "smoke" / "timings.csv").read_text()


def test_paper_parameter_files_never_point_at_the_cpu_organism():
    for path in sorted((ROOT / "params" / "paper").glob("*.yaml")):
        assert "outputs/cpu" not in path.read_text() and "outputs/smoke" not in path.read_text(), path.name
