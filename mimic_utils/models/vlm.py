"""One interface for the real LVLM families of the study: LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, InternVL.

Every model is treated the same way: load it (:func:`load_adapter`, or :func:`adapter_from_model` for an
in-memory tiny model), turn multi-image samples into model inputs with the official MIMIC prompt
(:meth:`VLMAdapter.prepare`, optionally with 1D pooling of each image's tokens), answer greedily
(:meth:`VLMAdapter.generate`), and find where each image sits in the sequence
(:meth:`VLMAdapter.image_block_ids`, :meth:`VLMAdapter.token_budget`). ``adapter.settings`` records the
model, dtype, quantization, prompt layout and the preprocessing that moves scores with every prediction.
What counts as an image token, how pooling keeps M-RoPE positions, and the preprocessing settings are in
docs/design.md (*Image tokens and 1D pooling*, *Preprocessing settings*).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# transformers itself is imported where a model or processor is built: it costs seconds, and readers of
# predictions (evaluate, transfer, analysis) import this module without ever loading a model.
from mimic_utils.models import masking, vision_cache
from mimic_utils.data.prompts import (
    build_messages,
    is_mimic_task,
    max_new_tokens_for,
    normalize_task_family,
    prompt_settings,
)


MASK_FILE = "mimic_mask.json"
"""Beside a model trained with image-block masking: its masked layers, applied whenever it is loaded."""

BACKEND_FILE = "mimic_image_backend.json"
"""Beside every model :meth:`VLMAdapter.save` writes: the image-processor backend it was trained and scored
with, which :func:`load_adapter` uses again unless the preprocessing asks for another."""

IMAGE_BACKENDS = ("pil", "torchvision")
"""transformers' two image-processor implementations of each family (``Qwen2VLImageProcessorPil`` and
``Qwen2VLImageProcessor``). They resize differently, so one checkpoint scores differently under each; with
torchvision installed (Colab, most GPU images) ``AutoProcessor`` picks torchvision, without it PIL."""

DEFAULT_IMAGE_BACKEND = "pil"
"""The backend of a checkpoint that records none: hub checkpoints (their published scores come from the
original LLaVA / Qwen code and lmms-eval with the PIL/numpy processors) and folders saved before the
backend was recorded (all written by this project's CPU environment, which has no torchvision)."""


def weights_hashes(folder: Path, full_hash_limit: int = 512 * 2**20) -> tuple[str, str | None]:
    """``(weights_fingerprint, weights_sha256)`` of a local checkpoint, in one read of its files.

    ``weights_fingerprint`` identifies the weights cheaply at any size: sha256 over each safetensors file's
    name, size and bytes (above ``full_hash_limit``, its first and last 16 MB), so predictions and checkpoints
    of other weights are never reused. ``weights_sha256`` is what the model card calls it: the sha256 of the
    weights file itself (``sha256sum model.safetensors``), given for a checkpoint of one file within the limit
    and ``None`` otherwise (sharded or large weights: the fingerprint still identifies them)."""
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors"))
    plain = None
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            if size <= full_hash_limit:
                data = handle.read()
                digest.update(data)
                plain = hashlib.sha256(data).hexdigest() if len(files) == 1 else None
            else:
                digest.update(handle.read(16 * 2**20))
                handle.seek(size - 16 * 2**20)
                digest.update(handle.read())
    return digest.hexdigest(), plain


def model_fingerprint(settings: dict) -> str:
    """A short hash of what makes a model's answers what they are: its weights (``weights_fingerprint``, or
    hub commit, or id), mask, preprocessing, dtype and quantization. Stored with every prediction and checkpoint."""
    weights = settings.get("weights_fingerprint") or settings.get("commit") or settings.get("model")
    facts = {k: settings.get(k) for k in ("mask", "preprocessing", "dtype", "quantization", "pool")}
    if isinstance(facts["preprocessing"], dict) and facts["preprocessing"].get("image_backend") == DEFAULT_IMAGE_BACKEND:
        # every prediction and checkpoint made before the backend was recorded used PIL: their fingerprints
        # stay valid, and any other backend gives new ones
        facts["preprocessing"] = {k: v for k, v in facts["preprocessing"].items() if k != "image_backend"}
    return hashlib.sha256(json.dumps({"weights": weights, **facts}, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ModelLoadError(RuntimeError):
    """A model or family could not be resolved or loaded; the message names the model and family."""


@dataclass(frozen=True)
class FamilySpec:
    """What the adapter needs to know about one family.

    ``vision_inputs`` are the processor outputs that feed the vision path (removed from pooled inputs);
    ``projector`` is the module trained in full (kept out of 4/8-bit quantization, as the official QLoRA
    path does); ``mrope`` marks families whose positions derive from ``image_grid_thw``.
    """

    name: str
    model_class: str
    processor_class: str
    model_types: tuple[str, ...]
    vision_inputs: tuple[str, ...]
    projector: str
    mrope: bool = False


FAMILIES: dict[str, FamilySpec] = {
    "llava_onevision": FamilySpec(
        name="llava_onevision",
        model_class="LlavaOnevisionForConditionalGeneration",
        processor_class="LlavaOnevisionProcessor",
        model_types=("llava_onevision",),
        vision_inputs=("pixel_values", "image_sizes", "batch_num_images"),
        projector="multi_modal_projector",
    ),
    "qwen2_vl": FamilySpec(
        name="qwen2_vl",
        model_class="Qwen2VLForConditionalGeneration",
        processor_class="Qwen2VLProcessor",
        model_types=("qwen2_vl",),
        vision_inputs=("pixel_values", "image_grid_thw"),
        projector="merger",
        mrope=True,
    ),
    "qwen2_5_vl": FamilySpec(
        name="qwen2_5_vl",
        model_class="Qwen2_5_VLForConditionalGeneration",
        processor_class="Qwen2_5_VLProcessor",
        model_types=("qwen2_5_vl",),
        vision_inputs=("pixel_values", "image_grid_thw"),
        projector="merger",
        mrope=True,
    ),
    "internvl": FamilySpec(
        name="internvl",
        model_class="InternVLForConditionalGeneration",
        processor_class="InternVLProcessor",
        model_types=("internvl",),
        vision_inputs=("pixel_values",),
        projector="multi_modal_projector",
    ),
}

PREPROCESSING_KEYS = {
    "llava_onevision": ("multi_image", "vision_aspect_ratio", "image_grid_pinpoints"),
    "qwen2_vl": ("min_pixels", "max_pixels"),
    "qwen2_5_vl": ("min_pixels", "max_pixels"),
    "internvl": ("crop_to_patches", "min_patches", "max_patches"),
}
"""Preprocessing a caller may set per family (``load_adapter(..., preprocessing={...})``); every family
also takes ``image_backend`` (one of :data:`IMAGE_BACKENDS`)."""


def known_families() -> list[str]:
    return list(FAMILIES)


def get_family(name: str, model: str | None = None) -> FamilySpec:
    """The :class:`FamilySpec` of ``name``; a clear :class:`ModelLoadError` listing the known ones."""
    if name not in FAMILIES:
        subject = f" for model {model!r}" if model else ""
        raise ModelLoadError(f"unknown model family {name!r}{subject}; known families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_for_model_type(model_type: str, model: str | None = None) -> str:
    """The family whose checkpoints declare ``model_type`` in their config."""
    for spec in FAMILIES.values():
        if model_type in spec.model_types:
            return spec.name
    hint = ""
    if model_type.startswith("internvl"):
        hint = " (InternVL needs the transformers-native '-hf' checkpoints, model_type 'internvl')"
    subject = f"model {model!r}" if model else "a model"
    raise ModelLoadError(
        f"cannot infer the family of {subject} from model_type {model_type!r}{hint}; "
        f"pass family= one of: {', '.join(FAMILIES)}"
    )


def quantization_config(kind: str | None, compute_dtype: torch.dtype = torch.bfloat16, keep: tuple[str, ...] = ()):
    """``BitsAndBytesConfig`` for ``"4bit"`` (nf4, double quantisation, ``compute_dtype``) or ``"8bit"``.

    ``keep`` names modules left unquantized (the projector, trained in full); ``lm_head`` always is.
    ``None`` gives ``None``. Building the config touches no GPU; loading with it needs CUDA.
    """
    if kind is None:
        return None
    from transformers import BitsAndBytesConfig

    skip = list(keep) + ["lm_head"]
    if kind == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=skip,
        )
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    raise ValueError(f"unknown quantization {kind!r}; use '4bit', '8bit' or None")


def expose_video_processor_base() -> None:
    """Let processor class checks find ``VideoProcessorMixin`` when torchvision is absent.

    transformers 5.23 exports ``VideoProcessorMixin`` at top level only with torchvision installed, and
    ``ProcessorMixin`` resolves the expected class of ``video_processor`` by that name, so without
    torchvision every processor that declares a video processor fails its class check (for ``None``
    and for real video processors alike). We export the real class under its own name, which is what
    transformers itself does when torchvision is present. No behaviour changes.
    """
    import transformers
    import transformers.processing_utils as processing_utils
    from transformers.video_processing_utils import VideoProcessorMixin

    for namespace in (transformers, processing_utils.transformers_module):
        if "VideoProcessorMixin" not in vars(namespace):
            setattr(namespace, "VideoProcessorMixin", VideoProcessorMixin)


def _video_processor_without_torchvision(family: str):
    """The family's video processor if it imports without torchvision, else the generic base class."""
    if family == "llava_onevision":
        from transformers.models.llava_onevision.video_processing_llava_onevision import (
            LlavaOnevisionVideoProcessor,
        )

        return LlavaOnevisionVideoProcessor()
    from transformers.video_processing_utils import BaseVideoProcessor

    return BaseVideoProcessor()


def load_processor(source: str, family: str, revision: str | None = None, trust_remote_code: bool = False):
    """The family's processor class loaded from ``source`` (hub id or folder).

    With torchvision installed this is plain ``from_pretrained``. Without it, transformers cannot build
    any video processor through ``AutoVideoProcessor``, so the processor is assembled from its saved
    parts instead: the tokenizer (``AutoTokenizer``), the image processor (``AutoImageProcessor``, PIL
    backend), the processor's own config (``processor_config.json``, chat template), and a video
    processor that needs no torchvision (videos are never used here).
    """
    import transformers
    from transformers.utils import is_torchvision_available

    spec = get_family(family, source)
    expose_video_processor_base()
    processor_class = getattr(transformers, spec.processor_class)
    options = {"revision": revision, "trust_remote_code": trust_remote_code}
    if is_torchvision_available():
        return processor_class.from_pretrained(source, **options)
    parts = {
        "tokenizer": transformers.AutoTokenizer.from_pretrained(source, **options),
        "image_processor": transformers.AutoImageProcessor.from_pretrained(source, **options),
        "video_processor": _video_processor_without_torchvision(family),
    }
    processor_dict, init_kwargs = processor_class.get_processor_dict(source, revision=revision)
    args = [parts[name] for name in processor_class.get_attributes()]
    return processor_class.from_args_and_dict(args, processor_dict, **init_kwargs)


def _looks_like_path(source: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else with path syntax is a folder."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def _resolve_family(family: str | None, model_type: str, source: str) -> str:
    """The given family, checked against the config's ``model_type``, or the one inferred from it."""
    if family is None:
        return family_for_model_type(model_type, source)
    owner = next((spec.name for spec in FAMILIES.values() if model_type in spec.model_types), None)
    if owner is not None and owner != family:
        raise ModelLoadError(f"model {source!r} has model_type {model_type!r}, which is not family {family!r}")
    return family


def _torch_dtype(dtype):
    if isinstance(dtype, str) and dtype != "auto":
        return getattr(torch, dtype)
    return dtype


def load_adapter(
    model_id_or_path: str | Path,
    family: str | None = None,
    dtype: str | torch.dtype = "auto",
    device: str = "cpu",
    attn_implementation: str | dict | None = None,
    quantization: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    preprocessing: dict | None = None,
) -> VLMAdapter:
    """Load a checkpoint (hub id or local folder) of a known family into a :class:`VLMAdapter`.

    - ``family``: inferred from the config's ``model_type`` when not given.
    - ``dtype``: ``"auto"`` (the checkpoint's), a ``torch.dtype`` or its name (``"bfloat16"``).
    - ``attn_implementation``: a name (``"sdpa"``, ``"eager"``, or one registered through
      ``transformers.AttentionInterface``) or a per-sub-config dict such as
      ``{"text_config": "my_mask", "vision_config": "sdpa"}``; ``None`` keeps the default.
    - ``quantization``: ``"4bit"`` (nf4 + double quantisation, compute dtype = ``dtype`` or bf16),
      ``"8bit"`` or ``None``; needs CUDA. The projector stays unquantized.
    - ``revision``: a hub branch, tag or commit, pinned for config, weights and processor.
    - Weights are read from safetensors only; ``trust_remote_code`` stays off unless turned on.
    - ``preprocessing``: family settings from :data:`PREPROCESSING_KEYS` and ``image_backend`` (recorded in
      ``settings``). The backend defaults to the one the model was saved with (:data:`BACKEND_FILE`), else
      :data:`DEFAULT_IMAGE_BACKEND`, whatever transformers would pick in this environment.

    Raises :class:`ModelLoadError` naming the model and family when anything cannot be resolved.
    """
    import transformers

    source = _resolve_source(model_id_or_path, family)
    config = _read_config(source, family, revision, trust_remote_code)
    family = _resolve_family(family, config.model_type, source)
    spec = get_family(family, source)
    options = _pretrained_options(config, spec, dtype, device, attn_implementation, quantization, revision,
                                  trust_remote_code)
    try:
        model = getattr(transformers, spec.model_class).from_pretrained(source, **options)
        processor = load_processor(source, family, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as error:
        raise ModelLoadError(
            f"cannot load model {source!r} as family {family!r} ({spec.model_class}): {error}"
        ) from error
    if quantization is None:
        model = model.to(device)
    model.eval()
    settings = _loaded_settings(source, config, revision, quantization, trust_remote_code)
    preprocessing = {"image_backend": saved_image_backend(Path(source)) or DEFAULT_IMAGE_BACKEND, **(preprocessing or {})}
    adapter = adapter_from_model(model, processor, family, settings, preprocessing=preprocessing)
    _apply_saved_mask(adapter, Path(source))
    return adapter


def _resolve_source(model_id_or_path: str | Path, family: str | None) -> str:
    """A local folder (``~`` expanded) or a hub id; an unknown family or a missing folder fails first."""
    source = str(model_id_or_path)
    if family is not None:
        get_family(family, source)  # an unknown family fails before anything is read
    if Path(source).expanduser().exists():
        return str(Path(source).expanduser())
    if _looks_like_path(source):
        raise ModelLoadError(f"model folder {source!r} does not exist (family {family or 'to be inferred'})")
    return source


def _read_config(source: str, family: str | None, revision: str | None, trust_remote_code: bool):
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as error:
        raise ModelLoadError(
            f"cannot read the config of model {source!r} (family {family or 'to be inferred'}, "
            f"revision {revision or 'default'}): {error}"
        ) from error


def _pretrained_options(config, spec: FamilySpec, dtype, device: str, attn_implementation, quantization: str | None,
                        revision: str | None, trust_remote_code: bool) -> dict[str, Any]:
    """The keyword arguments of ``from_pretrained``: safetensors only, and the projector kept unquantized."""
    torch_dtype = _torch_dtype(dtype)
    options: dict[str, Any] = {
        "config": config,
        "revision": revision,
        "dtype": torch_dtype,
        "use_safetensors": True,
        "trust_remote_code": trust_remote_code,
    }
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    if quantization is not None:
        compute = torch_dtype if isinstance(torch_dtype, torch.dtype) else torch.bfloat16
        options["quantization_config"] = quantization_config(quantization, compute, keep=(spec.projector,))
        options["device_map"] = {"": device}
    return options


def _loaded_settings(source: str, config, revision: str | None, quantization: str | None,
                     trust_remote_code: bool) -> dict:
    """What a loaded checkpoint adds to the recorded settings: where it came from, and its weights' hashes
    (:func:`weights_hashes`)."""
    settings = {
        "model": source,
        "revision": revision,
        "commit": getattr(config, "_commit_hash", None),
        "quantization": quantization,
        "trust_remote_code": trust_remote_code,
    }
    if Path(source).is_dir():
        fingerprint, sha256 = weights_hashes(Path(source))
        settings["weights_fingerprint"] = fingerprint
        if sha256 is not None:
            settings["weights_sha256"] = sha256
    return settings


def _apply_saved_mask(adapter: VLMAdapter, folder: Path) -> None:
    """A model trained with image-block masking (``mimic_mask.json`` beside it) is always run with it."""
    mask_file = folder / MASK_FILE
    if mask_file.is_file():
        saved = json.loads(mask_file.read_text(encoding="utf-8"))
        adapter.set_mask(saved["layers"], mode=saved.get("mode", "blockwise"))


def saved_image_backend(folder: Path) -> str | None:
    """The image-processor backend recorded beside a saved model (:data:`BACKEND_FILE`), if any."""
    path = folder / BACKEND_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("image_backend")


def image_backend(processor) -> str:
    """The backend of ``processor``'s image processor: ``"pil"`` or ``"torchvision"``."""
    return str(getattr(processor.image_processor, "backend", DEFAULT_IMAGE_BACKEND))


def use_image_backend(processor, backend: str, model: str = "") -> None:
    """Give ``processor`` the image processor of ``backend`` with the same settings (a no-op when it has it).

    The class is the family's own for that backend (``Qwen2VLImageProcessorPil`` ↔ ``Qwen2VLImageProcessor``,
    from transformers' image-processor mapping). Asking for torchvision where it is not installed fails here,
    naming the model, rather than transformers silently falling back to PIL.
    """
    from transformers.models.auto.image_processing_auto import (
        IMAGE_PROCESSOR_MAPPING_NAMES,
        get_image_processor_class_from_name,
    )
    from transformers.utils import is_torchvision_available

    if backend not in IMAGE_BACKENDS:
        raise ModelLoadError(f"model {model!r}: unknown image_backend {backend!r}; use one of {', '.join(IMAGE_BACKENDS)}")
    current = processor.image_processor
    if image_backend(processor) == backend:
        return
    if backend == "torchvision" and not is_torchvision_available():
        raise ModelLoadError(
            f"model {model!r}: image_backend 'torchvision' needs torchvision, which is not installed here; install "
            f"the torchvision build matching torch {torch.__version__} (make colab-check builds such an "
            f"environment) or set image_backend: pil")
    name = type(current).__name__
    mapping = next((m for m in IMAGE_PROCESSOR_MAPPING_NAMES.values() if name in m.values()), None)
    target = (mapping or {}).get(backend)
    if target is None:
        raise ModelLoadError(f"model {model!r}: image processor {name} has no {backend} implementation in transformers")
    config = {k: v for k, v in current.to_dict().items() if k not in ("image_processor_type", "_processor_class")}
    replacement = get_image_processor_class_from_name(target)(**config)
    if getattr(replacement, "backend", None) != backend:
        raise ModelLoadError(f"model {model!r}: {target} did not load as the {backend} backend")
    processor.image_processor = replacement


def adapter_from_model(model, processor, family: str, settings: dict | None = None, preprocessing: dict | None = None):
    """Wrap an in-memory model and processor (e.g. from :func:`mimic_utils.models.tiny.build_tiny`).

    ``settings`` are merged into the recorded settings; ``preprocessing`` is applied and recorded, with the
    image processor's backend (``image_backend`` switches it first, :func:`use_image_backend`).
    """
    get_family(family, getattr(model, "name_or_path", None))
    overrides = dict(preprocessing or {})
    backend = overrides.pop("image_backend", None)
    if backend is not None:
        use_image_backend(processor, backend, getattr(model, "name_or_path", "") or type(model).__name__)
    recorded = {
        "family": family,
        "model": getattr(model, "name_or_path", "") or type(model).__name__,
        "model_class": type(model).__name__,
        "processor_class": type(processor).__name__,
        "image_processor_class": type(processor.image_processor).__name__,
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "quantization": None,
    }
    recorded.update(settings or {})
    image_kwargs, effective = apply_preprocessing(family, model, processor, overrides)
    recorded["prompt"] = prompt_settings(family)
    recorded["preprocessing"] = {"image_backend": image_backend(processor), **effective}
    return VLMAdapter(model=model, processor=processor, family=family, settings=recorded, image_kwargs=image_kwargs)


def settable_preprocessing(family: str, effective: dict | None) -> dict:
    """The part of a recorded (effective) preprocessing that :func:`load_adapter` accepts back: the family's
    :data:`PREPROCESSING_KEYS` and ``image_backend``, without the derived facts (patch size, token counts)."""
    keys = (*PREPROCESSING_KEYS[family], "image_backend")
    return {k: v for k, v in (effective or {}).items() if k in keys}


def apply_preprocessing(family: str, model, processor, overrides: dict) -> tuple[dict, dict]:
    """Apply ``overrides`` to processor (and model config where both must agree).

    Returns ``(image_kwargs, effective)``: the image kwargs to pass on every processor call and the
    effective preprocessing as a plain dict for the settings.
    """
    allowed = PREPROCESSING_KEYS[family]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"unknown preprocessing {unknown} for family {family!r}; accepted: {', '.join(allowed)}")
    return _PREPROCESSORS[family](model, processor, overrides)


def _llava_onevision_preprocessing(model, processor, overrides: dict) -> tuple[dict, dict]:
    image_processor = processor.image_processor
    multi_image = overrides.get("multi_image", "pad")
    if multi_image not in ("pad", "anyres"):
        raise ValueError(f"llava_onevision multi_image must be 'pad' or 'anyres', got {multi_image!r}")
    if "vision_aspect_ratio" in overrides:
        processor.vision_aspect_ratio = overrides["vision_aspect_ratio"]
        model.config.vision_aspect_ratio = overrides["vision_aspect_ratio"]
    if "image_grid_pinpoints" in overrides:
        pinpoints = [list(p) for p in overrides["image_grid_pinpoints"]]
        image_processor.image_grid_pinpoints = pinpoints
        model.config.image_grid_pinpoints = pinpoints
    size = image_processor.size
    return {}, {
        # "pad" (HF and official default): each image of a multi-image sample is padded to a square
        # with the mean colour and resized to the base resolution, no anyres tiles. "anyres" gives
        # every image the single-image anyres treatment (tiles + newline features).
        "multi_image": multi_image,
        "single_image": "anyres",
        "image_size": [size["height"], size["width"]],
        "vision_aspect_ratio": processor.vision_aspect_ratio,
        "image_grid_pinpoints": [list(p) for p in image_processor.image_grid_pinpoints],
        "num_image_tokens": processor.num_image_tokens,
        "vision_feature_select_strategy": model.config.vision_feature_select_strategy,
        "vision_feature_layer": model.config.vision_feature_layer,
    }


def _qwen2_vl_preprocessing(model, processor, overrides: dict) -> tuple[dict, dict]:
    from transformers.image_utils import SizeDict

    image_processor = processor.image_processor
    min_pixels = overrides.get("min_pixels", image_processor.size["shortest_edge"])
    max_pixels = overrides.get("max_pixels", image_processor.size["longest_edge"])
    image_processor.size = SizeDict(shortest_edge=int(min_pixels), longest_edge=int(max_pixels))
    return {}, {
        "min_pixels": int(min_pixels),
        "max_pixels": int(max_pixels),
        "patch_size": image_processor.patch_size,
        "merge_size": image_processor.merge_size,
        "temporal_patch_size": image_processor.temporal_patch_size,
    }


def _internvl_preprocessing(model, processor, overrides: dict) -> tuple[dict, dict]:
    # the processor class sets crop_to_patches=True for images, above the image processor's own
    # attribute, so the tiling settings are passed explicitly on every call.
    image_processor = processor.image_processor
    defaults = getattr(processor, "images_kwargs", {}) or {}
    tiles = {
        "crop_to_patches": bool(
            overrides.get("crop_to_patches", defaults.get("crop_to_patches", image_processor.crop_to_patches))
        ),
        "min_patches": int(overrides.get("min_patches", image_processor.min_patches)),
        "max_patches": int(overrides.get("max_patches", image_processor.max_patches)),
    }
    for key, value in tiles.items():
        setattr(image_processor, key, value)
    size = image_processor.size
    return dict(tiles), {
        **tiles,
        "image_size": [size["height"], size["width"]],
        "tokens_per_tile": processor.image_seq_length,
    }


#: Per family: apply its preprocessing settings, return ``(image_kwargs, effective settings)``.
_PREPROCESSORS = {
    "llava_onevision": _llava_onevision_preprocessing,
    "qwen2_vl": _qwen2_vl_preprocessing,
    "qwen2_5_vl": _qwen2_vl_preprocessing,
    "internvl": _internvl_preprocessing,
}


# --- samples and batches -------------------------------------------------------------------------


@dataclass
class Sample:
    """One multi-image question: PIL images in order, the question, and its task family.

    For the MIMIC families (``counting``, ``listing``, ``common``, ``oddone``) ``question`` is the bare
    question and the official prompt is built around it; for any other task (a public benchmark) it
    is that benchmark's full prompt text, placed after the images as is.
    """

    images: list
    question: str
    task_family: str
    #: "Image k: " before each image (prompts.IMAGE_LABEL); only the organism's per-image questions use it
    image_labels: bool = False


def _sample_fields(sample) -> tuple[list, str, str, bool]:
    """Images, question, task family and whether the prompt labels its images (absent: no, the
    benchmark's layout), from a :class:`Sample` or a dict."""
    if isinstance(sample, dict):
        return (list(sample["images"]), sample["question"], sample["task_family"],
                bool(sample.get("image_labels", False)))
    return list(sample.images), sample.question, sample.task_family, bool(getattr(sample, "image_labels", False))


@dataclass
class Batch:
    """Model inputs for a batch of samples, plus what is needed to read them.

    ``inputs`` go to ``model(**inputs)`` and ``model.generate(**inputs)`` unchanged.
    ``image_tokens[i][j]`` is the number of sequence positions image j of sample i occupies (after
    pooling); ``unpooled_image_tokens`` the number before pooling.
    """

    inputs: dict[str, Any]
    image_tokens: list[list[int]]
    unpooled_image_tokens: list[list[int]]
    task_families: list[str]
    prompts: list[str]
    pool: int = 1
    vision_cache: bool = True  # the model call reads the frozen tower's output from the cache

    @property
    def input_length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


def pool_tokens(features: torch.Tensor, r: int) -> torch.Tensor:
    """1D pooling of one image's tokens ``(L, D)`` → ``(⌈L/r⌉, D)``
    (docs/design.md, *Image tokens and 1D pooling*).

    Zero-pads to a multiple of r, then averages each group of r consecutive tokens (the padded zeros
    count in the last group's mean, as in average pooling with zero padding).
    """
    if r < 1:
        raise ValueError(f"pooling factor must be >= 1, got {r}")
    if r == 1:
        return features
    length, dim = features.shape
    padding = (-length) % r
    padded = torch.cat([features.float(), features.new_zeros(padding, dim, dtype=torch.float32)], dim=0)
    return padded.view(-1, r, dim).mean(dim=1).to(features.dtype)


# --- the adapter ---------------------------------------------------------------------------------


@dataclass
class VLMAdapter:
    """A model, its processor, its family and the settings recorded with every prediction.

    ``mask_layers`` (set with :meth:`set_mask`) are the decoder layers in which image tokens attend only
    within their own image (:mod:`mimic_utils.models.masking`); every forward and generation through the adapter
    applies them, so a masked model is trained, evaluated and analysed under the same mask.
    """

    model: Any
    processor: Any
    family: str
    settings: dict
    image_kwargs: dict = field(default_factory=dict)
    mask_layers: tuple[int, ...] = ()
    mask_mode: str = "blockwise"
    use_vision_cache: bool = True  # read the frozen tower's output from mimic_utils.models.vision_cache

    def set_mask(self, spec, auto_layer: int | None = None, mode: str = "blockwise") -> tuple[int, ...]:
        """Mask image blocks in the layers of ``spec`` (``"12-23"``, ``"second_half"``, ``"auto"``, indices,
        or ``None``/``"none"`` for no mask); recorded in ``settings["mask"]``."""
        self.mask_layers = masking.resolve_layers(spec, masking.num_text_layers(self.model), auto_layer)
        self.mask_mode = mode
        if self.mask_layers:
            masking.enable(self.model)
        self.settings["mask"] = {"layers": list(self.mask_layers), "mode": mode} if self.mask_layers else None
        return self.mask_layers

    def masked(self, batch: "Batch"):
        """The masking context for ``batch`` (a no-op context for an unmasked adapter)."""
        if not self.mask_layers:
            return nullcontext()
        return masking.image_blocks(self.image_block_ids(batch), self.mask_layers, self.mask_mode, model=self.model)

    def forward(self, batch: "Batch", model=None, **kwargs):
        """``model(**batch.inputs, **kwargs)`` under the adapter's mask (training and analysis use this).

        ``model`` defaults to :attr:`model`; training under ``accelerate`` passes the prepared wrapper
        (DDP, FSDP, DeepSpeed), whose forward is what synchronises gradients.
        """
        with self.masked(batch):
            return (self.model if model is None else model)(**self.model_inputs(batch), **kwargs)

    def save(self, folder: str | Path) -> Path:
        """``save_pretrained`` of model and processor, the image-processor backend (:data:`BACKEND_FILE`) and
        the mask (``mimic_mask.json``) if any."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        (folder / BACKEND_FILE).write_text(json.dumps({"image_backend": image_backend(self.processor)}) + "\n")
        mask_file = folder / MASK_FILE
        if self.mask_layers:
            mask_file.write_text(json.dumps({"layers": list(self.mask_layers), "mode": self.mask_mode}) + "\n")
        elif mask_file.exists():
            mask_file.unlink()
        return folder

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_token_id(self) -> int:
        return int(self.processor.image_token_id)

    def render_prompt(self, question: str, n_images: int, task_family: str, image_labels: bool = False) -> str:
        """The chat-template text of one sample (placeholders not yet expanded)."""
        messages = build_messages(question, n_images, task_family, self.family, image_labels)
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @property
    def end_of_turn(self) -> str:
        """What the chat template writes after an assistant answer (e.g. ``<|im_end|>``), read off the
        template itself so training targets end exactly as the model's own turns do."""
        marker = "\u00a7MIMIC\u00a7"
        turn = [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                {"role": "assistant", "content": [{"type": "text", "text": marker}]}]
        text = self.processor.apply_chat_template(turn, tokenize=False)
        return text.split(marker, 1)[1].rstrip()

    def prepare(self, samples, pool: int = 1, answers: list[str] | None = None, vision_cache: bool | None = None) -> Batch:
        """Model inputs for ``samples`` (``Sample``, or dicts / objects with ``images``, ``question``,
        ``task_family``): official prompt through the chat template, left padding, and with
        ``pool > 1`` the 1D-pooled vision tokens (see the module docstring).

        With ``answers`` (training), each prompt is followed by its answer and the template's
        :attr:`end_of_turn`, so every row ends with the tokens a loss should be taken on.

        With ``vision_cache`` (default: :attr:`use_vision_cache`, on) the frozen tower's output comes from :mod:`mimic_utils.models.vision_cache`
        when the model is called (:meth:`model_inputs`) and enters it through ``mm_encoder_outputs``, the
        route pooling takes; ``batch.inputs`` stay the processor's own outputs.
        """
        samples = [_sample_fields(s) for s in samples]
        families = [normalize_task_family(task) if is_mimic_task(task) else task for _, _, task, _ in samples]
        prompts = [self.render_prompt(q, len(images), task, labelled) for images, q, task, labelled in samples]
        if answers is not None:
            prompts = [prompt + answer + self.end_of_turn for prompt, answer in zip(prompts, answers, strict=True)]
        images = [[image.convert("RGB") for image in sample_images] for sample_images, *_ in samples]
        if self.settings.get("preprocessing", {}).get("multi_image") == "anyres":
            # LLaVA-OV decides pad vs anyres by the nesting: a flat list makes every image a 1-image sample
            images = [image for sample_images in images for image in sample_images]
        call = {
            "text": list(prompts),
            "images": images if any(images) else None,
            "padding": True,
            "padding_side": "left",
            "return_tensors": "pt",
            "return_text_replacement_offsets": True,
        }
        if self.image_kwargs and call["images"] is not None:
            call["images_kwargs"] = dict(self.image_kwargs)
        encoded = self.processor(**call)
        vision_cache = self.use_vision_cache if vision_cache is None else vision_cache
        offsets = encoded.pop("text_replacement_offsets")
        image_token = self.processor.image_token
        counts = [[r["replacement"].count(image_token) for r in row if r["type"] == "image"] for row in offsets]
        inputs = {key: self._to_model(value) for key, value in encoded.items()}
        batch = Batch(inputs, counts, [list(c) for c in counts], families, prompts, pool=1, vision_cache=vision_cache)
        if pool > 1 and any(counts):
            batch = self.pool(batch, pool, self.cached_image_features(batch) if vision_cache else None)
        return batch

    def model_inputs(self, batch: Batch) -> dict:
        """What the model is called with: ``batch.inputs``, or — for an unpooled batch whose tower output
        is cached — the same inputs routed through ``mm_encoder_outputs`` (the r = 1 pooling route, which
        reproduces the model exactly) so the tower does not run again."""
        if batch.pool != 1 or not batch.vision_cache or not any(batch.image_tokens):
            return batch.inputs
        features = self.cached_image_features(batch)
        return batch.inputs if features is None else self.pool(batch, 1, features).inputs

    def cached_image_features(self, batch: Batch):
        """The vision path's output for ``batch`` with the frozen tower read from the shared
        :mod:`mimic_utils.models.vision_cache` (None where the family or the model's state cannot be cached).
        The live projector keeps its gradient only while the model trains."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.model.training):
            return vision_cache.image_features(self.model, self.family, batch.inputs, batch.image_tokens)

    def _to_model(self, value):
        if not isinstance(value, torch.Tensor):
            return value
        value = value.to(self.model.device)
        if value.is_floating_point() and self.model.dtype.is_floating_point:
            value = value.to(self.model.dtype)
        return value

    def pool(self, batch: Batch, r: int, features=None) -> Batch:
        """The 1D-pooled version of an unpooled ``batch`` (``r = 1`` runs the same path without
        shortening anything, which must reproduce the unpooled model exactly). ``features`` are the vision
        path's output when already computed (the vision cache); otherwise the model's own path runs."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if batch.pool != 1:
            raise ValueError("batch is already pooled")
        spec = get_family(self.family)
        inputs = batch.inputs
        # 1. Per-image vision features, exactly as the model would compute them.
        if features is None:
            encoder = self.model.get_image_features
            accepted = inspect.signature(encoder).parameters
            vision_kwargs = {k: v for k, v in inputs.items() if k in accepted and k != "kwargs"}
            with torch.no_grad():
                features = encoder(**vision_kwargs, return_dict=True).pooler_output
        as_sequence = isinstance(features, (list, tuple))
        flat = torch.cat(list(features), dim=0) if as_sequence else features.reshape(-1, features.shape[-1])
        lengths = [n for row in batch.image_tokens for n in row]
        if flat.shape[0] != sum(lengths):
            raise RuntimeError(
                f"{self.family}: vision path gave {flat.shape[0]} tokens, prompt holds {sum(lengths)} placeholders"
            )
        pooled = [pool_tokens(image, r) for image in torch.split(flat, lengths, dim=0)]
        pooled_output = tuple(pooled) if as_sequence else torch.cat(pooled, dim=0)

        # 2. Keep the placeholders at offsets 0, r, 2r, ... of each image run; text is untouched.
        ids = inputs["input_ids"]
        is_image = ids == self.image_token_id
        keep = inputs["attention_mask"].bool().clone()
        for row, row_counts in enumerate(batch.image_tokens):
            positions = is_image[row].nonzero().flatten()
            offsets = torch.cat([torch.arange(n, device=ids.device) for n in row_counts]) if row_counts else positions
            keep[row, positions] = offsets % r == 0
        new_counts = [[-(-n // r) for n in row] for row in batch.image_tokens]

        # 3. Positions: M-RoPE families take their full-prompt positions for the kept tokens.
        position_ids = None
        if spec.mrope:
            rope_kwargs = {"attention_mask": inputs["attention_mask"]}
            position_ids, _ = vision_cache.inner_model(self.model).get_rope_index(
                ids, inputs["mm_token_type_ids"], inputs["image_grid_thw"], None, **rope_kwargs
            )

        pooled_inputs = _gather_left_padded(inputs, keep, position_ids, self.tokenizer.pad_token_id)
        for name in spec.vision_inputs:
            pooled_inputs.pop(name, None)
        pooled_inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=pooled_output)}
        return Batch(pooled_inputs, new_counts, batch.unpooled_image_tokens, batch.task_families, batch.prompts, r)

    def image_block_ids(self, batch: Batch) -> torch.LongTensor:
        """``[batch, seq]``: for each token the index of its image within the sample, or -1 for text."""
        ids = batch.inputs["input_ids"]
        blocks = torch.full_like(ids, -1)
        is_image = ids == self.image_token_id
        for row, counts in enumerate(batch.image_tokens):
            positions = is_image[row].nonzero().flatten()
            if len(positions) != sum(counts):
                raise RuntimeError(
                    f"sample {row}: {len(positions)} image placeholders but images of {counts} tokens"
                )
            if counts:
                sizes = torch.tensor(counts, device=ids.device)
                index = torch.repeat_interleave(torch.arange(len(counts), device=ids.device), sizes)
                blocks[row, positions] = index
        return blocks

    def token_budget(self, batch: Batch) -> dict:
        """Vision and text tokens per sample (padding excluded), for notebooks to print."""
        blocks = self.image_block_ids(batch)
        real = batch.inputs["attention_mask"].bool()
        vision = ((blocks >= 0) & real).sum(dim=1).tolist()
        total = real.sum(dim=1).tolist()
        return {
            "pool": batch.pool,
            "images": [len(c) for c in batch.image_tokens],
            "vision_tokens": vision,
            "text_tokens": [t - v for t, v in zip(total, vision)],
            "total_tokens": total,
            "vision_tokens_per_image": [list(c) for c in batch.image_tokens],
            "unpooled_vision_tokens_per_image": [list(c) for c in batch.unpooled_image_tokens],
        }

    @torch.no_grad()
    def generate(self, batch: Batch, max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers, new tokens only, special tokens skipped.

        Without ``max_new_tokens`` each sample gets its task's official budget (16, Listing 32): the
        batch is decoded to the largest budget and each answer cut to its own (greedy decoding of a
        sample does not depend on its budget). Tasks other than MIMIC's need ``max_new_tokens``.
        """
        if max_new_tokens is None and not all(is_mimic_task(task) for task in batch.task_families):
            raise ValueError(f"give max_new_tokens for tasks outside MIMIC: {sorted(set(batch.task_families))}")
        budgets = [max_new_tokens or max_new_tokens_for(task) for task in batch.task_families]
        with self.masked(batch):
            generated = self._generate(batch, budgets)
        new_tokens = generated[:, batch.input_length :]
        return [
            self.tokenizer.decode(row[:budget], skip_special_tokens=True)
            for row, budget in zip(new_tokens, budgets)
        ]

    def _generate(self, batch: Batch, budgets: list[int]):
        return self.model.generate(
            **self.model_inputs(batch),
            max_new_tokens=max(budgets),
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def answer(self, samples, pool: int = 1, max_new_tokens: int | None = None) -> list[str]:
        """``generate(prepare(samples, pool), max_new_tokens)``."""
        return self.generate(self.prepare(samples, pool=pool), max_new_tokens)


def _gather_left_padded(inputs: dict, keep: torch.Tensor, position_ids, pad_id: int) -> dict:
    """Keep the marked tokens of every row, re-pad on the left; carries the per-token tensors along."""
    ids = inputs["input_ids"]
    lengths = keep.sum(dim=1)
    width = int(lengths.max())
    batch_size = ids.shape[0]
    new_ids = ids.new_full((batch_size, width), pad_id)
    new_mask = torch.zeros_like(new_ids)
    per_token = {k: v for k, v in inputs.items() if k == "mm_token_type_ids"}
    new_per_token = {k: v.new_zeros((batch_size, width)) for k, v in per_token.items()}
    new_positions = None if position_ids is None else position_ids.new_zeros((3, batch_size, width))
    for row in range(batch_size):
        start = width - int(lengths[row])
        new_ids[row, start:] = ids[row][keep[row]]
        new_mask[row, start:] = 1
        for key, value in per_token.items():
            new_per_token[key][row, start:] = value[row][keep[row]]
        if new_positions is not None:
            new_positions[:, row, start:] = position_ids[:, row][:, keep[row]]
    result = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", *per_token)}
    result.update(input_ids=new_ids, attention_mask=new_mask.to(inputs["attention_mask"].dtype), **new_per_token)
    if new_positions is not None:
        text_positions = (new_mask.cumsum(dim=1) - 1).clamp(min=0) * new_mask
        result["position_ids"] = torch.cat([text_positions[None].to(new_positions.dtype), new_positions], dim=0)
    return result


__all__ = [
    "BACKEND_FILE",
    "DEFAULT_IMAGE_BACKEND",
    "FAMILIES",
    "IMAGE_BACKENDS",
    "PREPROCESSING_KEYS",
    "Batch",
    "FamilySpec",
    "ModelLoadError",
    "Sample",
    "VLMAdapter",
    "adapter_from_model",
    "apply_preprocessing",
    "expose_video_processor_base",
    "family_for_model_type",
    "get_family",
    "image_backend",
    "known_families",
    "load_adapter",
    "load_processor",
    "pool_tokens",
    "quantization_config",
    "saved_image_backend",
    "settable_preprocessing",
    "use_image_backend",
]
