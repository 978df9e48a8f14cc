"""MIMIC task generators: Counting, Listing, Common and Odd-One, built from an annotation index.

A :class:`TaskSpec` names a task and its knobs (images, spread, distractors, k, Balanced/Unbalanced
answers); :func:`generate` returns exactly that many records, each with the evidence (every image's class
counts) from which a test recomputes its answer. The paper leaves several definitions open; ours — what
spread and distractors mean, k summed counts and k supercategories, every named concept present, Odd-One's
minority — are in docs/design.md (*Tasks and knobs*), each tested in ``tests/unit/test_tasks.py`` or
``tests/unit/test_mimic_benchmark.py``. Knobs the data cannot meet raise a :class:`KnobError` naming the knob.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Callable, Iterable

from tqdm.auto import tqdm

from mimic_utils.data.annotations import AnnotationIndex

FAMILIES = ("counting", "listing", "common", "oddone")
SPLITS = ("balanced", "unbalanced")
MAX_IMAGES = 10
#: Attempts at one sample before concluding that the knobs cannot be met.
ATTEMPTS_PER_SAMPLE = 200
#: Balanced Counting with k > 1 keeps a covering draw only when it totals the answer asked for (about 4% of
#: draws for the rarest total of the cpu plan), so it gets more attempts.
ATTEMPTS_BALANCED_K = 2000


class KnobError(ValueError):
    """The requested knobs cannot be met with the data at hand; the message names the knob."""


@dataclass(frozen=True)
class TaskSpec:
    """A batch of ``count`` samples of one task family under fixed knobs.

    ``experiment`` labels the sweep the batch belongs to (e.g. ``"images"``, ``"spread"``); it goes into
    every record's ``task`` label and id, so results can be grouped by it.
    """

    family: str
    count: int
    n_images: int
    spread: int | None = None
    k: int = 1
    split: str | None = None  # counting only: "balanced" or "unbalanced"
    answer_range: tuple[int, int] = (1, 10)  # counting balanced: inclusive range of totals
    experiment: str = "main"

    def __post_init__(self) -> None:
        validate_spec(self)

    @property
    def name(self) -> str:
        """A stable label: family, split, experiment and knobs, e.g. ``counting-balanced-spread-n4-s2-k1``."""
        spread = "r" if self.spread is None else str(self.spread)
        parts = [self.family, self.split or "", self.experiment, f"n{self.n_images}", f"s{spread}", f"k{self.k}"]
        return "-".join(p for p in parts if p)


def validate_spec(spec: TaskSpec) -> None:
    """Reject knob combinations that no data could satisfy, naming the knob."""
    where = f"TaskSpec({spec.family}, experiment={spec.experiment!r})"
    if spec.family not in FAMILIES:
        raise KnobError(f"{where}: family must be one of {FAMILIES}, got {spec.family!r}")
    if spec.count < 1:
        raise KnobError(f"{where}: count must be at least 1, got {spec.count}")
    if not 1 <= spec.n_images <= MAX_IMAGES:
        raise KnobError(f"{where}: n_images must be in 1..{MAX_IMAGES}, got {spec.n_images}")
    if spec.k < 1:
        raise KnobError(f"{where}: k must be at least 1, got {spec.k}")
    if spec.family in ("common", "oddone") and spec.k != 1:
        raise KnobError(f"{where}: k={spec.k}, but {spec.family} has a single-class answer, so k must be 1")
    if spec.family == "counting":
        if spec.split not in SPLITS:
            raise KnobError(f"{where}: split must be 'balanced' or 'unbalanced' for counting, got {spec.split!r}")
        low, high = spec.answer_range
        if not 1 <= low <= high:
            raise KnobError(f"{where}: answer_range must satisfy 1 <= low <= high, got {spec.answer_range}")
    elif spec.split is not None:
        raise KnobError(f"{where}: split applies to counting only, got {spec.split!r}")
    if spec.family == "common" and spec.spread not in (None, spec.n_images):
        raise KnobError(f"{where}: common holds its class in every image, so spread must equal n_images")
    if spec.family == "oddone":
        if spec.n_images < 3:
            raise KnobError(f"{where}: oddone needs n_images >= 3 for a minority to exist, got {spec.n_images}")
        spread = spec.spread or 1
        if not 1 <= spread < spec.n_images / 2:
            raise KnobError(f"{where}: oddone spread must satisfy 1 <= spread < n_images/2, got {spread}")
    elif spec.spread is not None and not 1 <= spec.spread <= spec.n_images:
        raise KnobError(f"{where}: spread must be in 1..n_images={spec.n_images}, got {spec.spread}")
    if spec.family == "counting" and spec.split == "balanced" and spec.spread is not None:
        if spec.answer_range[1] < spec.spread:
            raise KnobError(
                f"{where}: answer_range {spec.answer_range} lies below spread {spec.spread}: each image that "
                f"holds the target adds at least one instance"
            )


#: objects of other classes an image must hold to count as crowded (:attr:`Pools.crowded_by_count`)
CROWD_OTHERS = 2


class Pools:
    """Look-up tables over an index: which images hold which classes, and how many instances.

    Built once per index so that generating 10,000 questions stays fast (target: under 30 s).
    """

    def __init__(self, index: AnnotationIndex) -> None:
        self.index = index
        self.ids: list[str] = list(index.images)
        self.counts: dict[str, Counter[str]] = {i: index.images[i].counts() for i in self.ids}
        self.classes: dict[str, frozenset[str]] = {i: frozenset(c) for i, c in self.counts.items()}
        # Classes a reader dropped from an image (crowd, group-of, too small): their count there is unknown,
        # so the image can neither hold them nor stand as a distractor for them.
        self.uncertain: dict[str, frozenset[str]] = {i: frozenset(index.dropped_categories(i)) for i in self.ids}
        self.holding: dict[str, list[str]] = {c: [] for c in index.categories}
        for image_id in self.ids:
            if self.uncertain[image_id]:
                continue
            for category in self.classes[image_id]:
                self.holding[category].append(image_id)

    def target_count(self, image_id: str, targets: Iterable[str]) -> int:
        """Instances of the target classes on one image."""
        counts = self.counts[image_id]
        return sum(counts.get(t, 0) for t in targets)

    @cached_property
    def certain(self) -> list[str]:
        """Images with no dropped (uncertain) annotation: safe for any question about any class."""
        return [i for i in self.ids if not self.uncertain[i]]

    @cached_property
    def nonempty(self) -> list[str]:
        """Certain images that hold at least one object (a question about a class they hold has one)."""
        return [i for i in self.certain if self.classes[i]]

    @cached_property
    def by_count(self) -> dict[tuple[str, int], list[str]]:
        """Certain images per (class, instances on the image), 0 included, in index order: single-image
        questions draw from these instead of scanning every image per question (70,000-image pools)."""
        table: dict[tuple[str, int], list[str]] = {}
        for image_id in self.certain:
            counts = self.counts[image_id]
            for category in self.index.categories:
                table.setdefault((category, counts.get(category, 0)), []).append(image_id)
        return table

    @cached_property
    def crowded_by_count(self) -> dict[tuple[str, int], list[str]]:
        """:attr:`by_count` restricted to images that hold at least :data:`CROWD_OTHERS` objects of other
        classes beside the counted ones: where counting must pick its class out of a crowd (the organism's
        counting at true count 1 fell from 0.80 with at most one other object to 0.46 with two or more on
        MIMIC's 1-image Unbalanced questions, docs/organism.md)."""
        objects = {i: sum(self.counts[i].values()) for i in self.certain}
        table: dict[tuple[str, int], list[str]] = {}
        for (category, count), images in self.by_count.items():
            if count == 0:  # a count of 0 is never asked of a crowd (traindata.draw_count)
                continue
            crowded = [i for i in images if objects[i] - count >= CROWD_OTHERS]
            if crowded:
                table[(category, count)] = crowded
        return table

    @cached_property
    def single_class(self) -> list[str]:
        """Certain images that hold exactly one class, in index order (single-image naming questions)."""
        return [i for i in self.certain if len(self.classes[i]) == 1]

    @cached_property
    def views(self) -> dict[str, "ConceptView"]:
        """What Counting (classes) and Listing (supercategories) questions can name, over certain images."""
        supers = {i: frozenset(self.index.supercategory_of[c] for c in self.classes[i]) for i in self.certain}
        super_holders = {s: [i for i in self.certain if s in supers[i]] for s in self.index.supercategories}
        return {"counting": ConceptView(self.holding, {i: self.classes[i] for i in self.certain}),
                "listing": ConceptView(super_holders, supers)}

    @cached_property
    def only(self) -> dict[str, list[str]]:
        """Images whose class set is exactly one class, per class (the Odd-One majority pool)."""
        pools: dict[str, list[str]] = {}
        for image_id in self.single_class:
            pools.setdefault(next(iter(self.classes[image_id])), []).append(image_id)
        return pools


@dataclass(frozen=True)
class ConceptView:
    """The concepts one family's questions name (classes or supercategories): the certain images that
    hold each concept (``holders``, in index order) and the concepts each certain image holds (``held``)."""

    holders: dict[str, list[str]]
    held: dict[str, frozenset[str]]
    _rich: dict[tuple[str, int], list[str]] = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def present(self) -> list[str]:
        """Concepts with at least one holding image, in source order: the only ones a question may name."""
        return [c for c, images in self.holders.items() if images]

    @cached_property
    def most_held(self) -> int:
        """The most concepts any one image holds (bounds k on few images)."""
        return max((len(c) for c in self.held.values()), default=0)

    def holders_with(self, concept: str, need: int) -> list[str]:
        """Holders of ``concept`` that hold at least ``need`` concepts (cached: one scan per pair, not per
        sample)."""
        if (concept, need) not in self._rich:
            self._rich[concept, need] = [i for i in self.holders[concept] if len(self.held[i]) >= need]
        return self._rich[concept, need]

    def holding(self, concepts: Iterable[str]) -> list[str]:
        """Images holding any of ``concepts``, sorted (a stable order for the random draws)."""
        return sorted({i for c in concepts for i in self.holders[c]})

    def covers(self, images: Iterable[str], concepts: Iterable[str]) -> bool:
        """Whether every concept is held by at least one of the images."""
        held = frozenset().union(*(self.held[i] for i in images))
        return set(concepts) <= held


def _rng(seed: int, spec: TaskSpec) -> random.Random:
    """A generator seeded by the run seed and the spec's name, so batches do not depend on each other."""
    digest = hashlib.sha256(f"{seed}:{spec.name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _members(index: AnnotationIndex, supercategories: Iterable[str]) -> list[str]:
    return [c for s in supercategories for c in index.members(s)]


def _pick_distractors(pools: Pools, rng: random.Random, targets: list[str], n: int, used: set[str]) -> list[str]:
    """``n`` images holding none of ``targets`` and not in ``used``; raises if there are too few."""
    if n == 0:
        return []
    banned = set(targets)
    chosen: list[str] = []
    for _ in range(ATTEMPTS_PER_SAMPLE * 4):
        image_id = rng.choice(pools.ids)
        if image_id in used or image_id in chosen:
            continue
        if not (pools.classes[image_id] & banned) and not (pools.uncertain[image_id] & banned):
            chosen.append(image_id)
            if len(chosen) == n:
                return chosen
    raise _Retry()


class _Retry(Exception):
    """One attempt at a sample failed; the caller draws again."""


def _spread(spec: TaskSpec, rng: random.Random) -> int:
    return spec.spread if spec.spread is not None else rng.randint(1, spec.n_images)


def _named(pools: Pools, spec: TaskSpec, rng: random.Random, total: int | None) -> tuple[list[str], list[str], dict]:
    """One Counting or Listing sample; ``total`` fixes the answer (Balanced counting) or is None."""
    view = pools.views[spec.family]
    spread = _spread(spec, rng)
    if total is None or spec.k > 1:
        # k > 1 concepts, Balanced: draw concepts and images that cover each other, keep the draw when it
        # totals the answer asked for (drawing the concepts first almost never finds them all on one image)
        targets, chosen = _cover(view, rng, spread, spec.k)
        if total is not None and sum(pools.target_count(i, targets) for i in chosen) != total:
            raise _Retry()
    else:
        targets = rng.sample(view.present, spec.k)
        chosen = _images_summing_to(pools, rng, view.holding(targets), targets, spread, total)
        if not view.covers(chosen, targets):
            raise _Retry()
    banned = targets if spec.family == "counting" else _members(pools.index, targets)
    chosen += _pick_distractors(pools, rng, banned, spec.n_images - spread, set(chosen))
    return chosen, targets, {"spread": spread}


def _cover(view: ConceptView, rng: random.Random, spread: int, k: int) -> tuple[list[str], list[str]]:
    """``k`` concepts and ``spread`` images such that every image holds a concept and every concept is in
    an image: first min(spread, k) concept-image pairs, then either further images holding a concept
    (spread > k) or further concepts from those the images hold (k > spread; each image then needs at
    least ceil(k / spread) concepts of its own)."""
    need = -(-k // spread)
    targets: list[str] = []
    chosen: list[str] = []
    for _ in range(min(spread, k)):
        concept = rng.choice([c for c in view.present if c not in targets])
        targets.append(concept)
        chosen.append(_draw_new(rng, view.holders_with(concept, need), chosen))
    if k > spread:
        extra = sorted(frozenset().union(*(view.held[i] for i in chosen)) - set(targets))
        if len(extra) < k - spread:
            raise _Retry()
        return targets + rng.sample(extra, k - spread), chosen
    rest = [i for i in view.holding(targets) if i not in chosen]
    if len(rest) < spread - k:
        raise _Retry()
    return targets, chosen + rng.sample(rest, spread - k)


def _draw_new(rng: random.Random, options: list[str], chosen: list[str]) -> str:
    """A random option not in ``chosen``, by rejection (options run to thousands, chosen to a few)."""
    for _ in range(len(chosen) * 4 + 1 if options else 0):
        pick = rng.choice(options)
        if pick not in chosen:
            return pick
    raise _Retry()


def _images_summing_to(pools: Pools, rng: random.Random, holding: list[str], targets: list[str],
                       spread: int, total: int) -> list[str]:
    """``spread`` distinct holding images whose target counts add up to exactly ``total``."""
    by_count: dict[int, list[str]] = {}
    for image_id in holding:
        by_count.setdefault(pools.target_count(image_id, targets), []).append(image_id)
    available = sorted(by_count)
    if total < spread or total > spread * available[-1]:
        raise _Retry()
    for _ in range(20):
        parts = _random_composition(rng, total, spread, available)
        if parts is None:
            continue
        need = Counter(parts)
        if all(len(by_count[c]) >= m for c, m in need.items()):
            return [image_id for c, m in need.items() for image_id in rng.sample(by_count[c], m)]
    raise _Retry()


def _random_composition(rng: random.Random, total: int, parts: int, allowed: list[int]) -> list[int] | None:
    """Random ``parts`` values from ``allowed`` (all >= 1) summing to ``total``, or None if stuck."""
    values: list[int] = []
    remaining, top = total, max(allowed)
    for left in range(parts - 1, -1, -1):
        # keep what remains reachable by the ``left`` parts still to draw
        options = [a for a in allowed if a >= 1 and left <= remaining - a <= left * top]
        if not options:
            return None
        values.append(rng.choice(options))
        remaining -= values[-1]
    return values


def _common(pools: Pools, spec: TaskSpec, rng: random.Random, _: int | None) -> tuple[list[str], list[str], dict]:
    """One Common sample: n images whose class sets intersect in exactly one class."""
    target = rng.choice(pools.index.categories)
    holding = pools.holding.get(target, [])
    if len(holding) < spec.n_images:
        raise _Retry()
    chosen = rng.sample(holding, spec.n_images)
    if frozenset.intersection(*(pools.classes[i] for i in chosen)) != {target}:
        raise _Retry()
    return chosen, [target], {"spread": spec.n_images}


def _oddone(pools: Pools, spec: TaskSpec, rng: random.Random, _: int | None) -> tuple[list[str], list[str], dict]:
    """One Odd-One sample: majority images hold only class M; ``spread`` odd images hold C (and maybe M)."""
    spread = spec.spread or 1
    majority_pool = pools.only
    candidates = [m for m, images in majority_pool.items() if len(images) >= spec.n_images - spread]
    if not candidates:
        raise _Retry()
    majority = rng.choice(sorted(candidates))
    odd = rng.choice([c for c in pools.index.categories if c != majority])
    odd_pool = [i for i in pools.holding.get(odd, []) if pools.classes[i] <= {odd, majority}]
    if len(odd_pool) < spread:
        raise _Retry()
    chosen = rng.sample(majority_pool[majority], spec.n_images - spread) + rng.sample(odd_pool, spread)
    return chosen, [odd], {"spread": spread, "majority": majority}


BUILDERS: dict[str, Callable] = {"counting": _named, "listing": _named, "common": _common, "oddone": _oddone}


def question_for(family: str, targets: list[str]) -> str:
    """The question text of a sample (the prompt module adds the image tokens and the official suffixes)."""
    if family == "counting":
        return f"How many {_join(targets)} objects are there in total across all images?"
    if family == "listing":
        return f"List the categories of {_join(targets)} that appear in the images"
    if family == "common":
        return "Which object category appears in every image?"
    return "Which object category appears in only a minority of the images?"


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def answer_for(family: str, targets: list[str], evidence: list[dict], supercategory_of: dict[str, str]) -> str:
    """The ground truth from the evidence alone; records use it and tests recompute with it."""
    counts = [Counter(e["counts"]) for e in evidence]
    if family == "counting":
        return str(sum(c[t] for c in counts for t in targets))
    if family == "listing":
        present = {cat for c in counts for cat, n in c.items() if n > 0 and supercategory_of[cat] in targets}
        return ", ".join(sorted(present))
    return targets[0]


def source_cap(pools: Pools, k: int, holding_images: int) -> int:
    """The largest total any ``k`` classes reach over ``holding_images`` images of the source (with one
    holding image: the most instances of k classes any single image holds)."""
    per_class = sorted(
        (sum(sorted((pools.counts[i][c] for i in pools.holding[c]), reverse=True)[:holding_images])
         for c in pools.index.categories), reverse=True)
    return sum(per_class[:k])


def balanced_range(spec: TaskSpec, pools: Pools) -> tuple[int, int]:
    """The answer range Balanced counting is spread over: ``answer_range`` capped by what the source can
    hold (:func:`source_cap` over the images that may hold the target) and floored by the spread (each
    holding image adds at least one instance)."""
    holding_images = spec.spread or spec.n_images
    cap = source_cap(pools, spec.k, holding_images)
    low, high = max(spec.answer_range[0], spec.spread or 1), min(spec.answer_range[1], cap)
    if high < low:
        raise KnobError(f"counting balanced (experiment {spec.experiment!r}, n_images={spec.n_images}): "
                        f"answer_range {spec.answer_range} is out of reach — the source holds at most {cap} "
                        f"instances of {spec.k} class(es) over {holding_images} image(s)")
    return low, high


def _balanced_totals(spec: TaskSpec, rng: random.Random, pools: Pools) -> list[int | None]:
    """Per-sample answer targets: exactly even over :func:`balanced_range` (Balanced), else None."""
    if spec.split != "balanced":
        return [None] * spec.count
    low, high = balanced_range(spec, pools)
    values = list(range(low, high + 1))
    totals = [values[i % len(values)] for i in range(spec.count)]
    rng.shuffle(totals)
    return totals


def generate(index: AnnotationIndex, spec: TaskSpec, seed: int = 0, pools: Pools | None = None) -> list[dict]:
    """Exactly ``spec.count`` records of one task family, or a :class:`KnobError` saying why not."""
    pools = pools or Pools(index)
    check_concepts(spec, pools)
    rng = _rng(seed, spec)
    builder = BUILDERS[spec.family]
    records: list[dict] = []
    seen: set[tuple] = set()
    attempts = ATTEMPTS_BALANCED_K if spec.split == "balanced" and spec.k > 1 else ATTEMPTS_PER_SAMPLE
    for number, total in enumerate(_balanced_totals(spec, rng, pools)):
        for _ in range(attempts):
            try:
                images, targets, knobs = builder(pools, spec, rng, total)
            except _Retry:
                continue
            key = (tuple(sorted(images)), tuple(targets))
            if key not in seen:
                seen.add(key)
                break
        else:
            raise KnobError(_explain_failure(spec, total, index))
        rng.shuffle(images)
        records.append(_record(index, spec, number, images, targets, knobs))
    return records


def check_concepts(spec: TaskSpec, pools: Pools) -> None:
    """Refuse a k the source cannot meet, naming k: too few concepts with instances, or (k above the
    number of images) no image holding enough named concepts, since every named concept must be present."""
    if spec.family not in pools.views:
        return
    view, what = pools.views[spec.family], "classes" if spec.family == "counting" else "supercategories"
    where = f"{spec.family} (experiment {spec.experiment!r}, n_images={spec.n_images}): k={spec.k}"
    if len(view.present) < spec.k:
        raise KnobError(f"{where}, but only {len(view.present)} {what} have instances in the source")
    need = -(-spec.k // spec.n_images)
    if view.most_held < need:
        raise KnobError(f"{where} needs an image holding {need} {what}, but the source's images hold at most "
                        f"{view.most_held}: every named concept must be present in the sample")


def _explain_failure(spec: TaskSpec, total: int | None, index: AnnotationIndex) -> str:
    what = f"{spec.family} (experiment {spec.experiment!r}, n_images={spec.n_images}, spread={spec.spread}, k={spec.k})"
    if total is not None:
        return (f"{what}: found no {spec.spread or 'random'}-image combination whose total is {total} in "
                f"{ATTEMPTS_BALANCED_K if spec.k > 1 else ATTEMPTS_PER_SAMPLE} attempts; the source "
                f"({len(index.images)} images) lacks images with enough instances — narrow answer_range "
                f"(k sweep: k_answer_range) or generate more/denser scenes")
    if spec.family == "oddone":
        return (f"{what}: too few images that hold a single class (the majority pool) or odd images; "
                f"add single-class images to the source or lower n_images")
    return (f"{what}: could not find {spec.n_images} distinct images meeting the knobs in {ATTEMPTS_PER_SAMPLE} "
            f"attempts ({len(index.images)} source images); lower n_images/spread or use a larger source")


def _record(index: AnnotationIndex, spec: TaskSpec, number: int, images: list[str], targets: list[str],
            knobs: dict) -> dict:
    evidence = [{"image_id": i, "counts": dict(sorted(index.images[i].counts().items()))} for i in images]
    spread = knobs["spread"]
    return {
        "id": f"{spec.name}-{number:05d}",
        "family": spec.family,
        "task": spec.family if spec.split is None else f"{spec.family}_{spec.split}",
        "experiment": spec.experiment,
        "images": [str(index.images[i].path) for i in images],
        "image_ids": images,
        "question": question_for(spec.family, targets),
        "gt": answer_for(spec.family, targets, evidence, index.supercategory_of),
        "targets": targets,
        "knobs": {"n_images": spec.n_images, "spread": spread, "distractors": spec.n_images - spread,
                  "k": spec.k, "split": spec.split, **{k: v for k, v in knobs.items() if k != "spread"}},
        "evidence": evidence,
    }


# --- padded sweeps: one question, more images -----------------------------------------------------------


@dataclass(frozen=True)
class Pad:
    """One image added beside a question's target image: a source image, or a blank file. ``counts`` are its
    instances per class (empty for a blank image), the evidence the answer is recomputed from."""

    image_id: str
    path: str
    counts: dict[str, int]


def _keyed_rng(*parts: object) -> random.Random:
    """A generator seeded by its parts (run seed, question id, what it draws), independent of draw order."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def target_position(seed: int, base_id: str, n_images: int) -> int:
    """Where the target image sits among ``n_images``: drawn per question and image count, the same for
    every kind of padding, so blank- and distractor-padded versions of a question differ only in the pads."""
    return _keyed_rng(seed, base_id, "position", n_images).randrange(n_images)


def distractor_pads(pools: Pools, record: dict, count: int, seed: int) -> list[Pad]:
    """``count`` distinct source images holding none of the record's targets (Counting: the classes;
    Listing: every member of the supercategories), drawn once per question in a fixed order, so the
    distractors at d are the first d of those at any larger d (nested). Raises a :class:`KnobError` naming
    ``distractors`` when the source has too few."""
    banned = record["targets"] if record["family"] == "counting" else _members(pools.index, record["targets"])
    rng = _keyed_rng(seed, record["id"], "distractors")
    try:
        chosen = _pick_distractors(pools, rng, banned, count, set(record["image_ids"]))
    except _Retry:
        raise KnobError(f"distractors: {count} images without {banned} for {record['id']} not found in "
                        f"{ATTEMPTS_PER_SAMPLE * 4} draws from {len(pools.ids)} source images") from None
    return [Pad(i, str(pools.index.images[i].path), dict(sorted(pools.counts[i].items()))) for i in chosen]


def padded_record(base: dict, experiment: str, n_images: int, pads: list[Pad], seed: int,
                  supercategory_of: dict[str, str]) -> dict:
    """The 1-image question ``base`` with ``n_images - 1`` pads beside its target image: the same question,
    targets and answer, recomputed from the evidence (a pad that changed it is a bug, and raises). The
    record keeps ``base_id`` so that the same question can be paired across image counts."""
    if len(base["images"]) != 1 or len(pads) < n_images - 1:
        raise KnobError(f"{experiment}: {base['id']} needs one image and {n_images - 1} pads, "
                        f"has {len(base['images'])} image(s) and {len(pads)} pads")
    target = Pad(base["image_ids"][0], base["images"][0], base["evidence"][0]["counts"])
    chosen = list(pads[:n_images - 1])
    chosen.insert(target_position(seed, base["id"], n_images), target)
    evidence = [{"image_id": p.image_id, "counts": dict(p.counts)} for p in chosen]
    gt = answer_for(base["family"], base["targets"], evidence, supercategory_of)
    if gt != base["gt"]:
        raise ValueError(f"{experiment}: padding {base['id']} changed its answer from {base['gt']!r} to {gt!r}")
    blank = experiment == "blank"
    number = base["id"].rsplit("-", 1)[1]
    name = "-".join(p for p in (base["family"], base["knobs"].get("split") or "", experiment, f"n{n_images}",
                                "s1", f"k{base['knobs']['k']}") if p)
    return {
        **base, "id": f"{name}-{number}", "experiment": experiment, "base_id": base["id"],
        "images": [p.path for p in chosen], "image_ids": [p.image_id for p in chosen], "evidence": evidence,
        "knobs": {**base["knobs"], "n_images": n_images, "spread": 1,
                  "distractors": 0 if blank else n_images - 1, "blank": n_images - 1 if blank else 0},
    }


def generate_all(index: AnnotationIndex, specs: list[TaskSpec], seed: int = 0, progress: bool = True,
                 pools: Pools | None = None) -> list[dict]:
    """Records for a whole plan of specs, in order, with one progress bar (``pools`` reused if given)."""
    pools = pools or Pools(index)
    records: list[dict] = []
    bar = tqdm(specs, desc="MIMIC questions", unit="batch", disable=not progress)
    for spec in bar:
        records.extend(generate(index, spec, seed, pools))
        bar.set_postfix(questions=len(records))
    ids = [r["id"] for r in records]
    if len(ids) != len(set(ids)):
        dup = [i for i, n in Counter(ids).items() if n > 1][:3]
        raise KnobError(f"the plan repeats specs, giving duplicate ids such as {dup}; give them distinct experiments")
    return records


def spec_dict(spec: TaskSpec) -> dict:
    """A spec as plain data for the manifest."""
    return {**asdict(spec), "answer_range": list(spec.answer_range), "name": spec.name}
