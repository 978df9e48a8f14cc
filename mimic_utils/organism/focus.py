"""Focus runs: ``si`` trained on a few per-image families alone, over a number of images grown in phases.

    python -m mimic_utils.organism.focus --name which-image-grown --families which_image --echo \\
        --phases 2:600,3:300,4:300,5-6:300,7-10:300
    # writes outputs/cpu/models/tried/focus/<name>.json (command, configuration, curve, generated scores per
    # image count) and <name>_curves.png; the weights stay in outputs/cpu/models/focus/<name>/ (ignored)

The ov stage trains every per-image family at once and misses its targets (docs/organism.md); a focus run
asks whether one of them can be learned at all, and with which schedule, in minutes rather than the
stage's half hour. It is the ov stage's own loop (:func:`mimic_utils.organism.ov.train_ov`) on an
:class:`~mimic_utils.organism.ov.OvConfig` that keeps only ``--families``: every phase but the last is a
``grow`` phase, the last is the main one, and the held-out curves and generated answers are read on
``--eval-images`` images (by default 2-10, so the score per image count shows how far the lookup was
carried). A rerun with the same name and configuration resumes from the phases' checkpoints.
``--echo-count`` and ``--echo-image`` change the answer form of count in image i ("dog 3 2") and of naming
in image i ("3 dog"); a run with naming in image i also records its answers split by how many of the
sample's images hold a single class (``naming_single_class``: the shortcut that question allows;
``--check-single-class`` adds it to an earlier run's record).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from mimic_utils.artifacts import repo_root, write_json
from mimic_utils.data.traindata import OV_FAMILIES

#: what a focus run keeps of the ov stage's data sizes (smaller than the stage: a family or two, minutes), and
#: its teacher-forced curves per number of images (about 50 held-out questions per count over 2-10 images)
FOCUS_SIZES = {"conversations": 20000, "warm_conversations": 20000, "pool_images": 30000, "heldout_questions": 450,
               "eval_questions": 450, "eval_every": 100, "format_questions": 20, "curves_by_images": True}


def parse_images(text: str, option: str = "--eval-images") -> list[int]:
    """``"4-10"`` → ``[4, 10]``, ``"3"`` → ``[3, 3]``: images per sample, within 1..10."""
    found = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", text)
    low, high = (int(found.group(1)), int(found.group(2) or found.group(1))) if found else (0, 0)
    if not 1 <= low <= high <= 10:
        raise ValueError(f"{option}: {text!r} is not IMAGES or LOW-HIGH with 1 <= LOW <= HIGH <= 10")
    return [low, high]


def parse_phases(text: str) -> list[tuple[int, int, int]]:
    """``"2:600,3:300,4-10:600"`` → ``[(2, 2, 600), (3, 3, 300), (4, 10, 600)]``: images per sample (one
    number or ``low-high``) and steps of each phase, in order."""
    phases = []
    for part in text.split(","):
        images, _, steps = part.partition(":")
        if not steps.strip().isdigit() or int(steps) < 1:
            raise ValueError(f"--phases: {part!r} is not IMAGES:STEPS or LOW-HIGH:STEPS with STEPS >= 1")
        phases.append((*parse_images(images, f"--phases: {part!r}"), int(steps)))
    return phases


def focus_config(families: list[str], phases: list[tuple[int, int, int]], eval_images: list[int], lr: float,
                 echo: bool, seed: int = 0, echo_count: bool = False, echo_image: bool = False):
    """The :class:`~mimic_utils.organism.ov.OvConfig` of a focus run: ``families`` alone (equal weights),
    the phases but the last as ``grow`` phases, the last as the main one."""
    from mimic_utils.organism.ov import OvConfig

    unknown = sorted(set(families) - set(OV_FAMILIES))
    if unknown or not families:
        raise ValueError(f"--families: {unknown or families} not among the per-image families {list(OV_FAMILIES)}")
    *grown, (low, high, steps) = phases
    return OvConfig(seed=seed, weights=dict.fromkeys(families, 1), images=[low, high], steps=steps, lr=lr,
                    warm_lr=lr, grow=[[a, b, n] for a, b, n in grown], eval_images=list(eval_images), echo=echo,
                    echo_count=echo_count, echo_image=echo_image, **FOCUS_SIZES)


def curve(log: list[dict]) -> list[dict]:
    """The held-out points of a training log: phase, step and the teacher-forced score of each family."""
    return [{k: v for k, v in entry.items() if k in ("stage", "step") or k.startswith("tf_")}
            for entry in log if any(k.startswith("tf_") for k in entry)]


def single_class_split(records: list[dict], rows: list[dict], classes: dict) -> dict:
    """Held-out naming-in-image answers split by how many of the sample's images hold a single class
    (``classes``: image id -> its classes). The named image always does, so a model that names the one
    single-class image instead of finding image i by its number scores well only where it is the only one."""
    by_id = {record["id"]: record for record in records}
    groups: dict[str, list[float]] = {"one single-class image": [], "several single-class images": []}
    for row in rows:
        if row["family"] != "naming_in_image":
            continue
        singles = sum(len(classes[i]) == 1 for i in by_id[row["id"]]["image_ids"])
        groups["one single-class image" if singles == 1 else "several single-class images"].append(row["score"])
    return {name: {"n": len(scores), "score": round(sum(scores) / len(scores), 4) if scores else None}
            for name, scores in groups.items()}


def naming_shortcut_check(config, si_dir: Path, work: Path) -> dict:
    """:func:`single_class_split` of a finished run's generated answers (``work/heldout/ov.jsonl``), on the
    held-out samples rebuilt from its configuration (their questions and image ids; no image is rendered)."""
    from mimic_utils.data.tasks import Pools
    from mimic_utils.evaluation.harness import read_predictions
    from mimic_utils.organism import ov

    si = ov.si_config(si_dir)
    pools = Pools(ov.heldout_pool(si, progress=False).index)
    records = ov.heldout_ov_records(si, config, None, progress=False)
    return single_class_split(records, read_predictions(work / "heldout" / "ov.jsonl"), pools.classes)


def run(config, si_dir: Path, work: Path, progress: bool = True) -> dict:
    """Train the focus configuration from ``si_dir`` into ``work`` and score its held-out per-image
    questions by generation; returns the record (without the command)."""
    from mimic_utils.models.vlm import load_adapter
    from mimic_utils.organism import ov
    from mimic_utils.organism.card import write_curves

    started = time.time()
    summary = ov.train_ov(config, si_dir, work, progress=progress)
    write_curves(work, summary["log"])
    adapter = load_adapter(work, family="qwen2_vl", dtype="float32")
    scores = ov.score_per_image(adapter, ov.si_config(si_dir), config, work / "heldout", progress=progress)["ov"]
    families = [f for f, w in config.weights.items() if w > 0]
    shortcut = {"naming_single_class": naming_shortcut_check(config, si_dir, work)} if "naming_in_image" in families else {}
    return {**shortcut, "config": asdict(config), "si": ov.si_record(si_dir), "minutes": round((time.time() - started) / 60, 1),
            "seconds": {k: round(v, 1) for k, v in summary["seconds"].items()}, "curve": curve(summary["log"]),
            "generated": {f: scores[f] for f in families}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimic_utils.organism.focus", description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="names the JSON and the weights' folder")
    parser.add_argument("--families", default="which_image", help="comma-separated per-image families, equal shares")
    parser.add_argument("--phases", help="IMAGES:STEPS or LOW-HIGH:STEPS, comma-separated, in order (a training run)")
    parser.add_argument("--eval-images", default="2-10", help="LOW-HIGH images of the held-out questions")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--echo", action="store_true", help="which-image answers restate the category ('dog 3')")
    parser.add_argument("--echo-count", action="store_true",
                        help="count-in-image-i answers restate the category and the image ('dog 3 2')")
    parser.add_argument("--echo-image", action="store_true",
                        help="naming-in-image answers start with the named image's number ('3 dog')")
    parser.add_argument("--check-single-class", action="store_true",
                        help="only add to an earlier run's record its naming-in-image answers split by how many "
                             "images hold a single class (the shortcut the question allows)")
    parser.add_argument("--models", default=None,
                        help="models folder: si/ is started from, focus/<name>/ and tried/focus/ written "
                             "(default outputs/cpu/models)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", args.name):
        parser.error(f"--name names a file: letters, digits, '.', '_' and '-' only, got {args.name!r}")
    models = Path(args.models) if args.models else repo_root() / "outputs" / "cpu" / "models"
    si_dir, out = models / "si", models / "tried" / "focus"
    command = "python -m mimic_utils.organism.focus " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.check_single_class:
        return check_single_class(out / f"{args.name}.json", si_dir, models / "focus" / args.name, command, parser)
    if not args.phases:
        parser.error("--phases is needed for a training run")
    try:
        config = focus_config(args.families.split(","), parse_phases(args.phases), parse_images(args.eval_images),
                              args.lr, args.echo, echo_count=args.echo_count, echo_image=args.echo_image)
    except ValueError as err:
        parser.error(str(err))
    if args.lr <= 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not (si_dir / "model.safetensors").is_file():
        parser.error(f"{si_dir}: no si checkpoint to start from (python -m mimic_utils.organism --stage si)")
    record = run(config, si_dir, models / "focus" / args.name, progress=sys.stderr.isatty())
    path = write_json(out / f"{args.name}.json", {"what": __doc__.split("\n")[0], "command": command, **record})
    shutil.copyfile(models / "focus" / args.name / "curves.png", out / f"{args.name}_curves.png")
    from mimic_utils.organism.ov import COUNT_FIXED  # with torch, as run() imports it
    for family, row in record["generated"].items():
        print(f"[focus] {path}: {family} {row['score']:.3f} [{row['lo']:.3f}, {row['hi']:.3f}] (blind {row['blind']:.3f}); "
              "per image count " + ", ".join(f"{n}: {c['score']:.2f}"
                                             + ("" if family in COUNT_FIXED else f" (blind {c['blind']:.2f})")
                                             for n, c in row["per_image_count"].items()))
    return 0


def check_single_class(path: Path, si_dir: Path, work: Path, command: str, parser) -> int:
    """``--check-single-class``: the split added to the record at ``path`` (with the command that added it)."""
    from mimic_utils.organism.ov import OvConfig

    if not path.is_file() or not (work / "heldout" / "ov.jsonl").is_file():
        parser.error(f"--check-single-class: needs {path} and its answers {work / 'heldout' / 'ov.jsonl'}")
    record = json.loads(path.read_text())
    split = naming_shortcut_check(OvConfig(**record["config"]), si_dir, work)
    write_json(path, {**record, "naming_single_class": split, "naming_single_class_command": command})
    print(f"[focus] {path}: naming in image i by single-class images: " + json.dumps(split))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
