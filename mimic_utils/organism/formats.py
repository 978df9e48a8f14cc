"""Whether the ov stage keeps MIMIC's answer formats: held-out MIMIC-format questions at 1 image and at several.

The ov stage trains per-image families whose answers are image numbers, yes/no and counts; MIMIC asks its
own questions and scores its own formats (a count; category names or "none"; one category name). The
single-image check (``format_1img``) was the only one the stage had, and it asks only counting, listing and
naming of one image, so it never saw a model that answers MIMIC's odd-one question over 4 images with "no"
(the yes/no format of the stage's "is X in every image"): 4 of 7 scored ov recipes did, unseen in training
(outputs/cpu/models/tried/ov-v15-warm-lr). The multi-image check asks the four MIMIC aggregation questions
(total count, list over the images, common, odd-one) over ``format_images`` held-out images. The stage never
trains those questions — they are what the benchmark measures — so only their *format* is a check here;
their scores are shown beside their blind baselines, read as "what a model that was never taught to
aggregate answers", not as a target.
"""

from __future__ import annotations

from pathlib import Path

from mimic_utils.analysis import stats
from mimic_utils.data.prompts import prompt_family
from mimic_utils.data.tasks import FAMILIES as MIMIC_FAMILIES, KnobError, TaskSpec, generate
from mimic_utils.data.traindata import single_image_questions
from mimic_utils.evaluation import harness
from mimic_utils.evaluation.scoring import parse_count, score_sample
from mimic_utils.models.vlm import adapter_from_model
from mimic_utils.organism import recipe as organism
from mimic_utils.organism.compare import MULTI_FILE as ANSWERS_FILE
from mimic_utils.organism.config import OrganismConfig

#: the single-image families asked in MIMIC's wording, whose answer format must survive the stage
MIMIC_FORMAT_FAMILIES = ("counting", "listing", "naming")
#: held-out multi-image questions of the card's check (the four families evenly)
EVAL_QUESTIONS = 200


def format_kept(family: str, output: str, categories: list[str]) -> bool:
    """Whether a MIMIC-format answer has its family's format: a count for counting, category names (or
    "none") for listing, one category name for naming, common and odd-one — and never an image reference."""
    text = output.strip().rstrip(".").strip().lower()
    if "image" in text:
        return False
    if family == "counting":
        return parse_count(output) is not None
    names = {c.lower() for c in categories}
    if family == "listing":
        items = [item.strip() for item in text.split(",")]
        return bool(items) and all(item in names or item == "none" for item in items)
    return text in names


def multi_image_questions(pool: organism.ScenePool, count: int, seed: int, n_images: int) -> list[dict]:
    """``count`` held-out MIMIC questions over ``n_images`` images of ``pool`` (the four aggregation families
    evenly; counting Unbalanced, as the benchmark's commonest counting), built by the benchmark's own
    generator from the pool's annotations. A pool too small for them is refused, naming the family."""
    per_family = [count // len(MIMIC_FAMILIES) + (i < count % len(MIMIC_FAMILIES)) for i in range(len(MIMIC_FAMILIES))]
    records = []
    for family, n in zip(MIMIC_FAMILIES, per_family):
        if n == 0:
            continue
        spec = TaskSpec(family, n, n_images, split="unbalanced" if family == "counting" else None,
                        experiment="format")
        try:
            records += generate(pool.index, spec, seed=seed)
        except KnobError as error:
            raise KnobError(f"the multi-image format check (format_images={n_images}): the held-out scene stream "
                            f"cannot supply {n} {family} questions: {error}") from error
    return records


def card_questions(pool: organism.ScenePool, seed: int, n_images: int) -> list[dict]:
    """The card's multi-image check's questions (:data:`EVAL_QUESTIONS` of them): what :func:`score_multi_image`
    asks, and what the stage draws before training so a pool too small for them stops it early."""
    return multi_image_questions(pool, EVAL_QUESTIONS, seed, n_images)


def pil_image(pool: organism.ScenePool, number: int):
    from PIL import Image

    return Image.fromarray(pool.images[number].numpy(), "RGB")


def format_probe(model, processor, pool: organism.ScenePool, si: OrganismConfig, count: int, seed: int,
                 n_images: int = 0):
    """``extra_metrics`` of the training curves: generated answers of ``count`` held-out single-image
    MIMIC-format questions (counting, listing, naming evenly) — the share that keeps the format and the
    share right (official scorers) — and, with ``n_images``, as many MIMIC aggregation questions over
    ``n_images`` images (``gen_format_{n}img`` / ``gen_score_{n}img``). Questions are drawn once, before
    training, so a pool too small for them stops the stage before its first step."""
    single = single_image_questions(pool.index, count, seed=seed, max_count=si.max_count,
                                    families=MIMIC_FORMAT_FAMILIES, prefix="format")
    checks = [("1img", single)]
    if n_images:
        checks.append((f"{n_images}img", multi_image_questions(pool, count, seed, n_images)))
    asked = {suffix: (records, [{"images": [pil_image(pool, int(i)) for i in r["image_ids"]], "question": r["question"],
                                 "task_family": prompt_family(r["family"])} for r in records])
             for suffix, records in checks}

    def metrics() -> dict:
        adapter = adapter_from_model(model, processor, "qwen2_vl")
        adapter.use_vision_cache = False  # the model in training: its features are read live
        found = {}
        for suffix, (records, samples) in asked.items():
            outputs = adapter.answer(samples)
            kept = [format_kept(r["family"], o, pool.categories) for r, o in zip(records, outputs)]
            right = [score_sample(prompt_family(r["family"]), o, r["gt"])["score"] for r, o in zip(records, outputs)]
            found |= {f"gen_format_{suffix}": sum(kept) / len(kept), f"gen_score_{suffix}": sum(right) / len(right)}
        return found

    return metrics


def format_cells(rows: list[dict], families: tuple[str, ...], categories: list[str]) -> dict:
    """Per family of ``rows`` (scored answers) that has any: n, the share of answers in the family's format
    and its 95% interval (Wilson)."""
    cells = {}
    for family in families:
        members = [r for r in rows if r["family"] == family]
        if not members:
            continue
        kept = sum(format_kept(family, r["output"], categories) for r in members)
        lo, hi = stats.wilson(kept, len(members))
        cells[family] = {"n": len(members), "score": round(kept / len(members), 4),
                         "lo": round(lo, 4), "hi": round(hi, 4)}
    return cells


def score_multi_image(adapter, pool: organism.ScenePool, n_images: int, seed: int, folder: Path,
                      categories: list[str], cell, progress: bool = True) -> dict:
    """The card's multi-image check: :data:`EVAL_QUESTIONS` held-out MIMIC questions over ``n_images``
    images, generated through the adapter (answers in ``folder``/:data:`ANSWERS_FILE`); per family the
    share in MIMIC's format (``format``) and the official score with its blind baseline (``score``, by
    ``cell``)."""
    records = card_questions(pool, seed, n_images)
    for record in records:
        record["images"] = [str(organism.heldout_png(pool, int(i), folder)) for i in record["image_ids"]]
    rows = harness.run(adapter, records, Path(folder) / ANSWERS_FILE, batch_size=32, progress=progress,
                       desc=f"held-out MIMIC format ({n_images} images)")
    return {"n_images": n_images, "format": format_cells(rows, MIMIC_FAMILIES, categories),
            "score": {family: cell([r for r in rows if r["family"] == family]) for family in MIMIC_FAMILIES}}


def multi_format_lines(found: dict | None) -> list[str]:
    """The card's section on the multi-image check (``eval.json``'s ``format_multi``); none for a card scored
    before it."""
    if not found:
        return []
    n_images = found["n_images"]
    lines = [f"## MIMIC's questions over {n_images} held-out images (never trained)", "",
             "The stage never trains MIMIC's aggregation questions, so these are a check of their answer format (a "
             "count; category names; one category name; never an image reference or a yes/no), not a target; the "
             "scores are read against their blind baselines (the best constant answer).", "",
             "| question | n | format kept | 95% interval | score | 95% interval | blind |", "|---|---|---|---|---|---|---|"]
    for family, kept in found["format"].items():
        right = found["score"][family]
        lines.append(f"| {family} | {kept['n']} | {kept['score']:.3f} | [{kept['lo']:.3f}, {kept['hi']:.3f}] | "
                     f"{right['score']:.3f} | [{right['lo']:.3f}, {right['hi']:.3f}] | {right['blind']:.3f} |")
    return lines + [""]
