"""Streaming attention statistics on tiny models of the three families: shares sum to one, equal
those computed from eager ``output_attentions`` maps, vanish where masking forbids them, sit beside the
uniform-attention reference (counted here by hand), and aggregate into intervals, the depth trend read
against uniform attention and the ``auto`` layer."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from mimic_utils.analysis import attention, sentences
from mimic_utils.models import masking

pytestmark = pytest.mark.usefixtures("single_thread")

FAMILIES = ["llava_onevision", "qwen2_vl", "internvl"]
KEYS = ["sample", "layer", "query_kind", "target"]


@pytest.mark.parametrize("family", FAMILIES)
def test_shares_sum_to_one_per_sample_layer_and_query_kind(tiny_adapter, two_samples, family):
    adapter = tiny_adapter(family)
    frame = attention.collect(adapter, two_samples, batch_size=2)
    layers = masking.num_text_layers(adapter.model)
    assert sorted(frame["layer"].unique()) == list(range(layers))
    assert frame["depth"].min() == 0.0 and frame["depth"].max() == 1.0
    totals = frame.groupby(["sample", "layer", "query_kind"])["share"].sum()
    assert len(totals) == 2 * layers * 2
    assert totals.between(1 - 1e-5, 1 + 1e-5).all(), totals
    answer_targets = set(frame.loc[(frame["sample"] == 0) & (frame["query_kind"] == "answer"), "target"])
    assert answer_targets == {"image_0", "image_1", "image_2", "text"}
    assert set(frame.loc[frame["query_kind"] == "vision", "target"]) == set(attention.VISION_TARGETS)
    assert adapter.model.config.get_text_config()._attn_implementation == "sdpa"  # restored


@pytest.mark.parametrize("family", FAMILIES)
def test_streaming_statistics_equal_those_of_eager_output_attentions(tiny_adapter, two_samples, family):
    adapter = tiny_adapter(family)
    batch = adapter.prepare(two_samples)
    with masking.text_attention(adapter.model):
        streamed = pd.DataFrame(attention.collect_batch(adapter, batch, per_head=True))
    with torch.no_grad(), masking.text_attention(adapter.model, "eager"):
        maps = adapter.model(**batch.inputs, output_attentions=True).attentions
    assert len(maps) == masking.num_text_layers(adapter.model)
    reference = attention.shares_from_attentions(
        maps, adapter.image_block_ids(batch), batch.inputs["attention_mask"], per_head=True
    )
    merged = streamed.merge(reference, on=[*KEYS, "head"], suffixes=("_stream", "_eager"), validate="one_to_one")
    assert len(merged) == len(streamed) == len(reference)
    for column in ("share", "uniform"):
        torch.testing.assert_close(torch.tensor(merged[f"{column}_stream"].values),
                                   torch.tensor(merged[f"{column}_eager"].values), atol=1e-5, rtol=1e-4)


def expected_uniform(block_ids: torch.Tensor, attention_mask: torch.Tensor, row: int) -> dict[str, float]:
    """Uniform vision shares of one sample counted by hand: each image token spreads evenly over the real
    tokens at or before it; the sample's value is the mean over its image tokens."""
    ids, real = block_ids[row].tolist(), attention_mask[row].tolist()
    totals = {target: 0.0 for target in attention.VISION_TARGETS}
    queries = [p for p, block in enumerate(ids) if block >= 0]
    for p in queries:
        keys = [q for q in range(p + 1) if real[q]]
        same = sum(ids[q] == ids[p] for q in keys)
        text = sum(ids[q] < 0 for q in keys)
        for target, count in zip(attention.VISION_TARGETS, (same, len(keys) - same - text, text)):
            totals[target] += count / len(keys) / len(queries)
    return totals


def test_uniform_reference_counts_the_keys_each_query_can_see(tiny_adapter, two_samples):
    adapter = tiny_adapter("qwen2_vl")
    batch = adapter.prepare(two_samples)
    block_ids = adapter.image_block_ids(batch)
    last = masking.num_text_layers(adapter.model) - 1
    frame = attention.collect(adapter, two_samples, batch_size=2, mask_layers=[last])
    vision = frame[frame["query_kind"] == "vision"].set_index(["sample", "layer", "target"])["uniform"]
    for row in (0, 1):
        for target, value in expected_uniform(block_ids, batch.inputs["attention_mask"], row).items():
            for layer in (0, last):  # the reference ignores the image mask: the same in a masked layer
                assert vision[(row, layer, target)] == pytest.approx(value, abs=1e-6)
    totals = frame.groupby(["sample", "layer", "query_kind"])["uniform"].sum()
    assert totals.between(1 - 1e-5, 1 + 1e-5).all()


@pytest.mark.parametrize("mode", masking.MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_masked_layers_have_no_vision_attention_to_other_images_or_text(tiny_adapter, two_samples, family, mode):
    adapter = tiny_adapter(family)
    last = masking.num_text_layers(adapter.model) - 1
    frame = attention.collect(adapter, two_samples, mask_layers=[last], mode=mode)
    vision = frame[frame["query_kind"] == "vision"].set_index(["sample", "layer", "target"])["share"]
    for sample in (0, 1):
        assert vision[(sample, last, "other_images")] == 0.0
        assert vision[(sample, last, "text")] == 0.0
        assert vision[(sample, last, "same_image")] == pytest.approx(1.0, abs=1e-6)
        assert vision[(sample, 0, "other_images")] > 0  # layer 0 is not masked and looks across images
    answer = frame[(frame["query_kind"] == "answer") & (frame["layer"] == last)]
    assert (answer.loc[answer["target"] != "text", "share"] > 0).all()  # text queries still see the images


def test_records_hold_numbers_only(tiny_adapter, two_samples):
    """The collector keeps no tensors, so nothing it stores grows with the size of a layer's map."""
    adapter = tiny_adapter("qwen2_vl")
    with masking.text_attention(adapter.model):
        records = attention.collect_batch(adapter, adapter.prepare(two_samples[:1]), budget=64)  # many chunks
    assert records and all(isinstance(v, (int, float, str)) for r in records for v in r.values())


def synthetic_frame(other_by_layer: dict[int, list[float]], uniform: float = 0.5) -> pd.DataFrame:
    """Vision rows with the given other-image shares per layer and sample, against a fixed reference."""
    rows = []
    layers = max(other_by_layer) + 1
    for layer, values in other_by_layer.items():
        for sample, other in enumerate(values):
            for target, share, flat in (("same_image", 1 - other, 1 - uniform), ("other_images", other, uniform)):
                rows.append({"sample": sample, "layer": layer, "depth": layer / (layers - 1),
                             "query_kind": "vision", "target": target, "share": share, "uniform": flat})
    return pd.DataFrame(rows)


def test_aggregate_gives_means_and_normal_intervals():
    table = attention.aggregate(synthetic_frame({0: [0.2, 0.4], 1: [0.1, 0.1]}))
    row = table[(table["layer"] == 0) & (table["target"] == "other_images")].iloc[0]
    sd = pd.Series([0.2, 0.4]).std()
    assert (row["n"], row["mean"], row["sd"]) == (2, pytest.approx(0.3), pytest.approx(sd))
    assert row["ci_high"] - row["mean"] == pytest.approx(1.96 * sd / 2**0.5)
    flat = table[(table["layer"] == 1) & (table["target"] == "other_images")].iloc[0]
    assert flat["ci_low"] == flat["ci_high"] == pytest.approx(0.1)
    assert (row["uniform"], row["ratio"]) == (pytest.approx(0.5), pytest.approx(0.6))  # 0.3 / 0.5
    assert row["ratio_low"] <= row["ratio"] <= row["ratio_high"]
    assert flat["ratio_low"] == flat["ratio_high"] == pytest.approx(0.2)  # every resample gives 0.1 / 0.5


def test_ratio_is_a_ratio_of_means_with_a_bootstrap_interval():
    ratio, lo, hi = attention.ratio_of_means([0.2, 0.6], [0.5, 0.5])
    assert ratio == pytest.approx(0.8) and lo == pytest.approx(0.4) and hi == pytest.approx(1.2)
    assert all(map(pd.isna, attention.ratio_of_means([0.0], [0.0])))  # no reference: undefined, not an error


def test_low_cross_layer_reads_the_ratio_against_its_peak():
    aggregated = attention.aggregate(synthetic_frame({0: [0.5], 1: [0.05], 2: [0.3], 3: [0.08], 4: [0.02]}))
    assert attention.find_low_cross_layer(aggregated, threshold=0.2) == 3  # 0.2 × peak; layer 2 rises again
    assert attention.find_low_cross_layer(aggregated, threshold=0.7) == 1
    assert attention.find_low_cross_layer(aggregated, threshold=0.02) is None
    assert attention.low_cross_sentence(aggregated, None, 0.02).startswith("No layer qualifies")
    assert "From layer 3 on" in attention.low_cross_sentence(aggregated, 3, 0.2)


def test_fade_effect_is_late_minus_early_ratio_with_a_sample_bootstrap():
    frame = synthetic_frame({0: [0.6, 0.4, 0.5], 1: [0.3, 0.3, 0.3], 2: [0.1, 0.2, 0.15]}, uniform=0.25)
    effect = attention.fade_effect(frame)
    assert (effect["first_layers"], effect["last_layers"], effect["n"]) == ([0], [2], 3)
    assert effect["effect"] == pytest.approx((0.15 - 0.5) / 0.25)
    assert effect["lo"] <= effect["effect"] <= effect["hi"] < 0
    assert "fades with depth" in sentences.fade_sentence(effect)
    reference = sentences.fade_reference(effect)
    assert reference["score"] == pytest.approx(2.0) and reference["baseline"] == 1.0
    level = attention.fade_effect(synthetic_frame({0: [0.2, 0.4], 1: [0.4, 0.2]}, uniform=0.1))
    assert level["lo"] < 0 < level["hi"] and "no detectable change" in sentences.fade_sentence(level)
    # early layers at uniform attention: there is nothing to fade from (the floor guard)
    flat = attention.fade_effect(frame.assign(uniform=frame["share"].where(frame["layer"] > 0, 0.5)))
    assert sentences.fade_sentence(flat).startswith(
        "Image tokens' attention to other images: not testable here (floor) — the reference condition, ratio to "
        "uniform attention in layer 0, scores 1.00")


def test_versus_uniform_gives_two_lines_for_the_depth_plot():
    table = attention.aggregate(synthetic_frame({0: [0.2, 0.4], 1: [0.1, 0.1]}, uniform=0.25))
    lines = attention.versus_uniform(table, label="organism")
    assert set(lines["target"]) == {"organism", "uniform"}
    assert lines.loc[lines["target"] == "uniform", "mean"].tolist() == pytest.approx([0.25, 0.25])


def test_block_map_rows_sum_to_one_and_masking_keeps_images_apart(tiny_adapter, two_samples):
    adapter = tiny_adapter("qwen2_vl")
    sample = two_samples[0]
    frame = attention.block_map(adapter, sample)
    sums = frame.groupby(["layer", "query"])["share"].sum()
    assert ((sums - 1).abs() < 1e-4).all()
    assert set(frame["query"]) == {"image 1", "image 2", "image 3", "answer"}
    masked = attention.block_map(adapter, sample, mask_layers=masking.resolve_layers("second_half", masking.num_text_layers(adapter.model)))
    last = masked[(masked["layer"] == masked["layer"].max()) & (masked["query"] == "image 2")]
    assert last.set_index("key")["share"]["image 2"] == pytest.approx(1.0, abs=1e-5)


def test_ratio_by_layer_averages_heads_per_model_and_keeps_masked_layers_missing():
    def table(ratios: dict[int, list[float]]) -> pd.DataFrame:
        return pd.DataFrame([{"layer": layer, "query_kind": "vision", "target": "other_images", "head": head,
                              "ratio": r, "ratio_low": r - 0.1, "ratio_high": r + 0.1}
                             for layer, per_head in ratios.items() for head, r in enumerate(per_head)])

    found = attention.ratio_by_layer({"base": table({0: [1.0, 2.0], 1: [1.5, 1.5]}),
                                      "late": table({0: [1.0, 1.0], 1: [float("nan"), float("nan")]})})
    assert list(found.columns) == ["model", "layer", "ratio", "ratio_low", "ratio_high"]
    base = found[found["model"] == "base"]
    assert list(base["ratio"]) == [1.5, 1.5] and list(base["ratio_low"]) == pytest.approx([1.4, 1.4])
    assert found[found["model"] == "late"]["ratio"].isna().tolist() == [False, True]
