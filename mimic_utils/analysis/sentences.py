"""Every sentence the study generates, in one place: findings from contrasts, the attention fade, a benchmark row,
a claim's row, a claim's verdict in words, and the FLOPs saving. Notebooks print these and write them into
``metrics.json`` (``findings``), from which the report is composed.

Words follow the study's one rule (:func:`mimic_utils.analysis.stats.change_sentence`,
:func:`~mimic_utils.analysis.stats.change_word`): a direction only when the 95% interval excludes 0. This
module computes nothing: it words numbers computed elsewhere.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from mimic_utils.analysis import stats
from mimic_utils.analysis.stats import change_word, interval_text


# --- contrasts (notebooks 02, 04, 05) --------------------------------------------------------------------------


def paper_word(sign: int) -> str:
    """The paper's direction of a claim as the rule's word."""
    return "rises" if sign > 0 else "falls"


def finding(found: Mapping | None, expected: int | None = None) -> str | None:
    """One sentence from the one rule for words, with the paper's direction and the verdict if known."""
    if found is None:
        return None
    line = stats.change_sentence(found["subject"], found["a_label"], found["b_label"], found)
    if expected is None:
        return line
    verdict = stats.verdict(found["lo"], found["hi"], expected)
    return f"{line[:-1]}; the paper: {paper_word(expected)} (verdict: {verdict})."


# --- attention with depth (notebook 03) -----------------------------------------------------------------------


def fade_sentence(effect: dict, subject: str = "Image tokens' attention to other images") -> str:
    """One sentence from :func:`fade_effect` under the study's rule: a direction only when the interval
    of the change excludes 0."""
    word = change_word(effect["lo"], effect["hi"], up="rises", down="fades")
    first, last = effect["first_interval"], effect["last_interval"]
    return (f"{subject}, relative to uniform attention over the keys each token can see: "
            f"{effect['first_ratio']:.2f}× uniform [95% CI {first[0]:.2f}, {first[1]:.2f}] in the first third of "
            f"layers ({_layers(effect['first_layers'])}) and {effect['last_ratio']:.2f}× "
            f"[{last[0]:.2f}, {last[1]:.2f}] in the last third ({_layers(effect['last_layers'])}) — {word} with depth, "
            f"{interval_text(effect['effect'], effect['lo'], effect['hi'])} over {effect['n']} samples.")


def _layers(layers: Sequence[int]) -> str:
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}–{layers[-1]}"


# --- public benchmarks (notebook 06) --------------------------------------------------------------------------


def cell_sentence(row: Mapping) -> str:
    """One (benchmark, model) row in words: score with interval against its baseline, parse rate, reading."""
    if not row.get("n"):
        return f"{row['benchmark']}, {row['model']}: {row['reading']}."
    rate = "" if not math.isfinite(row["parse_rate"]) else f", parse rate {row['parse_rate']:.2f}"
    return (f"{row['benchmark']}, {row['model']}: {row['score']:.2f} [95% CI {row['lo']:.2f}, {row['hi']:.2f}], "
            f"n = {row['n']}, {row['baseline_kind']} {row['baseline']:.2f}{rate}: {row['reading']}.")


# --- the claims table (notebook 06 and the report) ------------------------------------------------------------

VERDICTS = ("reproduced", "opposite", "inconclusive", "missing")


def verdict_counts(rows: Sequence[Mapping]) -> str:
    """"2 reproduced, 1 opposite, 3 inconclusive, 3 missing" (every verdict named, zeros included)."""
    counts = Counter(row["verdict"] for row in rows)
    return ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)


def _effect_text(row: Mapping) -> str:
    if row.get("effect") is None:
        return "no value"
    return f"{row['effect']:+.3f} [95% CI {row['lo']:+.3f}, {row['hi']:+.3f}]"


def claim_sentence(row: Mapping) -> str:
    """One claim's row in words: its verdict, the effect with interval, and what was measured."""
    head = f"Claim {row['claim']}, \"{row['statement']}\": **{row['verdict']}**"
    if row["verdict"] == "missing":
        return f"{head}, {row['measure']}."
    note = f" ({row['note']})" if row.get("note") else ""
    return f"{head}; {row['measure']}: {_effect_text(row)}{note}."


def claims_sentences(rows: Sequence[Mapping]) -> list[str]:
    """The interpretation of the claims table: the verdict count, then one sentence per claim."""
    return [f"Of the paper's {len(rows)} claims this run finds {verdict_counts(rows)}.",
            *(claim_sentence(row) for row in rows)]


# --- a claim's verdict in words (notebooks 03, 05) ------------------------------------------------------------

#: How a verdict reads in a claim's sentence.
VERDICT_VERBS = {"reproduced": "reproduced", "opposite": "contradicted", "inconclusive": "not settled"}


def verdict_sentence(claim: str, verdict: str, where: str, because: Mapping[str, str]) -> str:
    """"Claim 6 is reproduced for organism: <because[verdict]>"; ``where`` is "for …" or "on …" and ``because``
    says, for each of reproduced / opposite / inconclusive, what that verdict means for this claim."""
    if verdict not in VERDICT_VERBS:
        raise ValueError(f"claim {claim}: verdict {verdict!r} is none of {list(VERDICT_VERBS)}")
    return f"Claim {claim} is {VERDICT_VERBS[verdict]} {where}: {because[verdict]}"


def attention_fade_meaning(verdict: str, model: str, samples: int) -> str:
    """Claim 6 (cross-image attention fades with depth) in words, for notebook 03."""
    return verdict_sentence("6", verdict, f"for {model}", {
        "reproduced": "measured against uniform attention over the same keys, image tokens look at the other images "
                      "less in the deep layers than in the early ones.",
        "opposite": "measured against uniform attention, image tokens look at the other images more in the deep "
                    "layers than in the early ones.",
        "inconclusive": f"the change with depth lies within the uncertainty of {samples} samples.",
    })


def masked_lora_meaning(verdict: str, model: str, questions: int, seeds: int) -> str:
    """Claim 8 (late-layer masking raises accuracy over unmasked LoRA) in words, for notebook 05."""
    return verdict_sentence("8", verdict, f"on {model}", {
        "reproduced": "with the same data, steps and seeds, masking the late layers raises the MIMIC mean over "
                      "unmasked LoRA.",
        "opposite": "with the same data, steps and seeds, masking the late layers lowers the MIMIC mean compared "
                    "with unmasked LoRA.",
        "inconclusive": f"the difference between masked and unmasked LoRA is within the uncertainty of {questions} "
                        f"questions and {seeds} seeds.",
    })


# --- compute (notebook 05, claim 9) ----------------------------------------------------------------------------


def flops_sentence(row: Mapping, shape: Mapping) -> str:
    """The analytic FLOPs saving of one row of :func:`mimic_utils.analysis.mask_flops.compute_table` at model
    size ``shape`` (e.g. :data:`~mimic_utils.analysis.mask_flops.LLAVA_OV_7B`), against the paper's figure."""
    return (f"At LLaVA-OV-7B size with {int(row['n_images'])} images of {shape['tokens_per_image']} tokens, masking "
            f"layers {shape['layers'] - shape['masked_layers']}–{shape['layers'] - 1} "
            f"saves {row['masked_layer_attention_saving']:.0%} of each masked layer's attention FLOPs, "
            f"{row['attention_saving']:.0%} of all attention FLOPs and {row['total_saving']:.1%} of the whole prefill "
            f"(the paper: about 81%, counting not stated).")


def forward_time_sentence(ratio: float) -> str:
    """The organism's measured masked / dense forward time, with how far to trust it."""
    return (f"On this machine the organism's masked forward took {ratio:.2f}× the dense time (median over image "
            "counts, one timing run on a shared machine: a rough ratio); at the organism's size attention is a small "
            "part of each layer's work.")
