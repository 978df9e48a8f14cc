"""Streaming attention statistics (issue 7) on tiny models of the three families: shares sum to one, equal
those computed from eager ``output_attentions`` maps, vanish where masking forbids them, and aggregate
into intervals and the ``auto`` layer."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from mimic_utils import attention, masking

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
    torch.testing.assert_close(
        torch.tensor(merged["share_stream"].values), torch.tensor(merged["share_eager"].values), atol=1e-5, rtol=1e-4
    )


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


def synthetic_frame(other_by_layer: dict[int, list[float]]) -> pd.DataFrame:
    rows = []
    layers = max(other_by_layer) + 1
    for layer, values in other_by_layer.items():
        for sample, other in enumerate(values):
            for target, share in (("same_image", 1 - other), ("other_images", other)):
                rows.append({"sample": sample, "layer": layer, "depth": layer / (layers - 1),
                             "query_kind": "vision", "target": target, "share": share})
    return pd.DataFrame(rows)


def test_aggregate_gives_means_and_normal_intervals():
    table = attention.aggregate(synthetic_frame({0: [0.2, 0.4], 1: [0.1, 0.1]}))
    row = table[(table["layer"] == 0) & (table["target"] == "other_images")].iloc[0]
    sd = pd.Series([0.2, 0.4]).std()
    assert (row["n"], row["mean"], row["sd"]) == (2, pytest.approx(0.3), pytest.approx(sd))
    assert row["ci_high"] - row["mean"] == pytest.approx(1.96 * sd / 2**0.5)
    flat = table[(table["layer"] == 1) & (table["target"] == "other_images")].iloc[0]
    assert flat["ci_low"] == flat["ci_high"] == pytest.approx(0.1)


def test_low_cross_layer_is_where_cross_image_attention_stays_low():
    aggregated = attention.aggregate(synthetic_frame({0: [0.5], 1: [0.05], 2: [0.3], 3: [0.08], 4: [0.02]}))
    assert attention.find_low_cross_layer(aggregated, threshold=0.1) == 3  # layer 1 dips, layer 2 rises again
    assert attention.find_low_cross_layer(aggregated, threshold=0.35) == 1
    assert attention.find_low_cross_layer(aggregated, threshold=0.2, relative=True) == 3  # 0.2 × 0.5
    with pytest.raises(ValueError, match="never stays at or below 0.010.*4: 0.020"):
        attention.find_low_cross_layer(aggregated, threshold=0.01)


def test_block_map_rows_sum_to_one_and_masking_keeps_images_apart(tiny_adapter, two_samples):
    adapter = tiny_adapter("qwen2_vl")
    sample = two_samples[0]
    frame = attention.block_map(adapter, sample)
    sums = frame.groupby(["layer", "query"])["share"].sum()
    assert ((sums - 1).abs() < 1e-4).all()
    assert set(frame["query"]) == {"image 1", "image 2", "image 3", "answer"}
    masked = attention.block_map(adapter, sample, mask_layers="second_half")
    last = masked[(masked["layer"] == masked["layer"].max()) & (masked["query"] == "image 2")]
    assert last.set_index("key")["share"]["image 2"] == pytest.approx(1.0, abs=1e-5)
