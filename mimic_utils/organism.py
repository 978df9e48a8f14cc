"""Train the embedded model organism: a tiny Qwen2-VL that solves single images and nothing more.

    python -m mimic_utils.organism --profile cpu      # or: make organism

Trained end to end on questions the tiny model does not learn to look at the image, so it is built the
way the paper's LVLMs are, in miniature: stage 0 pretrains the vision tower on dense box supervision (our
stand-in for CLIP/SigLIP), stage 1 aligns the merger and language model on scene descriptions, stage 2
tunes them on single-image questions. Stages 1 and 2 reuse the frozen tower's outputs; every stage
checkpoints and resumes; the final model is scored on held-out single-image questions through the same
adapter and scorers as any checkpoint, and :mod:`mimic_utils.organism_card` writes its card. The recipe
and why: docs/organism.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mimic_utils import evaluate, scene_formats, scenes, tiny
from mimic_utils.artifacts import profile_dir, repo_root, write_json
from mimic_utils.finetune import StageSchedule, pad_batch, train_stage
from mimic_utils.models import load_adapter
from mimic_utils.organism_card import recorded_config, write_card, write_curves
from mimic_utils.prompts import build_messages
from mimic_utils.sources import AnnotationIndex, ImageAnnotation, ObjectAnnotation
from mimic_utils.traindata import SINGLE_FAMILIES, Pools, prompt_family, single_image_questions

#: Random streams of the organism's own draws (the COCO and OpenImages draws use 0 and 1).
TRAIN_STREAM, HELDOUT_STREAM = 2, 3


@dataclass
class ScenePool:
    """Scenes rendered in memory: pixels, dense cell labels, counts, and an index for question builders."""

    images: torch.Tensor  # uint8 [N, H, W, 3]
    cells: torch.Tensor  # long [N, G, G]: 0 background, 1 + category position otherwise
    counts: torch.Tensor  # float [N, C]
    index: AnnotationIndex  # image ids "0".."N-1", virtual paths; read by mimic_utils.traindata
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


def encode_conversation(processor, question: str, family: str, n_images: int, answer: str,
                        tokens_per_image: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 outside the assistant's answer) of one Qwen2-VL conversation.

    The prompt goes through the processor's own chat template with the official MIMIC layout; each image
    placeholder is expanded to ``tokens_per_image`` tokens exactly as ``Qwen2VLProcessor`` does for a
    fixed-size image (tested against it), so no pixels are needed here.
    """
    messages = build_messages(question, n_images, prompt_family(family), "qwen2_vl")
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image_token = processor.image_token
    prompt = prompt.replace(image_token, image_token * tokens_per_image)
    tokenizer = processor.tokenizer
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False).input_ids
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


@dataclass
class Conversations:
    """Encoded single-image conversations: token ids, labels, and the pool image each one shows."""

    ids: list[list[int]]
    labels: list[list[int]]
    image: list[int]
    family: list[str]
    answer: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def describe(counts: dict[str, int], categories: list[str]) -> str:
    """Stage 1's target text, e.g. ``"2 dog, 1 cat"`` (category order; ``"none"`` when empty)."""
    parts = [f"{counts[c]} {c}" for c in categories if counts.get(c)]
    return ", ".join(parts) or "none"


DESCRIBE_QUESTION = "What objects are in the image?"


def family_shares(count: int, weights: dict[str, int]) -> dict[str, int]:
    """``count`` questions split over the families in proportion to their integer ``weights``."""
    total = sum(weights.values())
    shares = {family: count * weight // total for family, weight in weights.items()}
    for family in list(weights)[: count - sum(shares.values())]:  # the remainder, one each, in order
        shares[family] += 1
    return shares


def build_conversations(pool: ScenePool, processor, kind: str, count: int, seed: int, max_count: int,
                        tokens_per_image: int, weights: dict[str, int] | None = None) -> Conversations:
    """``kind="describe"``: one description per image (stage 1); ``"questions"``: single-image questions
    of the families in ``weights`` (default: the four of
    :func:`mimic_utils.traindata.single_image_questions`, evenly), ``count * weight / sum`` of each."""
    rows: list[tuple[int, str, str, str]] = []
    if kind == "describe":
        order = random.Random(seed).sample(range(len(pool)), min(count, len(pool)))
        for i in order:
            counts = dict(pool.index.images[str(i)].counts())
            rows.append((i, DESCRIBE_QUESTION, "describe", describe(counts, pool.categories)))
    else:
        pools = Pools(pool.index)
        for family, share in family_shares(count, weights or dict.fromkeys(SINGLE_FAMILIES, 1)).items():
            for r in single_image_questions(pool.index, share, seed=seed, max_count=max_count, families=(family,),
                                            pools=pools, prefix=f"organism-{kind}"):
                rows.append((int(r["image_ids"][0]), r["question"], r["family"], r["gt"]))
    encoded = [encode_conversation(processor, q, fam, 1, a, tokens_per_image) for _, q, fam, a in rows]
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
    """Forward a batch of conversations, the merger applied to cached block outputs of their images."""
    ids = pad_batch([convs.ids[i] for i in picks], pad_id)
    labels = pad_batch([convs.labels[i] for i in picks], -100)
    blocks = features[torch.tensor([convs.image[i] for i in picks])]
    merged = model.model.visual.merger(blocks.flatten(0, 1))
    per_image = merged.view(len(picks), -1, merged.shape[-1]).unbind(0)
    grid = torch.tensor([[1, patch_grid, patch_grid]] * len(picks))
    mm_types = (ids == model.config.image_token_id).int()  # 1 marks image tokens, as the processor does
    return model(input_ids=ids, attention_mask=(ids != pad_id).long(), labels=labels, image_grid_thw=grid,
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
                   patch_grid: int, vision_lr_scale: float = 0.0, progress: bool = True) -> dict:
    """Stage 1 or 2: train the merger and the language model (the tower's blocks stay frozen)."""
    pad_id = model.config.text_config.pad_token_id
    for p in model.model.visual.parameters():
        p.requires_grad_(False)
    for p in model.model.visual.merger.parameters():
        p.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def loss_fn(rng: random.Random, batch: int, _net: nn.Module) -> torch.Tensor:
        # single-process only: the cached-feature forward reaches into model.model.visual.merger
        return language_forward(model, features, convs, rng.sample(range(len(convs)), batch), patch_grid, pad_id).loss

    def evaluate() -> dict:
        return teacher_forced_accuracy(model, heldout_features, heldout, patch_grid, pad_id)

    train_stage(name, model, trainable, loss_fn, schedule, seed, checkpoint, log, evaluate, progress)
    return evaluate()


# --- the whole recipe ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrganismConfig:
    """Every value that shapes the organism; recorded in its model card and compared by ``--if-needed``."""

    seed: int = 0
    image_size: int = 112
    max_objects: int = 5
    same_category_prob: float = 0.5
    pool_images: int = 20000
    heldout_images: int = 1000
    cell_px: int = 28
    cell_weight: float = 5.0
    vision_steps: int = 4500
    vision_lr: float = 2e-3
    align_steps: int = 600
    instruct_steps: int = 2400
    instruct_conversations: int = 60000
    #: stage-2 questions per family, relative (the lookups by category name, counting and presence, are
    #: the hard ones); keys are the families of mimic_utils.traindata.SINGLE_FAMILIES
    instruct_weights: dict = field(default_factory=lambda: dict.fromkeys(SINGLE_FAMILIES, 1))
    lm_lr: float = 1e-3
    batch: int = 64
    max_count: int = 5
    heldout_questions: int = 1200

    @classmethod
    def from_yaml(cls, path: Path) -> "OrganismConfig":
        """Read ``params/<profile>/organism.yaml``; unknown keys are refused with the file and key named."""
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ValueError(f"{path}: unknown key {key!r}; known: {sorted(known)}")
        config = cls(**values)
        unknown = set(config.instruct_weights) - set(SINGLE_FAMILIES)
        if unknown or any(not isinstance(w, int) or w < 0 for w in config.instruct_weights.values()):
            raise ValueError(f"{path}: instruct_weights must map families of {list(SINGLE_FAMILIES)} to "
                             f"non-negative integers, got {config.instruct_weights}")
        return config

    def scene_params(self) -> scenes.SceneParams:
        return scenes.SceneParams(image_size=self.image_size, max_objects=self.max_objects,
                                  same_category_prob=self.same_category_prob)

    def digest(self) -> str:
        """A short hash of the config: checkpoints of another config are never resumed."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def tokens_per_image(config: OrganismConfig, processor) -> tuple[int, int]:
    """(patch grid side, merged tokens per image) for the organism's fixed image size."""
    ip = processor.image_processor
    side = config.image_size // ip.patch_size
    return side, side * side // ip.merge_size**2


def train_organism(config: OrganismConfig, out_dir: Path, progress: bool = True) -> dict:
    """All three stages (each resumed from its checkpoint if present); saves the model with
    ``save_pretrained`` into ``out_dir`` and returns the training summary."""
    out_dir = Path(out_dir)
    work = out_dir / "checkpoints" / config.digest()
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    started = time.time()
    model, processor = tiny.build_organism(seed=config.seed)
    world = config.scene_params()
    train = render_pool(config.pool_images, config.seed, TRAIN_STREAM, world, config.cell_px, progress)
    heldout = render_pool(config.heldout_images, config.seed, HELDOUT_STREAM, world, config.cell_px, progress)
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
        convs = build_conversations(train, processor, kind, count, config.seed, config.max_count, n_tokens,
                                    config.instruct_weights)
        held = build_conversations(heldout, processor, kind, config.heldout_questions, config.seed + 1,
                                   config.max_count, n_tokens)
        schedule = StageSchedule(steps, config.lm_lr, config.batch, warmup=50, eval_every=300)
        stage_log: list[dict] = []
        timed(name, lambda: language_stage(name, model, features, convs, heldout_features, held, schedule,
                                           config.seed, work / f"{name}.pt", stage_log, side, progress=progress))
        log += stage_log
    model.eval()
    tiny.save_tiny(model, processor, out_dir)
    seconds["total"] = time.time() - started
    return {"config": config, "seconds": seconds, "log": log, "parameters": tiny.count_parameters(model)}


# --- held-out evaluation and the command line ---------------------------------------------------


def heldout_records(config: OrganismConfig, folder: Path, progress: bool = True) -> list[dict]:
    """Held-out single-image questions (a scene stream never trained on), images written as PNG files.

    Counting is balanced over the true count 0..``max_count``; the true count is kept as a knob so
    accuracy can be read per count.
    """
    pool = render_pool(config.heldout_images, config.seed, HELDOUT_STREAM, config.scene_params(), config.cell_px,
                       progress)
    folder.mkdir(parents=True, exist_ok=True)
    records = single_image_questions(pool.index, config.heldout_questions, seed=config.seed + 2,
                                     max_count=config.max_count, prefix="heldout")
    for record in records:
        number = int(record["image_ids"][0])
        path = folder / f"{number:05d}.png"
        if not path.exists():
            scene_formats.save_png(path, pool.images[number].numpy())
        record["images"] = [str(path)]
        record["task"] = record["family"]
        record["experiment"] = "heldout"
        record["knobs"] = {"n_images": 1, **({"true_count": int(record["gt"])} if record["family"] == "counting" else {})}
    return records


def evaluate_single_image(adapter, records: list[dict], predictions: Path, batch_size: int = 64,
                          progress: bool = True) -> dict:
    """Held-out single-image scores through the adapter (real generation, official scorers)."""
    rows = evaluate.run(adapter, records, predictions, batch_size=batch_size, progress=progress, desc="held-out")
    scores = {}
    for family in sorted({r["family"] for r in rows}):
        members = [r for r in rows if r["family"] == family]
        stats = next(iter(evaluate.summarize(members, by=()).values()))
        scores[family] = {"n": stats["n"], "score": round(stats["score"], 4)}
    counting = [r for r in rows if r["family"] == "counting"]
    scores["counting_by_true_count"] = {
        str(k): round(sum(r["score"] for r in counting if r["knobs"]["true_count"] == k)
                      / max(1, sum(r["knobs"]["true_count"] == k for r in counting)), 4)
        for k in sorted({r["knobs"]["true_count"] for r in counting})}
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimic_utils.organism", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--if-needed", action="store_true",
                        help="reuse the committed organism when its recorded configuration matches the profile's")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = repo_root()
    params = root / "params" / args.profile / "organism.yaml"
    if not params.is_file():
        print(f"[organism] {params}: missing; the {args.profile} profile has no organism of its own")
        return 2
    config = OrganismConfig.from_yaml(params)
    out_dir = profile_dir(args.profile, root) / "models" / "base"
    recorded = recorded_config(out_dir)
    if args.if_needed and recorded == asdict(config):
        print(f"[organism] reusing the committed organism in {out_dir} (its training configuration matches {params})")
        return 0
    if args.if_needed:
        why = "no trained organism found" if recorded is None else "its recorded configuration differs from " + str(params)
        print(f"[organism] training the organism first: {why} (about an hour on 2 cores)")
    summary = train_organism(config, out_dir)
    write_curves(out_dir, summary["log"])
    adapter = load_adapter(out_dir, family="qwen2_vl", dtype="float32")
    records = heldout_records(config, out_dir / "heldout")
    scores = evaluate_single_image(adapter, records, out_dir / "heldout" / "predictions.jsonl")
    write_json(out_dir / "eval.json", scores)
    command = f"python -m mimic_utils.organism --profile {args.profile}"
    write_json(out_dir / "training.json", {"config": asdict(config), "seconds": summary["seconds"],
                                           "parameters": summary["parameters"], "command": command})
    write_card(out_dir, config, summary, scores, command)
    print(json.dumps(scores, indent=1))
    print(f"[organism] saved to {out_dir} (model card: {out_dir / 'README.md'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
