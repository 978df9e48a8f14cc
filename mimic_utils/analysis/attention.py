"""Where attention goes, layer by layer: within an image, across images, to the text.

:func:`collect` returns a long table, per sample, layer and query kind, of attention shares: image tokens'
share on their own image, on the other images and on text, and the answer position's share on each image
and on text — each next to ``uniform``, the share the same query would give attending evenly to every key
it may see, because a raw share has a different ceiling for every query. :func:`aggregate` adds means with
95% intervals over samples; :func:`fade_effect` and :func:`find_low_cross_layer` read the depth trend and
the ``"auto"`` masking layer on the measured/uniform ratio. The statistics are computed on the fly by an
observer of the masking attention function, one chunk of one layer at a time, so memory does not grow
with depth (docs/design.md, *Attention statistics*).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mimic_utils.models import masking
from mimic_utils.analysis.stats import N_BOOT, percentile_interval

VISION_TARGETS = ("same_image", "other_images", "text")
QUERY_KINDS = ("vision", "answer")
ROW_BUDGET = 1 << 22
"""Attention weights held at once, in elements (16 MB of float32): sets the query-row chunk size."""

Probabilities = Callable[[torch.Tensor | slice], torch.Tensor]
"""``rows -> [B, H, r, S]`` attention weights of those query rows in one layer."""

Visible = Callable[[torch.Tensor | slice], torch.Tensor]
"""``rows -> [B or 1, 1, r, S]`` bool: the keys those query rows may see."""


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


def uniform_weights(visible: Visible, batch: int) -> Probabilities:
    """Attention spread evenly over the visible keys: the reference a measured share is read against."""

    def weights(rows: torch.Tensor | slice) -> torch.Tensor:
        mask = visible(rows).float().expand(batch, -1, -1, -1)
        return mask / mask.sum(dim=-1, keepdim=True).clamp(min=1.0)

    return weights


def causal_visible(attention_mask: torch.Tensor) -> Visible:
    """Causal and padding mask of a batch (what an unmasked layer lets a query see)."""
    length = attention_mask.shape[1]
    keys = attention_mask.bool()[:, None, None, :]
    return lambda rows: masking.causal_rows(rows, length, attention_mask.device) & keys


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
    uniform: LayerShares,
    layer: int,
    num_layers: int,
    block_ids: torch.Tensor,
    sample_ids: Sequence[int],
    per_head: bool,
) -> list[dict]:
    """Plain rows (Python numbers, no tensors kept) for one layer of one batch; ``uniform`` holds the
    reference shares (one head: they do not depend on the head)."""
    depth = layer / (num_layers - 1) if num_layers > 1 else 0.0
    vision = shares.vision if per_head else shares.vision.mean(dim=1, keepdim=True)
    answer = shares.answer if per_head else shares.answer.mean(dim=1, keepdim=True)
    vision, answer = vision.tolist(), answer.tolist()
    flat_vision, flat_answer = uniform.vision[:, 0].tolist(), uniform.answer[:, 0].tolist()
    images = (block_ids.amax(dim=1) + 1).tolist()
    records = []
    for row, sample in enumerate(sample_ids):
        base = {"sample": sample, "n_images": images[row], "layer": layer, "depth": depth}
        columns = [*range(images[row]), -1]
        answer_targets = [*(f"image_{i}" for i in range(images[row])), "text"]
        for head in range(len(answer[row])):
            extra = {"head": head} if per_head else {}
            if images[row] > 0:
                for target, share, flat in zip(VISION_TARGETS, vision[row][head], flat_vision[row]):
                    records.append({**base, "query_kind": "vision", "target": target, "share": share,
                                    "uniform": flat, **extra})
            for target, column in zip(answer_targets, columns):
                records.append({**base, "query_kind": "answer", "target": target, "share": answer[row][head][column],
                                "uniform": flat_answer[row][column], **extra})
    return records


def layer_records(probabilities: Probabilities, visible: Visible, block_ids: torch.Tensor, answers: torch.Tensor,
                  heads: int, layer: int, num_layers: int, sample_ids: Sequence[int], per_head: bool,
                  budget: int = ROW_BUDGET) -> list[dict]:
    """Measured and uniform shares of one layer, as rows: what the streaming and eager paths share."""
    shares = reduce_layer(probabilities, block_ids, answers, heads, budget)
    uniform = reduce_layer(uniform_weights(visible, block_ids.shape[0]), block_ids, answers, 1, budget)
    return share_records(shares, uniform, layer, num_layers, block_ids, sample_ids, per_head)


# --- streaming collection ------------------------------------------------------------------------


@dataclass
class ShareCollector:
    """Observer for :func:`mimic_utils.models.masking.image_blocks`: reduces each prefill attention call at once.

    It keeps only the rows of numbers in ``records``; the call's tensors are released when the layer ends.
    """

    sample_ids: Sequence[int]
    answers: torch.Tensor
    num_layers: int
    per_head: bool = False
    budget: int = ROW_BUDGET
    records: list[dict] = field(default_factory=list)

    def __call__(self, call: masking.AttentionCall) -> None:
        unmasked = dataclasses.replace(call, masked=False).mask  # the uniform reference ignores the image mask
        self.records.extend(layer_records(
            call.probabilities, unmasked, call.block_ids, self.answers.to(call.key.device), call.query.shape[1],
            call.layer_idx, self.num_layers, self.sample_ids, self.per_head, self.budget))


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
    :func:`mimic_utils.models.masking.enable`). Only the last position's logits are formed."""
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
    mask_layers: masking.Layers | None = None,
    per_head: bool = False,
    batch_size: int = 4,
    mode: str = "blockwise",
    pool: int = 1,
    progress: bool = False,
):
    """Attention shares of ``samples`` per layer as a long ``pandas.DataFrame`` (see the module docstring).

    ``mask_layers`` masks those layers while measuring (indices, :func:`mimic_utils.models.masking.resolve_layers`;
    ``None``: the layers the adapter is masked in, none for an unmasked model). The model is switched to the masking attention for
    the call and restored afterwards. ``pool`` is the 1D pooling factor of :meth:`VLMAdapter.prepare`.
    """
    # a model trained with a mask is measured with it, as it is always run
    layers = tuple(getattr(adapter, "mask_layers", ())) if mask_layers is None else mask_layers
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
    ids = list(range(block_ids.shape[0])) if sample_ids is None else list(sample_ids)
    answers = answer_positions(attention_mask)
    visible = causal_visible(attention_mask)
    records: list[dict] = []
    for layer, weights in enumerate(attentions):
        records += layer_records(lambda rows, w=weights: w[:, :, rows].float(), visible, block_ids, answers,
                                 weights.shape[1], layer, len(attentions), ids, per_head)
    return pd.DataFrame.from_records(records)


# --- over samples --------------------------------------------------------------------------------


def _mean_interval(grouped, column: str, z: float):
    """``n, mean, sd, ci_low, ci_high`` of one column per group (normal approximation over samples)."""
    table = grouped[column].agg(n="count", mean="mean", sd="std")
    table["sd"] = table["sd"].fillna(0.0)
    half = z * table["sd"] / table["n"].map(math.sqrt)
    table["ci_low"], table["ci_high"] = table["mean"] - half, table["mean"] + half
    return table


def ratio_of_means(share: np.ndarray, uniform: np.ndarray, seed: int = 0,
                   n_boot: int = N_BOOT) -> tuple[float, float, float]:
    """``(ratio, lo, hi)``: Σ measured / Σ uniform over samples (ratio of means, steadier than a mean of
    per-sample ratios when a reference is small), with a percentile bootstrap over samples."""
    share, uniform = np.asarray(share, dtype=float), np.asarray(uniform, dtype=float)
    if not len(share) or uniform.sum() <= 0:
        return (math.nan, math.nan, math.nan)
    index = np.random.default_rng(seed).integers(0, len(share), size=(n_boot, len(share)))
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = share[index].sum(axis=1) / uniform[index].sum(axis=1)
    lo, hi = percentile_interval(boot)
    return (float(share.sum() / uniform.sum()), lo, hi)


def aggregate(frame, z: float = 1.96, seed: int = 0, n_boot: int = N_BOOT):
    """Per (layer, depth, query kind, target [, head]) over samples: the measured share (``n``, ``mean``,
    ``sd``, normal-approximation interval ``ci_low``/``ci_high``; one sample gives a zero-width interval),
    the uniform reference (``uniform`` with ``uniform_low``/``uniform_high``) and ``ratio`` = measured /
    uniform with a bootstrap interval over samples (``ratio_low``/``ratio_high``; NaN where the reference
    is 0, e.g. a one-image sample's other images)."""
    keys = ["layer", "depth", "query_kind", "target"] + (["head"] if "head" in frame.columns else [])
    grouped = frame.groupby(keys, sort=True)
    table = _mean_interval(grouped, "share", z)
    reference = _mean_interval(grouped, "uniform", z)
    table["uniform"], table["uniform_low"], table["uniform_high"] = (
        reference["mean"], reference["ci_low"], reference["ci_high"])
    ratios = [ratio_of_means(g["share"].to_numpy(), g["uniform"].to_numpy(), seed, n_boot) for _, g in grouped]
    table["ratio"], table["ratio_low"], table["ratio_high"] = (list(column) for column in zip(*ratios))
    return table.reset_index()


def answer_totals(frame):
    """The answer position's rows with its per-image targets (and their uniform references) summed into
    one ``images`` target per (sample, layer), beside ``text``: the two sum to 1 per sample."""
    answer = frame[frame["query_kind"] == "answer"].copy()
    answer["target"] = answer["target"].where(answer["target"] == "text", "images")
    keys = [c for c in ("sample", "n_images", "layer", "depth", "query_kind", "target", "head") if c in answer.columns]
    return answer.groupby(keys, as_index=False)[["share", "uniform"]].sum()


def answer_image_total(frame):
    """:func:`answer_totals` aggregated over samples (see :func:`aggregate`)."""
    return aggregate(answer_totals(frame))


def cross_rows(shares):
    """The rows that read attention across images, one per layer and in ``shares``' order: image tokens →
    other images and the answer position → all images (``query`` names each). ``shares``: :func:`aggregate`'s
    table and :func:`answer_image_total`'s concatenated, as notebook 03 shows them and writes them to
    ``shares_by_layer.csv``."""
    vision = (shares["query_kind"] == "vision") & (shares["target"] == "other_images")
    answer = (shares["query_kind"] == "answer") & (shares["target"] == "images")
    cross = shares[vision | answer]
    return cross.assign(query=cross["query_kind"] + " → " + cross["target"])


def versus_uniform(table, query_kind: str = "vision", target: str = "other_images", label: str = "measured",
                   reference: str = "uniform"):
    """Measured and uniform shares of one (query kind, target) as two lines named ``label`` and
    ``reference``, with ``depth, mean, ci_low, ci_high`` — the shape :func:`mimic_utils.analysis.plots.attention_depth`
    draws (one line per ``target``)."""
    rows = table[(table["query_kind"] == query_kind) & (table["target"] == target)]
    rows = rows.groupby(["layer", "depth", "query_kind"], as_index=False).mean(numeric_only=True)  # over heads
    line = ["layer", "depth", "query_kind", "mean", "ci_low", "ci_high"]
    measured = rows[line].assign(target=label)
    flat = rows[["layer", "depth", "query_kind", "uniform", "uniform_low", "uniform_high"]].set_axis(line, axis=1)
    return pd.concat([measured, flat.assign(target=reference)], ignore_index=True)


# --- the depth trend and the `auto` layer ---------------------------------------------------------


def _sample_by_layer(frame, query_kind: str, target: str):
    """``(share, uniform, layers)``: ``[samples, layers]`` arrays of one (query kind, target), heads averaged."""
    rows = frame[(frame["query_kind"] == query_kind) & (frame["target"] == target)]
    per = rows.groupby(["sample", "layer"])[["share", "uniform"]].mean()
    share, uniform = (per[column].unstack("layer").sort_index(axis=1) for column in ("share", "uniform"))
    return share.to_numpy(), uniform.to_numpy(), [int(layer) for layer in share.columns]


def depth_thirds(layers: Sequence[int], fraction: float = 1 / 3) -> tuple[list[int], list[int]]:
    """The first and the last ``fraction`` of the layers (at least one layer each)."""
    k = max(1, round(len(layers) * fraction))
    return list(layers[:k]), list(layers[-k:])


def by_model_lines(aggregated: dict) -> pd.DataFrame:
    """Image tokens → other images per model (:func:`aggregate` tables by model name), measured against
    uniform, with one uniform line (the first model's: the questions and the causal mask are the same for
    every model, so is the reference) — the lines :func:`mimic_utils.analysis.plots.attention_depth` draws."""
    first = next(iter(aggregated.values()))
    return pd.concat([versus_uniform(t, label=name).query("target != 'uniform'") for name, t in aggregated.items()]
                     + [versus_uniform(first).query("target == 'uniform'")])


def fade_table(shares: dict, mask_layers: dict) -> pd.DataFrame:
    """Per model (:func:`collect` frames by name), its masked layers and the fade of its cross-image attention
    (:func:`fade_effect`: first- and last-third ratios, their difference with interval, ``n``)."""
    keep = ("first_ratio", "last_ratio", "effect", "lo", "hi", "n")
    return pd.DataFrame([{"model": name, "masked_layers": list(mask_layers[name]),
                          **{k: v for k, v in fade_effect(frame).items() if k in keep}}
                         for name, frame in shares.items()])


def fade_effect(frame, query_kind: str = "vision", target: str = "other_images", fraction: float = 1 / 3,
                seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """How the measured/uniform ratio changes with depth: ratio over the last third of layers − over the
    first third (each a ratio of means over samples and those layers), with a bootstrap over samples that
    resamples whole samples (all their layers together). Negative = the attention fades with depth."""
    share, uniform, layers = _sample_by_layer(frame, query_kind, target)
    first, last = depth_thirds(layers, fraction)
    columns = {layer: i for i, layer in enumerate(layers)}
    pick_first, pick_last = [columns[layer] for layer in first], [columns[layer] for layer in last]

    def ratios(s: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return tuple(s[..., cols].sum(axis=(-1, -2)) / u[..., cols].sum(axis=(-1, -2))
                         for cols in (pick_first, pick_last))

    early, late = ratios(share, uniform)
    index = np.random.default_rng(seed).integers(0, len(share), size=(n_boot, len(share)))
    boot_early, boot_late = ratios(share[index], uniform[index])
    lo, hi = percentile_interval(boot_late - boot_early)
    return {"effect": float(late - early), "lo": lo, "hi": hi,
            "first_layers": first, "last_layers": last, "first_ratio": float(early), "last_ratio": float(late),
            "first_interval": list(percentile_interval(boot_early)),
            "last_interval": list(percentile_interval(boot_late)), "n": len(share),
            "query_kind": query_kind, "target": target}


def per_layer_values(aggregated, column: str = "ratio", query_kind: str = "vision", target: str = "other_images"):
    """One (query kind, target)'s ``column`` per layer (averaged over heads), sorted by layer."""
    rows = aggregated[(aggregated["query_kind"] == query_kind) & (aggregated["target"] == target)]
    if rows.empty:
        raise ValueError(f"no {query_kind}→{target} rows in the aggregated table")
    return rows.groupby("layer")[column].mean().sort_index()


def ratio_by_layer(aggregated_by_model: Mapping[str, pd.DataFrame], query_kind: str = "vision",
                   target: str = "other_images") -> pd.DataFrame:
    """``model, layer, ratio, ratio_low, ratio_high`` of one (query kind, target) per model (heads averaged):
    what :func:`mimic_utils.plots.ratio_by_layer` draws. NaN where the uniform reference is 0 (a masked layer)."""
    columns = ("ratio", "ratio_low", "ratio_high")
    frames = [pd.concat([per_layer_values(table, c, query_kind, target) for c in columns], axis=1, keys=columns)
              .reset_index().assign(model=name) for name, table in aggregated_by_model.items()]
    return pd.concat(frames, ignore_index=True)[["model", "layer", *columns]]


def find_low_cross_layer(aggregated, threshold: float = 0.5, column: str = "ratio", query_kind: str = "vision",
                         target: str = "other_images") -> int | None:
    """The layer from which cross-image attention stays low: the first layer ℓ such that in ℓ and every
    later layer ``column`` (the measured/uniform ``ratio`` by default) is at most ``threshold`` × its peak
    over layers. ``None`` when even the last layer is above that (no layer qualifies). Used as
    ``auto_layer`` for the ``"auto"`` layer spec."""
    values = per_layer_values(aggregated, column, query_kind, target)
    limit = threshold * float(values.max())
    chosen = None
    for layer, value in values[::-1].items():
        if not value <= limit:
            break
        chosen = int(layer)
    return chosen


def low_cross_sentence(aggregated, layer: int | None, threshold: float, column: str = "ratio") -> str:
    """What :func:`find_low_cross_layer` found, in words (also when it found nothing)."""
    values = per_layer_values(aggregated, column)
    peak_layer, peak = int(values.idxmax()), float(values.max())
    rule = f"at or below {threshold:.0%} of its peak ({peak:.2f} in layer {peak_layer}, limit {threshold * peak:.2f})"
    if layer is None:
        return (f"No layer qualifies: the vision→other-image {column} does not stay {rule} through the last layer "
                f"(last layer {float(values.iloc[-1]):.2f}).")
    return f"From layer {layer} on, the vision→other-image {column} stays {rule}."


# --- one example, block by block (notebook 03's heatmap) ------------------------------------------


@torch.no_grad()
def block_map(adapter, sample, mask_layers: masking.Layers = ()):
    """For one sample, per layer: the mean attention mass each image block's queries (and the answer
    position) put on each image block and on the text, averaged over heads — a ``pandas.DataFrame`` with
    ``layer, depth, query, key, share``. Streams like :func:`collect` (one layer's map at a time)."""
    batch = adapter.prepare([sample])
    block_ids = adapter.image_block_ids(batch)
    answer = int(answer_positions(batch.inputs["attention_mask"])[0])
    num_layers = masking.num_text_layers(adapter.model)
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
        with masking.image_blocks(block_ids, mask_layers, observers=[observe], model=adapter.model):
            adapter.model(**batch.inputs, use_cache=False, logits_to_keep=1)
    return pd.DataFrame.from_records(records)


__all__ = [
    "QUERY_KINDS",
    "cross_rows",
    "by_model_lines",
    "fade_table",
    "VISION_TARGETS",
    "LayerShares",
    "ShareCollector",
    "aggregate",
    "answer_image_total",
    "answer_positions",
    "answer_totals",
    "block_map",
    "causal_visible",
    "collect",
    "collect_batch",
    "depth_thirds",
    "fade_effect",
    "find_low_cross_layer",
    "layer_records",
    "low_cross_sentence",
    "per_layer_values",
    "ratio_by_layer",
    "ratio_of_means",
    "reduce_layer",
    "share_records",
    "shares_from_attentions",
    "target_columns",
    "uniform_weights",
    "versus_uniform",
]
