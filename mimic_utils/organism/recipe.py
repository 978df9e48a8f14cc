"""Train the embedded model organism: a tiny Qwen2-VL that solves single images and nothing more.

    python -m mimic_utils.organism --profile cpu      # or: make organism

It is built the way the paper's LVLMs are, in miniature (docs/organism.md), because we measured that
training the tiny model end to end on questions does not learn to look at the image:

* **Stage 0 — vision pretraining**, our stand-in for CLIP/SigLIP: the vision tower and its patch merger
  learn dense box supervision from the scene world. Each merged vision token (a 28 px cell) predicts the
  category whose object centre lies in its cell, or background (one softmax, object cells weighted
  ``cell_weight``), and a pooled head regresses per-category counts.
* **Stage 1 — alignment**: vision frozen; the merger and the language model learn scene descriptions
  ("2 dog, 1 cat").
* **Stage 2 — single-image instruction tuning**: the four MIMIC question types and presence, asked of
  one image only — so the organism is a single-image solver, as the paper describes real LVLMs — and
  single-image multiple choice in the public benchmarks' format (:func:`choice_questions`: the question,
  ``A. …`` option lines, MuirBench's "Answer with the option's letter from the given choices directly.",
  answered with the letter), so that multiple-choice benchmarks measure transfer, not the answer format.

The language model's shape (``text_hidden``, ``text_layers``, ``text_heads``, ``text_intermediate``) is
part of the recipe (``params/<profile>/organism.yaml``). ``--probe`` compares shapes at equal wall time
on top of the committed vision tower (:func:`probe`):

    python -m mimic_utils.organism --probe --minutes 6   # writes outputs/cpu/models/probe.{json,md}

Stages 1 and 2 reuse the frozen tower's block outputs, computed once, and feed them to the model through
its own ``mm_encoder_outputs`` argument; only the merger and the language model run per step. Every
stage checkpoints, resumes, logs its loss, and the final model is evaluated on held-out single-image
questions through the same adapter and scorer as any real checkpoint.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mimic_utils.analysis import stats
from mimic_utils.data import scene_formats, scenes
from mimic_utils.data.annotations import AnnotationIndex, ImageAnnotation, ObjectAnnotation
from mimic_utils.data.prompts import build_messages, choice_letters, prompt_family
from mimic_utils.data.tasks import question_for
from mimic_utils.data.traindata import (OV_FAMILIES, SINGLE_FAMILIES, Pools, SkipDraw, describe, draw_count, family_shares,
                                        ov_questions, single_image_questions)
from mimic_utils.evaluation import harness
from mimic_utils.evaluation.external_benchmarks import BenchRecord, build_prompt, evaluate_benchmark
from mimic_utils.evaluation.harness import read_predictions
from mimic_utils.models import tiny
from mimic_utils.organism.config import CHOICE_FAMILY, CHOICE_KINDS, CHOICE_TASK, OrganismConfig
from mimic_utils.training.finetune import StageSchedule, pad_batch, train_stage

#: Random streams of the organism's own draws (the COCO and OpenImages draws use 0 and 1).
TRAIN_STREAM, HELDOUT_STREAM = 2, 3
#: Held-out listing asks about a supercategory the image holds in half of the questions, so that listing
#: can be read both on all questions and on those whose answer is not "none" (its target).
HELDOUT_LISTING_PRESENT = 0.5


@dataclass
class ScenePool:
    """Scenes rendered in memory: pixels, dense cell labels, counts, and an index for question builders."""

    images: torch.Tensor  # uint8 [N, H, W, 3]
    cells: torch.Tensor  # long [N, G, G]: 0 background, 1 + category position otherwise
    counts: torch.Tensor  # float [N, C]
    index: AnnotationIndex  # image ids "0".."N-1", virtual paths; read by mimic_utils.data.traindata
    categories: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]


def cell_labels(objects, categories: list[str], image_size: int, cell: int) -> np.ndarray:
    """Per cell, 1 + the category of the object whose box centre lies in it (the largest if several)."""
    grid = image_size // cell
    labels = np.zeros((grid, grid), dtype=np.int64)
    area = np.zeros((grid, grid))
    for obj in objects:
        x, y, w, h = obj.bbox
        row, col = min(int((y + h / 2) // cell), grid - 1), min(int((x + w / 2) // cell), grid - 1)
        if w * h > area[row, col]:
            area[row, col] = w * h
            labels[row, col] = categories.index(obj.category) + 1
    return labels


def render_pool(n: int, seed: int, stream: int, params: scenes.SceneParams, cell: int, progress: bool = True) -> ScenePool:
    """Render ``n`` scenes of the random draw into memory, with their labels and an annotation index."""
    categories = list(params.categories)
    supercategory_of = {c.name: c.supercategory for c in params.category_table()}
    size = params.image_size
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    cells = np.zeros((n, size // cell, size // cell), dtype=np.int64)
    counts = np.zeros((n, len(categories)), dtype=np.float32)
    entries = {}
    for i in tqdm(range(n), desc=f"render scenes (stream {stream})", disable=not progress, leave=False):
        scene = scenes.random_scene(scenes.scene_rng(seed, stream, i), params)
        images[i] = scene.image
        cells[i] = cell_labels(scene.objects, categories, size, cell)
        for name, k in scene.counts().items():
            counts[i, categories.index(name)] = k
        objects = tuple(ObjectAnnotation(o.category, supercategory_of[o.category], tuple(map(float, o.bbox)))
                        for o in scene.objects)
        entries[str(i)] = ImageAnnotation(str(i), Path(f"/organism/{stream}/{i}.png"), size, size, objects)
    index = AnnotationIndex(entries, sorted(categories, key=categories.index), supercategory_of,
                            f"organism-seed{seed}-stream{stream}", "organism")
    return ScenePool(torch.from_numpy(images), torch.from_numpy(cells), torch.from_numpy(counts), index, categories)


def patchify(images: torch.Tensor, mean, std, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [B, H, W, 3] images to Qwen2-VL ``pixel_values`` and ``image_grid_thw``.

    The same layout as ``Qwen2VLImageProcessor`` (tested against it): rescale, normalise, then patches
    ordered so that each merge window's patches are contiguous, frames repeated ``temporal`` times.
    """
    x = images.permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    b, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    x = x.reshape(b, c, gh // merge, merge, patch, gw // merge, merge, patch).permute(0, 2, 5, 3, 6, 1, 4, 7)
    x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, temporal, -1, -1)
    pixel_values = x.reshape(b * gh * gw, c * temporal * patch * patch)
    grid = torch.tensor([[1, gh, gw]] * b, dtype=torch.long)
    return pixel_values, grid


class VisionPretrainer(nn.Module):
    """The model's own vision tower + merger, with the two stage-0 heads on its merged tokens."""

    def __init__(self, visual: nn.Module, hidden: int, n_categories: int) -> None:
        super().__init__()
        self.visual = visual
        self.cell_head = nn.Linear(hidden, n_categories + 1)
        self.count_head = nn.Linear(hidden, n_categories)

    def forward(self, pixel_values: torch.Tensor, grid: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        merged = self.visual(pixel_values, grid_thw=grid).pooler_output  # [B * cells, hidden]
        tokens = merged.view(batch, -1, merged.shape[-1])
        return self.cell_head(tokens), F.softplus(self.count_head(tokens.mean(dim=1)))


def vision_loss(cell_logits: torch.Tensor, counts_pred: torch.Tensor, cells: torch.Tensor, counts: torch.Tensor,
                cell_weight: float) -> torch.Tensor:
    """Cell cross-entropy (object cells weighted ``cell_weight``) plus count regression."""
    target = cells.flatten(1)
    per_cell = F.cross_entropy(cell_logits.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
    weights = torch.where(target > 0, cell_weight, 1.0)
    return (per_cell * weights).sum() / weights.sum() + F.smooth_l1_loss(counts_pred, counts)


def flip_batch(images: torch.Tensor, cells: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flips of a random half of the batch, labels flipped alike."""
    flip = torch.tensor([rng.random() < 0.5 for _ in range(images.shape[0])])
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(2), images)
    cells = torch.where(flip.view(-1, 1, 1), cells.flip(2), cells)
    return images, cells


@torch.no_grad()
def vision_metrics(pretrainer: VisionPretrainer, pool: ScenePool, pixel_args: dict, batch: int = 128) -> dict:
    """Held-out stage-0 quality: object-cell accuracy, and presence and counts read off the cell map."""
    pretrainer.eval()
    hits = objects = presence_ok = count_ok = 0
    for start in range(0, len(pool), batch):
        images = pool.images[start:start + batch]
        cells = pool.cells[start:start + batch].flatten(1)
        pixel_values, grid = patchify(images, **pixel_args)
        logits, _ = pretrainer(pixel_values, grid, images.shape[0])
        pred = logits.argmax(-1)
        mask = cells > 0
        hits += (pred[mask] == cells[mask]).sum().item()
        objects += mask.sum().item()
        n_cat = pool.counts.shape[1]
        pred_counts = F.one_hot(pred, n_cat + 1)[..., 1:].sum(1).float()
        true_counts = pool.counts[start:start + batch]
        presence_ok += ((pred_counts > 0) == (true_counts > 0)).all(1).sum().item()
        count_ok += (pred_counts == true_counts).all(1).sum().item()
    pretrainer.train()
    n = len(pool)
    return {"cell_accuracy": hits / max(objects, 1), "presence_exact": presence_ok / n, "count_exact": count_ok / n}


# --- stage 0: dense vision pretraining --------------------------------------------------------------


def pixel_settings(processor) -> dict:
    """What :func:`patchify` needs from the model's own image processor."""
    ip = processor.image_processor
    return {"mean": list(ip.image_mean), "std": list(ip.image_std), "patch": ip.patch_size,
            "merge": ip.merge_size, "temporal": ip.temporal_patch_size}


def vision_stage(model, processor, train: ScenePool, heldout: ScenePool, schedule: StageSchedule, seed: int,
                 checkpoint: Path, log: list[dict], cell_weight: float = 5.0, progress: bool = True) -> dict:
    """Stage 0: train ``model.model.visual`` (tower + merger) on dense cell labels and counts."""
    hidden = model.config.text_config.hidden_size
    torch.manual_seed(seed)
    pretrainer = VisionPretrainer(model.model.visual, hidden, len(train.categories))
    pixels = pixel_settings(processor)

    def loss_fn(rng: random.Random, batch: int, net: nn.Module) -> torch.Tensor:
        picks = torch.tensor(rng.sample(range(len(train)), batch))
        images, cells = flip_batch(train.images[picks], train.cells[picks], rng)
        pixel_values, grid = patchify(images, **pixels)
        cell_logits, counts = net(pixel_values, grid, batch)
        return vision_loss(cell_logits, counts, cells, train.counts[picks], cell_weight)

    def evaluate() -> dict:
        return vision_metrics(pretrainer, heldout, pixels)

    train_stage("vision", pretrainer, list(pretrainer.parameters()), loss_fn, schedule, seed, checkpoint, log,
                evaluate, progress)
    return evaluate()


# --- stages 1 and 2: merger + language model on cached vision features --------------------------------


def label_number_positions(tokenizer, ids: list[int]) -> list[int]:
    """Positions of the image numbers in a labelled prompt (pass the prompt's ids, not the answer's): the
    token after each "Image" of :data:`mimic_utils.data.prompts.IMAGE_LABEL` (the questions say "image",
    lower case, and never match). The organism's tokenizer holds every number up to 20 as one token; a
    tokenizer that splits " 1" into a space and a digit is refused rather than trained on the space."""
    marks = {tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)[0]) for text in ("Image", " Image")}
    positions = [j + 1 for j, token in enumerate(ids[:-1]) if token in marks]
    for position in positions:
        if not tokenizer.decode([ids[position]]).strip().isdigit():
            raise ValueError(f"label_targets: the token after 'Image' is {tokenizer.decode([ids[position]])!r}, "
                             "not a whole number: this tokenizer splits the label's number")
    return positions


def prompt_text(processor, question: str, family: str, n_images: int, image_labels: bool = False) -> str:
    """One conversation's prompt through the processor's own chat template, in the official MIMIC layout
    (multiple choice, ``family="choice"``: ``question`` is the whole MuirBench-format prompt, placed after the
    image as evaluation places a public benchmark's prompt), with **one** image token per image."""
    task = CHOICE_TASK if family == CHOICE_FAMILY else prompt_family(family)
    messages = build_messages(question, n_images, task, "qwen2_vl", image_labels)
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def expand_images(ids: list[int], image_id: int, tokens_per_image: int) -> list[int]:
    """``ids`` with each image token repeated ``tokens_per_image`` times, as ``Qwen2VLProcessor`` expands the
    placeholder of a fixed-size image. The image token is a special token, so the text either side of it is
    tokenized the same whether it stands once or ``tokens_per_image`` times (tested against the processor),
    and the short prompt is what is tokenized: ov v12 spent 420 s building its 160,000 conversations with
    every expanded prompt tokenized on its own (its ``training.json``)."""
    block = [image_id] * tokens_per_image
    expanded: list[int] = []
    for token in ids:
        if token == image_id:
            expanded.extend(block)
        else:
            expanded.append(token)
    return expanded


def _conversation(tokenizer, prompt: list[int], answer: list[int], image_id: int, tokens_per_image: int,
                  image_labels: bool, label_targets: bool) -> tuple[list[int], list[int]]:
    """Ids and labels from an unexpanded prompt's ids and the answer's (``<|im_end|>`` included)."""
    prompt = expand_images(prompt, image_id, tokens_per_image)
    prompt_labels = [-100] * len(prompt)
    if image_labels and label_targets:
        for position in label_number_positions(tokenizer, prompt):
            prompt_labels[position] = prompt[position]
    return prompt + answer, prompt_labels + answer


def _encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, tokenized in one batch call (no special tokens added)."""
    return tokenizer(texts, add_special_tokens=False).input_ids if texts else []


def encode_conversation(processor, question: str, family: str, n_images: int, answer: str,
                        tokens_per_image: int, image_labels: bool = False,
                        label_targets: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 outside the assistant's answer) of one Qwen2-VL conversation.

    The prompt goes through the processor's own chat template (:func:`prompt_text`); each image placeholder
    is expanded to ``tokens_per_image`` tokens exactly as ``Qwen2VLProcessor`` does for a fixed-size image
    (:func:`expand_images`, tested against it), so no pixels are needed here. ``image_labels``: "Image k: "
    before each image (:data:`mimic_utils.data.prompts.IMAGE_LABEL`); with ``label_targets`` the number of
    every label is a target too (:func:`label_number_positions`): predicting "k" before it is read needs the
    number of images seen so far, a signal at every image boundary rather than one per answer.
    :func:`encode_rows` encodes many at once the same way.
    """
    return encode_rows(processor, [(list(range(n_images)), question, family, answer, image_labels)],
                       tokens_per_image, label_targets).ids_and_labels(0)


@dataclass
class Conversations:
    """Encoded conversations: token ids, labels, and the pool images each one shows, in order."""

    ids: list[list[int]]
    labels: list[list[int]]
    images: list[list[int]]
    family: list[str]
    answer: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def ids_and_labels(self, index: int) -> tuple[list[int], list[int]]:
        """One conversation's token ids and labels."""
        return self.ids[index], self.labels[index]

    def __add__(self, other: "Conversations") -> "Conversations":
        return Conversations(self.ids + other.ids, self.labels + other.labels, self.images + other.images,
                             self.family + other.family, self.answer + other.answer)


DESCRIBE_QUESTION = "What objects are in the image?"


def description(pool: ScenePool, image: int) -> str:
    """The alignment stage's answer for one pool image ("2 dog, 1 cat"; "none" when empty)."""
    return describe(dict(pool.index.images[str(image)].counts()), pool.categories)


# --- single-image multiple choice, in the public benchmarks' format ---------------------------------

CHOICE_QUESTIONS = {
    "category": "Which of these object categories appears in the image?",
    "supercategory": "Which supercategory of objects appears in the image?",
}


def _choice_drawn(pools, nonempty: list[str], rng: random.Random, kind: str, n_options: int, max_count: int,
                  count_weights) -> tuple[str, str, str, list[str]]:
    """(image id, question, right option, wrong options) of one question; ``SkipDraw`` when the draw has no
    image. ``nonempty``: the certain images that hold an object."""

    index = pools.index
    if kind == "count":
        image, target, wanted = draw_count(pools, rng, max_count, count_weights)
        # a window of n_options consecutive counts holding the answer, as the OOD benchmark offers them
        low = max(0, wanted - rng.randrange(n_options))
        wrong = [str(v) for v in range(low, low + n_options) if v != wanted][: n_options - 1]
        return image, question_for("counting", [target]), str(wanted), wrong
    if kind == "naming":
        if not pools.single_class:
            raise SkipDraw()
        image = rng.choice(pools.single_class)
        right = next(iter(pools.classes[image]))
        question = question_for("common", [right])
    else:
        if not nonempty:
            raise SkipDraw()
        image = rng.choice(nonempty)
        if kind == "category":
            right = rng.choice(sorted(pools.classes[image]))
        else:
            right = rng.choice(sorted({index.supercategory_of[c] for c in pools.classes[image]}))
        question = CHOICE_QUESTIONS[kind]
    if kind == "supercategory":
        seen = {index.supercategory_of[c] for c in pools.classes[image]}
        absent = [s for s in index.supercategories if s not in seen]
    else:
        absent = [c for c in index.categories if c not in pools.classes[image]]
    if not absent:
        raise SkipDraw()
    return image, question, right, rng.sample(absent, min(n_options - 1, len(absent)))


def choice_questions(index: AnnotationIndex, count: int, seed: int = 0, max_count: int = 5,
                     kinds: dict[str, int] | None = None, options: tuple[int, int] = (2, 5),
                     count_weights=None, pools=None, prefix: str = "single") -> list[dict]:
    """Single-image multiple-choice questions, ``count * weight / sum`` of each kind of ``kinds`` (default:
    :data:`CHOICE_KINDS` evenly).

    Each has ``options[0]..options[1]`` options (fewer when the image leaves too few wrong ones: a
    supercategory question on an image holding 5 of the 6), the right one at a uniformly drawn position,
    so the answer's letter is uniform over the positions. Records: ``id``, ``family`` ("choice"),
    ``sub_task`` (the kind), ``image_ids``, ``question`` (bare), ``options``, ``letters``, ``answer``
    (the letter) and ``gt`` (the same letter); :func:`choice_prompt` gives the text the model sees.
    """

    low, high = options
    if not 2 <= low <= high <= 26:
        raise ValueError(f"multiple choice: options must satisfy 2 <= low <= high <= 26, got {options}")
    pools = pools or Pools(index)
    nonempty = [i for i in pools.certain if pools.classes[i]]
    records = []
    for kind, share in family_shares(count, kinds or dict.fromkeys(CHOICE_KINDS, 1)).items():
        if kind not in CHOICE_KINDS:
            raise ValueError(f"multiple choice: unknown kind {kind!r}; known: {list(CHOICE_KINDS)}")
        rng = random.Random(f"{seed}:{prefix}:choice:{kind}")
        number = attempts = 0
        while number < share:
            attempts += 1
            if attempts > 50 * share + 100:
                raise ValueError(f"multiple choice {kind}: the source cannot supply {share} questions; "
                                 "render more scenes")
            try:
                image, question, right, wrong = _choice_drawn(pools, nonempty, rng, kind, rng.randint(low, high),
                                                              max_count, count_weights)
            except SkipDraw:
                continue
            rng.shuffle(wrong)
            position = rng.randrange(len(wrong) + 1)
            opts = wrong[:position] + [right] + wrong[position:]
            letters = choice_letters(len(opts))
            records.append({"id": f"{prefix}-choice-{kind}-{number:05d}", "family": CHOICE_FAMILY, "sub_task": kind,
                            "image_ids": [image], "question": question, "options": opts, "letters": letters,
                            "answer": letters[position], "gt": letters[position], "right": right})
            number += 1
    return records


def choice_bench_record(record: dict, images: list) -> BenchRecord:
    """A multiple-choice record as a :class:`mimic_utils.evaluation.external_benchmarks.BenchRecord` of :data:`CHOICE_TASK`,
    so that its prompt, generation budget and scorer are that benchmark's own."""

    return BenchRecord(id=record["id"], benchmark=CHOICE_TASK, images=images, question=record["question"],
                       options=list(record["options"]), letters=list(record["letters"]), answer=record["answer"],
                       sub_task=record["sub_task"], meta={"n_options": len(record["options"])})


def choice_prompt(record: dict) -> str:
    """The text after the image, exactly as :func:`mimic_utils.evaluation.external_benchmarks.build_prompt` writes a MuirBench
    question: ``{question}\nA. …\nB. …\nAnswer with the option's letter from the given choices directly.``"""

    return build_prompt(choice_bench_record(record, []))


def build_conversations(pool: ScenePool, processor, kind: str, count: int, seed: int, max_count: int,
                        tokens_per_image: int, weights: dict[str, int] | None = None, count_weights=None,
                        choice_kinds: dict[str, int] | None = None, choice_options: tuple[int, int] = (2, 5),
                        listing_present: float | None = None, count_crowded: float = 0.0) -> Conversations:
    """``kind="describe"``: one description per image (stage 1); ``"questions"``: single-image questions
    of the families in ``weights`` (default: the four of
    :func:`mimic_utils.data.traindata.single_image_questions`, evenly), ``count * weight / sum`` of each;
    the family ``"choice"`` is multiple choice (:func:`choice_questions`, of ``choice_kinds`` with
    ``choice_options`` options). ``count_weights`` tilts the true counts of counting questions;
    ``listing_present`` is the share of listing questions about a supercategory the image holds;
    ``count_crowded`` the share of counting questions asked of a crowded image (traindata.draw_count)."""
    rows: list[tuple[list[int], str, str, str]] = []
    if kind == "describe":
        order = random.Random(seed).sample(range(len(pool)), min(count, len(pool)))
        for i in order:
            rows.append(([i], DESCRIBE_QUESTION, "describe", description(pool, i)))
    else:
        pools = Pools(pool.index)
        for family, share in family_shares(count, weights or dict.fromkeys(SINGLE_FAMILIES, 1)).items():
            if family == CHOICE_FAMILY:
                for r in choice_questions(pool.index, share, seed, max_count, choice_kinds, tuple(choice_options),
                                          count_weights, pools, prefix=f"organism-{kind}"):
                    rows.append(([int(r["image_ids"][0])], choice_prompt(r), CHOICE_FAMILY, r["answer"]))
                continue
            for r in single_image_questions(pool.index, share, seed=seed, max_count=max_count, families=(family,),
                                            pools=pools, prefix=f"organism-{kind}", count_weights=count_weights,
                                            listing_present=listing_present, count_crowded=count_crowded):
                rows.append(([int(r["image_ids"][0])], r["question"], r["family"], r["gt"]))
    return encode_rows(processor, rows, tokens_per_image)


def encode_rows(processor, rows: list[tuple], tokens_per_image: int, label_targets: bool = False) -> Conversations:
    """(pool images, question, family, answer[, image_labels]) rows encoded as :class:`Conversations`, as
    :func:`encode_conversation` encodes one (``label_targets``: see there). Rows share their prompts and
    answers (one question asked of many images), so each distinct prompt is rendered once and the distinct
    prompts and answers are tokenized in one batch each."""
    tokenizer = processor.tokenizer
    keys = [(row[1], row[2], len(row[0]), bool(row[4]) if len(row) > 4 else False) for row in rows]
    prompts = list(dict.fromkeys(keys))
    prompt_ids = dict(zip(prompts, _encode_texts(tokenizer, [prompt_text(processor, *key) for key in prompts])))
    answers = list(dict.fromkeys(row[3] for row in rows))
    answer_ids = dict(zip(answers, _encode_texts(tokenizer, [a + "<|im_end|>" for a in answers])))
    image_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    encoded = [_conversation(tokenizer, prompt_ids[key], answer_ids[row[3]], image_id, tokens_per_image, key[3],
                             label_targets) for key, row in zip(keys, rows)]
    return Conversations([e[0] for e in encoded], [e[1] for e in encoded], [r[0] for r in rows],
                         [r[2] for r in rows], [r[3] for r in rows])


@torch.no_grad()
def cache_vision(model, processor, pool: ScenePool, batch: int = 256, progress: bool = True) -> torch.Tensor:
    """The frozen tower's block outputs (before the merger) for every pool image: [N, patches, embed]."""
    visual = model.model.visual
    visual.eval()
    pixels = pixel_settings(processor)
    chunks = []
    for start in tqdm(range(0, len(pool), batch), desc="cache vision features", disable=not progress, leave=False):
        images = pool.images[start:start + batch]
        pixel_values, grid = patchify(images, **pixels)
        hidden = visual(pixel_values, grid_thw=grid).last_hidden_state
        chunks.append(hidden.view(images.shape[0], -1, hidden.shape[-1]))
    return torch.cat(chunks)


def language_forward(model, features: torch.Tensor, convs: Conversations, picks: list[int], patch_grid: int,
                     pad_id: int):
    """Forward a batch of conversations, the merger applied to cached block outputs of their images (every
    image of every conversation, in order, as the processor would have passed their pixels). A batch with
    no image at all runs as text (``features`` may then be None)."""
    ids = pad_batch([convs.ids[i] for i in picks], pad_id)
    labels = pad_batch([convs.labels[i] for i in picks], -100)
    shown = [image for i in picks for image in convs.images[i]]
    if not shown:  # conversations without an image (the binding probe's text twins) run as plain text
        return model(input_ids=ids, attention_mask=None, labels=labels)
    blocks = features[torch.tensor(shown)]
    merged = model.model.visual.merger(blocks.flatten(0, 1))
    per_image = merged.view(len(shown), -1, merged.shape[-1]).unbind(0)
    grid = torch.tensor([[1, patch_grid, patch_grid]] * len(shown))
    mm_types = (ids == model.config.image_token_id).int()  # 1 marks image tokens, as the processor does
    # No attention mask: the batch is right-padded (pad_batch) and attention is causal, so no real token
    # sees a pad and the real tokens' positions are those of the unpadded conversation — the same loss as
    # with the mask (tested), on SDPA's causal path instead of a materialised 4-D mask (faster).
    return model(input_ids=ids, attention_mask=None, labels=labels, image_grid_thw=grid,
                 mm_token_type_ids=mm_types,
                 mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=per_image)})


@torch.no_grad()
def teacher_forced_accuracy(model, features, convs: Conversations, patch_grid: int, pad_id: int,
                            batch: int = 128) -> dict:
    """Share of held-out answers whose every token is the argmax under teacher forcing, per family.

    A cheap proxy for greedy decoding used for the training curves; the reported accuracies come from
    real generation through the adapter (:func:`evaluate_single_image`).
    """
    model.eval()
    hits: dict[str, list[int]] = {}
    for start in range(0, len(convs), batch):
        picks = list(range(start, min(start + batch, len(convs))))
        out = language_forward(model, features, convs, picks, patch_grid, pad_id)
        labels = pad_batch([convs.labels[i] for i in picks], -100)[:, 1:]
        pred = out.logits[:, :-1].argmax(-1)
        ok = ((pred == labels) | (labels == -100)).all(1)
        for i, good in zip(picks, ok.tolist()):
            hits.setdefault(convs.family[i], []).append(int(good))
    return {f"tf_{family}": sum(v) / len(v) for family, v in sorted(hits.items())}


def language_stage(name: str, model, features: torch.Tensor, convs: Conversations, heldout_features: torch.Tensor,
                   heldout: Conversations, schedule: StageSchedule, seed: int, checkpoint: Path, log: list[dict],
                   patch_grid: int, vision_lr_scale: float = 0.0, progress: bool = True, curves: bool = True,
                   sampler=None, extra_metrics=None) -> dict:
    """Stage 1, 2 or ov: train the merger and the language model (the tower's blocks stay frozen).

    ``curves=False`` skips the held-out evaluations during and after training (the probe times training
    alone) and returns ``{}``. ``sampler(rng)`` draws a step's conversations (default: ``schedule.batch``
    uniformly; the ov stage passes a :class:`LengthBuckets`); ``extra_metrics()`` adds held-out metrics to
    the teacher-forced ones at every evaluation (the ov stage's generated format check)."""
    pad_id = model.config.text_config.pad_token_id
    for p in model.model.visual.parameters():
        p.requires_grad_(False)
    for p in model.model.visual.merger.parameters():
        p.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def loss_fn(rng: random.Random, batch: int, _net: nn.Module) -> torch.Tensor:
        # single-process only: the cached-feature forward reaches into model.model.visual.merger
        picks = sampler(rng) if sampler is not None else rng.sample(range(len(convs)), batch)
        return language_forward(model, features, convs, picks, patch_grid, pad_id).loss

    def evaluate() -> dict:
        metrics = teacher_forced_accuracy(model, heldout_features, heldout, patch_grid, pad_id)
        return {**metrics, **(extra_metrics() if extra_metrics is not None else {})}

    train_stage(name, model, trainable, loss_fn, schedule, seed, checkpoint, log, evaluate if curves else None,
                progress)
    return evaluate() if curves else {}


class TokenBudget:
    """Conversations drawn uniformly, as many as fit ``tokens`` once padded to the longest of them.

    For one-image conversations (stages 1 and 2), whose lengths are set by the question family: length
    buckets (:class:`LengthBuckets`) would make each batch one family, and alternating one-family batches
    set si's held-out counting and presence back by half at equal steps (issue #25's first v2 run)."""

    def __init__(self, lengths: list[int], tokens: int) -> None:
        if max(lengths) > tokens:
            raise ValueError(f"a conversation of {max(lengths)} tokens does not fit a batch of {tokens} tokens")
        self.lengths, self.tokens = lengths, tokens

    def __call__(self, rng: random.Random) -> list[int]:
        picks: list[int] = []
        longest = 0
        while True:
            pick = rng.randrange(len(self.lengths))
            wider = max(longest, self.lengths[pick])
            if picks and wider * (len(picks) + 1) > self.tokens:
                return picks
            picks.append(pick)
            longest = wider


class LengthBuckets:
    """Batches of conversations of similar length, sized to a token budget, so a step's time buys
    answers rather than padding.

    Conversations are sorted by length and cut into ``buckets`` groups of equal size. A step draws a
    bucket with probability proportional to its tokens and takes ``tokens // longest`` conversations of it
    (at most the bucket): each conversation is then drawn about equally often whatever its length, so the
    family mix of the data is the mix trained on, while short samples come many to a batch.

    With ``keys`` (e.g. each conversation's number of images) conversations are sorted by key, and in
    random order inside one key, instead of by exact length: where the length is set by the question's
    wording (one-image conversations) exact-length buckets would again be one family each.
    """

    def __init__(self, lengths: list[int], tokens: int, buckets: int = 16, keys: list[int] | None = None,
                 seed: int = 0) -> None:
        if keys is None:
            order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        else:
            rank = list(range(len(lengths)))
            random.Random(seed).shuffle(rank)
            order = sorted(range(len(lengths)), key=lambda i: (keys[i], rank[i]))
        size = -(-len(order) // buckets)
        self.groups = [order[k:k + size] for k in range(0, len(order), size)]
        self.longest = [max(lengths[i] for i in group) for group in self.groups]
        self.weights = [sum(lengths[i] for i in group) for group in self.groups]
        self.tokens = tokens

    def batch_size(self, group: int) -> int:
        return max(1, min(len(self.groups[group]), self.tokens // self.longest[group]))

    def __call__(self, rng: random.Random) -> list[int]:
        group = rng.choices(range(len(self.groups)), weights=self.weights)[0]
        return rng.sample(self.groups[group], self.batch_size(group))


# --- the whole recipe ------------------------------------------------------------------------------


def tokens_per_image(config: OrganismConfig, processor) -> tuple[int, int]:
    """(patch grid side, merged tokens per image) for the organism's fixed image size."""
    ip = processor.image_processor
    side = config.image_size // ip.patch_size
    return side, side * side // ip.merge_size**2


def training_conversations(config: OrganismConfig, train: ScenePool, processor, kind: str, count: int,
                           n_tokens: int) -> Conversations:
    """Stage 1 (``kind="describe"``) or stage 2 (``"questions"``) conversations of the recipe."""
    return build_conversations(train, processor, kind, count, config.seed, config.max_count, n_tokens,
                               config.instruct_weights, config.count_weights, config.choice_kinds,
                               tuple(config.choice_options), config.listing_present)


def heldout_conversations(config: OrganismConfig, heldout: ScenePool, processor, kind: str, n_tokens: int,
                          count: int | None = None) -> Conversations:
    """The held-out conversations of a stage's teacher-forced curves: every trained family evenly,
    counts balanced, multiple-choice kinds evenly."""
    return build_conversations(heldout, processor, kind, count or config.heldout_questions, config.seed + 1,
                               config.max_count, n_tokens, config.heldout_weights(),
                               choice_options=tuple(config.choice_options), listing_present=HELDOUT_LISTING_PRESENT)


def train_organism(config: OrganismConfig, out_dir: Path, progress: bool = True) -> dict:
    """All three stages (each resumed from its checkpoint if present); saves the model with
    ``save_pretrained`` into ``out_dir`` and returns the training summary."""
    out_dir = Path(out_dir)
    work = out_dir / "checkpoints" / config.digest()
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    started = time.time()
    model, processor = tiny.build_organism(seed=config.seed, **config.text_shape())
    world = config.scene_params()
    train = render_pool(config.pool_images, config.seed, TRAIN_STREAM, world, config.cell_px, progress)
    heldout = heldout_stream(config, progress)
    seconds: dict[str, float] = {"render": time.time() - started}
    log: list[dict] = []

    def timed(stage: str, run):
        begin = time.time()
        result = run()
        seconds[stage] = time.time() - begin
        return result

    vision = StageSchedule(config.vision_steps, config.vision_lr, config.batch, warmup=200, eval_every=500)
    vision_log: list[dict] = []
    timed("vision", lambda: vision_stage(model, processor, train, heldout, vision, config.seed, work / "vision.pt",
                                          vision_log, config.cell_weight, progress))
    log += vision_log
    side, n_tokens = tokens_per_image(config, processor)
    features = timed("cache", lambda: cache_vision(model, processor, train, progress=progress))
    heldout_features = cache_vision(model, processor, heldout, progress=progress)
    stages = [
        ("align", "describe", config.align_steps, min(config.pool_images, config.align_steps * config.batch)),
        ("instruct", "questions", config.instruct_steps, config.instruct_conversations),
    ]
    for name, kind, steps, count in stages:
        convs = training_conversations(config, train, processor, kind, count, n_tokens)
        held = heldout_conversations(config, heldout, processor, kind, n_tokens)
        schedule = StageSchedule(steps, config.lm_lr, config.batch, warmup=50, eval_every=300)
        sampler = None if config.batch_tokens is None else TokenBudget([len(i) for i in convs.ids], config.batch_tokens)
        stage_log: list[dict] = []
        timed(name, lambda: language_stage(name, model, features, convs, heldout_features, held, schedule,
                                           config.seed, work / f"{name}.pt", stage_log, side, progress=progress,
                                           sampler=sampler))
        log += stage_log
    model.eval()
    tiny.save_tiny(model, processor, out_dir)
    seconds["total"] = time.time() - started
    return {"config": config, "seconds": seconds, "log": log, "parameters": tiny.count_parameters(model)}


# --- held-out evaluation and the command line ---------------------------------------------------


def heldout_stream(config: OrganismConfig, progress: bool = True) -> ScenePool:
    """The held-out scene stream (never trained on): the images of every held-out score."""
    return render_pool(config.heldout_images, config.seed, HELDOUT_STREAM, config.scene_params(), config.cell_px,
                       progress)


def heldout_records(config: OrganismConfig, folder: Path, progress: bool = True,
                    pool: ScenePool | None = None) -> list[dict]:
    """Held-out single-image questions (a scene stream never trained on), images written as PNG files.

    Counting is balanced over the true count 0..``max_count``; the true count is kept as a knob so
    accuracy can be read per count. ``pool``: that stream already rendered (a caller scoring several
    question sets on it renders it once).
    """
    pool = pool if pool is not None else heldout_stream(config, progress)
    folder.mkdir(parents=True, exist_ok=True)
    records = single_image_questions(pool.index, config.heldout_questions, seed=config.seed + 2,
                                     max_count=config.max_count, prefix="heldout",
                                     listing_present=HELDOUT_LISTING_PRESENT)
    for record in records:
        record["images"] = [str(heldout_png(pool, int(record["image_ids"][0]), folder))]
        record["task"] = record["family"]
        record["experiment"] = "heldout"
        record["knobs"] = {"n_images": 1, **({"true_count": int(record["gt"])} if record["family"] == "counting" else {})}
    return records


def heldout_choice_records(config: OrganismConfig, folder: Path, progress: bool = True,
                           count: int | None = None, pool: ScenePool | None = None) -> list:
    """Held-out single-image multiple-choice questions (the held-out scene stream, kinds evenly, counts
    balanced), as MuirBench-format :class:`~mimic_utils.evaluation.external_benchmarks.BenchRecord` s with PNG
    images. ``pool``: :func:`heldout_stream` already rendered."""
    pool = pool if pool is not None else heldout_stream(config, progress)
    folder.mkdir(parents=True, exist_ok=True)
    records = choice_questions(pool.index, count or config.heldout_choice_questions, config.seed + 3,
                               config.max_count, options=tuple(config.choice_options), prefix="heldout")
    return [choice_bench_record(record, [str(heldout_png(pool, int(record["image_ids"][0]), folder))])
            for record in records]


def heldout_png(pool: ScenePool, number: int, folder: Path) -> Path:
    """The PNG file of pool image ``number`` in ``folder``, written once (evaluation reads images from files)."""
    path = Path(folder) / f"{number:05d}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        scene_formats.save_png(path, pool.images[number].numpy())
    return path


def evaluate_choice(adapter, records: list, predictions: Path, batch_size: int = 64, progress: bool = True) -> dict:
    """Held-out multiple choice through the adapter with MuirBench's prompt, budget and letter scorer
    (:func:`mimic_utils.evaluation.scoring.extract_choice`): accuracy, letter parse rate (a reply naming no single
    option letter is unparsed), chance (mean 1 / options), and accuracy per kind and per option count."""

    evaluate_benchmark(adapter, CHOICE_TASK, records, predictions, batch_size=batch_size, progress=progress)
    ids = {r.id for r in records}
    rows = [r for r in read_predictions(Path(predictions)) if r["id"] in ids]
    options = {r.id: len(r.options) for r in records}

    def accuracy(members: list[dict]) -> float:
        return round(sum(r["score"] for r in members) / max(1, len(members)), 4)

    parsed = sum(r["parsed"] is not None for r in rows)
    (lo, hi), (parse_lo, parse_hi) = stats.wilson(sum(r["score"] for r in rows), len(rows)), stats.wilson(parsed, len(rows))
    return {
        "n": len(rows), "score": accuracy(rows), "lo": round(lo, 4), "hi": round(hi, 4),
        "parse_rate": round(parsed / max(1, len(rows)), 4), "parse_lo": round(parse_lo, 4),
        "parse_hi": round(parse_hi, 4),
        "chance": round(sum(1 / options[r["id"]] for r in rows) / max(1, len(rows)), 4),
        "by_kind": {k: accuracy([r for r in rows if r["sub_task"] == k])
                    for k in CHOICE_KINDS if any(r["sub_task"] == k for r in rows)},
        "by_options": {str(n): accuracy([r for r in rows if options[r["id"]] == n])
                       for n in sorted(set(options.values()))},
    }


def evaluate_single_image(adapter, records: list[dict], predictions: Path, batch_size: int = 64,
                          progress: bool = True) -> dict:
    """Held-out single-image scores through the adapter (real generation, official scorers), each with its
    blind baseline (the best constant answer); ``listing_present``: listing on the questions whose answer is
    not "none", where a model that always answers "none" scores 0."""
    rows = harness.run(adapter, records, predictions, batch_size=batch_size, progress=progress, desc="held-out")
    def cell(members: list[dict]) -> dict:
        found = stats.estimate(members, key=None)
        return {**{key: found[key] if key == "n" else round(found[key], 4) for key in ("n", "score", "lo", "hi")},
                "blind": round(stats.blind_baseline(members), 4)}

    scores = {}
    for family in sorted({r["family"] for r in rows}):
        scores[family] = cell([r for r in rows if r["family"] == family])
    present = [r for r in rows if r["family"] == "listing" and str(r["gt"]).strip().lower() != "none"]
    if present:  # listing's target: questions whose answer names categories ("none" matches "none")
        scores["listing_present"] = cell(present)
    counting = [r for r in rows if r["family"] == "counting"]
    scores["counting_by_true_count"] = {
        str(k): round(sum(r["score"] for r in counting if r["knobs"]["true_count"] == k)
                      / max(1, sum(r["knobs"]["true_count"] == k for r in counting)), 4)
        for k in sorted({r["knobs"]["true_count"] for r in counting})}
    return scores


def choice_scores(choice: dict) -> dict:
    """eval.json entries of held-out multiple choice: ``choice`` (accuracy, with parse rate, chance and
    breakdowns) and ``choice_parse_rate`` (a flat row, so the model card's score table shows it)."""
    return {"choice": choice, "choice_parse_rate": {"n": choice["n"], "score": choice["parse_rate"],
                                                    "lo": choice["parse_lo"], "hi": choice["parse_hi"]}}
