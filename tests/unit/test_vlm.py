"""The model interface on tiny random models of the real classes: prompt, inputs, block ids, pooling,
generation, save/load, errors. Everything is built offline."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from transformers.utils import is_torchvision_available

from mimic_utils.data import prompts
from mimic_utils.models import tiny, vlm
from mimic_utils.models.vlm import ModelLoadError, Sample

pytestmark = pytest.mark.usefixtures("single_thread")

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "llava_onevision", "internvl"]


# --- prompts -------------------------------------------------------------------------------------


def test_question_text_and_budgets_follow_the_official_prompt():
    assert prompts.mimic_question_text("How many cats?", "counting") == "How many cats?"
    listing = prompts.mimic_question_text("Which animals appear", "Listing")
    assert listing == "Which animals appear. Please provide the list of category names directly."
    assert prompts.max_new_tokens_for("listing") == 32
    assert [prompts.max_new_tokens_for(t) for t in ("counting", "common", "Odd-One")] == [16, 16, 16]
    assert prompts.official_user_turn("Q?", 3, "counting") == "<image> <image> <image>\nQuestion: Q?\nAnswer:"
    with pytest.raises(ValueError, match="known: counting"):
        prompts.max_new_tokens_for("captioning")


def test_messages_put_images_first_with_each_familys_separator():
    qwen = prompts.build_messages("Q?", 3, "counting", "qwen2_vl")[0]["content"]
    assert [item["type"] for item in qwen] == ["image", "text", "image", "text", "image", "text"]
    assert [item["text"] for item in qwen if item["type"] == "text"] == [" ", " ", "\nQuestion: Q?\nAnswer:"]
    llava = prompts.build_messages("Q?", 2, "counting", "llava_onevision")[0]["content"]
    assert llava == [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Question: Q?\nAnswer:"}]
    with pytest.raises(ValueError, match="known: qwen2_vl"):
        prompts.build_messages("Q?", 2, "counting", "gpt")


def test_labelled_images_get_image_k_before_each_image_and_the_default_has_none(tiny_adapter, make_image):
    """The ov stage's labelled layout ("Image k: " before image k); the benchmark's prompt never has it."""
    qwen = prompts.build_messages("Q?", 3, "counting", "qwen2_vl", image_labels=True)[0]["content"]
    assert [item.get("text", "<img>") for item in qwen] == [
        "Image 1: ", "<img>", " ", "Image 2: ", "<img>", " ", "Image 3: ", "<img>", "\nQuestion: Q?\nAnswer:"]
    assert "Image 1" not in str(prompts.build_messages("Q?", 3, "counting", "qwen2_vl"))
    with pytest.raises(ValueError, match="llava_onevision chat template renders all images before any text"):
        prompts.build_messages("Q?", 2, "counting", "llava_onevision", image_labels=True)
    adapter = tiny_adapter("qwen2_vl")
    images = [make_image(56, 56, 0), make_image(56, 56, 1)]
    plain, labelled = adapter.prepare([{"images": images, "question": "Q?", "task_family": "counting"},
                                       {"images": images, "question": "Q?", "task_family": "counting",
                                        "image_labels": True}]).prompts
    assert "Image" not in plain and "Image 1: <|vision_start|>" in labelled and " Image 2: <|vision_start|>" in labelled


@pytest.mark.parametrize(
    "family, user_turn",
    [
        (
            "qwen2_vl",
            "<|vision_start|><|image_pad|><|vision_end|> <|vision_start|><|image_pad|><|vision_end|>"
            "\nQuestion: Q?\nAnswer:",
        ),
        ("llava_onevision", "<image><image>\nQuestion: Q?\nAnswer:"),
        ("internvl", "<IMG_CONTEXT>\n<IMG_CONTEXT>\nQuestion: Q?\nAnswer:"),
    ],
)
def test_rendered_prompt_is_the_official_layout(tiny_adapter, family, user_turn):
    text = tiny_adapter(family).render_prompt("Q?", 2, "counting")
    assert user_turn in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_other_benchmarks_keep_their_own_prompt_text(tiny_adapter, make_image):
    text = "Which image shows a cat?\nA. first\nB. second\nAnswer with the option's letter directly."
    messages = prompts.build_messages(text, 2, "muirbench", "qwen2_vl")
    assert messages[0]["content"][-1] == {"type": "text", "text": "\n" + text}
    adapter = tiny_adapter("internvl")
    record = {"images": [make_image(56, 56, 0), make_image(56, 56, 1)], "question": text, "task_family": "muirbench"}
    batch = adapter.prepare([record])
    assert batch.prompts[0].startswith("<|im_start|>user\n<IMG_CONTEXT>\n<IMG_CONTEXT>\nWhich image")
    with pytest.raises(ValueError, match="max_new_tokens"):
        adapter.generate(batch)
    assert len(adapter.generate(batch, max_new_tokens=2)) == 1


# --- inputs, block ids, generation ---------------------------------------------------------------


def expected_tokens_per_image(adapter, batch, samples) -> list[list[int]]:
    """Tokens per image from the processor's own outputs, independently of the adapter."""
    processor, inputs = adapter.processor, batch.inputs
    if adapter.family in ("qwen2_vl", "qwen2_5_vl"):
        flat = (inputs["image_grid_thw"].prod(-1) // processor.image_processor.merge_size**2).tolist()
    elif adapter.family == "llava_onevision":  # every sample is multi-image: base features + image_newline
        flat = [processor.num_image_tokens + 1] * int(inputs["batch_num_images"].sum())
    else:
        flat = []
        for sample in samples:
            for image in sample.images:
                tiles = processor.image_processor.get_number_of_image_patches(image.height, image.width, {})
                flat.append(processor.image_seq_length * tiles)
    per_sample, start = [], 0
    for sample in samples:
        per_sample.append(flat[start : start + len(sample.images)])
        start += len(sample.images)
    return per_sample


def vision_path_lengths(adapter, batch, samples) -> list[int]:
    """Tokens per image as the model's vision path produces them (flattened over the batch)."""
    spec = vlm.get_family(adapter.family)
    kwargs = {name: batch.inputs[name] for name in spec.vision_inputs}
    with torch.no_grad():
        features = adapter.model.get_image_features(**kwargs).pooler_output
    if isinstance(features, (list, tuple)):
        return [int(f.shape[0]) for f in features]
    # internvl: (tiles, tokens per tile, dim); the tiles of each image are consecutive
    tiles = [
        adapter.processor.image_processor.get_number_of_image_patches(image.height, image.width, {})
        for sample in samples
        for image in sample.images
    ]
    assert sum(tiles) == features.shape[0]
    return [n * int(features.shape[1]) for n in tiles]


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_is_left_padded_and_generates(tiny_adapter, two_samples, family):
    adapter = tiny_adapter(family)
    samples = [two_samples[0], Sample(two_samples[1].images, "Q?", "counting")]  # lengths differ
    batch = adapter.prepare(samples)
    mask = batch.inputs["attention_mask"]
    lengths = mask.sum(dim=1).tolist()
    assert lengths[0] != lengths[1] and bool(mask[:, -1].all())
    short = lengths.index(min(lengths))
    assert mask[short, 0] == 0 and mask[1 - short].all(), "the shorter sample is padded on the left"
    assert (batch.inputs["input_ids"][short][mask[short] == 0] == adapter.tokenizer.pad_token_id).all()
    answers = adapter.generate(batch, max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


@pytest.mark.parametrize("family", FAMILIES)
def test_block_ids_match_the_processors_expansion(tiny_adapter, two_samples, family):
    adapter = tiny_adapter(family)
    batch = adapter.prepare(two_samples)
    blocks = adapter.image_block_ids(batch)
    expected = expected_tokens_per_image(adapter, batch, two_samples)
    assert batch.image_tokens == expected
    flat_expected = [n for row in expected for n in row]
    assert vision_path_lengths(adapter, batch, two_samples) == flat_expected
    ids = batch.inputs["input_ids"]
    for row, sample in enumerate(two_samples):
        n_images = len(sample.images)
        assert [int((blocks[row] == j).sum()) for j in range(n_images)] == expected[row]
        marked = blocks[row][blocks[row] >= 0]
        assert marked.tolist() == sorted(marked.tolist()), "images appear in order"
        for j in range(n_images):
            where = (blocks[row] == j).nonzero().flatten()
            assert int(where[-1] - where[0]) + 1 == len(where), "an image's block is contiguous"
        image_positions = blocks[row] >= 0
        assert (ids[row][image_positions] == adapter.image_token_id).all()
        assert (blocks[row][ids[row] != adapter.image_token_id] == -1).all()
    if family in ("qwen2_vl", "qwen2_5_vl"):
        delimiters = [adapter.model.config.vision_start_token_id, adapter.model.config.vision_end_token_id]
    elif family == "internvl":
        delimiters = [adapter.processor.start_image_token_id, adapter.processor.end_image_token_id]
    else:
        delimiters = []
    for token in delimiters:  # tokenizer delimiters are text
        assert (ids == token).any() and (blocks[ids == token] == -1).all()
    if family == "internvl":  # <img> right before and </img> right after every block
        for row in range(len(two_samples)):
            for j in range(len(two_samples[row].images)):
                where = (blocks[row] == j).nonzero().flatten()
                assert ids[row, where[0] - 1] == adapter.processor.start_image_token_id
                assert ids[row, where[-1] + 1] == adapter.processor.end_image_token_id


def test_each_sample_gets_its_tasks_token_budget(tiny_adapter, two_samples):
    adapter = tiny_adapter("llava_onevision")
    batch = adapter.prepare(two_samples)  # counting (16 new tokens) and listing (32)
    assert batch.task_families == ["counting", "listing"]
    answers = adapter.generate(batch)
    assert answers == [adapter.generate(batch, 16)[0], adapter.generate(batch, 32)[1]]


def test_llava_single_image_sample_uses_anyres_blocks(tiny_adapter, make_image):
    adapter = tiny_adapter("llava_onevision")
    samples = [
        Sample([make_image(56, 56, 1), make_image(84, 56, 2)], "Q?", "counting"),
        Sample([make_image(100, 50, 3)], "Q?", "common"),
    ]
    batch = adapter.prepare(samples)
    assert batch.image_tokens[0] == [adapter.processor.num_image_tokens + 1] * 2
    assert batch.image_tokens[1][0] > adapter.processor.num_image_tokens + 1  # base + tiles + newlines
    assert vision_path_lengths(adapter, batch, samples) == [n for row in batch.image_tokens for n in row]
    assert len(adapter.generate(batch, max_new_tokens=2)) == 2


def test_llava_anyres_for_every_image_is_a_recorded_option(two_samples):
    model, processor = tiny.build_tiny("llava_onevision")
    adapter = vlm.adapter_from_model(model, processor, "llava_onevision", preprocessing={"multi_image": "anyres"})
    assert adapter.settings["preprocessing"]["multi_image"] == "anyres"
    batch = adapter.prepare(two_samples)
    assert all(n > processor.num_image_tokens + 1 for row in batch.image_tokens for n in row)
    assert vision_path_lengths(adapter, batch, two_samples) == [n for row in batch.image_tokens for n in row]
    assert len(adapter.generate(adapter.prepare(two_samples, pool=2), max_new_tokens=2)) == 2
    with pytest.raises(ValueError, match="'pad' or 'anyres'"):
        vlm.adapter_from_model(model, processor, "llava_onevision", preprocessing={"multi_image": "tiles"})


# --- pooling -------------------------------------------------------------------------------------


def test_pool_tokens_zero_pads_and_averages():
    x = torch.arange(10, dtype=torch.float32).view(5, 2)
    pooled = vlm.pool_tokens(x, 2)
    assert torch.equal(pooled, torch.tensor([[1.0, 2.0], [5.0, 6.0], [4.0, 4.5]]))
    assert vlm.pool_tokens(x, 3).shape == (2, 2)
    assert torch.equal(vlm.pool_tokens(x, 1), x)


@pytest.mark.parametrize("family", FAMILIES)
def test_pooling_leaves_ceil_l_over_r_tokens_and_generates(tiny_adapter, two_samples, family):
    adapter = tiny_adapter(family)
    full = adapter.prepare(two_samples)
    lengths = [n for row in full.image_tokens for n in row]
    for r in (2, 3):
        assert any(n % r for n in lengths), "some image length is not divisible by r"
        batch = adapter.prepare(two_samples, pool=r)
        expected = [[math.ceil(n / r) for n in row] for row in full.image_tokens]
        assert batch.image_tokens == expected and batch.pool == r
        blocks = adapter.image_block_ids(batch)
        for row, counts in enumerate(expected):
            assert [int((blocks[row] == j).sum()) for j in range(len(counts))] == counts
        budget = adapter.token_budget(batch)
        assert budget["vision_tokens"] == [sum(c) for c in expected]
        assert budget["text_tokens"] == adapter.token_budget(full)["text_tokens"]
        assert budget["unpooled_vision_tokens_per_image"] == full.image_tokens
        answers = adapter.generate(batch, max_new_tokens=2)
        assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


@pytest.mark.parametrize("family", FAMILIES)
def test_pooled_features_are_the_mean_of_each_group(tiny_adapter, two_samples, family):
    adapter = tiny_adapter(family)
    full = adapter.prepare(two_samples)
    batch = adapter.pool(full, 3)
    pooled = batch.inputs["mm_encoder_outputs"]["image"].pooler_output
    pooled = torch.cat(list(pooled)) if isinstance(pooled, (list, tuple)) else pooled
    spec = vlm.get_family(family)
    with torch.no_grad():
        raw = adapter.model.get_image_features(**{k: full.inputs[k] for k in spec.vision_inputs}).pooler_output
    raw = torch.cat(list(raw)) if isinstance(raw, (list, tuple)) else raw.reshape(-1, raw.shape[-1])
    first = raw[:3].mean(dim=0)  # first group of the first image
    assert torch.allclose(pooled[0], first, atol=1e-6)
    assert pooled.shape[0] == sum(n for row in batch.image_tokens for n in row)


@pytest.mark.parametrize("family", FAMILIES)
def test_pooling_path_with_r1_reproduces_the_model(tiny_adapter, two_samples, family):
    """r = 1 through the pooling path (precomputed features, explicit M-RoPE positions) changes nothing."""
    adapter = tiny_adapter(family)
    full = adapter.prepare(two_samples)
    same = adapter.pool(full, 1)
    assert "pixel_values" not in same.inputs and "mm_encoder_outputs" in same.inputs
    with torch.no_grad():
        assert torch.allclose(adapter.model(**full.inputs).logits, adapter.model(**same.inputs).logits, atol=1e-5)
        options = dict(max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True)
        a = adapter.model.generate(**full.inputs, **options, pad_token_id=adapter.tokenizer.pad_token_id)
        b = adapter.model.generate(**same.inputs, **options, pad_token_id=adapter.tokenizer.pad_token_id)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a.scores, b.scores))


def test_qwen_pooled_tokens_take_the_first_position_of_their_group(tiny_adapter, two_samples):
    adapter = tiny_adapter("qwen2_vl")
    full = adapter.prepare(two_samples)
    inputs = full.inputs
    with torch.no_grad():
        positions, _ = adapter.model.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"], None,
            attention_mask=inputs["attention_mask"],
        )
    pooled = adapter.pool(full, 2)
    new_positions = pooled.inputs["position_ids"]
    assert new_positions.shape == (4, 2, pooled.input_length)
    full_blocks, new_blocks = adapter.image_block_ids(full), adapter.image_block_ids(pooled)
    for row in range(2):
        first_image_full = (full_blocks[row] == 0).nonzero().flatten()
        first_image_new = (new_blocks[row] == 0).nonzero().flatten()
        assert torch.equal(new_positions[1:, row, first_image_new], positions[:, row, first_image_full[::2]])
        assert torch.equal(new_positions[1:, row, -1], positions[:, row, -1]), "text keeps its positions"


# --- settings, preprocessing ---------------------------------------------------------------------


def test_settings_record_the_preprocessing_that_moves_scores(tiny_adapter):
    llava = tiny_adapter("llava_onevision").settings
    assert llava["family"] == "llava_onevision" and llava["model_class"] == "LlavaOnevisionForConditionalGeneration"
    assert llava["preprocessing"]["multi_image"] == "pad"
    assert llava["preprocessing"]["vision_aspect_ratio"] == "anyres_max_9"
    assert llava["prompt"]["image_separator"] == ""
    qwen = tiny_adapter("qwen2_vl").settings["preprocessing"]
    assert (qwen["min_pixels"], qwen["max_pixels"]) == tiny.QWEN_TINY_PIXELS
    internvl = tiny_adapter("internvl").settings["preprocessing"]
    assert internvl["crop_to_patches"] is True and internvl["max_patches"] == 4


def test_preprocessing_overrides_change_tokens_and_are_recorded(two_samples):
    model, processor = tiny.build_tiny("qwen2_vl")
    qwen = vlm.adapter_from_model(model, processor, "qwen2_vl", preprocessing={"max_pixels": 56 * 56})
    assert qwen.settings["preprocessing"]["max_pixels"] == 56 * 56
    tokens = qwen.prepare(two_samples).image_tokens
    assert tokens[0][2] == 4 and max(max(row) for row in tokens) == 4  # 112 px: 16 tokens by default

    model, processor = tiny.build_tiny("internvl")
    internvl = vlm.adapter_from_model(model, processor, "internvl", preprocessing={"crop_to_patches": False})
    assert internvl.settings["preprocessing"]["crop_to_patches"] is False
    per_tile = processor.image_seq_length
    assert internvl.prepare(two_samples).image_tokens == [[per_tile] * 3, [per_tile] * 2]  # one tile per image
    with pytest.raises(ValueError, match="accepted: crop_to_patches"):
        vlm.adapter_from_model(model, processor, "internvl", preprocessing={"max_pixels": 1})


# --- loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision", "internvl"])
def test_save_and_load_adapter_round_trip(tiny_adapter, two_samples, tmp_path, family):
    adapter = tiny_adapter(family)
    tiny.save_tiny(adapter.model, adapter.processor, tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = vlm.load_adapter(tmp_path)  # family inferred from model_type
    assert loaded.family == family
    assert type(loaded.model) is type(adapter.model) and type(loaded.processor) is type(adapter.processor)
    assert loaded.settings["preprocessing"] == adapter.settings["preprocessing"]
    assert loaded.settings["model"] == str(tmp_path)
    # weights_sha256 means what the model card says it means: `sha256sum model.safetensors`
    assert loaded.settings["weights_sha256"] == hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    assert loaded.settings["weights_fingerprint"] not in (None, loaded.settings["weights_sha256"])
    original, reloaded = adapter.prepare(two_samples), loaded.prepare(two_samples)
    assert torch.equal(original.inputs["input_ids"], reloaded.inputs["input_ids"])
    with torch.no_grad():
        assert torch.equal(adapter.model(**original.inputs).logits, loaded.model(**reloaded.inputs).logits)


def test_the_image_backend_is_recorded_and_saved_and_a_reload_uses_it(tiny_adapter, tmp_path):
    adapter = tiny_adapter("qwen2_vl")
    assert adapter.settings["preprocessing"]["image_backend"] == "pil"
    assert adapter.settings["image_processor_class"] == "Qwen2VLImageProcessorPil"
    adapter.save(tmp_path)
    assert vlm.saved_image_backend(tmp_path) == "pil"
    assert vlm.load_adapter(tmp_path).settings["preprocessing"]["image_backend"] == "pil"
    (tmp_path / vlm.BACKEND_FILE).write_text('{"image_backend": "torchvision"}')  # saved on a torchvision box
    if not is_torchvision_available():
        with pytest.raises(ModelLoadError, match=r"image_backend 'torchvision' needs torchvision, which is not installed"):
            vlm.load_adapter(tmp_path)  # the saved backend is the default ...
    loaded = vlm.load_adapter(tmp_path, preprocessing={"image_backend": "pil"})  # ... unless asked otherwise
    assert loaded.settings["preprocessing"]["image_backend"] == "pil"
    with pytest.raises(ModelLoadError, match="unknown image_backend 'cv2'; use one of pil, torchvision"):
        vlm.load_adapter(tmp_path, preprocessing={"image_backend": "cv2"})


def test_a_checkpoint_without_a_recorded_backend_loads_with_pil_whatever_is_installed(tiny_adapter, tmp_path):
    """Hub checkpoints and folders saved before the backend was recorded: PIL, as they were scored."""
    adapter = tiny_adapter("llava_onevision")
    tiny.save_tiny(adapter.model, adapter.processor, tmp_path)
    assert vlm.saved_image_backend(tmp_path) is None
    loaded = vlm.load_adapter(tmp_path)
    assert loaded.settings["preprocessing"]["image_backend"] == "pil"
    assert type(loaded.processor.image_processor).__name__ == "LlavaOnevisionImageProcessorPil"


def test_switching_the_backend_keeps_every_image_processor_setting(two_samples):
    """Colab's direction: a processor loaded with the torchvision class is given the PIL class with the same
    settings. Without torchvision here, a stand-in class of the torchvision name and backend is used."""
    model, processor = tiny.build_tiny("qwen2_vl")
    reference = vlm.adapter_from_model(model, processor, "qwen2_vl", preprocessing={"max_pixels": 56 * 56})
    expected = reference.prepare(two_samples).inputs["pixel_values"]
    pil = type(processor.image_processor)
    torchvision_like = type("Qwen2VLImageProcessor", (pil,), {"backend": property(lambda self: "torchvision")})
    processor.image_processor = torchvision_like(**processor.image_processor.to_dict())
    assert vlm.image_backend(processor) == "torchvision"
    switched = vlm.adapter_from_model(model, processor, "qwen2_vl",
                                         preprocessing={"image_backend": "pil", "max_pixels": 56 * 56})
    assert type(processor.image_processor) is pil and switched.settings["preprocessing"]["image_backend"] == "pil"
    assert torch.equal(switched.prepare(two_samples).inputs["pixel_values"], expected)


@pytest.mark.skipif(not is_torchvision_available(), reason="needs torchvision (make colab-check)")
@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision", "internvl"])
def test_with_torchvision_either_backend_can_be_asked_for_and_is_recorded(family, tmp_path):
    model, processor = tiny.build_tiny(family)
    switched = vlm.adapter_from_model(model, processor, family, preprocessing={"image_backend": "torchvision"})
    assert switched.settings["preprocessing"]["image_backend"] == "torchvision"
    assert not switched.settings["image_processor_class"].endswith("Pil")
    switched.save(tmp_path)
    assert vlm.saved_image_backend(tmp_path) == "torchvision"
    assert vlm.load_adapter(tmp_path).settings["preprocessing"]["image_backend"] == "torchvision"
    assert vlm.load_adapter(tmp_path, preprocessing={"image_backend": "pil"}).settings["image_processor_class"].endswith("Pil")


@pytest.mark.skipif(is_torchvision_available(), reason="torchvision is installed: the torchvision backend is available")
def test_asking_for_an_unavailable_backend_fails_naming_the_model(tiny_adapter):
    adapter = tiny_adapter("internvl")
    with pytest.raises(ModelLoadError, match=r"model 'InternVLForConditionalGeneration': image_backend 'torchvision' needs"):
        vlm.adapter_from_model(adapter.model, adapter.processor, "internvl", preprocessing={"image_backend": "torchvision"})
    assert vlm.image_backend(adapter.processor) == "pil"  # the processor is left as it was


def test_the_backend_enters_the_fingerprint_except_pil_which_every_earlier_prediction_used():
    settings = {"model": "m", "preprocessing": {"min_pixels": 4}, "dtype": "float32"}
    pil = {**settings, "preprocessing": {"image_backend": "pil", "min_pixels": 4}}
    torchvision = {**settings, "preprocessing": {"image_backend": "torchvision", "min_pixels": 4}}
    assert vlm.model_fingerprint(pil) == vlm.model_fingerprint(settings)
    assert vlm.model_fingerprint(torchvision) != vlm.model_fingerprint(pil)


def test_load_errors_name_the_model_and_family(tmp_path, tiny_adapter):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelLoadError, match="no_such_model"):
        vlm.load_adapter(missing)
    with pytest.raises(ModelLoadError, match="no_such_model.*qwen2_vl"):
        vlm.load_adapter(missing, family="qwen2_vl")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="cannot read the config of model .*empty"):
        vlm.load_adapter(empty)
    with pytest.raises(ModelLoadError, match="unknown model family 'gpt9'.*known families: llava_onevision"):
        vlm.load_adapter(empty, family="gpt9")
    adapter = tiny_adapter("internvl")
    with pytest.raises(ModelLoadError, match="known families"):
        vlm.adapter_from_model(adapter.model, adapter.processor, "internvl_chat")
    with pytest.raises(ModelLoadError, match="'-hf' checkpoints"):
        vlm.family_for_model_type("internvl_chat")


def test_load_rejects_a_family_that_contradicts_the_config(tiny_adapter, tmp_path):
    adapter = tiny_adapter("internvl")
    tiny.save_tiny(adapter.model, adapter.processor, tmp_path)
    with pytest.raises(ModelLoadError, match="model_type 'internvl', which is not family 'qwen2_vl'"):
        vlm.load_adapter(tmp_path, family="qwen2_vl")


def test_four_bit_config_is_nf4_with_double_quantisation():
    config = vlm.quantization_config("4bit", torch.bfloat16, keep=("multi_modal_projector",))
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant is True
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.llm_int8_skip_modules == ["multi_modal_projector", "lm_head"]
    assert vlm.quantization_config("8bit").load_in_8bit
    assert vlm.quantization_config(None) is None
    with pytest.raises(ValueError, match="4bit"):
        vlm.quantization_config("3bit")


def test_weights_hashes_give_a_sharded_checkpoint_a_fingerprint_but_no_single_file_sha256(tmp_path):
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"first shard")
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"second shard")
    fingerprint, sha256 = vlm.weights_hashes(tmp_path)
    assert sha256 is None and len(fingerprint) == 64
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"other weights")
    assert vlm.weights_hashes(tmp_path)[0] != fingerprint
    single = tmp_path / "single"
    single.mkdir()
    (single / "model.safetensors").write_bytes(b"weights")
    assert vlm.weights_hashes(single)[1] == hashlib.sha256(b"weights").hexdigest()
