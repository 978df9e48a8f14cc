"""Notebook 06's analysis: every cross-benchmark score with its n, a 95% interval and the score to beat.

* **MIMIC** per model and task (the images sweep): the official headline score (accuracy; micro F1 for
  Listing) with its 95% interval and the *blind baseline* (the best constant answer), as
  :mod:`mimic_utils.analysis.diagnosis` tabulates them for every notebook; the model's MIMIC figure is the mean over
  tasks, bootstrapped over questions within each task.
* **Multiple-choice benchmarks** per model: accuracy with its Wilson interval, *chance* (1 / options,
  guessed uniformly) and the **parse rate**, the share of replies from which a valid option letter was
  read. A model that rarely answers with a letter scores near zero for a reason that has nothing to do
  with transfer, so below :data:`PARSE_FLOOR` its reading is "does not answer in the letter format".
* **Comparisons** of two models on the same questions are paired (:func:`mimic_utils.analysis.stats.difference`,
  with McNemar's p) and worded by the study's one rule (:func:`mimic_utils.analysis.stats.change_sentence`), read
  only where the first model's accuracy lies above chance (the floor guard).
* **Claim 10** (:func:`transfer_claim`): the finetuned model against the base on an out-of-distribution
  multiple-choice benchmark, paired. It reads the **option-likelihood** score (each option's
  log-probability given the prompt, as lmms-eval's ``loglikelihood`` requests) where both models have one,
  else the letter in the reply, guarded by the parse rate ("not testable here (format)"); its reference
  condition is the base model's accuracy against chance.

Multiple-choice prediction rows are the lines ``mimic_utils.evaluation.external_benchmarks.prediction_row`` writes: they hold
the record's option ``letters`` and the ``parsed`` letter (None when the reply names none). A short-answer
row (Mantis-Eval) has no letters; it counts in accuracy but not in the parse rate, and its chance is 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mimic_utils.analysis import diagnosis, stats
from mimic_utils.analysis.claims import claim_entry
from mimic_utils.evaluation.harness import read_predictions

#: Below this share of replies with a valid letter, an accuracy says nothing about transfer.
PARSE_FLOOR = 0.5
NO_LETTERS = "does not answer in the letter format"
MIMIC = "MIMIC (mean over tasks)"

Rows = Sequence[Mapping]


# --- multiple choice: options, parse rate, chance --------------------------------------------------------


def is_multiple_choice(row: Mapping) -> bool:
    """A row with option letters (a short-answer row has none)."""
    return bool(row.get("letters"))


def with_n_options(rows: Rows) -> list[dict]:
    """Rows with ``n_options`` added to the multiple-choice ones, so :func:`stats.blind_baseline` reads
    chance from them. The letters are one per option of the record (``choice_letters(len(options))``)."""
    return [{**row, "n_options": len(row["letters"])} if is_multiple_choice(row) else dict(row) for row in rows]


def _letter(value: object) -> str:
    return str(value).strip().strip("()").strip().upper()


def parsed_letter(row: Mapping) -> bool:
    """Whether the reply yielded one of the row's valid letters."""
    parsed = row.get("parsed")
    return parsed is not None and _letter(parsed) in {_letter(l) for l in row["letters"]}


def parse_rate(rows: Rows) -> dict:
    """``{n, parsed, rate}`` over the multiple-choice rows (rate NaN when there are none)."""
    chosen = [r for r in rows if is_multiple_choice(r)]
    parsed = sum(parsed_letter(r) for r in chosen)
    return {"n": len(chosen), "parsed": parsed, "rate": parsed / len(chosen) if chosen else math.nan}


def answers_in_letters(rate: float) -> bool:
    """False only for a measured parse rate under :data:`PARSE_FLOOR` (no MC rows: nothing to refuse)."""
    return not (math.isfinite(rate) and rate < PARSE_FLOOR)


def chance(rows: Rows) -> float:
    """Expected accuracy of a uniform guess: 1 / options on multiple-choice rows, 0 on short answers."""
    if not rows:
        return math.nan
    mc = with_n_options([r for r in rows if is_multiple_choice(r)])
    return stats.blind_baseline(mc) * len(mc) / len(rows) if mc else 0.0


def against_baseline(cell: Mapping, baseline: float) -> str:
    """Above / below / indistinguishable from the baseline, by the one rule on the score's 95% interval."""
    if not math.isfinite(baseline):
        return "no baseline"
    return stats.change_word(cell["lo"] - baseline, cell["hi"] - baseline, up="above baseline",
                             down="below baseline", level="not distinguishable from baseline")


def reading(cell: Mapping, baseline: float, rate: float) -> str:
    """The table's verdict for one benchmark and model: the letter-format refusal, or the baseline word."""
    return NO_LETTERS if not answers_in_letters(rate) else against_baseline(cell, baseline)


# --- one row per (benchmark, model) ----------------------------------------------------------------------


def _row(benchmark: str, model: str, cell: Mapping, baseline: float, baseline_kind: str, rate: float) -> dict:
    """The columns every results table shares, so MIMIC and multiple-choice rows stack into one table."""
    return {"benchmark": benchmark, "model": model, "n": cell["n"], "score": cell["score"], "lo": cell["lo"],
            "hi": cell["hi"], "baseline": baseline, "baseline_kind": baseline_kind, "parse_rate": rate,
            "reading": reading(cell, baseline, rate)}


def mimic_table(rows_by_model: Mapping[str, Rows], experiment: str = "images") -> pd.DataFrame:
    """Per model: each task of ``experiment`` (:func:`diagnosis.task_table`: score, interval, blind baseline),
    then :data:`MIMIC`, the mean over those tasks (bootstrapped within tasks) against the mean blind score."""
    lines = []
    for model, rows in rows_by_model.items():
        per_task = diagnosis.task_table(rows, experiment).to_dict(orient="records")
        mean = {"task": MIMIC, **diagnosis.cell_stats(diagnosis.select(rows, experiment))}
        lines += [_row(cell["task"], model, cell, cell["blind"], "blind", math.nan) for cell in (*per_task, mean)]
    return pd.DataFrame(lines).rename(columns={"benchmark": "task"})


def benchmark_row(benchmark: str, model: str, rows: Rows) -> dict:
    """Accuracy with its interval, chance and parse rate of one model on one benchmark."""
    return _row(benchmark, model, stats.estimate(rows, key=None), chance(rows), "chance", parse_rate(rows)["rate"])


def benchmark_table(rows_by_cell: Mapping[tuple[str, str], Rows],
                    not_run: Mapping[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """One row per (benchmark, model); a cell that did not run keeps its row, its reason as the reading."""
    table = [benchmark_row(label, model, rows) for (label, model), rows in rows_by_cell.items()]
    for (label, model), why in (not_run or {}).items():
        if (label, model) not in rows_by_cell:
            table.append({"benchmark": label, "model": model, "n": 0, "reading": why})
    return pd.DataFrame(table)


def results_table(mimic: pd.DataFrame, rows_by_cell: Mapping[tuple[str, str], Rows],
                  not_run: Mapping[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """Models × benchmarks in one long table: each model's MIMIC mean (from :func:`mimic_table`), then
    every multiple-choice benchmark (:func:`benchmark_table`)."""
    means = mimic[mimic["task"] == MIMIC].rename(columns={"task": "benchmark"})
    return pd.concat([means, benchmark_table(rows_by_cell, not_run)], ignore_index=True)


def sub_task_table(rows_by_cell: Mapping[tuple[str, str], Rows], key: str = "sub_task") -> pd.DataFrame:
    """The appendix: accuracy with interval, chance and parse rate per benchmark, sub-task and model."""
    table = []
    for (label, model), rows in rows_by_cell.items():
        for value in sorted({str(r.get(key)) for r in rows}):
            members = [r for r in rows if str(r.get(key)) == value]
            table.append({"sub_task": value, **benchmark_row(label, model, members)})
    return pd.DataFrame(table)


def collect(scores: Mapping[tuple[str, str], Mapping], ids: Mapping[str, set]) -> tuple[dict, dict]:
    """``(rows_by_cell, not_run)`` from ``evaluate_benchmark`` summaries keyed by (benchmark, model): the
    prediction rows of the questions loaded now (``ids`` per benchmark), or why the cell did not run."""
    rows_by_cell, not_run = {}, {}
    for (label, model), summary in scores.items():
        if summary.get("status") == "done":
            rows = read_predictions(Path(summary["predictions"]))
            rows_by_cell[(label, model)] = [r for r in rows if r["id"] in ids[label]]
        else:
            not_run[(label, model)] = f"{summary.get('status', 'not run')}: {summary.get('reason', '')}".strip(": ")
    return rows_by_cell, not_run


# --- paired comparisons --------------------------------------------------------------------------------------


def base_reference(benchmark: str, base: str, rows: Rows) -> dict:
    """The first model's accuracy on a benchmark as a reference condition, against chance."""
    cell = stats.estimate(rows, key=None)
    return stats.reference(f"{base} on {benchmark}", cell["score"], cell["lo"], cell["hi"], chance(rows), "chance")


def comparison_sentence(benchmark: str, base: str, model: str, diff: Mapping, rates: Mapping[str, float],
                        reference: Mapping | None = None) -> str:
    """The paired difference in words by the one rule; the letter-format refusal for either model; the floor
    sentence where the first model's accuracy (``reference``) is not above chance."""
    refusing = [m for m in (base, model) if not answers_in_letters(rates[m])]
    if refusing:
        who = "; ".join(f"{m} {NO_LETTERS} (parse rate {rates[m]:.2f})" for m in refusing)
        return f"{benchmark}, {model} vs {base}: {who}, so this is no transfer result."
    p_value = f" McNemar p = {diff['p_mcnemar']:.3g}." if "p_mcnemar" in diff and stats.above_baseline(reference) else ""
    return stats.change_sentence(f"{benchmark} score", base, model, diff, reference=reference) + p_value


def compare(benchmark: str, rows_by_model: Mapping[str, Rows], base: str, key: str | None = None) -> list[dict]:
    """Each other model against ``base`` on the same questions: the paired difference (other − base) with
    its interval and sentence (see :func:`comparison_sentence`)."""
    if base not in rows_by_model:
        return []
    rates = {m: parse_rate(rows)["rate"] for m, rows in rows_by_model.items()}
    found = []
    for model, rows in rows_by_model.items():
        if model == base:
            continue
        diff = stats.difference(rows_by_model[base], rows, key=key)
        reference = (diagnosis.reference_of(rows_by_model[base], base) if key else
                     base_reference(benchmark, base, rows_by_model[base]))
        found.append({"benchmark": benchmark, "base": base, "model": model, "paired": diff["paired"],
                      "n": diff["n_a"], "diff": diff["diff"], "lo": diff["lo"], "hi": diff["hi"],
                      "p_mcnemar": diff.get("p_mcnemar"),
                      "sentence": comparison_sentence(benchmark, base, model, diff, rates, reference)})
    return found


# --- two scorings of one benchmark -----------------------------------------------------------------------


def scoring_comparison(generated: Mapping[tuple[str, str], Sequence[Mapping]],
                       likelihood: Mapping[tuple[str, str], Sequence[Mapping]]) -> pd.DataFrame:
    """Per (benchmark, model) cell, the two scorings of the same multiple-choice questions side by side:
    letter generation (accuracy with its 95% interval, parse rate and :func:`reading`) and option likelihood
    (:mod:`mimic_utils.evaluation.likelihood`: accuracy with its interval and its reading against chance;
    its parse rate is 1), and the paired difference likelihood − generation on the questions both scored
    (``diff``, ``diff_lo``, ``diff_hi``)."""
    lines = []
    for key in sorted(set(generated) | set(likelihood)):
        gen, lik = generated.get(key, []), likelihood.get(key, [])
        line: dict[str, Any] = {"benchmark": key[0], "model": key[1]}
        for prefix, rows in (("generation", gen), ("likelihood", lik)):
            found = benchmark_row(*key, rows) if rows else {}
            line |= {f"{prefix}_{k}": found.get(k, math.nan) for k in ("n", "score", "lo", "hi")}
            line[f"{prefix}_reading"] = found.get("reading", "not run")
        line["chance"] = chance(gen or lik)
        line["parse_rate"] = parse_rate(gen)["rate"] if gen else math.nan
        shared = {r["id"] for r in gen} & {r["id"] for r in lik}
        if shared:
            diff = stats.difference([r for r in gen if r["id"] in shared], [r for r in lik if r["id"] in shared],
                                    paired=True, key=None)
            line |= {"diff": diff["diff"], "diff_lo": diff["lo"], "diff_hi": diff["hi"]}
        lines.append(line)
    return pd.DataFrame(lines)


# --- claim 10 --------------------------------------------------------------------------------------------------


def transfer_claim(benchmark: str, letter_rows: Mapping[str, Rows], base: str, tuned: str,
                   likelihood_rows: Mapping[str, Rows] | None = None) -> dict | None:
    """Claim 10: ``tuned − base`` accuracy on one multiple-choice benchmark, paired on the same questions.

    Scored by option likelihood where ``likelihood_rows`` holds both models' rows (``id`` and a 0/1
    ``score`` per question: whether the most likely option is the answer), else by the letter in the reply
    (``letter_rows``, guarded: a model below :data:`PARSE_FLOOR` makes the claim "not testable here
    (format)"). The reference condition is the base model's accuracy against chance (1 / options, read
    from the letter rows, which list the options); the other models' lines go in the notebook's findings.
    None when either model has no rows."""
    likelihood = likelihood_rows or {}
    by_likelihood = bool(likelihood.get(base)) and bool(likelihood.get(tuned))
    scored = likelihood if by_likelihood else letter_rows
    if not scored.get(base) or not scored.get(tuned):
        return None
    rates = {m: parse_rate(letter_rows.get(m, []))["rate"] for m in (base, tuned)}
    diff = stats.difference(scored[base], scored[tuned], paired=True, key=None)
    cell = stats.estimate(scored[base], key=None)
    options = {r["id"]: r for r in letter_rows.get(base, [])}
    baseline = chance([options.get(r["id"], r) for r in scored[base]])
    reference = stats.reference(f"{base} on {benchmark}", cell["score"], cell["lo"], cell["hi"], baseline, "chance")
    refusing = [m for m in (base, tuned) if not answers_in_letters(rates[m])]
    guard = stats.FORMAT if refusing and not by_likelihood else None
    how = ("scored by option likelihood (each option's log-probability given the prompt; the letter parse rate "
           "does not enter)" if by_likelihood else
           f"scored by the letter in the reply, read only when both models answer with a valid letter in at "
           f"least {PARSE_FLOOR:.0%} of replies")
    rate_text = ", ".join(f"{m} {r:.2f}" for m, r in rates.items() if math.isfinite(r))
    note = f"{how}; letter parse rate {rate_text or 'not measured'}"
    if guard:
        note += f"; {', '.join(refusing)} {NO_LETTERS}"
    return claim_entry("10", diff["diff"], diff["lo"], diff["hi"],
                       f"{benchmark} accuracy, {tuned} − {base} (same questions, paired; "
                       f"{'option likelihood' if by_likelihood else 'letter'} scoring)",
                       n=diff["n_a"], note=note, reference=reference, guard=guard)


__all__ = [
    "MIMIC", "NO_LETTERS", "PARSE_FLOOR", "against_baseline", "answers_in_letters", "base_reference", "benchmark_row",
    "benchmark_table", "chance", "collect", "compare", "comparison_sentence",
    "is_multiple_choice", "mimic_table", "parse_rate", "parsed_letter", "reading", "results_table",
    "scoring_comparison", "sub_task_table", "transfer_claim", "with_n_options",
]
