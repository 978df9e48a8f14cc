"""The real-size models: published numbers, the padded tokenizer, and tiny twins that run.

Real-size models are only built on the ``meta`` device here (shapes, no weights, no memory), which is
enough to check their parameter counts against the published ones.
"""

from __future__ import annotations

import pytest
import torch

from mimic_utils.models import realsize, tiny, vlm


def test_specs_hold_the_published_numbers():
    llava, qwen = realsize.SPECS["llava_onevision_0.5b"], realsize.SPECS["qwen2_vl_2b"]
    assert llava.text == {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                          "num_attention_heads": 14, "num_key_value_heads": 2, "rope_theta": 1e6}
    assert llava.vision["hidden_size"] == 1152 and llava.vision["intermediate_size"] == 4304
    assert llava.vision["num_hidden_layers"] == 26  # so400m's 27 minus the unused last one (feature layer -2)
    assert llava.tokens_per_image == 27 * 27 + 1  # 729 patches at 384 px + image_newline
    assert qwen.text["num_hidden_layers"] == 28 and qwen.text["hidden_size"] == 1536
    assert qwen.vision["depth"] == 32 and qwen.vision["embed_dim"] == 1280
    assert sum(qwen.extra["mrope_section"]) == qwen.text["hidden_size"] // qwen.text["num_attention_heads"] // 2
    assert qwen.tokens_per_image == 729  # 756 px: 54 patches, merged 2 x 2 -> 27 x 27
    assert llava.vocab_size == qwen.vocab_size == 151_936


@pytest.mark.parametrize(("key", "total", "language"), [
    ("llava_onevision_0.5b", 893_618_208, 494_032_768),  # Qwen2-0.5B's own count is 494,032,768
    ("qwen2_vl_2b", 2_208_985_600, 1_543_714_304),  # the hub lists Qwen2-VL-2B at 2.21B
])
def test_real_size_models_have_the_published_parameter_counts(key, total, language):
    model, processor = realsize.build(key, device="meta")
    assert realsize.parameter_count(model) == {"total": total, "language_model": language}
    text = model.config.get_text_config()
    assert text.vocab_size == len(processor.tokenizer) == 151_936
    assert model.get_input_embeddings().weight.shape == (151_936, text.hidden_size)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied


def test_padded_tokenizer_keeps_the_text_ids_and_moves_the_special_tokens_to_the_end():
    base = tiny.build_tokenizer(family="qwen2_vl")
    padded = realsize.padded_tokenizer("qwen2_vl", 4096)
    assert len(padded) == 4096
    text = "How many dogs are there? three"
    assert padded(text).input_ids == base(text).input_ids
    specials = [padded.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|video_pad|>")]
    assert specials == [4096 - 7, 4096 - 5, 4096 - 1]
    assert padded.eos_token_id == specials[1] and padded.pad_token_id == specials[0]
    assert padded.decode([len(base) - 7]) == f"fill{len(base) - 7}"  # a filler decodes to its name
    assert len(realsize.padded_tokenizer("qwen2_vl")) % 128 == 0
    with pytest.raises(ValueError, match="below the tokenizer's own"):
        realsize.padded_tokenizer("qwen2_vl", 100)


@pytest.mark.parametrize("key", list(realsize.SPECS))
def test_tiny_twins_run_the_real_processor_path(key, single_thread):
    spec = realsize.spec(key, tiny=True)
    model, processor = realsize.build(key, tiny=True, dtype=torch.float32)
    assert model.dtype == torch.float32 and type(model).__name__ == tiny._model_class(spec.family).__name__
    assert model.config.get_text_config().vocab_size == len(processor.tokenizer)
    adapter = vlm.adapter_from_model(model, processor, spec.family)
    samples = [vlm.Sample(realsize.noise_images(spec, 3, seed), "How many dogs are there?", "counting")
               for seed in (0, 1)]
    batch = adapter.prepare(samples)
    assert batch.image_tokens == [[spec.tokens_per_image] * 3] * 2
    answers = adapter.generate(batch, max_new_tokens=2)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_unknown_key_names_the_known_ones():
    with pytest.raises(KeyError, match="llava_onevision_0.5b"):
        realsize.spec("internvl_1b")
