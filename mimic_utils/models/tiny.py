"""Tiny vision-language models of the real transformers classes, built offline.

Everything here is made on this machine, without a download: a byte-level BPE tokenizer trained with
the ``tokenizers`` library on the task vocabulary, the families' real processor classes assembled from
their image processors, and randomly initialised models of the real ``*ForConditionalGeneration``
classes from small configs. They load, run, generate and save exactly like the hub checkpoints, so the
whole study (and its tests) runs on them unchanged.

- :func:`build_tokenizer` – the shared tokenizer, with one family's special tokens and chat template.
- :func:`build_processor` – the family's real processor class around that tokenizer.
- :func:`build_tiny` – ``(model, processor)`` for ``qwen2_vl``, ``qwen2_5_vl``, ``llava_onevision`` or
  ``internvl``.
- :func:`organism_config` / :func:`build_organism` – the Qwen2-VL model organism (docs/organism.md), in any
  language-model shape (:data:`ORGANISM_SHAPES`); :func:`text_cost` – its parameters and FLOPs per token.
- :func:`save_tiny` – ``save_pretrained`` of both (safetensors); load it back with
  :func:`mimic_utils.models.vlm.load_adapter`.

Video processors: a processor whose class declares a video processor checks its class, and without
torchvision transformers 5.23 fails that check for ``None`` and for every video processor alike (it
looks ``VideoProcessorMixin`` up by a name it only exports with torchvision;
:func:`mimic_utils.models.vlm.expose_video_processor_base` exports it). The LLaVA-OneVision video
processor then works as is; the Qwen2-VL and InternVL ones import torchvision at module level, so those
processors get the library's generic ``BaseVideoProcessor`` (videos are never used in this study).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers import models as token_models

from mimic_utils.models.vlm import expose_video_processor_base

# transformers' classes are imported inside the builders: loading every family's processor, video and
# config modules up front would cost seconds in every process that imports this module.

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava_onevision", "internvl")

# --- vocabulary ----------------------------------------------------------------------------------

COCO_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
"""The 80 COCO category names (the default vocabulary until ``mimic_utils.data.scenes`` passes its own)."""

COCO_SUPERCATEGORIES = (
    "person", "vehicle", "outdoor", "animal", "accessory", "sports", "kitchen", "food",
    "furniture", "electronic", "appliance", "indoor",
)

NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)

PROMPT_WORDS = (
    "Question", "Answer", "Please", "provide", "the", "list", "of", "category", "categories", "names",
    "name", "directly", "how", "many", "are", "is", "there", "in", "these", "this", "those", "images",
    "image", "picture", "pictures", "total", "across", "all", "which", "what", "object", "objects",
    "class", "classes", "common", "present", "appears", "appear", "appearing", "only", "some", "one",
    "minority", "majority", "odd", "out", "other", "others", "different", "from", "set", "given",
    "find", "count", "number", "instances", "instance", "items", "item", "can", "you", "see", "seen",
    "shown", "do", "does", "contain", "contains", "containing", "every", "each", "any", "not", "a",
    "an", "and", "or", "to", "at", "least", "most", "belong", "belongs", "subcategory",
    "subcategories", "supercategory", "type", "types", "kind", "kinds", "yes", "no", "none",
    "answer", "question", "single", "word", "phrase", "using", "with", "that", "it", "them", "be",
)
"""Question words of the MIMIC prompts and of the organism's single-image questions."""

PUNCTUATION = (",", ".", "?", ":", ";", "!", "'", "-", ", ", ". ", "?\n", ":\n", "\n")


def _plural(word: str) -> str:
    irregular = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep", "skis": "skis"}
    if word in irregular:
        return irregular[word]
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def task_vocabulary(extra_words: Iterable[str] = ()) -> list[str]:
    """Every word the tokenizer must hold as a single token, in a stable order.

    Multi-word names (``"traffic light"``) contribute their words; category nouns also get a plural.
    Numbers 0..20 are included as digits and as words.
    """
    names = list(COCO_CATEGORIES) + list(COCO_SUPERCATEGORIES) + [str(w) for w in extra_words]
    words: list[str] = [str(n) for n in range(21)] + list(NUMBER_WORDS) + list(PROMPT_WORDS)
    for name in names:
        parts = name.split()
        words.extend(parts)
        words.append(_plural(parts[-1]))
    seen: dict[str, None] = {}
    for word in words:
        for form in (word, word.lower(), word.capitalize()):
            seen.setdefault(form, None)
    return list(seen)


@lru_cache(maxsize=8)
def _trained_bpe_json(words: tuple[str, ...]) -> str:
    """Train the byte-level BPE once per vocabulary; returns its JSON so callers get fresh copies."""
    bpe = Tokenizer(token_models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    # Each word alone and after a space (the byte-level "Ġ" form) so both become single tokens;
    # an unlimited vocabulary lets BPE merge every word of the corpus completely.
    corpus = [form for word in words for form in (word, " " + word)] + list(PUNCTUATION)
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    return bpe.to_str()


# --- family special tokens and chat templates ----------------------------------------------------
# Chat tokens are shared (all three families sit on a Qwen2 language model); each family adds the
# placeholder tokens its processor and model config name.

CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

FAMILY_TOKENS = {
    "qwen2_vl": {
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
    },
    "llava_onevision": {"image_token": "<image>", "video_token": "<video>"},
    "internvl": {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    },
}

FAMILY_TOKENS["qwen2_5_vl"] = FAMILY_TOKENS["qwen2_vl"]

# Written in the format of each family's hub template (ChatML turns; see mimic_utils.data.prompts for how
# the images are rendered). Qwen2-VL adds its default system turn, as its hub template does.
CHAT_TEMPLATES = {
    "qwen2_vl": (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "llava_onevision": (
        "{% for message in messages %}"
        "<|im_start|>{{ message['role'] }} "
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}"
        "{% for item in message['content'] if item['type'] == 'image' %}<image>{% endfor %}"
        "{% for item in message['content'] if item['type'] == 'video' %}<video>{% endfor %}"
        "{% for item in message['content'] if item['type'] == 'text' %}{{ '\n' + item['text'] }}{% endfor %}"
        "{% endif %}<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "internvl": (
        "{% for message in messages %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}<IMG_CONTEXT>\n"
        "{% elif item['type'] == 'video' %}<video>\n"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
}
CHAT_TEMPLATES["qwen2_5_vl"] = CHAT_TEMPLATES["qwen2_vl"]


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; known: {', '.join(FAMILIES)}")


def build_tokenizer(extra_words: Iterable[str] = (), family: str = "qwen2_vl"):
    """A fast tokenizer trained offline on the task vocabulary, with ``family``'s special tokens.

    Byte-level BPE: every string encodes and decodes back exactly; each word of
    :func:`task_vocabulary` (numbers 0..20, category and supercategory names, prompt words, yes/no)
    is a single token, with or without a leading space. The word ids are the same for every family;
    the special tokens follow them. ``extra_words`` adds category names (from ``mimic_utils.data.scenes``).
    """
    from transformers import PreTrainedTokenizerFast

    _check_family(family)
    bpe = Tokenizer.from_str(_trained_bpe_json(tuple(task_vocabulary(extra_words))))
    named = FAMILY_TOKENS[family]
    bpe.add_special_tokens(list(CHAT_TOKENS) + list(named.values()))
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=dict(named),
        chat_template=CHAT_TEMPLATES[family],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


# --- processors ----------------------------------------------------------------------------------

TINY_IMAGE_SIZE = 56
"""Side of the tiny LLaVA-OV image (4×4 patches of 14 px: 16 tokens + image_newline = 17 per image)."""

INTERNVL_TILE_SIZE = 140
"""Side of a tiny InternVL tile: 10×10 patches, pixel shuffle 0.5 → 25 tokens per tile (odd, so that
the per-image token counts are not all multiples of a pooling factor 2 or 3)."""

QWEN_TINY_PIXELS = (56 * 56, 112 * 112)
"""Tiny Qwen2-VL ``(min_pixels, max_pixels)``: 56 px → 4 tokens, 84 px → 9, 112 px → 16."""

ORGANISM_PIXELS = 112 * 112
"""The organism's images: 112×112 → an 8×8 patch grid → 16 merged tokens (min = max pixels)."""


def _base_video_processor():
    from transformers.video_processing_utils import BaseVideoProcessor

    return BaseVideoProcessor()


def _prepare_processor_check() -> None:
    expose_video_processor_base()


def build_processor(family: str, tokenizer=None, **image_settings):
    """The family's real processor class, offline.

    ``image_settings`` override the image processor's defaults: ``min_pixels`` / ``max_pixels``
    (Qwen2-VL), ``image_size`` and ``image_grid_pinpoints`` (LLaVA-OV), ``image_size``,
    ``crop_to_patches``, ``min_patches``, ``max_patches`` (InternVL).
    """
    _check_family(family)
    _prepare_processor_check()
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(family=family)
    template = CHAT_TEMPLATES[family]
    if family in ("qwen2_vl", "qwen2_5_vl"):
        import transformers
        from transformers import Qwen2VLImageProcessorPil

        min_pixels, max_pixels = QWEN_TINY_PIXELS
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=image_settings.get("min_pixels", min_pixels),
            max_pixels=image_settings.get("max_pixels", max_pixels),
            patch_size=14,
            merge_size=2,
            temporal_patch_size=2,
        )
        processor_class = transformers.Qwen2VLProcessor if family == "qwen2_vl" else transformers.Qwen2_5_VLProcessor
        return processor_class(image_processor, tokenizer, _base_video_processor(), chat_template=template)
    if family == "llava_onevision":
        from transformers import LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor
        from transformers.models.llava_onevision.video_processing_llava_onevision import (
            LlavaOnevisionVideoProcessor,
        )

        side = image_settings.get("image_size", TINY_IMAGE_SIZE)
        pinpoints = image_settings.get("image_grid_pinpoints", [[side, side], [side, 2 * side], [2 * side, side]])
        size = {"height": side, "width": side}
        image_processor = LlavaOnevisionImageProcessorPil(size=size, image_grid_pinpoints=pinpoints)
        return LlavaOnevisionProcessor(
            image_processor,
            tokenizer,
            LlavaOnevisionVideoProcessor(size=size),
            num_image_tokens=(side // 14) ** 2,
            vision_feature_select_strategy="full",
            chat_template=template,
            vision_aspect_ratio="anyres_max_9",
        )
    from transformers import GotOcr2ImageProcessorPil, InternVLProcessor

    side = image_settings.get("image_size", INTERNVL_TILE_SIZE)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": side, "width": side},
        crop_to_patches=image_settings.get("crop_to_patches", True),
        min_patches=image_settings.get("min_patches", 1),
        max_patches=image_settings.get("max_patches", 4),
    )
    tokens_per_tile = ((side // 14) // 2) ** 2  # pixel shuffle with downsample ratio 0.5
    return InternVLProcessor(
        image_processor, tokenizer, _base_video_processor(), image_seq_length=tokens_per_tile, chat_template=template
    )


# --- configs -------------------------------------------------------------------------------------


def _token_ids(tokenizer) -> dict:
    return {
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _qwen2_text(tokenizer, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        **_token_ids(tokenizer),
    }


def _mrope_text(tokenizer, hidden: int, layers: int, heads: int, intermediate: int | None = None) -> dict:
    # M-RoPE splits the head_dim / 2 rotary frequencies into (temporal, height, width) sections in
    # the real models' 2:3:3 proportion (Qwen2-VL-7B: head_dim 128 -> [16, 24, 24]).
    half = (hidden // heads) // 2
    spatial = 3 * half // 8
    text = _qwen2_text(tokenizer, hidden, layers, heads, max(1, heads // 2), intermediate or 2 * hidden)
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [half - 2 * spatial, spatial, spatial],
    }
    return text


def _vision_token_ids(tokenizer) -> dict:
    return {
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }


def qwen2_vl_config(
    tokenizer,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    vision_hidden: int = 32,
    vision_depth: int = 1,
    vision_heads: int = 2,
    text_intermediate: int | None = None,
):
    """A small ``Qwen2VLConfig``: patch 14, spatial merge 2, temporal patch 2, M-RoPE.

    The text MLP is ``text_intermediate`` wide (default 2 × ``text_hidden``); the vision MLP ratio is 4.
    """
    from transformers import Qwen2VLConfig

    vision = {
        "depth": vision_depth,
        "embed_dim": vision_hidden,
        "hidden_size": text_hidden,
        "num_heads": vision_heads,
        "mlp_ratio": 4,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    return Qwen2VLConfig(
        text_config=_mrope_text(tokenizer, text_hidden, text_layers, text_heads, text_intermediate),
        vision_config=vision,
        tie_word_embeddings=True,
        **_vision_token_ids(tokenizer),
        **_token_ids(tokenizer),
    )


def qwen2_5_vl_config(tokenizer, text_hidden: int = 64, text_layers: int = 2, text_heads: int = 4):
    """A small ``Qwen2_5_VLConfig``: as :func:`qwen2_vl_config`, with 2.5's windowed vision tower."""
    from transformers import Qwen2_5_VLConfig

    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "out_hidden_size": text_hidden,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
    }
    return Qwen2_5_VLConfig(
        text_config=_mrope_text(tokenizer, text_hidden, text_layers, text_heads),
        vision_config=vision,
        tie_word_embeddings=True,
        **_vision_token_ids(tokenizer),
        **_token_ids(tokenizer),
    )


def llava_onevision_config(tokenizer, image_size: int = TINY_IMAGE_SIZE, text_hidden: int = 64, text_layers: int = 2):
    """A small ``LlavaOnevisionConfig``: SigLIP tower (patch 14), Qwen2 language model, ``full`` features."""
    from transformers import LlavaOnevisionConfig

    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": 14,
    }
    text = {"model_type": "qwen2", **_qwen2_text(tokenizer, text_hidden, text_layers, 4, 2, 2 * text_hidden)}
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=[[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]],
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=True,
    )


def internvl_config(tokenizer, image_size: int = INTERNVL_TILE_SIZE, text_hidden: int = 64, text_layers: int = 2):
    """A small ``InternVLConfig``: InternViT-style tower (patch 14), pixel shuffle 0.5, Qwen2 LM."""
    from transformers import InternVLConfig

    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": [image_size, image_size],
        "patch_size": [14, 14],
    }
    text = {"model_type": "qwen2", **_qwen2_text(tokenizer, text_hidden, text_layers, 4, 2, 2 * text_hidden)}
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=((image_size // 14) // 2) ** 2,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=True,
    )


ORGANISM_SHAPES = {
    "wide": {"text_hidden": 256, "text_layers": 4, "text_heads": 4, "text_intermediate": 768},
    "deep": {"text_hidden": 192, "text_layers": 8, "text_heads": 4, "text_intermediate": 512},
}
"""Language-model shapes of the organism. ``wide`` is the first trained organism (and the default here, so
that code built for it keeps its meaning); ``deep`` has twice the layers at about the same parameters and
compute per token (non-embedding 3.25M vs 3.15M parameters): more points for per-layer analyses."""


def check_text_shape(text_hidden: int, text_layers: int, text_heads: int, text_intermediate: int) -> None:
    """Refuse a language-model shape Qwen2-VL cannot take: heads must divide the hidden size, into an even
    head dimension (M-RoPE splits half of it 2:3:3), and an even head count (2 query heads per KV head)."""
    head_dim = text_hidden // max(text_heads, 1)
    problems = [
        (min(text_hidden, text_layers, text_heads, text_intermediate) >= 1, "every size must be positive"),
        (text_hidden % max(text_heads, 1) == 0, f"text_heads={text_heads} must divide text_hidden={text_hidden}"),
        (head_dim % 2 == 0 and head_dim >= 8, f"head dimension {head_dim} must be even and at least 8"),
        (text_heads == 1 or text_heads % 2 == 0, f"text_heads={text_heads} must be even (2 per KV head)"),
    ]
    bad = [why for ok, why in problems if not ok]
    if bad:
        raise ValueError("organism text shape: " + "; ".join(bad))


def organism_config(tokenizer=None, text_hidden: int = 256, text_layers: int = 4, text_heads: int = 4,
                    text_intermediate: int = 768):
    """The Qwen2-VL model organism (docs/organism.md; about 5M parameters).

    Text (default, :data:`ORGANISM_SHAPES` ``wide``): hidden 256 × 4 layers (4 heads, 2 KV heads, MLP 768),
    embeddings tied to the LM head; any shape that :func:`check_text_shape` accepts (KV heads = heads / 2).
    Vision: depth 4 × hidden 128 (4 heads, MLP ratio 4), patch 14, spatial merge 2: a 112 px image is
    an 8×8 patch grid and 16 merged tokens (:func:`build_organism` fixes min = max pixels = 112²). The
    merger's output width is the text hidden size.
    """
    check_text_shape(text_hidden, text_layers, text_heads, text_intermediate)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(family="qwen2_vl")
    return qwen2_vl_config(
        tokenizer,
        text_hidden=text_hidden,
        text_layers=text_layers,
        text_heads=text_heads,
        text_intermediate=text_intermediate,
        vision_hidden=128,
        vision_depth=4,
        vision_heads=4,
    )


def text_cost(config, context: int = 64) -> dict:
    """Parameters and forward FLOPs per token of a Qwen2-VL config's language model.

    FLOPs count 2 per multiply-add: every weight matrix of the decoder layers and the (tied) LM head once
    per token, plus attention scores and the weighted sum over ``context`` earlier tokens (causal average
    for a sequence of ``2 * context``). Norms, biases and activations are left out (under 1%).
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, layers, inter = text.hidden_size, text.num_hidden_layers, text.intermediate_size
    head_dim = hidden // text.num_attention_heads
    kv = text.num_key_value_heads * head_dim
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter  # q, o, k, v; gate, up, down
    head = text.vocab_size * hidden
    attention = 2 * 2 * context * hidden  # q·k over the context, then the weighted sum of values
    return {"hidden": hidden, "layers": layers, "heads": text.num_attention_heads, "kv_heads": text.num_key_value_heads,
            "intermediate": inter, "decoder_matrix_params": layers * per_layer, "embedding_params": head,
            "context": context, "flops_per_token": 2 * layers * per_layer + 2 * head + layers * attention}


# --- models --------------------------------------------------------------------------------------


def _model_class(family: str):
    import transformers

    return {
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
        "llava_onevision": transformers.LlavaOnevisionForConditionalGeneration,
        "internvl": transformers.InternVLForConditionalGeneration,
    }[family]


def _instantiate(family: str, config, seed: int):
    torch.manual_seed(seed)
    model = _model_class(family)(config)
    model.eval()
    return model


def build_tiny(family: str, tokenizer=None, seed: int = 0, **config_overrides):
    """``(model, processor)``: a randomly initialised tiny model of the family's real class.

    ``config_overrides`` go to the family's config builder (:func:`qwen2_vl_config`,
    :func:`qwen2_5_vl_config`, :func:`llava_onevision_config`, :func:`internvl_config`), e.g.
    ``text_hidden=128``. The weights
    depend only on ``seed``. The model is in eval mode, float32, on the CPU.
    """
    _check_family(family)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(family=family)
    builders = {
        "qwen2_vl": qwen2_vl_config,
        "qwen2_5_vl": qwen2_5_vl_config,
        "llava_onevision": llava_onevision_config,
        "internvl": internvl_config,
    }
    config = builders[family](tokenizer, **config_overrides)
    image_settings = {}
    if "image_size" in config_overrides:
        image_settings["image_size"] = config_overrides["image_size"]
    processor = build_processor(family, tokenizer, **image_settings)
    return _instantiate(family, config, seed), processor


def build_organism(tokenizer=None, seed: int = 0, **text_shape):
    """``(model, processor)`` of the untrained Qwen2-VL organism (112 px images, 16 tokens each);
    ``text_shape`` (``text_hidden``, ``text_layers``, ``text_heads``, ``text_intermediate``) goes to
    :func:`organism_config`, e.g. ``**ORGANISM_SHAPES["deep"]``."""
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(family="qwen2_vl")
    processor = build_processor("qwen2_vl", tokenizer, min_pixels=ORGANISM_PIXELS, max_pixels=ORGANISM_PIXELS)
    return _instantiate("qwen2_vl", organism_config(tokenizer, **text_shape), seed), processor


def count_parameters(model) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def save_tiny(model, processor, folder: str | Path) -> Path:
    """``save_pretrained`` of model (safetensors) and processor into ``folder``; returns the path.

    Load it back with ``mimic_utils.models.vlm.load_adapter(folder)``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tokens_per_image(family: str, processor, height: int, width: int) -> int:
    """Placeholder tokens the processor gives one image of a multi-image sample (for notebooks)."""
    if family in ("qwen2_vl", "qwen2_5_vl"):
        ip = processor.image_processor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        factor = ip.patch_size * ip.merge_size
        h, w = smart_resize(height, width, factor, ip.size["shortest_edge"], ip.size["longest_edge"])
        return (h // ip.patch_size) * (w // ip.patch_size) // ip.merge_size**2
    if family == "llava_onevision":
        return processor.num_image_tokens + 1
    _check_family(family)
    tiles = processor.image_processor.get_number_of_image_patches(height, width, {})
    return processor.image_seq_length * tiles


__all__ = [
    "COCO_CATEGORIES",
    "COCO_SUPERCATEGORIES",
    "FAMILIES",
    "ORGANISM_SHAPES",
    "build_organism",
    "build_processor",
    "build_tiny",
    "build_tokenizer",
    "check_text_shape",
    "count_parameters",
    "internvl_config",
    "llava_onevision_config",
    "organism_config",
    "qwen2_5_vl_config",
    "qwen2_vl_config",
    "save_tiny",
    "task_vocabulary",
    "text_cost",
    "tokens_per_image",
]
