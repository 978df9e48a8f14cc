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
