"""Notebook 05's tables and claim 8 from the ablation's prediction rows (:mod:`mimic_utils.training.lora_ablation`):
each run's score, each variant's seed-averaged score with the spread of its seeds, the paired per-seed
differences, claim 8's entry (its interval resamples seeds and questions together) and the sentences of the
paired comparisons.

Scores are :func:`mimic_utils.analysis.stats.estimate` (mean over tasks, bootstrap over questions); a
variant's seed-averaged rows hold each question's score averaged over seeds, so its interval covers the
questions for these seeds, not the spread between seeds, which is shown beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from mimic_utils.analysis import diagnosis, stats
from mimic_utils.analysis.sentences import finding

Rows = Sequence[Mapping]


def per_seed_table(run_rows: Mapping[tuple[str, int], Rows], folders: Mapping[tuple[str, int], Path],
                   root: Path) -> pd.DataFrame:
    """One row per trained run: model, seed, its folder (relative to the checkout) and its score."""
    return pd.DataFrame([{"model": label, "seed": seed, "folder": str(Path(folders[(label, seed)]).relative_to(root)),
                          **stats.estimate(rows)} for (label, seed), rows in run_rows.items()])


def summary_table(rows: Mapping[str, Rows], per_seed: pd.DataFrame) -> pd.DataFrame:
    """One row per model: its (seed-averaged) score, and for trained variants the number of seeds and their
    spread (``seed_sd``, ``seed_min``, ``seed_max``)."""
    spread = per_seed.groupby("model")["score"].agg(seeds="count", seed_sd="std", seed_min="min", seed_max="max")
    return pd.DataFrame([{"model": name, **stats.estimate(r)} for name, r in rows.items()]).merge(
        spread, left_on="model", right_index=True, how="left")


def per_seed_differences(run_rows: Mapping[tuple[str, int], Rows], unmasked: str, masked: str,
                         seeds: Sequence[int]) -> dict[int, float]:
    """Per seed, the paired difference masked − unmasked on the same questions (seed k of both saw the same
    batches)."""
    return {seed: stats.difference(run_rows[(unmasked, seed)], run_rows[(masked, seed)])["diff"] for seed in seeds}


def claim8(run_rows: Mapping[tuple[str, int], Rows], unmasked: str, masked: str, seeds: Sequence[int], model: str,
           steps: int) -> dict:
    """Claim 8's entry (:func:`mimic_utils.analysis.diagnosis.seeded_claim`): masked − unmasked, paired on the
    same questions, its interval resampling seeds and questions together; the per-seed differences and
    their SD in its note."""
    return diagnosis.seeded_claim("8", [run_rows[(unmasked, s)] for s in seeds], [run_rows[(masked, s)] for s in seeds],
                                  unmasked, masked, seeds, note=f"{model}, {steps} steps")


def mimic_line(rows: Mapping[str, Rows], a: str, b: str, why: str) -> str | None:
    """One paired sentence on the MIMIC mean (images sweep) for two models on the same questions."""
    found = diagnosis.contrast(diagnosis.select(rows[a], "images"), diagnosis.select(rows[b], "images"),
                               f"MIMIC mean over tasks ({why})", a, b)
    return finding(found)


def comparison_sentences(rows: Mapping[str, Rows], pairs: Sequence[tuple[str, str, str]]) -> list[str | None]:
    """:func:`mimic_line` for each (model a, model b, why) of ``pairs``
    (:meth:`mimic_utils.training.lora_ablation.AblationPlan.comparisons`)."""
    return [mimic_line(rows, *pair) for pair in pairs]
