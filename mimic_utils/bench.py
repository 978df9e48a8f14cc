"""Performance benchmarks: ``python -m mimic_utils.bench NAME [args]`` writes ``outputs/bench/NAME.json``.

Benchmarks are not timed tests (a shared two-core machine makes timings too noisy for pass/fail); they
are commands whose latest result is kept as a plain file, with the machine it ran on, so that a
regression is visible in review. To add one, write ``def bench_x(args) -> dict`` returning its figures
(optionally with a ``"ratio"`` entry: measured / target, below 1 is within target) and register it in
:data:`benchmarks` together with a function that adds its command-line arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mimic_utils.artifacts import repo_root, write_text


def machine_info() -> dict:
    """Where a figure was measured: platform, CPU count, and library versions that move timings."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    for module in ("torch", "numpy", "PIL"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info


def write_result(
    name: str, command: str, figures: dict, ratio: float | None = None, out_dir: Path | None = None
) -> Path:
    """Write ``<out_dir>/<name>.json`` (default ``outputs/bench/``) atomically: the command, the machine, the
    figures and the ratio."""
    out_dir = repo_root() / "outputs" / "bench" if out_dir is None else out_dir
    result = {"name": name, "command": command, "machine": machine_info(), "figures": figures, "ratio": ratio}
    path = Path(out_dir) / f"{name}.json"
    write_text(path, json.dumps(result, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------------


def bench_scenes(args: argparse.Namespace) -> dict:
    """Draw ``--n`` scenes at ``--size`` px and write them with their COCO JSON into a temporary directory."""
    from mimic_utils.scenes import SceneParams, sprite, write_coco_split

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


def _scenes_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=2000, help="images to draw")
    parser.add_argument("--size", type=int, default=224, help="image size in px (objects scale with it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=20.0, help="target seconds (for the ratio)")


def bench_questions(args: argparse.Namespace) -> dict:
    """Generate a MIMIC benchmark of about ``--questions`` questions from an annotation index (no rendering)."""
    import numpy as np

    from mimic_utils.benchmark import BenchmarkPlan, build, plan_specs
    from mimic_utils.scenes import SceneParams, draw_contents, scene_rng
    from mimic_utils.sources import AnnotationIndex, ImageAnnotation, ObjectAnnotation

    params = SceneParams(same_category_prob=0.5)
    table = {c.name: c.supercategory for c in params.category_table()}
    images = {}
    for i in range(args.images):
        contents = draw_contents(scene_rng(args.seed, 0, i), params)
        objects = tuple(ObjectAnnotation(name, table[name], (0.0, 0.0, 20.0, 20.0))
                        for name, n in sorted(contents.items()) for _ in range(n))
        images[str(i)] = ImageAnnotation(str(i), Path(f"/bench/{i}.png"), 112, 112, objects)
    index = AnnotationIndex(images, list(params.categories), table, "bench", "bench")
    plan = BenchmarkPlan(spread_total=4, spread=(1, 2, 3, 4))
    per_value = max(1, round(args.questions / len(plan_specs(plan))))
    plan = BenchmarkPlan(per_value=per_value, spread_total=4, spread=(1, 2, 3, 4), seed=args.seed)
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=30.0, help="target seconds (for the ratio)")


def _timed(run: Callable[[], object], repeats: int) -> dict:
    """Wall-clock seconds of ``run()`` after one warm-up call: min (the figure ratios use, least disturbed
    by the other jobs on the shared cores) and median."""
    run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    seconds.sort()
    return {"min": round(seconds[0], 5), "median": round(seconds[len(seconds) // 2], 5)}


def _layer_inputs(images: int, tokens: int, text: int, heads: int, kv_heads: int, dim: int, seed: int):
    """Query/key/value of one decoder layer for one sample laid out as LLaVA-OV lays out a multi-image
    prompt (a few text tokens, the images back to back, the question), with its block ids."""
    import torch

    prefix = min(5, text)
    block_ids = torch.full((1, images * tokens + text), -1, dtype=torch.long)
    block_ids[0, prefix : prefix + images * tokens] = torch.arange(images).repeat_interleave(tokens)
    length = block_ids.shape[1]
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(1, heads, length, dim, generator=generator)
    key, value = (torch.randn(1, kv_heads, length, dim, generator=generator) for _ in range(2))
    return query, key, value, block_ids


def _time_attention_op(args: argparse.Namespace) -> dict:
    """One layer's attention: plain causal SDPA against the image-block masked layer (both modes)."""
    from types import SimpleNamespace

    import torch

    from mimic_utils import masking

    query, key, value, block_ids = _layer_inputs(
        args.images, args.tokens, args.text, args.heads, args.kv_heads, args.head_dim, args.seed
    )
    groups = args.heads // args.kv_heads
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=groups, is_causal=True, training=False)
    scaling = args.head_dim**-0.5

    def attend(mode: str | None):
        if mode is None:  # outside a context the registered function is transformers' SDPA
            return lambda: masking.attention_forward(module, query, key, value, None, scaling=scaling)

        def masked():
            with masking.image_blocks(block_ids, [0], mode=mode):
                return masking.attention_forward(module, query, key, value, None, scaling=scaling)

        return masked

    with torch.no_grad():
        timings = {name: _timed(attend(mode), args.repeats) for name, mode in
                   (("dense_causal", None), ("masked_blockwise", "blockwise"), ("masked_dense", "dense"))}
        difference = (attend("blockwise")()[0] - attend("dense")()[0]).abs().max().item()
    length = block_ids.shape[1]
    text_rows = length - args.images * args.tokens
    return {
        "sequence": length,
        "timings": timings,
        "flops_ratio": round((args.images * args.tokens**2 + text_rows * length) / length**2, 4),
        "blockwise_vs_dense_max_abs_difference": difference,
    }


def _time_tiny_forward(args: argparse.Namespace) -> dict:
    """A whole forward of the Qwen2-VL organism on one sample of ``--images`` images, every layer masked
    (blockwise and dense reference) against the unmasked model."""
    import torch

    from mimic_utils import masking, models, tiny

    model, processor = tiny.build_organism()
    adapter = models.adapter_from_model(model, processor, "qwen2_vl")
    generator = torch.Generator().manual_seed(args.seed)
    images = [_noise_image(112, generator) for _ in range(args.images)]
    batch = adapter.prepare([models.Sample(images, "How many dogs are there?", "counting")])
    every_layer = list(range(masking.num_text_layers(model)))

    def forward(mode: str | None):
        def run():
            if mode is None:
                return model(**batch.inputs)
            with masking.mask_images(adapter, batch, every_layer, mode=mode):
                return model(**batch.inputs)

        return run

    with torch.no_grad(), masking.text_attention(model):
        timings = {name: _timed(forward(mode), args.repeats) for name, mode in
                   (("plain", None), ("masked_blockwise", "blockwise"), ("masked_dense", "dense"))}
    return {"model": "organism (tiny Qwen2-VL)", "sequence": batch.input_length, "timings": timings}


def _noise_image(side: int, generator):
    import torch
    from PIL import Image

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


def _memory_peaks(adapter, batch) -> dict:
    """Peak torch bytes of a plain forward, the streaming statistics and ``output_attentions`` (eager)
    on the same batch, one after the other."""
    from mimic_utils import attention, masking

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

    runs = (("plain_forward", plain), ("streaming", streaming), ("output_attentions", output_attentions))
    return {name: _peak_torch_bytes(run) for name, run in runs}


def bench_attention_memory(args: argparse.Namespace) -> dict:
    """Peak memory of the streaming attention statistics on a multi-image organism sample, against
    ``output_attentions=True`` (eager) and a plain forward, measured side by side in one run; then the
    same on a deeper variant of the organism, to show what grows with depth."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from mimic_utils import models, tiny

    if args.quick:
        args.images, args.batch = min(args.images, 6), 1
    model, processor = tiny.build_organism()
    generator = torch.Generator().manual_seed(args.seed)
    samples = [models.Sample([_noise_image(112, generator) for _ in range(args.images)], "How many dogs are there?",
                             "counting") for _ in range(args.batch)]
    config = model.config.get_text_config()
    deep_config = tiny.organism_config(processor.tokenizer)
    deep_config.text_config.num_hidden_layers = args.deep_layers
    deep_config.text_config.layer_types = ["full_attention"] * args.deep_layers
    depths = {config.num_hidden_layers: model, args.deep_layers: Qwen2VLForConditionalGeneration(deep_config).eval()}
    peaks = {}
    with torch.no_grad():
        for layers, variant in depths.items():
            adapter = models.adapter_from_model(variant, processor, "qwen2_vl")
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
    from mimic_utils import benchmark as bench
    from mimic_utils import evaluate
    from mimic_utils.artifacts import profile_dir

    import torch

    torch.set_num_threads(args.threads)
    root = repo_root()
    records = bench.load(profile_dir(args.profile, root) / "01_data_build" / "mimic", root=root)
    sweep = [r for r in records if r["experiment"] == "images" and args.images in (None, len(r["images"]))]
    if not sweep:
        raise ValueError(f"bench evaluation: the {args.profile} images sweep has no question with --images {args.images}")
    # a seeded draw over the whole sweep (every task, 1..10 images), not its first rows (one task, one image)
    records = random.Random(args.seed).sample(sweep, min(args.n, len(sweep)))
    adapter = evaluate.load_under_study({"name": "organism", "source": args.model}, root)
    timings, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, size in (("batch_1", 1), (f"batch_{args.batch}", args.batch)):
            start = time.perf_counter()
            rows = evaluate.run(adapter, records, Path(tmp) / f"{label}.jsonl", batch_size=size, progress=False)
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


def _evaluation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="cpu", help="whose notebook-01 benchmark to read")
    parser.add_argument("--model", default="outputs/cpu/models/base")
    parser.add_argument("--n", type=int, default=256, help="questions, drawn at random from the images sweep")
    parser.add_argument("--seed", type=int, default=0, help="seed of that draw")
    parser.add_argument("--images", type=int, default=None, help="only questions with this many images")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: ``run(args) -> figures`` and ``add_arguments(parser)`` for its options."""

    run: Callable[[argparse.Namespace], dict]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None


benchmarks: dict[str, Benchmark] = {
    "scenes": Benchmark(bench_scenes, _scenes_args),
    "questions": Benchmark(bench_questions, _questions_args),
    "evaluation": Benchmark(bench_evaluation, _evaluation_args),
    "masking": Benchmark(bench_masking, _masking_args),
    "attention_memory": Benchmark(bench_attention_memory, _attention_memory_args),
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
    figures = benchmarks[args.name].run(args)
    ratio = figures.pop("ratio", None)
    print(json.dumps({**figures, "ratio": ratio}, indent=2))
    return write_result(
        args.name, shlex.join(["python", "-m", "mimic_utils.bench", *argv]), figures, ratio, args.out_dir
    )


if __name__ == "__main__":
    main()
