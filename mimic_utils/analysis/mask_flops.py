"""What the image-block mask saves: analytic FLOPs of the prefill and its measured forward time.

Notebook 05 answers claim 9 (the paper's "about 81% fewer FLOPs", counted in an unstated way) with both
numbers: :func:`compute_table` counts the query-key pairs one causal layer computes with and without the
mask and turns them into attention and whole-prefill FLOPs at a given model shape (:data:`LLAVA_OV_7B`),
and :func:`time_forward` times the model at hand dense vs masked (see docs/design.md, *Masking*).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from mimic_utils.analysis.claims import claim_entry
from mimic_utils.analysis.sentences import flops_sentence
from mimic_utils.artifacts import note, read_json, write_json
from mimic_utils.evaluation.harness import mimic_sample
from mimic_utils.models.masking import Layers, image_blocks, text_attention
from mimic_utils.models.vision_cache import ENV_DIR
from mimic_utils.models.vlm import model_fingerprint

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


def flops_claim(flops: pd.DataFrame, shape: dict = LLAVA_OV_7B) -> tuple[dict, str]:
    """Claim 9's entry and sentence from :func:`compute_table`'s last row (the most images): the share of a
    masked layer's attention FLOPs saved. Analytic and exact, so its interval is degenerate."""
    top = flops.iloc[-1]
    sentence = flops_sentence(top, shape)
    saving = float(top["masked_layer_attention_saving"])
    claim = claim_entry("9", saving, saving, saving,
                        measure=f"share of a masked layer's attention FLOPs saved (analytic, LLaVA-OV-7B size, "
                                f"{int(top['n_images'])} images)",
                        note="analytic and exact, so the interval is degenerate [s, s]; " + sentence)
    return claim, sentence


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
