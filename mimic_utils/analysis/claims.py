"""The paper's claims, in the paper's direction, and how a notebook records its measurement of one.

Each notebook that measures a claim writes an entry into its ``metrics.json`` under ``"claims"``
(:func:`claim_entry`); notebook 06 gathers them into the claims table of ``REPORT.md``
(:func:`claims_table`). The verdict always comes from :func:`mimic_utils.analysis.stats.verdict`: **reproduced**
when the 95% interval of the effect excludes 0 in the claimed direction, **opposite** when it excludes 0
the other way, **inconclusive** otherwise. A claim nobody measured stays in the table, marked missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mimic_utils.analysis.stats import verdict

#: claim id → (the claim in the paper's direction, the sign of the effect that supports it, notebook).
CLAIMS: dict[str, tuple[str, int, str]] = {
    "1": ("Accuracy falls as images are added (like-for-like task set)", -1, "02"),
    "2": ("Shortening the vision sequence by 1D pooling raises accuracy on many-image inputs "
          "(length effect: pooling gain at n images minus at 1 image)", +1, "02"),
    "3": ("Spreading a fixed count over more images (same image count) lowers counting accuracy", -1, "02"),
    "4": ("Distractor images lower accuracy", -1, "02"),
    "5": ("More query concepts (k) lower accuracy", -1, "02"),
    "6": ("Cross-image attention is strong in early layers and fades in deep layers "
          "(against uniform attention)", -1, "03"),
    "7": ("Data-centric finetuning raises MIMIC accuracy", +1, "04"),
    "8": ("Masking image tokens to their own image in the late layers raises accuracy over unmasked LoRA "
          "(same data, steps, seeds)", +1, "05"),
    "9": ("Masking cuts compute (analytic FLOPs saving of the masked layers' attention)", +1, "05"),
}


def claim_entry(claim: str, effect: float, lo: float, hi: float, measure: str, n: int | None = None,
                note: str = "") -> dict:
    """What a notebook writes for one claim: the effect, its 95% interval, what was measured, the verdict.

    ``measure`` says in words what ``effect`` is (e.g. "four-task mean at 10 images − at 1 image").
    """
    if claim not in CLAIMS:
        raise KeyError(f"unknown claim {claim!r}; known: {sorted(CLAIMS)}")
    sign = CLAIMS[claim][1]
    finite = all(math.isfinite(v) for v in (effect, lo, hi))
    return {"claim": claim, "effect": effect, "lo": lo, "hi": hi, "measure": measure, "n": n, "note": note,
            "verdict": verdict(lo, hi, sign) if finite else "inconclusive"}


def claims_table(metrics: Mapping[str, Mapping | None]) -> list[dict]:
    """One row per claim, from every notebook's ``metrics.json`` (keyed by notebook folder or number);
    a claim no notebook measured is kept with verdict "missing" and the notebook that should measure it."""
    found: dict[str, dict] = {}
    for data in metrics.values():
        for key, entry in ((data or {}).get("claims") or {}).items():
            found[str(key)] = entry
    rows = []
    for claim, (text, sign, notebook) in CLAIMS.items():
        entry = found.get(claim)
        if entry is None:
            rows.append({"claim": claim, "statement": text, "effect": None, "lo": None, "hi": None,
                         "measure": f"not measured (notebook {notebook} wrote no entry)", "verdict": "missing"})
        else:
            rows.append({"claim": claim, "statement": text, **{k: entry.get(k) for k in
                                                                ("effect", "lo", "hi", "measure", "n", "note")},
                         "verdict": entry["verdict"]})
    return rows


def claims_markdown(rows: list[dict]) -> str:
    """The claims table as Markdown (REPORT.md, the README and notebook 06's last cell)."""
    lines = ["| # | claim (paper's direction) | measured effect [95% CI] | what was measured | verdict |",
             "|---|---|---|---|---|"]
    for row in rows:
        effect = ("—" if row["effect"] is None else
                  f"{row['effect']:+.3f} [{row['lo']:+.3f}, {row['hi']:+.3f}]")
        lines.append(f"| {row['claim']} | {row['statement']} | {effect} | {row['measure']} | **{row['verdict']}** |")
    return "\n".join(lines) + "\n"


__all__ = ["CLAIMS", "claim_entry", "claims_markdown", "claims_table"]
