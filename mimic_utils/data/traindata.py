"""Procedural training data: multi-image MIMIC-style conversations and single-image questions.

The paper's data-centric remedy trains on MIMIC-style tasks generated from OpenImages V7, which never
shares images with the COCO-based benchmark. We do the same: every builder here takes the index read from
the OpenImages-format source (the disjoint draw of the scene world, or real V7 CSVs).

Families (all questions use the benchmark's wording, so training and evaluation prompts agree):

* the four MIMIC families — ``counting``, ``listing``, ``common``, ``oddone`` — from
  :mod:`mimic_utils.data.tasks`, with images per sample drawn from ``1..max_images`` (at most 10, as in the
  official recipe) and the target's spread drawn at random;
* their **minor** variants, our definition of the paper's "minor" tasks: small questions about *one*
  image inside a multi-image sample, which teach the model to keep images apart —
  ``counting_minor`` "How many dog objects are there in image 3?" (a count, 0 allowed),
  ``listing_minor`` "List the images that contain a dog" ("1, 4", image numbers ascending),
  ``common_minor`` "Is there a dog in every image?" ("yes"/"no", balanced),
  ``oddone_minor`` "Which image contains a dog?" (the number of the only image that holds it);
* **single-image** questions (the organism's stage 2 and the single-image share of the finetuning mix):
  ``counting`` (true counts 0..max), ``presence`` (yes/no, balanced), ``listing`` of one supercategory
  ("none" when absent) and ``naming`` of a single-class image;
* **hub** conversations (:func:`hub_conversations`): multi-image instruction datasets from the HF hub in
  the Mantis-Instruct schema (``images`` + ``conversation`` of role/content turns with ``<image>``
  placeholders), which the official recipe mixes in (NLVR2, Spot-the-Diff, …). Their question text is
  kept verbatim after the images.

Every record is a conversation: ``messages`` with a user turn (image references first, then the text,
in the official layout that evaluation uses) and an assistant turn, plus ``images`` (paths), ``family``, ``question``, ``gt`` and the evidence.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Collection

from PIL import Image
from tqdm.auto import tqdm

from mimic_utils.artifacts import (absolute_images, file_sha256, image_root, read_json, read_jsonl, recorded_root,
                                   relative_images, write_bytes, write_json, write_jsonl)
from mimic_utils.data.prompts import HUB_FAMILY, build_messages, prompt_family
from mimic_utils.data.annotations import AnnotationIndex
from mimic_utils.data.tasks import MAX_IMAGES, KnobError, Pools, TaskSpec, generate, question_for

MINOR_FAMILIES = ("counting_minor", "listing_minor", "common_minor", "oddone_minor")
SINGLE_FAMILIES = ("counting", "presence", "listing", "naming")
MIMIC_FAMILIES = ("counting", "listing", "common", "oddone")



def conversation(images: list[str], question: str, answer: str, family: str,
                 image_labels: bool = False) -> list[dict]:
    """User turn in the official MIMIC layout (images first, space-separated, then
    ``"\nQuestion: …\nAnswer:"``, exactly what evaluation sends; with ``image_labels`` each image
    preceded by ``"Image k: "``) and the assistant's answer, HF chat format."""
    user = build_messages(question, len(images), prompt_family(family), "qwen2_vl", image_labels)
    return user + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def _record(index: AnnotationIndex, uid: str, family: str, image_ids: list[str], targets: list[str],
            question: str, answer: str, origin: str) -> dict:
    images = [str(index.images[i].path) for i in image_ids]
    return {
        "id": uid, "family": family, "origin": origin, "images": images, "image_ids": image_ids,
        "targets": targets, "question": question, "gt": answer,
        "messages": conversation(images, question, answer, family),
        "evidence": [{"image_id": i, "counts": dict(sorted(index.images[i].counts().items()))} for i in image_ids],
    }


def _rng(seed: int, label: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{label}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# --- minor variants --------------------------------------------------------------------------------


Drawn = tuple[list[str], list[str], str, str]  # image ids, targets, question, answer


def _counting_minor(pools: Pools, rng: random.Random, n: int) -> Drawn:
    images = rng.sample(pools.certain, n)
    which = rng.randrange(n)
    present = sorted({c for i in images for c in pools.classes[i]}) or pools.index.categories
    target = rng.choice(present)
    answer = str(pools.counts[images[which]][target])
    return images, [target], f"How many {target} objects are there in image {which + 1}?", answer


def _listing_minor(pools: Pools, rng: random.Random, n: int) -> Drawn:
    target = rng.choice(pools.index.categories)
    holding = pools.holding[target]
    if not holding:
        raise KnobError(f"listing_minor: no image holds {target!r}")
    spread = rng.randint(1, min(n, len(holding)))
    images = rng.sample(holding, spread) + _without(pools, rng, target, n - spread)
    rng.shuffle(images)
    numbers = [str(j + 1) for j, i in enumerate(images) if target in pools.classes[i]]
    return images, [target], f"List the images that contain a {target}", ", ".join(numbers)


def _common_minor(pools: Pools, rng: random.Random, n: int) -> Drawn:
    target = rng.choice(pools.index.categories)
    everywhere = rng.random() < 0.5 and len(pools.holding[target]) >= n
    if everywhere:
        images = rng.sample(pools.holding[target], n)
    else:
        missing = rng.randint(1, n)
        images = rng.sample(pools.holding[target], min(n - missing, len(pools.holding[target])))
        images += _without(pools, rng, target, n - len(images))
        rng.shuffle(images)
    answer = "yes" if all(target in pools.classes[i] for i in images) else "no"
    return images, [target], f"Is there a {target} in every image?", answer


def _oddone_minor(pools: Pools, rng: random.Random, n: int) -> Drawn:
    target = rng.choice([c for c in pools.index.categories if pools.holding[c]])
    images = [rng.choice(pools.holding[target])] + _without(pools, rng, target, n - 1)
    rng.shuffle(images)
    which = next(j for j, i in enumerate(images) if target in pools.classes[i])
    return images, [target], f"Which image contains a {target}?", str(which + 1)


def _without(pools: Pools, rng: random.Random, target: str, n: int) -> list[str]:
    """``n`` distinct images that do not hold ``target``. Drawn from ``pools.by_count`` (built once), not by
    scanning every image per question: with the ov stage's 30,000-image pool the scan cost 2-3 ms a
    question (``make bench NAME=ov_questions``), and the stage draws about 100,000 of them. The list is the
    scan's, in the same order, so the draws are too."""
    candidates = pools.by_count.get((target, 0), [])
    if len(candidates) < n:
        raise KnobError(f"need {n} images without {target!r}, the source has {len(candidates)}")
    return rng.sample(candidates, n)


MINOR_BUILDERS: dict[str, Callable] = {
    "counting_minor": _counting_minor, "listing_minor": _listing_minor,
    "common_minor": _common_minor, "oddone_minor": _oddone_minor,
}


# --- the multi-image instruction stage (`ov`) -----------------------------------------------------------

#: Per-image families of the organism's multi-image stage (`ov`), our stand-in for LLaVA-OneVision's
#: multi-image data: they need the model to keep images apart and read each one, and none of them asks
#: for an aggregate over the images (the four MIMIC families are what the benchmark measures and what the
#: data-centric remedy adds). Wording and answers are kept apart from MIMIC's: each question names an
#: image ("in image 3 only") or the images as a set, and a set of images is answered "image 1, image 3",
#: never with bare numbers, so a MIMIC answer (a count, category names) is not confusable with them.
#: ``listing_in_image`` and ``naming_in_image`` ask one named image in the answer formats of MIMIC listing
#: and common (category names, "none"), so that a MIMIC question over several images is not answered in
#: another family's format (the first ov stage answered Common at 4 images with "2", issue #25).
#: ``category_in_image`` asks naming_in_image's question in the words MIMIC uses for a category answer
#: ("Which object category appears in image 3?", several wordings): the ovs trained from the longer-stage-2
#: si answered MIMIC odd-one ("… appears in only a minority of the images?") with "no" or an image number,
#: keeping the category answer only for wordings close to those trained (tried/ov-v17-which16's probe).
OV_FAMILIES = ("image_count", "which_images", "every_image", "which_image", "image_total", "image_describe",
               "listing_in_image", "naming_in_image", "category_in_image")
#: the families drawn evenly where no weights are given (a TrainMix without ``ov_weights``): the eight the
#: stage had before ``category_in_image``, so the data such mixes build does not change with it
UNWEIGHTED_FAMILIES = OV_FAMILIES[:8]
#: families that need at least two images to mean anything
OV_MIN_IMAGES = {"which_images": 2, "every_image": 2, "which_image": 2, "listing_in_image": 2, "naming_in_image": 2,
                 "category_in_image": 2}
#: ``category_in_image``'s wordings, one drawn per question ("{image}": "image 3")
CATEGORY_WORDINGS = ("Which object category appears in {image}?", "Which object category appears in {image} only?",
                     "Looking at {image} only, which object category appears?",
                     "Which object category does {image} show?",
                     "{Image} shows one kind of object. Which object category appears in it?")
#: images named in one ``which_images`` answer, at most (the answer stays inside the 16-token budget)
WHICH_IMAGES_MAX = 4
#: families whose answer names image numbers; with ``echo`` each number is written right after the asked
#: category ("dog 3" for "image 3"), so the number is looked up from a token the model has just written
#: instead of from the question's category 18 tokens back (docs/organism.md, "What keeps the lookup from forming")
ECHO_FAMILIES = ("which_image", "which_images")
#: families whose answer is a count inside a named image; with ``echo_count`` the count is written right after
#: the asked category and that image's number ("dog 3 2": two dogs in image 3), so both keys of the lookup
#: stand next to the number instead of in the question (the answer form which image's ``echo`` gave it)
COUNT_ECHO_FAMILIES = ("image_count",)
#: families whose answer reads one named image; with ``echo_image`` the answer starts with that image's number
#: ("3 dog" for image 3's one category), so the lookup of image i starts from the token right before the
#: answer (a probe of the reverse lookup on images; it leaves MIMIC's answer format, so not a stage recipe)
IMAGE_ECHO_FAMILIES = ("naming_in_image",)


def describe(counts: dict[str, int], categories: list[str]) -> str:
    """The alignment stage's description, e.g. ``"2 dog, 1 cat"`` (category order; ``"none"`` when empty)."""
    parts = [f"{counts[c]} {c}" for c in categories if counts.get(c)]
    return ", ".join(parts) or "none"


def family_shares(count: int, weights: dict[str, int]) -> dict[str, int]:
    """``count`` questions split over the families in proportion to their integer ``weights``."""
    total = sum(weights.values())
    shares = {family: count * weight // total for family, weight in weights.items()}
    for family in [f for f, w in weights.items() if w > 0][: count - sum(shares.values())]:  # the remainder
        shares[family] += 1
    return shares


def with_labels(record: dict) -> dict:
    """``record`` asked with ``"Image k: "`` before each image (its messages rebuilt, ``image_labels`` set)."""
    record["image_labels"] = True
    record["messages"] = conversation(record["images"], record["question"], record["gt"], record["family"], True)
    return record


def echoed(answer: str, category: str) -> str:
    """``answer``'s image references with the category written before each number instead of "image":
    ``"image 1, image 4"`` -> ``"dog 1, dog 4"``."""
    return re.sub(r"\bimage (\d+)", lambda m: f"{category} {m.group(1)}", answer)


def unechoed(answer: str, category: str) -> str:
    """An echoed answer read back (:func:`echoed`'s inverse): ``"dog 1, dog 4"`` -> ``"image 1, image 4"``.
    Only numbers written after ``category`` itself become image references, so a wrong category stays wrong."""
    return re.sub(rf"\b{re.escape(category)} (\d+)", lambda m: f"image {m.group(1)}", answer.strip(), flags=re.I)


def named_image(question: str) -> int:
    """The image number a per-image question names: ``"In image 3 only, …"`` or ``"Image 3 shows …"`` -> 3."""
    found = re.search(r"\bimage (\d+)\b", question, flags=re.I)
    if not found:
        raise ValueError(f"no image named in the question {question!r}")
    return int(found.group(1))


def count_echoed(answer: str, category: str, image: int) -> str:
    """A count in image ``image`` written after the asked category and the image's number: ``"2"`` ->
    ``"dog 3 2"`` (the form ``echo_count`` trains)."""
    return f"{category} {image} {answer}"


def count_unechoed(answer: str, category: str, image: int) -> str:
    """:func:`count_echoed`'s inverse: ``"dog 3 2"`` -> ``"2"``. Only an answer that restates this category and
    this image is read back, so one that names another stays wrong under exact scoring."""
    found = re.fullmatch(rf"{re.escape(category)} {image} (\S+)", " ".join(answer.strip().rstrip(".").split()),
                         flags=re.I)
    return found.group(1) if found else answer.strip()


def image_echoed(answer: str, image: int) -> str:
    """An answer about image ``image`` written after its number: ``"dog"`` -> ``"3 dog"`` (``echo_image``)."""
    return f"{image} {answer}"


def image_unechoed(answer: str, image: int) -> str:
    """:func:`image_echoed`'s inverse: ``"3 dog"`` -> ``"dog"``; an answer naming another image stays as it is."""
    found = re.fullmatch(rf"{image} (.+)", " ".join(answer.split()))
    return found.group(1) if found else answer.strip()


@dataclass(frozen=True)
class AnswerForm:
    """One answer form: the families it rewrites, how it writes a plain answer and how it reads a generated
    one back into the plain form; both take ``(answer, asked category, question)``."""

    families: tuple[str, ...]
    write: Callable[[str, str, str], str]
    read: Callable[[str, str, str], str]


#: each answer form by its switch (the ov stage's and ov_questions' keyword); a record asked in a form carries
#: its switch as a true key, which :func:`read_back` reads
ANSWER_FORMS = {
    "echo": AnswerForm(ECHO_FAMILIES, lambda answer, category, _: echoed(answer, category),
                       lambda output, category, _: unechoed(output, category)),
    "echo_count": AnswerForm(COUNT_ECHO_FAMILIES,
                             lambda answer, category, question: count_echoed(answer, category, named_image(question)),
                             lambda output, category, question: count_unechoed(output, category,
                                                                               named_image(question))),
    "echo_image": AnswerForm(IMAGE_ECHO_FAMILIES, lambda answer, _, question: image_echoed(answer, named_image(question)),
                             lambda output, _, question: image_unechoed(output, named_image(question))),
}


def read_back(output: str, record: dict) -> str:
    """A generated answer to ``record`` read back into its ground truth's form, by the answer form the record
    was asked in (its :data:`ANSWER_FORMS` key), so exact scoring and the blind baselines are the plain ones."""
    for switch, form in ANSWER_FORMS.items():
        if record.get(switch):
            return form.read(output, record["targets"][0], record["question"])
    return output.strip()


def image_label(position: int) -> str:
    """How ov answers name an image: ``"image 3"`` for the third (``position`` counts from 0)."""
    return f"image {position + 1}"


def _image_count(pools: Pools, rng: random.Random, n: int) -> Drawn:
    """How many of one category image ``i`` holds: in 2 of 3 questions a category that image holds, else one
    that only other images hold (answer 0), so reading the named image is the only way to answer."""
    images = rng.sample(pools.certain, n)
    which = rng.randrange(n)
    own = sorted(pools.classes[images[which]])
    elsewhere = sorted({c for i in images for c in pools.classes[i]} - set(own))
    if own and (rng.random() < 2 / 3 or not elsewhere):
        target = rng.choice(own)
    else:
        target = rng.choice(elsewhere or list(pools.index.categories))
    answer = str(pools.counts[images[which]].get(target, 0))
    return images, [target], f"In {image_label(which)} only, how many {target} objects can you see?", answer


def _which_images(pools: Pools, rng: random.Random, n: int) -> Drawn:
    """The images that hold a category, named ``"image 1, image 4"`` (1..WHICH_IMAGES_MAX of them)."""
    target = rng.choice([c for c in pools.index.categories if pools.holding[c]])
    spread = rng.randint(1, min(n - 1, WHICH_IMAGES_MAX, len(pools.holding[target])))
    images = rng.sample(pools.holding[target], spread) + _without(pools, rng, target, n - spread)
    rng.shuffle(images)
    named = ", ".join(image_label(j) for j, i in enumerate(images) if target in pools.classes[i])
    return images, [target], f"Which images contain a {target}? Answer with each image.", named


def _every_image(pools: Pools, rng: random.Random, n: int) -> Drawn:
    """Yes or no (balanced): does each image hold the category?"""
    images, targets, _, answer = _common_minor(pools, rng, n)
    return images, targets, f"Does each image contain a {targets[0]}?", answer


def _which_image(pools: Pools, rng: random.Random, n: int) -> Drawn:
    """The only image that holds a category (uniform position), answered ``"image 3"``."""
    images, targets, _, number = _oddone_minor(pools, rng, n)
    return images, targets, f"Only one image contains a {targets[0]}. Which image is it?", image_label(int(number) - 1)


def _image_total(pools: Pools, rng: random.Random, n: int) -> Drawn:
    """The number of images shown."""
    return rng.sample(pools.certain, n), [], "How many images are shown?", str(n)


def _image_describe(pools: Pools, rng: random.Random, n: int) -> Drawn:
    """Image ``i`` described as the alignment stage describes one image: ``"Image 2: 2 dog, 1 cat"``."""
    images = rng.sample(pools.certain, n)
    which = rng.randrange(n)
    counts = pools.counts[images[which]]
    text = describe(counts, list(pools.index.categories))
    return images, [], f"What objects are in {image_label(which)}?", f"Image {which + 1}: {text}"


def _listing_in_image(pools: Pools, rng: random.Random, n: int) -> Drawn:
    """The categories of one supercategory in image ``i`` (MIMIC listing's answer: names, or "none"): in 3 of
    4 questions a supercategory that image holds, else one only other images hold, so reading the named
    image is the only way to answer."""
    index = pools.index
    images = rng.sample(pools.certain, n)
    which = rng.randrange(n)
    own = sorted({index.supercategory_of[c] for c in pools.classes[images[which]]})
    elsewhere = sorted({index.supercategory_of[c] for i in images for c in pools.classes[i]} - set(own))
    if own and (rng.random() < 0.75 or not elsewhere):
        supercategory = rng.choice(own)
    else:
        supercategory = rng.choice(elsewhere or list(index.supercategories))
    present = sorted(c for c in pools.classes[images[which]] if index.supercategory_of[c] == supercategory)
    question = f"In {image_label(which)} only, list the categories of {supercategory} that appear"
    return images, [supercategory], question, ", ".join(present) or "none"


def _single_class_image(pools: Pools, rng: random.Random, n: int, family: str) -> tuple[list, int, str]:
    """``n`` images, one of which (at a uniform position) holds a single class: the images, that position and
    its category. The draw both one-category families ask about."""
    if not pools.single_class:
        raise KnobError(f"{family}: no image of the source holds a single class")
    which = rng.randrange(n)
    named = rng.choice(pools.single_class)
    images = rng.sample(pools.certain, n - 1)
    while named in images:
        images = rng.sample(pools.certain, n - 1)
    images.insert(which, named)
    return images, which, next(iter(pools.classes[named]))


def _naming_in_image(pools: Pools, rng: random.Random, n: int) -> Drawn:
    """The one category of image ``i``, an image of one class among others (Common's answer: one name)."""
    images, which, name = _single_class_image(pools, rng, n, "naming_in_image")
    label = image_label(which)
    return images, [name], f"{label[0].upper()}{label[1:]} shows one kind of object. Which category is it?", name


def _category_in_image(pools: Pools, rng: random.Random, n: int) -> Drawn:
    """naming_in_image's question (the one category of image ``i``) in one of :data:`CATEGORY_WORDINGS`, drawn
    after the images, so the same stream gives the same images and answer as naming_in_image's."""
    images, which, name = _single_class_image(pools, rng, n, "category_in_image")
    label = image_label(which)
    wording = rng.choice(CATEGORY_WORDINGS)
    return images, [name], wording.format(image=label, Image=f"{label[0].upper()}{label[1:]}"), name


OV_BUILDERS: dict[str, Callable] = {
    "image_count": _image_count, "which_images": _which_images, "every_image": _every_image,
    "which_image": _which_image, "image_total": _image_total, "image_describe": _image_describe,
    "listing_in_image": _listing_in_image, "naming_in_image": _naming_in_image,
    "category_in_image": _category_in_image,
}


def switched_forms(config: object, prefix: str = "") -> tuple[str, ...]:
    """The :data:`ANSWER_FORMS` a configuration switches on with its boolean fields ``<prefix><form>`` (the ov
    stage's ``echo``, a TrainMix's ``ov_echo``): what :func:`ov_questions` takes as ``forms``."""
    return tuple(form for form in ANSWER_FORMS if getattr(config, prefix + form, False))


def ov_questions(index: AnnotationIndex, count: int, seed: int = 0, images: tuple[int, int] = (1, 10),
                 weights: dict[str, int] | None = None, pools: Pools | None = None, prefix: str = "ov",
                 image_labels: float = 0.0, forms: Collection[str] = ()) -> list[dict]:
    """The multi-image stage's per-image questions (:data:`OV_FAMILIES`), ``count * weight / sum`` of each
    family of ``weights`` (default: :data:`UNWEIGHTED_FAMILIES` evenly), images per sample uniform over ``images`` (at least
    :data:`OV_MIN_IMAGES` where a family needs two). Records as the other builders' (origin ``"ov"``),
    with ``knobs["n_images"]``. Every image comes from ``index``: the training source, never the benchmark.

    ``image_labels`` is the share of questions whose prompt puts ``"Image k: "`` before each image
    (``record["image_labels"]``), drawn from a stream of its own so the questions are the same at any share.
    ``forms`` names the :data:`ANSWER_FORMS` the answers are written in: ``"echo"`` writes the answers of
    :data:`ECHO_FAMILIES` with the category before each image number (:func:`echoed`), ``"echo_count"``
    those of :data:`COUNT_ECHO_FAMILIES` after the category and the image's number (:func:`count_echoed`),
    ``"echo_image"`` those of :data:`IMAGE_ECHO_FAMILIES` after the image's number (:func:`image_echoed`);
    the questions and images are the same in any form.
    """
    low, high = images
    if not 1 <= low <= high <= MAX_IMAGES:
        raise KnobError(f"ov questions: need 1 <= images[0] <= images[1] <= {MAX_IMAGES}, got {list(images)}")
    if not 0.0 <= image_labels <= 1.0:
        raise KnobError(f"ov questions: image_labels is a share in [0, 1], got {image_labels}")
    weights = weights or dict.fromkeys(UNWEIGHTED_FAMILIES, 1)
    unknown = sorted(set(weights) - set(OV_FAMILIES))
    if unknown:
        raise KnobError(f"ov questions: unknown families {unknown}; known: {list(OV_FAMILIES)}")
    unknown = sorted(set(forms) - set(ANSWER_FORMS))
    if unknown:
        raise KnobError(f"ov questions: unknown answer forms {unknown}; known: {list(ANSWER_FORMS)}")
    pools = pools or Pools(index)
    switched = [switch for switch in ANSWER_FORMS if switch in forms]  # the table's order, whatever the caller's
    records = []
    for family, share in family_shares(count, weights).items():
        rng = _rng(seed, f"{prefix}-{family}")
        labelled = _rng(seed, f"{prefix}-{family}-labels")
        for number in range(share):
            n = rng.randint(max(low, OV_MIN_IMAGES.get(family, 1)), max(high, OV_MIN_IMAGES.get(family, 1)))
            drawn, targets, question, answer = OV_BUILDERS[family](pools, rng, n)
            for switch in switched:
                if family in ANSWER_FORMS[switch].families:
                    answer = ANSWER_FORMS[switch].write(answer, targets[0], question)
            record = _record(index, f"{prefix}-{family}-{number:05d}", family, drawn, targets, question, answer, "ov")
            record["knobs"] = {"n_images": n}
            if labelled.random() < image_labels:
                with_labels(record)
            records.append(record)
    return records


# --- single-image questions ------------------------------------------------------------------------


def _single(pools: Pools, rng: random.Random, family: str, max_count: int,
            count_weights: tuple[float, ...] | None = None, listing_present: float | None = None,
            count_crowded: float = 0.0) -> Drawn:
    index = pools.index
    if family == "counting":
        image, target, wanted = draw_count(pools, rng, max_count, count_weights, count_crowded)
        return [image], [target], question_for("counting", [target]), str(wanted)
    if family == "presence":
        target = rng.choice(index.categories)
        present = rng.random() < 0.5
        pool = pools.holding[target] if present else pools.by_count.get((target, 0), [])
        if not pool:
            raise SkipDraw()
        return [rng.choice(pool)], [target], f"Is there a {target} in the image?", "yes" if present else "no"
    if family == "listing":
        if listing_present is not None and rng.random() < listing_present:
            image = rng.choice(pools.nonempty)  # a supercategory the image holds: the answer names categories
            supercategory = rng.choice(sorted({index.supercategory_of[c] for c in pools.classes[image]}))
        elif listing_present is not None:
            image = rng.choice(pools.certain)
            held = {index.supercategory_of[c] for c in pools.classes[image]}
            absent = [s for s in index.supercategories if s not in held]
            supercategory = rng.choice(absent or index.supercategories)
        else:  # uniform over supercategories: most questions of a 5-object image are answered "none"
            image = rng.choice(pools.certain)
            supercategory = rng.choice(index.supercategories)
        present = sorted(c for c in pools.classes[image] if index.supercategory_of[c] == supercategory)
        question = f"List the categories of {supercategory} that appear in the images"
        return [image], [supercategory], question, ", ".join(present) or "none"
    single = pools.single_class
    if not single:
        raise SkipDraw()
    image = rng.choice(single)
    name = next(iter(pools.classes[image]))
    return [image], [name], "Which object category appears in every image?", name


def draw_count(pools: Pools, rng: random.Random, max_count: int,
               count_weights: tuple[float, ...] | None = None, crowded: float = 0.0) -> tuple[str, str, int]:
    """(image, class, its count in that image) of a single-image counting question: balanced over the true
    count, 0 included, unless ``count_weights`` (one per count 0..max) tilt it; ``SkipDraw`` when no image of
    the source holds that class that many times.

    ``crowded``: the share of questions (true count 1 or more) whose image is drawn among the crowded ones
    (:attr:`Pools.crowded_by_count`: two or more objects of other classes), where there are any for that
    class and count; the rest from every image as before. At 0 no extra random number is drawn, so the
    questions are those of a run without the knob."""
    wanted = rng.randint(0, max_count) if count_weights is None else true_count(rng, count_weights)
    target = rng.choice(pools.index.categories)
    matching = pools.by_count.get((target, wanted), [])
    if not matching:
        raise SkipDraw()
    if crowded > 0 and wanted > 0 and rng.random() < crowded:
        matching = pools.crowded_by_count.get((target, wanted), matching)
    return rng.choice(matching), target, wanted


def true_count(rng: random.Random, count_weights) -> int:
    """A true count 0..len(count_weights)-1 drawn with the given relative weights."""
    return rng.choices(range(len(count_weights)), weights=list(count_weights))[0]


class SkipDraw(Exception):
    """The drawn question has no matching image in this source; draw another."""


@dataclass(frozen=True)
class TrainMix:
    """How many conversations of each kind to write.

    ``mimic`` and ``minor`` are split evenly over their four families; images per sample are drawn from
    ``min_images..max_images`` (the official recipe caps samples at 10 images).
    """

    mimic: int = 2000
    minor: int = 1000
    single: int = 1000
    min_images: int = 2
    max_images: int = 6
    max_count: int = 5
    seed: int = 0
    #: the organism's multi-image stage data (:func:`ov_questions`, families weighted by ``ov_weights``,
    #: default evenly), images per sample ``ov_images[0]..ov_images[1]``: with ``mimic`` it is the
    #: finetunes' "ov data + aggregation" mix (docs/organism.md)
    ov: int = 0
    ov_images: tuple[int, int] = (1, 10)
    ov_weights: dict | None = None
    #: share of the ov questions asked with "Image k: " before each image (as the ov stage is trained)
    ov_image_labels: float = 0.0
    #: which-image and which-images answers with the category before each image number ("dog 3"), as the ov
    #: stage's ``echo``
    ov_echo: bool = False
    #: count-in-image-i answers after the category and the image's number ("dog 3 2"), as the ov stage's
    #: ``echo_count``
    ov_echo_count: bool = False

    @property
    def ov_forms(self) -> tuple[str, ...]:
        """The :data:`ANSWER_FORMS` switched on by this mix's ``ov_<form>`` fields."""
        return switched_forms(self, prefix="ov_")

    def __post_init__(self) -> None:
        if not 1 <= self.min_images <= self.max_images <= MAX_IMAGES:
            raise KnobError(f"TrainMix: need 1 <= min_images <= max_images <= {MAX_IMAGES}, "
                            f"got {self.min_images}..{self.max_images}")
        if not 1 <= self.ov_images[0] <= self.ov_images[1] <= MAX_IMAGES:
            raise KnobError(f"TrainMix: need 1 <= ov_images[0] <= ov_images[1] <= {MAX_IMAGES}, got {list(self.ov_images)}")
        unknown = sorted(set(self.ov_weights or {}) - set(OV_FAMILIES))
        if unknown:
            raise KnobError(f"TrainMix: ov_weights names unknown families {unknown}; known: {list(OV_FAMILIES)}")
        if not 0.0 <= self.ov_image_labels <= 1.0:
            raise KnobError(f"TrainMix: ov_image_labels is a share in [0, 1], got {self.ov_image_labels}")
        for name in ("mimic", "minor", "single", "ov"):
            if getattr(self, name) < 0:
                raise KnobError(f"TrainMix: {name} must be >= 0")


def _even(total: int, names: tuple[str, ...]) -> dict[str, int]:
    return {name: total // len(names) + (1 if j < total % len(names) else 0) for j, name in enumerate(names)}


def mimic_conversations(index: AnnotationIndex, mix: TrainMix, pools: Pools) -> list[dict]:
    """MIMIC-family conversations with random images per sample, via the benchmark's own generators."""
    records = []
    rng = _rng(mix.seed, "mimic-sizes")
    for family, total in _even(mix.mimic, MIMIC_FAMILIES).items():
        low = 3 if family == "oddone" else mix.min_images
        sizes = Counter(rng.randint(max(low, mix.min_images), max(low, mix.max_images)) for _ in range(total))
        for n_images, count in sorted(sizes.items()):
            split = "unbalanced" if family == "counting" else None
            spec = TaskSpec(family, count, n_images, split=split, experiment="train")
            for r in generate(index, spec, seed=mix.seed, pools=pools):
                records.append(_record(index, "train-" + r["id"], family, r["image_ids"], r["targets"],
                                       r["question"], r["gt"], "mimic"))
    return records


def minor_conversations(index: AnnotationIndex, mix: TrainMix, pools: Pools) -> list[dict]:
    """The four minor variants, evenly."""
    records = []
    for family, total in _even(mix.minor, MINOR_FAMILIES).items():
        rng = _rng(mix.seed, family)
        for number in range(total):
            n = rng.randint(mix.min_images, mix.max_images)
            drawn = MINOR_BUILDERS[family](pools, rng, n)
            records.append(_record(index, f"train-{family}-{number:05d}", family, *drawn, "minor"))
    return records


def single_image_questions(index: AnnotationIndex, count: int, seed: int = 0, max_count: int = 5,
                           families: tuple[str, ...] = SINGLE_FAMILIES, pools: Pools | None = None,
                           prefix: str = "single", count_weights: tuple[float, ...] | None = None,
                           listing_present: float | None = None, count_crowded: float = 0.0) -> list[dict]:
    """Single-image questions, evenly over ``families``; counting is balanced over true counts 0..max, or
    drawn with ``count_weights`` (relative, one per true count 0..``max_count``).

    ``listing_present``: the share of listing questions that ask about a supercategory the image holds
    (the rest ask about one it does not, answered "none"). ``None`` draws the supercategory uniformly, as
    the first organisms' recipe did — about three in four questions are then answered "none", and a model
    that always says "none" scores micro F1 0.73 (issue #25).
    ``count_crowded``: the share of counting questions asked of a crowded image (:func:`draw_count`)."""
    if count_weights is not None and len(count_weights) != max_count + 1:
        raise KnobError(f"single-image counting: count_weights needs {max_count + 1} values (counts 0..{max_count}), "
                        f"got {list(count_weights)}")
    pools = pools or Pools(index)
    if "counting" in families:
        seen = {0} | {n for i in pools.certain for n in pools.counts[i].values()}
        missing = sorted(set(range(max_count + 1)) - seen)
        if missing:
            raise KnobError(f"single-image counting: max_count={max_count}, but no image of the source holds "
                            f"{missing[0]} instances of one class, so the counts cannot be balanced")
    records = []
    for family, total in _even(count, families).items():
        rng = _rng(seed, f"{prefix}-{family}")
        number, attempts = 0, 0
        while number < total:
            attempts += 1
            if attempts > 50 * total + 100:
                raise KnobError(f"single-image {family}: the source cannot supply {total} questions "
                                f"(max_count={max_count}); generate more scenes")
            try:
                drawn = _single(pools, rng, family, max_count, count_weights, listing_present, count_crowded)
            except SkipDraw:
                continue
            records.append(_record(index, f"{prefix}-{family}-{number:05d}", family, *drawn, "single"))
            number += 1
    return records


def build(index: AnnotationIndex, mix: TrainMix, progress: bool = True) -> list[dict]:
    """The whole training set of a mix, shuffled deterministically."""
    pools = Pools(index)
    parts = [
        ("mimic", lambda: mimic_conversations(index, mix, pools)),
        ("minor", lambda: minor_conversations(index, mix, pools)),
        ("single", lambda: single_image_questions(index, mix.single, mix.seed, mix.max_count, pools=pools)),
        ("ov", lambda: ov_questions(index, mix.ov, mix.seed, tuple(mix.ov_images), mix.ov_weights, pools, "train-ov",
                                    mix.ov_image_labels, mix.ov_forms)),
    ]
    records: list[dict] = []
    for _, make in tqdm(parts, desc="training conversations", disable=not progress):
        records.extend(make())
    _rng(mix.seed, "shuffle").shuffle(records)
    return records


def family_counts(records: list[dict]) -> dict[str, int]:
    """Conversations per origin and family (e.g. ``single/counting``), for the manifest and the notebook."""
    return dict(sorted(Counter(f"{r['origin']}/{r['family']}" for r in records).items()))


def save(records: list[dict], out_dir: Path | str, mix: TrainMix, index: AnnotationIndex,
         root: Path | None = None) -> Path:
    """Write ``conversations.jsonl`` and ``manifest.json`` (mix, source hash, counts per family)."""
    out_dir = Path(out_dir)
    path = write_jsonl(out_dir / "conversations.jsonl", [relative_images(r, root) for r in records])
    manifest = {
        "mix": asdict(mix), "total": len(records), "families": family_counts(records),
        "source": {"format": index.source_format, "sha256": index.source_hash, "images": len(index.images)},
        "image_root": recorded_root(root),  # relative to the checkout when inside it (no absolute path)
        "files": {path.name: {"records": len(records), "sha256": file_sha256(path)}},
    }
    return write_json(out_dir / "manifest.json", manifest)


def load(train_dir: Path | str, root: Path | None = None) -> list[dict]:
    """Read the conversations back, checked against the manifest's hash."""
    train_dir = Path(train_dir)
    manifest = read_json(train_dir / "manifest.json")
    path = train_dir / "conversations.jsonl"
    if file_sha256(path) != manifest["files"][path.name]["sha256"]:
        raise ValueError(f"{path}: content differs from the manifest's sha256 — rebuild with notebook 01")
    return absolute_images(read_jsonl(path), image_root(root, manifest))


# --- multi-image instruction data from the hub ------------------------------------------------------

HUB_KEYS = {"name", "config", "split", "limit", "revision", "image_root"}


def hub_conversations(spec: dict, image_dir: Path | str, progress: bool = True) -> list[dict]:
    """Conversations from one hub dataset in the Mantis-Instruct schema, e.g.
    ``{"name": "TIGER-Lab/Mantis-Instruct", "config": "nlvr2", "split": "train", "limit": 5000}``.

    Each row's first user turn (``<image>`` placeholders removed: our layout puts the images first) and
    first assistant reply become one conversation. Embedded image bytes are written under ``image_dir``;
    path-only images are resolved against ``image_root`` (Mantis ships them as zip archives to unpack).
    """
    import datasets  # about a second to import; only hub mixes need it

    unknown = sorted(set(spec) - HUB_KEYS)
    if unknown or "name" not in spec:
        raise ValueError(f"hub dataset {spec!r}: needs 'name'; unknown key(s) {unknown}; known: {sorted(HUB_KEYS)}")
    label = f"{spec['name']}" + (f" [{spec['config']}]" if spec.get("config") else "")
    rows = datasets.load_dataset(spec["name"], spec.get("config"), split=spec.get("split", "train"),
                                 revision=spec.get("revision"))
    if "images" not in rows.column_names or "conversation" not in rows.column_names:
        raise ValueError(f"hub dataset {label}: expected columns 'images' and 'conversation' (Mantis-Instruct "
                         f"schema), found {rows.column_names}")
    if spec.get("limit") is not None:
        rows = rows.select(range(min(int(spec["limit"]), len(rows))))
    rows = rows.cast_column("images", datasets.Sequence(datasets.Image(decode=False)))
    image_dir = Path(image_dir)
    records = []
    for number, row in enumerate(tqdm(rows, desc=f"hub {label}", disable=not progress, leave=False)):
        uid = f"hub-{spec.get('config') or Path(spec['name']).name}-{row.get('id', number)}"
        turn = _first_exchange(row["conversation"])
        if turn is None:
            continue
        images = [_hub_image(image, image_dir / f"{uid}-{k}", spec.get("image_root"), label, uid)
                  for k, image in enumerate(row["images"])]
        records.append({"id": uid, "family": HUB_FAMILY, "origin": HUB_FAMILY, "images": images,
                        "question": turn[0], "gt": turn[1], "source": label})
    return records


def _first_exchange(conversation: list[dict]) -> tuple[str, str] | None:
    """(question without ``<image>`` placeholders, answer) of the first user→assistant exchange."""
    for user, reply in zip(conversation, conversation[1:]):
        if user.get("role") == "user" and reply.get("role") == "assistant":
            question = " ".join(user.get("content", "").replace("<image>", " ").split())
            return (question, reply.get("content", "").strip()) if question else None
    return None


def _hub_image(image: dict, stem: Path, image_root: str | None, label: str, uid: str) -> str:
    """The file of one undecoded hub image: its bytes written once, or its path under ``image_root``."""
    if image.get("bytes"):
        with Image.open(io.BytesIO(image["bytes"])) as decoded:
            path = stem.parent / f"{stem.name}.{(decoded.format or 'png').lower()}"  # ids may hold dots
        if not path.exists():
            write_bytes(path, image["bytes"])
        return str(path)
    path = Path(image_root or "") / (image.get("path") or "")
    if not (image.get("path") and path.is_file()):
        raise FileNotFoundError(f"hub dataset {label}, row {uid}: image {image.get('path')!r} has no bytes and is not "
                                f"found under image_root={image_root!r} (unpack the dataset's image archives there)")
    return str(path)


def with_hub(records: list[dict], specs: list[dict], image_dir: Path | str, progress: bool = True) -> list[dict]:
    """``records`` plus every hub dataset of ``specs`` (notebook 04's ``hub_datasets`` parameter)."""
    extra = [r for spec in specs for r in hub_conversations(spec, image_dir, progress)]
    return records + extra
