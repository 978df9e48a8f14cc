"""Run the study's notebooks headlessly with papermill, one profile at a time.

    python -m mimic_utils.runner --profile cpu [--only 01,03] [--from 04] [--check]

Every selected notebook's parameter file is validated *before* anything runs: a missing
``params/<profile>/NN_<name>.yaml``, a key the notebook's ``parameters`` cell does not declare (a typo), or
a value of the wrong type, out of range or not among the allowed choices (:mod:`mimic_utils.param_schema`)
stops the run with the file, key, value and what is allowed named. Executed copies go to ``outputs/<profile>/executed/``, and
``outputs/<profile>/timings.csv`` gets one row per notebook. The first failing notebook stops the run with
its name and failing cell.

A profile is any folder under ``params/`` holding one parameter file per notebook (``smoke``, ``cpu`` and
``paper`` ship with the study). The kernels the runner starts run quietly (:func:`kernel_environment`):
no progress bars or library warnings end up in the executed notebooks; ``--verbose`` keeps them.
Executed notebooks record paths relative to the checkout, never where it was cloned, and no execution times
(:func:`strip_volatile`): a rerun that computes the same results leaves the same files, so ``git diff`` after
a rerun shows only what changed. Before a notebook runs, its output folder is emptied (:func:`clean_output_folder`,
keeping only state that checks itself before it is reused), so no file outlives the code that wrote it.
Lines about the machinery (predictions discarded, a resumed training run) go to
``outputs/<profile>/logs/<notebook>.log``, not into the executed notebook (:func:`mimic_utils.artifacts.note`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from mimic_utils.artifacts import (LOG_ENV, atomic_path, check_profile, profile_dir, profiles, relative_to_root,
                                   repo_root, write_text)
from mimic_utils.models.vision_cache import ENV_DIR
from mimic_utils.param_schema import ParameterValueError, check_parameters

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
    try:
        check_profile(profile, root)
    except ValueError as err:
        raise ParameterError(str(err)) from None
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
    try:
        check_parameters(nb.stem, values, _shown(nb.params_file), cell_defaults(nb.path, declared))
    except ParameterValueError as err:
        raise ParameterError(str(err)) from None
    return {**values, "profile": profile}


def cell_defaults(notebook: Path, declared: dict[str, dict] | None = None) -> dict:
    """The values a notebook's ``parameters`` cell assigns (what a key left out of the file keeps), read as
    Python literals; one that is not a literal is left out (the schema then asks the file for it)."""
    import ast

    declared = declared if declared is not None else declared_parameters(notebook)
    values = {}
    for name, info in declared.items():
        try:
            values[name] = ast.literal_eval(info.get("default", ""))
        except (ValueError, SyntaxError):
            continue
    return {k: v for k, v in values.items() if k not in INJECTED}


def _shown(path: Path) -> str:
    """A parameter file as messages name it: relative to the checkout when inside it."""
    try:
        return str(path.resolve().relative_to(repo_root(path.parent).resolve()))
    except ValueError:
        return str(path)


def _closest(key: str, names) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, list(names), n=1)
    return match[0] if match else None


#: Set for the kernels the runner starts, unless ``--verbose`` (a variable already set is kept, except
#: PYTHONSTARTUP). Executed notebooks are read, diffed and committed: a bar leaves one stream output per
#: refresh (hundreds per notebook), and a library's deprecation notice says nothing about the study.
QUIET_ENVIRONMENT = {
    "TQDM_DISABLE": "1",  # tqdm's default `disable` (the study's own bars: kernel_startup.py)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # download / "Loading weights" bars of huggingface_hub, transformers
    "TRANSFORMERS_VERBOSITY": "error",  # transformers' advisory log lines
}
#: IPython runs this file before the first cell of each kernel: no bars, no library deprecation notices
KERNEL_STARTUP = Path(__file__).with_name("kernel_startup.py")


def kernel_environment(profile: str, root: Path | None = None, quiet: bool = True) -> dict[str, str]:
    """The environment variables the notebooks' kernels get from the runner.

    Always ``MIMIC_CACHE_DIR`` (vision features and answers cached under ``outputs/<profile>/cache``); when
    ``quiet``, :data:`QUIET_ENVIRONMENT` and ``PYTHONSTARTUP`` pointing at ``kernel_startup.py``, which
    quiets tqdm, library warnings and noisy loggers. Interactive sessions get none of this, so their
    progress bars still show (widgets in JupyterLab, text in a terminal).
    """
    env = {ENV_DIR: str(profile_dir(profile, root) / "cache")}
    if quiet:
        env.update(QUIET_ENVIRONMENT, PYTHONSTARTUP=str(KERNEL_STARTUP))
    return env


@contextmanager
def environment(values: dict[str, str], force: tuple[str, ...] = ("PYTHONSTARTUP",)) -> Iterator[dict[str, str]]:
    """Set ``values`` in ``os.environ`` (kernels inherit it) for the block, then restore what was there.

    A variable the user already set wins (e.g. ``TRANSFORMERS_VERBOSITY=info`` to debug), except those in
    ``force``. Yields the values in effect.
    """
    saved = {name: os.environ.get(name) for name in values}
    applied = {name: value if name in force or saved[name] is None else saved[name] for name, value in values.items()}
    os.environ.update(applied)
    try:
        yield applied
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


#: Metadata papermill and the kernel record that differ on every run although nothing computed did.
VOLATILE_KEYS = ("start_time", "end_time", "duration")
#: Stable ids for the cells papermill inserts (it gives them a random id each run), by their tag.
INSERTED_CELL_IDS = {"injected-parameters": "injected-parameters", "papermill-error-cell-tag": "papermill-error"}


def strip_volatile(nb: dict) -> dict:
    """``nb`` (an executed notebook as JSON) without what changes on every run: papermill's start and end
    times and durations (notebook and cells), the kernel's per-cell ``execution`` timestamps, and the random
    ids of the cells papermill inserts (replaced by :data:`INSERTED_CELL_IDS`). Outputs are left as they are:
    a printed timing is a result. Returns ``nb``, changed in place."""
    papermill = nb.get("metadata", {}).get("papermill")
    for meta in [papermill] + [cell.get("metadata", {}).get("papermill") for cell in nb.get("cells", [])]:
        for key in VOLATILE_KEYS:
            if meta is not None:
                meta.pop(key, None)
    seen: dict[str, int] = {}
    for cell in nb.get("cells", []):
        cell.get("metadata", {}).pop("execution", None)
        tags = cell.get("metadata", {}).get("tags", [])
        stable = next((INSERTED_CELL_IDS[tag] for tag in tags if tag in INSERTED_CELL_IDS), None)
        if stable is not None and "id" in cell:
            seen[stable] = seen.get(stable, 0) + 1  # papermill inserts two error cells: ids stay unique
            cell["id"] = stable if seen[stable] == 1 else f"{stable}-{seen[stable]}"
    return nb


def tidy_executed(path: Path, final: Path, input_path: Path, root: Path) -> None:
    """Rewrite an executed notebook so a rerun that computes the same leaves the same bytes: files named
    relative to the checkout (papermill's ``input_path``/``output_path`` and every text output, a printed
    path or a ``PosixPath`` result; images are left as they are) and no execution times
    (:func:`strip_volatile`). A file that is not a readable notebook is left alone."""
    try:
        nb = strip_volatile(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return
    meta = nb.get("metadata", {}).get("papermill")
    if meta is not None:
        meta["input_path"], meta["output_path"] = str(input_path), str(final)
    nb["metadata"] = relative_to_root(nb.get("metadata", {}), root)
    for cell in nb.get("cells", []):
        outputs = []
        for output in cell.get("outputs", []):
            data = output.get("data")
            output = relative_to_root({k: v for k, v in output.items() if k != "data"}, root)
            if data is not None:
                output["data"] = {mime: value if mime.startswith("image/") else relative_to_root(value, root)
                                  for mime, value in data.items()}
            outputs.append(output)
        if "outputs" in cell:
            cell["outputs"] = outputs
    path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def execute(nb: Notebook, parameters: dict, out_dir: Path, kernel: str = "python3",
            root: Path | None = None) -> float:
    """Execute one notebook with papermill; the executed copy appears only once it finished.

    On failure the partially executed copy is kept as ``<stem>.FAILED.ipynb`` for inspection and
    :class:`NotebookFailed` names the notebook and the failing cell. Either copy names files relative to
    the checkout and hold no execution times (:func:`tidy_executed`).
    """
    root = root or repo_root()
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
            tidy_executed(tmp, _relative(failed, root), _relative(nb.path, root), root)
            tmp.replace(failed)
            raise NotebookFailed(
                f"{nb.stem} failed in cell {err.cell_index} (execution count {err.exec_count}, "
                f"starting {_first_line(failed, err.exec_count)!r}): {err.ename}: {err.evalue}\n"
                f"  executed copy: {failed}"
            ) from None
        tidy_executed(tmp, _relative(final, root), _relative(nb.path, root), root)
    if failed.exists():
        failed.unlink()
    return time.perf_counter() - started


def relativise_outputs(profile: str, root: Path | None = None) -> list[Path]:
    """Rewrite the JSON files and executed notebooks under ``outputs/<profile>/`` that name the checkout by
    its absolute path, as :func:`tidy_executed` and :func:`mimic_utils.artifacts.write_json` now
    write them (for outputs written before they did); caches are skipped. Returns the files rewritten."""
    from mimic_utils.artifacts import read_json, write_json

    root = (root or repo_root()).resolve()
    out = profile_dir(profile, root)
    marks = {str(root) + os.sep, f'"{root}"'}
    changed = []
    for path in sorted(out.rglob("*.json")) + sorted((out / "executed").glob("*.ipynb")):
        if "cache" in path.relative_to(out).parts or not any(m in path.read_text(encoding="utf-8") for m in marks):
            continue
        if path.suffix == ".ipynb":
            tidy_executed(path, path.relative_to(root), Path("notebooks") / path.name, root)
        else:
            write_json(path, read_json(path))
        changed.append(path)
    return changed


def _relative(path: Path, root: Path) -> Path:
    path = Path(path).resolve()
    return path.relative_to(root.resolve()) if path.is_relative_to(root.resolve()) else path


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


#: Sub-folders of a notebook's output folder that survive :func:`clean_output_folder`, at any depth: state that
#: checks itself before it is reused, so it can never be stale. Training checkpoints are keyed by the run's
#: digest (configuration, starting weights, data: :func:`mimic_utils.finetune.run_digest`); every prediction
#: row carries its model's fingerprint and rows of another model are discarded (:func:`mimic_utils.evaluate.run`);
#: hub images are downloads, named by their source. None of them is committed (.gitignore).
REUSED_FOLDERS = ("checkpoints", "predictions", "hub_images")


def clean_output_folder(folder: Path, keep: tuple[str, ...] = REUSED_FOLDERS) -> list[Path]:
    """Empty a notebook's output folder before it runs, except the sub-folders named in ``keep``: every file
    left afterwards was written by the code that just ran. Returns the files removed.

    Only a notebook's own folder (``outputs/<profile>/NN_<name>/``) is accepted, so the profile's caches
    (``cache/``), the committed organism (``models/``), the executed notebooks and the report are never touched.
    """
    folder = Path(folder)
    if not (folder.name[:2].isdigit() and folder.name[2:3] == "_" and folder.parent.parent.name == "outputs"):
        raise ValueError(f"{folder}: not a notebook's output folder (outputs/<profile>/NN_<name>/); nothing removed")
    removed: list[Path] = []
    if not folder.is_dir():
        return removed

    def empty(directory: Path) -> None:
        for entry in sorted(directory.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                if entry.name in keep:
                    continue
                empty(entry)
                if not any(entry.iterdir()):
                    entry.rmdir()
            else:
                entry.unlink()
                removed.append(entry)

    empty(folder)
    return removed


def log_path(profile: str, stem: str, root: Path | None = None) -> Path:
    """Where the lines about a notebook's last run go: ``outputs/<profile>/logs/<notebook>.log`` (not committed)."""
    return profile_dir(profile, root) / "logs" / f"{stem}.log"


def start_log(path: Path, stem: str, removed: list[Path], root: Path) -> None:
    """Begin a notebook's log for this run (an earlier run's log is replaced): what the clean start removed."""
    lines = [f"[runner] {stem}: started {time.strftime('%Y-%m-%d %H:%M:%S')}",
             f"[runner] {stem}: clean start, {len(removed)} file(s) of an earlier run removed"]
    lines += [f"  {_relative(p, root)}" for p in removed[:200]]
    if len(removed) > 200:
        lines.append(f"  … and {len(removed) - 200} more")
    write_text(path, "\n".join(lines) + "\n")


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
        root: Path | None = None, kernel: str = "python3", quiet: bool = True) -> list[Notebook]:
    """Validate every selected notebook's parameters, then execute them in order (unless ``check``).

    Each notebook starts from an empty output folder (:func:`clean_output_folder`) and its kernel's log lines
    go to :func:`log_path`. The kernels run with :func:`kernel_environment` (``quiet=False``: progress bars
    and warnings kept)."""
    root = root or repo_root()
    chosen = select(discover(profile, root), only, start)
    missing = [nb.params_file.name for nb in chosen if not nb.params_file.is_file()]
    if len(missing) > 1:
        raise ParameterError(f"params/{profile}/ lacks the parameter files {', '.join(missing)} "
                             "(a profile holds one per notebook: copy them from another profile)")
    parameters = {nb.stem: load_parameters(nb, profile) for nb in chosen}
    if check:
        return chosen
    out = profile_dir(profile, root)
    with environment(kernel_environment(profile, root, quiet)):
        for nb in chosen:
            print(f"[runner] {profile}: {nb.stem} …", flush=True)
            log = log_path(profile, nb.stem, root)
            start_log(log, nb.stem, clean_output_folder(out / nb.stem), root)
            try:
                with environment({LOG_ENV: str(log)}, force=(LOG_ENV,)):
                    seconds = execute(nb, parameters[nb.stem], out / "executed", kernel, root)
            except NotebookFailed:
                update_timings(out / "timings.csv", {nb.stem: (0.0, "failed")})
                raise
            update_timings(out / "timings.csv", {nb.stem: (seconds, "ok")})
            print(f"[runner] {profile}: {nb.stem} done in {seconds:.0f} s", flush=True)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimic_utils.runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True, metavar="NAME",
                        help=f"a folder under params/ ({', '.join(profiles()) or 'none yet'})")
    parser.add_argument("--only", help="comma-separated notebook numbers, e.g. 01,03")
    parser.add_argument("--from", dest="start", help="run from this notebook number on, e.g. 04")
    parser.add_argument("--check", action="store_true", help="validate parameter files only; run nothing")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    parser.add_argument("--verbose", action="store_true",
                        help="keep progress bars and library warnings in the executed notebooks")
    parser.add_argument("--relativise", action="store_true",
                        help="run nothing: rewrite the profile's JSON files and executed notebooks written with "
                             "absolute paths of the checkout (by an older runner) to name them relative to it")
    args = parser.parse_args(argv)
    if args.relativise:
        try:
            changed = relativise_outputs(args.profile)
        except ValueError as err:
            print(f"[runner] error: {err}", file=sys.stderr)
            return 2
        print(f"[runner] {len(changed)} file(s) rewritten with paths relative to the checkout")
        for path in changed:
            print(f"  {path.relative_to(repo_root())}")
        return 0
    try:
        chosen = run(args.profile, args.only, args.start, args.check, kernel=args.kernel, quiet=not args.verbose)
    except (ParameterError, NotebookFailed) as err:
        print(f"[runner] error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ParameterError) else 1
    out = profile_dir(args.profile)
    verb = "validated" if args.check else "ran"
    print(f"[runner] {verb} {len(chosen)} notebook(s) under profile {args.profile!r}; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
