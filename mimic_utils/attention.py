"""Where attention goes, layer by layer (issue 7): within an image, across images, to the text.

Per decoder layer and sample we measure two things.

- **Vision queries.** For every image token, the share of its attention mass on its own image
  (``same_image``), on the other images (``other_images``) and on text (``text``: every non-image
  token, the delimiters and the query itself included); averaged over the sample's image tokens (each
  query counts once) and over heads unless ``per_head``.
- **The answer position.** The last prompt token, whose output predicts the first answer token: its
  share on each image (``image_0`` … ``image_{n-1}``) and on ``text``.

Each (sample, layer, query kind) sums to 1. :func:`collect` returns a long table — ``sample, n_images,
layer, depth`` (= layer / (L − 1)) ``, query_kind, target, share`` [``, head``] — and :func:`aggregate`
adds means with normal-approximation 95% intervals over samples.

**Streaming.** Nothing waits for the end of the forward pass. The statistics ride on the masking
attention function of :mod:`mimic_utils.masking`: a :class:`ShareCollector` is an observer in its
context, called at each layer's prefill attention call with that layer's query and key; it recomputes the
layer's attention weights a chunk of query rows at a time (:meth:`~mimic_utils.masking.AttentionCall.probabilities`,
the same mask the layer used), reduces them to a few numbers per sample and lets them go. Memory is one
chunk of one layer, whatever the depth — unlike ``output_attentions=True``, which keeps every layer's
``[B, H, S, S]`` map (and needs eager attention). The same reduction applied to eager's maps
(:func:`shares_from_attentions`) gives the same numbers; the tests check it. With masked layers
(``mask_layers``) the statistics are those of the masked model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mimic_utils import masking

VISION_TARGETS = ("same_image", "other_images", "text")
QUERY_KINDS = ("vision", "answer")
ROW_BUDGET = 1 << 22
"""Attention weights held at once, in elements (16 MB of float32): sets the query-row chunk size."""

Probabilities = Callable[[torch.Tensor | slice], torch.Tensor]
"""``rows -> [B, H, r, S]`` attention weights of those query rows in one layer."""


# --- one layer -----------------------------------------------------------------------------------


@dataclass
class LayerShares:
    """One layer's shares: ``vision`` ``[B, H, 3]`` (same, other, text; NaN for samples without image
    tokens) and ``answer`` ``[B, H, C]`` (image 0..C-2, then text)."""

    vision: torch.Tensor
    answer: torch.Tensor


def target_columns(block_ids: torch.Tensor) -> torch.Tensor:
    """``[B, S, C]`` one-hot of each key's target: its image (columns 0..C-2) or text (column C-1)."""
    columns = int(block_ids.max()) + 2 if block_ids.numel() else 1
    index = torch.where(block_ids >= 0, block_ids, columns - 1)
    return torch.nn.functional.one_hot(index, columns).float()


def answer_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B]``: the last real token of each row (the position that predicts the first answer token)."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(1).int().argmax(dim=1)


def _chunk_rows(block_ids: torch.Tensor, heads: int, budget: int) -> list[slice]:
    """Query-row chunks covering every image token, each small enough for ``budget`` weights."""
    vision = (block_ids >= 0).any(dim=0).nonzero().flatten()
    if not vision.numel():
        return []
    batch, length = block_ids.shape
    step = max(1, budget // max(1, batch * heads * length))
    first, last = int(vision[0]), int(vision[-1]) + 1
    return [slice(start, min(start + step, last)) for start in range(first, last, step)]


def reduce_layer(
    probabilities: Probabilities,
    block_ids: torch.Tensor,
    answers: torch.Tensor,
    heads: int,
    budget: int = ROW_BUDGET,
) -> LayerShares:
    """Reduce one layer's attention weights (read chunk by chunk) to :class:`LayerShares`."""
    targets = target_columns(block_ids)[:, None]  # [B, 1, S, C]
    batch = block_ids.shape[0]
    totals = targets.new_zeros(batch, heads, 3)
    for rows in _chunk_rows(block_ids, heads, budget):
        mass = torch.matmul(probabilities(rows), targets)  # [B, H, r, C]
        own = block_ids[:, rows]
        same_column = own.clamp(min=0)[:, None, :, None].expand(-1, heads, -1, 1)
        same = mass.gather(-1, same_column)[..., 0]
        other = mass[..., :-1].scatter(-1, same_column, 0.0).sum(-1)
        shares = torch.stack([same, other, mass[..., -1]], dim=-1)  # [B, H, r, 3]
        totals += (shares * (own >= 0)[:, None, :, None]).sum(dim=2)
    counts = (block_ids >= 0).sum(dim=1).float()[:, None, None]
    vision = totals / counts  # NaN for a sample without image tokens
    unique, which = torch.unique(answers, return_inverse=True)
    weights = probabilities(unique.to(block_ids.device))  # [B, H, u, S]
    picked = weights[torch.arange(batch), :, which]  # [B, H, S]
    answer = torch.matmul(picked[:, :, None], targets)[:, :, 0]  # [B, H, C]
    return LayerShares(vision, answer)


def share_records(
    shares: LayerShares,
    layer: int,
    num_layers: int,
    block_ids: torch.Tensor,
    sample_ids: Sequence[int],
    per_head: bool,
) -> list[dict]:
    """Plain rows (Python numbers, no tensors kept) for one layer of one batch."""
    depth = layer / (num_layers - 1) if num_layers > 1 else 0.0
    vision = shares.vision if per_head else shares.vision.mean(dim=1, keepdim=True)
    answer = shares.answer if per_head else shares.answer.mean(dim=1, keepdim=True)
    vision, answer = vision.tolist(), answer.tolist()
    images = (block_ids.amax(dim=1) + 1).tolist()
    records = []
    for row, sample in enumerate(sample_ids):
        base = {"sample": sample, "n_images": images[row], "layer": layer, "depth": depth}
        answer_targets = [f"image_{i}" for i in range(images[row])]
        for head in range(len(answer[row])):
            extra = {"head": head} if per_head else {}
            if images[row] > 0:
                for target, share in zip(VISION_TARGETS, vision[row][head]):
                    records.append({**base, "query_kind": "vision", "target": target, "share": share, **extra})
            values = answer[row][head]
            for target, share in zip([*answer_targets, "text"], [*values[: images[row]], values[-1]]):
                records.append({**base, "query_kind": "answer", "target": target, "share": share, **extra})
    return records


# --- streaming collection ------------------------------------------------------------------------


@dataclass
class ShareCollector:
    """Observer for :func:`mimic_utils.masking.image_blocks`: reduces each prefill attention call at once.

    It keeps only the rows of numbers in ``records``; the call's tensors are released when the layer ends.
    """

    sample_ids: Sequence[int]
    answers: torch.Tensor
    num_layers: int
    per_head: bool = False
    budget: int = ROW_BUDGET
    records: list[dict] = field(default_factory=list)

    def __call__(self, call: masking.AttentionCall) -> None:
        heads = call.query.shape[1]
        shares = reduce_layer(call.probabilities, call.block_ids, self.answers.to(call.key.device), heads, self.budget)
        self.records.extend(
            share_records(shares, call.layer_idx, self.num_layers, call.block_ids, self.sample_ids, self.per_head)
        )


@torch.no_grad()
def collect_batch(
    adapter,
    batch,
    mask_layers: Sequence[int] = (),
    per_head: bool = False,
    mode: str = "blockwise",
    sample_ids: Sequence[int] | None = None,
    budget: int = ROW_BUDGET,
) -> list[dict]:
    """Share rows of one prepared batch, from a single forward pass (the model must be enabled, see
    :func:`mimic_utils.masking.enable`). Only the last position's logits are formed."""
    block_ids = adapter.image_block_ids(batch)
    ids = list(range(block_ids.shape[0])) if sample_ids is None else list(sample_ids)
    answers = answer_positions(batch.inputs["attention_mask"])
    collector = ShareCollector(ids, answers, masking.num_text_layers(adapter.model), per_head, budget)
    with masking.image_blocks(block_ids, mask_layers, mode, observers=[collector], model=adapter.model):
        adapter.model(**batch.inputs, use_cache=False, logits_to_keep=1)
    return collector.records


def collect(
    adapter,
    samples: Sequence,
    mask_layers: str | Sequence[int] | None = None,
    per_head: bool = False,
    batch_size: int = 4,
    mode: str = "blockwise",
    pool: int = 1,
    auto_layer: int | None = None,
    progress: bool = False,
):
    """Attention shares of ``samples`` per layer as a long ``pandas.DataFrame`` (see the module docstring).

    ``mask_layers`` masks those layers while measuring (a spec for :func:`mimic_utils.masking.parse_layers`
    or indices; ``None`` measures the unmasked model). The model is switched to the masking attention for
    the call and restored afterwards. ``pool`` is the 1D pooling factor of :meth:`VLMAdapter.prepare`.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if mask_layers is None:  # a model trained with a mask is measured with it, as it is always run
        mask_layers = list(getattr(adapter, "mask_layers", ()))
    layers = masking.parse_layers(mask_layers, masking.num_text_layers(adapter.model), auto_layer)
    starts = range(0, len(samples), batch_size)
    records: list[dict] = []
    with masking.text_attention(adapter.model):
        for start in tqdm(starts, desc="attention shares", disable=not progress):
            chunk = list(samples[start : start + batch_size])
            batch = adapter.prepare(chunk, pool=pool)
            ids = range(start, start + len(chunk))
            records += collect_batch(adapter, batch, layers, per_head, mode, ids)
    return pd.DataFrame.from_records(records)


def shares_from_attentions(
    attentions: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    per_head: bool = False,
    sample_ids: Sequence[int] | None = None,
):
    """The same table from full attention maps (``output_attentions=True`` with eager attention): the
    reference the streaming statistics are tested against."""
    import pandas as pd

    ids = list(range(block_ids.shape[0])) if sample_ids is None else list(sample_ids)
    answers = answer_positions(attention_mask)
    records: list[dict] = []
    for layer, weights in enumerate(attentions):
        shares = reduce_layer(lambda rows, w=weights: w[:, :, rows].float(), block_ids, answers, weights.shape[1])
        records += share_records(shares, layer, len(attentions), block_ids, ids, per_head)
    return pd.DataFrame.from_records(records)


# --- over samples --------------------------------------------------------------------------------


def aggregate(frame, z: float = 1.96):
    """Mean share over samples per (layer, depth, query kind, target [, head]) with ``n``, ``sd`` and a
    normal-approximation interval ``mean ± z·sd/√n`` (``ci_low``, ``ci_high``; a single sample gives a
    zero-width interval)."""
    keys = ["layer", "depth", "query_kind", "target"] + (["head"] if "head" in frame.columns else [])
    grouped = frame.groupby(keys, sort=True)["share"]
    table = grouped.agg(n="count", mean="mean", sd="std").reset_index()
    table["sd"] = table["sd"].fillna(0.0)
    half = z * table["sd"] / table["n"].map(math.sqrt)
    table["ci_low"] = table["mean"] - half
    table["ci_high"] = table["mean"] + half
    return table


def find_low_cross_layer(
    aggregated,
    threshold: float = 0.1,
    relative: bool = False,
    statistic: str = "mean",
    query_kind: str = "vision",
    target: str = "other_images",
) -> int:
    """The layer from which cross-image attention stays low: the first layer ℓ such that in ℓ and every
    later layer the vision queries' ``other_images`` share (its ``statistic``: ``mean`` or the cautious
    ``ci_high``, averaged over heads if per head) is at most ``threshold`` — or, with ``relative``, at most
    ``threshold`` × the largest layer value. Used as ``auto_layer`` for the ``"auto"`` layer spec.

    Raises ``ValueError`` (with the per-layer values) when even the last layer is above the threshold.
    """
    rows = aggregated[(aggregated["query_kind"] == query_kind) & (aggregated["target"] == target)]
    if rows.empty:
        raise ValueError(f"no {query_kind}→{target} rows in the aggregated table")
    per_layer = rows.groupby("layer")[statistic].mean().sort_index()
    limit = threshold * float(per_layer.max()) if relative else threshold
    chosen = None
    for layer, value in per_layer[::-1].items():
        if value > limit:
            break
        chosen = int(layer)
    if chosen is None:
        values = ", ".join(f"{layer}: {value:.3f}" for layer, value in per_layer.items())
        raise ValueError(
            f"{query_kind}→{target} {statistic} never stays at or below {limit:.3f} up to the last layer "
            f"(per layer: {values})"
        )
    return chosen


__all__ = [
    "QUERY_KINDS",
    "VISION_TARGETS",
    "LayerShares",
    "ShareCollector",
    "aggregate",
    "answer_positions",
    "collect",
    "collect_batch",
    "find_low_cross_layer",
    "reduce_layer",
    "share_records",
    "shares_from_attentions",
    "target_columns",
]


# --- one example, block by block (notebook 03's heatmap) ------------------------------------------


@torch.no_grad()
def block_map(adapter, sample, mask_layers: str | Sequence[int] | None = None, auto_layer: int | None = None):
    """For one sample, per layer: the mean attention mass each image block's queries (and the answer
    position) put on each image block and on the text, averaged over heads — a ``pandas.DataFrame`` with
    ``layer, depth, query, key, share``. Streams like :func:`collect` (one layer's map at a time)."""
    import pandas as pd

    batch = adapter.prepare([sample])
    block_ids = adapter.image_block_ids(batch)
    answer = int(answer_positions(batch.inputs["attention_mask"])[0])
    num_layers = masking.num_text_layers(adapter.model)
    layers = masking.parse_layers(mask_layers, num_layers, auto_layer)
    images = int(block_ids.max()) + 1
    keys = target_columns(block_ids)[0].float()  # [S, images + 1]
    names = [f"image {i + 1}" for i in range(images)] + ["text"]
    records: list[dict] = []

    def observe(call: masking.AttentionCall) -> None:
        weights = call.probabilities()[0].mean(dim=0)  # [S, S] over heads
        mass = weights @ keys  # [S, images + 1]: each query's mass per key block
        queries = [(names[i], block_ids[0] == i) for i in range(images)]
        queries.append(("answer", torch.arange(mass.shape[0]) == answer))
        for query_name, rows in queries:
            for column, key_name in enumerate(names):
                records.append({"layer": call.layer_idx, "depth": call.layer_idx / max(1, num_layers - 1),
                                "query": query_name, "key": key_name, "share": float(mass[rows, column].mean())})

    with masking.text_attention(adapter.model):
        with masking.image_blocks(block_ids, layers, observers=[observe], model=adapter.model):
            adapter.model(**batch.inputs, use_cache=False, logits_to_keep=1)
    return pd.DataFrame.from_records(records)


def answer_image_total(frame):
    """The answer position's share on all images together vs text, aggregated over samples: per-image
    targets are summed within each (sample, layer) first, so the two targets sum to 1 per sample."""
    answer = frame[frame["query_kind"] == "answer"].copy()
    answer["target"] = answer["target"].where(answer["target"] == "text", "images")
    keys = [c for c in ("sample", "n_images", "layer", "depth", "query_kind", "target", "head") if c in answer.columns]
    return aggregate(answer.groupby(keys, as_index=False)["share"].sum())
