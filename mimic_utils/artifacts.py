"""Where the study's files live and how they are written.

Every artifact is a plain file under ``outputs/<profile>/`` (docs/design.md, *Files*). Writes are atomic — the content
goes to a temporary name in the same folder and is renamed into place — so an interrupted run never
leaves a half-written JSON, CSV or figure behind for a later notebook to trust.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

PROFILES = ("smoke", "cpu", "paper")


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


def profile_dir(profile: str, root: Path | None = None) -> Path:
    """``outputs/<profile>/``; refuses unknown profiles so a typo never creates a stray folder."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    return (root or repo_root()) / "outputs" / profile


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
    """Atomically write JSON with sorted keys, so equal content gives byte-identical files."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


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


def write_metrics(profile: str, notebook: str, metrics: dict, root: Path | None = None) -> Path:
    """Write a notebook's ``metrics.json``, the file later notebooks and tests read."""
    return write_json(output_dir(profile, notebook, root) / "metrics.json", metrics)


def read_metrics(profile: str, notebook: str, root: Path | None = None) -> dict:
    """Read an earlier notebook's ``metrics.json``."""
    return read_json(profile_dir(profile, root) / notebook / "metrics.json")
