"""Image-block masking (docs/design.md, *Masking*) on tiny models of the three families of the study,
through the registered attention function: the mask pattern, exact zeros where a vision token must not look, text and
earlier layers untouched, blockwise = dense, one-image samples and the outside of the context unchanged,
generation with a masked prefill and unmasked decode steps, and the layer specs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mimic_utils.models import masking, vlm
from mimic_utils.models.masking import LayerSpecError

pytestmark = pytest.mark.usefixtures("single_thread")

FAMILIES = ["llava_onevision", "qwen2_vl", "internvl"]


@pytest.fixture
def adapter(tiny_adapter, request):
    """The family's shared tiny adapter with masking enabled for the test, restored afterwards."""
    shared = tiny_adapter(request.param)
    with masking.text_attention(shared.model):
        yield shared


def run(adapter, batch, **kwargs):
    with torch.no_grad():
        return adapter.model(**batch.inputs, **kwargs)


def plain(adapter, batch, **kwargs):
    """The unmasked model: the same weights with transformers' own SDPA."""
    with masking.text_attention(adapter.model, "sdpa"):
        return run(adapter, batch, **kwargs)


def last_layer(adapter) -> int:
    return masking.num_text_layers(adapter.model) - 1


def vision_positions(block_ids: torch.Tensor, row: int) -> torch.Tensor:
    return (block_ids[row] >= 0).nonzero().flatten()


def text_positions(batch, block_ids: torch.Tensor, row: int) -> torch.Tensor:
    real = batch.inputs["attention_mask"][row].bool()
    return ((block_ids[row] < 0) & real).nonzero().flatten()


# --- layer specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, num_layers, auto_layer, expected",
    [
        ("12-23", 24, None, list(range(12, 24))),
        ("3,5-7", 24, None, [3, 5, 6, 7]),
        (" 7 , 2-3 ", 8, None, [2, 3, 7]),
        ("second_half", 24, None, list(range(12, 24))),
        ("second_half", 28, None, list(range(14, 28))),
        ("auto", 24, 10, list(range(10, 24))),
        ("none", 24, None, []),
        (None, 24, None, []),
        ([5, 3, 3], 24, None, [3, 5]),
    ],
)
def test_layer_specs(spec, num_layers, auto_layer, expected):
    assert masking.resolve_layers(spec, num_layers, auto_layer) == tuple(expected)


@pytest.mark.parametrize(
    "spec, auto_layer, message",
    [
        ("auto", None, r"'auto' needs .*auto_layer.*24 layers"),
        ("auto", 24, r"'auto'.*\[24\] outside 0..23"),
        ("12-30", None, r"'12-30'.*outside 0..23.*24 layers"),
        ("7-3", None, r"'7-3'.*backwards.*24 layers"),
        ("middle", None, r"'middle'.*24 layers.*second_half"),
        ("1-2-3", None, r"'1-2-3'"),
        ([0, 40], None, r"\[40\] outside 0..23"),
    ],
)
def test_bad_layer_specs_name_the_spec_and_the_layer_count(spec, auto_layer, message):
    with pytest.raises(LayerSpecError, match=message):
        masking.resolve_layers(spec, 24, auto_layer)


# --- the reference mask --------------------------------------------------------------------------


def test_dense_mask_is_block_diagonal_causal_for_vision_and_causal_for_text():
    # sample 0: text, image 0 (2 tokens), text, image 1 (2 tokens), text; sample 1: padding, one image
    block_ids = torch.tensor([[-1, 0, 0, -1, 1, 1, -1], [-1, -1, -1, 0, 0, 0, -1]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])
    mask = masking.dense_mask(block_ids, attention_mask)
    assert mask.shape == (2, 1, 7, 7) and mask.dtype == torch.bool
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    first = mask[0, 0]
    assert first[5].tolist() == [False, False, False, False, True, True, False]  # image 1 sees only itself
    assert first[4].tolist() == [False, False, False, False, True, False, False]  # causal inside the block
    assert first[1].tolist() == [False, True] + [False] * 5
    for text in (0, 3, 6):
        assert torch.equal(first[text], causal[text])
    # a one-image sample is only causal and padded, its padding rows see nothing
    padded = causal & attention_mask[1].bool()[None, :]
    assert torch.equal(mask[1, 0], padded)
    assert not mask[1, 0, :2].any()


# --- the model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", FAMILIES, indirect=True)
def test_outside_the_context_the_model_is_plain_sdpa(adapter, two_samples):
    config = adapter.model.config
    assert config.get_text_config()._attn_implementation == masking.ATTENTION_NAME
    assert config.vision_config._attn_implementation == "sdpa"  # the vision tower keeps its own
    batch = adapter.prepare(two_samples)
    assert torch.equal(run(adapter, batch).logits, plain(adapter, batch).logits)


@pytest.mark.parametrize("mode", masking.MODES)
@pytest.mark.parametrize("adapter", FAMILIES, indirect=True)
def test_vision_queries_give_zero_weight_to_other_images_and_text_in_masked_layers(adapter, two_samples, mode):
    batch = adapter.prepare(two_samples)
    block_ids = adapter.image_block_ids(batch)
    calls: dict[int, masking.AttentionCall] = {}
    masked_layers = [last_layer(adapter)]
    with masking.image_blocks(block_ids, masked_layers, mode, observers=[lambda c: calls.setdefault(c.layer_idx, c)]):
        run(adapter, batch)
    assert sorted(calls) == list(range(last_layer(adapter) + 1))
    for layer, call in calls.items():
        weights = call.probabilities()  # the weights the layer used: they reproduce its output
        values = call.value.repeat_interleave(weights.shape[1] // call.value.shape[1], dim=1)  # GQA groups
        torch.testing.assert_close(torch.matmul(weights, values).transpose(1, 2), call.output, atol=1e-5, rtol=1e-4)
        for row in range(block_ids.shape[0]):
            vision = vision_positions(block_ids, row)
            own = block_ids[row, vision][:, None] == block_ids[row][None, :]
            outside = weights[row][:, vision].masked_fill(own[None], 0.0)
            if layer in masked_layers:
                assert call.masked
                assert torch.count_nonzero(outside) == 0  # exactly zero, not merely small
            else:
                assert outside.sum() > 0  # unmasked layers do look across images


def stub_layer(layer_idx: int, groups: int) -> SimpleNamespace:
    return SimpleNamespace(layer_idx=layer_idx, num_key_value_groups=groups, is_causal=True, training=False)


def test_blockwise_attention_ignores_keys_outside_the_own_image():
    """At the function level: changing every key and value a vision query may not see leaves its output
    bit-identical; text rows equal transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    generator = torch.Generator().manual_seed(0)
    block_ids = torch.tensor(
        [[-1, -1, 0, 0, 0, -1, 1, 1, -1, 2, 2, 2, 2, -1], [-1] * 4 + [0] * 4 + [-1, 1, 1, 1, -1, -1]]
    )
    attention_mask = torch.ones(2, 14, dtype=torch.long)
    attention_mask[1, :2] = 0
    base = masking.dense_mask(torch.full_like(block_ids, -1), attention_mask)  # causal + padding, as sdpa_mask gives
    q, k, v = (torch.randn(2, h, 14, 8, generator=generator) for h in (4, 2, 2))
    module = stub_layer(3, groups=2)
    with masking.image_blocks(block_ids, [3]):
        out, weights = masking.attention_forward(module, q, k, v, base, scaling=0.35)
    assert weights is None and out.shape == (2, 14, 4, 8)
    for row in range(2):
        for image in range(int(block_ids[row].max()) + 1):
            block = (block_ids[row] == image).nonzero().flatten()
            hidden = block_ids[row] != image
            k2, v2 = k.clone(), v.clone()
            k2[row][:, hidden] = torch.randn_like(k2[row][:, hidden]) * 5
            v2[row][:, hidden] = torch.randn_like(v2[row][:, hidden]) * 5
            with masking.image_blocks(block_ids, [3]):
                perturbed, _ = masking.attention_forward(module, q, k2, v2, base, scaling=0.35)
            assert torch.equal(perturbed[row, block], out[row, block])
    reference, _ = sdpa_attention_forward(module, q, k, v, base, scaling=0.35)
    for row in range(2):
        text = ((block_ids[row] < 0) & attention_mask[row].bool()).nonzero().flatten()
        torch.testing.assert_close(out[row, text], reference[row, text], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("adapter", FAMILIES, indirect=True)
def test_earlier_layers_and_text_rows_of_the_first_masked_layer_are_unchanged(adapter, two_samples):
    batch = adapter.prepare(two_samples)
    block_ids = adapter.image_block_ids(batch)
    first = last_layer(adapter)  # mask only the last layer, so layer 0 must stay untouched
    reference = plain(adapter, batch, output_hidden_states=True).hidden_states
    with masking.mask_images(adapter, batch, [first]):
        masked = run(adapter, batch, output_hidden_states=True).hidden_states
    for before in range(first + 1):  # embeddings .. output of the layer before the first masked one
        assert torch.equal(masked[before], reference[before])
    after = first + 1
    for row in range(block_ids.shape[0]):
        text = text_positions(batch, block_ids, row)
        torch.testing.assert_close(masked[after][row, text], reference[after][row, text], atol=1e-6, rtol=1e-5)
        vision = vision_positions(block_ids, row)
        assert not torch.allclose(masked[after][row, vision], reference[after][row, vision], atol=1e-4)


@pytest.mark.parametrize("adapter", FAMILIES, indirect=True)
def test_blockwise_matches_the_dense_reference(adapter, two_samples):
    batch = adapter.prepare(two_samples)
    logits = {}
    for mode in masking.MODES:
        with masking.mask_images(adapter, batch, (0, 1), mode=mode):
            logits[mode] = run(adapter, batch).logits
    torch.testing.assert_close(logits["blockwise"], logits["dense"], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(logits["dense"], plain(adapter, batch).logits, atol=1e-3)  # masking did act


@pytest.mark.parametrize("adapter", FAMILIES, indirect=True)
def test_a_one_image_sample_is_not_masked(adapter, two_samples, make_image):
    single = vlm.Sample([make_image(84, 84, 9)], "How many cats are there?", "counting")
    for samples, row in (([single], 0), ([two_samples[0], single], 1)):
        batch = adapter.prepare(samples)
        reference = plain(adapter, batch).logits
        for mode in masking.MODES:
            with masking.mask_images(adapter, batch, (0, 1), mode=mode):
                assert torch.equal(run(adapter, batch).logits[row], reference[row])


def extended_inputs(batch, new_tokens: torch.Tensor) -> dict:
    """The batch's inputs with generated tokens appended as text (attended, text type)."""
    inputs = dict(batch.inputs)
    length = batch.input_length
    for name, value in batch.inputs.items():
        if isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[1] == length:
            fills = {"input_ids": new_tokens, "attention_mask": torch.ones_like(new_tokens)}
            fill = fills.get(name, torch.zeros_like(new_tokens))  # token types: text
            inputs[name] = torch.cat([value, fill.to(value.dtype)], dim=1)
    return inputs


@pytest.mark.parametrize("adapter", FAMILIES, indirect=True)
def test_generation_masks_the_prefill_and_not_the_decode_steps(adapter, two_samples):
    batch = adapter.prepare(two_samples)
    block_ids = adapter.image_block_ids(batch)
    options = {"max_new_tokens": 3, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    observed = []
    layers = masking.num_text_layers(adapter.model)
    every_layer = list(range(layers))  # masking only the last layer would not change the last text row
    with torch.no_grad(), masking.mask_images(adapter, batch, every_layer, observers=[observed.append]):
        generated = adapter.model.generate(**batch.inputs, **options, pad_token_id=adapter.tokenizer.pad_token_id)
        assert len(adapter.generate(batch, max_new_tokens=2)) == 2  # the adapter's own call runs too
    assert [call.layer_idx for call in observed[:layers]] == list(range(layers))  # one prefill per call
    assert len(observed) == 2 * layers  # decode steps are not masked (never reach the masked path)
    # Every step equals one masked forward over prompt + generated tokens, in which the new tokens are
    # text and attend to everything: the cache holds the masked prefill, decode steps see all of it.
    new_tokens = generated.sequences[:, batch.input_length :]
    extended = torch.cat([block_ids, torch.full_like(new_tokens, -1)], dim=1)
    with torch.no_grad(), masking.image_blocks(extended, every_layer, model=adapter.model):
        full = adapter.model(**extended_inputs(batch, new_tokens)).logits
    for step, step_logits in enumerate(generated.logits):
        torch.testing.assert_close(step_logits, full[:, batch.input_length - 1 + step], atol=1e-4, rtol=1e-4)
    unmasked_first_step = plain(adapter, batch).logits[:, -1]
    assert not torch.allclose(generated.logits[0], unmasked_first_step, atol=1e-4)


@pytest.mark.parametrize("adapter", ["qwen2_vl"], indirect=True)
def test_a_context_for_another_batch_or_a_disabled_model_is_an_error(adapter, two_samples):
    batch = adapter.prepare(two_samples)
    other = adapter.prepare(two_samples[:1])
    with masking.image_blocks(adapter.image_block_ids(other), [0]):
        with pytest.raises(ValueError, match="block ids for batch 1"):
            run(adapter, batch)
    with pytest.raises(ValueError, match="unknown masking mode 'sparse'"):
        with masking.image_blocks(adapter.image_block_ids(batch), [0], mode="sparse"):
            pass
    with masking.text_attention(adapter.model, "sdpa"):
        with pytest.raises(RuntimeError, match="masking.enable"):
            with masking.mask_images(adapter, batch, (0, 1)):
                pass
    assert masking.active() is None


def test_first_half_is_the_early_layers():
    assert masking.resolve_layers("first_half", 24) == tuple(range(12))
    assert masking.resolve_layers("first_half", 1) == (0,)


def test_past_the_entry_point_a_spec_is_refused_not_read_character_by_character():
    """``image_blocks`` takes indices; the spec "12" would otherwise mask layers 1 and 2."""
    with pytest.raises(TypeError, match="resolve_layers"):
        with masking.image_blocks(torch.zeros(1, 4, dtype=torch.long), "12"):
            pass
