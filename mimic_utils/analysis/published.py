"""Published scores beside ours: the check that our harness reproduces what the papers measured.

``params/paper/published.yaml`` lists the papers' numbers for the real checkpoints, each with its source
and whether it was measured on the data our loaders read. :func:`comparison` puts them beside a results
table (notebook 06's ``results``: benchmark, model, n, score, lo, hi) for the models whose checkpoint has
published numbers, with the difference and our 95% interval, and flags a published number outside that
interval: a gap our sampling of questions cannot explain (another prompt, scorer, preprocessing or
checkpoint conversion would). Under ``cpu`` and ``smoke`` no model is a published checkpoint, and
:func:`sentences` says that the table applies to real checkpoints only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field

from mimic_utils.analysis.cross_benchmark import MIMIC
from mimic_utils.artifacts import repo_root

#: Where the table lives (it names checkpoints, not a profile's settings, so every profile reads this one).
PUBLISHED = Path("params") / "paper" / "published.yaml"

#: The published table's key for MIMIC's row of a results table (labelled ``cross_benchmark.MIMIC``).
MIMIC_KEY = "mimic"

Name = Annotated[str, Field(min_length=1)]


class Strict(BaseModel):
    """Unknown keys refused, values not coerced (as the parameter files are checked)."""

    model_config = ConfigDict(extra="forbid", strict=True)


COLUMNS = ["benchmark", "model", "checkpoint", "published", "ours", "lo", "hi", "n", "diff", "reading", "source",
           "verified", "note"]


class Source(Strict):
    title: Name
    url: Name
    where: Name


class Score(Strict):
    checkpoint: Name
    model: Name
    benchmark: Name
    score: Annotated[float, Field(ge=0.0, le=100.0)] | None
    source: Name
    comparable: bool
    verified: bool
    note: Name


class Published(Strict):
    sources: dict[Name, Source]
    scores: list[Score]


def load(path: Path | str | None = None) -> Published:
    """The published table, validated (a score names a listed source; a comparable one has a number)."""
    path = Path(path) if path is not None else repo_root() / PUBLISHED
    table = Published.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    for entry in table.scores:
        if entry.source not in table.sources:
            raise ValueError(f"{path}: {entry.model} / {entry.benchmark} cites unknown source {entry.source!r}")
        if entry.comparable and entry.score is None:
            raise ValueError(f"{path}: {entry.model} / {entry.benchmark} is comparable but has no score")
    return table


def _benchmark_key(label: str) -> str:
    return MIMIC_KEY if label == MIMIC else label.split()[0].lower()


def comparison(results: pd.DataFrame, checkpoints: Mapping[str, str], published: Published | None = None) -> pd.DataFrame:
    """Measured vs published, one row per published entry of a checkpoint among ``checkpoints`` (model name
    → the hub id it was loaded from, e.g. ``adapter.settings["model"]``).

    ``ours``, ``lo``, ``hi`` are our score and 95% interval in percent; ``diff`` is ours − published.
    ``reading``: *within our interval*, *outside our interval* (a gap sampling cannot explain), *not
    comparable* (the published number comes from other data; the reason given), or *not measured here*.
    """
    published = published or load()
    measured = {(_benchmark_key(str(row["benchmark"])), row["model"]): row for row in results.to_dict(orient="records")}
    lines = []
    for name, checkpoint in checkpoints.items():
        for entry in (e for e in published.scores if e.checkpoint == checkpoint):
            row = measured.get((entry.benchmark, name))
            lines.append(_line(entry, name, row))
    return pd.DataFrame(lines, columns=COLUMNS)


def _line(entry: Score, model: str, row: Mapping | None) -> dict:
    line = {"benchmark": entry.benchmark, "model": model, "checkpoint": entry.checkpoint, "published": entry.score,
            "source": entry.source, "verified": entry.verified, "note": entry.note}
    if not entry.comparable:
        return {**line, "reading": f"not comparable: {entry.note}"}
    if row is None or not row.get("n") or not math.isfinite(float(row.get("score", math.nan))):
        return {**line, "reading": "not measured here"}
    ours, lo, hi = (100.0 * float(row[key]) for key in ("score", "lo", "hi"))
    inside = lo <= entry.score <= hi
    reading = ("within our interval" if inside else
               f"outside our interval: a gap of {ours - entry.score:+.1f} points our sampling cannot explain")
    return {**line, "ours": ours, "lo": lo, "hi": hi, "n": int(row["n"]), "diff": ours - entry.score,
            "reading": reading}


def sentences(table: pd.DataFrame, profile: str, published: Published | None = None) -> list[str]:
    """The comparison in words, one line per row, or why there is none (``cpu``/``smoke``: the organism)."""
    published = published or load()
    if table.empty:
        checkpoints = sorted({e.checkpoint for e in published.scores})
        return [f"Published numbers apply to real checkpoints only ({', '.join(checkpoints)}); none of the models "
                f"compared under profile {profile!r} is one, so there is nothing to set beside them."]
    lines = []
    for row in table.to_dict(orient="records"):
        source = published.sources[row["source"]]
        cited = f"{source.title}, {source.where}" + ("" if row["verified"] else "; not verified against the source itself")
        if isinstance(row.get("ours"), float) and math.isfinite(row["ours"]):
            lines.append(f"{row['benchmark']}, {row['model']}: ours {row['ours']:.1f} [95% CI {row['lo']:.1f}, "
                         f"{row['hi']:.1f}] vs published {row['published']:.1f} ({cited}; {row['note']}): "
                         f"{row['reading']}.")
        else:
            lines.append(f"{row['benchmark']}, {row['model']}: {row['reading']} ({cited}).")
    return lines


__all__ = ["PUBLISHED", "Published", "comparison", "load", "sentences"]
