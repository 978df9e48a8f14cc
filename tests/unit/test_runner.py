"""The papermill runner: parameter files are validated before anything runs, failures name the cell."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest

from mimic_utils import runner
from mimic_utils.artifacts import profile_dir, profiles, repo_root

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
    assert {"smoke", "cpu", "paper"} <= set(profiles(ROOT))
    for profile in profiles(ROOT):
        chosen = runner.run(profile, check=True, root=ROOT)
        assert [nb.number for nb in chosen] == ["01", "02", "03", "04", "05", "06"]


def test_any_folder_under_params_is_a_profile(tmp_path):
    root = make_study(tmp_path, ["print(answer)"])
    shutil.copytree(root / "params" / "smoke", root / "params" / "my_gpu")
    (root / "params" / "not-a-profile").mkdir()  # '-' cannot be part of lmms-eval task names
    assert profiles(root) == ["my_gpu", "smoke"]
    assert [nb.number for nb in runner.run("my_gpu", check=True, root=root)] == ["01"]
    assert runner.main(["--profile", "my_gpu", "--check"]) == 2  # the real checkout has no such folder


def test_a_misspelled_profile_is_named_with_the_closest_folder_and_all_profiles(capsys):
    with pytest.raises(runner.ParameterError, match=r"unknown profile 'smok'.*did you mean 'smoke'\?.*cpu, paper, smoke"):
        runner.run("smok", check=True, root=ROOT)
    assert runner.main(["--profile", "papr", "--check"]) == 2
    assert "did you mean 'paper'?" in capsys.readouterr().err
    with pytest.raises(ValueError, match="letters, digits and '_'"):
        profile_dir("../cpu", ROOT)  # never a path outside outputs/


def test_a_profile_folder_missing_parameter_files_names_them(tmp_path):
    root = make_study(tmp_path, ["print(answer)"])
    nb = nbformat.read(root / "notebooks" / "01_demo.ipynb", as_version=4)
    nbformat.write(nb, root / "notebooks" / "02_other.ipynb")
    (root / "params" / "empty").mkdir()
    with pytest.raises(runner.ParameterError, match=r"params/empty/ lacks the parameter files 01_demo.yaml, 02_other.yaml"):
        runner.run("empty", check=True, root=root)


def test_kernels_run_quietly_unless_verbose(tmp_path, monkeypatch):
    root = make_study(tmp_path, [])
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")  # set by the user: kept
    monkeypatch.setenv("PYTHONSTARTUP", "/home/me/.pythonrc")  # replaced for the block, then restored
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    env = runner.kernel_environment("smoke", root)
    assert env["TQDM_DISABLE"] == "1" and env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert Path(env["PYTHONSTARTUP"]).is_file() and env["MIMIC_CACHE_DIR"].endswith("outputs/smoke/cache")
    with runner.environment(env) as applied:
        assert applied["TRANSFORMERS_VERBOSITY"] == "info" and os.environ["PYTHONSTARTUP"] == env["PYTHONSTARTUP"]
        assert os.environ["TQDM_DISABLE"] == "1"
    assert os.environ["PYTHONSTARTUP"] == "/home/me/.pythonrc" and "TQDM_DISABLE" not in os.environ
    assert set(runner.kernel_environment("smoke", root, quiet=False)) == {"MIMIC_CACHE_DIR"}


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


NOISY_CELLS = [
    # the study's bars ask for disable=False; transformers-style library notices; an IProgress-less tqdm.auto
    "from tqdm.auto import tqdm\nfor _ in tqdm(range(50), disable=False, mininterval=0): pass",
    "import warnings, types\nlib = types.ModuleType('somelib')\n"
    "exec(\"import warnings\\ndef old(): warnings.warn('is deprecated', FutureWarning)\", lib.__dict__)\n"
    "lib.__dict__['__name__'] = 'somelib'\nlib.old()",
    "import logging\nlogging.getLogger('bitsandbytes.backends').warning('Failed to load CPU gemm_4bit_forward')",
    "from pathlib import Path\nfrom mimic_utils.artifacts import repo_root\nprint(repo_root() / 'outputs' / 'x.json')\n"
    "repo_root() / 'outputs'",
]


@pytest.mark.slow
def test_executed_notebooks_hold_no_progress_bars_warnings_or_checkout_paths(tmp_path):
    root = make_study(tmp_path, NOISY_CELLS + ["import warnings\nwarnings.warn('the study says so')"])
    runner.run("smoke", root=root)
    executed = root / "outputs" / "smoke" / "executed" / "01_demo.ipynb"
    nb = nbformat.read(executed, as_version=4)
    streams = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "stream"]
    text = "".join(o.text for o in streams)
    assert "%|" not in text and "FutureWarning" not in text and "gemm_4bit" not in text, text
    assert "UserWarning: the study says so" in text  # the study's own warnings still show
    assert str(root) not in executed.read_text() and str(tmp_path) not in executed.read_text()
    result = next(o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "execute_result")
    assert "outputs/x.json" in text and result.data["text/plain"] == "PosixPath('outputs')"
    meta = json.loads(executed.read_text())["metadata"]["papermill"]
    assert meta["input_path"] == "notebooks/01_demo.ipynb"
    assert meta["output_path"] == "outputs/smoke/executed/01_demo.ipynb"


@pytest.mark.slow
def test_verbose_keeps_the_progress_bars(tmp_path):
    root = make_study(tmp_path, NOISY_CELLS[:1])
    runner.run("smoke", root=root, quiet=False)
    nb = nbformat.read(root / "outputs" / "smoke" / "executed" / "01_demo.ipynb", as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    text_bar = "%|" in "".join(o.get("text", "") for o in outputs)
    widget_bar = any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)  # ipywidgets there
    assert text_bar or widget_bar


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


def test_relativise_rewrites_outputs_written_with_absolute_paths(tmp_path):
    root = make_study(tmp_path, [])
    out = root / "outputs" / "smoke"
    (out / "01_demo").mkdir(parents=True)
    (out / "01_demo" / "metrics.json").write_text(json.dumps(
        {"model": str(root / "outputs" / "cpu" / "models" / "si"), "image_root": str(root), "n": 3}))
    (out / "01_demo" / "untouched.json").write_text('{"source": "/data/coco"}')
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=f"report: {out}/REPORT.md\n")])])
    nb.metadata["papermill"] = {"input_path": str(root / "notebooks" / "01_demo.ipynb"), "output_path": "/tmp/x"}
    (out / "executed").mkdir()
    nbformat.write(nb, out / "executed" / "01_demo.ipynb")
    changed = runner.relativise_outputs("smoke", root)
    assert sorted(p.name for p in changed) == ["01_demo.ipynb", "metrics.json"]
    metrics = json.loads((out / "01_demo" / "metrics.json").read_text())
    assert metrics == {"model": "outputs/cpu/models/si", "image_root": ".", "n": 3}
    executed = nbformat.read(out / "executed" / "01_demo.ipynb", as_version=4)
    assert executed.cells[0].outputs[0].text == "report: outputs/smoke/REPORT.md\n"
    assert executed.metadata["papermill"]["input_path"] == "notebooks/01_demo.ipynb"
    assert runner.relativise_outputs("smoke", root) == []  # nothing left to rewrite


def test_make_nbval_starts_kernels_as_quiet_as_the_runner():
    makefile = (ROOT / "Makefile").read_text()
    block = makefile.split("QUIET_KERNELS :=", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    settings = dict(item.split("=", 1) for item in block.split())
    assert settings == {**runner.QUIET_ENVIRONMENT, "PYTHONSTARTUP": "$(CURDIR)/mimic_utils/kernel_startup.py",
                        runner.LOG_ENV: "$(CURDIR)/outputs/smoke/logs/nbval.log"}
    assert runner.KERNEL_STARTUP == ROOT / "mimic_utils" / "kernel_startup.py"



def test_clean_output_folder_keeps_only_self_checking_state(tmp_path):
    folder = tmp_path / "outputs" / "cpu" / "04_demo"
    stale = [folder / "answer_shares.png", folder / "model" / "model.safetensors", folder / "old" / "deep" / "x.csv"]
    kept = [folder / "model" / "checkpoints" / "abc" / "finetune.pt", folder / "predictions" / "base.jsonl",
            folder / "hub_images" / "a.png"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    removed = runner.clean_output_folder(folder)
    assert sorted(removed) == sorted(stale)
    assert all(p.is_file() for p in kept) and not any(p.exists() for p in stale)
    assert not (folder / "old").exists()  # emptied folders go too
    assert runner.clean_output_folder(tmp_path / "outputs" / "cpu" / "09_none") == []  # not there yet: nothing to do
    for elsewhere in ("cache", "models", "executed"):  # the caches, the committed organism, executed notebooks
        with pytest.raises(ValueError, match="not a notebook's output folder"):
            runner.clean_output_folder(tmp_path / "outputs" / "cpu" / elsewhere)
    with pytest.raises(ValueError, match="not a notebook's output folder"):
        runner.clean_output_folder(tmp_path / "01_demo")


def test_strip_volatile_drops_times_and_gives_inserted_cells_stable_ids():
    timing = {"start_time": "2026-11-30T20:58:13", "end_time": "2026-11-30T20:58:24", "duration": 11.8}
    nb = {"metadata": {"papermill": {**timing, "parameters": {"n": 1}, "version": "2.7.0"}},
          "cells": [{"id": "0bf46fc0", "cell_type": "code", "outputs": [{"output_type": "stream", "text": "0.1 s\n"}],
                     "metadata": {"tags": ["injected-parameters"], "execution": {"iopub.status.idle": "2026-11-30"},
                                  "papermill": {**timing, "status": "completed", "exception": False}}},
                    {"id": "03-01", "cell_type": "code", "metadata": {"tags": []}, "outputs": []}]}
    stripped = runner.strip_volatile(nb)
    assert stripped["metadata"]["papermill"] == {"parameters": {"n": 1}, "version": "2.7.0"}
    first, second = stripped["cells"]
    assert first["id"] == "injected-parameters" and second["id"] == "03-01"
    assert first["metadata"] == {"tags": ["injected-parameters"], "papermill": {"status": "completed", "exception": False}}
    assert first["outputs"] == [{"output_type": "stream", "text": "0.1 s\n"}]  # a printed timing is a result


@pytest.mark.slow
def test_a_rerun_leaves_identical_notebooks_no_stale_files_and_log_lines_in_the_log(tmp_path):
    """Two runs of the same notebook: byte-identical executed copies; a file the notebook no longer writes is gone
    after the second; the study's log lines (artifacts.note) are in the notebook's log, not in its outputs."""
    root = make_study(tmp_path, [
        "from mimic_utils.artifacts import note, output_dir\nout = output_dir(profile, '01_demo')",
        "note('[evaluate] x.jsonl: 3 of 3 rows come from another model; starting over')\nprint('score 0.5')",
        "(out / 'table.csv').write_text('a\\n1\\n')",
    ])
    out = root / "outputs" / "smoke"
    runner.run("smoke", root=root)
    executed = out / "executed" / "01_demo.ipynb"
    first = executed.read_bytes()
    (out / "01_demo" / "from_older_code.png").write_text("stale")
    (out / "01_demo" / "predictions").mkdir()
    (out / "01_demo" / "predictions" / "base.jsonl").write_text("{}\n")
    runner.run("smoke", root=root)
    assert executed.read_bytes() == first
    assert sorted(p.name for p in (out / "01_demo").rglob("*") if p.is_file()) == ["base.jsonl", "table.csv"]
    nb = nbformat.read(executed, as_version=4)
    shown = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "score 0.5" in shown and "starting over" not in shown
    assert "injected-parameters" in [c.get("id") for c in nb.cells]
    assert "start_time" not in executed.read_text() and "iopub" not in executed.read_text()
    log = (out / "logs" / "01_demo.log").read_text()
    assert "starting over" in log and "from_older_code.png" in log and log.count("started") == 1
