"""The paper's two models at their real size, built offline with random weights, for the GPU check.

LLaVA-OneVision-0.5B and Qwen2-VL-2B are rebuilt from their published ``config.json`` numbers: the real
transformers classes, random bf16 weights, an offline tokenizer padded to the real vocabulary and the real
processor classes as :mod:`mimic_utils.models.tiny` builds them; the same functions build a tiny twin
(``tiny=True``) for the CPU dry run and the tests. :data:`SPECS` holds the numbers, :func:`build` gives
``(model, processor)``. Where each number comes from, and what differs from the checkpoints, is in
docs/gpu_check.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import torch
from PIL import Image
from tokenizers import Tokenizer

from mimic_utils.models import tiny as tiny_models

# --- specs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One model's numbers: the text (Qwen2) and vision tower configs, vocabulary and image size.

    ``vocab_size`` ``None`` means the offline tokenizer's own size rounded up to a multiple of 128 (tiny
    specs; the padding path still runs). ``image_side`` is the side in px of the benchmark images;
    ``pixels`` the Qwen2-VL processor's ``(min_pixels, max_pixels)``.
    """

    key: str
    family: str
    source: str
    text: dict
    vision: dict
    vocab_size: int | None
    image_side: int
    pixels: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_image(self) -> int:
        """Vision tokens one benchmark image gives in a multi-image sample."""
        patches = self.image_side // self.vision["patch_size"]
        if self.family == "llava_onevision":
            return patches * patches + 1  # + image_newline
        merged = patches // self.vision["spatial_merge_size"]
        return merged * merged


QWEN2_0_5B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "rope_theta": 1_000_000.0}
QWEN2_1_5B = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
              "num_key_value_heads": 2, "rope_theta": 1_000_000.0}
SIGLIP_SO400M_384 = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 26,
                     "num_attention_heads": 16, "image_size": 384, "patch_size": 14}
QWEN2_VL_VISION = {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "patch_size": 14,
                   "spatial_merge_size": 2, "temporal_patch_size": 2}
REAL_VOCAB = 151_936
QWEN2_VL_PIXELS = (56 * 56, 12_845_056)

SPECS: dict[str, ModelSpec] = {
    "llava_onevision_0.5b": ModelSpec(
        "llava_onevision_0.5b", "llava_onevision", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        QWEN2_0_5B, SIGLIP_SO400M_384, REAL_VOCAB, image_side=384,
        extra={"image_grid_pinpoints": [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]},
    ),
    "qwen2_vl_2b": ModelSpec(
        "qwen2_vl_2b", "qwen2_vl", "Qwen/Qwen2-VL-2B-Instruct", QWEN2_1_5B, QWEN2_VL_VISION, REAL_VOCAB,
        image_side=756, pixels=QWEN2_VL_PIXELS, extra={"mrope_section": [16, 24, 24]},
    ),
}
"""The real-size specs, by key."""

_TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "rope_theta": 1_000_000.0}
TINY_SPECS: dict[str, ModelSpec] = {
    "llava_onevision_0.5b": replace(
        SPECS["llava_onevision_0.5b"], text=_TINY_TEXT, vocab_size=None, image_side=56,
        vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                "image_size": 56, "patch_size": 14},
        extra={"image_grid_pinpoints": [[56, 56], [56, 112], [112, 56]]},
    ),
    "qwen2_vl_2b": replace(
        SPECS["qwen2_vl_2b"], text=_TINY_TEXT, vocab_size=None, image_side=56, pixels=(56 * 56, 112 * 112),
        vision={**QWEN2_VL_VISION, "depth": 1, "embed_dim": 32, "num_heads": 2}, extra={"mrope_section": [2, 3, 3]},
    ),
}
"""The same models at tiny size: text hidden 64 × 4 layers (so a second-half mask has a later layer to
act on), one vision layer, 56 px images."""


def spec(key: str, tiny: bool = False) -> ModelSpec:
    """The spec of ``key`` (one of :data:`SPECS`) at real size, or its tiny twin."""
    table = TINY_SPECS if tiny else SPECS
    if key not in table:
        raise KeyError(f"unknown real-size model {key!r}; known: {', '.join(table)}")
    return table[key]


# --- tokenizer -----------------------------------------------------------------------------------


def _round_up(n: int, multiple: int = 128) -> int:
    return -(-n // multiple) * multiple


def padded_tokenizer(family: str, vocab_size: int | None = None):
    """:func:`mimic_utils.models.tiny.build_tokenizer` with filler tokens up to ``vocab_size`` entries.

    The fillers (``fill<id>``) follow the trained vocabulary and the special tokens move to the end, as
    in Qwen's own vocabulary. No text encodes to a filler (BPE has no merges leading there), and each
    decodes to its own name, so a random model's output decodes to *some* text instead of silently
    dropping ids the tokenizer does not know. ``None`` rounds the tokenizer's own size up to a multiple
    of 128.
    """
    from transformers import PreTrainedTokenizerFast

    base = tiny_models.build_tokenizer(family=family)
    size = _round_up(len(base)) if vocab_size is None else vocab_size
    if size < len(base):
        raise ValueError(f"vocab_size {size} is below the tokenizer's own {len(base)} tokens")
    data = json.loads(base.backend_tokenizer.to_str())
    vocab, added = data["model"]["vocab"], data["added_tokens"]
    first_special = size - len(added)  # the special tokens move to the end, as in Qwen's own vocabulary
    for token_id in range(len(vocab), first_special):
        vocab[f"fill{token_id}"] = token_id
    for offset, token in enumerate(added):
        token["id"] = first_special + offset
    kwargs = {key: value for key, value in base.init_kwargs.items() if key != "backend"}
    kwargs["chat_template"] = base.chat_template
    padded = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), **kwargs)
    if len(padded) != size:
        raise RuntimeError(f"padded tokenizer has {len(padded)} tokens, expected {size}")
    return padded


# --- configs and models --------------------------------------------------------------------------


def _text_config(spec: ModelSpec, tokenizer) -> dict:
    text = dict(spec.text)
    theta = text.pop("rope_theta")
    rope = {"rope_type": "default", "rope_theta": theta}
    if "mrope_section" in spec.extra:
        rope["mrope_section"] = list(spec.extra["mrope_section"])
    return {**text, "vocab_size": len(tokenizer), "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True, "rope_parameters": rope, **tiny_models._token_ids(tokenizer)}


def model_config(spec: ModelSpec, tokenizer):
    """The transformers config of ``spec`` for ``tokenizer`` (whose size is the model's vocabulary)."""
    from transformers import LlavaOnevisionConfig, Qwen2VLConfig

    text = _text_config(spec, tokenizer)
    if spec.family == "llava_onevision":
        return LlavaOnevisionConfig(
            vision_config={"model_type": "siglip_vision_model", "vision_use_head": False, **spec.vision},
            text_config={"model_type": "qwen2", **text},
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=spec.extra["image_grid_pinpoints"],
            vision_aspect_ratio="anyres_max_9",
            tie_word_embeddings=True,
        )
    vision = {**spec.vision, "hidden_size": spec.text["hidden_size"], "in_channels": 3}
    return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                         **tiny_models._vision_token_ids(tokenizer), **tiny_models._token_ids(tokenizer))


def build_processor(spec: ModelSpec, tokenizer):
    """The family's real processor class around ``tokenizer``, at the spec's image size."""
    if spec.family == "llava_onevision":
        return tiny_models.build_processor(spec.family, tokenizer, image_size=spec.vision["image_size"],
                                    image_grid_pinpoints=spec.extra["image_grid_pinpoints"])
    min_pixels, max_pixels = spec.pixels
    return tiny_models.build_processor(spec.family, tokenizer, min_pixels=min_pixels, max_pixels=max_pixels)


def build(key: str, tiny: bool = False, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
          seed: int = 0):
    """``(model, processor)`` of ``key`` with random weights, created directly on ``device`` in ``dtype``
    (a 2B model never passes through CPU fp32). In eval mode, like a loaded checkpoint."""
    model_spec = spec(key, tiny)
    tokenizer = padded_tokenizer(model_spec.family, model_spec.vocab_size)
    config = model_config(model_spec, tokenizer)
    torch.manual_seed(seed)
    with torch.device(device):
        model = tiny_models._model_class(model_spec.family)._from_config(config, dtype=dtype)
    model.eval()
    return model, build_processor(model_spec, tokenizer)


def noise_images(spec: ModelSpec, count: int, seed: int = 0) -> list:
    """``count`` random RGB images of ``spec.image_side`` px (different per seed and index)."""
    generator = torch.Generator().manual_seed(seed)
    side = spec.image_side
    return [Image.fromarray((torch.rand(side, side, 3, generator=generator) * 255).to(torch.uint8).numpy())
            for _ in range(count)]


def parameter_count(model) -> dict[str, int]:
    """Parameters of the whole model and of its language model (tied embeddings counted once)."""
    total = sum(p.numel() for p in model.parameters())
    language = sum(p.numel() for name, p in model.named_parameters() if "language_model" in name)
    return {"total": total, "language_model": language}


__all__ = [
    "SPECS",
    "TINY_SPECS",
    "ModelSpec",
    "build",
    "build_processor",
    "model_config",
    "noise_images",
    "padded_tokenizer",
    "parameter_count",
    "spec",
]
