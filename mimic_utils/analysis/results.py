"""Reading an earlier notebook's results, typed: one reader per notebook result a later notebook uses.

Notebooks hand data to each other through ``metrics.json``. A later notebook reads it here rather than with
``.get(key, default)``, so that a key an earlier notebook renamed or never wrote stops the run with the file
and the key named, instead of silently comparing attention on zero questions.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mimic_utils.artifacts import profile_dir, read_json


class ResultsError(KeyError):
    """An earlier notebook's ``metrics.json`` lacks a key a later notebook needs, or holds it with the wrong type."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def metrics_path(profile: str, notebook: str, root: Path | None = None) -> Path:
    return profile_dir(profile, root) / notebook / "metrics.json"


def _types(annotation: Any) -> tuple[type, ...]:
    """The runtime types a field's annotation allows (``int | None`` → (int, NoneType); ``list[str]`` → (list,))."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for arg in typing.get_args(annotation) for t in _types(arg))
    if annotation is None or annotation is type(None):
        return (type(None),)
    return (typing.get_origin(annotation) or annotation,)


def read_fields(cls, profile: str, root: Path | None = None):
    """An instance of the dataclass ``cls`` from notebook ``cls.NOTEBOOK``'s ``metrics.json``: one key per field,
    each required and type-checked; raises :class:`ResultsError` naming the file, the key and what to rerun."""
    path = metrics_path(profile, cls.NOTEBOOK, root)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run notebook {cls.NOTEBOOK} under profile {profile!r} first")
    data = read_json(path)
    hints = typing.get_type_hints(cls)
    values = {}
    for item in fields(cls):
        if item.name not in data:
            raise ResultsError(f"{path}: no key {item.name!r} (notebook {cls.NOTEBOOK} writes it; rerun it)")
        value = data[item.name]
        allowed = _types(hints[item.name])
        if not isinstance(value, allowed) or isinstance(value, bool) and bool not in allowed:
            raise ResultsError(f"{path}: key {item.name!r} holds {value!r}, expected "
                               f"{' or '.join(t.__name__ for t in allowed)}")
        values[item.name] = value
    return cls(**values)


@dataclass(frozen=True)
class AttentionResults:
    """What notebook 05 reads from notebook 03: the layer from which cross-image attention stays low (None
    when no layer qualifies) and the questions whose attention was measured, to measure the same ones."""

    NOTEBOOK = "03_attention_analysis"
    auto_layer: int | None
    sample_ids: list

    def records(self, benchmark: list[dict]) -> list[dict]:
        """The measured questions' benchmark records, in notebook 03's order (ids the benchmark lacks are skipped)."""
        by_id = {r["id"]: r for r in benchmark}
        return [by_id[i] for i in self.sample_ids if i in by_id]

    def __post_init__(self):
        if not self.sample_ids:
            raise ResultsError(f"notebook {self.NOTEBOOK}: 'sample_ids' is empty; attention would be compared on "
                               "no question")


def attention_results(profile: str, root: Path | None = None) -> AttentionResults:
    """Notebook 03's results that notebook 05 builds on (:class:`AttentionResults`)."""
    return read_fields(AttentionResults, profile, root)
