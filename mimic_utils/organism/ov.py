"""The organism's multi-image instruction stage: ``ov`` is ``si`` trained further on 1-10-image samples.

    python -m mimic_utils.organism --profile cpu --stage ov      # or: make organism-ov

LLaVA-OneVision's ``-ov`` checkpoints are its single-image ``-si`` checkpoints trained further on
multi-image data; the paper studies the ``-ov`` models. This is that step in miniature: the committed
single-image organism (``outputs/<profile>/models/si``) learns questions that need it to keep images apart
and read each one (:data:`mimic_utils.data.traindata.OV_FAMILIES`: how many X in image i, which images
contain X, does each image contain X, which image is the only one with X, how many images, what is in
image i) on 1-10-image samples of its own rendered training stream, while the single-image families of
its stage 2 (MIMIC-format counting, listing and naming, presence, multiple choice) are rehearsed so its
skills and answer formats stay. It never sees one of the four MIMIC aggregation questions (total count,
listing over the images, common, odd-one): those are what the benchmark measures and what notebook 04's
data-centric remedy adds.

Training reuses the organism's machinery: the frozen tower's cached block outputs, the merger and the
language model trained by :func:`mimic_utils.organism.recipe.language_stage` (checkpoints, resume, curves),
and batches bucketed by length to a token budget (:class:`mimic_utils.organism.recipe.LengthBuckets`). The
result is scored on held-out samples of 4-10 images (a scene stream never trained on) against the
issue's targets, each with its blind baseline, and on the single-image questions ``si`` was scored on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from mimic_utils.analysis import stats
from mimic_utils.artifacts import relative_to_root, write_json, write_text
from mimic_utils.data.traindata import (ANSWER_FORMS, COUNT_ECHO_FAMILIES, ECHO_FAMILIES, IMAGE_ECHO_FAMILIES,
                                        OV_FAMILIES, SINGLE_FAMILIES, ov_questions, read_back,
                                        switched_forms, with_labels)
from mimic_utils.machine import machine_record, speed_line
from mimic_utils.evaluation import harness
from mimic_utils.evaluation.harness import read_predictions
from mimic_utils.models import tiny
from mimic_utils.models.vlm import load_adapter, load_processor
from mimic_utils.organism import recipe as organism
from mimic_utils.organism.card import (OV_SINGLE_TOLERANCE, OV_TARGET_MINUTES, OV_TRAIN_STAGES, changed_keys, ov_time_met,
                                      ov_training_minutes, recorded_config, resumed_line, write_curves)
from mimic_utils.organism.config import CHOICE_FAMILY, OrganismConfig, valid_count_weights
from mimic_utils.organism.formats import (MIMIC_FORMAT_FAMILIES, card_questions, format_cells, format_probe,
                                         multi_format_lines, score_multi_image)
from mimic_utils.training.finetune import StageSchedule, checkpoint_progress

#: every family the stage trains: the per-image ones and the single-image ones of stage 2
STAGE_FAMILIES = (*OV_FAMILIES, *SINGLE_FAMILIES, CHOICE_FAMILY)
#: held-out targets inside 4-10-image samples (issue #25); single-image scores must stay within
#: SINGLE_TOLERANCE of si's on the same questions
TARGETS = {"image_count": 0.70, "which_image": 0.85, "image_total": 0.95}
SINGLE_TOLERANCE = OV_SINGLE_TOLERANCE
TARGET_MINUTES = OV_TARGET_MINUTES  # training of the stage, on 2 cores
#: the card's time line, in the order the steps run
TIME_ORDER = ("render", "cache", "conversations", "ov-warm", "ov-grow", "ov", "total")
TRAIN_STAGES = OV_TRAIN_STAGES  # the phases whose time is the card's training time
#: recipe keys added after ov checkpoints were first recorded: absent from a training.json, they mean the default
LATER_KEYS = ("bucket_by", "image_labels", "label_targets", "echo", "grow", "curves_by_images", "warm_weights",
              "echo_count", "echo_image", "count_weights", "count_crowded", "format_images")
#: recipe keys added after the committed ov's checkpoint folder was named: left out of :meth:`OvConfig.digest`
#: at their default
UNDIGESTED_DEFAULTS = ("echo_count", "echo_image", "count_weights", "count_crowded", "format_images")
#: the keys only the main phase (``ov``) reads: two recipes that differ in these alone train the same warm and
#: grow phases (:meth:`OvConfig.earlier_digest`), which one can then take from the other (organism/borrow.py);
#: so do the shares of ``weights`` when ``warm_weights`` is set (the families with a share must stay the same)
MAIN_PHASE_KEYS = ("steps", "lr", "conversations", "images")
#: the recipe's true-or-false keys
BOOL_KEYS = ("label_targets", "echo", "curves_by_images", "echo_count", "echo_image")
#: the card's sentence for a stage trained with ``echo``
ECHO_CARD_LINE = ("Echo: the answers of " + " and ".join(ECHO_FAMILIES) + " name the asked category right before "
                  "each image number (\"dog 3\" for \"image 3\"); held-out answers are read back into the "
                  "\"image 3\" form before exact scoring, so the blind baselines are those of the plain answers.")
#: the card's sentence for a stage trained with ``echo_count``
ECHO_COUNT_CARD_LINE = ("Count echo: the answers of " + " and ".join(COUNT_ECHO_FAMILIES) + " name the asked category "
                        "and the image's number right before the count (\"dog 3 2\" for two dogs in image 3); held-out "
                        "answers are read back to the count (only when they restate that category and image) before "
                        "exact scoring, so the blind baselines are those of the plain answers.")
#: the card's sentence for a stage trained with ``echo_image``
ECHO_IMAGE_CARD_LINE = ("Image echo: the answers of " + " and ".join(IMAGE_ECHO_FAMILIES) + " start with the named "
                        "image's number (\"3 dog\"); held-out answers are read back without it (only when it is that "
                        "image's number) before exact scoring, so the blind baselines are those of the plain answers.")
#: the card's sentence of each answer form the stage was trained with (traindata.ANSWER_FORMS)
FORM_CARD_LINES = {"echo": ECHO_CARD_LINE, "echo_count": ECHO_COUNT_CARD_LINE, "echo_image": ECHO_IMAGE_CARD_LINE}
#: generated answers of the per-image families get this budget (an "Image 2: …" description can pass 16)
OV_MAX_NEW_TOKENS = 24


@dataclass(frozen=True)
class OvConfig:
    """Every value that shapes the ov stage; recorded beside its weights and compared by ``--if-needed``
    (together with the sha256 of the si weights it started from)."""

    seed: int = 0
    #: training scenes rendered (the first ones of si's own training stream) and conversations built
    pool_images: int = 30000
    conversations: int = 60000
    #: images per training sample of the per-image families
    images: list = field(default_factory=lambda: [1, 10])
    #: relative share of each family (OV_FAMILIES, SINGLE_FAMILIES and "choice")
    weights: dict = field(default_factory=lambda: {
        "image_count": 4, "which_images": 2, "every_image": 1, "which_image": 3, "image_total": 2,
        "image_describe": 3, "counting": 3, "presence": 2, "listing": 1, "naming": 1, "choice": 3})
    steps: int = 1000
    lr: float = 1e-3
    warmup: int = 50
    #: a first phase on few images (a curriculum): ``warm_steps`` steps at ``warm_lr`` on
    #: ``warm_conversations`` conversations of the same families whose per-image samples hold
    #: ``warm_images`` images — telling image 2 from image 3 is learned where there are only three;
    #: 0 steps: none (the first ov recipe)
    warm_steps: int = 0
    warm_lr: float = 1e-3
    warm_images: list = field(default_factory=lambda: [2, 3])
    warm_conversations: int = 20000
    #: phases between the warm phase and the main one, each ``[low, high, steps]``: ``steps`` steps at
    #: ``warm_lr`` on ``warm_conversations`` conversations whose per-image samples hold ``low``-``high``
    #: images — the number of images grown in steps, because a lookup learned over two blocks is carried
    #: to three and on to six when grown, but lost in one jump (docs/organism.md); empty: none
    grow: list = field(default_factory=list)
    #: the families and shares of the warm and ``grow`` phases; empty: ``weights``. One family alone there
    #: is a focus run's schedule inside the stage (the which-image lookup, learned alone on grown images,
    #: then kept by the main phase's mix)
    warm_weights: dict = field(default_factory=dict)
    #: tokens per batch (length-bucketed batches, ``buckets`` length groups)
    batch_tokens: int = 3072
    buckets: int = 16
    #: what the buckets sort by: "length" (exact token length; one-image conversations then fall into
    #: one-family buckets) or "images" (number of images, random order inside one count)
    bucket_by: str = "length"
    #: share of the per-image questions asked with "Image k: " before each image (prompts.IMAGE_LABEL),
    #: in training and in the teacher-forced curves; > 0 also scores the held-out questions in that layout
    image_labels: float = 0.0
    #: in training, the number of every "Image k: " label is a target too (one signal per image boundary
    #: about how many images came before); the teacher-forced curves and the evaluation score answers only
    label_targets: bool = False
    #: which-image answers name the category right before each image number ("dog 3" for "image 3",
    #: traindata.ECHO_FAMILIES), in training, curves and evaluation alike
    echo: bool = False
    #: count-in-image-i answers name the category and the image's number right before the count ("dog 3 2",
    #: traindata.COUNT_ECHO_FAMILIES), in training, curves and evaluation alike
    echo_count: bool = False
    #: naming-in-image answers start with the named image's number ("3 dog", traindata.IMAGE_ECHO_FAMILIES): a
    #: probe of finding image i from the token before the answer (focus runs; it leaves MIMIC's answer format)
    echo_image: bool = False
    #: the stage's single-image counting questions per true count 0..si's max_count (a tilt of the drawn true
    #: counts, as si's own ``count_weights``); null: si's (1, 2, 3, 3, 3, 2 in ``cpu``, the middle counts
    #: most). Uniform (tried/ov-v14-counts) moved the answers toward small counts everywhere: fewer
    #: over-counts at 1 image, most counts over 4 images answered "2"; not kept. Held-out questions stay
    #: balanced either way
    count_weights: list | None = None
    #: the share of the stage's single-image counting questions (true count 1 or more) asked of a crowded
    #: image, two or more objects of other classes beside the counted ones (traindata.draw_count): v12
    #: counted right at true count 1 in 0.80 of MIMIC's 1-image Unbalanced questions with at most one other
    #: object and in 0.46 with two or more. 0: every image alike (every recipe before it); held-out
    #: questions stay as they are either way. 0.7 in a 600-step continuation of v12 (tried/ov-v12-counting)
    #: moved its answers in crowds from "2" toward "1" without reading them better; not kept
    count_crowded: float = 0.0
    #: the teacher-forced curves per family and number of images ("tf_which_image_3img"): where in a grown
    #: schedule a lookup holds (focus runs); off, one curve per family as the card shows
    curves_by_images: bool = False
    eval_every: int = 200
    #: teacher-forced held-out questions of the curves (every family evenly; per-image ones at eval_images)
    heldout_questions: int = 1100
    #: held-out samples of the generated evaluation: images per sample, and questions over OV_FAMILIES
    eval_images: list = field(default_factory=lambda: [4, 10])
    eval_questions: int = 1200
    #: held-out single-image MIMIC-format questions generated at every evaluation (the format check)
    format_questions: int = 60
    #: images per sample of the multi-image format check (formats.py): as many held-out MIMIC aggregation
    #: questions as ``format_questions`` in the curves (``gen_format_4img``), formats.EVAL_QUESTIONS on the
    #: card; 0: none. Odd-one over 4 images lost its format ("no") in 4 of 7 ov recipes, unseen by the
    #: single-image check (tried/ov-v15-warm-lr)
    format_images: int = 4

    @classmethod
    def from_yaml(cls, path: Path) -> "OvConfig":
        """Read ``params/<profile>/organism_ov.yaml``; unknown keys and families are refused, naming the file."""
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
        config = cls(**values)
        for key in ("weights", "warm_weights"):
            shares = getattr(config, key)
            if (not isinstance(shares, dict) or set(shares) - set(STAGE_FAMILIES)
                    or any(not isinstance(w, int) or isinstance(w, bool) or w < 0 for w in shares.values())):
                raise ValueError(f"{path}: {key} must map families of {list(STAGE_FAMILIES)} to non-negative "
                                 f"integers, got {shares!r}")
        if config.warm_weights and not any(config.warm_weights.values()):
            raise ValueError(f"{path}: warm_weights gives every family a share of 0 ({config.warm_weights!r}): leave "
                             "it empty ({}) to train the warm and grow phases on weights, or give a family a share")
        if config.bucket_by not in ("length", "images"):
            raise ValueError(f"{path}: bucket_by must be 'length' or 'images', got {config.bucket_by!r}")
        for key in ("image_labels", "count_crowded"):
            share = getattr(config, key)
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
                raise ValueError(f"{path}: {key} is a share in [0, 1], got {share!r}")
        weights = config.count_weights
        if weights is not None and not valid_count_weights(weights):
            raise ValueError(f"{path}: count_weights must be null (si's) or a list of non-negative weights per true "
                             f"count 0, 1, ..., not all zero, got {weights!r}")
        if isinstance(config.format_questions, bool) or not isinstance(config.format_questions, int) \
                or config.format_questions < 1:
            raise ValueError(f"{path}: format_questions is the held-out questions of each format check in the curves, "
                             f"1 or more, got {config.format_questions!r}")
        if (isinstance(config.format_images, bool) or not isinstance(config.format_images, int)
                or not 0 <= config.format_images <= 10):
            raise ValueError(f"{path}: format_images is the images per sample of the multi-image format check, "
                             f"0 (none) to 10, got {config.format_images!r}")
        for key in BOOL_KEYS:
            if not isinstance(getattr(config, key), bool):
                raise ValueError(f"{path}: {key} is true or false, got {getattr(config, key)!r}")
        for key in ("images", "eval_images", "warm_images"):
            if not image_range(getattr(config, key)):
                raise ValueError(f"{path}: {key} must be [low, high] with 1 <= low <= high <= 10, got {getattr(config, key)}")
        for phase in config.grow:
            if not (isinstance(phase, list) and len(phase) == 3 and image_range(phase[:2])
                    and isinstance(phase[2], int) and phase[2] >= 1):
                raise ValueError(f"{path}: grow holds [low, high, steps] phases with 1 <= low <= high <= 10 and "
                                 f"steps >= 1, got {phase!r}")
        return config

    def phases(self) -> list[tuple[str, list[int], int, float, int]]:
        """(name, images, steps, lr, conversations) of each training phase in order: the warm phase, the
        ``grow`` phases, the main one."""
        warm = [("ov-warm", self.warm_images, self.warm_steps, self.warm_lr, self.warm_conversations)]
        grown = [(f"ov-grow-{low}-{high}", [low, high], steps, self.warm_lr, self.warm_conversations)
                 for low, high, steps in self.grow]
        return [p for p in warm if p[2] > 0] + grown + [("ov", self.images, self.steps, self.lr, self.conversations)]

    def phase_weights(self, name: str) -> dict[str, int]:
        """The family shares of phase ``name``: ``warm_weights`` in the warm and grow phases when set."""
        return self.warm_weights if name != "ov" and self.warm_weights else self.weights

    @property
    def format_seed(self) -> int:
        """The seed of the format checks' held-out questions, in the curves and on the card alike."""
        return self.seed + 13

    def ov_weights(self) -> dict[str, int]:
        return {f: w for f, w in self.weights.items() if f in OV_FAMILIES and w > 0}

    def single_weights(self) -> dict[str, int]:
        return {f: w for f, w in self.weights.items() if f not in OV_FAMILIES and w > 0}

    @property
    def forms(self) -> tuple[str, ...]:
        """The answer forms this stage trains and scores in (traindata.ANSWER_FORMS switched on by its fields)."""
        return switched_forms(self)

    def digest(self) -> str:
        """Names the folder of the stage's phase checkpoints (``checkpoints/<digest>``); the keys of
        :data:`UNDIGESTED_DEFAULTS` count only when set, so recipes from before them keep their folder."""
        return self._digest(())

    def earlier_digest(self) -> str:
        """What the phases before the main one are trained from: the recipe less :data:`MAIN_PHASE_KEYS`.
        Two recipes train the same warm and grow phases only when it is equal (it also holds keys that change
        only the curves or the card, such as ``eval_questions``, so some recipes with the same phases differ
        here; a run recorded before ``format_images`` existed reads it as 4, though its curves lack it).
        With ``warm_weights`` set, the earlier phases read ``weights`` only for which families have a
        share (the held-out curves ask those families evenly): the shares themselves are then the main
        phase's alone, and the families enter sorted (a recorded recipe keeps its dicts' keys sorted, and
        :meth:`digest` reads them so)."""
        if not self.warm_weights:
            return self._digest(MAIN_PHASE_KEYS)
        families = sorted(f for f, w in self.weights.items() if w > 0)
        return self._digest(MAIN_PHASE_KEYS, {"weights": families})

    def _digest(self, left_out: tuple[str, ...], replaced: dict | None = None) -> str:
        values = {k: v for k, v in asdict(self).items() if k not in left_out} | (replaced or {})
        for key in UNDIGESTED_DEFAULTS:
            if values[key] == getattr(OvConfig, key):
                del values[key]
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def image_range(pair) -> bool:
    """Whether ``pair`` is ``[low, high]`` with 1 <= low <= high <= 10 (images per sample)."""
    return (isinstance(pair, list) and len(pair) == 2 and all(isinstance(n, int) for n in pair)
            and 1 <= pair[0] <= pair[1] <= 10)


def stage_count_weights(ov: OvConfig, si: OrganismConfig, si_dir: Path):
    """The true-count tilt of the stage's single-image counting questions: the recipe's ``count_weights``, or
    si's when it sets none. Refused (naming the key, its value and the si folder) when it does not give one
    weight per count si was trained on — checked before any scene is rendered."""
    if ov.count_weights is None:
        return si.count_weights
    if len(ov.count_weights) != si.max_count + 1:
        raise ValueError(f"count_weights {ov.count_weights} of the ov recipe: the si in {si_dir} counts 0..{si.max_count}, "
                         f"so it needs {si.max_count + 1} weights, got {len(ov.count_weights)}")
    return list(ov.count_weights)


def weights_sha256(folder: Path) -> str:
    return hashlib.sha256((Path(folder) / "model.safetensors").read_bytes()).hexdigest()


def si_config(si_dir: Path) -> OrganismConfig:
    """The recipe the si checkpoint was trained with (its ``training.json``)."""
    recorded = recorded_config(Path(si_dir))
    if recorded is None:
        raise FileNotFoundError(f"{si_dir}: no trained si organism (model.safetensors and training.json); "
                                "train it first: python -m mimic_utils.organism --stage si")
    return OrganismConfig(**{**asdict(OrganismConfig()), **recorded})


def heldout_pool(si: OrganismConfig, progress: bool = True) -> organism.ScenePool:
    """si's held-out scene stream (never trained on): the images of every held-out score and curve."""
    return organism.heldout_stream(si, progress)


def ov_rows(pool: organism.ScenePool, count: int, seed: int, images, weights: dict[str, int],
            prefix: str, image_labels: float = 0.0,
            forms: tuple[str, ...] = ()) -> list[tuple[list[int], str, str, str, bool]]:
    """(pool images, question, family, answer, labelled) rows of the per-image families, answered in
    ``forms`` (traindata.ANSWER_FORMS)."""
    if count <= 0 or not weights:
        return []
    records = ov_questions(pool.index, count, seed, tuple(images), weights, prefix=prefix, image_labels=image_labels,
                           forms=forms)
    return [([int(i) for i in r["image_ids"]], r["question"], r["family"], r["gt"], bool(r.get("image_labels")))
            for r in records]


def stage_conversations(si: OrganismConfig, pool, processor, count: int,
                        seed: int, weights: dict[str, int], images, n_tokens: int, prefix: str,
                        count_weights=None, image_labels: float = 0.0,
                        label_targets: bool = False, forms: tuple[str, ...] = (),
                        count_crowded: float = 0.0) -> organism.Conversations:
    """Conversations of the stage's families: the per-image ones (:func:`ov_rows`, ``image_labels`` of
    them with labelled images) and the single-image ones with si's own builders (counting tilted by
    ``count_weights``, ``count_crowded`` of it asked of crowded images; multiple choice in si's option range)."""
    per_image = {f: w for f, w in weights.items() if f in OV_FAMILIES}
    single = {f: w for f, w in weights.items() if f not in OV_FAMILIES}
    total = sum(weights.values())
    n_ov = count * sum(per_image.values()) // total
    rows = ov_rows(pool, n_ov, seed, images, per_image, prefix, image_labels, forms)
    convs = organism.encode_rows(processor, rows, n_tokens, label_targets)
    if single:
        convs = convs + organism.build_conversations(
            pool, processor, "questions", count - n_ov, seed, si.max_count, n_tokens, single, count_weights,
            si.choice_kinds, tuple(si.choice_options), count_crowded=count_crowded)
    return convs


def by_image_count(convs: organism.Conversations) -> organism.Conversations:
    """The same conversations with each per-image family named with its number of images
    ("which_image_3img"), so the teacher-forced curves are read per image count."""
    family = [f"{f}_{len(images)}img" if f in OV_FAMILIES else f for f, images in zip(convs.family, convs.images)]
    return organism.Conversations(convs.ids, convs.labels, convs.images, family, convs.answer)


def train_ov(ov: OvConfig, si_dir: Path, out_dir: Path, progress: bool = True) -> dict:
    """The ov stage from the si checkpoint in ``si_dir`` (resumed from its checkpoint if present); saves
    the model into ``out_dir`` and returns the training summary."""
    from transformers import Qwen2VLForConditionalGeneration

    out_dir, si_dir = Path(out_dir), Path(si_dir)
    si = si_config(si_dir)
    count_weights = stage_count_weights(ov, si, si_dir)
    work = out_dir / "checkpoints" / ov.digest()
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    torch.manual_seed(ov.seed)
    model = Qwen2VLForConditionalGeneration.from_pretrained(si_dir, dtype=torch.float32)
    processor = load_processor(str(si_dir), "qwen2_vl")
    world = si.scene_params()
    train = organism.render_pool(ov.pool_images, si.seed, organism.TRAIN_STREAM, world, si.cell_px, progress)
    heldout = heldout_pool(si, progress)
    # the format checks' questions now, so a held-out pool too small for them (the card's too) stops the stage
    # before the vision cache and the conversations are built, not after training
    probe = format_probe(model, processor, heldout, si, ov.format_questions, ov.format_seed, ov.format_images)
    if ov.format_images:
        card_questions(heldout, ov.format_seed, ov.format_images)
    seconds: dict[str, float] = {"render": time.time() - started}
    begin = time.time()
    features = organism.cache_vision(model, processor, train, progress=progress)
    heldout_features = organism.cache_vision(model, processor, heldout, progress=progress)
    seconds["cache"] = time.time() - begin
    side, n_tokens = organism.tokens_per_image(si, processor)
    begin = time.time()
    even = dict.fromkeys([f for f, w in ov.weights.items() if w > 0], 1)
    held = stage_conversations(si, heldout, processor, ov.heldout_questions, ov.seed + 11, even,
                               ov.eval_images, n_tokens, "ov-heldout", image_labels=ov.image_labels,
                               forms=ov.forms)
    if ov.curves_by_images:
        held = by_image_count(held)
    phases = []
    for name, images, steps, lr, count in tqdm(ov.phases(), desc="build conversations (phases)",
                                               disable=not progress, leave=False):
        seed = ov.seed + {"ov": 10, "ov-warm": 14}.get(name, 16 + len(phases))
        phase_convs = stage_conversations(si, train, processor, count, seed, ov.phase_weights(name), images, n_tokens,
                                          name if name != "ov" else "ov-train", count_weights, ov.image_labels,
                                          ov.label_targets, ov.forms, ov.count_crowded)
        phases.append((name, phase_convs, steps, lr))
    convs = phases[-1][1]
    seconds["conversations"] = time.time() - begin
    log: list[dict] = []
    resumed: dict[str, int] = {}  # phases that start from a checkpoint: their earlier steps are not on this clock
    resumed_seconds: dict[str, float] = {}  # ... but on the checkpoint's, where it recorded one
    for name, phase_convs, steps, lr in phases:
        done, earlier = checkpoint_progress(work / f"{name}.pt")
        if done > 0:
            resumed[name] = min(done, steps)
            if earlier is not None:
                resumed_seconds[name] = earlier
        keys = [len(images) for images in phase_convs.images] if ov.bucket_by == "images" else None
        sampler = organism.LengthBuckets([len(ids) for ids in phase_convs.ids], ov.batch_tokens, ov.buckets,
                                         keys, ov.seed)
        schedule = StageSchedule(steps, lr, ov.batch_tokens, warmup=ov.warmup, eval_every=ov.eval_every,
                                 checkpoint_every=50)
        begin = time.time()
        organism.language_stage(name, model, features, phase_convs, heldout_features, held, schedule, ov.seed,
                                work / f"{name}.pt", log, side, progress=progress, sampler=sampler,
                                extra_metrics=probe)
        stage = "ov-grow" if name.startswith("ov-grow") else name  # the grow phases' time together
        seconds[stage] = seconds.get(stage, 0.0) + time.time() - begin
    model.eval()
    tiny.save_tiny(model, processor, out_dir)
    seconds["total"] = time.time() - started
    return {"config": ov, "seconds": seconds, "resumed": resumed, "resumed_seconds": resumed_seconds, "log": log,
            "parameters": tiny.count_parameters(model),
            "conversations": dict(sorted(Counter(convs.family).items())),
            "batch_sizes": [sampler.batch_size(g) for g in range(len(sampler.groups))],
            "bucket_longest": sampler.longest}


# --- held-out evaluation -----------------------------------------------------------------------------


def exact(output: str, gt: str) -> bool:
    """Exact answer, case and a final full stop aside (the per-image families' answers are short forms)."""
    def norm(text: str) -> str:
        return " ".join(str(text).strip().rstrip(".").lower().split())
    return norm(output) == norm(gt)


def exact_row(record: dict, output: str, settings: dict, pool: int) -> dict:
    """A predictions line of a per-image question, scored by :func:`exact`. An ``echo`` record's answer
    ("dog 3") is read back into the ground truth's form ("image 3") first — only with the asked category
    before the number — so its blind baseline is the same best constant answer as without echo; an
    ``echo_count`` record's ("dog 3 2") is read back to the count ("2") the same way (traindata.read_back)."""
    parsed = read_back(output, record)
    return {"id": record["id"], "family": record["family"], "task": record["family"], "knobs": record["knobs"],
            **({"image_labels": True} if record.get("image_labels") else {}),
            **{form: True for form in ANSWER_FORMS if record.get(form)},
            "gt": record["gt"], "output": output, "parsed": parsed, "score": float(exact(parsed, record["gt"])),
            "scored_as": "exact", "pool": pool, "model": settings}


def exact_scorer(_family: str, output: str, gt) -> dict:
    return {"score": float(exact(output, gt))}


def heldout_ov_records(si: OrganismConfig, ov: OvConfig, folder: Path | None,
                       progress: bool = True, pool: organism.ScenePool | None = None) -> list[dict]:
    """Held-out per-image questions in samples of ``ov.eval_images`` images, from si's held-out scene
    stream (never trained on), the trained per-image families evenly; their images written as PNG files into
    ``folder`` for generation, or not at all with ``folder=None`` (the records keep the pool index's image
    paths: a reading of answers already generated needs only the questions and ``image_ids``). ``pool``:
    :func:`heldout_pool` already rendered."""
    pool = pool if pool is not None else heldout_pool(si, progress)
    records = ov_questions(pool.index, ov.eval_questions, ov.seed + 12, tuple(ov.eval_images),
                           dict.fromkeys([f for f in OV_FAMILIES if f in ov.ov_weights()], 1), prefix="heldout-ov")
    forms = ov.forms
    for record in records:
        if folder is not None:
            record["images"] = [str(organism.heldout_png(pool, int(i), folder)) for i in record["image_ids"]]
        for switch in forms:  # e.g. answered "dog 3", scored as "image 3" (exact_row)
            if record["family"] in ANSWER_FORMS[switch].families:
                record[switch] = True
    if ov.image_labels > 0:  # the same questions again, asked in the labelled layout the stage also trains
        records += [with_labels({**r, "id": r["id"] + "-labelled"}) for r in records]
    return records


def cell(rows: list[dict], scorer=None) -> dict:
    """n, score, 95% interval (Wilson; listing: bootstrap of micro F1) and the blind baseline of rows."""
    found = stats.estimate(rows, key=None)
    return {"n": found["n"], **{k: round(float(found[k]), 4) for k in ("score", "lo", "hi")},
            "blind": round(stats.blind_baseline(rows, scorer), 4)}


def per_image_scores(rows: list[dict]) -> dict:
    """Score, interval, blind baseline and target of each per-image family asked, and the same cell per
    image count (``per_image_count``): the blind baseline falls as images are added, so each count is read
    against its own."""
    scores = {}
    for family in [f for f in OV_FAMILIES if any(r["family"] == f for r in rows)]:
        members = [r for r in rows if r["family"] == family]
        per_count = {str(n): cell([r for r in members if r["knobs"]["n_images"] == n], exact_scorer)
                     for n in sorted({r["knobs"]["n_images"] for r in members})}
        scores[family] = {**cell(members, exact_scorer), "target": TARGETS.get(family), "per_image_count": per_count}
    return scores


@torch.no_grad()
def label_number_accuracy(model, processor, si: OrganismConfig, ov: OvConfig, questions: int = 300) -> dict[str, float]:
    """Per label number k, the share of held-out labelled questions (``ov.eval_images`` images) where the
    model's most likely next token after "Image" is k — what ``label_targets`` trains, read teacher-forced.
    Predicting k needs only the previous label plus one, not a count of images: a model can pass this and
    still not find image k (docs/organism.md)."""
    pool = heldout_pool(si, False)
    features = organism.cache_vision(model, processor, pool, progress=False)
    side, n_tokens = organism.tokens_per_image(si, processor)
    convs = stage_conversations(si, pool, processor, questions, ov.seed + 15,
                                {"image_count": 1, "which_image": 1, "image_total": 1}, ov.eval_images, n_tokens,
                                "label-numbers", image_labels=1.0)
    pad = model.config.text_config.pad_token_id
    hits: dict[int, list[int]] = {}
    model.eval()
    for start in range(0, len(convs), 32):
        picks = list(range(start, min(start + 32, len(convs))))
        logits = organism.language_forward(model, features, convs, picks, side, pad).logits
        for row, i in enumerate(picks):
            prompt = next(j for j, label in enumerate(convs.labels[i]) if label != -100)  # the answer starts
            positions = organism.label_number_positions(processor.tokenizer, convs.ids[i][:prompt])
            for k, position in enumerate(positions, 1):
                hits.setdefault(k, []).append(int(logits[row, position - 1].argmax().item() == convs.ids[i][position]))
    return {str(k): round(sum(v) / len(v), 4) for k, v in sorted(hits.items())}


def score_per_image(adapter, si: OrganismConfig, ov: OvConfig, folder: Path, progress: bool = True,
                    pool: organism.ScenePool | None = None) -> dict:
    """Generated answers to the held-out per-image questions of ``ov.eval_images`` images (``ov.eval_questions``,
    families evenly), scored exactly: ``{"ov": …}`` in the benchmark's layout and, when ``ov.image_labels``
    is above 0, ``"ov_labelled"`` for the same questions with labelled images. With another ``eval_images``
    (e.g. ``[2, 3]``) it reads a checkpoint on fewer images than its card does."""
    records = heldout_ov_records(si, ov, folder, progress, pool)
    rows = harness.run(adapter, records, Path(folder) / "ov.jsonl", batch_size=32, progress=progress,
                       desc="held-out ov", to_row=exact_row, max_new_tokens=OV_MAX_NEW_TOKENS)
    scores = {"ov": per_image_scores([r for r in rows if not r.get("image_labels")])}
    labelled = [r for r in rows if r.get("image_labels")]
    if labelled:
        scores["ov_labelled"] = per_image_scores(labelled)
    return scores


def evaluate_ov(adapter, si: OrganismConfig, ov: OvConfig, folder: Path, si_scores: dict,
                progress: bool = True) -> dict:
    """Held-out scores of an ov checkpoint (generation through the adapter): the per-image families in
    4-10-image samples (exact answers) with their blind baselines and per image count; the single-image
    questions si was scored on, beside si's scores; the MIMIC answer format kept at 1 image and, with
    ``format_images``, over that many images (formats.py)."""
    folder = Path(folder)
    pool = heldout_pool(si, progress)  # rendered once for the four question sets below
    scores: dict = score_per_image(adapter, si, ov, folder, progress, pool)
    if ov.label_targets:
        scores["label_numbers"] = label_number_accuracy(adapter.model, adapter.processor, si, ov)
    single = organism.heldout_records(si, folder, progress, pool)
    organism.evaluate_single_image(adapter, single, folder / "predictions.jsonl", progress=progress)
    single_rows = read_predictions(folder / "predictions.jsonl")
    scores["single"] = {}
    for family in sorted({r["family"] for r in single_rows}):
        members = [r for r in single_rows if r["family"] == family]
        si_score = si_scores.get(family, {}).get("score")
        scores["single"][family] = {**cell(members), "si": si_score,
                                    "delta": None if si_score is None else round(cell(members)["score"] - si_score, 4)}
    if si.instruct_weights.get(CHOICE_FAMILY):
        choice = organism.evaluate_choice(adapter, organism.heldout_choice_records(si, folder, pool=pool),
                                          folder / "choice.jsonl", progress=progress)
        si_choice = si_scores.get("choice", {}).get("score")
        scores["single"]["choice"] = {k: choice[k] for k in ("n", "score", "lo", "hi")} | {
            "blind": choice["chance"], "si": si_choice,
            "delta": None if si_choice is None else round(choice["score"] - si_choice, 4)}
        scores["choice_parse_rate"] = {"n": choice["n"], "score": choice["parse_rate"], "lo": choice["parse_lo"],
                                       "hi": choice["parse_hi"]}
    categories = list(si.scene_params().categories)
    scores["format_1img"] = format_cells(single_rows, MIMIC_FORMAT_FAMILIES, categories)
    if ov.format_images:
        scores["format_multi"] = score_multi_image(adapter, pool, ov.format_images,
                                                   ov.format_seed, folder, categories, cell, progress)
    return scores


def target_lines(scores: dict) -> list[str]:
    """One line per target: met or missed, with the figure."""
    lines = []
    for family, target in TARGETS.items():  # in the benchmark's layout; labelled scores are in the table only
        row = scores["ov"][family]
        verdict = "met" if row["score"] >= target else "**not met**"
        lines.append(f"- {family} (4-10 images): {row['score']:.3f} [{row['lo']:.3f}, {row['hi']:.3f}] against "
                     f"≥ {target}: {verdict} (blind {row['blind']:.3f})")
    for family, row in scores["single"].items():
        if row.get("delta") is None:
            continue
        verdict = "met" if row["delta"] >= -SINGLE_TOLERANCE else "**not met**"
        lines.append(f"- single-image {family}: {row['score']:.3f} vs si {row['si']:.3f} (change {row['delta']:+.3f}, "
                     f"within {SINGLE_TOLERANCE} below si: {verdict})")
    return lines


#: per-image families whose answer the number of images fixes: per image count their best constant answer is
#: right by construction, so their per-count cells have no blind baseline to read against
COUNT_FIXED = ("image_total",)


def count_fixed_line(family: str, row: dict) -> str:
    """The per-count scores of a :data:`COUNT_FIXED` family, without the per-count blind (always 1)."""
    scores = ", ".join(f"{n}: {count_cell['score']:.2f}" for n, count_cell in row["per_image_count"].items())
    return (f"Per image count, {family}: {scores} — no blind baseline per count: the number of images fixes the "
            "answer, so a constant answer per count is right by construction; read it against the pooled blind.")


def per_image_table(rows: dict, heading: str) -> list[str]:
    """Markdown lines of one layout's per-image scores: a table and the score per image count."""
    return [
        heading,
        "",
        "| question | n | score | 95% interval | blind | target |",
        "|---|---|---|---|---|---|",
        *[f"| {family} | {row['n']} | {row['score']:.3f} | [{row['lo']:.3f}, {row['hi']:.3f}] | {row['blind']:.3f} | "
          + ("" if row["target"] is None else f"≥ {row['target']}") + " |" for family, row in rows.items()],
        "",
        *per_count_lines(rows),
    ]


def per_count_lines(rows: dict) -> list[str]:
    """The per-image-count scores of each family, each paragraph followed by a blank line: with the
    per-count blind baseline, except for :data:`COUNT_FIXED` families (:func:`count_fixed_line`)."""
    read = {family: row for family, row in rows.items() if family not in COUNT_FIXED}
    lines = []
    if read:
        lines += ["Per image count, score (blind): " + "; ".join(
            f"{family} " + ", ".join(f"{n}: {c['score']:.2f} ({c['blind']:.2f})" for n, c in row["per_image_count"].items())
            for family, row in read.items()), ""]
    for family in [f for f in COUNT_FIXED if f in rows]:
        lines += [count_fixed_line(family, rows[family]), ""]
    return lines


def curriculum_line(ov: OvConfig) -> str:
    """The card's sentence on the phases: steps, images per sample and learning rate of each, in order."""
    phases = ov.phases()
    if len(phases) == 1:
        return f"{ov.steps} steps on {ov.images[0]}-{ov.images[1]} images (lr {ov.lr:g})."
    def count(images: list[int]) -> str:
        return f"{images[0]}" if images[0] == images[1] else f"{images[0]}-{images[1]}"
    line = "A curriculum: " + ", then ".join(f"{steps} steps on samples of {count(images)} images (`{name}`, "
                                            f"lr {lr:g})" for name, images, steps, lr, _ in phases) + "."
    if ov.warm_weights:
        line += (" Before `ov` only " + ", ".join(f"{f} ({w})" for f, w in ov.warm_weights.items() if w > 0)
                 + " (the `ov` phase's shares are those of `weights`).")
    return line


def count_tilt_line(ov: OvConfig) -> str | None:
    """The card's sentence on the recipe's own tilt of the true counts (``None`` when it keeps si's)."""
    if ov.count_weights is None:
        return None
    return ("Counting tilt: the stage's single-image counting questions draw their true counts 0-"
            f"{len(ov.count_weights) - 1} by the weights {list(ov.count_weights)} (`count_weights`) instead of si's; "
            "held-out questions stay balanced.")


def count_crowded_line(ov: OvConfig) -> str | None:
    """The card's sentence on the share of counting questions asked of crowded images (``None`` at 0)."""
    if not ov.count_crowded:
        return None
    return (f"Crowded counting: {ov.count_crowded:.0%} of the stage's single-image counting questions with a true "
            f"count of 1 or more are asked of an image holding two or more objects of other classes "
            "(`count_crowded`); held-out questions are drawn as before.")


def write_ov_card(out_dir: Path, ov: OvConfig, summary: dict, scores: dict, command: str, si_info: dict) -> Path:
    """The ov model card (README.md beside the weights)."""
    weights = out_dir / "model.safetensors"
    seconds = summary.get("seconds", {})
    minutes = ov_training_minutes(summary)
    lines = [
        "# MIMIC model organism, multi-image stage (`ov`)",
        "",
        "The single-image organism `si` (`" + si_info["path"] + "`) trained further by `mimic_utils.organism.ov` on",
        "1-10-image samples of its own rendered training stream (never the benchmark's images): per-image",
        "questions that need it to keep images apart (how many X in image i, which images contain X, does each",
        "image contain X, which image is the only one with X, how many images, what is in image i, the",
        "categories of one supercategory in image i, the one category of image i) and the single-image",
        "questions of its stage 2 (MIMIC-format counting, listing and naming, presence, multiple choice). Never",
        "one of the four MIMIC aggregation questions. Our stand-in for LLaVA-OneVision's `-ov`.",
        "",
        curriculum_line(ov),
        "",
        *[line for form in ov.forms for line in (FORM_CARD_LINES[form], "")],
        *[part for line in (count_tilt_line(ov), count_crowded_line(ov)) if line for part in (line, "")],
        f"- command: `{command}`",
        f"- seed: {ov.seed}",
        f"- started from: si weights sha256 `{si_info['sha256']}`",
        f"- parameters: {summary.get('parameters', 'n/a'):,}",
        f"- weights: `model.safetensors`, {weights.stat().st_size / 2**20:.1f} MiB, sha256 `{weights_sha256(out_dir)}`",
        f"- time (this machine: {speed_line(summary.get('machine'))}): " + ", ".join(f"{k} {seconds[k] / 60:.1f} min" for k in TIME_ORDER if k in seconds)
        + f" — training {minutes:.1f} min" + (" from scratch, with the resumed phases" if summary.get("resumed") else "")
        + f", ≤ {TARGET_MINUTES} "
        + {True: "met", False: "**not met**", None: "not known (a lower bound)"}[ov_time_met(summary)],
        *filter(None, [resumed_line(summary)]),
        f"- training conversations per family: {json.dumps(summary.get('conversations', {}))}",
        "",
        "## Held-out per-image questions, 4-10 images per sample (generated, exact answers)",
        "",
        *per_image_table(scores["ov"], "In the benchmark's layout (images unlabelled, as every MIMIC prompt):"),
        *(per_image_table(scores["ov_labelled"], "The same questions with `Image k: ` before each image (the "
                          f"layout {ov.image_labels:.0%} of the stage's per-image questions are trained in):")
          if "ov_labelled" in scores else []),
        *([f"The number after each `Image` of a labelled prompt, predicted teacher-forced (what `label_targets` "
           "trains; the previous label plus one, no count of images needed), per k: "
           + ", ".join(f"{k}: {v:.2f}" for k, v in scores["label_numbers"].items()), ""]
          if "label_numbers" in scores else []),
        "## Held-out single-image questions (the ones si was scored on, official scorers)",
        "",
        "| question | n | score | 95% interval | blind | si | change |",
        "|---|---|---|---|---|---|---|",
        *[f"| {family} | {row['n']} | {row['score']:.3f} | [{row['lo']:.3f}, {row['hi']:.3f}] | {row['blind']:.3f} | "
          + ("" if row.get("si") is None else f"{row['si']:.3f}") + " | "
          + ("" if row.get("delta") is None else f"{row['delta']:+.3f}") + " |" for family, row in scores["single"].items()],
        "",
        "MIMIC answer format kept at 1 image (a count; category names or \"none\"; one category name; never an",
        "image reference): " + ", ".join(f"{family} {row['score']:.3f} [{row['lo']:.3f}, {row['hi']:.3f}] (n {row['n']})"
                                        for family, row in scores["format_1img"].items()),
        "",
        *multi_format_lines(scores.get("format_multi")),
        "## Targets",
        "",
        *target_lines(scores),
        "",
        "## Training configuration",
        "",
        "```json",
        json.dumps(asdict(ov), indent=2, sort_keys=True),
        "```",
        "",
        "Loss and held-out curves (teacher-forced per family, `gen_format_1img` / `gen_score_1img`: generated",
        "single-image MIMIC-format answers"
        + (f"; `gen_format_{ov.format_images}img` / `gen_score_{ov.format_images}img`: MIMIC's four questions over "
           f"{ov.format_images} images" if any(f"gen_format_{ov.format_images}img" in row
                                                for row in summary.get("log", [])) else "")
        + "): `loss.csv`, `curves.png`. Held-out scores: `eval.json`.",
        "",
    ]
    return write_text(out_dir / "README.md", "\n".join(lines))


def score_and_card(out_dir: Path, si_dir: Path, ov: OvConfig, summary: dict, command: str) -> dict:
    """Held-out scores of the saved ov checkpoint (``eval.json``) and its model card."""
    si = si_config(si_dir)
    si_scores = json.loads((Path(si_dir) / "eval.json").read_text(encoding="utf-8"))
    adapter = load_adapter(out_dir, family="qwen2_vl", dtype="float32")
    scores = evaluate_ov(adapter, si, ov, out_dir / "heldout", si_scores)
    write_json(out_dir / "eval.json", scores)
    write_ov_card(out_dir, ov, summary, scores, command, si_record(si_dir))
    print(json.dumps(scores, indent=1))
    print(f"[organism] ov saved to {out_dir} (model card: {out_dir / 'README.md'})")
    return scores


#: files of a trained ov folder that describe its own run, left behind by :func:`continuation_start`
OWN_RECORDS = ("README.md", "eval.json", "training.json", "loss.csv", "loss.md", "curves.png")


def continuation_start(ov_dir: Path, si_dir: Path, start: Path) -> Path:
    """A folder from which :func:`run` continues the trained ov in ``ov_dir`` as if it were si: its weights,
    tokenizer and processor, beside si's ``training.json`` and ``eval.json`` (the scenes' recipe and the
    single-image scores compared against). The continuation probes in ``outputs/cpu/models/tried/`` start
    here; their cards then call the start "si". An existing ``start`` is kept as it is."""
    start = Path(start)
    if not start.exists():
        start.mkdir(parents=True)
        for f in Path(ov_dir).iterdir():
            if f.is_file() and f.name not in OWN_RECORDS:
                shutil.copy(f, start / f.name)
        for name in ("training.json", "eval.json"):
            shutil.copy(Path(si_dir) / name, start / name)
    return start


def si_record(si_dir: Path) -> dict:
    """What ov records of the checkpoint it started from: its folder (relative to the checkout) and sha256."""
    si_dir = Path(si_dir).resolve()
    return {"path": relative_to_root(str(si_dir)), "sha256": weights_sha256(si_dir)}


def trained_ov(out_dir: Path) -> dict | None:
    """``training.json`` of the ov checkpoint in ``out_dir`` (config and the si it started from), if any."""
    path = Path(out_dir) / "training.json"
    if not (path.is_file() and (Path(out_dir) / "model.safetensors").is_file()):
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def reusable(out_dir: Path, ov: OvConfig, si_dir: Path) -> tuple[bool, str]:
    """Whether the ov checkpoint in ``out_dir`` was trained with ``ov`` from the si weights now in
    ``si_dir``; else why not."""
    recorded = trained_ov(out_dir)
    if recorded is None:
        return False, "no trained ov checkpoint found"
    # keys added after checkpoints were recorded; their defaults are the older recipe
    later = {k: v for k, v in asdict(OvConfig()).items() if k in LATER_KEYS}
    config = {**later, **recorded.get("config", {})}
    changed = changed_keys(config, asdict(ov))
    if changed:
        return False, f"its recorded configuration differs in {changed}"
    if recorded.get("si", {}).get("sha256") != weights_sha256(si_dir):
        return False, "it was trained from other si weights than the ones now in " + str(si_dir)
    return True, "its configuration and the si weights it started from match"


def run(ov: OvConfig, si_dir: Path, out_dir: Path, command: str, resumed_from: str | None = None) -> dict:
    """Train, record, score and card the ov checkpoint; ``resumed_from`` names the run whose phase checkpoints
    it took (organism/borrow.py), for the card's line on resumed phases."""
    machine = machine_record()  # before training: the cores are this run's alone then
    summary = {**train_ov(ov, si_dir, out_dir), "machine": machine}
    if resumed_from and summary.get("resumed"):
        summary["resumed_from"] = resumed_from
    write_curves(out_dir, summary["log"])
    write_json(out_dir / "training.json", {
        "config": asdict(ov), "si": si_record(si_dir), "seconds": summary["seconds"],
        **({"resumed": summary["resumed"]} if summary.get("resumed") else {}),
        **({"resumed_seconds": summary["resumed_seconds"]} if summary.get("resumed_seconds") else {}),
        **({"resumed_from": summary["resumed_from"]} if summary.get("resumed_from") else {}),
        "parameters": summary["parameters"], "command": command, "conversations": summary["conversations"],
        "batch_sizes": summary["batch_sizes"], "bucket_longest": summary["bucket_longest"], "machine": machine})
    return score_and_card(out_dir, si_dir, ov, summary, command)
