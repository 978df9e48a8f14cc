"""The MIMIC benchmark on disk: a plan of experiments, JSONL files with a manifest, and the HF export.

A profile's parameter file describes the benchmark as a handful of sweeps (see :class:`BenchmarkPlan`);
:func:`plan_specs` expands them into :class:`~mimic_utils.data.tasks.TaskSpec` batches, and the result is stored
as one JSONL file per task family (the official HF configs ``counting``, ``listing``, ``common``,
``oddone``) beside a ``manifest.json`` that records the plan, the source hash and counts per task and knob.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from mimic_utils.artifacts import (absolute_images, file_sha256, image_root, read_json, read_jsonl, recorded_root,
                                   relative_images, write_json, write_jsonl)
from mimic_utils.data.annotations import AnnotationIndex
from mimic_utils.data.scene_formats import save_png
from mimic_utils.data.scenes import BLANK_STREAM, plain_image, scene_rng
from mimic_utils.data.tasks import (FAMILIES, MAX_IMAGES, KnobError, Pad, Pools, TaskSpec, distractor_pads, generate,
                                    generate_all, padded_record, source_cap, spec_dict)

#: The task variants every sweep over images covers, as (family, counting split).
VARIANTS = (("counting", "balanced"), ("counting", "unbalanced"), ("listing", None), ("common", None),
            ("oddone", None))
#: The task variants of the k sweep (Counting Balanced: totals cycle over ``k_answer_range`` at every k).
K_VARIANTS = (("counting", "balanced"), ("listing", None))
#: The padded sweeps: the 1-image questions of the images sweep with pads beside the target image. Real
#: distractors pad Counting (Balanced); blank images pad Counting (Balanced) and Listing, whose answers do
#: not depend on images without objects (Common and Odd-One would change their answer).
PADDED_VARIANTS = {"distractors": (("counting", "balanced"),),
                   "blank": (("counting", "balanced"), ("listing", None))}
#: Official HF schema of the exported dataset.
HF_FIELDS = ("images", "question", "gt", "task", "id")
#: The sweeps of notebook 01's plan and the knob each one varies: the study's one definition of a cell.
SWEEPS = {"images": "n_images", "spread": "spread", "distractors": "distractors", "k": "k", "blank": "n_images"}
#: Sweeps given as lists of values; a single number is read as a one-value list (older parameter files).
SWEEP_FIELDS = ("images", "spread", "distractors", "k", "k_images", "blank")


@dataclass(frozen=True)
class BenchmarkPlan:
    """The sweeps notebook 02 plots, each with ``per_value`` questions per task and knob value. Each sweep
    moves one thing and holds the rest:

    * ``images``: every task at each number of images (the target's spread drawn at random; Odd-One needs
      at least 3 images and so skips smaller values).
    * ``spread``: Counting (Balanced) on ``spread_images`` images at every point; s of them hold the target
      and the other ``spread_images - s`` are distractors. The totals cycle evenly over
      ``spread_answer_range`` at every s, so the answer histogram is the same at every point and only how
      many images hold the instances moves (see :func:`check_spread`).
    * ``distractors``: the 1-image Counting (Balanced) questions of the images sweep, each with 0..m
      distractor images (source images holding none of the target) beside its target image: the same
      questions and answers at every d, so the answer histogram is identical and the blind baseline flat.
    * ``blank``: the same 1-image questions (Counting Balanced and Listing) at n = 1..10 images, the target
      beside n − 1 blank images (the studio background, no object): the vision sequence grows with no new
      information and no distraction (the paper's length thesis, apart from distraction).
    * ``k``: Counting (Balanced) and Listing with k query concepts, at each of ``k_images`` image counts
      (one image shows k away from the many-image floor); every named concept is present in the sample.
      Counting's totals cycle evenly over ``k_answer_range`` (capped by what one class reaches on that many
      images of the source) at every k, so its answer histogram is the same at every k.
    """

    per_value: int = 200
    answer_range: tuple[int, int] = (1, 8)
    images: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 10)
    spread: tuple[int, ...] = (1, 2, 3, 4)
    spread_images: int = 6
    spread_answer_range: tuple[int, int] = (4, 5)
    distractors: tuple[int, ...] = (0, 1, 2, 4, 6, 9)
    k: tuple[int, ...] = (1, 2, 3)
    k_images: tuple[int, ...] = (1, 4)
    k_answer_range: tuple[int, int] = (3, 8)
    blank: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        for name in SWEEP_FIELDS:
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, int) else tuple(value))
        for name in ("answer_range", "spread_answer_range", "k_answer_range"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check_spread(self)
        check_padded(self)
        check_k(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "benchmark") -> "BenchmarkPlan":
        """Build from a parameter-file mapping; unknown keys are refused with their name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def check_spread(plan: BenchmarkPlan) -> None:
    """Refuse a spread sweep that cannot hold its image count and answer prior fixed, naming the parameter.

    Every point uses ``spread_images`` images, so no spread may exceed it. Every point draws its totals from
    the same ``spread_answer_range``, so the range must start at ``max(spread)`` or more: each image that
    holds the target adds at least one instance. Its top must fit one image (spread 1); the source decides
    that, so :func:`check_spread_source` checks it when the benchmark is built.
    """
    if not plan.spread:
        return
    top = max(plan.spread)
    if not 1 <= min(plan.spread) <= top <= plan.spread_images <= MAX_IMAGES:
        raise KnobError(f"benchmark: spread {list(plan.spread)} must lie in 1..spread_images and spread_images "
                        f"({plan.spread_images}) in 1..{MAX_IMAGES}: every spread point has spread_images images")
    low, high = plan.spread_answer_range
    if not top <= low <= high:
        raise KnobError(f"benchmark: spread_answer_range {list(plan.spread_answer_range)} must start at max(spread)"
                        f"={top} or above (each of the {top} holding images adds an instance) and end at or "
                        f"above its start, so that every spread point draws the same totals")


def check_spread_source(plan: BenchmarkPlan, pools: Pools) -> None:
    """Refuse a ``spread_answer_range`` whose top the source cannot reach on the fewest holding images: that
    point's range would be cut, and its answer prior would differ from the other points'."""
    if not plan.spread:
        return
    fewest = min(plan.spread)
    cap = source_cap(pools, 1, fewest)
    if cap < plan.spread_answer_range[1]:
        raise KnobError(f"benchmark: spread_answer_range {list(plan.spread_answer_range)} is out of reach at "
                        f"spread {fewest}: the source holds at most {cap} instances of one class on {fewest} "
                        f"image(s); lower its top to {cap} or raise min(spread)")


def check_padded(plan: BenchmarkPlan) -> None:
    """Refuse padded sweeps outside what a question can hold, naming the parameter: ``distractors`` d in
    0..MAX_IMAGES − 1 (the target takes one image) and ``blank`` image counts in 1..MAX_IMAGES."""
    if any(not 0 <= d < MAX_IMAGES for d in plan.distractors):
        raise KnobError(f"benchmark: distractors {list(plan.distractors)} must lie in 0..{MAX_IMAGES - 1}: the "
                        f"target image and d distractors make at most {MAX_IMAGES} images")
    if any(not 1 <= n <= MAX_IMAGES for n in plan.blank):
        raise KnobError(f"benchmark: blank {list(plan.blank)} (images per question: the target and n − 1 blank "
                        f"images) must lie in 1..{MAX_IMAGES}")


def check_k(plan: BenchmarkPlan) -> None:
    """Refuse a ``k_answer_range`` that cannot be the same at every k, naming it: each of the k named classes
    adds at least one instance, so the range must start at ``max(k)`` or above (and end at or above its
    start). Its top is capped per image count by the source (:func:`k_ranges`)."""
    if not plan.k:
        return
    low, high = plan.k_answer_range
    if not max(plan.k) <= low <= high:
        raise KnobError(f"benchmark: k_answer_range {list(plan.k_answer_range)} must start at max(k)={max(plan.k)} "
                        f"or above (each named class adds an instance) and end at or above its start, so that "
                        f"every k draws the same totals")


def k_ranges(plan: BenchmarkPlan, pools: Pools) -> dict[int, tuple[int, int]]:
    """The totals the k sweep's counting questions cycle over, per image count: ``k_answer_range`` with its
    top capped by the most instances one class reaches on that many images of the source (k = 1 binds:
    more classes reach more), so every k at one image count shares one histogram. Refuses, naming
    ``k_answer_range`` and ``k_images``, an image count where nothing of the range is left."""
    low, high = plan.k_answer_range
    ranges = {}
    for n_images in plan.k_images:
        cap = source_cap(pools, 1, n_images)
        if cap < low:
            raise KnobError(f"benchmark: k_answer_range {list(plan.k_answer_range)} is out of reach at k_images="
                            f"{n_images}: the source holds at most {cap} instances of one class on {n_images} "
                            f"image(s); lower its start (at least max(k)={max(plan.k)}) or raise k_images")
        ranges[n_images] = (low, min(high, cap))
    return ranges


def plan_specs(plan: BenchmarkPlan, k_range: dict[int, tuple[int, int]] | None = None) -> list[TaskSpec]:
    """Expand a plan into task batches, in a fixed order (so the same plan gives the same files). The padded
    sweeps (``distractors``, ``blank``) are built from the 1-image specs' questions (:func:`base_spec`).
    ``k_range``: the k sweep's totals per image count (:func:`k_ranges`; default ``k_answer_range``)."""
    n = plan.per_value
    specs = [
        TaskSpec(family, n, n_images, split=split, answer_range=plan.answer_range, experiment="images")
        for n_images in plan.images
        for family, split in VARIANTS
        if not (family == "oddone" and n_images < 3)
    ]
    specs += [TaskSpec("counting", n, plan.spread_images, spread=s, split="balanced",
                       answer_range=plan.spread_answer_range, experiment="spread") for s in plan.spread]
    k_range = k_range or {}
    specs += [TaskSpec(family, n, n_images, k=k, split=split, experiment="k",
                       answer_range=k_range.get(n_images, plan.k_answer_range))
              for n_images in plan.k_images for k in plan.k for family, split in K_VARIANTS]
    return specs


def base_spec(plan: BenchmarkPlan, family: str, split: str | None) -> TaskSpec:
    """The 1-image questions a padded sweep starts from: the images sweep's spec at one image, so its
    records are the images sweep's 1-image questions (same seed and name, same draws) whether or not the
    plan's ``images`` includes 1."""
    return TaskSpec(family, plan.per_value, 1, split=split, answer_range=plan.answer_range, experiment="images")


#: Where :func:`build` writes the blank images when given no folder: beside the benchmark's JSONL files.
BLANK_FOLDER = "blank"


def blank_pads(base: list[dict], index: AnnotationIndex, count: int, folder: Path, seed: int) -> dict:
    """``count`` blank images per target-image size (``(width, height) -> [Pad]``), written as PNG files
    ``<folder>/blank_<w>x<h>_<j>.png``: blank j is the studio family's solid background in the colour of
    the run's blank stream at j (:func:`mimic_utils.data.scenes.plain_image`), the same for every question, and
    holds no object. A blank has the target's size, so it takes as many vision tokens as a real image of
    that size would."""
    sizes = sorted({(index.images[r["image_ids"][0]].width, index.images[r["image_ids"][0]].height) for r in base})
    pads = {}
    for width, height in sizes:
        pads[width, height] = []
        for j in range(1, count + 1):
            path = Path(folder) / f"blank_{width}x{height}_{j}.png"
            pixels = plain_image(scene_rng(seed, BLANK_STREAM, j), width, height)
            if not path.is_file() or not np.array_equal(_read_pixels(path), pixels):
                save_png(path, pixels)
            pads[width, height].append(Pad(f"blank-{width}x{height}-{j}", str(path), {}))
    return pads


def _read_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def padded_sweeps(index: AnnotationIndex, plan: BenchmarkPlan, pools: Pools, blank_dir: Path | None) -> list[dict]:
    """The ``distractors`` and ``blank`` sweeps: every 1-image question of :func:`base_spec`, at each
    knob value, with the same question, targets and answer (tested), the target at
    :func:`mimic_utils.data.tasks.target_position` and the pads beside it in a fixed, nested order."""
    sweeps = {"distractors": [1 + d for d in plan.distractors], "blank": list(plan.blank)}
    records = []
    for experiment, counts in sweeps.items():
        if not counts:
            continue
        if experiment == "blank" and blank_dir is None:
            raise KnobError(f"benchmark: blank {list(plan.blank)} needs a folder for its blank images: "
                            "build(index, plan, blank_dir=...)")
        for family, split in PADDED_VARIANTS[experiment]:
            base = generate(index, base_spec(plan, family, split), plan.seed, pools)
            need = max(counts) - 1
            if experiment == "blank":
                by_size = blank_pads(base, index, need, blank_dir, plan.seed)
                pads = {r["id"]: by_size[_size(index, r)] for r in base}
            else:
                pads = {r["id"]: distractor_pads(pools, r, need, plan.seed) for r in base}
            records += [padded_record(r, experiment, n, pads[r["id"]], plan.seed, index.supercategory_of)
                        for n in counts for r in base]
    return records


def _size(index: AnnotationIndex, record: dict) -> tuple[int, int]:
    image = index.images[record["image_ids"][0]]
    return image.width, image.height


def build(index: AnnotationIndex, plan: BenchmarkPlan, progress: bool = True,
          blank_dir: Path | str | None = None) -> list[dict]:
    """All benchmark records of a plan (exactly ``per_value`` per task and knob value, or an error). The
    blank sweep's images are written to ``blank_dir`` (needed only when the plan has a ``blank`` sweep)."""
    pools = Pools(index)
    check_spread_source(plan, pools)
    specs = plan_specs(plan, k_ranges(plan, pools) if plan.k else None)
    records = generate_all(index, specs, seed=plan.seed, progress=progress, pools=pools)
    records += padded_sweeps(index, plan, pools, None if blank_dir is None else Path(blank_dir))
    duplicates = [i for i, n in Counter(r["id"] for r in records).items() if n > 1]
    if duplicates:
        raise KnobError(f"the plan gives duplicate ids such as {duplicates[:3]}")
    return records


def knob_counts(records: list[dict]) -> dict:
    """Counts per experiment, task and knob value, e.g. ``{"images": {"counting_balanced": {"n4": 200}}}``;
    the k sweep is keyed by image count and k (``"n1-k2"``), since it runs at several image counts."""
    counts: dict = defaultdict(lambda: defaultdict(Counter))
    for r in records:
        knobs = r["knobs"]
        value = {"images": f"n{knobs['n_images']}", "spread": f"s{knobs['spread']}",
                 "distractors": f"d{knobs['distractors']}", "blank": f"n{knobs['n_images']}",
                 "k": f"n{knobs['n_images']}-k{knobs['k']}"}.get(r["experiment"], "all")
        counts[r["experiment"]][r["task"]][value] += 1
    return {e: {t: dict(sorted(v.items())) for t, v in sorted(tasks.items())} for e, tasks in sorted(counts.items())}


def save(records: list[dict], out_dir: Path | str, plan: BenchmarkPlan, index: AnnotationIndex,
         root: Path | None = None) -> Path:
    """Write ``<family>.jsonl`` files and ``manifest.json``; image paths are stored relative to ``root``."""
    out_dir = Path(out_dir)
    by_family: dict[str, list[dict]] = {f: [] for f in FAMILIES}
    for record in records:
        by_family[record["family"]].append(relative_images(record, root))
    files = {}
    for family, rows in by_family.items():
        path = write_jsonl(out_dir / f"{family}.jsonl", rows)
        files[path.name] = {"records": len(rows), "sha256": file_sha256(path)}
    pools = Pools(index) if plan.k else None
    manifest = {
        "plan": asdict(plan),
        "specs": [spec_dict(s) for s in plan_specs(plan, k_ranges(plan, pools) if pools else None)],
        "padded": {experiment: {"from": [base_spec(plan, f, split).name for f, split in variants],
                                "image_counts": counts}
                   for experiment, variants in PADDED_VARIANTS.items()
                   for counts in [[1 + d for d in plan.distractors] if experiment == "distractors" else
                                  list(plan.blank)] if counts},
        "source": {"format": index.source_format, "sha256": index.source_hash, "images": len(index.images),
                   "categories": len(index.categories), "supercategories": len(index.supercategories)},
        "image_root": recorded_root(root),  # relative to the checkout when inside it (no absolute path)
        "files": files,
        "total": len(records),
        "counts": knob_counts(records),
    }
    return write_json(out_dir / "manifest.json", manifest)


def read_manifest(bench_dir: Path | str) -> dict:
    """The benchmark's ``manifest.json`` (plan, source hash, file hashes, counts per task and knob)."""
    return read_json(Path(bench_dir) / "manifest.json")


def load(bench_dir: Path | str, families: tuple[str, ...] = FAMILIES, root: Path | None = None) -> list[dict]:
    """Read records back, checking each file against the manifest so stale or edited files are caught."""
    bench_dir = Path(bench_dir)
    manifest = read_manifest(bench_dir)
    records: list[dict] = []
    for family in families:
        path = bench_dir / f"{family}.jsonl"
        expected = manifest["files"].get(path.name)
        if expected is None:
            raise ValueError(f"{bench_dir / 'manifest.json'}: lists no file {path.name}")
        if file_sha256(path) != expected["sha256"]:
            raise ValueError(f"{path}: content differs from the manifest's sha256 — rebuild with notebook 01")
        records.extend(read_jsonl(path))
    return absolute_images(records, image_root(root, manifest))


def to_hf(records: list[dict]):
    """A ``datasets.DatasetDict`` per official config (``counting`` …), split ``test``, official schema."""
    import datasets  # about a second to import; only the HF export needs it

    features = datasets.Features({
        "images": datasets.List(datasets.Image()),
        "question": datasets.Value("string"),
        "gt": datasets.Value("string"),
        "task": datasets.Value("string"),
        "id": datasets.Value("string"),
    })
    configs = {}
    for family in FAMILIES:
        rows = [r for r in records if r["family"] == family]
        columns = {name: [r[name] for r in rows] for name in HF_FIELDS}
        configs[family] = datasets.DatasetDict({"test": datasets.Dataset.from_dict(columns, features=features)})
    return configs


def export_hf(records: list[dict], out_dir: Path | str) -> dict[str, Path]:
    """Save the HF export as ``<out_dir>/<config>/`` folders (``datasets.load_from_disk`` reads them)."""
    out_dir = Path(out_dir)
    paths = {}
    for family, dataset in to_hf(records).items():
        paths[family] = out_dir / family
        dataset.save_to_disk(str(paths[family]))
    return paths


def load_hf(export_dir: Path | str, config: str):
    """Load one exported config back as a ``datasets.DatasetDict``."""
    import datasets

    path = Path(export_dir) / config
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no exported config {config!r} (expected one of {FAMILIES})")
    return datasets.load_from_disk(str(path))


def design_findings(records: list[dict]) -> list[str]:
    """What the built benchmark holds fixed and what it moves, checked on the records themselves (the
    closing sentences of notebook 01): cells per sweep, the spread sweep's image count and answer prior,
    and that every concept a question names is present in its images."""
    cells = Counter((r["experiment"], r["task"], r["knobs"]["n_images"], r["knobs"][SWEEPS[r["experiment"]]])
                    for r in records)
    sizes = sorted(set(cells.values()))
    lines = [f"{len(records)} questions in {len(cells)} cells of "
             + (f"{sizes[0]} questions each." if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]} questions.")]
    spread = [r for r in records if r["experiment"] == "spread"]
    if spread:
        counts = sorted({r["knobs"]["n_images"] for r in spread})
        by_s = defaultdict(Counter)
        for r in spread:
            by_s[r["knobs"]["spread"]][str(r["gt"])] += 1
        same = len({tuple(sorted(h.items())) for h in by_s.values()}) == 1
        lines.append(f"Spread sweep: {'every' if len(counts) == 1 else 'NOT every'} question has "
                     f"{'/'.join(map(str, counts))} images, and the answer histogram is "
                     f"{'identical' if same else 'NOT identical'} at every spread "
                     f"(questions per answer: {_histogram(next(iter(by_s.values())))}), so only how many images "
                     "hold the target moves.")
    lines += [padded_finding(records, experiment) for experiment in PADDED_VARIANTS
              if any(r["experiment"] == experiment for r in records)]
    missing = [r["id"] for r in records if r["family"] in ("counting", "listing") and not _names_present(r)]
    lines.append("Every concept a question names has an instance in its images." if not missing else
                 f"{len(missing)} questions name a concept absent from their images (e.g. {missing[:3]}).")
    return lines


def _histogram(counts: Counter) -> str:
    """``4: 100, 5: 100``: answers in numeric order where they are numbers, for a sentence (not a dict's repr)."""
    order = sorted(counts, key=lambda a: (not str(a).isdigit(), int(a) if str(a).isdigit() else 0, str(a)))
    return ", ".join(f"{answer}: {counts[answer]}" for answer in order)


def _names_present(record: dict) -> bool:
    """Each named class (Counting) is in some image; Listing's named supercategories are checked by
    :mod:`mimic_utils.data.tasks` when the answer is built (a member of each is listed)."""
    if record["family"] != "counting":
        return bool(record["gt"])
    present = {name for image in record.get("evidence", []) for name, n in image["counts"].items() if n > 0}
    return set(record.get("targets", [])) <= present


def padded_finding(records: list[dict], experiment: str) -> str:
    """One sentence on a padded sweep, checked on its records: the same questions (``base_id``) with the
    same answers at every image count, and (blank) pads that hold no object."""
    rows = [r for r in records if r["experiment"] == experiment]
    questions: dict[int, dict[str, str]] = defaultdict(dict)
    for r in rows:
        questions[r["knobs"]["n_images"]][r["base_id"]] = str(r["gt"])
    same = len({tuple(sorted(q.items())) for q in questions.values()}) == 1
    counts = "/".join(str(n) for n in sorted(questions))
    line = (f"{experiment.capitalize()} sweep ({counts} images): "
            + ("the same questions with the same answers at every image count"
               if same else "NOT the same questions and answers at every image count"))
    if experiment == "blank":
        full = sum(1 for r in rows for e in r["evidence"] if e["image_id"].startswith("blank-") and e["counts"])
        line += ("; no blank image holds an object" if not full else f"; {full} blank images hold objects")
    return line + "."
