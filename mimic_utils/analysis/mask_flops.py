"""What the image-block mask saves: measured FLOPs and time, and the analytic figure beside them.

Notebook 05 answers claim 9 (the paper's "about 81% fewer FLOPs", counted in an unstated way) with
measurements, and the formula beside them (a formula alone reproduces nothing: its verdict is "analytic,
not measured"):

* :func:`attention_flops` — the FLOPs one masked layer's attention executes against the dense causal layer,
  counted by ``torch.utils.flop_counter.FlopCounterMode`` at LLaVA-OneVision's multi-image layout (on the
  ``meta`` device: shapes only, no memory). On the CPU, FlopCounterMode has no formula for SDPA's fused
  kernel and counts **0** for it (:func:`fused_sdpa_counted` measures this), so the count runs SDPA's math
  path, whose matrix products it does count — as executed: the dense layer computes every query-key pair
  and masks the upper triangle afterwards, the default (blockwise) masked layer computes each image's own
  block and the text rows, and the ``dense`` masking mode computes (and is counted as) the dense layer;
* :func:`attention_time` — the wall-clock time of the same two layers, interleaved repeats, with a
  bootstrap interval over repeats of the saving ``1 − masked / dense``;
* :func:`forward_flops` — FLOPs of a whole forward of the model at hand, dense vs masked, total and
  the language model's attention alone (the organism: attention is a small part of its work);
* :func:`compute_table` (analytic) counts the query-key pairs one causal layer computes with and without
  the mask and turns them into attention and whole-prefill FLOPs at a given model shape
  (:data:`LLAVA_OV_7B`), and :func:`time_forward` times the model at hand dense vs masked.

:func:`compute_claim` turns them into claim 9's entry (docs/design.md, *Statistics and verdicts*).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from mimic_utils.analysis import stats
from mimic_utils.analysis.claims import claim_entry, part
from mimic_utils.analysis.sentences import flops_sentence
from mimic_utils.artifacts import note, read_json, write_json
from mimic_utils.evaluation.harness import mimic_sample
from mimic_utils.models.masking import Layers, image_blocks, text_attention
from mimic_utils.models.vision_cache import ENV_DIR
from mimic_utils.models.vlm import model_fingerprint

#: The masking benchmark's layout (``python -m mimic_utils.bench masking``): one layer of LLaVA-OV 0.5B's
#: language model (Qwen2-0.5B: 14 query heads, 2 key/value heads of 64) over 8 images of 730 tokens.
PAPER_LAYOUT = {"images": 8, "tokens": 730, "text": 50, "heads": 14, "kv_heads": 2, "head_dim": 64}

#: LLaVA-OneVision-7B's language model (Qwen2-7B) and multi-image size: 8 images of 730 tokens.
LLAVA_OV_7B = {"layers": 28, "hidden": 3584, "heads": 28, "kv_heads": 4, "head_dim": 128, "intermediate": 18944,
               "tokens_per_image": 730, "masked_layers": 14}


def attention_pairs(block_sizes: Sequence[int], text_before: int, text_after: int, masked: bool) -> int:
    """Query-key pairs one causal attention layer computes: ``N(N+1)/2`` dense; in a masked layer each
    image's queries see only their own earlier tokens (``n(n+1)/2`` per image) while text queries stay
    causal over everything before them."""
    images = sum(block_sizes)
    total = text_before + images + text_after
    if not masked or len(block_sizes) < 2:
        return total * (total + 1) // 2
    before = text_before * (text_before + 1) // 2
    within = sum(n * (n + 1) // 2 for n in block_sizes)
    after = sum(text_before + images + i + 1 for i in range(text_after))
    return before + within + after


def layer_flops(tokens: int, pairs: int, hidden: int, heads: int, kv_heads: int, head_dim: int,
                intermediate: int) -> dict[str, int]:
    """Multiply-adds ×2 of one decoder layer: attention (scores and weighted values over ``pairs``) and
    the rest (Q, K, V, O projections and the gated MLP over ``tokens``)."""
    attention = 2 * 2 * pairs * heads * head_dim
    projections = 2 * tokens * hidden * (2 * heads * head_dim + 2 * kv_heads * head_dim)
    mlp = 2 * tokens * 3 * hidden * intermediate
    return {"attention": attention, "other": projections + mlp}


def compute_table(n_images: Sequence[int], tokens_per_image: int, layers: int, masked_layers: int, hidden: int,
                  heads: int, kv_heads: int, head_dim: int, intermediate: int, text_before: int = 20,
                  text_after: int = 30) -> pd.DataFrame:
    """Analytic attention and total FLOPs of the prefill, dense vs masked in ``masked_layers`` layers."""
    rows = []
    for n in n_images:
        blocks = [tokens_per_image] * n
        tokens = text_before + n * tokens_per_image + text_after
        shape = dict(hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim, intermediate=intermediate)
        dense = layer_flops(tokens, attention_pairs(blocks, text_before, text_after, False), **shape)
        masked = layer_flops(tokens, attention_pairs(blocks, text_before, text_after, True), **shape)
        attention_dense = layers * dense["attention"]
        attention_masked = (layers - masked_layers) * dense["attention"] + masked_layers * masked["attention"]
        other = layers * dense["other"]
        rows.append({
            "n_images": n, "tokens": tokens,
            "masked_layer_attention_saving": 1 - masked["attention"] / dense["attention"],
            "attention_tflops_dense": attention_dense / 1e12, "attention_tflops_masked": attention_masked / 1e12,
            "attention_saving": 1 - attention_masked / attention_dense,
            "total_tflops_dense": (attention_dense + other) / 1e12,
            "total_tflops_masked": (attention_masked + other) / 1e12,
            "total_saving": 1 - (attention_masked + other) / (attention_dense + other),
        })
    return pd.DataFrame(rows)


def synchronize() -> None:
    """Wait for queued GPU work, so a timer measures kernels rather than their launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


#: The columns of :func:`time_forward`'s table, in order.
TIMING_COLUMNS = ("n_images", "tokens", "batch", "dense_seconds", "masked_seconds", "masked_over_dense")


def machine() -> dict:
    """What a forward time depends on besides the model and its inputs: this host, its CPUs and threads, the
    torch build and the GPU, if any."""
    return {"host": platform.node(), "processor": platform.machine(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def timing_path(adapter, chosen: Sequence[int], picked: dict[int, dict], repeats: int, batch: int) -> Path | None:
    """Where a measurement of these forwards on this machine is kept (``$MIMIC_CACHE_DIR/timings/``), or None
    when no cache directory is configured. The key holds the model (its fingerprint), the masked layers, the
    questions timed, the batch, the repeats and :func:`machine`: any change measures again."""
    root = os.environ.get(ENV_DIR)
    if not root:
        return None
    key = json.dumps([model_fingerprint(adapter.settings), list(chosen), {n: r["id"] for n, r in picked.items()},
                      repeats, batch, machine()], sort_keys=True, default=str)
    return Path(root) / "timings" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


@torch.no_grad()
def time_forward(adapter, records: Sequence[dict], n_images: Sequence[int], layers: Layers, repeats: int = 5,
                 batch: int = 8) -> pd.DataFrame:
    """Measured prefill time of the adapter's model, dense vs masked in ``layers``, per image count: the
    median of ``repeats`` forwards of a batch of ``batch`` copies of one benchmark sample with that many
    images (counts the benchmark lacks are skipped). Times from one run: compare the ratio, not seconds.

    Under the runner (``MIMIC_CACHE_DIR`` set) the measurement is kept and a rerun on the same machine, of the
    same model and questions, reuses it (saying so in the log, :func:`timing_path`): a study rerun that
    changes nothing then shows the same table; ``rm -rf outputs/<profile>/cache`` measures again."""
    chosen = list(layers)
    picked = {n: r for n in n_images if (r := next((r for r in records if len(r["images"]) == n), None)) is not None}
    kept = timing_path(adapter, chosen, picked, repeats, batch)
    if kept is not None and kept.is_file():
        stored = read_json(kept)
        note(f"[timing] forward times reused, measured {stored['measured']} on {stored['machine']['host']} "
             f"({kept.name}); delete the cache folder to measure again")
        return pd.DataFrame(stored["rows"], columns=TIMING_COLUMNS)
    rows = []
    for n, record in picked.items():
        prepared = adapter.prepare([mimic_sample(record)] * batch)

        block_ids = adapter.image_block_ids(prepared)

        def median_seconds() -> float:
            times = []
            for _ in range(repeats):
                synchronize()
                start = time.perf_counter()
                adapter.model(**prepared.inputs, use_cache=False)
                synchronize()
                times.append(time.perf_counter() - start)
            return sorted(times)[len(times) // 2]

        dense = median_seconds()
        with text_attention(adapter.model), image_blocks(block_ids, layers):
            masked = median_seconds()
        rows.append({"n_images": n, "tokens": int(prepared.inputs["input_ids"].shape[1]), "batch": batch,
                     "dense_seconds": dense, "masked_seconds": masked, "masked_over_dense": masked / dense})
    if kept is not None:
        write_json(kept, {"measured": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "rows": rows})
    return pd.DataFrame(rows, columns=TIMING_COLUMNS)


# --- measured: one layer's attention, FLOPs and time -------------------------------------------------------


def layer_inputs(images: int, tokens: int, text: int, heads: int, kv_heads: int, dim: int, seed: int,
                 device: str = "cpu", dtype=None) -> tuple:
    """Query/key/value of one decoder layer for one sample laid out as LLaVA-OV lays out a multi-image
    prompt (a few text tokens, the images back to back, the question), with its block ids. Drawn on the
    CPU (the same numbers whatever the device), then moved to ``device`` and ``dtype`` (block ids stay on
    the CPU for ``meta``, where only shapes exist)."""
    prefix = min(5, text)
    block_ids = torch.full((1, images * tokens + text), -1, dtype=torch.long)
    block_ids[0, prefix : prefix + images * tokens] = torch.arange(images).repeat_interleave(tokens)
    length = block_ids.shape[1]
    if device == "meta":
        shapes = ((1, heads, length, dim), *[(1, kv_heads, length, dim)] * 2)
        return (*(torch.empty(shape, device="meta", dtype=dtype) for shape in shapes), block_ids)
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(1, heads, length, dim, generator=generator)
    key, value = (torch.randn(1, kv_heads, length, dim, generator=generator) for _ in range(2))
    moved = (tensor.to(device=device, dtype=dtype) for tensor in (query, key, value))
    return (*moved, block_ids.to(device))


def attention_call(query, key, value, block_ids, mode: str | None) -> Callable[[], torch.Tensor]:
    """One layer's attention as a decoder layer calls it, output ``[B, S, H, D]``: outside a context
    (``mode`` None) the registered function is transformers' SDPA (dense causal); inside, the masked layer
    in ``mode`` (``blockwise``, ``dense`` or ``flex``)."""
    from mimic_utils.models import masking

    groups = query.shape[1] // key.shape[1]
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=groups, is_causal=True, training=False)
    scaling = query.shape[-1] ** -0.5

    def run():
        if mode is None:
            return masking.attention_forward(module, query, key, value, None, scaling=scaling)[0]
        with masking.image_blocks(block_ids, [0], mode=mode):
            return masking.attention_forward(module, query, key, value, None, scaling=scaling)[0]

    return run


def count_flops(run: Callable[[], object], math_path: bool = True) -> dict:
    """FLOPs FlopCounterMode counts while ``run()`` executes: ``total`` and ``by_op`` (op name → FLOPs), and
    ``by_module`` (module name → FLOPs) when modules ran. ``math_path`` runs SDPA's math path, whose matrix
    products FlopCounterMode counts (it has no formula for the CPU's fused SDPA kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter, (sdpa_kernel(SDPBackend.MATH) if math_path else _nothing()):
        run()
    counts = counter.get_flop_counts()
    return {"total": int(counter.get_total_flops()),
            "by_op": {str(op): int(n) for op, n in counts.get("Global", {}).items()},
            "by_module": {name: int(sum(ops.values())) for name, ops in counts.items() if name != "Global"}}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def fused_sdpa_counted(device: str = "cpu") -> bool:
    """Whether FlopCounterMode counts anything for SDPA's default (fused) kernel on ``device`` (False on the
    CPU of torch 2.x: no formula is registered for ``_scaled_dot_product_flash_attention_for_cpu``)."""
    query = torch.randn(1, 2, 16, 8, device=device)
    return count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(query, query, query, is_causal=True),
                       math_path=False)["total"] > 0


def attention_flops(images: int = PAPER_LAYOUT["images"], tokens: int = PAPER_LAYOUT["tokens"],
                    text: int = PAPER_LAYOUT["text"], heads: int = PAPER_LAYOUT["heads"],
                    kv_heads: int = PAPER_LAYOUT["kv_heads"], head_dim: int = PAPER_LAYOUT["head_dim"]) -> dict:
    """FLOPs of one layer's attention counted by FlopCounterMode (math path, ``meta`` tensors): the dense
    causal layer, the masked layer as computed by default (``blockwise``) and by the ``dense`` reference
    mode; ``saving`` is ``1 − blockwise / dense causal``, ``dense_mode_saving`` the same for the reference mode."""
    inputs = layer_inputs(images, tokens, text, heads, kv_heads, head_dim, seed=0, device="meta")
    counted = {name: count_flops(attention_call(*inputs, mode))["total"]
               for name, mode in (("dense_causal", None), ("masked_blockwise", "blockwise"), ("masked_dense", "dense"))}
    dense = counted["dense_causal"]
    return {"layout": {"images": images, "tokens_per_image": tokens, "text_tokens": text, "heads": heads,
                       "kv_heads": kv_heads, "head_dim": head_dim}, "sequence": images * tokens + text,
            "flops": counted, "saving": 1 - counted["masked_blockwise"] / dense,
            "dense_mode_saving": 1 - counted["masked_dense"] / dense, "fused_kernel_counted": fused_sdpa_counted()}


def attention_time(images: int = PAPER_LAYOUT["images"], tokens: int = PAPER_LAYOUT["tokens"],
                   text: int = PAPER_LAYOUT["text"], heads: int = PAPER_LAYOUT["heads"],
                   kv_heads: int = PAPER_LAYOUT["kv_heads"], head_dim: int = PAPER_LAYOUT["head_dim"],
                   repeats: int = 7, seed: int = 0, n_boot: int = stats.N_BOOT, device: str | None = None) -> dict:
    """Wall-clock time of one layer's attention, dense causal SDPA against the masked layer (blockwise, the
    default), after one warm-up each, in ``repeats`` interleaved pairs (so drift on a shared machine hits
    both alike), on ``device`` (default: CUDA when there is one, else the CPU). ``saving`` is
    ``1 − median(masked / dense)`` over the pairs, with a 95% bootstrap interval over pairs (``lo``, ``hi``)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    inputs = layer_inputs(images, tokens, text, heads, kv_heads, head_dim, seed, device=device)
    runs = {"dense_causal": attention_call(*inputs, None), "masked_blockwise": attention_call(*inputs, "blockwise")}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for run in runs.values():
            run()
        for _ in range(repeats):
            for name, run in runs.items():
                synchronize()
                start = time.perf_counter()
                run()
                synchronize()
                seconds[name].append(time.perf_counter() - start)
    ratios = np.array(seconds["masked_blockwise"]) / np.array(seconds["dense_causal"])
    index = np.random.default_rng(seed).integers(0, len(ratios), size=(n_boot, len(ratios)))
    lo, hi = stats.percentile_interval(1 - np.median(ratios[index], axis=1))
    return {"layout": {"images": images, "tokens_per_image": tokens, "text_tokens": text, "heads": heads,
                       "kv_heads": kv_heads, "head_dim": head_dim}, "sequence": images * tokens + text,
            "repeats": repeats, "seconds": seconds, "masked_over_dense": float(np.median(ratios)),
            "saving": float(1 - np.median(ratios)), "lo": lo, "hi": hi, "threads": torch.get_num_threads(),
            "device": device}


def _text_attention_modules(model) -> list[str]:
    """Names of the language model's attention modules (those the mask acts on: they carry ``layer_idx``)."""
    return [name for name, module in model.named_modules()
            if getattr(module, "layer_idx", None) is not None and name.rsplit(".", 1)[-1] in ("self_attn", "attn")]


@torch.no_grad()
def forward_flops(adapter, records: Sequence[dict], n_images: int, layers: Layers) -> dict:
    """FLOPs of one forward of the adapter's model on a benchmark sample with ``n_images`` images, dense vs
    masked in ``layers`` (resolved indices, :func:`mimic_utils.models.masking.resolve_layers`; blockwise), counted by FlopCounterMode on SDPA's math path: ``total`` and the
    language model's attention core (``attention``: the attention modules minus their projections)."""
    record = next((r for r in records if len(r["images"]) == n_images), None)
    if record is None:
        raise ValueError(f"forward_flops: no benchmark question with {n_images} images among {len(records)}")
    prepared = adapter.prepare([mimic_sample(record)])
    chosen = list(layers)
    names = _text_attention_modules(adapter.model)
    children = {name: [f"{name}.{child}" for child, _ in adapter.model.get_submodule(name).named_children()]
                for name in names}

    def counted(masked: bool) -> dict:
        def run():
            if not masked:
                return adapter.model(**prepared.inputs, use_cache=False)
            with image_blocks(adapter.image_block_ids(prepared), layers):
                return adapter.model(**prepared.inputs, use_cache=False)

        with text_attention(adapter.model):
            found = count_flops(run)
        modules = {name.split(".", 1)[-1] if "." in name else name: n for name, n in found["by_module"].items()}
        core = sum(modules.get(name, 0) - sum(modules.get(child, 0) for child in children[name]) for name in names)
        return {"total": found["total"], "attention": int(core)}

    dense, masked = counted(False), counted(True)
    return {"n_images": n_images, "tokens": int(prepared.inputs["input_ids"].shape[1]), "masked_layers": chosen,
            "dense": dense, "masked": masked, "total_saving": 1 - masked["total"] / dense["total"],
            "attention_saving": 1 - masked["attention"] / dense["attention"] if dense["attention"] else float("nan")}


# --- claim 9 --------------------------------------------------------------------------------------------------


def compute_claim(analytic: Mapping, flops: Mapping | None = None, timing: Mapping | None = None,
                  forward: Mapping | None = None, note: str = "") -> dict:
    """Claim 9's entry. With ``flops`` (:func:`attention_flops`) and ``timing`` (:func:`attention_time`) it is
    read on them, in two parts (counted FLOPs saving of a masked layer's attention — exact, so its interval is
    the point — and the measured time saving with its interval): reproduced only if both are. Without them
    it holds only ``analytic`` (a :func:`compute_table` row) and its verdict is "analytic, not measured".
    The analytic figures and the whole forward (``forward``, :func:`forward_flops`) go into the note."""
    formula = (f"analytic at LLaVA-OV-7B size, {int(analytic['n_images'])} images: "
               f"{analytic['masked_layer_attention_saving']:.1%} of a masked layer's attention, "
               f"{analytic['attention_saving']:.1%} of all attention, {analytic['total_saving']:.1%} of the prefill "
               "(the paper: about 81%, counting not stated)")
    if flops is None or timing is None:
        value = float(analytic["masked_layer_attention_saving"])
        return claim_entry("9", value, value, value, "share of a masked layer's attention FLOPs saved (analytic "
                           f"formula, LLaVA-OV-7B size, {int(analytic['n_images'])} images)",
                           note="; ".join(filter(None, [formula, note])), analytic=True)
    layout = flops["layout"]
    where = f"{layout['images']} images × {layout['tokens_per_image']} tokens"
    counted = {"diff": flops["saving"], "lo": flops["saving"], "hi": flops["saving"]}
    parts = [part(f"FLOPs counted (FlopCounterMode, {where})", counted, +1),
             part(f"time measured ({timing['device']}, {timing['repeats']} pairs)",
                  {"diff": timing["saving"], "lo": timing["lo"], "hi": timing["hi"]}, +1)]
    lines = [f"counted FLOPs of the masked layer's attention {flops['flops']['masked_blockwise']:.3g} vs dense "
             f"causal {flops['flops']['dense_causal']:.3g} (math path; the fused CPU kernel is "
             f"{'counted' if flops['fused_kernel_counted'] else 'not counted at all'} by FlopCounterMode; the "
             f"dense masking mode is counted as {flops['dense_mode_saving']:+.1%}: it computes every pair)",
             f"time: masked {timing['masked_over_dense']:.2f}× dense", formula]
    if forward:
        lines.append(f"the organism's whole forward at {forward['n_images']} images ({forward['tokens']} tokens, "
                     f"masked layers {forward['masked_layers']}): {forward['total_saving']:.1%} fewer FLOPs in all, "
                     f"{forward['attention_saving']:.1%} of its language model's attention")
    return claim_entry("9", flops["saving"], flops["saving"], flops["saving"],
                       f"share of one masked layer's attention FLOPs saved, counted, and of its time, measured "
                       f"({where})", note="; ".join(lines + ([note] if note else [])), parts=parts)


def measure_compute(adapter, records: Sequence[dict], n_images: Sequence[int], layers: Layers,
                    repeats: int = 5) -> dict:
    """Claim 9's measurements (notebook 05): one layer's attention at LLaVA-OV's multi-image layout
    (:data:`PAPER_LAYOUT`), FLOPs counted (:func:`attention_flops`) and timed (:func:`attention_time`), and
    the model at hand's whole forward (:func:`forward_flops`) at the most images of ``n_images`` the
    benchmark asks."""
    largest = max(n for n in n_images if any(len(r["images"]) == n for r in records))
    return {"attention_flops": attention_flops(), "attention_time": attention_time(repeats=repeats),
            "forward_flops": forward_flops(adapter, records, largest, layers)}


def flops_claim(flops: pd.DataFrame, measured: Mapping | None = None,
                shape: Mapping = LLAVA_OV_7B) -> tuple[dict, str]:
    """Claim 9's entry (:func:`compute_claim`: read on ``measured``, :func:`measure_compute`; without it only
    the formula, "analytic, not measured") and the analytic sentence, both from :func:`compute_table`'s last
    row (the most images)."""
    top = flops.iloc[-1]
    measured = measured or {}
    claim = compute_claim(top, measured.get("attention_flops"), measured.get("attention_time"),
                          measured.get("forward_flops"))
    return claim, flops_sentence(top, shape)
