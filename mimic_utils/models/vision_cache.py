"""Frozen vision features, computed once per image and reused by every model that shares the tower.

The tower's output is cached and the projector (which LoRA trains) and any packing run live on top, so
one entry serves every model and pooling factor that shares the frozen tower. Entries are keyed by the
tower's weight fingerprint and the image's preprocessed pixels, a tower being trained (train mode with
trainable parameters) is never served, and the store lives in memory and, when :func:`configure` (or ``MIMIC_CACHE_DIR``, set by
the runner) names a directory, on disk. Which module is cached per family, and why the key is what it is:
docs/caching.md.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

#: Environment variable naming the on-disk cache root (the runner sets it to outputs/<profile>/cache).
ENV_DIR = "MIMIC_CACHE_DIR"
DEFAULT_MEMORY_BYTES = 2 * 2**30


# --- the store ------------------------------------------------------------------------------------------


@dataclass
class VisionCache:
    """Per-image tower features in memory (LRU, bounded in bytes) and optionally on disk."""

    directory: Path | None = None
    max_memory_bytes: int = DEFAULT_MEMORY_BYTES
    hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    _memory: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _bytes: int = 0

    def _path(self, fingerprint: str, key: str) -> Path | None:
        return None if self.directory is None else Path(self.directory) / fingerprint[:16] / key[:2] / f"{key}.pt"

    def get(self, fingerprint: str, key: str) -> torch.Tensor | None:
        entry = self._memory.get((fingerprint, key))
        if entry is not None:
            self._memory.move_to_end((fingerprint, key))
            self.hits += 1
            return entry
        path = self._path(fingerprint, key)
        if path is not None and path.is_file():
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a torn or foreign file is recomputed, never trusted
                return None
            self._remember(fingerprint, key, entry)
            self.disk_hits += 1
            return entry
        return None

    def put(self, fingerprint: str, key: str, value: torch.Tensor) -> None:
        value = value.detach().to("cpu").contiguous()
        self._remember(fingerprint, key, value)
        path = self._path(fingerprint, key)
        if path is not None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save(value.clone(), temporary)
            os.replace(temporary, path)

    def _remember(self, fingerprint: str, key: str, value: torch.Tensor) -> None:
        if (fingerprint, key) in self._memory:
            return
        self._memory[(fingerprint, key)] = value
        self._bytes += value.numel() * value.element_size()
        while self._bytes > self.max_memory_bytes and len(self._memory) > 1:
            _, dropped = self._memory.popitem(last=False)
            self._bytes -= dropped.numel() * dropped.element_size()

    def clear_memory(self) -> None:
        self._memory.clear()
        self._bytes = 0


_SHARED: VisionCache | None = None


def configure(directory: str | Path | None = None, max_memory_bytes: int = DEFAULT_MEMORY_BYTES) -> VisionCache:
    """The process-wide cache every adapter uses by default; ``directory`` adds the on-disk layer."""
    global _SHARED
    _SHARED = VisionCache(Path(directory) if directory else None, max_memory_bytes)
    return _SHARED


def shared() -> VisionCache:
    """The process-wide cache (created on first use, on disk under ``$MIMIC_CACHE_DIR/vision`` if set)."""
    if _SHARED is None:
        root = os.environ.get(ENV_DIR)
        return configure(Path(root) / "vision" if root else None)
    return _SHARED


# --- per-family split of the vision path ----------------------------------------------------------------


@dataclass(frozen=True)
class ImageSlice:
    """One image's share of the processor's vision inputs."""

    pixels: torch.Tensor
    meta: torch.Tensor  # grid (t, h, w), or image size (h, w), or number of tiles

    def key(self) -> str:
        digest = hashlib.sha256()
        for tensor in (self.meta, self.pixels):
            digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
            digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


def inner_model(model):
    """The family's inner model (``Qwen2VLModel`` …), through a peft wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def _split_rows(tensor: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    return list(torch.split(tensor, list(sizes), dim=0))


# Qwen2-VL: pixel rows per image = t·h·w; the merger is the projector.

def _qwen_slices(inner, inputs: dict, image_tokens: list[list[int]]) -> list[ImageSlice]:
    grid = inputs["image_grid_thw"]
    rows = _split_rows(inputs["pixel_values"], grid.prod(-1).tolist())
    return [ImageSlice(p, g) for p, g in zip(rows, grid)]


def _qwen_encode(inner, slices: list[ImageSlice]) -> list[torch.Tensor]:
    grid = torch.stack([s.meta for s in slices])
    pixels = torch.cat([s.pixels for s in slices]).type(inner.visual.dtype)
    hidden = inner.visual(pixels, grid_thw=grid).last_hidden_state
    return _split_rows(hidden, grid.prod(-1).tolist())


def _qwen_project(inner, features: list[torch.Tensor], slices: list[ImageSlice]):
    merged = inner.visual.merger(torch.cat(features))
    merge = inner.visual.spatial_merge_size ** 2
    return tuple(_split_rows(merged, [int(s.meta.prod()) // merge for s in slices]))


# LLaVA-OneVision: pixel_values is (images, patches, C, H, W); anyres tiles only for one-image samples.

def _llava_patches(inner, inputs: dict) -> list[int]:
    # the LLaVA-OneVision modeling module is only loaded when a LLaVA-OV model is cached
    from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

    counts = inputs.get("batch_num_images")
    needs = [True] * len(inputs["image_sizes"]) if counts is None else [int(n) == 1 for n in counts for _ in range(int(n))]
    return [image_size_to_num_patches(size, inner.config.image_grid_pinpoints, inner.config.vision_config.image_size)
            if need else 1 for size, need in zip(inputs["image_sizes"], needs)]


def _llava_slices(inner, inputs: dict, image_tokens: list[list[int]]) -> list[ImageSlice]:
    pixels = inputs["pixel_values"]
    return [ImageSlice(pixels[i, :n], size) for i, (n, size) in enumerate(zip(_llava_patches(inner, inputs),
                                                                             inputs["image_sizes"]))]


def _selected_hidden(inner, pixels: torch.Tensor, final_is_last_hidden: bool = False) -> torch.Tensor:
    """The tower's hidden state at the configured feature layer(s), CLS dropped for "default" (as HF does;
    InternVL reads layer -1 as ``last_hidden_state``, LLaVA-OV as ``hidden_states[-1]``)."""
    layer = inner.config.vision_feature_layer
    out = inner.vision_tower(pixel_values=pixels, output_hidden_states=True, return_dict=True)
    if final_is_last_hidden and layer == -1:
        hidden = out.last_hidden_state
    else:
        hidden = (out.hidden_states[layer] if isinstance(layer, int)
                  else torch.cat([out.hidden_states[i] for i in layer], dim=-1))
    return hidden[:, 1:] if inner.config.vision_feature_select_strategy == "default" else hidden


def _tiles_encode(inner, slices: list[ImageSlice], final_is_last_hidden: bool = False) -> list[torch.Tensor]:
    pixels = torch.cat([s.pixels for s in slices]).to(inner.vision_tower.dtype)
    hidden = _selected_hidden(inner, pixels, final_is_last_hidden)
    return _split_rows(hidden, [s.pixels.shape[0] for s in slices])


def _llava_project(inner, features: list[torch.Tensor], slices: list[ImageSlice]):
    projected = inner.multi_modal_projector(torch.cat(features))
    per_image = _split_rows(projected, [f.shape[0] for f in features])
    sizes = torch.stack([s.meta for s in slices])
    packed, _ = inner.pack_image_features(per_image, sizes, image_newline=inner.image_newline,
                                          vision_aspect_ratio=inner.config.vision_aspect_ratio)
    return packed


# InternVL: pixel_values is (tiles, C, H, W); tiles per image from its share of the placeholders.

def _internvl_slices(inner, inputs: dict, image_tokens: list[list[int]]) -> list[ImageSlice]:
    tokens = [n for row in image_tokens for n in row]
    pixels = inputs["pixel_values"]
    per_tile = sum(tokens) // pixels.shape[0]
    tiles = [n // per_tile for n in tokens]
    return [ImageSlice(p, torch.tensor(t)) for p, t in zip(_split_rows(pixels, tiles), tiles)]


def _internvl_project(inner, features: list[torch.Tensor], slices: list[ImageSlice]):
    hidden = torch.cat(features)
    tiles, channels = hidden.shape[0], hidden.shape[1]
    side = int(channels ** 0.5)
    shuffled = inner.pixel_shuffle(hidden.reshape(tiles, side, side, -1), scale_factor=inner.config.downsample_ratio)
    return inner.multi_modal_projector(shuffled.reshape(tiles, -1, shuffled.shape[-1]))


@dataclass(frozen=True)
class VisionSplit:
    """Where a family's frozen tower ends and its live projector begins."""

    tower: str  # attribute of the inner model holding the cached part
    live: tuple[str, ...]  # submodules of ``tower`` that are not cached (run live)
    slices: Callable
    encode: Callable
    project: Callable


SPLITS: dict[str, VisionSplit] = {
    "qwen2_vl": VisionSplit("visual", ("merger",), _qwen_slices, _qwen_encode, _qwen_project),
    "llava_onevision": VisionSplit("vision_tower", (), _llava_slices, _tiles_encode, _llava_project),
    "internvl": VisionSplit("vision_tower", (), _internvl_slices, partial(_tiles_encode, final_is_last_hidden=True),
                            _internvl_project),
}


def _tower_parameters(inner, split: VisionSplit) -> list[tuple[str, torch.nn.Parameter]]:
    tower = getattr(inner, split.tower)
    return [(n, p) for n, p in tower.named_parameters() if n.split(".")[0] not in split.live]


def tower_fingerprint(inner, split: VisionSplit) -> str | None:
    """sha256 of the cached part's weights and output-selecting config, or None while it is being trained
    (train mode with trainable parameters).

    Memoised on the tower module together with every parameter's version counter, so an in-place update
    (an optimizer step, ``load_state_dict``) forces a new fingerprint.
    """
    params = _tower_parameters(inner, split)
    tower = getattr(inner, split.tower)
    if tower.training and any(p.requires_grad for _, p in params):
        return None
    # in-place updates bump _version; ``p.data = …`` (a dtype or device move, a merged adapter) changes the storage
    versions = tuple((id(p), p._version, p.data_ptr(), p.dtype) for _, p in params)
    memo = getattr(tower, "_mimic_fingerprint", None)
    if memo is not None and memo[0] == versions:
        return memo[1]
    digest = hashlib.sha256()
    config = inner.config
    digest.update(repr((split.tower, getattr(config, "vision_feature_layer", None),
                        getattr(config, "vision_feature_select_strategy", None))).encode())
    for name, param in params:
        digest.update(name.encode())
        digest.update(param.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    fingerprint = digest.hexdigest()
    object.__setattr__(tower, "_mimic_fingerprint", (versions, fingerprint))
    return fingerprint


def _encode_frozen(tower: torch.nn.Module, encode: Callable) -> list[torch.Tensor]:
    """Run ``encode`` with the tower in eval mode and without gradients: a cached entry must not carry one
    training step's dropout, whatever mode the model is in when the entry is first computed."""
    was_training = tower.training
    tower.eval()
    try:
        with torch.no_grad():
            return encode()
    finally:
        tower.train(was_training)


def image_features(model, family: str, inputs: dict, image_tokens: list[list[int]],
                   cache: VisionCache | None = None):
    """What ``model.get_image_features(...).pooler_output`` returns for ``inputs``, with the tower's output
    read from ``cache`` where present (the missing images go through the tower together, once).

    Returns None when this family or this model state cannot be cached (then the caller runs the model's
    own vision path).
    """
    split = SPLITS.get(family)
    if split is None or "pixel_values" not in inputs:
        return None
    inner = inner_model(model)
    fingerprint = tower_fingerprint(inner, split)
    if fingerprint is None:
        return None
    cache = cache or shared()
    slices = split.slices(inner, inputs, image_tokens)
    keys = [s.key() for s in slices]
    found = {k: cache.get(fingerprint, k) for k in dict.fromkeys(keys)}
    missing = [k for k, v in found.items() if v is None]
    if missing:
        cache.misses += len(missing)
        by_key = dict(zip(keys, slices))
        computed = _encode_frozen(getattr(inner, split.tower), lambda: split.encode(inner, [by_key[k] for k in missing]))
        for key, value in zip(missing, computed):
            cache.put(fingerprint, key, value)
            found[key] = value
    device = inputs["pixel_values"].device
    dtype = next(getattr(inner, split.tower).parameters()).dtype
    features = [found[k].to(device=device, dtype=dtype) for k in keys]
    return split.project(inner, features, slices)


__all__ = ["ENV_DIR", "SPLITS", "VisionCache", "configure", "image_features", "shared", "tower_fingerprint"]
