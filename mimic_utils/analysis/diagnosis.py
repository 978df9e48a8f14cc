"""Tables, contrasts and findings of the study: every number with its 95% interval and a blind baseline.

Prediction rows (what :func:`mimic_utils.evaluation.harness.run` returns) are grouped into **cells**: one
experiment's questions of one task at one value of *that experiment's* knob, and at one image count (the
k sweep is built at several image counts, the spread sweep at one). Per-question random values (a
counting question's spread in the images sweep, Odd-One's majority class) never split a cell, so a model's
score on a cell is the same number in every notebook that evaluates it on those questions (the same cap).

* **Tables** give per cell ``n, score, lo, hi`` (95%, :func:`mimic_utils.analysis.stats.estimate`) and ``blind``,
  the best constant answer (:func:`mimic_utils.analysis.stats.blind_baseline`, averaged over tasks like the score).
* **Means over tasks are like for like**: the headline mean covers the four tasks asked at every image
  count (:data:`HEADLINE_TASKS`); Odd-One, which needs three images, is reported on its own range.
* **Contrasts** (a knob's smallest vs largest value, pooling's length effect, base vs finetuned) are
  :func:`mimic_utils.analysis.stats.difference` results; their sentences come from the one rule for words
  (:func:`mimic_utils.analysis.stats.change_sentence`) and their claims entries from
  :func:`mimic_utils.analysis.claims.claim_entry`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from mimic_utils.analysis import stats
from mimic_utils.analysis.claims import CLAIMS, claim_entry, part
from mimic_utils.analysis.sentences import finding
from mimic_utils.data.mimic_benchmark import SWEEPS

Rows = Sequence[Mapping]

#: How a 1-image question is grown to n images, and the experiment that grows it: blank images (no object,
#: the length control), real distractor images, and — for comparison — the images sweep's own questions at n
#: images (different questions: the target spread over the images, new information).
PADDINGS = {"blank": "blank", "distractors": "distractors", "images": "images sweep"}
#: The tasks asked at every image count (1..N); their mean is the like-for-like headline.
HEADLINE_TASKS = ("counting_balanced", "counting_unbalanced", "listing", "common")
#: Odd-One needs at least three images, so it is reported on its own range next to the headline mean.
ODD_ONE = "oddone"
MEAN_LABEL = "four-task mean"
#: 1D pooling factors are chosen for the length claim only while each image keeps this many tokens.
MIN_TOKENS_PER_IMAGE = 4


# --- cells ---------------------------------------------------------------------------------------------


def cell_knobs(experiment: str | None) -> tuple[str, ...]:
    """The knobs that define one cell of ``experiment``: the image count and the experiment's own knob."""
    knob = SWEEPS.get(experiment or "")
    return ("n_images",) if knob in (None, "n_images") else ("n_images", knob)


def field(row: Mapping, key: str) -> Any:
    """A knob (``n_images``, ``k``, …) or a row field (``task``, ``pool``, ``model``)."""
    knobs = row.get("knobs") or {}
    return knobs[key] if key in knobs else row.get(key)


def cell_key(row: Mapping) -> tuple:
    """(experiment, task, value of each cell knob): the unit every table and every cap counts in."""
    experiment = row.get("experiment")
    return (experiment, row.get("task"), *(field(row, k) for k in cell_knobs(experiment)))


def cap_per_cell(records: list[dict], cap: int | None) -> list[dict]:
    """At most ``cap`` questions per cell (:func:`cell_key`), in file order (None keeps all)."""
    if not cap:
        return records
    seen: dict[tuple, int] = {}
    kept = []
    for record in records:
        key = cell_key(record)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= cap:
            kept.append(record)
    return kept


def select(rows: Rows, experiment: str | None = None, tasks: Iterable[str] | None = None, **knobs) -> list:
    """The rows of one experiment (and tasks) at the given knob values."""
    wanted = None if tasks is None else set(tasks)
    return [r for r in rows if (experiment is None or r.get("experiment") == experiment)
            and (wanted is None or r["task"] in wanted) and all(field(r, k) == v for k, v in knobs.items())]


def group(rows: Rows, keys: Sequence[str]) -> dict[tuple, list]:
    """Rows by their values of ``keys``, in sorted key order."""
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault(tuple(field(row, k) for k in keys), []).append(row)
    return dict(sorted(groups.items(), key=lambda kv: tuple(map(_order, kv[0]))))


def _order(value: Any) -> tuple:
    """Numbers before text, numbers by value (so 10 images sort after 2)."""
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


# --- one cell ------------------------------------------------------------------------------------------


def blind(rows: Rows) -> float:
    """The best constant answer's score, per task and averaged over tasks as the headline score is."""
    tasks = group(rows, ("task",)).values()
    return float(sum(stats.blind_baseline(t) for t in tasks) / len(tasks)) if tasks else math.nan


def cell_stats(rows: Rows) -> dict:
    """``n, score, lo, hi, blind`` of one cell (a mean over tasks when the rows span several)."""
    found = stats.estimate(rows)
    return {"n": found["n"], **{k: _round(found[k]) for k in ("score", "lo", "hi")}, "blind": _round(blind(rows))}


def _round(value: float) -> float:
    return round(float(value), 4) if value is not None and math.isfinite(value) else math.nan


def table(rows: Rows, by: Sequence[str], **extra) -> pd.DataFrame:
    """One line per group of ``by`` (knobs or fields) with :func:`cell_stats`; ``extra`` columns first."""
    lines = [{**extra, **dict(zip(by, key)), **cell_stats(members)} for key, members in group(rows, by).items()]
    return pd.DataFrame(lines)


def listing_precision_recall(rows: Rows) -> dict:
    """Micro precision and recall of Listing rows (the F1 is their headline score); empty otherwise."""
    if not stats.is_listing(rows):
        return {}
    tp, pred, gt = (sum(r[k] for r in rows) for k in ("true_positive", "n_pred", "n_gt"))
    return {"precision": _round(tp / pred if pred else 0.0), "recall": _round(tp / gt if gt else 0.0)}


def task_table(rows: Rows, experiment: str = "images") -> pd.DataFrame:
    """Per task over one experiment's questions (Counting Balanced and Unbalanced apart), Listing's P and R
    beside its F1."""
    lines = [{"task": task, **cell_stats(members), **listing_precision_recall(members)}
             for (task,), members in group(select(rows, experiment), ("task",)).items()]
    return pd.DataFrame(lines)


def knob_table(rows: Rows, experiment: str) -> pd.DataFrame:
    """Per task and cell of one sweep: columns task, n_images, the sweep's knob, n, score, lo, hi, blind."""
    return table(select(rows, experiment), ("task", *cell_knobs(experiment)))


def complete_values(rows: Rows, knob: str, tasks: Sequence[str]) -> list:
    """The values of ``knob`` at which every one of ``tasks`` has questions (a like-for-like mean)."""
    present = group(rows, (knob, "task"))
    values = sorted({key[0] for key in present})
    return [v for v in values if all((v, t) in present for t in tasks)]


def mean_table(rows: Rows, experiment: str = "images", knob: str = "n_images",
               tasks: Sequence[str] = HEADLINE_TASKS, label: str = MEAN_LABEL) -> pd.DataFrame:
    """The mean over ``tasks`` per value of ``knob``, only where all of them are asked (like for like)."""
    chosen = select(rows, experiment, tasks)
    lines = [{"task": label, knob: v, **cell_stats(select(chosen, **{knob: v}))}
             for v in complete_values(chosen, knob, tasks)]
    return pd.DataFrame(lines)


def headline_table(rows: Rows) -> pd.DataFrame:
    """The four-task mean over 1..N images and, next to it, Odd-One on its own range (3..N)."""
    odd = knob_table(select(rows, tasks=(ODD_ONE,)), "images")
    return pd.concat([mean_table(rows), odd], ignore_index=True)


def model_tables(rows_by_model: Mapping[str, Rows]) -> dict[str, pd.DataFrame]:
    """Every table of the study for several models at once (a ``model`` column first): ``per_task`` (the
    images sweep per task), ``headline`` (like-for-like mean and Odd-One) and one table per sweep."""
    makers: dict[str, Callable[[Rows], pd.DataFrame]] = {"per_task": task_table, "headline": headline_table}
    makers |= {experiment: (lambda rows, e=experiment: knob_table(rows, e)) for experiment in SWEEPS}
    tables = {}
    for name, make in makers.items():
        frames = [make(rows) for rows in rows_by_model.values()]
        frames = [f.assign(model=m)[["model", *f.columns]] for m, f in zip(rows_by_model, frames) if len(f)]
        if frames:
            tables[name] = pd.concat(frames, ignore_index=True)
    return tables


# --- contrasts -------------------------------------------------------------------------------------------


def value_label(knob: str, value: Any) -> str:
    """"1 image", "10 images", "3 distractors", "spread = 2", "k = 3"."""
    if knob == "n_images":
        return f"{value} image" + ("" if value == 1 else "s")
    if knob == "distractors":
        return f"{value} distractor" + ("" if value == 1 else "s")
    return f"{knob} = {value}"


def by_question(rows: Rows) -> list[dict]:
    """Rows keyed by their question: a padded sweep's row (blank or distractor images beside one target)
    takes its 1-image question's id (``base_id``), so the same question at two image counts pairs."""
    return [{**row, "id": row["base_id"]} if row.get("base_id") else dict(row) for row in rows]


def reference_of(rows: Rows, label: str) -> dict:
    """A cell as a reference condition (:func:`mimic_utils.analysis.stats.reference`): its score with the 95%
    interval, against its blind baseline (both averaged over tasks as the headline is)."""
    found = stats.estimate(rows)
    return stats.reference(label, found["score"], found["lo"], found["hi"], blind(rows), "blind")


def contrast(rows_a: Rows, rows_b: Rows, subject: str, a_label: str, b_label: str,
             reference: Mapping | None = None, **extra) -> dict | None:
    """``b − a`` (:func:`mimic_utils.analysis.stats.difference`; paired when the questions match, padded sweeps
    by their 1-image question (:func:`by_question`), blind-adjusted when they do not) with the words of its
    sentence, ``n``, the distinct questions behind it, and the ``reference`` condition the floor guard reads (by default side ``a``: the condition before images,
    distractors or finetuning are added); None when either side is empty."""
    if not rows_a or not rows_b:
        return None
    found = stats.difference(by_question(rows_a), by_question(rows_b))
    questions = len(rows_a) if found["paired"] else len(rows_a) + len(rows_b)
    return {"subject": subject, "a_label": a_label, "b_label": b_label, "n": questions, **extra, **found,
            "reference": dict(reference) if reference is not None else reference_of(rows_a, a_label)}


def curve(rows: Rows, knob: str) -> list[dict]:
    """A sweep's whole curve: per value of ``knob``, ``n, score, lo, hi, blind`` (mean over the rows' tasks)."""
    return [{knob: key[0], **cell_stats(members)} for key, members in group(rows, (knob,)).items()]


def sweep_contrast(rows: Rows, experiment: str, subject: str, tasks: Sequence[str] | None = None,
                   **fixed) -> dict | None:
    """A sweep's largest knob value against its smallest (mean over ``tasks``, each asked at both ends),
    with other knobs held at ``fixed`` (e.g. ``n_images=1`` for the k sweep), and the whole curve."""
    knob = SWEEPS[experiment]
    chosen = select(rows, experiment, tasks, **fixed)
    values = complete_values(chosen, knob, tasks or sorted({r["task"] for r in chosen}))
    if len(values) < 2:
        return None
    first, last = values[0], values[-1]
    a, b = select(chosen, **{knob: first}), select(chosen, **{knob: last})
    return contrast(a, b, subject, value_label(knob, first), value_label(knob, last), knob=knob,
                    a_value=first, b_value=last, fixed=fixed, images=_image_counts(a, b),
                    curve=curve([r for r in chosen if field(r, knob) in values], knob))


def _image_counts(rows_a: Rows, rows_b: Rows) -> list:
    """The image counts of the two sides, to say what was held fixed."""
    return [sorted({field(r, "n_images") for r in rows}) for rows in (rows_a, rows_b)]


def length_effect(pooled: Mapping[int, Rows], n: int, r: int, subject: str,
                  tasks: Sequence[str] = HEADLINE_TASKS) -> dict | None:
    """Pooling's length effect: the pooling gain ``score(n, r) − score(n, 1)`` (same questions) at ``n``
    images minus the same gain at 1 image (:func:`mimic_utils.analysis.stats.difference_of_differences`). Above 0
    means shortening each image's sequence helps more the more images there are."""
    cells = {"a": (1, 1), "b": (1, r), "c": (n, 1), "d": (n, r)}
    rows = {name: select(pooled.get(factor, []), tasks=tasks, n_images=count)
            for name, (count, factor) in cells.items()}
    if not all(rows.values()) or n == 1 or r == 1:
        return None
    found = stats.difference_of_differences(rows)
    return {"subject": subject, "a_label": "1 image", "b_label": value_label("n_images", n),
            "a": found["first"]["diff"], "b": found["second"]["diff"], "diff": found["diff"], "lo": found["lo"],
            "hi": found["hi"], "n": len(rows["a"]) + len(rows["c"]), "pool": r, "n_images": n,
            "gain_at_n": {k: found["second"][k] for k in ("diff", "lo", "hi")}}


def pooling_reference(pooled: Mapping[int, Rows], tasks: Sequence[str] = HEADLINE_TASKS) -> dict | None:
    """Claim 2's reference condition: the score at 1 image without pooling, the single-image skill that
    shortening the sequence could recover at many images (None without 1-image questions at r = 1)."""
    rows = select(pooled.get(1, []), tasks=tasks, n_images=1)
    return reference_of(rows, "1 image, no pooling") if rows else None


def pooling_gain(pooled: Mapping[int, Rows], n: int, r: int, subject: str,
                 tasks: Sequence[str] = HEADLINE_TASKS) -> dict | None:
    """What claim 2 says: the pooling gain at ``n`` images, ``score(n, r) − score(n, 1)`` on the same
    questions (paired), read against :func:`pooling_reference`."""
    if r == 1 or r not in pooled or 1 not in pooled:
        return None
    a, b = (select(pooled[factor], tasks=tasks, n_images=n) for factor in (1, r))
    return contrast(a, b, subject, "r = 1", f"r = {r}", reference=pooling_reference(pooled, tasks), pool=r,
                    n_images=n)


def tokens_per_image(budget: pd.DataFrame) -> dict[int, float]:
    """Vision tokens per image at each pooling factor, from a token-budget table (one model's)."""
    per_image = budget.assign(per_image=budget["vision_tokens"] / budget["n_images"])
    return per_image.groupby("pool")["per_image"].min().to_dict()


def claim_pool_factor(per_image: Mapping[int, float], minimum: int = MIN_TOKENS_PER_IMAGE) -> int:
    """The largest pooling factor that keeps at least ``minimum`` tokens per image (1 if none does)."""
    kept = [r for r, tokens in per_image.items() if r > 1 and tokens >= minimum]
    return max(kept, default=1)


def pooling_table(pooled: Mapping[int, Rows], budget: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per task (and the four-task mean), image count and pooling factor r: the score, the pooling gain
    over r = 1 on the same questions (``gain``, paired) and the length effect, that gain minus the gain at
    1 image (``length_effect``, NaN where the task has no 1-image questions)."""
    tokens = {} if budget is None else {(n, r): v for n, r, v in
                                        budget[["n_images", "pool", "vision_tokens"]].itertuples(index=False)}
    tasks = sorted({r["task"] for rows in pooled.values() for r in rows})
    sets = [(task, (task,)) for task in tasks] + [(MEAN_LABEL, HEADLINE_TASKS)]
    lines = []
    for label, members in sets:
        for r, rows in sorted(pooled.items()):
            for n in sorted({field(row, "n_images") for row in select(rows, tasks=members)}):
                lines.append(_pooling_line(pooled, label, members, n, r, tokens.get((n, r))))
    return pd.DataFrame([line for line in lines if line])


def _pooling_line(pooled: Mapping[int, Rows], label: str, tasks: Sequence[str], n: int, r: int,
                  vision_tokens: int | None) -> dict | None:
    """One line of :func:`pooling_table`."""
    rows = select(pooled[r], tasks=tasks, n_images=n)
    if label == MEAN_LABEL and len({row["task"] for row in rows}) < len(tasks):
        return None
    effect = length_effect(pooled, n, r, label, tasks)
    # where a length effect is formed, its own resample of the gain at n images is the one reported, so the
    # table and the length effect's line (read from the same effect) give one interval
    gain = effect["gain_at_n"] if effect else (
        stats.difference(select(pooled.get(1, []), tasks=tasks, n_images=n), rows) if 1 in pooled else None)
    return {"task": label, "n_images": n, "pool": r, "vision_tokens": vision_tokens, **cell_stats(rows),
            **_columns(gain, ("gain", "gain_lo", "gain_hi")),
            **_columns(effect, ("length_effect", "length_lo", "length_hi"))}


def _columns(found: Mapping | None, names: tuple[str, str, str]) -> dict:
    """A difference's value and interval under the given column names (NaN where none was formed)."""
    return {name: _round(found[key]) if found else math.nan for name, key in zip(names, ("diff", "lo", "hi"))}


# --- contrasts, findings and claims --------------------------------------------------------------------------------


def curve_text(points: Sequence[Mapping], knob: str) -> str:
    """"k = 1 0.08 [0.06, 0.10], k = 2 0.39 […], k = 3 0.10 […] (blind 0.04, 0.05, 0.04; not monotone)"."""
    cells = ", ".join(f"{value_label(knob, p[knob])} {p['score']:.2f} [{p['lo']:.2f}, {p['hi']:.2f}]" for p in points)
    blinds = ", ".join(f"{p['blind']:.2f}" for p in points)
    scores = [p["score"] for p in points]
    steps = [b - a for a, b in zip(scores, scores[1:])]
    shape = ("" if len(steps) < 2 else "; monotone" if all(d <= 0 for d in steps) or all(d >= 0 for d in steps)
             else "; not monotone")
    return f"{cells} (blind {blinds}{shape})"


def diagnosis_contrasts(rows: Rows, pooled: Mapping[int, Rows], model: str, pool_factor: int) -> dict:
    """The contrasts notebook 02 reads its findings and claims 1–5 and 11 from, for one model. The k sweep
    gives one contrast per task (``k_<task>``, and ``k_<task>_at_<n>`` at more images); pooling gives the
    gain at the most images at ``pool_factor`` (``pooling``) and at r = 2 (``pooling_r2``), and the length
    effect (``pooling_length``)."""
    pooled_top = max((field(r, "n_images") for rows in pooled.values() for r in rows), default=1)
    k_counts = sorted({field(r, "n_images") for r in select(rows, "k")})
    gain = f"{model}, pooling gain at {value_label('n_images', pooled_top)}, {MEAN_LABEL}"
    length = length_effect(pooled, pooled_top, pool_factor,
                           f"{model}, length effect of pooling (gain at r={pool_factor} at n images − at 1 image), "
                           f"{MEAN_LABEL}")
    found = {
        "images": sweep_contrast(rows, "images", f"{model}, {MEAN_LABEL}", HEADLINE_TASKS),
        "oddone": sweep_contrast(rows, "images", f"{model}, odd-one accuracy", (ODD_ONE,)),
        "counting_split": contrast(select(rows, "images", ("counting_unbalanced",)),
                                   select(rows, "images", ("counting_balanced",)),
                                   f"{model}, counting accuracy over the images sweep", "Unbalanced", "Balanced"),
        "pooling": pooling_gain(pooled, pooled_top, pool_factor, gain),
        "pooling_r2": pooling_gain(pooled, pooled_top, 2, gain) if pool_factor != 2 else None,
        "pooling_length": {**length, "reference": pooling_reference(pooled)} if length else None,
        "spread": sweep_contrast(rows, "spread", f"{model}, counting accuracy"),
        "distractors": sweep_contrast(rows, "distractors", f"{model}, counting accuracy"),
        **length_contrasts(rows, model),
    }
    for count in k_counts:
        for task in sorted({r["task"] for r in select(rows, "k", n_images=count)}):
            name = f"k_{task}" if count == k_counts[0] else f"k_{task}_at_{count}"
            found[name] = sweep_contrast(rows, "k", f"{model}, {task} at {value_label('n_images', count)}",
                                         (task,), n_images=count)
    return {name: value for name, value in found.items() if value is not None}


#: Each contrast of :func:`diagnosis_contrasts` and the direction the paper gives it (claim id or None).
#: Claim 11 (the length thesis) is read on the blank-image control: its mean over the tasks (``blank``) and
#: each task (``blank_counting``, ``blank_listing``: the same 1-image questions beside blank images), each a
#: part. ``distraction`` (distractors − blank images at the same image count) has no stated direction.
DIAGNOSIS_DIRECTIONS = {"images": ("1", -1), "oddone": (None, -1), "counting_split": (None, None),
                        "pooling": ("2", +1), "pooling_r2": ("2", +1), "pooling_length": (None, +1),
                        "spread": ("3", -1), "distractors": ("4", -1), "blank": ("11", -1),
                        "blank_counting": ("11", -1), "blank_listing": ("11", -1), "distraction": (None, None)}
#: Claims read in parts, one per task: reproduced only when every task's part is.
CLAIMS_IN_PARTS = ("5", "11")


def direction(name: str) -> tuple[str | None, int | None]:
    """The claim and sign of one contrast: the k sweep at one image per task is claim 5, at more images it
    follows claim 5's direction without being the claim; None: the paper states no direction (e.g.
    Balanced vs Unbalanced)."""
    if name in DIAGNOSIS_DIRECTIONS:
        return DIAGNOSIS_DIRECTIONS[name]
    if name.startswith("k_") and "_at_" not in name:
        return ("5", -1)
    return (None, -1)


def diagnosis_findings(contrasts_by_model: Mapping[str, Mapping],
                       names: Iterable[str] | None = None) -> list[str]:
    """One sentence per model and contrast (all, or those whose name is in ``names`` or starts with one of
    them followed by ``_``, e.g. ``k`` → ``k_listing``, ``k_listing_at_4``), each with the paper's
    direction and the verdict."""
    wanted = None if names is None else tuple(names)

    def chosen(name: str) -> bool:
        return wanted is None or name in wanted or any(name.startswith(f"{w}_") for w in wanted)

    return [finding(found, direction(name)[1]) for contrasts in contrasts_by_model.values()
            for name, found in contrasts.items() if chosen(name)]


def _measure(claim: str, found: Mapping) -> str:
    """What claim ``claim`` measured, in words, from its (first) contrast."""
    held = [" or ".join(map(str, side)) for side in found.get("images") or ([], [])]
    fixed = (found.get("fixed") or {}).get("n_images")
    pairing = ("same questions, paired" if found.get("paired") else
               "different questions, read on score − blind" if found.get("adjusted") else
               "different questions with the same answer distribution, unpaired")
    return {
        "1": f"{MEAN_LABEL} ({', '.join(HEADLINE_TASKS)}) at {found.get('b_label')} − at {found.get('a_label')} "
             f"({pairing})",
        "2": f"pooling gain at {value_label('n_images', found.get('n_images'))} (score at r − at r=1, same "
             f"questions), {MEAN_LABEL}, at r={found.get('pool')} (the largest factor keeping >= "
             f"{MIN_TOKENS_PER_IMAGE} vision tokens per image) and at r=2",
        "3": f"counting accuracy at {found.get('b_label')} − at {found.get('a_label')} "
             + (f"(same image count, {held[0]}; {pairing})" if held[0] == held[1]
                else f"(image counts {held[0]} vs {held[1]}; {pairing})"),
        "4": f"counting accuracy with {found.get('b_label')} − with {found.get('a_label')} (target in one image; "
             f"{pairing})",
        "5": f"counting and listing, each at {found.get('b_label')} − at {found.get('a_label')}, "
             f"{value_label('n_images', fixed)} ({pairing})",
        "11": f"each padded task with {found.get('b_label')} − with {found.get('a_label')}, the target beside "
              f"blank images ({pairing})",
    }[claim]


def _claim_two(contrasts: Mapping[str, Mapping], note: str) -> dict:
    """Claim 2 in parts: the pooling gain at the most images at the claim's factor and at r = 2 (both read
    against the 1-image skill); the length effect as a second line of the note."""
    found = contrasts["pooling"]
    gains = [contrasts[name] for name in ("pooling", "pooling_r2") if name in contrasts]
    parts = [part(f"r = {g['pool']}", g, +1, reference=g["reference"]) for g in gains]
    length = contrasts.get("pooling_length")
    if length:
        note += (f"; second line, not the verdict — the length effect (gain at r={length['pool']} at "
                 f"{length['b_label']} minus at 1 image): {stats.interval_text(length['diff'], length['lo'], length['hi'])}, "
                 f"the gain at 1 image being {length['a']:+.2f}")
    return claim_entry("2", found["diff"], found["lo"], found["hi"], _measure("2", found), n=found["n"], note=note,
                       reference=found["reference"], parts=parts)


def _claim_in_parts(claim: str, contrasts: Mapping[str, Mapping], note: str) -> dict | None:
    """A claim read per task (5: the k sweep at one image; 11: the blank-image control): each task's
    contrast a part with its own reference condition (reproduced only if every task is), every curve of
    the claim's sweep, at one image count and at more, in the note."""
    names = [name for name in contrasts if direction(name)[0] == claim]
    if not names:
        return None
    parts = [part(contrasts[name]["subject"].split(", ", 1)[-1], contrasts[name], CLAIMS[claim].sign,
                  reference=contrasts[name]["reference"]) for name in names]
    experiment = "k_" if claim == "5" else "blank_"
    curves = [f"{found['subject'].split(', ', 1)[-1]} by {found['knob'].replace('n_images', 'images')}: "
              f"{curve_text(found['curve'], found['knob'])}"
              for name, found in contrasts.items() if name.startswith(experiment) and found.get("curve")]
    first = contrasts[names[0]]
    note += "".join(f"; {line}" for line in curves)
    return claim_entry(claim, first["diff"], first["lo"], first["hi"], _measure(claim, first),
                       n=sum(contrasts[name]["n"] for name in names), note=note, parts=parts)


def diagnosis_claims(contrasts: Mapping[str, Mapping], model: str) -> dict[str, dict]:
    """Claims 1–5 and 11 (:func:`mimic_utils.analysis.claims.claim_entry`) from one model's contrasts, each with its
    reference condition and, where the two ends hold different questions, its blind-adjusted effect; a
    claim whose contrast could not be formed is left out (the claims table marks it missing)."""
    note = f"model {model}"
    entries = {}
    for name, found in contrasts.items():
        claim = direction(name)[0]
        if claim is None or claim == "2" or claim in CLAIMS_IN_PARTS:
            continue
        curve_line = f"; the curve: {curve_text(found['curve'], found['knob'])}" if found.get("curve") else ""
        entries[claim] = claim_entry(claim, found["diff"], found["lo"], found["hi"], _measure(claim, found),
                                     n=found["n"], note=note + curve_line, reference=found["reference"],
                                     adjusted=found.get("adjusted"))
    if "pooling" in contrasts:
        entries["2"] = _claim_two(contrasts, note)
    for claim in CLAIMS_IN_PARTS:
        entry = _claim_in_parts(claim, contrasts, note)
        if entry:
            entries[claim] = entry
    return dict(sorted(entries.items(), key=lambda kv: int(kv[0])))


# --- the length control: the same questions beside blank images, beside distractors --------------------------

#: The tasks the blank-image control asks (those whose answer blank images cannot change).
BLANK_TASKS = ("counting_balanced", "listing")
BLANK_LABEL = "mean of counting (Balanced) and listing"


def padding_table(rows: Rows, tasks: Sequence[str] = BLANK_TASKS) -> pd.DataFrame:
    """Per task, padding kind (:data:`PADDINGS`: blank images, distractor images, the images sweep's own
    questions) and image count: ``n, score, lo, hi, blind``. Blank and distractor rows at every image count
    are the 1-image questions with pads beside the target, so their blind baseline is the same at every n;
    the images sweep's are other questions (its blind baseline moves with n)."""
    lines = [{"task": task, "padding": label, "n_images": n, **cell_stats(members)}
             for experiment, label in PADDINGS.items()
             for (task, n), members in group(select(rows, experiment, tasks), ("task", "n_images")).items()]
    return pd.DataFrame(lines)


def length_contrasts(rows: Rows, model: str) -> dict:
    """The blank-image control's contrasts: the same questions at the most blank-padded image count against
    1 image, paired by question — over both tasks (``blank``) and each (``blank_counting``,
    ``blank_listing``) — and ``distraction``: counting with distractors − with blank images at the largest
    image count both sweeps share (same questions, same target position, paired)."""
    found = {"blank": sweep_contrast(rows, "blank", f"{model}, {BLANK_LABEL}, target beside blank images",
                                     BLANK_TASKS)}
    for task, name in zip(BLANK_TASKS, ("blank_counting", "blank_listing")):
        found[name] = sweep_contrast(rows, "blank", f"{model}, {task}, target beside blank images", (task,))
    shared = sorted({field(r, "n_images") for r in select(rows, "blank", ("counting_balanced",))}
                    & {field(r, "n_images") for r in select(rows, "distractors", ("counting_balanced",))})
    if shared and shared[-1] > 1:
        n = shared[-1]
        found["distraction"] = contrast(select(rows, "blank", ("counting_balanced",), n_images=n),
                                        select(rows, "distractors", ("counting_balanced",), n_images=n),
                                        f"{model}, counting (Balanced) at {value_label('n_images', n)}",
                                        "blank images", "distractor images", n_images=n)
    return {name: value for name, value in found.items() if value is not None}


#: What a per-question row of :func:`paired_questions` keeps: enough for :func:`mimic_utils.stats.difference`
#: (accuracy, or Listing's micro counts) and to read the answer.
QUESTION_FIELDS = ("id", "task", "scored_as", "gt", "parsed", "score", "true_positive", "n_pred", "n_gt")


def paired_questions(rows: Rows, experiment: str = "blank", tasks: Sequence[str] = BLANK_TASKS) -> dict | None:
    """The per-question rows of a padded sweep at its smallest and largest image count, keyed by the
    1-image question (``id`` = ``base_id``), for a paired bootstrap elsewhere (the claims table):
    ``{"experiment", "tasks", "a_n", "b_n", "a": [rows], "b": [rows]}``; the two lists hold the same ids."""
    chosen = select(rows, experiment, tasks)
    counts = sorted({field(r, "n_images") for r in chosen})
    if len(counts) < 2:
        return None
    sides = [[{k: row[k] for k in QUESTION_FIELDS if k in row} for row in by_question(select(chosen, n_images=n))]
             for n in (counts[0], counts[-1])]
    return {"experiment": experiment, "tasks": list(tasks), "a_n": counts[0], "b_n": counts[-1],
            "a": sorted(sides[0], key=lambda r: r["id"]), "b": sorted(sides[1], key=lambda r: r["id"])}


# --- what the model answers -----------------------------------------------------------------------------------

UNPARSED = "unparsed"
#: Predicted counts this far above the largest true count are pooled into one column.
OVERCOUNT_MARGIN = 3


def answer_text(row: Mapping) -> str:
    """A row's answer as the scorer read it: the parsed count (or :data:`UNPARSED`), Listing's items joined
    as the ground truth is, the stripped reply of Common and Odd-One (lower-cased)."""
    parsed = row.get("parsed")
    if str(row.get("scored_as", row.get("family"))) == "counting":
        return UNPARSED if parsed is None else str(parsed)
    if isinstance(parsed, list):
        return ", ".join(sorted(dict.fromkeys(parsed))) or "(empty)"
    return str(parsed if parsed is not None else row.get("output", "")).strip().lower() or "(empty)"


def count_confusion(rows: Rows) -> pd.DataFrame:
    """Counting questions: questions per true count (index) and predicted count (columns), with the parse
    failures in :data:`UNPARSED` and predictions more than :data:`OVERCOUNT_MARGIN` above the largest true
    count pooled into one ``">N"`` column; every true count from 0 to the largest predicted or true value
    that is shown gets its column, so the diagonal is where the model is right."""
    counting = [r for r in rows if str(r.get("scored_as", r.get("family"))) == "counting"]
    if not counting:
        return pd.DataFrame()
    truths = [int(r["gt"]) for r in counting]
    top = max(truths) + OVERCOUNT_MARGIN
    predicted = [answer_text(r) for r in counting]
    shown = [p if p == UNPARSED or int(p) <= top else f">{top}" for p in predicted]
    values = sorted({int(p) for p in shown if p.lstrip("-").isdigit()} | set(truths))
    rare = [c for c in (f">{top}", UNPARSED) if c in shown]  # shown only where some answer falls there
    columns = [str(v) for v in range(min(0, values[0]), values[-1] + 1)] + rare
    frame = pd.crosstab(pd.Series(truths, name="true"), pd.Series(shown, name="predicted"))
    return frame.reindex(columns=columns, fill_value=0)


#: The counting tasks of the images sweep and the tasks whose wrong answers are listed by name.
COUNTING_TASKS = ("counting_balanced", "counting_unbalanced")
NAMED_TASKS = ("listing", "common", "oddone")


def count_confusions(rows: Rows, image_counts: Sequence[int], tasks: Sequence[str] = COUNTING_TASKS) -> dict:
    """:func:`count_confusion` per (task, image count) of the images sweep, for the counts asked (those
    with questions), in task then image-count order: what :func:`mimic_utils.analysis.plots.count_confusion_grid`
    draws."""
    chosen = select(rows, "images", tasks)
    return {(task, n): count_confusion(cell) for task in tasks for n in image_counts
            if (cell := select(chosen, tasks=(task,), n_images=n))}


def answer_summary(rows: Rows, by: Sequence[str] = ("task", "n_images")) -> pd.DataFrame:
    """Per task and image count, what the answers look like: ``n``, ``score``, the most frequent answer and
    its share of the questions (``top_share`` near 1 is a constant answer), the share of right answers that
    constant would give (``top_right``), how many distinct answers (``distinct``), the parse failures
    (``unparsed``), and for counting the mean signed error of the parsed counts (``mean_error`` > 0:
    over-counting), the shares over- and under-counted and which of the true counts it ever says
    (:func:`counts_said`)."""
    lines = []
    for key, members in group(rows, by).items():
        answers = [answer_text(r) for r in members]
        top, top_count = _ranked(answers)[0]
        line = {**dict(zip(by, key)), "n": len(members), "score": _round(stats.score(members)),
                "top_answer": top, "top_share": _round(top_count / len(members)),
                "top_right": _round(sum(str(r["gt"]).strip().lower() == top for r in members) / len(members)),
                "distinct": len(set(answers)), "unparsed": _round(answers.count(UNPARSED) / len(members))}
        if all(str(r.get("scored_as", r.get("family"))) == "counting" for r in members):
            errors = [int(r["parsed"]) - int(r["gt"]) for r in members if r.get("parsed") is not None]
            line |= {"mean_error": _round(sum(errors) / len(errors)) if errors else math.nan,
                     "over": _round(sum(e > 0 for e in errors) / len(members)),
                     "under": _round(sum(e < 0 for e in errors) / len(members)), **counts_said(members)}
        lines.append(line)
    return pd.DataFrame(lines)


def counts_said(members: Rows) -> dict:
    """Whether a counting model uses the whole answer range (issue #25's check on the confusion figure): of the
    true counts the questions ask (``counts_asked``), the share the model ever answers (``counts_said``,
    right or not) and the ones it never says (``never_said``, e.g. ``"3, 6, 7, 8"``; ``""`` when none). A
    model that says every count it is asked can still be wrong; one that never says 3 cannot count three."""
    asked = sorted({int(r["gt"]) for r in members})
    said = {int(r["parsed"]) for r in members if r.get("parsed") is not None}
    never = [count for count in asked if count not in said]
    return {"counts_asked": len(asked), "counts_said": _round(1 - len(never) / len(asked)),
            "never_said": ", ".join(map(str, never))}


def wrong_answers(rows: Rows, by: Sequence[str] = ("task", "n_images"), top: int = 3) -> pd.DataFrame:
    """The ``top`` most frequent wrong answers per task and image count, each with how many questions got it
    (``count``) and its share of that cell's questions (``share``); the true answers they replaced are
    summarised by the most frequent one (``instead_of``)."""
    lines = []
    for key, members in group(rows, by).items():
        wrong = [(answer_text(r), str(r["gt"])) for r in members if float(r["score"]) < 1.0]
        for answer, count in _ranked(a for a, _ in wrong)[:top]:
            lines.append({**dict(zip(by, key)), "answer": answer, "count": count,
                          "share": _round(count / len(members)),
                          "instead_of": _ranked(g for a, g in wrong if a == answer)[0][0]})
    return pd.DataFrame(lines)


def _ranked(values: Iterable[str]) -> list[tuple[str, int]]:
    """``(value, count)`` from the most frequent down, ties in alphabetical order (stable tables)."""
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def answer_findings(summary: pd.DataFrame, model: str) -> list[str]:
    """One sentence per task and image count of :func:`answer_summary`: the answer it gives most and how
    often, and for counting whether the parsed counts run over or under the truth and which true counts it
    never says."""
    lines = []
    for line in summary.to_dict(orient="records"):
        text = (f"{model}, {line['task']} at {value_label('n_images', line['n_images'])}: score {line['score']:.2f}; "
                f"the most frequent answer '{line['top_answer']}' is {line['top_share']:.0%} of {line['n']} "
                f"answers ({line['distinct']} distinct)")
        if "mean_error" in line and isinstance(line["mean_error"], float) and math.isfinite(line["mean_error"]):
            text += (f"; parsed counts are {line['mean_error']:+.2f} off on average (over {line['over']:.0%}, "
                     f"under {line['under']:.0%}, unparsed {line['unparsed']:.0%})")
        never = line.get("never_said")  # NaN on the rows of other tasks, "" where every count is said
        if isinstance(never, str) and never:
            asked = int(line["counts_asked"])
            said = round(line["counts_said"] * asked)  # the share is rounded to 4 places: exact for any count range asked
            text += f"; of the {asked} true counts asked it never answers {never} ({said} said)"
        elif isinstance(never, str):
            text += f"; it answers each of the {int(line['counts_asked'])} true counts asked at least once"
        lines.append(text + ".")
    return lines


# --- two models on the same questions ---------------------------------------------------------------------


def paired_table(rows_a: Rows, rows_b: Rows, by: Sequence[str], label: str | None = None) -> pd.DataFrame:
    """``b − a`` per group of ``by`` on the same questions (paired): a, b, diff, lo, hi, the blind baseline,
    McNemar's p and the word of the rule ("not testable here (floor)" where ``a``'s score is not above the
    blind baseline); ``label`` names the group's task set when the rows span several tasks."""
    other = group(rows_b, by)
    lines = []
    for key, members in group(rows_a, by).items():
        found = stats.difference(members, other.get(key, []), paired=True)
        testable = stats.above_baseline(reference_of(members, "a"))
        lines.append({**({"task": label} if label else {}), **dict(zip(by, key)), "n": len(members),
                      **{k: _round(found[k]) for k in ("a", "b", "diff", "lo", "hi")}, "blind": _round(blind(members)),
                      "p_mcnemar": _round(found.get("p_mcnemar", math.nan)),
                      "change": stats.change_word(found["lo"], found["hi"]) if testable else stats.FLOOR})
    return pd.DataFrame(lines)


def comparison_tables(rows_by_model: Mapping[str, Rows], base: str, other: str) -> dict[str, pd.DataFrame]:
    """``other − base`` on the images sweep's questions, paired: per task (``diff_per_task``) and per task
    and image count with the four-task mean per image count (``diff_by_images``)."""
    a, b = (select(rows_by_model[m], "images") for m in (base, other))
    by_images = [paired_table(a, b, ("task", "n_images")),
                 paired_table(select(a, tasks=HEADLINE_TASKS), select(b, tasks=HEADLINE_TASKS), ("n_images",),
                              label=MEAN_LABEL)]
    return {"diff_per_task": paired_table(a, b, ("task",)),
            "diff_by_images": pd.concat(by_images, ignore_index=True)}


def comparison_contrasts(rows_by_model: Mapping[str, Rows], base: str, other: str) -> dict[str, dict]:
    """The paired contrasts of two models: every task of the images sweep (``mimic``), each task, the
    four-task mean at 1 image (the forgetting check) and at the most images, and counting at the widest
    spread."""
    def pair(subject: str, experiment: str, tasks: Sequence[str] | None = None, **knobs) -> dict | None:
        a, b = (select(rows_by_model[m], experiment, tasks, **knobs) for m in (base, other))
        return contrast(a, b, subject, base, other)

    images = select(rows_by_model[base], "images")
    counts = sorted({field(r, "n_images") for r in select(images, tasks=HEADLINE_TASKS)})
    spreads = sorted({field(r, "spread") for r in select(rows_by_model[base], "spread")})
    found = {"mimic": pair("MIMIC mean over every task (images sweep)", "images")}
    found |= {task: pair(task, "images", (task,)) for task in sorted({r["task"] for r in images})}
    if counts:
        found["single_image"] = pair(f"{MEAN_LABEL} at 1 image (forgetting check)", "images", HEADLINE_TASKS,
                                     n_images=counts[0])
        found["most_images"] = pair(f"{MEAN_LABEL} at {value_label('n_images', counts[-1])}", "images",
                                    HEADLINE_TASKS, n_images=counts[-1])
    if spreads:
        found["spread"] = pair(f"counting at spread {spreads[-1]}", "spread", spread=spreads[-1])
    return {name: value for name, value in found.items() if value is not None}


def comparison_findings(rows_by_model: Mapping[str, Rows], base: str, other: str) -> list[str]:
    """One sentence per paired contrast of two models on the same questions (the one rule for words)."""
    return [finding(found) for found in comparison_contrasts(rows_by_model, base, other).values()]


def comparison_claim(claim: str, rows_by_model: Mapping[str, Rows], base: str, other: str) -> dict | None:
    """A finetuning claim (7): ``other − base`` over every task of the images sweep, mean over tasks,
    paired on the same questions, read against the base model's score (its reference condition)."""
    found = comparison_contrasts(rows_by_model, base, other).get("mimic")
    if found is None:
        return None
    return claim_entry(claim, found["diff"], found["lo"], found["hi"],
                       f"MIMIC mean over the {len({r['task'] for r in select(rows_by_model[base], 'images')})} "
                       f"tasks of the images sweep, {other} − {base} "
                       f"({'same questions, paired' if found.get('paired') else 'different question sets, unpaired'})",
                       n=found["n"], reference={**found["reference"], "label": f"{base}, MIMIC mean over tasks"})


def seeded_claim(claim: str, runs_base: Sequence[Rows], runs_other: Sequence[Rows], base: str, other: str,
                 seeds: Sequence[int], note: str = "", experiment: str = "images") -> dict:
    """A finetuning claim trained with several seeds (8): ``other − base`` over every task of ``experiment``,
    paired on the same questions, with the interval of :func:`mimic_utils.analysis.stats.seed_difference` (seeds and
    questions resampled together); the reference condition is the seed-averaged ``base`` model with its
    interval from the same resample; each seed's own difference and their SD go into the note."""
    runs_a, runs_b = ([select(rows, experiment) for rows in runs] for runs in (runs_base, runs_other))
    found = stats.seed_difference(runs_a, runs_b)
    per_seed = ", ".join(f"seed {s} {d:+.3f}" for s, d in zip(seeds, found["per_seed"]))
    spread = f"SD {found['seed_sd']:.4f}" if math.isfinite(found["seed_sd"]) else "one seed: no SD"
    note = (f"interval resamples the {found['seeds']} seeds and the {found['n_a']} questions together; per-seed "
            f"paired differences {per_seed} ({spread})" + (f"; {note}" if note else ""))
    reference = stats.reference(f"{base}, MIMIC mean over tasks (seed-averaged)", found["a"], found["a_lo"],
                                found["a_hi"], stats.blind_mean(runs_a[0]))
    tasks = len({r["task"] for r in runs_a[0]})
    return claim_entry(claim, found["diff"], found["lo"], found["hi"],
                       f"MIMIC mean over the {tasks} tasks of the {experiment} sweep, {other} − {base} (same "
                       f"questions, paired; seed-averaged over {found['seeds']} seeds)", n=found["n_a"], note=note,
                       reference=reference)


# --- metrics.json ----------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """A table (as records), contrast or claim ready for metrics.json: NaN written as null, so the file
    stays strict JSON."""
    if isinstance(value, pd.DataFrame):
        return jsonable(value.to_dict(orient="records"))
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- is the model under study above the floor where the claims are read? ------------------------------

#: How far above its blind baseline the four-task mean at 4 images must be for the images claims to be read
#: on a model that reads several images (issue #25), rather than on the floor.
MEAN_MARGIN_AT_4 = 0.10


def floor_check(tables: Mapping[str, pd.DataFrame], model: str) -> pd.DataFrame:
    """The conditions under which notebook 02's claims are read above the floor, for one model: every task
    at 1 image, the four-task mean at 4 (by :data:`MEAN_MARGIN_AT_4`) and at the most images, and counting
    with the target in one of the spread sweep's images (claim 3's reference) — each as ``score, lo, hi,
    blind, needed`` and ``met`` (the interval's lower end above ``needed``: the blind baseline, plus the
    margin at 4 images). A condition whose cell was not asked is left out."""
    lines = []

    def add(condition: str, cell: Mapping, margin: float = 0.0) -> None:
        needed = round(float(cell["blind"]) + margin, 4)
        lines.append({"condition": condition, "n": int(cell["n"]), "score": cell["score"], "lo": cell["lo"],
                      "hi": cell["hi"], "blind": cell["blind"], "needed": needed, "met": bool(cell["lo"] > needed)})

    def of(frame_name: str) -> pd.DataFrame:
        frame = tables.get(frame_name, pd.DataFrame())
        return frame[frame["model"] == model] if len(frame) else frame

    images = of("images")
    if len(images):
        for _, cell in images[images["n_images"] == 1].iterrows():
            add(f"{cell['task']} at 1 image", cell)
    headline = of("headline")
    if len(headline):
        mean = headline[headline["task"] == MEAN_LABEL]
        counts = sorted(mean["n_images"].unique())
        for n in [c for c in (4, counts[-1] if counts else None) if c in counts and c != 1]:
            add(f"four-task mean at {n} images", mean[mean["n_images"] == n].iloc[0],
                MEAN_MARGIN_AT_4 if n == 4 else 0.0)
    spread = of("spread")
    if len(spread):
        for _, cell in spread[spread["spread"] == 1].iterrows():
            add(f"{cell['task']}, target in 1 of {cell['n_images']} images (spread 1)", cell)
    return pd.DataFrame(lines)


def floor_sentence(check: pd.DataFrame, model: str) -> str:
    """One generated sentence on :func:`floor_check`: how many conditions hold, and which do not."""
    if check.empty:
        return f"{model}: no cell of the floor check was asked."
    missed = check[~check["met"]]
    said = f"{model} is above the floor in {len(check) - len(missed)} of {len(check)} conditions"
    if missed.empty:
        return said + ": the claims below are read on a model that answers above its blind baseline."
    listed = "; ".join(f"{row['condition']} {row['score']:.2f} [{row['lo']:.2f}, {row['hi']:.2f}] against "
                       f"{row['needed']:.2f} needed" for _, row in missed.iterrows())
    return (said + f"; not in: {listed}. A claim read on those cells is read on the floor, and the verdict "
            "rule says so (\"not testable here\").")
