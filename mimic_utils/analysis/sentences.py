"""Every sentence the study generates, in one place: findings from contrasts, the attention fade, a benchmark row,
a claim's row, a claim's verdict in words, and the FLOPs saving. Notebooks print these and write them into
``metrics.json`` (``findings``), from which the report is composed.

Words follow the study's one rule (:func:`mimic_utils.analysis.stats.change_sentence`,
:func:`~mimic_utils.analysis.stats.change_word`): a direction only when the 95% interval excludes 0, and only
where the reference condition lies above its baseline (otherwise the floor guard's sentence,
:func:`~mimic_utils.analysis.stats.floor_sentence`). This module computes nothing: it words numbers computed elsewhere.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from mimic_utils.analysis import stats
from mimic_utils.analysis.claims import effect_cell, parts_text
from mimic_utils.analysis.stats import above_baseline, change_word, floor_sentence, interval_text, reference


# --- contrasts (notebooks 02, 04, 05) --------------------------------------------------------------------------


def paper_word(sign: int) -> str:
    """The paper's direction of a claim as the rule's word."""
    return "rises" if sign > 0 else "falls"


def finding(found: Mapping | None, expected: int | None = None) -> str | None:
    """One sentence from the one rule for words (the floor sentence where the contrast's reference condition
    is not above its blind baseline), with the paper's direction and the verdict if known."""
    if found is None:
        return None
    line = stats.change_sentence(found["subject"], found["a_label"], found["b_label"], found,
                                 reference=found.get("reference"))
    if expected is None:
        return line
    return f"{line[:-1]}; the paper: {paper_word(expected)} (verdict: {stats.contrast_verdict(found, expected)})."


# --- attention with depth (notebook 03) -----------------------------------------------------------------------


def fade_reference(effect: Mapping) -> dict:
    """Claim 6's reference condition from :func:`mimic_utils.analysis.attention.fade_effect`: the ratio to
    uniform attention in the first third of the layers, which must lie above 1 (uniform) for a fade from it
    to mean anything."""
    first, layers = effect["first_interval"], effect["first_layers"]
    return reference(f"ratio to uniform attention in {_layers(layers)}", effect["first_ratio"], first[0], first[1],
                     1.0, "uniform attention")


def fade_sentence(effect: dict, subject: str = "Image tokens' attention to other images") -> str:
    """One sentence from :func:`mimic_utils.analysis.attention.fade_effect` under the study's rule: a direction
    only when the interval of the change excludes 0, and only when the first third's ratio lies above
    uniform attention (the floor guard: :func:`fade_reference`)."""
    if not above_baseline(fade_reference(effect)):
        return floor_sentence(subject, fade_reference(effect), {"diff": effect["effect"], **effect})
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

VERDICTS = stats.VERDICTS


def verdict_counts(rows: Sequence[Mapping]) -> str:
    """"2 reproduced, 1 opposite, 3 inconclusive, 1 not testable here (floor), …, 1 missing" (every verdict
    named, zeros included)."""
    counts = Counter(row["verdict"] for row in rows)
    return ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)


def claim_sentence(row: Mapping) -> str:
    """One claim's row in words: its verdict, the effect with interval (and blind-adjusted), the reference
    condition against its baseline, its parts, and what was measured."""
    head = f"Claim {row['claim']}, \"{row['statement']}\": **{row['verdict']}**"
    if row["verdict"] == stats.MISSING:
        return f"{head}, {row['measure']}."
    ref = row.get("reference")
    ref_text = "" if not ref else f"; reference condition {stats.reference_text(ref)}"
    parts = f"; parts: {parts_text(row['parts'])}" if row.get("parts") else ""
    note = f" ({row['note']})" if row.get("note") else ""
    return f"{head}; {row['measure']}: {effect_cell(row, sentence=True)}{ref_text}{parts}{note}."


def claims_sentences(rows: Sequence[Mapping]) -> list[str]:
    """The interpretation of the claims table: the verdict count, then one sentence per claim."""
    return [f"Of the paper's {len(rows)} claims this run finds {verdict_counts(rows)}.",
            *(claim_sentence(row) for row in rows)]


# --- a claim's verdict in words (notebooks 03, 05) ------------------------------------------------------------

#: How a verdict reads in a claim's sentence.
VERDICT_VERBS = {"reproduced": "reproduced", "opposite": "contradicted", "inconclusive": "not settled",
                 stats.FLOOR: "not testable"}


def verdict_sentence(claim: str, verdict: str, where: str, because: Mapping[str, str]) -> str:
    """"Claim 6 is reproduced for organism: <because[verdict]>"; ``where`` is "for …" or "on …" and ``because``
    says, for each of reproduced / opposite / inconclusive / not testable here (floor), what that verdict means
    for this claim."""
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
        stats.FLOOR: "in the first third of the layers image tokens attend to the other images no more than uniform "
                     "attention would, so there is no cross-image attention to fade.",
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
        stats.FLOOR: "unmasked LoRA does not score above the blind baseline, so there is no multi-image skill for "
                     "the mask to add to.",
    })


# --- compute (notebook 05, claim 9) ----------------------------------------------------------------------------


def flops_sentence(row: Mapping, shape: Mapping) -> str:
    """The analytic FLOPs saving (the formula beside claim 9's measurements) of one row of
    :func:`mimic_utils.analysis.mask_flops.compute_table` at model size ``shape`` (e.g. :data:`~mimic_utils.analysis.mask_flops.LLAVA_OV_7B`), against the paper's figure."""
    return (f"At LLaVA-OV-7B size with {int(row['n_images'])} images of {shape['tokens_per_image']} tokens, masking "
            f"layers {shape['layers'] - shape['masked_layers']}–{shape['layers'] - 1} "
            f"saves {row['masked_layer_attention_saving']:.0%} of each masked layer's attention FLOPs, "
            f"{row['attention_saving']:.0%} of all attention FLOPs and {row['total_saving']:.1%} of the whole prefill "
            f"(the paper: about 81%, counting not stated).")


def measured_compute_sentence(measured: Mapping, verdict: str) -> str:
    """Claim 9 as measured (:func:`mimic_utils.analysis.mask_flops.measure_compute`): one masked layer's
    attention FLOPs counted and its time against the dense causal layer, and the claim's verdict."""
    counted, timed = measured["attention_flops"], measured["attention_time"]
    layout = counted["layout"]
    saving = interval_text(timed["saving"], timed["lo"], timed["hi"])
    return (f"Measured at {layout['images']} images × {layout['tokens_per_image']} tokens, one masked layer's "
            f"attention executes {counted['saving']:.0%} fewer FLOPs than the dense causal layer (FlopCounterMode) and "
            f"takes {timed['masked_over_dense']:.2f}× its time, saving {saving} on this machine; claim 9: {verdict}.")


def forward_time_sentence(ratio: float, flops_saving: float) -> str:
    """The organism's measured masked / dense forward time and its counted FLOPs saving, with how far to
    trust the time."""
    return (f"On this machine the organism's masked forward took {ratio:.2f}× the dense time (median over image "
            f"counts, one timing run on a shared machine: a rough ratio) for {flops_saving:.1%} fewer FLOPs in all; "
            "at the organism's size attention is a small part of each layer's work.")
