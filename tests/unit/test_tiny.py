"""Tiny models of the real classes, built offline: tokenizer, processors, configs, the organism."""

from __future__ import annotations

import pytest
import torch
import transformers

from mimic_utils.models import tiny, vlm

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def qwen_tokenizer():
    return tiny.build_tokenizer(family="qwen2_vl")


def test_numbers_and_task_words_are_single_tokens(qwen_tokenizer):
    words = [str(n) for n in range(21)] + ["yes", "no", "dog", "giraffe", "vehicle", "kitchen", "How", "Answer"]
    words += ["traffic", "light", "hydrant", "dogs", "buses"]
    for word in words:
        for form in (word, " " + word):
            assert len(qwen_tokenizer.encode(form, add_special_tokens=False)) == 1, form
    listing = qwen_tokenizer.encode("bus, car, truck", add_special_tokens=False)
    assert qwen_tokenizer.convert_ids_to_tokens(listing) == ["bus", ",", "Ġcar", ",", "Ġtruck"]


def test_decode_round_trips_exactly(qwen_tokenizer):
    for text in ["How many dogs are there?\nAnswer: 12", "  zebra,,  café ☃ 007\t!", "traffic light, stop sign"]:
        ids = qwen_tokenizer.encode(text, add_special_tokens=False)
        assert qwen_tokenizer.decode(ids) == text


def test_extra_words_become_single_tokens():
    assert len(tiny.build_tokenizer(family="qwen2_vl").encode(" hedgehog", add_special_tokens=False)) > 1
    tokenizer = tiny.build_tokenizer(["hedgehog", "sea lion"], family="qwen2_vl")
    for word in (" hedgehog", " hedgehogs", " sea", " lion"):
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision", "internvl"])
def test_family_special_tokens_are_single_ids_and_named(family):
    tokenizer = tiny.build_tokenizer(family=family)
    assert isinstance(tokenizer, transformers.PreTrainedTokenizerFast)
    assert tokenizer.padding_side == "left" and tokenizer.chat_template == tiny.CHAT_TEMPLATES[family]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    for name, token in tiny.FAMILY_TOKENS[family].items():
        assert getattr(tokenizer, name) == token
        ids = tokenizer.encode(f"a{token}b", add_special_tokens=False)
        assert tokenizer.convert_tokens_to_ids(token) in ids and len(ids) == 3
    for token in tiny.CHAT_TOKENS:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1
    if family == "internvl":  # what InternVLProcessor reads from the tokenizer
        assert tokenizer.context_image_token_id == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")


def test_word_ids_are_shared_across_families():
    text = "How many cats are there? 7"
    encoded = {f: tiny.build_tokenizer(family=f).encode(text, add_special_tokens=False) for f in tiny.FAMILIES}
    assert len({tuple(ids) for ids in encoded.values()}) == 1


@pytest.mark.parametrize(
    "family, processor_class, video_class",
    [
        ("qwen2_vl", "Qwen2VLProcessor", "BaseVideoProcessor"),
        ("qwen2_5_vl", "Qwen2_5_VLProcessor", "BaseVideoProcessor"),
        ("llava_onevision", "LlavaOnevisionProcessor", "LlavaOnevisionVideoProcessor"),
        ("internvl", "InternVLProcessor", "BaseVideoProcessor"),
    ],
)
def test_processors_are_the_real_classes(tiny_adapter, family, processor_class, video_class):
    adapter = tiny_adapter(family)
    assert type(adapter.processor) is getattr(transformers, processor_class)
    assert type(adapter.processor.video_processor).__name__ == video_class
    assert type(adapter.model).__name__ == vlm.get_family(family).model_class


def test_build_tiny_is_seeded():
    first, _ = tiny.build_tiny("llava_onevision", seed=3)
    second, _ = tiny.build_tiny("llava_onevision", seed=3)
    other, _ = tiny.build_tiny("llava_onevision", seed=4)
    states = [m.state_dict() for m in (first, second, other)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])
    with pytest.raises(ValueError, match="known: qwen2_vl"):
        tiny.build_tiny("gpt2")


@pytest.fixture(scope="module")
def organism():
    return tiny.build_organism()


def test_organism_matches_the_design(organism):
    model, processor = organism
    config = model.config
    assert type(model) is transformers.Qwen2VLForConditionalGeneration
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (256, 4)
    vision = config.vision_config
    assert (vision.depth, vision.embed_dim, vision.patch_size, vision.spatial_merge_size) == (4, 128, 14, 2)
    assert 4_500_000 < tiny.count_parameters(model) < 5_500_000
    assert tiny.tokens_per_image("qwen2_vl", processor, 112, 112) == 16


def test_organism_112px_image_is_an_8x8_grid_of_16_tokens(organism, make_image):
    model, processor = organism
    adapter = vlm.adapter_from_model(model, processor, "qwen2_vl")
    batch = adapter.prepare([vlm.Sample([make_image(112, 112, 0), make_image(112, 112, 1)], "Q?", "counting")])
    assert batch.inputs["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 8]]
    assert batch.image_tokens == [[16, 16]]
    assert adapter.settings["preprocessing"]["min_pixels"] == adapter.settings["preprocessing"]["max_pixels"]


def test_organism_save_and_load_round_trip(organism, make_image, tmp_path):
    model, processor = organism
    folder = tiny.save_tiny(model, processor, tmp_path / "base")
    loaded = vlm.load_adapter(folder)
    assert loaded.family == "qwen2_vl" and loaded.settings["preprocessing"]["max_pixels"] == 112 * 112
    sample = vlm.Sample([make_image(112, 112, 5)], "How many cats are there?", "counting")
    original = vlm.adapter_from_model(model, processor, "qwen2_vl").prepare([sample])
    batch = loaded.prepare([sample])
    with torch.no_grad():
        assert torch.equal(model(**original.inputs).logits, loaded.model(**batch.inputs).logits)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision", "internvl"])
def test_tokens_per_image_agrees_with_the_processor(tiny_adapter, make_image, family):
    adapter = tiny_adapter(family)
    sample = vlm.Sample([make_image(84, 56, 0), make_image(56, 56, 1)], "Q?", "counting")
    batch = adapter.prepare([sample])
    expected = [tiny.tokens_per_image(family, adapter.processor, im.height, im.width) for im in sample.images]
    assert batch.image_tokens == [expected]
