"""The scene world's out-of-distribution benchmark, written in MuirBench's schema.

The ``cpu`` and ``smoke`` profiles cannot reach the public multi-image benchmarks, so notebook 06 tests
transfer on this set instead: the MIMIC tasks drawn in a scene style no model of the study has seen, asked
as 4-option multiple choice and saved where ``external_benchmarks.load_benchmark("muirbench", source=…)``
reads it, so the MuirBench prompt and scorer apply unchanged (see docs/design.md, *Public benchmarks*).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import datasets

from mimic_utils.data import annotations, scene_formats, scenes, tasks
from mimic_utils.data.prompts import choice_letters

#: A visibly different scene style: unseen textured backgrounds, larger images and objects, more objects.
SCENE_OOD_STYLE = {"image_size": 160, "min_objects": 1, "max_objects": 8, "min_object_px": 28,
                   "max_object_px": 60, "background": "texture", "same_category_prob": 0.5}
SCENE_OOD_TASKS = ("counting", "common", "oddone")


def _choice_options(record: dict, categories: list[str], rng: random.Random, n_options: int = 4) -> list[str]:
    """The answer plus ``n_options - 1`` plausible wrong ones: nearby counts, or classes seen in the images."""
    gt = record["gt"]
    if record["family"] == "counting":
        value = int(gt)
        # a random window of n_options consecutive counts holding the answer: its rank among the options
        # is uniform, so the answer cannot be guessed from the numbers alone
        low = max(0, value - rng.randrange(n_options))
        chosen = [str(v) for v in range(low, low + n_options) if v != value][: n_options - 1]
    else:
        seen = sorted({c for e in record["evidence"] for c in e["counts"]} - {gt})
        others = [c for c in categories if c != gt and c not in seen]
        rng.shuffle(seen)
        rng.shuffle(others)
        chosen = (seen + others)[: n_options - 1]
    options = [gt, *chosen]
    rng.shuffle(options)
    return options


def write_scene_muirbench(out_dir: str | os.PathLike, n_source_images: int = 1500, per_task: int = 90,
                          n_images: tuple[int, ...] = (3, 4, 5), seed: int = 11, progress: bool = True) -> Path:
    """Write an out-of-distribution multiple-choice benchmark from the scene world, in MuirBench's schema.

    The CPU profile cannot reach the public benchmarks, so notebook 06 tests transfer on this instead: the
    MIMIC tasks in a style no model of the study has seen (:data:`SCENE_OOD_STYLE`: textured backgrounds,
    160 px images, 28-60 px objects, up to 8 per image), as 4-option multiple choice with MuirBench's fields
    (``idx``, ``task``, ``image_list``, ``question``, ``options``, ``answer``), saved with
    ``save_to_disk`` under ``<out_dir>/muirbench`` so that ``load_benchmark("muirbench", source=…)`` and the
    MuirBench prompt and scorer read it unchanged. Returns that folder.
    """
    out_dir = Path(out_dir)
    world = scenes.SceneParams(**SCENE_OOD_STYLE)
    coco_json = scene_formats.write_coco_split(out_dir / "scenes", n_source_images, seed, world, split="ood",
                                               progress=progress)
    index = annotations.read_coco(coco_json)
    pools = tasks.Pools(index)
    rng = random.Random(seed)
    columns: dict[str, list] = {"idx": [], "task": [], "image_list": [], "question": [], "options": [], "answer": []}
    for family in SCENE_OOD_TASKS:
        for count, n in zip(_split_evenly(per_task, len(n_images)), n_images):
            spec = tasks.TaskSpec(family, count, n, split="unbalanced" if family == "counting" else None,
                                  experiment="ood")
            for record in tasks.generate(index, spec, seed, pools):
                options = _choice_options(record, index.categories, rng)
                columns["idx"].append(record["id"])
                columns["task"].append(family)
                columns["image_list"].append(record["images"])
                columns["question"].append(record["question"])
                columns["options"].append(options)
                columns["answer"].append(choice_letters(len(options))[options.index(record["gt"])])
    features = datasets.Features({
        "idx": datasets.Value("string"), "task": datasets.Value("string"),
        "image_list": datasets.List(datasets.Image()), "question": datasets.Value("string"),
        "options": datasets.List(datasets.Value("string")), "answer": datasets.Value("string"),
    })
    target = out_dir / "muirbench"
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(columns, features=features)}).save_to_disk(str(target))
    return target


def _split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
