"""Where the study's files live and how they are written.

Every artifact is a plain file under ``outputs/<profile>/`` (docs/design.md, *Files*). Writes are atomic — the content
goes to a temporary name in the same folder and is renamed into place — so an interrupted run never
leaves a half-written JSON, CSV or figure behind for a later notebook to trust.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

#: What a profile may be called: a folder name under ``params/`` of letters, digits and ``_`` (it also names
#: the lmms-eval tasks notebook 01 writes, ``mimic_<profile>_counting_balanced``).
PROFILE_NAME = re.compile(r"[A-Za-z0-9_]+")


def repo_root(start: Path | None = None) -> Path:
    """The checkout's top folder: the first parent holding ``pyproject.toml`` and ``mimic_utils/``.

    Notebooks run with their own folder (or nbval's) as working directory, so paths are resolved from
    here rather than from the cwd.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "mimic_utils").is_dir():
            return folder
    package_parent = Path(__file__).resolve().parent.parent
    if (package_parent / "pyproject.toml").is_file():
        return package_parent
    raise FileNotFoundError(f"no MIMIC checkout (pyproject.toml + mimic_utils/) above {here}")


def profiles(root: Path | None = None) -> list[str]:
    """The study's profiles: the folders under ``params/`` (each holds one parameter file per notebook)."""
    params = (root or repo_root()) / "params"
    if not params.is_dir():
        return []
    return sorted(p.name for p in params.iterdir() if p.is_dir() and PROFILE_NAME.fullmatch(p.name))


def check_profile(profile: str, root: Path | None = None) -> str:
    """``profile`` if ``params/<profile>/`` exists; otherwise a ``ValueError`` naming the closest folder and
    every profile there is, so a typo never creates a stray ``outputs/`` folder.

    A profile is any folder under ``params/`` (``smoke``, ``cpu``, ``paper`` ship with the study; copy one
    to make your own). A checkout without ``params/`` at all (a test's temporary root) only checks the name.
    """
    if not isinstance(profile, str) or not PROFILE_NAME.fullmatch(profile):
        raise ValueError(f"profile {profile!r}: a profile is a folder under params/ named with letters, "
                         "digits and '_'")
    root = root or repo_root()
    if not (root / "params").is_dir():
        return profile
    known = profiles(root)
    if profile not in known:
        hint = difflib.get_close_matches(profile, known, n=1)
        raise ValueError(f"unknown profile {profile!r}: there is no folder params/{profile}/"
                         + (f"; did you mean {hint[0]!r}?" if hint else "")
                         + f" (profiles: {', '.join(known) or 'none'})")
    return profile


def profile_dir(profile: str, root: Path | None = None) -> Path:
    """``outputs/<profile>/`` of a profile that exists under ``params/`` (see :func:`check_profile`)."""
    root = root or repo_root()
    return root / "outputs" / check_profile(profile, root)


def output_dir(profile: str, notebook: str, root: Path | None = None) -> Path:
    """A notebook's own output folder, created if missing (e.g. ``outputs/cpu/02_zero_shot_diagnosis``)."""
    path = profile_dir(profile, root) / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix last: tools such as papermill check it
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: Path | str, text: str) -> Path:
    """Atomically write UTF-8 text."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: Path | str, data: bytes) -> Path:
    """Atomically write bytes."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: Path | str, obj: Any) -> Path:
    """Atomically write JSON with sorted keys, so equal content gives byte-identical files.

    Absolute paths inside the checkout are written relative to it (:func:`relative_to_root`), so a
    committed manifest or ``metrics.json`` says ``outputs/cpu/models/si``, not where it was cloned.
    """
    obj = relative_to_root(obj, repo_root_or_none(path))
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def repo_root_or_none(near: Path | str | None = None) -> Path | None:
    """The checkout holding ``near`` (or the working directory), or ``None`` outside any checkout."""
    try:
        return repo_root(Path(near).resolve().parent if near is not None else None)
    except FileNotFoundError:
        return None


def relative_to_root(obj: Any, root: Path | str | None = None) -> Any:
    """``obj`` (JSON-like: dicts, lists, strings …) with absolute paths inside the checkout made relative.

    A string that *is* the checkout becomes ``"."``; every ``<checkout>/`` inside a string (a path, or an
    error message quoting one) loses that prefix, e.g. ``/home/me/mimic/outputs/cpu/models/si`` →
    ``outputs/cpu/models/si``. Other strings, numbers and paths outside the checkout are left alone.
    Readers resolve such paths against :func:`repo_root`, never against their working directory.
    """
    if root is None:
        root = repo_root_or_none()
        if root is None:
            return obj
    prefixes = sorted({str(Path(root)), str(Path(root).resolve())}, key=len, reverse=True)
    # the checkout's path where a path starts: not in the middle of a longer one (/x/home/me/mimic/…)
    inside = re.compile(r"(?<![\w./~-])(?:" + "|".join(re.escape(p) for p in prefixes) + r")" + re.escape(os.sep))

    def fix(value: Any) -> Any:
        if isinstance(value, str):
            return "." if value in prefixes else inside.sub("", value)
        if isinstance(value, Path):
            return fix(str(value))
        if isinstance(value, dict):
            return {fix(k) if isinstance(k, str) else k: fix(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [fix(v) for v in value]
        return value

    return fix(obj)


def write_jsonl(path: Path | str, rows: Any) -> Path:
    """Atomically write one JSON object per line (keys sorted, for byte-identical reruns)."""
    lines = [json.dumps(row, sort_keys=True, ensure_ascii=False) for row in rows]
    return write_text(path, "".join(line + "\n" for line in lines))


def read_json(path: Path | str) -> Any:
    """Read JSON, naming the file in the error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (has the notebook that writes it been run?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON at line {err.lineno}: {err.msg}") from err


def read_jsonl(path: Path | str) -> list[dict]:
    """Read a JSONL file; a malformed line is reported with its file and line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: malformed JSON line: {err.msg}") from err
    return rows


def write_metrics(profile: str, notebook: str, metrics: dict, root: Path | None = None) -> None:
    """Write a notebook's ``metrics.json``, the file later notebooks and tests read. Returns nothing: a
    notebook cell that ends with this call shows no path (the file is always ``<output folder>/metrics.json``)."""
    write_json(output_dir(profile, notebook, root) / "metrics.json", metrics)


def read_metrics(profile: str, notebook: str, root: Path | None = None) -> dict:
    """Read an earlier notebook's ``metrics.json``."""
    return read_json(profile_dir(profile, root) / notebook / "metrics.json")


# --- the study's log lines -------------------------------------------------------------------------

#: The file the study's own log lines go to; ``python -m mimic_utils.runner`` sets it for each notebook's kernel
#: (``outputs/<profile>/logs/<notebook>.log``). Unset (JupyterLab, a terminal), they are printed.
LOG_ENV = "MIMIC_LOG_FILE"


def note(message: str) -> None:
    """A line about the machinery rather than the results (predictions of another model discarded, a training
    run resumed): a reader of an executed notebook does not need it, whoever reruns the study might. Appended
    to the file named by :data:`LOG_ENV` with the time of day where it is set (the runner's kernels), printed
    elsewhere, so an interactive user still sees why a run is slow. Read at every call: no state to reset."""
    target = os.environ.get(LOG_ENV)
    if not target:
        print(message, file=sys.stdout, flush=True)
        return
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(f"{time.strftime('%H:%M:%S')} {message}\n")


# --- stored records: image paths relative to the checkout, files checked by hash ----------------------


def recorded_root(root: Path | None) -> str | None:
    """How a manifest records the directory its image paths are relative to: relative to the checkout when
    inside it ("." for the checkout itself), so committed manifests hold no machine's absolute path."""
    if root is None:
        return None
    try:
        return str(Path(root).resolve().relative_to(repo_root().resolve())) or "."
    except ValueError:
        return str(root)


def image_root(root: Path | None, manifest: dict) -> Path | None:
    """Where a manifest's relative image paths start: the caller's ``root``, else the recorded directory
    (resolved against this checkout when it is relative, see :func:`recorded_root`)."""
    if root is not None:
        return Path(root)
    recorded = manifest.get("image_root")
    if recorded is None:
        return None
    return repo_root() / recorded if not Path(recorded).is_absolute() else Path(recorded)


def file_sha256(path: Path) -> str:
    """sha256 of one file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def relative_images(record: dict, root: Path | None) -> dict:
    """The record with image paths made relative to ``root`` (the checkout), so stored files move freely."""
    if root is None:
        return record
    rel = []
    for image in record["images"]:
        path = Path(image)
        rel.append(str(path.relative_to(root)) if path.is_relative_to(root) else image)
    return {**record, "images": rel}


def absolute_images(records: list[dict], root: Path | str | None) -> list[dict]:
    """Resolve stored relative image paths against ``root`` (in place; absolute paths stay as they are)."""
    if root is not None:
        for record in records:
            record["images"] = [str(Path(root) / p) for p in record["images"]]
    return records
