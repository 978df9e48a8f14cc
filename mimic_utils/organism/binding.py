"""Probe: can the organism's language model bind content to an image's position at all — with no image?

    python -m mimic_utils.organism.binding --name deep-fresh --fresh --steps 400
    # writes outputs/cpu/models/tried/binding/deep-fresh.json (its checkpoint, git-ignored, into
    # checkpoints/ beside it: a rerun of the same configuration resumes it)

Every `ov` recipe tried left "Only one image contains a dog. Which image is it?" at its blind baseline
(docs/organism.md). Two things could be missing: reading the images (the vision side) or finding, from
the question, the block that holds the answer and naming its position (the language side). This probe
takes the vision side away. Each image of a which-image question is replaced by its **text twin** — the
alignment stage's description of that image ("2 dog, 1 cat", :func:`mimic_utils.data.traindata.describe`)
inside the same ``<|vision_start|>``/``<|vision_end|>`` delimiters, in the official prompt — so the
content is given exactly, as tokens the model already knows. What is left is the lookup: take the category
from the question, find the block whose text holds it, answer its position.

The language model is the committed si's (``--fresh``: a freshly initialised one of the recipe's shape, or
of ``--shape``), trained on nothing but these twins (``--turns`` > 1: several questions about the same
blocks in one conversation, a denser signal) with the stages' own loop (:func:`recipe.language_stage`).
The held-out twins come from si's held-out scene stream. Besides the teacher-forced curve the probe
records what the model does instead when it fails: its accuracy by the number of items in the block that
holds the category and in the other blocks, and how often it agrees with the rule "name the block with
the most items" where that rule names one (a shortcut that needs no lookup: the other blocks are drawn
without the category, so they hold fewer items on average), with every pick, so the table can be
recomputed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mimic_utils.artifacts import repo_root, write_json
from mimic_utils.data.prompts import build_messages, prompt_family
from mimic_utils.data.traindata import Pools
from mimic_utils.models import tiny
from mimic_utils.organism import ov, recipe as organism
from mimic_utils.training.finetune import StageSchedule

#: the question family of the probe and its wording (traindata's ``_which_image``)
FAMILY = "which_image"
QUESTION = "Only one image contains a {}. Which image is it?"


@dataclass(frozen=True)
class BindingProbe:
    """Every value that shapes one probe run (recorded in its JSON)."""

    name: str = "deep-si"
    #: start from a freshly initialised language model (of ``shape``, default the recipe's) instead of si's
    fresh: bool = False
    shape: dict[str, int] = field(default_factory=dict)
    steps: int = 400
    lr: float = 1e-3
    #: questions per conversation (1: the ov stage's single question)
    turns: int = 1
    #: the question before the blocks (a diagnostic layout, :func:`twin_prompt`)
    question_first: bool = False
    #: "Image k: " before block k (a diagnostic layout, :func:`twin_prompt`)
    labelled: bool = False
    #: every block holds as many categories as the one holding the asked category (:func:`balanced_rows`),
    #: in training and held out: the fullest-block shortcut then scores no better than a guess
    balanced: bool = False
    #: blocks (images) per question
    images: list[int] = field(default_factory=lambda: [2, 2])
    conversations: int = 20000
    pool_images: int = 30000
    heldout_questions: int = 400
    eval_every: int = 100
    batch_tokens: int = 3072
    seed: int = 0

    def digest(self) -> str:
        """Names the checkpoint, so a rerun resumes only a run of exactly this configuration."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


#: an image's text twin: the alignment stage's description of it ("2 dog, 1 cat"; "none")
block_text = organism.description


def twin_prompt(processor, question: str, descriptions: list[str], question_first: bool = False,
                labelled: bool = False) -> str:
    """The official which-image prompt with each image placeholder replaced, in order, by its description:
    the delimiters, separators and question stay exactly where the model sees them with images.

    ``question_first`` (a diagnostic, never the benchmark's layout): the question moves before the blocks,
    so the model knows what to look for while it reads them — the lookup then needs no retrieval of an
    earlier block by a query formed after it. ``labelled`` (a diagnostic too): "Image k: " before block k, as
    the ov stage's labelled layout writes it, so a block's number is a token in it instead of a position
    the model must count."""
    messages = build_messages(question, len(descriptions), prompt_family(FAMILY), "qwen2_vl", image_labels=labelled)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    for text in descriptions:
        prompt = prompt.replace(processor.image_token, text, 1)
    if question_first:
        asked = f"\nQuestion: {question}\n"
        if asked not in prompt:
            raise ValueError(f"twin_prompt: the question is not where question_first expects it: {prompt!r}")
        prompt = prompt.replace(asked, "\n").replace("user\n", f"user\nQuestion: {question}\n", 1)
    return prompt


def asked_category(question: str) -> str:
    """The category a which-image question asks about (the inverse of :data:`QUESTION`)."""
    found = re.fullmatch(QUESTION.replace(".", r"\.").replace("?", r"\?").format("(.+)"), question)
    if found is None:
        raise ValueError(f"not a which-image question of the probe: {question!r}")
    return found.group(1)


def _unique_categories(pools: Pools, images: list[int]) -> list[tuple[str, int]]:
    """(category, block) for every category that exactly one block holds."""
    held = [pools.classes[str(i)] for i in images]
    return [(c, k) for k, cats in enumerate(held) for c in sorted(cats) if sum(c in other for other in held) == 1]


def balanced_rows(pool, count: int, seed: int, images: list[int], prefix: str) -> list[tuple]:
    """Which-image rows ``(pool images, question, family, answer)`` whose every block holds exactly as many
    categories as the block holding the asked one (uniform position, as ``traindata``'s builder places it).
    ``traindata`` draws the other images among those *without* the category, which hold fewer categories
    on average, so "name the fullest block" is right more often than a guess; here it is not."""
    rng = random.Random(f"{seed}:{prefix}:binding-balanced")
    pools = Pools(pool.index)
    held = pools.classes
    by_size: dict[int, list[str]] = defaultdict(list)
    for image in pools.certain:
        by_size[len(held[image])].append(image)
    rows, attempts = [], 0
    while len(rows) < count:
        attempts += 1
        if attempts > 20 * count + 100:
            raise ValueError(f"balanced_rows: {len(pool)} scenes cannot supply {count} questions of {images} blocks "
                             f"with equal numbers of categories ({len(rows)} found); render more scenes")
        n = rng.randint(*images)
        holder = rng.choice(pools.nonempty)
        target = rng.choice(sorted(held[holder]))
        same = by_size[len(held[holder])]
        others: list[str] = []
        for _ in range(50 * n):
            pick = rng.choice(same)
            if target not in held[pick] and pick != holder and pick not in others:
                others.append(pick)
            if len(others) == n - 1:
                break
        if len(others) < n - 1:
            continue
        position = rng.randrange(n)
        rows.append(([int(i) for i in others[:position] + [holder] + others[position:]], QUESTION.format(target),
                     FAMILY, f"image {position + 1}"))
    return rows


def twin_conversations(processor, rows: list[tuple], pool, turns: int = 1, seed: int = 0,
                       question_first: bool = False, labelled: bool = False) -> organism.Conversations:
    """Text-twin conversations of which-image rows ``(pool images, question, family, answer, ...)``.

    ``turns == 1``: the row's own question and answer. ``turns > 1``: the row's question first, then up to
    ``turns - 1`` more about other categories that exactly one block holds, as further user turns of the
    Qwen2-VL chat format; every answer (and its ``<|im_end|>``) is a target, nothing else is. The
    conversations hold no image (``images`` empty), so :func:`recipe.language_forward` runs them as text."""
    tokenizer = processor.tokenizer
    rng = random.Random(f"{seed}:binding-turns")
    pools = Pools(pool.index) if turns > 1 else None  # built once: the categories of every image
    ids, labels, family, answers = [], [], [], []
    for images, question, row_family, answer, *_ in rows:
        if row_family != FAMILY:
            raise ValueError(f"twin_conversations: a {row_family!r} row; the probe asks {FAMILY!r} questions only")
        prompt = twin_prompt(processor, question, [block_text(pool, i) for i in images], question_first, labelled)
        sequence = tokenizer(prompt, add_special_tokens=False).input_ids
        targets = [-100] * len(sequence)
        asked = [(question, answer)]
        if turns > 1:
            first = asked_category(question)
            more = [(c, k) for c, k in _unique_categories(pools, images) if c != first]
            rng.shuffle(more)
            asked += [(QUESTION.format(c), f"image {k + 1}") for c, k in more[: turns - 1]]
        for turn, (_, said) in enumerate(asked):
            reply = tokenizer(said + "<|im_end|>", add_special_tokens=False).input_ids
            sequence, targets = sequence + reply, targets + reply
            if turn + 1 < len(asked):
                nxt = (f"\n<|im_start|>user\nQuestion: {asked[turn + 1][0]}\nAnswer:<|im_end|>\n"
                       "<|im_start|>assistant\n")
                follow = tokenizer(nxt, add_special_tokens=False).input_ids
                sequence, targets = sequence + follow, targets + [-100] * len(follow)
        ids.append(sequence)
        labels.append(targets)
        family.append(f"twin_{FAMILY}")
        answers.append(answer)
    return organism.Conversations(ids, labels, [[] for _ in ids], family, answers)


@torch.no_grad()
def predicted_blocks(model, processor, rows: list[tuple], pool, question_first: bool = False,
                     labelled: bool = False) -> list[int]:
    """The block (1-based) each held-out twin question is answered with: the model's most likely number
    token after "image", over the numbers of the blocks shown (teacher-forced, one forward each)."""
    tokenizer = processor.tokenizer
    model.eval()
    picks = []
    for images, question, *_ in rows:
        blocks = [block_text(pool, i) for i in images]
        prompt = twin_prompt(processor, question, blocks, question_first, labelled) + "image"
        logits = model(input_ids=torch.tensor([tokenizer(prompt, add_special_tokens=False).input_ids])).logits[0, -1]
        numbers = number_tokens(tokenizer, len(images))
        picks.append(int(torch.stack([logits[t] for t in numbers]).argmax()) + 1)
    return picks


def number_tokens(tokenizer, blocks: int) -> list[int]:
    """The token of " k" after "image" for k = 1..blocks, as the answers are tokenized in training; refused
    unless each is one token of its own (a tokenizer that splits " 10" into " 1" and "0" would make block
    10 and block 1 the same pick)."""
    tokens = []
    for k in range(1, blocks + 1):
        answer = tokenizer(f"image {k}", add_special_tokens=False).input_ids
        if answer[:-1] != tokenizer("image", add_special_tokens=False).input_ids:
            raise ValueError(f"the tokenizer does not give ' {k}' after 'image' one token of its own: {answer}")
        tokens.append(answer[-1])
    if len(set(tokens)) != blocks:
        raise ValueError(f"the block numbers 1..{blocks} do not have distinct tokens: {tokens}")
    return tokens


def _items(text: str) -> int:
    """Items of a description: the categories it lists ("2 dog, 1 cat" holds 2; "none" 0)."""
    return 0 if text == "none" else len(text.split(", "))


def fullest_block(pool, images: list[int]) -> int | None:
    """The shortcut: the block (1-based) whose description has the most items; None on a tie (the rule
    then names no block — in balanced rows every question is a tie)."""
    counts = [_items(block_text(pool, i)) for i in images]
    if counts.count(max(counts)) > 1:
        return None
    return counts.index(max(counts)) + 1


def _rate(hits: list[int]) -> float | None:
    return round(sum(hits) / len(hits), 3) if hits else None


def failure_table(rows: list[tuple], picks: list[int], pool) -> dict:
    """Accuracy by the items of the block holding the category and of the other blocks (4 or more in one
    cell), and how the model relates to :func:`fullest_block` on the questions where the rule names a
    block (``ties``: the share where it names none) — what the model answers from when it does not look
    the category up. ``picks`` are stored too, so the table can be recomputed."""
    cells: dict[str, list[int]] = defaultdict(list)
    hits, agree, shortcut_right = [], [], []
    for (images, _question, _family, answer, *_), pick in zip(rows, picks, strict=True):
        right = int(answer.split()[-1])
        hit = int(pick == right)
        hits.append(hit)
        cells[f"answer image {right}"].append(hit)
        cells[f"items in its block: {_items(block_text(pool, images[right - 1]))}"].append(hit)
        others = sum(_items(block_text(pool, i)) for k, i in enumerate(images) if k != right - 1)
        cells[f"items in the other blocks: {min(others, 4)}{'+' if others >= 4 else ''}"].append(hit)
        rule = fullest_block(pool, images)
        if rule is not None:
            agree.append(int(pick == rule))
            shortcut_right.append(int(rule == right))
    return {"n": len(picks), "accuracy": _rate(hits), "picks": list(picks),
            "ties": round(1 - len(agree) / len(picks), 3),
            "fullest_block_rule_accuracy_untied": _rate(shortcut_right),
            "agrees_with_fullest_block_rule_untied": _rate(agree),
            "by": {k: {"n": len(v), "accuracy": _rate(v)} for k, v in sorted(cells.items())}}


def probe_model(probe: BindingProbe, si_dir: Path) -> tuple:
    """The si checkpoint's model and processor, or (``fresh``) a new language model of ``probe.shape``."""
    from transformers import Qwen2VLForConditionalGeneration

    from mimic_utils.models.vlm import load_processor

    if probe.shape and not probe.fresh:
        raise ValueError(f"binding probe {probe.name}: a shape ({probe.shape}) needs --fresh: si's language model "
                         "has its own")
    processor = load_processor(str(si_dir), "qwen2_vl")
    if probe.fresh:
        shape = {**ov.si_config(si_dir).text_shape(), **probe.shape}
        return tiny.build_organism(tokenizer=processor.tokenizer, seed=probe.seed, **shape)[0], processor
    return Qwen2VLForConditionalGeneration.from_pretrained(si_dir, dtype=torch.float32), processor


def run(probe: BindingProbe, si_dir: Path, work: Path, progress: bool = True) -> dict:
    """Train on text twins, score the held-out twins; returns the probe's record (curve, failure table)."""
    si = ov.si_config(si_dir)
    started = time.time()
    torch.manual_seed(probe.seed)
    model, processor = probe_model(probe, si_dir)
    train = organism.render_pool(probe.pool_images, si.seed, organism.TRAIN_STREAM, si.scene_params(), si.cell_px,
                                 progress)
    heldout = ov.heldout_pool(si, progress)
    if probe.balanced:
        rows = balanced_rows(train, probe.conversations, probe.seed + 10, probe.images, "ov-train")
        held_rows = balanced_rows(heldout, probe.heldout_questions, probe.seed + 11, probe.images, "ov-heldout")
    else:
        rows = ov.ov_rows(train, probe.conversations, probe.seed + 10, probe.images, {FAMILY: 1}, "ov-train")
        held_rows = ov.ov_rows(heldout, probe.heldout_questions, probe.seed + 11, probe.images, {FAMILY: 1},
                               "ov-heldout")
    convs = twin_conversations(processor, rows, train, probe.turns, probe.seed, probe.question_first, probe.labelled)
    held = twin_conversations(processor, held_rows, heldout, question_first=probe.question_first,
                              labelled=probe.labelled)
    sampler = organism.LengthBuckets([len(i) for i in convs.ids], probe.batch_tokens, 16, None, probe.seed)
    schedule = StageSchedule(probe.steps, probe.lr, probe.batch_tokens, warmup=min(50, probe.steps),
                             eval_every=probe.eval_every, checkpoint_every=50)
    log: list[dict] = []
    work.mkdir(parents=True, exist_ok=True)
    si_sha = ov.weights_sha256(si_dir)
    checkpoint = work / f"{probe.name}-{probe.digest()}-{si_sha[:8]}.pt"  # another si never resumes it
    organism.language_stage("binding", model, None, convs, None, held, schedule, probe.seed, checkpoint, log,
                            patch_grid=0, progress=progress, sampler=sampler)
    picks = predicted_blocks(model, processor, held_rows, heldout, probe.question_first, probe.labelled)
    curve = [{"step": e["step"], "loss": round(e["loss"], 4), "tf_which_block": round(e[f"tf_twin_{FAMILY}"], 3)}
             for e in log if f"tf_twin_{FAMILY}" in e]
    return {"probe": asdict(probe), "si_weights_sha256": si_sha, "parameters": tiny.count_parameters(model),
            "minutes": round((time.time() - started) / 60, 1),
            "chance": round(sum(1 / len(row[0]) for row in held_rows) / len(held_rows), 3),
            "curve": curve, "heldout": failure_table(held_rows, picks, heldout)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimic_utils.organism.binding", description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="names the JSON written into --out")
    parser.add_argument("--fresh", action="store_true", help="a freshly initialised language model instead of si's")
    parser.add_argument("--shape", default="{}", help='JSON, e.g. \'{"text_hidden": 256, "text_layers": 4, '
                                                      '"text_intermediate": 768}\' (with --fresh)')
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--turns", type=int, default=1)
    parser.add_argument("--question-first", action="store_true",
                        help="a diagnostic layout: the question before the blocks")
    parser.add_argument("--labels", action="store_true",
                        help='a diagnostic layout: "Image k: " before block k, as the ov stage\'s labelled prompts')
    parser.add_argument("--balanced", action="store_true",
                        help="every block holds as many categories as the one holding the asked category")
    parser.add_argument("--images", type=int, nargs=2, default=[2, 2])
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--si", default=None, help="si checkpoint folder (default outputs/cpu/models/si)")
    parser.add_argument("--out", default=None, help="folder of the JSON (default outputs/cpu/models/tried/binding)")
    args = parser.parse_args(argv)
    try:
        shape = json.loads(args.shape)
    except json.JSONDecodeError as err:
        parser.error(f"--shape: not JSON ({err}): {args.shape!r}")
    if not isinstance(shape, dict) or any(not isinstance(v, int) for v in shape.values()):
        parser.error(f"--shape: a JSON object of integers, got {args.shape!r}")
    if shape and not args.fresh:
        parser.error("--shape needs --fresh: si's language model has its own shape")
    low, high = args.images
    if min(args.turns, args.steps, args.eval_every) < 1 or args.lr <= 0 or not 2 <= low <= high <= 10:
        parser.error(f"--turns, --steps and --eval-every must be >= 1, --lr > 0 and --images within 2..10, got "
                     f"{args.turns}, {args.steps}, {args.eval_every}, {args.lr}, {args.images}")
    if args.question_first and args.turns > 1:
        parser.error("--question-first asks one question before the blocks; the further turns of --turns would "
                     "come after them")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", args.name):
        parser.error(f"--name names a file: letters, digits, '.', '_' and '-' only, got {args.name!r}")
    root = repo_root()
    si_dir = Path(args.si) if args.si else root / "outputs" / "cpu" / "models" / "si"
    out = Path(args.out) if args.out else root / "outputs" / "cpu" / "models" / "tried" / "binding"
    probe = BindingProbe(name=args.name, fresh=args.fresh, shape=shape, steps=args.steps, lr=args.lr,
                         turns=args.turns, question_first=args.question_first, labelled=args.labels,
                         balanced=args.balanced, images=list(args.images), eval_every=args.eval_every)
    record = run(probe, si_dir, out / "checkpoints", progress=sys.stderr.isatty())  # git-ignored
    given = argv if argv is not None else sys.argv[1:]
    record["command"] = "python -m mimic_utils.organism.binding " + shlex.join(given)
    path = out / f"{args.name}.json"
    write_json(path, record)
    table = record["heldout"]
    print(f"[binding] {path}: held-out which block {table['accuracy']} (chance {record['chance']}); where the "
          f"fullest-block rule names a block ({1 - table['ties']:.0%}), the model agrees with it "
          f"{table['agrees_with_fullest_block_rule_untied']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
