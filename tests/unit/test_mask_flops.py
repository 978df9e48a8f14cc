"""The mask's analytic compute: query-key pairs per layer and the FLOPs table at LLaVA-OneVision size."""

from __future__ import annotations

import pytest

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


def test_time_forward_reports_the_median_forward_time_dense_and_masked(tmp_path, single_thread, monkeypatch):
    """A clock that only the model's forward advances, by known durations: the table must report each phase's
    median forward time, their ratio, the batch it was asked for and the masked layers (the second half)."""
    from contextlib import contextmanager

    from eval_worker import make_records, tiny_qwen_adapter

    adapter = tiny_qwen_adapter()
    records = make_records(tmp_path, 3)  # 1, 2 and 3 images
    layers = masking.resolve_layers("second_half", masking.num_text_layers(adapter.model))
    durations = {"dense": [0.5, 0.1, 0.2], "masked": [0.05, 0.4, 0.1]}  # medians 0.2 and 0.1, means not
    state = {"phase": "dense", "now": 0.0, "calls": [], "masked_layers": []}
    real_blocks = mask_flops.image_blocks

    @contextmanager
    def watched_blocks(block_ids, layers, *args, **kwargs):
        state["phase"] = "masked"
        state["masked_layers"].append(list(layers))
        with real_blocks(block_ids, layers, *args, **kwargs) as blocks:
            yield blocks
        state["phase"] = "dense"

    def advance(module, args, kwargs, output):
        phase = state["phase"]
        done = sum(1 for p, _ in state["calls"] if p == phase) % 3
        state["now"] += durations[phase][done]
        state["calls"].append((phase, kwargs["input_ids"].shape[0]))

    monkeypatch.setattr(mask_flops, "image_blocks", watched_blocks)
    monkeypatch.setattr(mask_flops.time, "perf_counter", lambda: state["now"])
    hook = adapter.model.register_forward_hook(advance, with_kwargs=True)
    try:
        table = mask_flops.time_forward(adapter, records, [2, 3, 7], layers, repeats=3, batch=2)
    finally:
        hook.remove()
    assert list(table["n_images"]) == [2, 3]  # 7 images: no such question, skipped
    assert list(table["dense_seconds"]) == pytest.approx([0.2, 0.2])
    assert list(table["masked_seconds"]) == pytest.approx([0.1, 0.1])
    assert list(table["masked_over_dense"]) == pytest.approx([0.5, 0.5])
    assert (table["batch"] == 2).all() and {size for _, size in state["calls"]} == {2}
    assert [p for p, _ in state["calls"]] == (["dense"] * 3 + ["masked"] * 3) * 2
    count = masking.num_text_layers(adapter.model)
    assert state["masked_layers"] == [list(range(count // 2, count))] * 2


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


def test_a_rerun_on_the_same_machine_reuses_the_measured_times(tmp_path, single_thread, monkeypatch, capsys):
    """Under the runner (MIMIC_CACHE_DIR set) a rerun that changes nothing shows the same table; another batch,
    model or machine measures again."""
    from eval_worker import make_records, tiny_qwen_adapter

    adapter = tiny_qwen_adapter()
    records = make_records(tmp_path / "images", 3)
    layers = masking.resolve_layers("second_half", masking.num_text_layers(adapter.model))
    clock = {"now": 0.0, "forwards": 0}

    def advance(module, args, output):
        clock["forwards"] += 1
        clock["now"] += 0.1 * clock["forwards"]  # every forward slower than the last: no two runs agree

    monkeypatch.setenv("MIMIC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MIMIC_LOG_FILE", raising=False)
    monkeypatch.setattr(mask_flops.time, "perf_counter", lambda: clock["now"])
    hook = adapter.model.register_forward_hook(advance)
    try:
        first = mask_flops.time_forward(adapter, records, [2, 3], layers, repeats=1, batch=2)
        measured = clock["forwards"]
        again = mask_flops.time_forward(adapter, records, [2, 3], layers, repeats=1, batch=2)
        assert clock["forwards"] == measured == 4 and again.equals(first)
        assert "[timing] forward times reused" in capsys.readouterr().out
        other = mask_flops.time_forward(adapter, records, [2, 3], layers, repeats=1, batch=1)
        assert clock["forwards"] == 8 and not other["dense_seconds"].equals(first["dense_seconds"])
        monkeypatch.setattr(mask_flops, "machine", lambda: {"host": "elsewhere"})
        mask_flops.time_forward(adapter, records, [2, 3], layers, repeats=1, batch=2)
        assert clock["forwards"] == 12
    finally:
        hook.remove()
