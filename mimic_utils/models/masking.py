"""Layer-wise image-block attention masking, for every family, through transformers' own hooks.

In the chosen decoder layers an image token attends only to earlier tokens of its own image; text keeps
causal attention, one-image samples are unmasked and decode steps attend to everything (the official
semantics). One function is registered in ``AttentionInterface`` and enabled for the language model only;
a batch's block ids travel in a context, because ``generate()`` rejects unknown kwargs::

    masking.enable(adapter.model)                       # once; unchanged behaviour outside a context
    layers = masking.resolve_layers("second_half", masking.num_text_layers(adapter.model))  # once, where the spec enters
    with masking.mask_images(adapter, batch, layers):
        answers = adapter.generate(batch)

``mode`` picks one of three computations with one result: ``dense`` (the reference mask), ``blockwise``
(one SDPA per image, the default) and ``flex`` (one ``flex_attention`` call, compiled on CUDA). Observers
in a context see every prefill attention call (:mod:`mimic_utils.analysis.attention`). See docs/design.md
(*Masking*) for the semantics, the layer specs and a caveat for gradient checkpointing.
"""

from __future__ import annotations

import operator
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import torch
import torch.nn.functional as F

ATTENTION_NAME = "mimic_image_blocks"
"""The name the masking attention function is registered under in ``AttentionInterface``."""

MODES = ("blockwise", "dense", "flex")
"""``blockwise``: per-image SDPA (cost Σ n_i²); ``dense``: the reference, one SDPA with the full mask;
``flex``: one flex_attention call with the mask as a BlockMask (compiled on CUDA)."""

LAYER_KEYWORDS = ("none", "first_half", "second_half", "auto")

#: A layer spec as parameter files and callers write it: ``"12-23"``, ``"second_half"``, ``"auto"``, an index, a list
#: of indices, or None (no layer). :func:`resolve_layers` turns it into :data:`Layers` once, where it enters.
LayerSpec = str | int | Sequence[int] | None
#: Decoder layer indices, sorted and checked against the model: what every function past the entry point takes.
Layers = tuple[int, ...]


# --- layer specs ---------------------------------------------------------------------------------


class LayerSpecError(ValueError):
    """A layer spec that cannot be read for this model; the message names the spec and the layer count."""


def resolve_layers(spec: LayerSpec, num_layers: int, auto_layer: int | None = None) -> Layers:
    """The decoder layers a spec names, sorted, as a tuple: the one place a spec is read. The spec forms: ``"12-23"`` (inclusive), ``"3,5-7"``, ``"second_half"``,
    ``"first_half"`` (the early-layer ablation), ``"auto"`` (from ``auto_layer``, the layer notebook 03 finds, to the last), ``"none"``.

    A list of ints is checked and returned sorted. ``"second_half"`` is ``num_layers // 2 .. num_layers-1``:
    the official 12–23 of the 24-layer 0.5B model and 14–27 of the 28-layer 7B model.
    """
    return tuple(_spec_layers(spec, num_layers, auto_layer))


def _spec_layers(spec: LayerSpec, num_layers: int, auto_layer: int | None) -> list[int]:
    if num_layers < 1:
        raise LayerSpecError(f"a model needs at least one layer to mask, got num_layers={num_layers}")
    if spec is None:
        return []
    if isinstance(spec, int) or not isinstance(spec, str):
        items = [spec] if isinstance(spec, int) else list(spec)
        return _checked(spec, sorted(set(items)), num_layers)
    text = spec.strip().lower()
    if text in ("", "none"):
        return []
    if text == "second_half":
        return list(range(num_layers // 2, num_layers))
    if text == "first_half":
        return list(range(0, max(1, num_layers // 2)))
    if text == "auto":
        if auto_layer is None:
            raise LayerSpecError(
                f"layer spec 'auto' needs the layer from which cross-image attention stays low "
                f"(notebook 03's result, passed as auto_layer=...); none was given (model has {num_layers} layers)"
            )
        start = _checked(spec, [auto_layer], num_layers)[0]
        return list(range(start, num_layers))
    return _checked(spec, _parse_ranges(spec, text, num_layers), num_layers)


def check_layer_spec(spec: str | int | Sequence[int] | None) -> None:
    """Refuse a spec that no model could read (``"12-2x"``, a backwards range), before any model is
    loaded: the parameter check runs this. Layer numbers meet the model's depth in :func:`resolve_layers`."""
    if isinstance(spec, str) and spec.strip().lower() not in ("", *LAYER_KEYWORDS):
        _parse_ranges(spec, spec.strip().lower(), None)


def _parse_ranges(spec: str, text: str, num_layers: int | None) -> list[int]:
    depth = "" if num_layers is None else f" (model has {num_layers} layers)"
    layers: set[int] = set()
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
        if match is None:
            raise LayerSpecError(
                f"cannot read layer spec {spec!r}{depth}: {item.strip()!r} is not "
                f"'N' or 'A-B'; use e.g. '12-23', '3,5-7', or one of {', '.join(LAYER_KEYWORDS)}"
            )
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) is not None else start
        if end < start:
            raise LayerSpecError(f"layer spec {spec!r}: range {start}-{end} runs backwards{depth}")
        layers.update(range(start, end + 1))
    return sorted(layers)


def _checked(spec, layers: list, num_layers: int) -> list[int]:
    try:
        indices = [operator.index(layer) for layer in layers]
    except TypeError:
        message = f"layer spec {spec!r} is not a list of layer indices (model has {num_layers} layers)"
        raise LayerSpecError(message) from None
    bad = [layer for layer in indices if not 0 <= layer < num_layers]
    if bad:
        raise LayerSpecError(
            f"layer spec {spec!r} names layers {bad} outside 0..{num_layers - 1} (model has {num_layers} layers)"
        )
    return indices


def num_text_layers(model) -> int:
    """Decoder layers of the model's language model (its text sub-config)."""
    return int(_text_config(model).num_hidden_layers)


# --- the reference mask --------------------------------------------------------------------------


def masked_samples(block_ids: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: samples with at least two images, the only ones masking changes."""
    return block_ids.amax(dim=1) >= 1


def block_structure(block_ids: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
    """``[B, 1, r, S]`` bool, the masking pattern without causality or padding (True = may attend).

    A text query may see every key; a vision query only keys of its own image; samples with fewer than
    two images are left alone. ``rows`` selects query positions (all by default).
    """
    queries = block_ids[:, rows][:, :, None]
    keys = block_ids[:, None, :]
    unmasked = ~masked_samples(block_ids)[:, None, None]
    return ((queries < 0) | (queries == keys) | unmasked)[:, None]


def causal_rows(rows: torch.Tensor | slice, length: int, device=None) -> torch.Tensor:
    """``[1, 1, r, S]`` bool causal mask for the query positions ``rows`` of a length-S prompt."""
    positions = torch.arange(length, device=device)
    return (positions[None, :] <= positions[rows][:, None])[None, None]


def dense_mask(block_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, 1, S, S]`` bool: the full masked-layer mask (True = may attend): the reference
    computation of the official semantics (docs/design.md, *Masking*).

    Causal AND padding (``attention_mask`` ``[B, S]``, 1 = real token) AND :func:`block_structure`.
    Padding queries get an all-False row, as transformers' own SDPA mask gives them.
    """
    mask = causal_rows(slice(None), block_ids.shape[1], block_ids.device) & block_structure(block_ids)
    if attention_mask is not None:
        mask = mask & attention_mask.bool()[:, None, None, :]
    return mask


# --- the context ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplePlan:
    """Where one sample's images sit: a slice per image (an index tensor if a block is not contiguous)."""

    masked: bool
    images: tuple[slice | torch.Tensor, ...]
    text: torch.Tensor


def plan_blocks(block_ids: torch.Tensor) -> tuple[SamplePlan, ...]:
    """Per sample, the positions of each image block and of the text (padding counts as text)."""
    plans = []
    for row in block_ids:
        n_images = int(row.max()) + 1 if row.numel() else 0
        images = tuple(_positions(row == image) for image in range(max(n_images, 0)))
        plans.append(SamplePlan(n_images >= 2, images, (row < 0).nonzero().flatten()))
    return tuple(plans)


def _positions(selected: torch.Tensor) -> slice | torch.Tensor:
    index = selected.nonzero().flatten()
    if index.numel() and int(index[-1]) - int(index[0]) + 1 == index.numel():
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


Observer = Callable[["AttentionCall"], None]


@dataclass(frozen=True)
class ImageBlocks:
    """What the registered attention function reads: block ids ``[B, S]``, masked layers, mode, observers."""

    block_ids: torch.Tensor
    layers: frozenset[int]
    mode: str = "blockwise"
    observers: tuple[Observer, ...] = ()
    flex_masks: dict = field(default_factory=dict, compare=False, repr=False)
    """``mode="flex"``: the block mask per device, built at the first masked layer and reused by the rest."""

    @cached_property
    def plan(self) -> tuple[SamplePlan, ...]:
        return plan_blocks(self.block_ids)

    @cached_property
    def any_masked(self) -> bool:
        return bool(masked_samples(self.block_ids).any())


_ACTIVE: ContextVar[ImageBlocks | None] = ContextVar("mimic_image_blocks", default=None)


@contextmanager
def image_blocks(
    block_ids: torch.Tensor,
    layers: Sequence[int],
    mode: str = "blockwise",
    observers: Sequence[Observer] = (),
    model=None,
) -> Iterator[ImageBlocks]:
    """Mask ``layers`` for the batch whose block ids are ``block_ids`` while the block runs.

    ``block_ids`` comes from ``adapter.image_block_ids(batch)`` (-1 text, 0..n-1 image). ``layers`` are
    layer indices (from :func:`resolve_layers`); an empty tuple masks nothing (useful with ``observers``).
    Give ``model`` to check that :func:`enable` was called on it (otherwise nothing would be masked).
    """
    if mode not in MODES:
        raise ValueError(f"unknown masking mode {mode!r}; use one of {', '.join(MODES)}")
    if block_ids.ndim != 2:
        raise ValueError(f"block ids must be [batch, seq], got shape {tuple(block_ids.shape)}")
    if model is not None and not is_enabled(model):
        raise RuntimeError(
            f"{type(model).__name__} does not use {ATTENTION_NAME!r} for its language model "
            f"(it uses {_text_config(model)._attn_implementation!r}); call masking.enable(model) first"
        )
    if isinstance(layers, str):
        raise TypeError(f"image_blocks takes layer indices, got the spec {layers!r}: resolve it once with "
                        "masking.resolve_layers(spec, num_layers, auto_layer)")
    layers = frozenset(int(layer) for layer in layers)
    if any(layer < 0 for layer in layers):
        raise ValueError(f"layer indices must be >= 0, got {sorted(layers)}")
    state = ImageBlocks(block_ids, layers, mode, tuple(observers))
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


@contextmanager
def mask_images(
    adapter,
    batch,
    layers: Layers,
    mode: str = "blockwise",
    observers: Sequence[Observer] = (),
) -> Iterator[ImageBlocks]:
    """:func:`image_blocks` for an adapter's batch: reads the block ids and checks that the model is
    enabled. ``layers`` are indices (:func:`resolve_layers`)."""
    with image_blocks(adapter.image_block_ids(batch), layers, mode, observers, model=adapter.model) as state:
        yield state


def active() -> ImageBlocks | None:
    """The context in force in this thread or task, if any."""
    return _ACTIVE.get()


# --- registration and enabling -------------------------------------------------------------------


def register() -> str:
    """Register the masking attention (and its mask builder, the library's ``sdpa_mask``); idempotent."""
    # transformers' attention integrations take seconds to import: they load when masking is first used
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _text_config_key(model) -> str | None:
    text = _text_config(model)
    for key in getattr(model.config, "sub_configs", {}):
        if getattr(model.config, key, None) is text:
            return key
    return None


def set_text_attention(model, implementation: str) -> str:
    """Set the language model's attention implementation only; returns the previous one.

    Uses the framework's ``set_attn_implementation`` with a per-sub-config dict, so vision towers keep
    theirs. Raises if the framework could not apply it (a class that does not dispatch through
    ``AttentionInterface``).
    """
    if implementation == ATTENTION_NAME:
        register()
    text = _text_config(model)
    previous = text._attn_implementation
    key = _text_config_key(model)
    model.set_attn_implementation({key: implementation} if key else implementation)
    if text._attn_implementation != implementation:
        raise RuntimeError(
            f"{type(model).__name__} kept attention {text._attn_implementation!r} for its language model; "
            f"it cannot switch to {implementation!r} through AttentionInterface"
        )
    return previous


def enable(model):
    """Switch the language model to the masking attention (plain SDPA outside a context); returns the model."""
    set_text_attention(model, ATTENTION_NAME)
    return model


def is_enabled(model) -> bool:
    return _text_config(model)._attn_implementation == ATTENTION_NAME


@contextmanager
def text_attention(model, implementation: str = ATTENTION_NAME) -> Iterator:
    """Use ``implementation`` for the language model inside the block, then restore the previous one."""
    previous = set_text_attention(model, implementation)
    try:
        yield model
    finally:
        set_text_attention(model, previous)


# --- the attention function ----------------------------------------------------------------------


@dataclass
class AttentionCall:
    """One prefill attention call as observers see it (tensors are the layer's own, not copies).

    ``query`` ``[B, H, S, D]``, ``key`` and ``value`` ``[B, H_kv, S, D]`` (after rotary embedding), ``base_mask`` the
    model's boolean mask ``[B, 1, S, S]`` or ``None`` (plain causal), ``masked`` whether this layer is
    masked. :meth:`probabilities` recomputes the attention weights the layer used, for a chunk of query
    rows at a time, so a caller never needs the full ``[B, H, S, S]`` map.
    """

    layer_idx: int
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    scaling: float
    base_mask: torch.Tensor | None
    block_ids: torch.Tensor
    masked: bool
    output: torch.Tensor | None = field(default=None, repr=False)
    """The layer's attention output ``[B, S, H, D]`` (what the function returns)."""

    def mask(self, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """``[B or 1, 1, r, S]`` bool: what the query ``rows`` may attend to in this layer."""
        length = self.key.shape[2]
        base = self.base_mask[:, :, rows] if self.base_mask is not None else causal_rows(rows, length, self.key.device)
        return base & block_structure(self.block_ids, rows) if self.masked else base

    def probabilities(self, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """``[B, H, r, S]`` float32 attention weights of the query ``rows`` (fully masked rows are 0).

        Query heads are grouped over their shared key head (GQA) instead of copying the keys per head.
        """
        batch, heads, _, dim = self.query.shape
        kv_heads, length = self.key.shape[1], self.key.shape[2]
        grouped = self.query[:, :, rows].reshape(batch, kv_heads, heads // kv_heads, -1, dim)
        scores = torch.matmul(grouped, self.key[:, :, None].transpose(-1, -2)).reshape(batch, heads, -1, length)
        scores = scores.float().masked_fill(~self.mask(rows), float("-inf")) * self.scaling
        return torch.softmax(scores, dim=-1).nan_to_num(0.0)


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The registered attention function: transformers' SDPA, image-block masked in prefill calls of the
    context's layers. Signature and output layout (``[B, S, H, D]``, no weights) follow
    ``sdpa_attention_forward``, which it delegates to whenever nothing is to be masked."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    state = _ACTIVE.get()
    if state is None or not _is_prefill(state, query, key):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    layer = _layer_index(module)
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        raise TypeError(
            f"image-block masking expects the boolean mask of the {ATTENTION_NAME!r} mask interface, "
            f"got {attention_mask.dtype} (layer {layer})"
        )
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    masked = layer in state.layers and state.any_masked
    if not masked:
        output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    elif state.mode == "dense":
        base = attention_mask if attention_mask is not None else causal_rows(slice(None), key.shape[2], key.device)
        mask = base & block_structure(state.block_ids.to(key.device))
        output, _ = sdpa_attention_forward(
            module, query, key, value, mask, dropout=dropout, scaling=scaling, is_causal=False, **kwargs
        )
    elif state.mode == "flex":
        output = _flex_attention(module, query, key, value, attention_mask, state, dropout, scaling, is_causal, kwargs)
    else:
        if kwargs.get("sliding_window") is not None:
            raise NotImplementedError(f"blockwise image masking does not support sliding-window layers (layer {layer})")
        output = _blockwise_attention(
            module, query, key, value, attention_mask, state, dropout, scaling, is_causal, kwargs
        )
    block_ids = state.block_ids.to(key.device)
    _notify(state, AttentionCall(layer, query, key, value, scaling, attention_mask, block_ids, masked, output))
    return output, None


def _is_prefill(state: ImageBlocks, query: torch.Tensor, key: torch.Tensor) -> bool:
    """True for a call over the whole prompt the block ids describe; False for decode steps.

    A call whose queries and keys have equal length but do not match the block ids is an error, not a
    silent pass-through: it means the context was set for another batch.
    """
    q_length, kv_length = query.shape[2], key.shape[2]
    if q_length != kv_length:
        return False
    batch, length = state.block_ids.shape
    if (query.shape[0], q_length) != (batch, length):
        raise ValueError(
            f"image-block context holds block ids for batch {batch} × {length} tokens, but the model "
            f"runs batch {query.shape[0]} × {q_length}: set the context for the batch being run"
        )
    return True


def _layer_index(module: torch.nn.Module) -> int:
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise ValueError(f"{type(module).__name__} has no layer_idx; image-block masking needs it to choose layers")
    return int(layer)


def _notify(state: ImageBlocks, call: AttentionCall) -> None:
    for observer in state.observers:
        observer(call)


def _sdpa(query, key, value, mask, causal: bool, dropout: float, scaling: float) -> torch.Tensor:
    """SDPA in ``[B, H, L, D]`` layout, sharing key/value heads across query groups without copying them."""
    return F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=mask,
        dropout_p=dropout,
        is_causal=causal,
        scale=scaling,
        enable_gqa=key.shape[1] != query.shape[1],
    )


def _blockwise_attention(module, query, key, value, base_mask, state: ImageBlocks, dropout, scaling, is_causal, kwargs):
    """Masked attention without the N² mask: per image block a causal SDPA over its own tokens; text
    queries one SDPA over all keys with the model's mask rows. Returns ``[B, S, H, D]``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, _ = query.shape
    output = query.new_empty(batch, length, heads, value.shape[-1])
    for row, sample in enumerate(state.plan):
        q, k, v = query[row : row + 1], key[row : row + 1], value[row : row + 1]
        sample_mask = None if base_mask is None else base_mask[row : row + 1]
        if not sample.masked:  # exactly what the unmasked model computes for this sample
            output[row : row + 1] = sdpa_attention_forward(
                module, q, k, v, sample_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
            )[0]
            continue
        for block in sample.images:
            own = _sdpa(q[:, :, block], k[:, :, block], v[:, :, block], None, True, dropout, scaling)
            output[row : row + 1, block] = own.transpose(1, 2)
        text = sample.text.to(query.device)
        if text.numel():
            rows_mask = sample_mask[:, :, text] if sample_mask is not None else causal_rows(text, length, query.device)
            seen = _sdpa(q[:, :, text], k, v, rows_mask, False, dropout, scaling)
            output[row : row + 1, text] = seen.transpose(1, 2)
    return output


# --- flex attention (CUDA) ------------------------------------------------------------------------


def preferred_mode(device: str | torch.device | None = None) -> str:
    """``"flex"`` for a CUDA device (one fused kernel), ``"blockwise"`` otherwise (and when flex_attention
    is missing). ``None`` asks whether CUDA is available. Nothing selects it by itself: callers pass it on."""
    try:  # flex_attention is missing from some torch builds; imported only where it is used
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return "blockwise"
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    return "flex" if cuda else "blockwise"


def flex_block_mask(block_ids: torch.Tensor, base_mask: torch.Tensor | None = None, device=None):
    """The masked layer's mask as a flex_attention ``BlockMask``: :func:`dense_mask`'s rule, never formed.

    A vision query may see earlier keys of its own image; a text query every earlier key; a sample with
    fewer than two images is only causal. ``base_mask`` is the model's boolean mask ``[B or 1, 1, S, S]``
    (causal + padding; padding queries see nothing) or ``None`` for plain causal attention.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    device = block_ids.device if device is None else torch.device(device)
    ids = block_ids.to(device=device, dtype=torch.int32)
    batch, length = ids.shape
    unmasked = ~masked_samples(ids)
    base = None if base_mask is None else base_mask.to(device).expand(batch, 1, length, length)

    def mask_mod(b, h, q, kv):
        query_block = ids[b, q]
        allowed = (query_block < 0) | (query_block == ids[b, kv]) | unmasked[b]
        seen = kv <= q if base is None else base[b, 0, q, kv]
        return allowed & seen

    return create_block_mask(mask_mod, batch, None, length, length, device=device)


def _batch_rows(tensor: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor | None:
    """``tensor[rows]`` along the batch (``None`` rows: all of it; a broadcast batch of 1 stays as is)."""
    if tensor is None or rows is None or tensor.shape[0] == 1:
        return tensor
    return tensor[rows]


def _cached_block_mask(state: ImageBlocks, base_mask: torch.Tensor | None, rows: torch.Tensor | None, device):
    """The context's block mask for ``rows`` on ``device``, built at the first masked layer. Every layer of
    one forward gets the same ``base_mask`` object, which is how a stale entry is told apart."""
    cached = state.flex_masks.get(str(device))
    if cached is not None and cached[0] is base_mask:
        return cached[1]
    block_ids = _batch_rows(state.block_ids.to(device), rows)
    block_mask = flex_block_mask(block_ids, _batch_rows(base_mask, rows), device)
    state.flex_masks[str(device)] = (base_mask, block_mask)
    return block_mask


def _flex_kernel(query: torch.Tensor):
    """flex_attention compiled on CUDA (the fused kernel); its eager reference elsewhere, without the
    once-per-process warning that eager mode is slow."""
    from torch.nn.attention.flex_attention import flex_attention

    if query.is_cuda:
        return _compiled_flex()

    def eager(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(*args, **kwargs)

    return eager


@lru_cache(maxsize=1)
def _compiled_flex():
    """One compiled flex_attention per process (torch.compile caches its kernels per shape)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _flex_attention(module, query, key, value, base_mask, state: ImageBlocks, dropout, scaling, is_causal, kwargs):
    """Masked attention as one flex_attention call over the masked samples; samples with fewer than two
    images run transformers' SDPA exactly as unmasked. Returns ``[B, S, H, D]``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout or kwargs.get("sliding_window") is not None:
        raise NotImplementedError(
            f"flex image masking supports neither attention dropout nor sliding windows (layer {_layer_index(module)})"
        )
    masked = masked_samples(state.block_ids).to(query.device)
    rows = None if bool(masked.all()) else masked.nonzero().flatten()
    output = query.new_empty(query.shape[0], query.shape[2], query.shape[1], value.shape[-1])
    if rows is not None:
        kept = (~masked).nonzero().flatten()
        output[kept] = sdpa_attention_forward(
            module, query[kept], key[kept], value[kept], _batch_rows(base_mask, kept),
            dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs,
        )[0]
        if rows.numel() == 0:
            return output
    q, k, v = (_batch_rows(tensor, rows) for tensor in (query, key, value))
    block_mask = _cached_block_mask(state, base_mask, rows, query.device)
    seen = _flex_kernel(q)(q, k, v, block_mask=block_mask, scale=scaling, enable_gqa=k.shape[1] != q.shape[1])
    output[slice(None) if rows is None else rows] = seen.transpose(1, 2)
    return output


__all__ = [
    "ATTENTION_NAME",
    "MODES",
    "AttentionCall",
    "ImageBlocks",
    "LayerSpec",
    "LayerSpecError",
    "Layers",
    "active",
    "attention_forward",
    "block_structure",
    "causal_rows",
    "dense_mask",
    "enable",
    "flex_block_mask",
    "image_blocks",
    "is_enabled",
    "mask_images",
    "masked_samples",
    "num_text_layers",
    "resolve_layers",
    "plan_blocks",
    "preferred_mode",
    "register",
    "set_text_attention",
    "text_attention",
]
