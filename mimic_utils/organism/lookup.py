"""Probe: the smallest which-block lookup, on raw tokens — and what keeps it from forming.

    python -m mimic_utils.organism.lookup --name gap-0 --gap 0
    python -m mimic_utils.organism.lookup --name gap-18 --gap 18
    # each writes outputs/cpu/models/tried/lookup/<name>.json (the command, every setting, the curve;
    # rewritten after every point of the curve, "finished": false until the last)

The binding probe (:mod:`mimic_utils.organism.binding`) showed that the organism's language model does not
learn "Only one image contains a dog. Which image is it?" even when every image is given as its text twin.
This probe strips that question to its core. A sequence holds ``blocks`` blocks between the vision
delimiters, each with ``items`` categories written as the twins write them ("2 dog, 1 cat": a count before
each, " 1" after a comma being the same token as the answer " 1"); no category is in two blocks, so every
block is as full as the others. Then ``queries`` queries: a newline, a category, ``gap`` filler tokens and
the number of the block that holds it — the only targets. Each query's block is drawn uniformly and its
category among that block's categories not asked yet, so an answer can neither be copied from an earlier
query nor inferred from the earlier answers. The filler is the last ``gap`` tokens of what stands between
the asked category and the answer's number in the binding probe's real prompt (:func:`real_filler`:
". Which image is it?" … "assistant\nimage", 18 tokens in the organism's tokenizer), so ``gap=0`` asks for
the number right after the category and ``gap=18`` at the real distance. A prediction is the most likely of
the block numbers (as :func:`binding.predicted_blocks` scores), so chance is ``1 / blocks``.

A fresh language model of the recipe's shape is trained on fresh sequences every step (nothing to
memorise); the held-out sequences are asked at ``gap``. Two curricula: ``no_gap_share`` asks that share of
the training queries with no filler at all (can the lookup learned at distance 0 be carried to the real
distance?), and ``min_train_gap`` draws the filler length of the other training queries uniformly from
``min_train_gap..gap`` (no fixed distance to learn, only "the category asked last"). ``warm_steps`` stages
the curriculum in time instead: distance 0 alone first, then the task's distances, in one model (and with
``warm_blocks``, fewer blocks first). ``echo``
changes the answer instead of the schedule: the answer restates the asked category and then the number, so
the number is a distance-0 lookup from the restated category and the restating is a copy across the
filler — two steps, each with a target of its own (``heldout_full``: both right). ``labels`` writes
"Image k: " before each block, so a block's number stands inside it rather than being counted.
``reverse`` asks the other way, as count in image *i* and the other "read image *i*" families do: the query
names a block's number and the answer is the category that block holds (one item a block, so the answer
is unambiguous; each query a block not asked yet and fewer queries than blocks, so no answer is left to
elimination alone). The earlier answers narrow the later ones, so a pick is the likeliest of the block
categories not answered yet in the sequence, and chance is the mean of ``1 / (blocks - j)`` over queries
``j`` (:func:`reverse_chance`).
"""

from __future__ import annotations

import argparse
import random
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from mimic_utils.artifacts import repo_root, write_json
from mimic_utils.data.prompts import IMAGE_LABEL
from mimic_utils.data.scenes import CATEGORIES
from mimic_utils.models import tiny
from mimic_utils.organism.binding import QUESTION, number_tokens, twin_prompt
from mimic_utils.training.finetune import pad_batch


@dataclass(frozen=True)
class LookupTask:
    """Every value that shapes one run (recorded in its JSON)."""

    name: str = "gap-0"
    blocks: int = 2
    items: int = 4
    gap: int = 0
    #: share of training queries asked with no filler (a curriculum); held-out queries always use ``gap``
    no_gap_share: float = 0.0
    #: the other training queries draw their filler's length uniformly from ``min_train_gap..gap`` (None: ``gap``)
    min_train_gap: int | None = None
    #: a curriculum staged in time: the first ``warm_steps`` training steps ask every query at distance 0
    warm_steps: int = 0
    #: those warm steps also show only ``warm_blocks`` blocks (None: ``blocks``) — the number of blocks grown
    #: in time, as the distance is
    warm_blocks: int | None = None
    #: the answer restates the asked category (a target too) and then the number, right after it: the
    #: number becomes a distance-0 lookup from a token the model writes itself, the restating a copy
    echo: bool = False
    #: "Image k: " before each block, as the ov stage's labelled prompts put it (prompts.IMAGE_LABEL): the
    #: block's number is then a token inside it instead of something to count
    labels: bool = False
    #: the query names a block's number and the answer is its category (the number -> block lookup of the
    #: families that read image i); needs ``items == 1`` and ``queries < blocks``
    reverse: bool = False
    queries: int = 4
    steps: int = 600
    lr: float = 1e-3
    batch: int = 64
    heldout: int = 256
    eval_every: int = 100
    seed: int = 0


def real_filler(processor) -> list[int]:
    """The tokens between the asked category and the answer's number in the binding probe's twin prompt
    and answer ("image 1"), read off a real prompt rather than written out, so a change of wording shows."""
    tokenizer = processor.tokenizer
    asked = tokenizer(" dog", add_special_tokens=False).input_ids
    prompt = twin_prompt(processor, QUESTION.format("dog"), ["1 cat", "2 bus"]) + "image"
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    if len(asked) != 1 or asked[0] not in ids:
        raise ValueError(f"lookup probe: ' dog' is not one token of the twin prompt: {asked}")
    last = len(ids) - 1 - ids[::-1].index(asked[0])
    return ids[last + 1:]


@dataclass(frozen=True)
class Vocabulary:
    """The token ids a sequence is made of, from the organism's tokenizer."""

    categories: list[int]
    counts: list[int]  # "1".."5", the first count of a block
    later_counts: list[int]  # " 1".." 5", a count after a comma (" 1" is also the answer for block 1)
    numbers: list[int]  # the answer tokens " 1", " 2", ... (binding.number_tokens: as "image 1" ends)
    filler: list[int]
    comma: int
    newline: int
    start: int
    end: int
    #: the tokens of "Image k: " for k = 1..blocks
    labels: tuple = ()

    @classmethod
    def of(cls, processor, blocks: int) -> Vocabulary:
        """Refuses a tokenizer that does not give every count and block number one token; categories that
        are not one token are left out (the twins' lookup of a multi-token name is another question)."""
        tokenizer = processor.tokenizer

        def one(text: str) -> int:
            ids = tokenizer(text, add_special_tokens=False).input_ids
            if len(ids) != 1:
                raise ValueError(f"lookup probe: {text!r} is not one token in this tokenizer: {ids}")
            return ids[0]

        names = [" " + c.name for c in CATEGORIES]
        singles = [tokenizer(n, add_special_tokens=False).input_ids for n in names]
        return cls([ids[0] for ids in singles if len(ids) == 1], [one(str(n)) for n in range(1, 6)],
                   [one(f" {n}") for n in range(1, 6)], number_tokens(tokenizer, blocks),
                   real_filler(processor), one(","), one("\n"), tokenizer.convert_tokens_to_ids("<|vision_start|>"),
                   tokenizer.convert_tokens_to_ids("<|vision_end|>"),
                   tuple(tuple(tokenizer(IMAGE_LABEL.format(k), add_special_tokens=False).input_ids)
                         for k in range(1, blocks + 1)))


def check(task: LookupTask, vocab: Vocabulary) -> None:
    """Refuses a task the vocabulary cannot supply, before any model is built."""
    problems = []
    if not 0 <= task.gap <= len(vocab.filler):
        problems.append(f"gap {task.gap} is outside 0..{len(vocab.filler)} (the real filler's length)")
    if task.min_train_gap is not None and not 0 <= task.min_train_gap <= task.gap:
        problems.append(f"min_train_gap {task.min_train_gap} is outside 0..gap ({task.gap})")
    if task.reverse and not (task.items == 1 and task.queries < task.blocks):
        problems.append(f"reverse needs items 1 (got {task.items}) and queries below blocks (got {task.queries} "
                        f"for {task.blocks}): one category a block, and no answer left to elimination")
    if task.reverse and task.warm_blocks is not None and task.queries >= task.warm_blocks:
        problems.append(f"reverse with warm_blocks {task.warm_blocks} needs queries below it (got {task.queries})")
    if task.reverse and task.echo:
        problems.append("reverse and echo do not go together (echo restates a category, reverse answers one)")
    if task.queries > task.items and not task.reverse:
        problems.append(f"queries ({task.queries}) exceed items ({task.items}): a block could run out of "
                        "categories not asked yet")
    if task.blocks * task.items > len(vocab.categories):
        problems.append(f"{task.blocks} blocks of {task.items} items need {task.blocks * task.items} categories; "
                        f"the tokenizer has {len(vocab.categories)} one-token ones")
    if not 0 <= task.warm_steps < task.steps:
        problems.append(f"warm_steps {task.warm_steps} is outside 0..steps - 1 ({task.steps - 1})")
    if task.warm_blocks is not None and not (2 <= task.warm_blocks <= task.blocks and task.warm_steps > 0):
        problems.append(f"warm_blocks {task.warm_blocks} needs warm_steps > 0 and to lie within 2..blocks ({task.blocks})")
    if not 0.0 <= task.no_gap_share <= 1.0:
        problems.append(f"no_gap_share {task.no_gap_share} is outside [0, 1]")
    if problems:
        raise ValueError(f"lookup probe {task.name}: " + "; ".join(problems))


def sample(task: LookupTask, vocab: Vocabulary, rng: random.Random,
           gap: int | None = None) -> tuple[list[int], list[int]]:
    """One sequence and its targets (-100 everywhere but the answers' numbers). ``gap=None``: the training
    draw (no filler on a ``no_gap_share`` of the queries; on the rest ``task.gap`` tokens, or a length drawn
    from ``task.min_train_gap..task.gap``)."""
    drawn = rng.sample(vocab.categories, task.blocks * task.items)
    blocks = [drawn[k * task.items:(k + 1) * task.items] for k in range(task.blocks)]
    ids: list[int] = []
    for k, held in enumerate(blocks):
        ids += list(vocab.labels[k]) if task.labels else []
        ids.append(vocab.start)
        for j, category in enumerate(held):
            ids += [vocab.comma, rng.choice(vocab.later_counts)] if j else [rng.choice(vocab.counts)]
            ids.append(category)
        ids.append(vocab.end)
    labels = [-100] * len(ids)
    if task.reverse:
        for k in rng.sample(range(task.blocks), task.queries):
            width = gap if gap is not None else _train_width(task, rng)
            query = [vocab.newline, vocab.numbers[k]] + (vocab.filler[-width:] if width else [])
            ids += query + [blocks[k][0]]
            labels += [-100] * len(query) + [blocks[k][0]]
        return ids, labels
    unasked = [list(held) for held in blocks]
    for _ in range(task.queries):
        k = rng.randrange(task.blocks)
        category = unasked[k].pop(rng.randrange(len(unasked[k])))
        width = gap if gap is not None else _train_width(task, rng)
        query = [vocab.newline, category] + (vocab.filler[-width:] if width else [])
        answer = [category, vocab.numbers[k]] if task.echo else [vocab.numbers[k]]
        ids += query + answer
        labels += [-100] * len(query) + answer
    return ids, labels


def _train_width(task: LookupTask, rng: random.Random) -> int:
    """The filler length of one training query."""
    if rng.random() < task.no_gap_share:
        return 0
    return task.gap if task.min_train_gap is None else rng.randint(task.min_train_gap, task.gap)


def batch(task: LookupTask, vocab: Vocabulary, rng: random.Random, n: int, pad: int,
          gap: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences, right-padded (attention is causal, so no real token sees a pad)."""
    drawn = [sample(task, vocab, rng, gap) for _ in range(n)]
    return pad_batch([ids for ids, _ in drawn], pad), pad_batch([labels for _, labels in drawn], -100)


@torch.no_grad()
def answer_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """The logits that predict each next token of ``ids`` (one forward; leaves ``model`` in eval mode, as
    :func:`binding.predicted_blocks` does): what :func:`accuracy` and :func:`echo_accuracy` both read."""
    model.eval()
    return model(input_ids=ids).logits[:, :-1]


def accuracy(logits: torch.Tensor, vocab: Vocabulary, labels: torch.Tensor) -> float:
    """Share of answers whose block number is the most likely of the block numbers."""
    numbers = torch.tensor(vocab.numbers)
    targets = labels[:, 1:]
    asked = torch.isin(targets, numbers)
    picked = numbers[logits[asked][:, numbers].argmax(-1)]
    return float((picked == targets[asked]).float().mean())


def reverse_chance(task: LookupTask) -> float:
    """What a guess among the categories not answered yet scores, over a sequence's queries."""
    return sum(1 / (task.blocks - j) for j in range(task.queries)) / task.queries


def reverse_accuracy(logits: torch.Tensor, vocab: Vocabulary, ids: torch.Tensor, labels: torch.Tensor) -> float:
    """With ``reverse``: share of answers whose category is the most likely of the categories the sequence's
    blocks hold (those before its first query) that no earlier query has answered (:func:`reverse_chance`)."""
    targets = labels[:, 1:]
    categories = torch.tensor(vocab.categories)
    right = total = 0
    for row in range(ids.shape[0]):
        first_query = int((ids[row] == vocab.newline).nonzero()[0])
        held = ids[row, :first_query]
        candidates = held[torch.isin(held, categories)]
        for position in (targets[row] != -100).nonzero().flatten().tolist():
            picked = candidates[logits[row, position, candidates].argmax()]
            right += int(picked == targets[row, position])
            total += 1
            candidates = candidates[candidates != targets[row, position]]  # answered: no longer a candidate
    return right / total


def echo_accuracy(logits: torch.Tensor, vocab: Vocabulary, labels: torch.Tensor) -> float:
    """With ``echo``: share of answers right in full — the restated category is the most likely token of the
    whole vocabulary and the number after it the most likely block number (teacher-forced, as
    :func:`accuracy`). What a generated answer needs, where :func:`accuracy` reads the number alone."""
    numbers = torch.tensor(vocab.numbers)
    targets = labels[:, 1:]
    echoed = (targets != -100) & ~torch.isin(targets, numbers)
    copied = logits.argmax(-1) == targets
    picked = numbers[logits[..., numbers].argmax(-1)] == targets
    after = torch.zeros_like(echoed)
    after[:, :-1] = echoed[:, :-1] & copied[:, :-1] & picked[:, 1:]  # the number follows its category
    return float(after.sum() / echoed.sum())


def run(task: LookupTask, processor, shape: dict[str, int], progress: bool = True,
        on_point: Callable[[dict], None] | None = None) -> dict:
    """Train a fresh language model of ``shape`` on fresh sequences; the held-out curve at ``task.gap``.
    ``on_point`` gets the record so far (``"finished": False``) after every point of the curve, so a run
    stopped early still leaves its curve."""
    vocab = Vocabulary.of(processor, task.blocks)
    check(task, vocab)
    started = time.time()
    torch.manual_seed(task.seed)
    model = tiny.build_organism(tokenizer=processor.tokenizer, seed=task.seed, **shape)[0]
    pad = model.config.text_config.pad_token_id
    held = batch(task, vocab, random.Random(f"{task.seed}:heldout"), task.heldout, pad, task.gap)
    rng = random.Random(f"{task.seed}:train")
    warm = replace(task, blocks=task.warm_blocks) if task.warm_blocks else task
    optimizer = torch.optim.AdamW(model.parameters(), lr=task.lr, weight_decay=0.01)
    record = {"task": asdict(task), "shape": shape, "parameters": tiny.count_parameters(model),
              "filler": processor.tokenizer.decode(vocab.filler[-task.gap:]) if task.gap else "",
              "chance": round(reverse_chance(task) if task.reverse else 1 / task.blocks, 3), "curve": []}
    for step in tqdm(range(1, task.steps + 1), desc=f"lookup {task.name}", disable=not progress):
        model.train()
        if step <= task.warm_steps:
            ids, labels = batch(warm, vocab, rng, task.batch, pad, 0)
        else:
            ids, labels = batch(task, vocab, rng, task.batch, pad)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % task.eval_every == 0 or step == task.steps:
            logits = answer_logits(model, held[0])
            score = reverse_accuracy(logits, vocab, *held) if task.reverse else accuracy(logits, vocab, held[1])
            point = {"step": step, "loss": round(loss.item(), 4), "heldout": round(score, 3)}
            if task.echo:
                point["heldout_full"] = round(echo_accuracy(logits, vocab, held[1]), 3)
            record["curve"].append(point)
            record["minutes"] = round((time.time() - started) / 60, 1)
            if on_point is not None and step < task.steps:
                on_point({**record, "curve": list(record["curve"]), "finished": False})
    return {**record, "finished": True}


def main(argv: list[str] | None = None) -> int:
    from mimic_utils.models.vlm import load_processor
    from mimic_utils.organism import ov

    parser = argparse.ArgumentParser(prog="python -m mimic_utils.organism.lookup",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="names the JSON written into --out")
    parser.add_argument("--gap", type=int, default=0, help="filler tokens between the category and the number")
    parser.add_argument("--no-gap-share", type=float, default=0.0,
                        help="share of training queries asked with no filler (held-out ones use --gap)")
    parser.add_argument("--min-train-gap", type=int, default=None,
                        help="training fillers drawn uniformly from this length to --gap (default: all --gap)")
    parser.add_argument("--warm-steps", type=int, default=0,
                        help="first training steps with every query at distance 0 (a curriculum staged in time)")
    parser.add_argument("--warm-blocks", type=int, default=None,
                        help="blocks shown in the warm steps (the number of blocks grown in time)")
    parser.add_argument("--echo", action="store_true",
                        help="the answer restates the asked category, then the number right after it")
    parser.add_argument("--labels", action="store_true", help='"Image k: " before each block')
    parser.add_argument("--reverse", action="store_true",
                        help="the query names a block's number, the answer is its category (use --items 1)")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--queries", type=int, default=4, help="at most --items (with --reverse: below --blocks)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--si", default=None, help="si checkpoint folder: its tokenizer and shape")
    parser.add_argument("--out", default=None, help="folder of the JSON (default outputs/cpu/models/tried/lookup)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", args.name):
        parser.error(f"--name names a file: letters, digits, '.', '_' and '-' only, got {args.name!r}")
    if min(args.steps, args.queries, args.items) < 1 or not 2 <= args.blocks <= 10 or args.lr <= 0:
        parser.error(f"--steps, --queries and --items must be >= 1, --blocks within 2..10 and --lr > 0, got "
                     f"{args.steps}, {args.queries}, {args.items}, {args.blocks}, {args.lr}")
    root = repo_root()
    si_dir = Path(args.si) if args.si else root / "outputs" / "cpu" / "models" / "si"
    out = Path(args.out) if args.out else root / "outputs" / "cpu" / "models" / "tried" / "lookup"
    task = LookupTask(name=args.name, blocks=args.blocks, items=args.items, gap=args.gap,
                      no_gap_share=args.no_gap_share, min_train_gap=args.min_train_gap, queries=args.queries,
                      warm_steps=args.warm_steps, warm_blocks=args.warm_blocks, echo=args.echo, labels=args.labels, reverse=args.reverse,
                      steps=args.steps, lr=args.lr)
    processor = load_processor(str(si_dir), "qwen2_vl")
    try:
        check(task, Vocabulary.of(processor, task.blocks))
    except ValueError as err:
        parser.error(str(err))
    given = argv if argv is not None else sys.argv[1:]
    command = "python -m mimic_utils.organism.lookup " + shlex.join(given)
    path = out / f"{args.name}.json"
    record = run(task, processor, ov.si_config(si_dir).text_shape(), progress=sys.stderr.isatty(),
                 on_point=lambda partial: write_json(path, {**partial, "command": command}))
    write_json(path, {**record, "command": command})
    last = record["curve"][-1]
    print(f"[lookup] {path}: held-out {last['heldout']} at step {last['step']} (chance {record['chance']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
