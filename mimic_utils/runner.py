"""Run the study's notebooks headlessly with papermill, one profile at a time.

    python -m mimic_utils.runner --profile cpu [--only 01,03] [--from 04] [--check]

Every selected notebook's parameter file is validated *before* anything runs: a missing
``params/<profile>/NN_<name>.yaml`` or a key the notebook's ``parameters`` cell does not declare (a typo)
stops the run with the file and key named. Executed copies go to ``outputs/<profile>/executed/``, and
``outputs/<profile>/timings.csv`` gets one row per notebook. The first failing notebook stops the run with
its name and failing cell.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from mimic_utils.artifacts import PROFILES, atomic_path, profile_dir, repo_root, write_text
from mimic_utils.vision_cache import ENV_DIR

#: Parameters the runner injects itself; a parameter file may not set them.
INJECTED = ("profile",)


class ParameterError(ValueError):
    """A parameter file is missing, malformed, or names a key the notebook does not declare."""


class NotebookFailed(RuntimeError):
    """A notebook raised while executing; the message names the notebook and the cell."""


@dataclass(frozen=True)
class Notebook:
    """One study notebook and the parameter file it runs with under a profile."""

    stem: str  # e.g. "02_zero_shot_diagnosis"
    path: Path
    params_file: Path

    @property
    def number(self) -> str:
        return self.stem.split("_", 1)[0]


def discover(profile: str, root: Path | None = None) -> list[Notebook]:
    """The study's notebooks in order, each paired with its parameter file under ``params/<profile>/``."""
    root = root or repo_root()
    if profile not in PROFILES:
        raise ParameterError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    paths = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    return [Notebook(p.stem, p, root / "params" / profile / f"{p.stem}.yaml") for p in paths]


def select(notebooks: list[Notebook], only: str | None = None, start: str | None = None) -> list[Notebook]:
    """Filter by ``--only 01,03`` and ``--from 04``; unknown numbers are an error, not a silent no-op."""
    known = {nb.number for nb in notebooks}
    chosen = notebooks
    if only:
        wanted = [n.strip().zfill(2) for n in only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise ParameterError(f"--only names notebooks {unknown} that do not exist; known: {sorted(known)}")
        chosen = [nb for nb in chosen if nb.number in wanted]
    if start:
        start = start.strip().zfill(2)
        if start not in known:
            raise ParameterError(f"--from {start}: no such notebook; known: {sorted(known)}")
        chosen = [nb for nb in chosen if nb.number >= start]
    return chosen


def declared_parameters(notebook: Path) -> dict[str, dict]:
    """The names (and inferred types/defaults) declared in a notebook's ``parameters`` cell."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    if not declared:
        raise ParameterError(f"{notebook}: has no cell tagged 'parameters'")
    return declared


def load_parameters(nb: Notebook, profile: str) -> dict:
    """Read and validate one parameter file against the notebook's ``parameters`` cell."""
    if not nb.params_file.is_file():
        raise ParameterError(f"{nb.params_file}: missing parameter file for notebook {nb.stem} (profile {profile})")
    try:
        values = yaml.safe_load(nb.params_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ParameterError(f"{nb.params_file}: malformed YAML: {err}") from err
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ParameterError(f"{nb.params_file}: expected a mapping of parameter names to values")
    declared = declared_parameters(nb.path)
    for key in values:
        if key in INJECTED:
            raise ParameterError(f"{nb.params_file}: key {key!r} is set by the runner from the profile folder")
        if key not in declared:
            hint = _closest(key, declared)
            raise ParameterError(
                f"{nb.params_file}: unknown key {key!r} (not in the parameters cell of {nb.path.name})"
                + (f"; did you mean {hint!r}?" if hint else "")
            )
    return {**values, "profile": profile}


def _closest(key: str, names) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, list(names), n=1)
    return match[0] if match else None


def execute(nb: Notebook, parameters: dict, out_dir: Path, kernel: str = "python3") -> float:
    """Execute one notebook with papermill; the executed copy appears only once it finished.

    On failure the partially executed copy is kept as ``<stem>.FAILED.ipynb`` for inspection and
    :class:`NotebookFailed` names the notebook and the failing cell.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{nb.stem}.ipynb"
    failed = out_dir / f"{nb.stem}.FAILED.ipynb"
    started = time.perf_counter()
    with atomic_path(final) as tmp:
        try:
            papermill.execute_notebook(
                str(nb.path), str(tmp), parameters=parameters, cwd=str(nb.path.parent),
                kernel_name=kernel, progress_bar=False, log_output=False,
            )
        except PapermillExecutionError as err:
            tmp.replace(failed)
            raise NotebookFailed(
                f"{nb.stem} failed in cell {err.cell_index} (execution count {err.exec_count}, "
                f"starting {_first_line(failed, err.exec_count)!r}): {err.ename}: {err.evalue}\n"
                f"  executed copy: {failed}"
            ) from None
    if failed.exists():
        failed.unlink()
    return time.perf_counter() - started


def _first_line(executed: Path, exec_count: int) -> str:
    """The first non-comment line of the cell that ran as ``exec_count``, to point the reader at it.

    Looked up by execution count: papermill inserts an error banner cell, which shifts cell indices.
    """
    import nbformat

    try:
        cells = nbformat.read(executed, as_version=4).cells
    except (OSError, ValueError):
        return "?"
    matches = [c.source for c in cells if c.cell_type == "code" and c.get("execution_count") == exec_count]
    if not matches:
        return "?"
    source = matches[0]
    lines = [line for line in source.splitlines() if line.strip() and not line.startswith("#")]
    return lines[0][:80] if lines else ""


def update_timings(path: Path, rows: dict[str, tuple[float, str]]) -> None:
    """Merge ``{notebook: (seconds, status)}`` into ``timings.csv``, keeping rows of notebooks not rerun."""
    current: dict[str, tuple[str, str]] = {}
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                current[row["notebook"]] = (row["seconds"], row["status"])
    for name, (seconds, status) in rows.items():
        current[name] = (f"{seconds:.1f}", status)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["notebook", "seconds", "status"])
    for name in sorted(current):
        writer.writerow([name, *current[name]])
    write_text(path, buffer.getvalue())


def run(profile: str, only: str | None = None, start: str | None = None, check: bool = False,
        root: Path | None = None, kernel: str = "python3") -> list[Notebook]:
    """Validate every selected notebook's parameters, then execute them in order (unless ``check``)."""
    root = root or repo_root()
    chosen = select(discover(profile, root), only, start)
    parameters = {nb.stem: load_parameters(nb, profile) for nb in chosen}
    if check:
        return chosen
    out = profile_dir(profile, root)
    # the notebooks' kernels inherit it: vision features and answers are cached under outputs/<profile>/cache
    os.environ.setdefault(ENV_DIR, str(out / "cache"))
    for nb in chosen:
        print(f"[runner] {profile}: {nb.stem} …", flush=True)
        try:
            seconds = execute(nb, parameters[nb.stem], out / "executed", kernel)
        except NotebookFailed:
            update_timings(out / "timings.csv", {nb.stem: (0.0, "failed")})
            raise
        update_timings(out / "timings.csv", {nb.stem: (seconds, "ok")})
        print(f"[runner] {profile}: {nb.stem} done in {seconds:.0f} s", flush=True)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimic_utils.runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True, choices=PROFILES)
    parser.add_argument("--only", help="comma-separated notebook numbers, e.g. 01,03")
    parser.add_argument("--from", dest="start", help="run from this notebook number on, e.g. 04")
    parser.add_argument("--check", action="store_true", help="validate parameter files only; run nothing")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    args = parser.parse_args(argv)
    try:
        chosen = run(args.profile, args.only, args.start, args.check, kernel=args.kernel)
    except (ParameterError, NotebookFailed) as err:
        print(f"[runner] error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ParameterError) else 1
    out = profile_dir(args.profile)
    verb = "validated" if args.check else "ran"
    print(f"[runner] {verb} {len(chosen)} notebook(s) under profile {args.profile!r}; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
