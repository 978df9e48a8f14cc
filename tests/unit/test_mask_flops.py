"""The mask's analytic compute: query-key pairs per layer and the FLOPs table at LLaVA-OneVision size."""

from __future__ import annotations

from mimic_utils.analysis import mask_flops
from mimic_utils.models import masking


def test_attention_pairs_follow_the_mask_semantics():
    # 2 images of 3 tokens, 1 text token before and 2 after: dense causal over 9 tokens
    assert mask_flops.attention_pairs([3, 3], 1, 2, masked=False) == 45
    # masked: text before 1; images 6 + 6; text after sees everything before it: 8 + 9
    assert mask_flops.attention_pairs([3, 3], 1, 2, masked=True) == 1 + 12 + 17
    assert mask_flops.attention_pairs([5], 1, 2, masked=True) == mask_flops.attention_pairs([5], 1, 2, masked=False)


def test_compute_table_at_llava_onevision_size_saves_most_masked_attention():
    shape = {k: v for k, v in mask_flops.LLAVA_OV_7B.items() if k not in ("tokens_per_image",)}
    table = mask_flops.compute_table([2, 8], tokens_per_image=730, **shape)
    eight = table.set_index("n_images").loc[8]
    assert 0.85 < eight["masked_layer_attention_saving"] < 0.88  # close to 1 - 1/8
    assert eight["attention_saving"] < eight["masked_layer_attention_saving"]  # half the layers masked
    assert eight["total_saving"] < eight["attention_saving"]


def test_time_forward_times_dense_and_masked_per_image_count(tmp_path, single_thread):
    from eval_worker import make_records, tiny_qwen_adapter

    records = make_records(tmp_path, 3)  # 1, 2 and 3 images
    adapter = tiny_qwen_adapter()
    layers = masking.resolve_layers("second_half", masking.num_text_layers(adapter.model))
    table = mask_flops.time_forward(adapter, records, [2, 3, 7], layers, repeats=1, batch=2)
    assert list(table["n_images"]) == [2, 3]  # 7 images: no such question, skipped
    assert (table["batch"] == 2).all() and (table["masked_over_dense"] > 0).all()


def test_flop_counter_counts_what_the_masked_layer_computes():
    from mimic_utils.analysis import stats

    found = mask_flops.attention_flops(images=3, tokens=20, text=10, heads=4, kv_heads=2, head_dim=8)
    flops = found["flops"]
    # dense causal SDPA on the math path: scores and weighted values over all 70 × 70 pairs, 4 heads of 8
    assert flops["dense_causal"] == 2 * 2 * 4 * 70 * 70 * 8
    # blockwise: each image's own 20 × 20 block, the 10 text rows over all 70 keys
    assert flops["masked_blockwise"] == 2 * 2 * 4 * (3 * 20 * 20 + 10 * 70) * 8
    assert found["saving"] == 1 - (3 * 400 + 700) / 4900
    # the dense masking mode computes every pair and masks afterwards: no saving counted
    assert found["dense_mode_saving"] == 0
    assert isinstance(found["fused_kernel_counted"], bool)
    entry = mask_flops.compute_claim(ANALYTIC_ROW, found, {"saving": 0.6, "lo": 0.5, "hi": 0.7, "masked_over_dense": 0.4,
                                                        "repeats": 5, "device": "cpu"})
    assert entry["verdict"] == "reproduced" and [p["verdict"] for p in entry["parts"]] == ["reproduced"] * 2
    slower = mask_flops.compute_claim(ANALYTIC_ROW, found, {"saving": -0.12, "lo": -0.2, "hi": -0.05,
                                                         "masked_over_dense": 1.12, "repeats": 5, "device": "cpu"})
    assert [p["verdict"] for p in slower["parts"]] == ["reproduced", "opposite"] and slower["verdict"] == "inconclusive"
    only_formula = mask_flops.compute_claim(ANALYTIC_ROW)
    assert only_formula["verdict"] == stats.ANALYTIC and "81%" in only_formula["note"]


ANALYTIC_ROW = {"n_images": 10, "masked_layer_attention_saving": 0.893, "attention_saving": 0.447, "total_saving": 0.045}


def test_attention_time_pairs_dense_and_masked_repeats():
    found = mask_flops.attention_time(images=2, tokens=16, text=4, heads=2, kv_heads=1, head_dim=8, repeats=3, n_boot=200)
    assert len(found["seconds"]["dense_causal"]) == len(found["seconds"]["masked_blockwise"]) == 3
    assert found["lo"] <= found["saving"] <= found["hi"] and found["saving"] == 1 - found["masked_over_dense"]


def test_forward_flops_of_the_model_dense_and_masked(tmp_path, single_thread):
    from eval_worker import make_records, tiny_qwen_adapter

    records = make_records(tmp_path, 3)
    adapter = tiny_qwen_adapter()
    second_half = masking.resolve_layers("second_half", masking.num_text_layers(adapter.model))
    found = mask_flops.forward_flops(adapter, records, 3, second_half)
    assert found["masked"]["total"] < found["dense"]["total"] and found["masked_layers"] == [1]
    assert 0 < found["total_saving"] < found["attention_saving"] < 1
    assert found["dense"]["total"] - found["masked"]["total"] == found["dense"]["attention"] - found["masked"]["attention"]
