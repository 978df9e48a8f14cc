"""Performance benchmarks: ``python -m mimic_utils.bench NAME [args]`` writes ``outputs/bench/NAME.json``.

Benchmarks are not timed tests (a shared two-core machine makes timings too noisy for pass/fail); they
are commands whose latest result is kept as a plain file, with the machine it ran on, so that a
regression is visible in review. To add one, write ``def bench_x(args) -> dict`` returning its figures
(optionally with a ``"ratio"`` entry: measured / target, below 1 is within target, and a ``"result_name"``
entry when one benchmark writes several result files) and register it in
:data:`benchmarks` together with a function that adds its command-line arguments.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.metadata
import inspect
import json
import os
import random
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image

from mimic_utils.data import mimic_benchmark
from mimic_utils.artifacts import profile_dir, repo_root, write_text
from mimic_utils.bench.convergence import (bench_lora_dropout, bench_lora_grouped, bench_lora_steps, lora_dropout_args,
                                           lora_grouped_args, lora_steps_args)
from mimic_utils.data.mimic_benchmark import BenchmarkPlan, build, plan_specs
from mimic_utils.data.scene_formats import write_coco_split
from mimic_utils.data.scenes import SceneParams, draw_contents, scene_rng, sprite
from mimic_utils.data.annotations import AnnotationIndex, ImageAnnotation, ObjectAnnotation
from mimic_utils.machine import machine_record

# torch and the modules built on it are imported inside the benchmarks that use them, so that
# `perf scenes` and `perf questions` run without loading torch.


def _bench_dir(out_dir: Path | None = None) -> Path:
    """Where result files go: ``out_dir``, by default ``outputs/bench/``."""
    return repo_root() / "outputs" / "bench" if out_dir is None else Path(out_dir)


def write_result(
    name: str, command: str, figures: dict, ratio: float | None = None, out_dir: Path | None = None
) -> Path:
    """Write ``<out_dir>/<name>.json`` (default ``outputs/bench/``) atomically: the command, the machine, the
    figures and the ratio."""
    result = {"name": name, "command": command, "machine": machine_record(1.0), "figures": figures, "ratio": ratio}
    path = _bench_dir(out_dir) / f"{name}.json"
    write_text(path, json.dumps(result, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------------


def bench_scenes(args: argparse.Namespace) -> dict:
    """Draw ``--n`` scenes at ``--size`` px and write them with their COCO JSON into a temporary directory."""
    params = SceneParams().scaled(args.size)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_coco_split(Path(tmp), args.n, seed=args.seed, params=params, progress=False)
    seconds = time.perf_counter() - start
    return {
        "n_images": args.n,
        "image_size": args.size,
        "seconds": round(seconds, 3),
        "images_per_second": round(args.n / seconds, 1),
        "target_seconds": args.target,
        "sprite_cache": sprite.cache_info().currsize,
        "ratio": round(seconds / args.target, 3),
    }


def _seed_and_target_seconds(parser: argparse.ArgumentParser, target: float) -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=target, help="target seconds (for the ratio)")


def _scenes_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=2000, help="images to draw")
    parser.add_argument("--size", type=int, default=224, help="image size in px (objects scale with it)")
    _seed_and_target_seconds(parser, 20.0)


def _drawn_index(n_images: int, seed: int) -> AnnotationIndex:
    """An annotation index of ``n_images`` drawn scene contents, not rendered (the question builders read
    only the annotations)."""
    params = SceneParams(same_category_prob=0.5)
    table = {c.name: c.supercategory for c in params.category_table()}
    images = {}
    for i in range(n_images):
        contents = draw_contents(scene_rng(seed, 0, i), params)
        objects = tuple(ObjectAnnotation(name, table[name], (0.0, 0.0, 20.0, 20.0))
                        for name, n in sorted(contents.items()) for _ in range(n))
        images[str(i)] = ImageAnnotation(str(i), Path(f"/bench/{i}.png"), 112, 112, objects)
    return AnnotationIndex(images, list(params.categories), table, "bench", "bench")


def bench_questions(args: argparse.Namespace) -> dict:
    """Generate a MIMIC benchmark of about ``--questions`` questions from an annotation index (no rendering)."""
    index = _drawn_index(args.images, args.seed)
    plan = BenchmarkPlan()
    per_value = max(1, round(args.questions / len(plan_specs(plan))))
    plan = BenchmarkPlan(per_value=per_value, seed=args.seed)
    start = time.perf_counter()
    records = build(index, plan, progress=False)
    seconds = time.perf_counter() - start
    return {
        "questions": len(records), "source_images": args.images, "seconds": round(seconds, 3),
        "questions_per_second": round(len(records) / seconds, 1), "target_seconds": args.target,
        "ratio": round(seconds / args.target, 3),
    }


def _questions_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", type=int, default=10000, help="about this many questions")
    parser.add_argument("--images", type=int, default=10000, help="images in the source index")
    _seed_and_target_seconds(parser, 30.0)


def _scanned_without(pools, rng: random.Random, target: str, n: int) -> list[str]:
    """The reference :func:`traindata._without` replaced: every certain image scanned per question."""
    return rng.sample([i for i in pools.certain if target not in pools.classes[i]], n)


def bench_ov_questions(args: argparse.Namespace) -> dict:
    """Draw ``--count`` of the ov stage's per-image questions (its recipe's family shares, 1-10 images) from a
    ``--images``-image index, as the stage does, and again with images lacking a category found by the
    per-question scan it used before (ratio: seconds / the scan's; the questions must be the same)."""
    from mimic_utils.data import traindata
    from mimic_utils.organism.ov import OvConfig

    recipe = OvConfig.from_yaml(repo_root() / args.recipe)  # the stage's own reading: shares, images, forms
    weights = recipe.ov_weights()
    index = _drawn_index(args.images, args.seed)

    def draw() -> tuple[list[dict], float]:
        start = time.perf_counter()
        records = traindata.ov_questions(index, args.count, args.seed, tuple(recipe.images), weights,
                                         forms=recipe.forms)
        return records, time.perf_counter() - start

    records, seconds = draw()
    kept = traindata._without
    traindata._without = _scanned_without
    try:
        scanned, scan_seconds = draw()
    finally:
        traindata._without = kept
    same = [(r["image_ids"], r["question"], r["gt"]) for r in records] == \
        [(r["image_ids"], r["question"], r["gt"]) for r in scanned]
    return {"questions": len(records), "source_images": args.images, "weights": weights,
            "seconds": round(seconds, 3), "seconds_scan": round(scan_seconds, 3),
            "speedup": round(scan_seconds / seconds, 2), "same_questions": same,
            "ratio": round(seconds / scan_seconds, 3)}


def _ov_questions_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=20000, help="per-image questions to draw")
    parser.add_argument("--images", type=int, default=30000, help="images in the source index (the ov pool's)")
    parser.add_argument("--recipe", default="params/cpu/organism_ov.yaml", help="the family shares' recipe")
    parser.add_argument("--seed", type=int, default=0)


def _timed(run: Callable[[], object], repeats: int) -> dict:
    """Wall-clock seconds of ``run()`` after one warm-up call: min (the figure ratios use, least disturbed
    by the other jobs on the shared cores) and median. Queued GPU work is waited for on both sides."""
    from mimic_utils.analysis.mask_flops import synchronize

    run()
    seconds = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        run()
        synchronize()
        seconds.append(time.perf_counter() - start)
    seconds.sort()
    return {"min": round(seconds[0], 5), "median": round(seconds[len(seconds) // 2], 5)}


def _flops_ratio(images: int, tokens: int, length: int) -> float:
    """Query-key pairs of the masked layer over the dense one (text rows see the whole sequence)."""
    text_rows = length - images * tokens
    return round((images * tokens**2 + text_rows * length) / length**2, 4)


def _time_attention_op(args: argparse.Namespace) -> dict:
    """One layer's attention: plain causal SDPA against the image-block masked layer (both modes)."""
    import torch

    from mimic_utils.analysis.mask_flops import attention_call, layer_inputs

    inputs = layer_inputs(args.images, args.tokens, args.text, args.heads, args.kv_heads, args.head_dim, args.seed)
    runs = {name: attention_call(*inputs, mode) for name, mode in
            (("dense_causal", None), ("masked_blockwise", "blockwise"), ("masked_dense", "dense"))}
    with torch.no_grad():
        timings = {name: _timed(run, args.repeats) for name, run in runs.items()}
        difference = (runs["masked_blockwise"]() - runs["masked_dense"]()).abs().max().item()
    length = inputs[3].shape[1]
    return {
        "sequence": length,
        "timings": timings,
        "flops_ratio": _flops_ratio(args.images, args.tokens, length),
        "blockwise_vs_dense_max_abs_difference": difference,
    }


def _time_tiny_forward(args: argparse.Namespace) -> dict:
    """A whole forward of the Qwen2-VL organism on one sample of ``--images`` images, every layer masked
    (blockwise and dense reference) against the unmasked model."""
    import torch

    from mimic_utils.models import masking, tiny, vlm

    model, processor = tiny.build_organism()
    adapter = vlm.adapter_from_model(model, processor, "qwen2_vl")
    generator = torch.Generator().manual_seed(args.seed)
    images = [_noise_image(112, generator) for _ in range(args.images)]
    batch = adapter.prepare([vlm.Sample(images, "How many dogs are there?", "counting")])
    every_layer = list(range(masking.num_text_layers(model)))
    with torch.no_grad(), masking.text_attention(model):
        timings = {name: _timed(_model_forward(adapter, batch, every_layer, mode), args.repeats) for name, mode in
                   (("plain", None), ("masked_blockwise", "blockwise"), ("masked_dense", "dense"))}
    return {"model": "organism (tiny Qwen2-VL)", "sequence": batch.input_length, "timings": timings}


def _model_forward(adapter, batch, layers: list[int], mode: str | None, **kwargs) -> Callable[[], object]:
    """A forward of the adapter's model on ``batch``: unmasked (``mode`` None) or masked in ``layers``
    with ``mode`` (the model must use the masking attention, see ``masking.text_attention``)."""
    from mimic_utils.models import masking

    def run():
        if mode is None:
            return adapter.model(**batch.inputs, **kwargs)
        with masking.mask_images(adapter, batch, layers, mode=mode):
            return adapter.model(**batch.inputs, **kwargs)

    return run


def _noise_image(side: int, generator):
    import torch

    pixels = (torch.rand(side, side, 3, generator=generator) * 255).to(torch.uint8)
    return Image.fromarray(pixels.numpy())


def bench_masking(args: argparse.Namespace) -> dict:
    """Image-block masking: one layer's attention at LLaVA-OV multi-image size, and a whole tiny forward."""
    import torch

    if args.quick:
        args.tokens, args.repeats = min(args.tokens, 150), min(args.repeats, 3)
    op = _time_attention_op(args)
    forward = _time_tiny_forward(args)
    time_ratio = op["timings"]["masked_blockwise"]["min"] / op["timings"]["dense_causal"]["min"]
    return {
        "quick": args.quick,
        "threads": torch.get_num_threads(),
        "layout": {"images": args.images, "tokens_per_image": args.tokens, "text_tokens": args.text,
                   "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim},
        "attention_op": op,
        "time_ratio_blockwise_vs_dense": round(time_ratio, 4),
        "target_time_ratio": args.target,
        "tiny_forward": forward,
        "ratio": round(time_ratio / args.target, 3),
    }


def _masking_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=8, help="images in the sample (LLaVA-OV multi-image: 8)")
    parser.add_argument("--tokens", type=int, default=730, help="tokens per image (LLaVA-OV 0.5B: 729 + newline)")
    parser.add_argument("--text", type=int, default=50, help="text tokens around the images")
    parser.add_argument("--heads", type=int, default=14, help="query heads (Qwen2-0.5B: 14)")
    parser.add_argument("--kv-heads", type=int, default=2, help="key/value heads (Qwen2-0.5B: 2)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=0.25, help="target time ratio masked / dense")
    parser.add_argument("--quick", action="store_true", help="images of at most 150 tokens, 3 repeats")


def _peak_torch_bytes(run: Callable[[], object]) -> int:
    """Peak bytes of torch CPU tensors allocated while ``run()`` executes, above what was live before.

    Read from ``torch.profiler`` with ``profile_memory=True``: every allocator event (+bytes on
    allocation, −bytes on free) in time order, summed; the peak of that running sum. This counts every
    tensor the call creates, including short-lived temporaries inside an op (which ``tracemalloc`` cannot
    see and RSS blurs with allocator caching), and nothing allocated before the call (weights, inputs).
    The events come from the profiler's kineto results (``prof.profiler.kineto_results``), whose
    ``[memory]`` entries carry ``nbytes``; the public ``events()`` list only keeps the frees as such.
    """
    from torch.profiler import ProfilerActivity, profile

    run()  # warm-up: one-off lazy allocations are not the call's cost
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _peak_cuda_bytes(run: Callable[[], object]) -> int:
    """Peak bytes of CUDA tensors allocated while ``run()`` executes, above what was live before (the
    CUDA twin of :func:`_peak_torch_bytes`, read from ``torch.cuda.max_memory_allocated``)."""
    import torch

    run()  # warm-up, as on the CPU
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _memory_peaks(adapter, batch, names: tuple[str, ...] = ("plain_forward", "streaming", "output_attentions"),
                  peak: Callable[[Callable[[], object]], int] = _peak_torch_bytes) -> dict:
    """Peak bytes (``peak``: CPU profiler by default) of a plain forward, the streaming statistics and
    ``output_attentions`` (eager) on the same batch, one after the other; ``names`` picks which."""
    from mimic_utils.analysis import attention
    from mimic_utils.models import masking

    model = adapter.model
    block_ids = adapter.image_block_ids(batch)

    def plain():
        with masking.text_attention(model, "sdpa"):
            return model(**batch.inputs, use_cache=False, logits_to_keep=1)

    def streaming():
        with masking.text_attention(model):
            return attention.collect_batch(adapter, batch)

    def output_attentions():
        with masking.text_attention(model, "eager"):
            maps = model(**batch.inputs, use_cache=False, logits_to_keep=1, output_attentions=True).attentions
            return attention.shares_from_attentions(maps, block_ids, batch.inputs["attention_mask"])

    runs = {"plain_forward": plain, "streaming": streaming, "output_attentions": output_attentions}
    return {name: peak(runs[name]) for name in names}


def bench_attention_memory(args: argparse.Namespace) -> dict:
    """Peak memory of the streaming attention statistics on a multi-image organism sample, against
    ``output_attentions=True`` (eager) and a plain forward, measured side by side in one run; then the
    same on a deeper variant of the organism, to show what grows with depth."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from mimic_utils.models import tiny, vlm

    if args.quick:
        args.images, args.batch = min(args.images, 6), 1
    model, processor = tiny.build_organism()
    generator = torch.Generator().manual_seed(args.seed)
    samples = [vlm.Sample([_noise_image(112, generator) for _ in range(args.images)], "How many dogs are there?",
                             "counting") for _ in range(args.batch)]
    config = model.config.get_text_config()
    deep_config = tiny.organism_config(processor.tokenizer)
    deep_config.text_config.num_hidden_layers = args.deep_layers
    deep_config.text_config.layer_types = ["full_attention"] * args.deep_layers
    depths = {config.num_hidden_layers: model, args.deep_layers: Qwen2VLForConditionalGeneration(deep_config).eval()}
    peaks = {}
    with torch.no_grad():
        for layers, variant in depths.items():
            adapter = vlm.adapter_from_model(variant, processor, "qwen2_vl")
            batch = adapter.prepare(samples)
            peaks[layers] = _memory_peaks(adapter, batch)
    organism = peaks[config.num_hidden_layers]
    length = batch.input_length
    one_map = args.batch * config.num_attention_heads * length * length * 4
    ratio_to_plain = organism["streaming"] / organism["plain_forward"]
    return {
        "quick": args.quick,
        "method": "torch.profiler profile_memory: peak of the running sum of allocator events during the call",
        "model": "organism (tiny Qwen2-VL)",
        "batch": args.batch,
        "images_per_sample": args.images,
        "sequence": length,
        "layers": config.num_hidden_layers,
        "peak_bytes": organism,
        "attention_map_bytes_one_layer": one_map,
        "streaming_vs_plain": round(ratio_to_plain, 3),
        "output_attentions_vs_plain": round(organism["output_attentions"] / organism["plain_forward"], 3),
        "peak_bytes_by_depth": {str(layers): figures for layers, figures in peaks.items()},
        "target_streaming_vs_plain": args.target,
        "ratio": round(ratio_to_plain / args.target, 3),
    }


def _attention_memory_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=6, help="images per sample (112 px, 16 tokens each)")
    parser.add_argument("--batch", type=int, default=4, help="samples in the batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deep-layers", type=int, default=16, help="text layers of the deeper organism variant")
    parser.add_argument("--target", type=float, default=1.5, help="target peak ratio streaming / plain forward")
    parser.add_argument("--quick", action="store_true", help="one sample of at most 6 images")


def bench_evaluation(args: argparse.Namespace) -> dict:
    """Batched evaluation vs a batch-size-1 loop on the same benchmark questions: samples/s and identity."""
    import torch

    from mimic_utils.evaluation import harness

    torch.set_num_threads(args.threads)
    root = repo_root()
    records = mimic_benchmark.load(profile_dir(args.profile, root) / "01_data_build" / "mimic", root=root)
    sweep = [r for r in records if r["experiment"] == "images" and args.images in (None, len(r["images"]))]
    if not sweep:
        raise ValueError(f"bench evaluation: the {args.profile} images sweep has no question with --images {args.images}")
    # a seeded draw over the whole sweep (every task, 1..10 images), not its first rows (one task, one image)
    records = random.Random(args.seed).sample(sweep, min(args.n, len(sweep)))
    adapter = harness.load_under_study({"name": "organism", "source": args.model}, root)
    timings, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, size in (("batch_1", 1), (f"batch_{args.batch}", args.batch)):
            start = time.perf_counter()
            rows = harness.run(adapter, records, Path(tmp) / f"{label}.jsonl", batch_size=size, progress=False)
            timings[label] = time.perf_counter() - start
            outputs[label] = [r["output"] for r in rows]
    single, batched = timings["batch_1"], timings[f"batch_{args.batch}"]
    return {
        "samples": len(records), "images_per_sample": round(sum(len(r["images"]) for r in records) / len(records), 2),
        "model": args.model, "threads": args.threads,
        "batch_1_seconds": round(single, 2), "batch_1_samples_per_second": round(len(records) / single, 1),
        f"batch_{args.batch}_seconds": round(batched, 2),
        f"batch_{args.batch}_samples_per_second": round(len(records) / batched, 1),
        "speedup": round(single / batched, 2), "target_speedup": 4.0,
        "identical_predictions": outputs["batch_1"] == outputs[f"batch_{args.batch}"],
        "ratio": round(4.0 / (single / batched), 3),  # below 1: the 4x target is met
    }


def _study_questions_args(parser: argparse.ArgumentParser, reads: str, n: int) -> None:
    """The profile whose notebook-01 outputs are read, the model, and ``--n`` questions of the images sweep."""
    parser.add_argument("--profile", default="cpu", help=f"whose notebook-01 {reads} to read")
    parser.add_argument("--model", default="outputs/cpu/models/si")
    parser.add_argument("--n", type=int, default=n, help="questions, drawn at random from the images sweep")
    parser.add_argument("--seed", type=int, default=0, help="seed of that draw")


def _evaluation_args(parser: argparse.ArgumentParser) -> None:
    _study_questions_args(parser, "benchmark", 256)
    parser.add_argument("--images", type=int, default=None, help="only questions with this many images")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)


# --- vision_cache: the frozen tower computed once ---------------------------------------------------


def _lm_variant(adapter, seed: int):
    """A copy of ``adapter`` whose language model is perturbed (seeded) and whose tower is untouched: what a
    finetuned model of the study is to the base — the same frozen tower, other answers."""
    import torch

    variant = copy.deepcopy(adapter)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in variant.model.named_parameters():
            if "language_model" in name and param.dim() == 2:
                param.add_(torch.randn(param.shape, generator=generator) * 0.02 * param.std())
    variant.settings = {**adapter.settings, "weights_fingerprint": f"{adapter.settings.get('weights_fingerprint')}+lm{seed}"}
    return variant


def _timed_runs(adapters: dict, records: list, tmp: Path, cache: bool, batch: int) -> tuple[dict, dict]:
    """Seconds and outputs of each model evaluating ``records``, with or without the vision cache."""
    from mimic_utils.evaluation import harness
    from mimic_utils.models import vision_cache

    vision_cache.configure(None)  # a cold, memory-only cache per condition
    seconds, outputs = {}, {}
    for name, adapter in adapters.items():
        adapter.use_vision_cache = cache
        start = time.perf_counter()
        rows = harness.run(adapter, records, tmp / f"{name}.{cache}.jsonl", batch_size=batch, progress=False,
                            reuse_dir=None)
        seconds[name] = time.perf_counter() - start
        outputs[name] = [r["output"] for r in rows]
    return seconds, outputs


def _training_steps(adapter, conversations: list, steps: int, cache: bool, tmp: Path, fresh: bool = True) -> dict:
    """``steps`` data-centric finetuning steps (language model trained, tower and projector frozen), with an
    empty cache (``fresh``) or with the one the previous run filled (a second variant on the same data, as
    notebook 05 trains nine)."""
    from mimic_utils.models import vision_cache
    from mimic_utils.training import finetune

    if fresh:
        vision_cache.configure(None)
    model = copy.deepcopy(adapter)
    model.use_vision_cache = cache
    config = finetune.FinetuneConfig(steps=steps, lr=1e-3, batch=16, checkpoint_every=10**6, max_images=10)
    start = time.perf_counter()
    result = finetune.finetune(model, conversations, config, tmp / f"train.{cache}.{fresh}", progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "losses": [round(row["loss"], 6) for row in result["log"] if "loss" in row]}


def bench_vision_cache(args: argparse.Namespace) -> dict:
    """K models sharing the frozen tower evaluate the same questions, and a short finetune runs, each with
    and without the vision-feature cache: samples/s, ratios, identical answers and losses."""
    import torch

    from mimic_utils.data import traindata
    from mimic_utils.evaluation import harness

    torch.set_num_threads(args.threads)
    root = repo_root()
    data = profile_dir(args.profile, root) / "01_data_build"
    records = mimic_benchmark.load(data / "mimic", root=root)
    sweep = [r for r in records if r["experiment"] == "images"]
    records = random.Random(args.seed).sample(sweep, min(args.n, len(sweep)))
    base = harness.load_under_study({"name": "organism", "source": args.model}, root)
    adapters = {"organism": base, **{f"variant_{k}": _lm_variant(base, k) for k in range(1, args.models)}}
    with tempfile.TemporaryDirectory() as tmp:
        plain, plain_out = _timed_runs(adapters, records, Path(tmp), False, args.batch)
        cached, cached_out = _timed_runs(adapters, records, Path(tmp), True, args.batch)
        conversations = traindata.load(data / "train", root=root)
        train = {cache: _training_steps(base, conversations, args.steps, cache, Path(tmp)) for cache in (False, True)}
        train["warm"] = _training_steps(base, conversations, args.steps, True, Path(tmp), fresh=False)
    n, later = len(records), [m for m in adapters if m != "organism"]
    later_plain, later_cached = sum(plain[m] for m in later), sum(cached[m] for m in later)
    total_ratio = sum(plain.values()) / sum(cached.values())
    return {
        "samples": n, "models": list(adapters), "threads": args.threads, "batch": args.batch,
        "images_per_sample": round(sum(len(r["images"]) for r in records) / n, 2),
        "seconds_without_cache": {m: round(s, 2) for m, s in plain.items()},
        "seconds_with_cache": {m: round(s, 2) for m, s in cached.items()},
        "first_model_samples_per_second": {"without": round(n / plain["organism"], 1),
                                           "with_cold_cache": round(n / cached["organism"], 1)},
        "later_models_samples_per_second": {"without": round(n * len(later) / later_plain, 1),
                                            "with_warm_cache": round(n * len(later) / later_cached, 1)},
        "later_models_speedup": round(later_plain / later_cached, 2),
        "all_models_speedup": round(total_ratio, 2),
        "identical_answers": plain_out == cached_out,
        "training_steps": args.steps,
        "training_seconds": {"without": round(train[False]["seconds"], 2),
                             "with_cold_cache": round(train[True]["seconds"], 2),
                             "with_warm_cache": round(train["warm"]["seconds"], 2)},
        "training_speedup_cold": round(train[False]["seconds"] / train[True]["seconds"], 2),
        "training_speedup_warm": round(train[False]["seconds"] / train["warm"]["seconds"], 2),
        "identical_losses": train[False]["losses"] == train[True]["losses"] == train["warm"]["losses"],
        "max_loss_difference": max((abs(a - b) for a, b in zip(train[False]["losses"], train[True]["losses"])), default=0.0),
        "target_later_models_speedup": 1.6,
        "ratio": round(1.6 / (later_plain / later_cached), 3),  # below 1: the 1.6x target is met
    }


def _vision_cache_args(parser: argparse.ArgumentParser) -> None:
    _study_questions_args(parser, "benchmark and training data", 192)
    parser.add_argument("--models", type=int, default=3, help="models sharing the tower (the organism + variants)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="finetuning steps timed with and without the cache")
    parser.add_argument("--threads", type=int, default=2)


# --- gpu: the paper path at real model size, in one command ----------------------------------------

GPU_MODELS = ("llava_onevision_0.5b", "qwen2_vl_2b")
"""The real-size models (:mod:`mimic_utils.models.realsize`) generation is timed on."""

TRAIN_MODEL = "llava_onevision_0.5b"
"""The paper's headline model: training, masked attention and streaming statistics run at its size."""

QUESTIONS = ("How many dogs are there?", "How many cars are there in total across all images?",
             "Which animals appear in these images?")
"""Prompts of different lengths, so batches carry left padding as real ones do."""

CPU_4BIT_REASON = ("bitsandbytes 4-bit needs CUDA (on the CPU it fails for Linear layers narrower than its "
                   "block size and breaks training after an eval pass): the masked LoRA step ran unquantised")


def _check_device(args: argparse.Namespace) -> str:
    """The device the check runs on: the CPU for the tiny dry run, else ``--device`` (``cuda``: the current
    CUDA device, refused without one; ``cpu``: the real sizes on the CPU, the ``realsize`` check)."""
    import torch

    if args.tiny or args.device == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise SystemExit(f"bench {args.name} --device {args.device} needs a CUDA device; `python -m mimic_utils.bench "
                         f"{args.name} --tiny` is the tiny CPU dry run and `python -m mimic_utils.bench realsize` "
                         "the real sizes on the CPU")
    return f"cuda:{torch.cuda.current_device()}"


def _device_info(device: str) -> dict:
    """The accelerator and the library versions the GPU figures depend on."""
    import torch

    info = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()}
    for package in ("transformers", "peft", "bitsandbytes"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1))
    return info


def _release() -> None:
    """Free what a finished part left behind (its model) before the next part builds its own."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _run_part(name: str, run: Callable[[], dict], check: str = "gpu") -> dict:
    """``run()``'s figures plus its seconds. An exception becomes the part's ``error`` (with a short
    traceback), so one failing part does not cost the others' figures."""
    print(f"[bench {check}] {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        figures = run()
    except Exception as error:  # noqa: BLE001 - recorded in the result file, the other parts go on
        figures = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=6)}
    figures["seconds"] = round(time.perf_counter() - start, 2)
    _release()
    status = f"ERROR {figures['error']}" if "error" in figures else "ok"
    print(f"[bench {check}] {name}: {figures['seconds']} s, {status}", file=sys.stderr, flush=True)
    return figures


def _samples(spec, count: int, images: int, seed: int) -> list:
    """``count`` counting samples of ``images`` distinct noise images each, at the model's image size."""
    from mimic_utils.models import realsize, vlm

    return [vlm.Sample(realsize.noise_images(spec, images, seed + index), QUESTIONS[index % len(QUESTIONS)],
                          "counting") for index in range(count)]


def _prepare_options(adapter) -> dict:
    """``prepare()`` options under which every forward computes the whole vision path (no cached tower
    output), so both batch sizes are timed on the same work."""
    return {"vision_cache": False} if "vision_cache" in inspect.signature(adapter.prepare).parameters else {}


def _generate_all(adapter, samples: list, size: int, max_new_tokens: int) -> tuple[list[str], float, int]:
    """Greedy answers of ``samples`` in batches of ``size`` (preprocessing included, as in evaluation),
    the seconds it took and the longest (padded) prompt."""
    from mimic_utils.analysis.mask_flops import synchronize

    options = _prepare_options(adapter)
    answers, longest = [], 0
    synchronize()
    start = time.perf_counter()
    for first in range(0, len(samples), size):
        batch = adapter.prepare(samples[first : first + size], **options)
        longest = max(longest, batch.input_length)
        answers += adapter.generate(batch, max_new_tokens)
    synchronize()
    return answers, time.perf_counter() - start, longest


def _gpu_generation(key: str, args: argparse.Namespace, device: str, dtype) -> dict:
    """Batched against batch-1 greedy generation of multi-image samples on one real-size model."""
    from mimic_utils.models import realsize, vlm

    spec = realsize.spec(key, args.tiny)
    model, processor = realsize.build(key, args.tiny, device, dtype, args.seed)
    adapter = vlm.adapter_from_model(model, processor, spec.family)
    samples = _samples(spec, args.samples, args.images, args.seed)
    _generate_all(adapter, samples[:1], 1, args.max_new_tokens)  # warm-up: kernels, allocator, caches
    single, single_seconds, length = _generate_all(adapter, samples, 1, args.max_new_tokens)
    batched, batched_seconds, padded = _generate_all(adapter, samples, args.batch, args.max_new_tokens)
    n = len(samples)
    return {
        "model": f"{spec.source} architecture, random weights", "parameters": realsize.parameter_count(model),
        "samples": n, "images_per_sample": args.images, "tokens_per_image": spec.tokens_per_image,
        "prompt_tokens_max": length, "padded_prompt_tokens_max": padded, "max_new_tokens": args.max_new_tokens,
        "batch": args.batch,
        "batch_1_seconds": round(single_seconds, 3), "batch_1_samples_per_second": round(n / single_seconds, 3),
        "batched_seconds": round(batched_seconds, 3), "batched_samples_per_second": round(n / batched_seconds, 3),
        "speedup": round(single_seconds / batched_seconds, 3),
        "identical_share": round(sum(a == b for a, b in zip(single, batched, strict=True)) / n, 3),
        "identical_share_note": "random weights leave near-tied logits, so greedy answers flip under batch-shape "
                                "rounding more often than a trained model's would",
        "example_answer": batched[0],
    }


def _gpu_attention(args: argparse.Namespace, device: str, dtype) -> dict:
    """One decoder layer's attention at the training model's multi-image size: dense causal SDPA against
    the masked layer per image block, in flex and dense; differences from the dense masked reference
    computed in float32."""
    import torch

    from mimic_utils.models import masking, realsize
    from mimic_utils.analysis.mask_flops import attention_call, layer_inputs

    spec = realsize.spec(TRAIN_MODEL, args.tiny)
    heads, kv_heads = spec.text["num_attention_heads"], spec.text["num_key_value_heads"]
    head_dim, tokens = spec.text["hidden_size"] // heads, spec.tokens_per_image
    inputs = layer_inputs(args.images, tokens, args.text, heads, kv_heads, head_dim, args.seed, device, dtype)
    modes = (("dense_causal", None), ("masked_blockwise", "blockwise"), ("masked_flex", "flex"),
             ("masked_dense", "dense"))
    runs = {name: attention_call(*inputs, mode) for name, mode in modes}
    reference = attention_call(*(t.float() if t.is_floating_point() else t for t in inputs), "dense")
    with torch.no_grad():
        timings = {name: _timed(run, args.repeats) for name, run in runs.items()}
        block_mask = _timed(lambda: masking.flex_block_mask(inputs[3], None, device), args.repeats)
        expected = reference()
        differences = {name: (run().float() - expected).abs().max().item() for name, run in runs.items()
                       if name != "dense_causal"}
    dense, length = timings["dense_causal"]["min"], inputs[3].shape[1]
    return {
        "layout": {"images": args.images, "tokens_per_image": tokens, "text_tokens": args.text, "heads": heads,
                   "kv_heads": kv_heads, "head_dim": head_dim},
        "sequence": length, "dtype": str(dtype).removeprefix("torch."), "timings": timings,
        "time_ratio_vs_dense_causal": {name: round(t["min"] / dense, 4) for name, t in timings.items()
                                       if name != "dense_causal"},
        "flops_ratio": _flops_ratio(args.images, tokens, length),
        "max_abs_difference_vs_dense_masked_fp32": differences,
        "flex_block_mask_seconds": block_mask,
    }


def _one_sample(args: argparse.Namespace, device: str, dtype) -> tuple:
    """``(adapter, batch)``: the training model at its size and one prepared ``--images``-image sample."""
    from mimic_utils.models import realsize, vlm

    spec = realsize.spec(TRAIN_MODEL, args.tiny)
    model, processor = realsize.build(TRAIN_MODEL, args.tiny, device, dtype, args.seed)
    adapter = vlm.adapter_from_model(model, processor, spec.family)
    return adapter, adapter.prepare(_samples(spec, 1, args.images, args.seed), **_prepare_options(adapter))


def _gpu_masked_forward(args: argparse.Namespace, device: str, dtype) -> dict:
    """A whole prefill of the 0.5B-size model on one sample, masked in the second half by blockwise and
    flex, against the dense masked reference (last-position logits) and the unmasked forward."""
    import torch

    from mimic_utils.models import masking

    adapter, batch = _one_sample(args, device, dtype)
    model = adapter.model
    layers = masking.resolve_layers("second_half", masking.num_text_layers(model))
    runs = {name: _model_forward(adapter, batch, layers, mode, use_cache=False, logits_to_keep=1) for name, mode in
            (("plain", None), ("masked_blockwise", "blockwise"), ("masked_flex", "flex"), ("masked_dense", "dense"))}
    with torch.no_grad(), masking.text_attention(model):
        timings = {name: _timed(run, args.repeats) for name, run in runs.items()}
        logits = {name: run().logits.float() for name, run in runs.items()}
    reference = logits["masked_dense"]
    return {
        "sequence": batch.input_length, "masked_layers": layers, "timings": timings,
        "time_ratio_vs_plain": {name: round(t["min"] / timings["plain"]["min"], 4) for name, t in timings.items()
                                if name != "plain"},
        "max_abs_logit": reference.abs().max().item(),
        "max_abs_difference_vs_dense_masked": {name: (logits[name] - reference).abs().max().item()
                                               for name in ("plain", "masked_blockwise", "masked_flex")},
    }


def _conversation(folder: Path, spec, images: int, seed: int) -> dict:
    """One counting conversation over fresh noise images written as PNG files (``sft_loss`` reads its
    images from disk, as training does)."""
    from mimic_utils.models import realsize

    paths = []
    for index, image in enumerate(realsize.noise_images(spec, images, seed)):
        path = folder / f"train_{seed}_{index}.png"
        image.save(path)
        paths.append(str(path))
    return {"images": paths, "question": QUESTIONS[0], "gt": "3", "family": "counting"}


def _train_steps(adapter, args: argparse.Namespace, device: str, folder: Path, key: str = TRAIN_MODEL) -> dict:
    """``--train-steps`` optimizer steps of the finetuning recipe (fp32 master weights, autocast, AdamW,
    clipping), each on a new conversation so no cache serves the frozen tower: seconds per step (image
    loading and preprocessing included), peak memory and losses. Checked on the way: every loss is
    finite, gradients reach only the trained parameters (LoRA and the projector), and in a masked layer
    the 4-D mask's blocks are the image spans found in the input ids (:func:`_observe_masks`)."""
    import math

    import torch

    from mimic_utils.models import realsize
    from mimic_utils.training import finetune
    from mimic_utils.analysis.mask_flops import synchronize

    spec = realsize.spec(key, args.tiny)
    mask_checks: list[dict] = []
    if adapter.mask_layers:
        _observe_masks(adapter, spec, mask_checks)
    half = finetune.master_weights(adapter.model)
    params = [p for p in adapter.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2.5e-5)
    device_type = torch.device(device).type
    cuda = device_type == "cuda"
    resident = torch.cuda.memory_allocated() if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    adapter.model.train()
    seconds, losses = [], []
    for step in range(args.train_steps):
        record = _conversation(folder, spec, args.images, args.seed + 1000 * (step + 1))
        synchronize()
        start = time.perf_counter()
        with torch.autocast(device_type, dtype=half or torch.bfloat16, enabled=half is not None):
            loss = finetune.sft_loss(adapter, [record])
        loss.backward()
        if step == 0:
            gradients = _gradient_check(adapter.model)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        seconds.append(time.perf_counter() - start)
        losses.append(round(loss.item(), 4))
    later = sorted(seconds[1:] or seconds)
    return {
        "images_per_sample": args.images, "tokens_per_image": spec.tokens_per_image, "steps": args.train_steps,
        "step_seconds": [round(s, 3) for s in seconds],
        "median_step_seconds_after_first": round(later[len(later) // 2], 3),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "resident_before_training_bytes": resident,
        "losses": losses, "trained_parameters": sum(p.numel() for p in params),
        "losses_finite": all(math.isfinite(loss) for loss in losses), "gradients": gradients,
        "mask_blocks": mask_checks[0] if mask_checks else None,
    }


def _gradient_check(model) -> dict:
    """Which parameters got a gradient: all of them trained ones (LoRA or the projector, kept trainable by
    ``modules_to_save``), every gradient finite, and none in a frozen parameter."""
    import torch

    with_grad = [name for name, p in model.named_parameters() if p.grad is not None]
    frozen_with_grad = [name for name, p in model.named_parameters() if p.grad is not None and not p.requires_grad]
    outside = [name for name in with_grad if "lora_" not in name and "modules_to_save" not in name]
    finite = all(torch.isfinite(p.grad).all().item() for p in model.parameters() if p.grad is not None)
    return {"parameters_with_gradient": len(with_grad), "outside_adapter": outside[:5], "frozen_with_gradient":
            frozen_with_grad[:5], "all_finite": finite, "only_adapter": bool(with_grad) and not outside and not frozen_with_grad}


def _observe_masks(adapter, spec, found: list[dict]) -> None:
    """Make ``adapter.masked`` report, for the first masked layer of each forward, whether the layer's 4-D mask
    equals the one built from the image spans read off the input ids (runs of the image token, cut into
    ``spec.tokens_per_image`` tokens per image): text sees every earlier token, an image token only the
    earlier tokens of its own image (a sample of one image is left unmasked)."""
    from mimic_utils.models import masking

    def observer(call) -> None:
        if not call.masked or len(found) > len(seen):
            return
        seen.append(call.layer_idx)
        ids = current["ids"]
        expected = _span_mask(ids, adapter.image_token_id, spec.tokens_per_image, current["attention"])
        got = call.mask().expand_as(expected)
        found.append({"layer": call.layer_idx, "sequence": int(ids.shape[1]),
                      "images": int((ids == adapter.image_token_id).sum()) // spec.tokens_per_image,
                      "equal_to_spans": bool(torch_equal(got, expected))})

    seen: list[int] = []
    current: dict = {}

    def masked(batch):
        current.update(ids=batch.inputs["input_ids"], attention=batch.inputs["attention_mask"])
        return masking.image_blocks(adapter.image_block_ids(batch), adapter.mask_layers, adapter.mask_mode,
                                    observers=[observer], model=adapter.model)

    adapter.masked = masked


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a.bool(), b.bool())


def _span_mask(ids, image_token: int, per_image: int, attention):
    """``[B, 1, S, S]`` bool: the masked layer's mask built from the input ids alone (see :func:`_observe_masks`)."""
    import torch

    batch, length = ids.shape
    image_of = torch.full_like(ids, -1)
    for row in range(batch):
        positions = (ids[row] == image_token).nonzero().flatten()
        image_of[row, positions] = torch.arange(len(positions), device=ids.device) // per_image
    causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()[None, None]
    query, key = image_of[:, None, :, None], image_of[:, None, None, :]
    several = (image_of.amax(dim=1) >= 1)[:, None, None, None]
    allowed = (query < 0) | (query == key) | ~several
    return causal & allowed & attention.bool()[:, None, None, :]


def _gpu_masked_qlora(args: argparse.Namespace, device: str, dtype) -> dict:
    """Masked QLoRA: the 0.5B-size model saved and reloaded as 4-bit nf4 with double quantisation (the
    study's ``quantization_config``), image-block mask on the second half, LoRA on every language-model
    Linear (r 128, alpha 32). Unquantised on the CPU dry run, with the reason recorded."""
    from mimic_utils.models import realsize, tiny, vlm
    from mimic_utils.training import finetune

    quantization = "4bit" if device.startswith("cuda") else None
    with tempfile.TemporaryDirectory() as tmp:
        model, processor = realsize.build(TRAIN_MODEL, args.tiny, device, dtype, args.seed)
        folder = tiny.save_tiny(model, processor, Path(tmp) / "base")
        del model
        _release()
        adapter = vlm.load_adapter(folder, "llava_onevision", dtype=dtype, device=device, quantization=quantization)
        layers = adapter.set_mask("second_half", mode=args.train_mask_mode)
        finetune.apply_lora(adapter, kbit=quantization is not None)
        figures = _train_steps(adapter, args, device, Path(tmp))
    figures.update(quantization="nf4, double quantisation" if quantization else None, mask_layers=list(layers),
                   mask_mode=args.train_mask_mode)
    if quantization is None:
        figures["skipped_4bit"] = CPU_4BIT_REASON
    return figures


def _gpu_lora(args: argparse.Namespace, device: str, dtype) -> dict:
    """Unmasked LoRA on the bf16 0.5B-size model, the same recipe and steps as the masked QLoRA part."""
    from mimic_utils.models import realsize, vlm
    from mimic_utils.training import finetune

    model, processor = realsize.build(TRAIN_MODEL, args.tiny, device, dtype, args.seed)
    adapter = vlm.adapter_from_model(model, processor, "llava_onevision")
    finetune.apply_lora(adapter)
    with tempfile.TemporaryDirectory() as tmp:
        figures = _train_steps(adapter, args, device, Path(tmp))
    return {**figures, "quantization": None, "mask_layers": []}


def _gpu_streaming(args: argparse.Namespace, device: str, dtype) -> dict:
    """Peak memory of the streaming attention statistics against a plain forward on one sample."""
    import torch

    adapter, batch = _one_sample(args, device, dtype)
    cuda = device.startswith("cuda")
    with torch.no_grad():
        peak = _peak_cuda_bytes if cuda else _peak_torch_bytes
        peaks = _memory_peaks(adapter, batch, ("plain_forward", "streaming"), peak)
    return {
        "method": "torch.cuda.max_memory_allocated above the bytes live before the call" if cuda
        else "torch.profiler profile_memory (CPU dry run)",
        "images_per_sample": args.images, "sequence": batch.input_length, "peak_bytes": peaks,
        "streaming_vs_plain": round(peaks["streaming"] / peaks["plain_forward"], 3),
    }


def _token_check(key: str, args: argparse.Namespace, device: str, dtype) -> dict:
    """Vision tokens per image in our prompts against what the model's own processor and config say: one
    image (LLaVA-OV: anyres tiles; Qwen2-VL: its resize) and ``--stream-images`` images (LLaVA-OV: the base
    grid + one newline per image), for scene-sized images the processor must upscale."""
    from mimic_utils.models import realsize, vlm

    spec = realsize.spec(key, args.tiny)
    model, processor = realsize.build(key, args.tiny, "meta", dtype, args.seed)  # counts need no weights
    adapter = vlm.adapter_from_model(model, processor, spec.family)
    side = args.scene_side
    images = [realsize.noise_images(replace_side(spec, side), 1, args.seed + i)[0] for i in range(args.stream_images)]
    lines = {}
    for count in (1, args.stream_images):
        batch = adapter.prepare([vlm.Sample(images[:count], QUESTIONS[0], "counting")], vision_cache=False)
        ours = batch.image_tokens[0]
        own = processor._get_num_multimodal_tokens(image_sizes=[[side, side]] * count)["num_image_tokens"]
        if spec.family == "llava_onevision" and count > 1:
            vision = model.config.vision_config
            own = [(vision.image_size // vision.patch_size) ** 2 + 1] * count  # pad mode: base grid + newline
        lines[f"{count}_images"] = {"ours": ours, "expected": list(own), "equal": list(ours) == list(own)}
    return {"image_side": side, "tokens": lines, "all_equal": all(line["equal"] for line in lines.values())}


def replace_side(spec, side: int):
    """``spec`` with images of ``side`` px (the scene images the benchmark holds, before the processor)."""
    from dataclasses import replace as replace_field

    return replace_field(spec, image_side=side)


def _eval_records(args: argparse.Namespace, folder: Path, counts: list[int]) -> tuple[list[dict], str]:
    """One question per image count: from the ``--benchmark-profile`` benchmark's images sweep when notebook
    01 built it, else counting questions over scene-sized noise images written to ``folder``."""
    from mimic_utils.models import realsize

    source = profile_dir(args.benchmark_profile) / "01_data_build" / "mimic" if args.benchmark_profile else None
    try:
        records = sorted(mimic_benchmark.load(source), key=lambda r: r["id"]) if source is not None else []
    except (FileNotFoundError, ValueError):  # notebook 01 has not built it in this checkout (its files are not committed)
        records = []
    chosen = [next((r for r in records if r["experiment"] == "images" and r["knobs"]["n_images"] == n), None)
              for n in counts]
    if records and all(chosen):
        return chosen, f"{args.benchmark_profile} benchmark, images sweep"
    spec = replace_side(realsize.spec(TRAIN_MODEL, args.tiny), args.scene_side)
    records = []
    for n in counts:
        paths = []
        for index, image in enumerate(realsize.noise_images(spec, n, args.seed + 100 * n)):
            paths.append(str(folder / f"eval_{n}_{index}.png"))
            image.save(paths[-1])
        records.append({"id": f"realsize-n{n:02d}", "family": "counting", "task": "counting_unbalanced",
                        "experiment": "images", "knobs": {"n_images": n}, "images": paths,
                        "question": QUESTIONS[0], "gt": "2"})
    return records, "scene-sized noise images (no built benchmark)"


class _Interrupted(Exception):
    """Raised by the stand-in ``answer`` to stop an evaluation after its first batch."""


def _evaluation(key: str, counts: list[int], args: argparse.Namespace, device: str, dtype) -> dict:
    """``evaluation.harness.run`` on one MIMIC question per image count, then (with two or more questions) an
    evaluation interrupted after its first answer and resumed: the resumed run answers only the rest, and
    every answer equals the uninterrupted run's."""
    from mimic_utils.evaluation import harness
    from mimic_utils.models import realsize, vlm

    spec = realsize.spec(key, args.tiny)
    model, processor = realsize.build(key, args.tiny, device, dtype, args.seed)
    adapter = vlm.adapter_from_model(model, processor, spec.family)
    real_answer = adapter.answer
    with tempfile.TemporaryDirectory() as tmp:
        records, origin = _eval_records(args, Path(tmp), counts)
        seconds, outputs, tokens = {}, {}, {}
        for record in records:
            n = len(record["images"])
            tokens[n] = sum(adapter.prepare([harness.mimic_sample(record)], vision_cache=False).image_tokens[0])
            start = time.perf_counter()
            (row,) = harness.run(adapter, [record], Path(tmp) / f"full_{n}.jsonl", batch_size=1, progress=False)
            seconds[n], outputs[row["id"]] = round(time.perf_counter() - start, 2), row["output"]
        resume = {"skipped": "one question: nothing to resume"}
        if len(records) >= 2:
            path, calls = Path(tmp) / "resumed.jsonl", []

            def interrupted(samples, **options):
                if calls:
                    raise _Interrupted  # the run is stopped during its second answer
                calls.append(len(samples))
                return real_answer(samples, **options)

            adapter.answer = interrupted
            try:
                harness.run(adapter, records[:2], path, batch_size=1, progress=False)
            except _Interrupted:
                pass
            calls.clear()
            adapter.answer = lambda samples, **options: calls.append(len(samples)) or real_answer(samples, **options)
            again = harness.run(adapter, records[:2], path, batch_size=1, progress=False)
            adapter.answer = real_answer
            resume = {"questions": 2, "answered_after_resume": sum(calls),
                      "equal_to_uninterrupted": all(row["output"] == outputs[row["id"]] for row in again)}
    return {"questions": origin, "model": f"{spec.source} architecture, random weights",
            "image_counts": [len(r["images"]) for r in records], "vision_tokens": tokens,
            "seconds_per_question": seconds, "answers": outputs, "resume": resume}


def _streaming_and_maps(args: argparse.Namespace, device: str, dtype) -> dict:
    """:func:`_gpu_streaming` on one ``--stream-images`` sample, and the bytes the full attention maps of that
    sample would take (every layer and head, S × S, in the model's dtype): what the streaming statistics avoid."""
    import torch

    from mimic_utils.models import realsize

    figures = _gpu_streaming(replace_namespace(args, images=args.stream_images), device, dtype)
    text = realsize.spec(TRAIN_MODEL, args.tiny).text
    length = figures["sequence"]
    maps = text["num_hidden_layers"] * text["num_attention_heads"] * length * length * torch.finfo(dtype).bits // 8
    return {**figures, "full_attention_maps_bytes": maps,
            "full_attention_maps_vs_plain_forward": round(maps / figures["peak_bytes"]["plain_forward"], 1)}


def replace_namespace(args: argparse.Namespace, **changes) -> argparse.Namespace:
    """A copy of ``args`` with ``changes`` (a part that runs at another image count than the rest)."""
    return argparse.Namespace(**{**vars(args), **changes})


#: The dtype of Qwen2-VL-2B's LoRA step on the CPU: bf16 weights with fp32 masters for what is trained and a
#: bf16 autocast forward, the GPU recipe. In float32 its 8.8 GB of weights, the fp32 adapter's optimizer
#: state and the activations of a 2 x 729-token conversation passed 24 GB (the part was killed by the OOM
#: killer at 23.1 GiB resident, docs/gpu_check.md); this CPU has AMX/AVX-512 bf16 kernels.
CPU_DTYPE_2B_TRAINING = "bfloat16"


def _gpu_masked_lora_qwen(args: argparse.Namespace, device: str, dtype) -> dict:
    """One masked LoRA step on Qwen2-VL-2B (second half masked) with a 2-image conversation, with the checks
    of :func:`_train_steps` (on the CPU in :data:`CPU_DTYPE_2B_TRAINING`)."""
    import torch

    from mimic_utils.models import realsize, vlm
    from mimic_utils.training import finetune

    if torch.device(device).type == "cpu":
        dtype = getattr(torch, CPU_DTYPE_2B_TRAINING)
    key = "qwen2_vl_2b"
    model, processor = realsize.build(key, args.tiny, device, dtype, args.seed)
    adapter = vlm.adapter_from_model(model, processor, "qwen2_vl")
    layers = adapter.set_mask("second_half", mode=args.train_mask_mode)
    finetune.apply_lora(adapter)
    with tempfile.TemporaryDirectory() as tmp:
        figures = _train_steps(adapter, replace_namespace(args, images=2, train_steps=1), device, Path(tmp), key)
    return {**figures, "quantization": None, "mask_layers": list(layers), "mask_mode": args.train_mask_mode,
            "dtype": str(dtype).removeprefix("torch.")}


def _check_parts(args: argparse.Namespace) -> dict[str, Callable]:
    """Every part of the check by name, ``part(args, device, dtype) -> figures``: the GPU check runs them all,
    the real-size CPU check (``realsize``) all but the timing comparisons (``--parts`` picks any)."""
    train = partial(replace_namespace, images=args.train_images)
    parts: dict[str, Callable] = {f"tokens_{key}": partial(_token_check, key) for key in GPU_MODELS}
    parts.update({f"generation_{key}": partial(_gpu_generation, key) for key in GPU_MODELS})
    parts[f"evaluation_{TRAIN_MODEL}"] = partial(_evaluation, TRAIN_MODEL, args.eval_images)
    parts["evaluation_qwen2_vl_2b"] = partial(_evaluation, "qwen2_vl_2b", [2])
    parts.update({
        "attention": _gpu_attention, "masked_forward": _gpu_masked_forward,
        "masked_qlora": lambda a, device, dtype: _gpu_masked_qlora(train(a), device, dtype),
        "lora": lambda a, device, dtype: _gpu_lora(train(a), device, dtype),
        "masked_lora_qwen2_vl_2b": _gpu_masked_lora_qwen, "streaming_memory": _streaming_and_maps,
    })
    return parts


#: The parts only a GPU needs: batch-size and kernel timings, meaningless on two CPU cores.
TIMING_PARTS = ("generation_llava_onevision_0.5b", "generation_qwen2_vl_2b", "attention", "masked_forward")


def _run_parts(args: argparse.Namespace, device: str, dtype) -> dict:
    """The chosen parts one after the other, each guarded (:func:`_run_part`) and written to
    ``<name>_partial.json`` as it finishes, so a killed run keeps the parts done so far."""
    available = _check_parts(args)
    chosen = args.parts or [name for name in available if args.name == "gpu" or name not in TIMING_PARTS]
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise SystemExit(f"bench {args.name}: unknown part(s) {unknown}; known: {', '.join(available)}")
    parts = {}
    for name in chosen:
        if getattr(args, "isolate", False):
            parts[name] = _isolated_part(name, args)
        else:
            parts[name] = _run_part(name, lambda part=available[name]: part(args, device, dtype), args.name)
        write_result(f"{args.name}_partial", f"python -m mimic_utils.bench {args.name} (unfinished)",
                     {"parts": parts}, out_dir=args.out_dir)
    return parts


def _child_argv(args: argparse.Namespace, part: str, out_dir: Path) -> list[str]:
    """The command line of one part in its own process: this run's arguments with ``--parts`` set to the
    part, ``--out-dir`` to ``out_dir``, and ``--in-process`` (the child runs the part itself)."""
    rest, skip = [], False
    for token in getattr(args, "argv", None) or [args.name]:
        if skip:
            skip = False
        elif token in ("--out-dir", "--parts"):
            skip = True
        elif not token.startswith(("--out-dir=", "--parts=")) and token != "--in-process":
            rest.append(token)
    return [sys.executable, "-m", "mimic_utils.bench", "--out-dir", str(out_dir), *rest, "--parts", part,
            "--in-process"]


def _isolated_part(name: str, args: argparse.Namespace) -> dict:
    """One part in a child process (``--isolate``, the real-size default): the memory a part held goes back
    to the system before the next one builds its model (in one process, freed tensors stay in the
    allocator's arenas: the first real-size run was killed at 24 GB in its sixth part), a part the kernel
    kills is recorded as that part's error, and every part gets its peak resident memory (``wait4``)."""
    import subprocess

    print(f"[bench {args.name}] {name} (own process) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        child = subprocess.Popen(_child_argv(args, name, Path(tmp)), stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        result = Path(tmp) / f"{args.name}.json"
        parts = json.loads(result.read_text(encoding="utf-8"))["figures"]["parts"] if result.is_file() else {}
    figures = parts.get(name) or {"error": f"its process ended with exit code {code}" + (
        " (SIGKILL: on Linux usually the kernel's OOM killer, memory ran out)" if code == -9 else "")}
    figures.update(process_seconds=round(time.perf_counter() - start, 2), exit_code=code,
                   peak_rss_bytes=usage.ru_maxrss * 1024)  # Linux: ru_maxrss in KiB
    status = f"ERROR {figures['error']}" if "error" in figures else "ok"
    print(f"[bench {args.name}] {name}: {figures['process_seconds']} s, peak RSS "
          f"{figures['peak_rss_bytes'] / 2**30:.1f} GiB, {status}", file=sys.stderr, flush=True)
    return figures


def bench_gpu(args: argparse.Namespace) -> dict:
    """The paper path at real model size, on one GPU (``gpu``) or the CPU (``realsize``): one script, a
    ``--device`` switch. Prompt tokens against the processor, evaluation with resume, generation, masked
    attention, (Q)LoRA steps with their checks, streaming statistics."""
    import torch

    device = _check_device(args)
    if args.isolate is None:
        args.isolate = device == "cpu" and not args.tiny
    if args.tiny:  # the same script end to end, small enough for a unit test on two shared cores
        args.samples, args.batch, args.repeats = min(args.samples, 2), min(args.batch, 2), min(args.repeats, 1)
        args.max_new_tokens, args.train_steps = min(args.max_new_tokens, 4), min(args.train_steps, 2)
    # float32 on a CPU (without bf16 units bf16 runs many times slower), bf16 on a GPU
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    threads = torch.get_num_threads()
    if args.tiny:
        torch.set_num_threads(1)  # tiny ops gain nothing from threads; on shared cores a second one costs 10x
    start = time.perf_counter()
    try:
        parts = _run_parts(args, device, dtype)
    finally:
        torch.set_num_threads(threads)
    (_bench_dir(args.out_dir) / f"{args.name}_partial.json").unlink(missing_ok=True)  # the full result follows
    seconds = time.perf_counter() - start
    target = 60.0 if args.tiny else (480.0 if device.startswith("cuda") else 900.0)
    return {
        "tiny": args.tiny, "device": _device_info(device), "dtype": str(dtype).removeprefix("torch."), "parts": parts,
        "failed_parts": [name for name, figures in parts.items() if "error" in figures],
        "seconds": round(seconds, 1), "target_seconds": target, "ratio": round(seconds / target, 3),
    }


def _counts(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


def _gpu_args(parser: argparse.ArgumentParser, device: str = "cuda") -> None:
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: the same script at tiny model size")
    parser.add_argument("--device", default=device, choices=("cuda", "cpu"), help=f"default {device}")
    parser.add_argument("--parts", type=lambda text: [p for p in text.split(",") if p], default=None,
                        help="comma-separated parts to run (default: all of this check)")
    parser.add_argument("--images", type=int, default=8, help="images per sample of the generation timing")
    parser.add_argument("--train-images", type=int, default=8, help="images of the training conversations")
    parser.add_argument("--stream-images", type=int, default=8, help="images of the streaming-statistics sample")
    parser.add_argument("--eval-images", type=_counts, default=[1, 4, 10], help="image counts evaluated, e.g. 1,4,10")
    parser.add_argument("--scene-side", type=int, default=112, help="side in px of the scene images evaluated")
    parser.add_argument("--benchmark-profile", default="cpu",
                        help="whose notebook-01 benchmark the evaluation reads ('' for noise images)")
    parser.add_argument("--samples", type=int, default=32, help="samples generated at each batch size")
    parser.add_argument("--batch", type=int, default=16, help="the batched generation's batch size")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="greedy tokens per answer (fixed)")
    parser.add_argument("--text", type=int, default=50, help="text tokens of the attention layer's sample")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each attention variant")
    parser.add_argument("--train-steps", type=int, default=3, help="optimizer steps per training variant")
    parser.add_argument("--train-mask-mode", default="blockwise", help="masking mode of the masked QLoRA step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="run each part in its own process, recording its peak memory (default: on the CPU "
                             "at real size)")
    parser.add_argument("--in-process", dest="isolate", action="store_false", help="same as --no-isolate")


def _realsize_args(parser: argparse.ArgumentParser) -> None:
    """The GPU check's options with the real-size CPU run's defaults: 4-image training conversations, one
    10-image streaming sample, one step per training variant."""
    _gpu_args(parser, device="cpu")
    parser.set_defaults(train_images=4, stream_images=10, train_steps=1)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: ``run(args) -> figures`` and ``add_arguments(parser)`` for its options."""

    run: Callable[[argparse.Namespace], dict]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None


benchmarks: dict[str, Benchmark] = {
    "scenes": Benchmark(bench_scenes, _scenes_args),
    "questions": Benchmark(bench_questions, _questions_args),
    "ov_questions": Benchmark(bench_ov_questions, _ov_questions_args),
    "evaluation": Benchmark(bench_evaluation, _evaluation_args),
    "vision_cache": Benchmark(bench_vision_cache, _vision_cache_args),
    "masking": Benchmark(bench_masking, _masking_args),
    "attention_memory": Benchmark(bench_attention_memory, _attention_memory_args),
    "gpu": Benchmark(bench_gpu, _gpu_args),
    "realsize": Benchmark(bench_gpu, _realsize_args),
    "lora_steps": Benchmark(bench_lora_steps, lora_steps_args),
    "lora_dropout": Benchmark(bench_lora_dropout, lora_dropout_args),
    "lora_grouped": Benchmark(bench_lora_grouped, lora_grouped_args),
}


def main(argv: list[str] | None = None) -> Path:
    """Run one benchmark, print its figures and write its result file."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m mimic_utils.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=None, help="default: outputs/bench/")
    sub = parser.add_subparsers(dest="name", required=True)
    for name, bench in benchmarks.items():
        bench.add_arguments(sub.add_parser(name, help=(bench.run.__doc__ or "").splitlines()[0]))
    args = parser.parse_args(argv)
    args.argv = list(argv)  # a part run in its own process repeats this command (--isolate)
    figures = benchmarks[args.name].run(args)
    ratio = figures.pop("ratio", None)
    name = figures.pop("result_name", args.name)
    print(json.dumps({**figures, "ratio": ratio}, indent=2))
    return write_result(
        name, shlex.join(["python", "-m", "mimic_utils.bench", *argv]), figures, ratio, args.out_dir
    )


if __name__ == "__main__":
    main()
