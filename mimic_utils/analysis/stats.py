"""Uncertainty for every number the study compares: intervals, paired differences, one rule for words.

A cell of the study is a set of prediction rows (one per question, as :func:`mimic_utils.evaluation.harness.run`
writes them). Its headline score is the official one: mean accuracy, or for Listing the micro F1 over the
cell (true positives, predicted and ground-truth items summed over questions). Intervals:

* a 0/1 cell (accuracy) gets the **Wilson** 95% interval, which behaves at 0 and 1 where the normal
  approximation does not;
* anything else — Listing F1, a mean over tasks, a difference — gets a **seeded percentile bootstrap**
  over questions, resampled *within* each task (each task keeps its n, as in the data);
* two models on the **same questions** are compared with a **paired** bootstrap (the same resampled
  questions for both), plus McNemar's exact p for 0/1 scores; two sets of *different* questions (one
  image vs ten) are resampled independently.

Words come from one rule (:func:`change_word`, :func:`verdict`): "rises"/"falls" (or "reproduced"/
"opposite") only when the 95% interval of the difference excludes 0, otherwise "no detectable change"
("inconclusive") with the interval printed. Every generated sentence of the notebooks uses it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

from mimic_utils.evaluation.scoring import score_sample

#: Bootstrap resamples; 2,000 keeps the 95% percentile interval's Monte-Carlo error near 0.005.
N_BOOT = 2000
LEVEL = 0.95

Rows = Sequence[Mapping]


# --- one cell ----------------------------------------------------------------------------------------


def wilson(successes: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion (0/1 accuracy of ``n`` questions)."""
    if n <= 0:
        return (math.nan, math.nan)
    z = scipy_stats.norm.ppf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def is_listing(rows: Rows) -> bool:
    """Listing rows carry the three micro counts; their score is micro F1, not a mean."""
    return bool(rows) and all("true_positive" in r for r in rows)


def _arrays(rows: Rows) -> np.ndarray:
    """``(n, 3)`` of (tp, n_pred, n_gt) for Listing, else ``(n, 1)`` of scores."""
    if is_listing(rows):
        return np.array([[r["true_positive"], r["n_pred"], r["n_gt"]] for r in rows], dtype=float)
    return np.array([[float(r["score"])] for r in rows], dtype=float)


def _headline(sums: np.ndarray, n: int) -> np.ndarray:
    """Score from column sums over a resample (last axis): micro F1 for three columns, else the mean."""
    if sums.shape[-1] == 3:
        tp, n_pred, n_gt = sums[..., 0], sums[..., 1], sums[..., 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(n_pred > 0, tp / n_pred, 0.0)
            recall = np.where(n_gt > 0, tp / n_gt, 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        return f1
    return sums[..., 0] / n


def score(rows: Rows) -> float:
    """The official headline score of one task's rows (accuracy, or Listing micro F1)."""
    if not rows:
        return math.nan
    return float(_headline(_arrays(rows).sum(axis=0), len(rows)))


def _strata(rows: Rows, key: str | None) -> dict:
    groups: dict = {}
    for row in rows:
        groups.setdefault(row.get(key) if key else None, []).append(row)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


def task_mean(rows: Rows, key: str = "task") -> float:
    """Mean of the per-task headline scores (the study's "mean over tasks")."""
    groups = _strata(rows, key)
    return float(np.mean([score(g) for g in groups.values()])) if groups else math.nan


def _resampled(groups: Sequence[np.ndarray], rng: np.random.Generator, n_boot: int,
               index: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """``(n_boot, n_groups)`` headline scores, each group resampled with replacement within itself."""
    out = np.empty((n_boot, len(groups)))
    for g, data in enumerate(groups):
        idx = index[g] if index is not None else rng.integers(0, len(data), size=(n_boot, len(data)))
        out[:, g] = _headline(data[idx].sum(axis=1), len(data))
    return out


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap values (undefined resamples left out)."""
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def estimate(rows: Rows, key: str | None = "task", seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """``{n, score, lo, hi, method}`` of a cell: its headline score (or the mean over tasks when the rows
    span several values of ``key``) with a 95% interval — Wilson for one 0/1 task, bootstrap otherwise."""
    groups = _strata(rows, key)
    if not groups:
        return {"n": 0, "score": math.nan, "lo": math.nan, "hi": math.nan, "method": "none"}
    arrays = [_arrays(g) for g in groups.values()]
    value = float(np.mean([_headline(a.sum(axis=0), len(a)) for a in arrays]))
    if len(arrays) == 1 and arrays[0].shape[1] == 1 and np.isin(arrays[0], (0.0, 1.0)).all():
        lo, hi = wilson(arrays[0].sum(), len(arrays[0]))
        method = "wilson"
    else:
        rng = np.random.default_rng(seed)
        lo, hi = percentile_interval(_resampled(arrays, rng, n_boot).mean(axis=1))
        method = "bootstrap"
    return {"n": len(rows), "score": value, "lo": lo, "hi": hi, "method": method}


# --- two cells ----------------------------------------------------------------------------------------


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> float:
    """McNemar's exact two-sided p for paired 0/1 scores (binomial test on the discordant pairs)."""
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x == 1 and y == 0)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if x == 0 and y == 1)
    if a_only + b_only == 0:
        return 1.0
    return float(scipy_stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)


def _align(rows_a: Rows, rows_b: Rows) -> tuple[list, list]:
    """The same questions in the same order (by ``id``); a question missing from one side is an error."""
    by_id = {r["id"]: r for r in rows_b}
    missing = [r["id"] for r in rows_a if r["id"] not in by_id]
    if missing or len(rows_a) != len(rows_b):
        raise ValueError(f"paired comparison needs the same questions on both sides "
                         f"({len(rows_a)} vs {len(rows_b)} rows; e.g. missing {missing[:3]})")
    return list(rows_a), [by_id[r["id"]] for r in rows_a]


def difference(rows_a: Rows, rows_b: Rows, paired: bool | None = None, key: str | None = "task",
               seed: int = 0, n_boot: int = N_BOOT, keep_samples: bool = False) -> dict:
    """``b − a`` of two cells' scores (mean over ``key`` groups) with a 95% bootstrap interval.

    ``paired=None`` pairs when both sides hold exactly the same question ids (two models on the same
    questions); paired resamples use the same questions for both sides. For paired 0/1 cells McNemar's
    exact p is added.
    """
    ids_a, ids_b = {r["id"] for r in rows_a}, {r["id"] for r in rows_b}
    if paired is None:
        paired = ids_a == ids_b and len(ids_a) == len(rows_a) == len(rows_b)
    rng = np.random.default_rng(seed)
    result: dict = {"n_a": len(rows_a), "n_b": len(rows_b), "paired": paired}
    if paired:
        rows_a, rows_b = _align(rows_a, rows_b)
        pairs = _strata([{**ra, "_b": rb} for ra, rb in zip(rows_a, rows_b)], key)
        groups_a = [_arrays(g) for g in pairs.values()]
        groups_b = [_arrays([r["_b"] for r in g]) for g in pairs.values()]
        index = [rng.integers(0, len(g), size=(n_boot, len(g))) for g in groups_a]
        boot = _resampled(groups_b, rng, n_boot, index).mean(axis=1) - _resampled(groups_a, rng, n_boot, index).mean(axis=1)
        if not is_listing(rows_a) and all(float(r["score"]) in (0.0, 1.0) for r in (*rows_a, *rows_b)):
            result["p_mcnemar"] = mcnemar_exact([r["score"] for r in rows_a], [r["score"] for r in rows_b])
    else:
        groups_a = [_arrays(g) for g in _strata(rows_a, key).values()]
        groups_b = [_arrays(g) for g in _strata(rows_b, key).values()]
        boot = _resampled(groups_b, rng, n_boot).mean(axis=1) - _resampled(groups_a, rng, n_boot).mean(axis=1)
    a, b = task_mean(rows_a, key) if key else score(rows_a), task_mean(rows_b, key) if key else score(rows_b)
    lo, hi = percentile_interval(boot)
    if keep_samples:
        result["samples"] = boot
    return {**result, "a": a, "b": b, "diff": b - a, "lo": lo, "hi": hi}


def difference_of_differences(cells: Mapping[str, Rows], seed: int = 0, n_boot: int = N_BOOT,
                              key: str | None = "task") -> dict:
    """``(d − c) − (b − a)`` for four cells ``a, b, c, d`` (e.g. the pooling gain at n images minus the
    pooling gain at 1 image), each pair ``a→b`` and ``c→d`` paired on its questions when they match."""
    first = difference(cells["a"], cells["b"], key=key, seed=seed, n_boot=n_boot, keep_samples=True)
    second = difference(cells["c"], cells["d"], key=key, seed=seed + 1, n_boot=n_boot, keep_samples=True)
    # the two pairs hold different questions, so their resamples are independent: subtract them draw by draw
    lo, hi = percentile_interval(second.pop("samples") - first.pop("samples"))
    return {"diff": second["diff"] - first["diff"], "lo": lo, "hi": hi, "first": first, "second": second}


# --- words ----------------------------------------------------------------------------------------------


def excludes_zero(lo: float, hi: float) -> int:
    """+1 if the interval lies above 0, −1 if below, 0 if it contains 0 (or is undefined)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0
    return 1 if lo > 0 else -1 if hi < 0 else 0


def interval_text(diff: float, lo: float, hi: float) -> str:
    return f"{diff:+.2f} [95% CI {lo:+.2f}, {hi:+.2f}]"


def change_word(lo: float, hi: float, up: str = "rises", down: str = "falls",
                level: str = "no detectable change") -> str:
    """The study's one rule for trend words: a direction only when the 95% interval excludes 0."""
    return {1: up, -1: down, 0: level}[excludes_zero(lo, hi)]


def change_sentence(subject: str, a_label: str, b_label: str, diff: Mapping, up: str = "rises",
                    down: str = "falls") -> str:
    """"<subject> rises from <a> (0.41) to <b> (0.63): +0.22 [95% CI +0.12, +0.31]." from :func:`difference`."""
    word = change_word(diff["lo"], diff["hi"], up, down)
    return (f"{subject}: {word} from {a_label} ({diff['a']:.2f}) to {b_label} ({diff['b']:.2f}), "
            f"{interval_text(diff['diff'], diff['lo'], diff['hi'])}.")


def verdict(lo: float, hi: float, expected_sign: int) -> str:
    """A claim's verdict from its effect's 95% interval: reproduced (excludes 0 in the claimed direction),
    opposite (excludes 0 the other way) or inconclusive."""
    sign = excludes_zero(lo, hi)
    if sign == 0:
        return "inconclusive"
    return "reproduced" if sign == expected_sign else "opposite"


# --- baselines ------------------------------------------------------------------------------------------


def blind_baseline(rows: Rows, scorer: Callable[[str, object], Mapping] | None = None) -> float:
    """The score of the best constant answer for a cell that ignores the images: the most frequent ground
    truth, answered to every question and scored with the official scorer (Listing: micro F1 of the most
    frequent answer list). Multiple-choice rows (``options``/``n_options``) give 1 / options instead."""
    if not rows:
        return math.nan
    if all("n_options" in r for r in rows):
        return float(np.mean([1.0 / r["n_options"] for r in rows]))
    scorer = scorer or score_sample
    family = rows[0].get("scored_as", rows[0].get("family"))
    constant = Counter(str(r["gt"]) for r in rows).most_common(1)[0][0]
    scored = [{**scorer(family, constant, r["gt"]), "id": i} for i, r in enumerate(rows)]
    return score(scored)


__all__ = [
    "LEVEL", "N_BOOT", "blind_baseline", "change_sentence", "change_word", "difference",
    "difference_of_differences", "estimate", "excludes_zero", "interval_text", "is_listing",
    "mcnemar_exact", "percentile_interval", "score", "task_mean", "verdict", "wilson",
]
