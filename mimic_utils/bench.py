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


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: ``run(args) -> figures`` and ``add_arguments(parser)`` for its options."""

    run: Callable[[argparse.Namespace], dict]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None


benchmarks: dict[str, Benchmark] = {
    "scenes": Benchmark(bench_scenes, _scenes_args),
    "questions": Benchmark(bench_questions, _questions_args),
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
