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
("inconclusive") with the interval printed. Every generated sentence of the notebooks uses it. Two guards
come first:

* **floor** — an effect is read only where its *reference condition* (the condition the claim needs to be
  above what a model that ignores the images gets: the 1-image score before images are added, the base
  model before finetuning) lies above its blind baseline or chance, its interval excluding it; otherwise
  the word is "not testable here (floor)" (:func:`above_baseline`, :func:`floor_sentence`);
* **blind adjustment** — where the two ends of a comparison hold different questions whose answers are
  distributed differently, the blind baseline moves on its own; the effect on score − blind is computed
  on the same resample as the raw one (:func:`difference`, ``adjusted``) and the verdict is read on it.

Several seeds of a model enter an interval through :func:`seed_difference`, which resamples seeds and
questions together.
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


def _draw(data: Sequence[np.ndarray], rng: np.random.Generator, n_boot: int) -> list[np.ndarray]:
    """One ``(n_boot, len(group))`` index per group, drawn in group order (the order :func:`_resampled` draws in)."""
    return [rng.integers(0, len(g), size=(n_boot, len(g))) for g in data]


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


def _group_arrays(rows: Rows, key: str | None, blind: bool) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Per group of ``key`` (sorted): the rows' score arrays and, with ``blind``, the arrays of the best
    constant answer to the same questions (:func:`blind_rows`), row for row."""
    groups = list(_strata(rows, key).values())
    data = [_arrays(g) for g in groups]
    return data, ([_arrays(blind_rows(g)) for g in groups] if blind else None)


def can_adjust(rows: Rows) -> bool:
    """Whether a blind baseline can be formed row by row: every row has a ground truth (or options)."""
    return bool(rows) and all("gt" in r or "n_options" in r for r in rows)


def answer_shares(rows: Rows, key: str | None = "task") -> dict:
    """Per ``key`` group, each answer's share of the questions (the number of options for multiple choice):
    the answer distribution the blind baseline is read from."""
    shares = {}
    for name, group in _strata(rows, key).items():
        counts = Counter(str(r["gt"]) if "gt" in r else f"{r['n_options']} options" for r in group)
        shares[name] = {answer: n / len(group) for answer, n in sorted(counts.items())}
    return shares


def difference(rows_a: Rows, rows_b: Rows, paired: bool | None = None, key: str | None = "task",
               seed: int = 0, n_boot: int = N_BOOT, keep_samples: bool = False,
               adjust: bool | None = None) -> dict:
    """``b − a`` of two cells' scores (mean over ``key`` groups) with a 95% bootstrap interval.

    ``paired=None`` pairs when both sides hold exactly the same question ids (two models on the same
    questions); paired resamples use the same questions for both sides. For paired 0/1 cells McNemar's
    exact p is added.

    ``adjust`` (default: for unpaired sides whose rows carry a ground truth and whose answer distributions,
    :func:`answer_shares`, differ) adds ``adjusted``: the same
    difference on score − blind baseline, each side's blind baseline recomputed on the very resample its
    score is (the best constant answer is fixed per group on the full cell, its score follows the
    resampled questions). Paired sides share their questions, so their blind baselines are equal and the
    adjusted difference would be the raw one.
    """
    ids_a, ids_b = {r["id"] for r in rows_a}, {r["id"] for r in rows_b}
    if paired is None:
        paired = ids_a == ids_b and len(ids_a) == len(rows_a) == len(rows_b)
    if adjust is None:
        adjust = (not paired and can_adjust(rows_a) and can_adjust(rows_b)
                  and answer_shares(rows_a, key) != answer_shares(rows_b, key))
    rng = np.random.default_rng(seed)
    result: dict = {"n_a": len(rows_a), "n_b": len(rows_b), "paired": paired}
    if paired:
        rows_a, rows_b = _align(rows_a, rows_b)
        pairs = _strata([{**ra, "_b": rb} for ra, rb in zip(rows_a, rows_b)], key)
        groups_a = [_arrays(g) for g in pairs.values()]
        groups_b = [_arrays([r["_b"] for r in g]) for g in pairs.values()]
        index = _draw(groups_a, rng, n_boot)
        boot = _resampled(groups_b, rng, n_boot, index).mean(axis=1) - _resampled(groups_a, rng, n_boot, index).mean(axis=1)
        if not is_listing(rows_a) and all(float(r["score"]) in (0.0, 1.0) for r in (*rows_a, *rows_b)):
            result["p_mcnemar"] = mcnemar_exact([r["score"] for r in rows_a], [r["score"] for r in rows_b])
        adjusted_boot = None
    else:
        (groups_b, blind_b), (groups_a, blind_a) = (_group_arrays(rows, key, adjust) for rows in (rows_b, rows_a))
        # b's questions are drawn first, then a's: the order (and so the numbers) of the unadjusted bootstrap
        index_b, index_a = _draw(groups_b, rng, n_boot), _draw(groups_a, rng, n_boot)
        score_b = _resampled(groups_b, rng, n_boot, index_b).mean(axis=1)
        score_a = _resampled(groups_a, rng, n_boot, index_a).mean(axis=1)
        boot = score_b - score_a
        adjusted_boot = None if not adjust else (
            boot - (_resampled(blind_b, rng, n_boot, index_b).mean(axis=1)
                    - _resampled(blind_a, rng, n_boot, index_a).mean(axis=1)))
    a, b = task_mean(rows_a, key) if key else score(rows_a), task_mean(rows_b, key) if key else score(rows_b)
    lo, hi = percentile_interval(boot)
    if keep_samples:
        result["samples"] = boot
    if adjusted_boot is not None:
        blind_a, blind_b = blind_mean(rows_a, key), blind_mean(rows_b, key)
        result["adjusted"] = {"a": a - blind_a, "b": b - blind_b, "diff": (b - blind_b) - (a - blind_a),
                              **dict(zip(("lo", "hi"), percentile_interval(adjusted_boot))),
                              "blind_a": blind_a, "blind_b": blind_b}
    return {**result, "a": a, "b": b, "diff": b - a, "lo": lo, "hi": hi}


def seed_difference(runs_a: Sequence[Rows], runs_b: Sequence[Rows], key: str | None = "task", seed: int = 0,
                    n_boot: int = N_BOOT) -> dict:
    """``b − a`` of two models trained with the same seeds (``runs_a[k]`` and ``runs_b[k]`` saw the same
    data), on the same questions, with an interval that covers **seeds and questions**.

    The point estimate is the difference of the seed-averaged models (each question's score, or Listing's
    micro counts, averaged over seeds). Each bootstrap draw resamples the seeds (with replacement, seed
    *k* of both models together, as they are matched) and the questions (within each ``key`` group, the
    same questions for both models), and averages the drawn seeds' resampled sums. Seeds that disagree
    widen the interval; with one seed it is the paired bootstrap over questions. ``per_seed`` holds each
    seed's own paired difference and ``seed_sd`` their standard deviation (ddof 1); ``a_lo, a_hi`` the
    interval of side ``a``'s seed-averaged score from the same resample (a reference condition's).
    """
    if not runs_a or len(runs_a) != len(runs_b):
        raise ValueError(f"seed_difference needs the same seeds on both sides ({len(runs_a)} vs {len(runs_b)} runs)")
    order = [r["id"] for r in runs_a[0]]
    aligned = [_align(runs_a[0], run)[1] for run in (*runs_a, *runs_b)]
    seeds = len(runs_a)
    groups = list(_strata([{**row, "_i": i} for i, row in enumerate(aligned[0])], key).values())
    positions = [np.array([row["_i"] for row in g]) for g in groups]
    # (seeds on both sides, group) → (n, columns) arrays, rows in one order for every run; each group's
    # arrays are formed from that group alone, so a Listing group keeps its micro counts (an array of the
    # whole run would hold per-question scores whenever the run mixes tasks)
    data = [[_arrays([run[i] for i in index]) for index in positions] for run in aligned]
    rng = np.random.default_rng(seed)
    index = _draw(data[0], rng, n_boot)
    weights = np.stack([np.bincount(draw, minlength=seeds) for draw in rng.integers(0, seeds, size=(n_boot, seeds))])

    def side(runs: Sequence[list[np.ndarray]]) -> tuple[float, np.ndarray]:
        values, boots = [], []
        for g, idx in enumerate(index):
            sums = np.stack([run[g][idx].sum(axis=1) for run in runs])  # (seeds, n_boot, columns)
            boots.append(_headline(np.einsum("bs,sbc->bc", weights, sums) / seeds, len(idx[0])))
            values.append(_headline(sum(run[g].sum(axis=0) for run in runs) / seeds, len(idx[0])))
        return float(np.mean(values)), np.mean(boots, axis=0)

    (a, boot_a), (b, boot_b) = side(data[:seeds]), side(data[seeds:])
    lo, hi = percentile_interval(boot_b - boot_a)
    per_seed = [difference(run_a, run_b, paired=True, key=key, seed=seed, n_boot=n_boot)["diff"]
                for run_a, run_b in zip(runs_a, runs_b)]
    a_lo, a_hi = percentile_interval(boot_a)
    return {"a": a, "b": b, "diff": b - a, "lo": lo, "hi": hi, "a_lo": a_lo, "a_hi": a_hi, "n_a": len(order),
            "n_b": len(order), "paired": True,
            "seeds": seeds, "per_seed": per_seed, "seed_sd": float(np.std(per_seed, ddof=1)) if seeds > 1 else math.nan}


def difference_of_differences(cells: Mapping[str, Rows], seed: int = 0, n_boot: int = N_BOOT,
                              key: str | None = "task") -> dict:
    """``(d − c) − (b − a)`` for four cells ``a, b, c, d`` (e.g. the pooling gain at n images minus the
    pooling gain at 1 image), each pair ``a→b`` and ``c→d`` paired on its questions when they match."""
    first = difference(cells["a"], cells["b"], key=key, seed=seed, n_boot=n_boot, keep_samples=True)
    second = difference(cells["c"], cells["d"], key=key, seed=seed + 1, n_boot=n_boot, keep_samples=True)
    # the two pairs hold different questions, so their resamples are independent: subtract them draw by draw
    lo, hi = percentile_interval(second.pop("samples") - first.pop("samples"))
    return {"diff": second["diff"] - first["diff"], "lo": lo, "hi": hi, "first": first, "second": second}


# --- words ---------------------------------------------------------------------------------------------

REPRODUCED, OPPOSITE, INCONCLUSIVE = "reproduced", "opposite", "inconclusive"
#: The reference condition is not above its blind baseline (or chance): the design cannot show the effect.
FLOOR = "not testable here (floor)"
#: A model answers too few multiple-choice questions with a letter for its letter score to mean anything.
FORMAT = "not testable here (format)"
#: Only a formula stands behind the number: it cannot reproduce or contradict anything.
ANALYTIC = "analytic, not measured"
MISSING = "missing"
#: Every verdict, in the order the report counts them.
VERDICTS = (REPRODUCED, OPPOSITE, INCONCLUSIVE, FLOOR, FORMAT, ANALYTIC, MISSING)
#: Verdicts that say the claim could not be read here, strongest first: one of them in a part decides the whole.
NOT_READ = (MISSING, FORMAT, FLOOR, ANALYTIC)


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


# --- the floor guard --------------------------------------------------------------------------------------


def reference(label: str, value: float, lo: float, hi: float, baseline: float, kind: str = "blind") -> dict:
    """A reference condition: the score (with its 95% interval) that must lie above ``baseline`` (the blind
    baseline, chance, or uniform attention: ``kind``) for an effect measured from it to be read."""
    return {"label": label, "score": float(value), "lo": float(lo), "hi": float(hi), "baseline": float(baseline),
            "kind": kind}


def above_baseline(ref: Mapping | None) -> bool:
    """True when the reference's 95% interval lies wholly above its baseline (no reference: nothing to guard).
    An undefined score or baseline is not above anything."""
    if ref is None:
        return True
    return baseline_word(ref) == "above"


def baseline_word(ref: Mapping) -> str:
    """Where a reference lies against its baseline, by the one rule: "above", "below" or "not distinguishable
    from" (the interval contains the baseline, or a number is undefined)."""
    values = (ref.get("lo"), ref.get("hi"), ref.get("baseline"))
    if not all(v is not None and math.isfinite(v) for v in values):
        return "not distinguishable from"
    return change_word(ref["lo"] - ref["baseline"], ref["hi"] - ref["baseline"], up="above", down="below",
                       level="not distinguishable from")


def _number(value: float | None) -> str:
    """A score to two decimals; "—" where it is undefined (NaN is written to metrics.json as null)."""
    return f"{value:.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def reference_text(ref: Mapping) -> str:
    """"1 image 0.63 [95% CI 0.60, 0.66], blind 0.24": the two numbers the floor guard compares."""
    return (f"{ref['label']} {_number(ref['score'])} [95% CI {_number(ref['lo'])}, {_number(ref['hi'])}], "
            f"{ref['kind']} {_number(ref['baseline'])}")


def floor_sentence(subject: str, ref: Mapping, effect: Mapping | None = None) -> str:
    """The sentence of an effect that is not read: both numbers of its reference condition, then the effect
    (if any) marked as not read."""
    line = (f"{subject}: {FLOOR} — the reference condition, {ref['label']}, scores {_number(ref['score'])} "
            f"[95% CI {_number(ref['lo'])}, {_number(ref['hi'])}], {baseline_word(ref)} its {ref['kind']} baseline "
            f"{_number(ref['baseline'])}")
    if effect is not None:
        line += f"; the change {interval_text(effect['diff'], effect['lo'], effect['hi'])} is not read"
    return line + "."


# --- verdicts ---------------------------------------------------------------------------------------------


def verdict(lo: float, hi: float, expected_sign: int, reference: Mapping | None = None,
            analytic: bool = False) -> str:
    """A claim's verdict. In order: an analytic figure is "analytic, not measured"; an effect whose
    ``reference`` condition is not above its baseline is "not testable here (floor)"; otherwise its 95%
    interval decides: reproduced (excludes 0 in the claimed direction), opposite (excludes 0 the other
    way) or inconclusive. Pass the blind-adjusted interval where there is one."""
    if analytic:
        return ANALYTIC
    if not above_baseline(reference):
        return FLOOR
    sign = excludes_zero(lo, hi)
    if sign == 0:
        return INCONCLUSIVE
    return REPRODUCED if sign == expected_sign else OPPOSITE


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """One verdict for a claim read in several parts (counting and listing, two pooling factors, FLOPs and
    time): a part that could not be read decides the whole (missing, then format, then floor, then
    analytic); otherwise the claim is reproduced (or opposite) only when every part is, and
    inconclusive when the parts are inconclusive or disagree."""
    if not verdicts:
        return MISSING
    for word in NOT_READ:
        if word in verdicts:
            return word
    for word in (REPRODUCED, OPPOSITE):
        if all(v == word for v in verdicts):
            return word
    return INCONCLUSIVE


# --- sentences --------------------------------------------------------------------------------------------


def adjusted_text(adjusted: Mapping) -> str:
    """"score − blind: falls, -0.38 [95% CI -0.41, -0.35] (blind 0.24 → 0.10)"."""
    word = change_word(adjusted["lo"], adjusted["hi"])
    return (f"score − blind: {word}, {interval_text(adjusted['diff'], adjusted['lo'], adjusted['hi'])} "
            f"(blind {adjusted['blind_a']:.2f} → {adjusted['blind_b']:.2f})")


def change_sentence(subject: str, a_label: str, b_label: str, diff: Mapping, up: str = "rises",
                    down: str = "falls", reference: Mapping | None = None) -> str:
    """"<subject> rises from <a> (0.41) to <b> (0.63): +0.22 [95% CI +0.12, +0.31]." from :func:`difference`,
    with the blind-adjusted change beside it when ``diff`` has one; the floor sentence
    (:func:`floor_sentence`) instead when ``reference`` is not above its baseline."""
    if not above_baseline(reference):
        return floor_sentence(subject, reference, diff)
    word = change_word(diff["lo"], diff["hi"], up, down)
    line = (f"{subject}: {word} from {a_label} ({diff['a']:.2f}) to {b_label} ({diff['b']:.2f}), "
            f"{interval_text(diff['diff'], diff['lo'], diff['hi'])}")
    if diff.get("adjusted"):
        line += f"; {adjusted_text(diff['adjusted'])}"
    return line + "."


def read_interval(found: Mapping) -> tuple[float, float]:
    """The interval a verdict is read on: the blind-adjusted one where it was formed, else the raw one."""
    chosen = found.get("adjusted") or found
    return chosen["lo"], chosen["hi"]


def contrast_verdict(found: Mapping, expected: int) -> str:
    """A contrast's verdict by the one rule: the floor guard on its ``reference``, then the blind-adjusted
    interval where there is one (:func:`read_interval`), else the raw one."""
    return verdict(*read_interval(found), expected, reference=found.get("reference"))


# --- baselines ------------------------------------------------------------------------------------------


def blind_rows(rows: Rows, scorer: Callable[[str, object], Mapping] | None = None) -> list[dict]:
    """The best constant answer's scored row for each question of one cell: the most frequent ground truth,
    answered to every question and scored with the official scorer (Listing rows keep the micro counts).
    Multiple-choice rows (``n_options``) score 1 / options, a uniform guess. Same ids and order as ``rows``."""
    if not rows:
        return []
    if all("n_options" in r for r in rows):
        return [{"id": r.get("id", i), "score": 1.0 / r["n_options"]} for i, r in enumerate(rows)]
    scorer = scorer or score_sample
    family = rows[0].get("scored_as", rows[0].get("family"))
    constant = Counter(str(r["gt"]) for r in rows).most_common(1)[0][0]
    return [{**scorer(family, constant, r["gt"]), "id": r.get("id", i)} for i, r in enumerate(rows)]


def blind_baseline(rows: Rows, scorer: Callable[[str, object], Mapping] | None = None) -> float:
    """The score of the best constant answer for a cell that ignores the images (:func:`blind_rows`; Listing:
    micro F1 of the most frequent answer list; multiple choice: 1 / options)."""
    return score(blind_rows(rows, scorer)) if rows else math.nan


def blind_mean(rows: Rows, key: str | None = "task") -> float:
    """The blind baseline per ``key`` group (a cell), averaged over groups as the headline score is."""
    groups = _strata(rows, key)
    return float(np.mean([blind_baseline(g) for g in groups.values()])) if groups else math.nan


__all__ = [
    "ANALYTIC", "FLOOR", "FORMAT", "INCONCLUSIVE", "LEVEL", "MISSING", "NOT_READ", "N_BOOT", "OPPOSITE",
    "REPRODUCED", "VERDICTS", "above_baseline", "adjusted_text", "answer_shares", "baseline_word", "blind_baseline",
    "blind_mean", "blind_rows", "can_adjust", "change_sentence", "change_word", "combine_verdicts", "contrast_verdict",
    "difference", "difference_of_differences",
    "estimate", "excludes_zero", "floor_sentence", "interval_text", "is_listing", "mcnemar_exact",
    "percentile_interval", "read_interval", "reference", "reference_text", "score", "seed_difference",
    "task_mean", "verdict", "wilson",
]
