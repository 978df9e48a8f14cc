"""The study's generated sentences: a verdict in words per claim, and claim 9's FLOPs saving with its sentence."""

from __future__ import annotations

import pytest

from mimic_utils.analysis import mask_flops, sentences


def test_a_verdict_reads_as_reproduced_contradicted_or_not_settled():
    assert sentences.attention_fade_meaning("opposite", "organism", 64).startswith(
        "Claim 6 is contradicted for organism: measured against uniform attention, image tokens look at the other "
        "images more")
    assert sentences.attention_fade_meaning("inconclusive", "organism", 64).endswith("uncertainty of 64 samples.")
    assert sentences.masked_lora_meaning("reproduced", "organism", 150, 3).startswith("Claim 8 is reproduced on organism:")
    assert sentences.masked_lora_meaning("inconclusive", "organism", 150, 3).endswith(
        "within the uncertainty of 150 questions and 3 seeds.")
    with pytest.raises(ValueError, match="claim 8: verdict 'missing'"):
        sentences.masked_lora_meaning("missing", "organism", 150, 3)


def test_claim_9_from_the_formula_alone_is_analytic_and_its_sentences_word_the_numbers():
    flops = mask_flops.compute_table([2, 10], **mask_flops.LLAVA_OV_7B)
    claim, sentence = mask_flops.flops_claim(flops)
    saving = float(flops.iloc[-1]["masked_layer_attention_saving"])
    assert claim["claim"] == "9" and claim["effect"] == claim["lo"] == claim["hi"] == saving
    assert claim["verdict"] == "analytic, not measured" and claim["measure"].endswith("LLaVA-OV-7B size, 10 images)")
    assert sentence.startswith("At LLaVA-OV-7B size with 10 images of 730 tokens, masking layers 14–27 saves ")
    assert sentences.forward_time_sentence(1.034, 0.0123).startswith(
        "On this machine the organism's masked forward took 1.03× the dense time")
    assert "for 1.2% fewer FLOPs in all" in sentences.forward_time_sentence(1.034, 0.0123)
    measured = {"attention_flops": {"layout": {"images": 8, "tokens_per_image": 730}, "saving": 0.81},
                "attention_time": {"masked_over_dense": 0.5, "saving": 0.5, "lo": 0.4, "hi": 0.6}}
    line = sentences.measured_compute_sentence(measured, "reproduced")
    assert line.startswith("Measured at 8 images × 730 tokens, one masked layer's attention executes 81% fewer FLOPs")
    assert line.endswith("claim 9: reproduced.")


def test_a_floor_verdict_has_its_own_meaning():
    assert sentences.attention_fade_meaning("not testable here (floor)", "ov", 40).startswith(
        "Claim 6 is not testable for ov: in the first third of the layers")
    assert sentences.masked_lora_meaning("not testable here (floor)", "si", 150, 3).startswith(
        "Claim 8 is not testable on si: unmasked LoRA does not score above the blind baseline")
