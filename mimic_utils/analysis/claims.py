"""The paper's claims, in the paper's direction, and how a notebook records its measurement of one.

Each notebook that measures a claim writes an entry into its ``metrics.json`` under ``"claims"``
(:func:`claim_entry`); notebook 06 gathers them into the claims table of ``REPORT.md``
(:func:`claims_table`), which **re-reads every verdict** from the entry's numbers with the one rule
(:func:`mimic_utils.analysis.stats.verdict`), so a table built today from older metrics follows today's rule:

* **analytic, not measured** — only a formula stands behind the number (claim 9 before its measurement);
* **not testable here (floor)** — the claim's *reference condition* (:attr:`Claim.reference`, the condition
  that must be above what a model ignoring the images scores for the effect to mean anything) does not lie
  above its blind baseline, chance or uniform attention, its 95% interval excluding it;
* **not testable here (format)** — a multiple-choice letter score of a model that rarely answers with a
  letter (claim 10);
* otherwise the 95% interval of the effect — **blind-adjusted** (score − blind, same resample) where the
  two ends hold different questions — gives **reproduced**, **opposite** or **inconclusive**.

A claim read in parts (claim 5: counting and listing; claim 2: two pooling factors; claim 9: FLOPs and
time) combines its parts' verdicts (:func:`mimic_utils.analysis.stats.combine_verdicts`): reproduced only when every
part is. A claim nobody measured, or whose entry lacks a number the rule needs, is **missing**, with the
notebook or the metrics key named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mimic_utils.analysis import stats


@dataclass(frozen=True)
class Claim:
    """One claim of the paper as the study reads it."""

    statement: str
    sign: int
    """+1 when the paper's direction is a rise of the effect, −1 a fall."""
    notebook: str
    reference: str | None
    """The reference condition the floor guard reads, in words (None: no floor, e.g. a compute claim)."""
    reading: str
    """How the verdict is read, in words (for the docs and the report)."""
    needs: tuple[str, ...] = ("reference",)
    """The entry keys (in the entry or in every part) without which its verdict cannot be read."""
    without: str = stats.MISSING
    """The verdict of an entry that lacks them: "missing", or for claim 9 "analytic, not measured" (an
    entry without measured parts holds only the formula)."""


#: claim id → the claim, its direction, notebook, reference condition and reading.
CLAIMS: dict[str, Claim] = {
    "1": Claim("Accuracy falls as images are added (like-for-like task set)", -1, "02",
               "the four-task mean at 1 image, against its blind baseline",
               "four-task mean at the most images − at 1 image, read on score − blind (the answers' "
               "distribution, and so the blind baseline, changes with the image count)"),
    "2": Claim("Shortening the vision sequence by 1D pooling raises accuracy on many-image inputs", +1, "02",
               "the four-task mean at 1 image without pooling (the skill shortening could recover), against "
               "its blind baseline",
               "pooling gain at the most images (score at r − at r = 1, same questions) at the largest r keeping "
               ">= 4 vision tokens per image and at r = 2, reproduced only if both are; the length effect "
               "(that gain minus the gain at 1 image) is a second line, not the verdict"),
    "3": Claim("Spreading a fixed count over more images (same image count) lowers counting accuracy", -1, "02",
               "counting accuracy at spread 1, against its blind baseline",
               "counting accuracy at the widest spread − at spread 1, read on score − blind"),
    "4": Claim("Distractor images lower accuracy", -1, "02",
               "counting accuracy with 0 distractors, against its blind baseline",
               "counting accuracy with the most distractors − with none, read on score − blind where the "
               "questions differ"),
    "5": Claim("More query concepts (k) lower accuracy", -1, "02",
               "counting and listing at k = 1 on one image, each against its blind baseline",
               "counting and listing each read apart (k = largest − k = 1, one image, score − blind); reproduced "
               "only if both are; every k of both curves in the note"),
    "6": Claim("Cross-image attention is strong in early layers and fades in deep layers "
               "(against uniform attention)", -1, "03",
               "image tokens' attention to other images in the first third of the layers, against uniform "
               "attention (ratio 1)",
               "ratio to uniform attention, last third of the layers − first third, bootstrap over samples"),
    "7": Claim("Data-centric finetuning raises MIMIC accuracy", +1, "04",
               "the base model's MIMIC mean over tasks, against its blind baseline",
               "MIMIC mean over tasks, finetuned − base, paired on the same questions"),
    "8": Claim("Masking image tokens to their own image in the late layers raises accuracy over unmasked LoRA "
               "(same data, steps, seeds)", +1, "05",
               "unmasked LoRA's MIMIC mean over tasks (seed-averaged), against its blind baseline",
               "MIMIC mean over tasks, masked − unmasked, paired; the interval resamples seeds and questions"),
    "9": Claim("Masking cuts compute", +1, "05", None,
               "measured: FLOPs of the masked attention counted by FlopCounterMode and its time, each "
               "against the dense attention; reproduced only if both are; an analytic figure alone is "
               "'analytic, not measured'", needs=("parts",), without=stats.ANALYTIC),
    "10": Claim("Finetuning with the remedies raises accuracy on other multi-image benchmarks "
                "(out-of-distribution multiple choice)", +1, "06",
                "the base model's accuracy on that benchmark, against chance",
                "accuracy of the finetuned model − the base model, paired; scored by option likelihood where "
                "present, else by the letter in the reply, guarded by the parse rate"),
    "11": Claim("Longer vision sequences alone lower accuracy (the target image plus blank images, "
                "same questions)", -1, "02",
                "the 1-image questions without padding, against their blind baseline",
                "score with the most blank images − with none, paired on the same questions"),
}


def claim_entry(claim: str, effect: float, lo: float, hi: float, measure: str, n: int | None = None,
                note: str = "", reference: Mapping | None = None, adjusted: Mapping | None = None,
                parts: Sequence[Mapping] | None = None, analytic: bool = False, guard: str | None = None) -> dict:
    """What a notebook writes for one claim: the effect, its 95% interval, what was measured, and what the
    rule needs to read it — its ``reference`` condition (:func:`mimic_utils.analysis.stats.reference`), the
    ``adjusted`` effect on score − blind (``{diff, lo, hi, blind_a, blind_b}``), its ``parts`` (entries of
    :func:`part`), ``analytic`` for a formula, ``guard`` for a verdict a guard decided before the interval
    (e.g. :data:`mimic_utils.analysis.stats.FORMAT`). The verdict is :func:`entry_verdict` of the result.

    ``measure`` says in words what ``effect`` is (e.g. "four-task mean at 10 images − at 1 image").
    """
    if claim not in CLAIMS:
        raise KeyError(f"unknown claim {claim!r}; known: {sorted(CLAIMS, key=int)}")
    entry = {"claim": claim, "effect": effect, "lo": lo, "hi": hi, "measure": measure, "n": n, "note": note}
    if reference is not None:
        entry["reference"] = dict(reference)
    if adjusted is not None:
        entry["adjusted"] = {k: adjusted[k] for k in ("diff", "lo", "hi", "blind_a", "blind_b") if k in adjusted}
    if parts is not None:
        entry["parts"] = [dict(p) for p in parts]
    if analytic:
        entry["analytic"] = True
    if guard is not None:
        entry["guard"] = guard
    entry["verdict"] = entry_verdict(entry, CLAIMS[claim].sign)
    return entry


def part(name: str, found: Mapping, sign: int, reference: Mapping | None = None, guard: str | None = None) -> dict:
    """One part of a claim read in parts: its effect (a :func:`mimic_utils.analysis.stats.difference`-like mapping,
    with ``adjusted`` where formed), reference condition and verdict."""
    entry = {"name": name, "effect": found["diff"], "lo": found["lo"], "hi": found["hi"]}
    if found.get("adjusted"):
        entry["adjusted"] = {k: found["adjusted"][k] for k in ("diff", "lo", "hi", "blind_a", "blind_b")}
    if reference is not None:
        entry["reference"] = dict(reference)
    if guard is not None:
        entry["guard"] = guard
    entry["verdict"] = entry_verdict(entry, sign)
    return entry


def _finite(*values: object) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def entry_verdict(entry: Mapping, sign: int) -> str:
    """The verdict of an entry (or a part) by the one rule: its ``guard`` if a guard decided it; analytic;
    the combined verdict of its parts; else :func:`mimic_utils.analysis.stats.verdict` on the blind-adjusted interval
    where there is one, guarded by the reference condition."""
    if entry.get("guard"):
        return entry["guard"]
    if entry.get("analytic"):
        return stats.ANALYTIC
    if entry.get("parts"):
        return stats.combine_verdicts([entry_verdict(p, sign) for p in entry["parts"]])
    lo, hi = stats.read_interval(entry)
    if not _finite(lo, hi):
        return stats.INCONCLUSIVE if stats.above_baseline(entry.get("reference")) else stats.FLOOR
    return stats.verdict(lo, hi, sign, reference=entry.get("reference"))


def _has(entry: Mapping, key: str) -> bool:
    """Whether an entry holds ``key`` itself or in every one of its parts (a guard's verdict needs nothing)."""
    parts = entry.get("parts")
    return bool(entry.get("guard")) or key in entry or bool(parts) and all(key in p for p in parts)


def _missing_row(claim: str, spec: Claim, why: str) -> dict:
    return {"claim": claim, "statement": spec.statement, "effect": None, "lo": None, "hi": None, "measure": why,
            "verdict": stats.MISSING}


def table_row(claim: str, entry: Mapping | None) -> dict:
    """One claims-table row from a notebook's entry, its verdict re-read by today's rule; "missing" with the
    notebook named when there is no entry, or with the metrics key named when the rule needs one it lacks."""
    spec = CLAIMS[claim]
    if entry is None:
        return _missing_row(claim, spec, f"not measured (notebook {spec.notebook} wrote no entry)")
    lacking = [key for key in spec.needs if not _has(entry, key)]
    if lacking:
        keys = ", ".join(f"claims.{claim}.{key}" for key in lacking)
        why = (f"notebook {spec.notebook}'s metrics.json lacks {keys}, which the rule reads (written by a notebook "
               f"older than the rule: rerun it)")
        if spec.without != stats.MISSING:
            return {**table_row_fields(claim, entry), "note": f"{why}; {entry.get('note', '')}".rstrip("; "),
                    "verdict": spec.without}
        return _missing_row(claim, spec, f"{why}; it measured {entry.get('measure')}: "
                                         f"{stats.interval_text(entry['effect'], entry['lo'], entry['hi'])}"
                            if _finite(entry.get("effect"), entry.get("lo"), entry.get("hi")) else why)
    return {**table_row_fields(claim, entry), "verdict": entry_verdict(entry, spec.sign)}


def table_row_fields(claim: str, entry: Mapping) -> dict:
    """A claims-table row's fields from an entry, without the verdict."""
    return {"claim": claim, "statement": CLAIMS[claim].statement,
            **{k: entry.get(k) for k in ("effect", "lo", "hi", "measure", "n", "note", "reference", "adjusted",
                                         "parts", "analytic")}}


def claims_table(metrics: Mapping[str, Mapping | None]) -> list[dict]:
    """One row per claim, from every notebook's ``metrics.json`` (keyed by notebook folder or number)."""
    found: dict[str, Mapping] = {}
    for data in metrics.values():
        for key, entry in ((data or {}).get("claims") or {}).items():
            found[str(key)] = entry
    return [table_row(claim, found.get(claim)) for claim in CLAIMS]


def effect_cell(row: Mapping, sentence: bool = False) -> str:
    """The effect with its interval and the blind-adjusted one beside it: terse for the table's column, in
    words for a sentence (``sentence``)."""
    if row.get("effect") is None:
        return "no value" if sentence else "—"
    ci = "95% CI " if sentence else ""
    text = f"{row['effect']:+.3f} [{ci}{row['lo']:+.3f}, {row['hi']:+.3f}]"
    adjusted = row.get("adjusted")
    if adjusted:
        label = (f"on score − blind (blind {adjusted['blind_a']:.2f} → {adjusted['blind_b']:.2f}), the one the "
                 "verdict reads:" if sentence else "− blind:")
        text += f"; {label} {adjusted['diff']:+.3f} [{ci}{adjusted['lo']:+.3f}, {adjusted['hi']:+.3f}]"
    return text


def reference_cell(row: Mapping) -> str:
    """The table's reference column: the reference condition's score and its baseline, or its parts'."""
    refs = [row["reference"]] if row.get("reference") else [p["reference"] for p in row.get("parts") or []
                                                          if p.get("reference")]
    return "; ".join(stats.reference_text(r) for r in refs) or "—"


def claims_markdown(rows: list[dict]) -> str:
    """The claims table as Markdown (REPORT.md, the README and notebook 06's last cell)."""
    lines = ["| # | claim (paper's direction) | measured effect [95% CI] | reference condition [95% CI], baseline "
             "| what was measured | verdict |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['claim']} | {row['statement']} | {effect_cell(row)} | {reference_cell(row)} "
                     f"| {row['measure']} | **{row['verdict']}** |")
    return "\n".join(lines) + "\n"


def parts_text(parts: Sequence[Mapping]) -> str:
    """"counting: -0.34 [95% CI …] (reproduced); listing: …" for a claim's parts."""
    out = []
    for p in parts:
        adjusted = p.get("adjusted")
        value, lo, hi = (adjusted["diff"], adjusted["lo"], adjusted["hi"]) if adjusted else (p["effect"], p["lo"], p["hi"])
        out.append(f"{p['name']}: {stats.interval_text(value, lo, hi)}{' on score − blind' if adjusted else ''} "
                   f"({p['verdict']})")
    return "; ".join(out)


__all__ = ["CLAIMS", "Claim", "claim_entry", "claims_markdown", "claims_table", "effect_cell", "entry_verdict",
           "part", "parts_text", "reference_cell", "table_row", "table_row_fields"]
