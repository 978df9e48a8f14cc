"""Probe: which language-model shape should the organism have? Stages 1 + 2 of both, at equal wall time.

    python -m mimic_utils.organism --probe --minutes 6      # writes outputs/cpu/models/probe.{json,md}

For each shape (by default today's ``256x4`` and the recipe's, ``params/cpu/organism.yaml``; ``192x8``)
the probe builds a fresh organism, loads the committed organism's vision tower (``outputs/cpu/models/si``)
so the 14-minute vision stage is not repeated, and trains alignment and instruction tuning (with
multiple choice when the recipe's ``instruct_weights`` has ``choice``) of the recipe for ``--minutes`` of wall time each: a few timed forward/backward passes
per stage fix the step counts, split between the stages as the recipe splits them. Both are then scored
on the same held-out questions: teacher-forced answers of every trained family, and real generation
through the adapter (counting, presence, listing, naming with the official scorers; multiple choice with
MuirBench's prompt and letter scorer, with its parse rate).

The merger: its output width is the language model's hidden size, so its last layer cannot be reused
for a narrower model. To keep the comparison fair, every shape gets the committed tower blocks and the
merger's norm and first layer, and a freshly initialised last merger layer (``merger.mlp.2``); stages 1
and 2 train the merger, as in the recipe. ``--steps N`` replaces the time budget by N steps per stage
(tests). Checkpoints and predictions go to ``outputs/<profile>/models/probe/`` (git-ignored); a rerun
resumes them.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from mimic_utils.models import tiny
from mimic_utils.organism import recipe
from mimic_utils.organism.config import OrganismConfig

MERGER_NOTE = ("vision tower blocks, merger norm and merger first layer from the base; the merger's last layer "
               "(output width = LM hidden size) freshly initialised for every shape alike; stages 1-2 train the "
               "merger and the language model, the tower stays frozen")
REUSED_MERGER_LAYER = "merger.mlp.2."


def shape_label(shape: dict) -> str:
    """``"192x8"``: hidden size × layers."""
    return f"{shape['text_hidden']}x{shape['text_layers']}"


def default_shapes(config: OrganismConfig) -> dict[str, dict]:
    """Today's shape (``wide``) and the recipe's; the ``deep`` one when the recipe is today's."""
    wide = tiny.ORGANISM_SHAPES["wide"]
    other = config.text_shape() if config.text_shape() != wide else tiny.ORGANISM_SHAPES["deep"]
    return {shape_label(wide): wide, shape_label(other): other}


def base_vision(base: Path) -> tuple[dict, str]:
    """The committed organism's vision state dict (``model.visual``) and its weights' sha256."""
    import hashlib

    from transformers import Qwen2VLForConditionalGeneration

    weights = Path(base) / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no organism to take the vision tower from — train one (make organism)")
    model = Qwen2VLForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    state = {k: v.detach().clone() for k, v in model.model.visual.state_dict().items()}
    return state, hashlib.sha256(weights.read_bytes()).hexdigest()


def build_probe_model(config: OrganismConfig, shape: dict, vision: dict, tokenizer):
    """A fresh organism of ``shape`` with the base's vision weights, the merger's last layer excepted."""
    model, processor = tiny.build_organism(tokenizer, seed=config.seed, **shape)
    keep = {k: v for k, v in vision.items() if not k.startswith(REUSED_MERGER_LAYER)}
    missing, unexpected = model.model.visual.load_state_dict(keep, strict=False)
    if unexpected or any(not k.startswith(REUSED_MERGER_LAYER) for k in missing):
        raise ValueError(f"the base's vision tower does not fit the organism: missing {missing}, unexpected {unexpected}")
    return model, processor


def seconds_per_step(model, features, convs, batch: int, patch_grid: int, repeats: int = 2) -> float:
    """Mean wall time of one forward + backward of a training batch (after one warm-up pass)."""
    pad_id = model.config.text_config.pad_token_id
    rng = random.Random(0)
    model.train()
    begin = 0.0
    for step in range(1 + repeats):
        if step == 1:
            begin = time.perf_counter()
        picks = rng.sample(range(len(convs)), min(batch, len(convs)))
        recipe.language_forward(model, features, convs, picks, patch_grid, pad_id).loss.backward()
    model.zero_grad(set_to_none=True)
    return (time.perf_counter() - begin) / repeats


def plan_steps(config: OrganismConfig, minutes: float | None, steps: int | None,
               per_step: dict[str, float]) -> dict[str, int]:
    """Steps of alignment and instruction: ``steps`` each, or as many as ``minutes`` allow, split between
    the two stages in the recipe's proportion of steps."""
    if steps is not None:
        return {"align": steps, "instruct": steps}
    share = config.align_steps / (config.align_steps + config.instruct_steps)
    total = minutes * 60 / (share * per_step["align"] + (1 - share) * per_step["instruct"])
    align = max(1, round(share * total))
    return {"align": align, "instruct": max(1, round(total) - align)}


def _tail_loss(log: list[dict], stage: str, last: int = 25) -> float | None:
    losses = [e["loss"] for e in log if e["stage"] == stage][-last:]
    return round(sum(losses) / len(losses), 4) if losses else None


def probe(config: OrganismConfig, base: Path, work: Path, shapes: dict[str, dict] | None = None,
          minutes: float | None = 6.0, steps: int | None = None, pool_images: int = 20000,
          conversations: int = 40000, heldout_questions: int = 600, choice_questions: int = 400,
          progress: bool = True) -> dict:
    """Train stages 1 + 2 of every shape at equal wall time (or ``steps`` per stage) on the base's vision
    tower and score them on the same held-out questions; returns the figures (see :func:`write_probe`)."""
    from mimic_utils.models.vlm import load_adapter

    if (minutes is None) == (steps is None):
        raise ValueError("probe: give minutes (equal wall time per shape) or steps (per stage), not both")
    shapes = shapes or default_shapes(config)
    started = time.time()
    vision, base_sha = base_vision(base)
    tokenizer = tiny.build_tokenizer(family="qwen2_vl")
    world = config.scene_params()
    train = recipe.render_pool(pool_images, config.seed, recipe.TRAIN_STREAM, world, config.cell_px, progress)
    heldout = recipe.render_pool(config.heldout_images, config.seed, recipe.HELDOUT_STREAM, world,
                                   config.cell_px, progress)
    first, processor = build_probe_model(config, next(iter(shapes.values())), vision, tokenizer)
    features = recipe.cache_vision(first, processor, train, progress=progress)  # the same tower for every shape
    heldout_features = recipe.cache_vision(first, processor, heldout, progress=progress)
    del first
    side, n_tokens = recipe.tokens_per_image(config, processor)
    stage_convs = {
        "align": recipe.training_conversations(config, train, processor, "describe", pool_images, n_tokens),
        "instruct": recipe.training_conversations(config, train, processor, "questions", conversations, n_tokens),
    }
    held = recipe.heldout_conversations(config, heldout, processor, "questions", n_tokens, heldout_questions)
    small = replace(config, heldout_questions=heldout_questions, heldout_choice_questions=choice_questions)
    records = recipe.heldout_records(small, work / "heldout", progress)
    choices = recipe.heldout_choice_records(small, work / "heldout", progress)
    mean_tokens = sum(map(len, stage_convs["instruct"].ids)) / len(stage_convs["instruct"])
    prepared = time.time() - started
    key = json.dumps([config.digest(), minutes, steps, pool_images, conversations, base_sha], sort_keys=True)
    import hashlib

    run_dir = work / "checkpoints" / hashlib.sha256(key.encode()).hexdigest()[:12]
    results = {}
    for label, shape in shapes.items():
        folder = run_dir / label
        folder.mkdir(parents=True, exist_ok=True)
        model, processor = build_probe_model(config, shape, vision, tokenizer)
        plan_path = folder / "plan.json"
        if plan_path.is_file():  # a rerun resumes the plan it made, not a new timing
            plan = json.loads(plan_path.read_text(encoding="utf-8"))
        else:
            per_step = {name: seconds_per_step(model, features, convs, config.batch, side)
                        for name, convs in stage_convs.items()}
            plan = {"seconds_per_step": {k: round(v, 4) for k, v in per_step.items()},
                    "steps": plan_steps(config, minutes, steps, per_step), "seconds": {}}
            plan_path.write_text(json.dumps(plan, indent=1), encoding="utf-8")
        log: list[dict] = []
        for name in ("align", "instruct"):
            schedule = recipe.StageSchedule(plan["steps"][name], config.lm_lr, config.batch,
                                              warmup=max(1, min(50, plan["steps"][name] // 10)),
                                              eval_every=plan["steps"][name])
            stage_log: list[dict] = []
            begin = time.time()
            recipe.language_stage(name, model, features, stage_convs[name], heldout_features, held, schedule,
                                    config.seed, folder / f"{name}.pt", stage_log, side, progress=progress,
                                    curves=False)
            plan["seconds"][name] = round(plan["seconds"].get(name, 0.0) + time.time() - begin, 1)
            plan_path.write_text(json.dumps(plan, indent=1), encoding="utf-8")
            log += stage_log
        model.eval()
        teacher = recipe.teacher_forced_accuracy(model, heldout_features, held, side,
                                                   model.config.text_config.pad_token_id)
        tiny.save_tiny(model, processor, folder / "model")
        adapter = load_adapter(folder / "model", family="qwen2_vl", dtype="float32")
        generated = recipe.evaluate_single_image(adapter, records, folder / "heldout.jsonl", progress=progress)
        generated["choice"] = recipe.evaluate_choice(adapter, choices, folder / "choice.jsonl", progress=progress)
        results[label] = {
            "shape": shape, "parameters": tiny.count_parameters(model),
            "text_cost": tiny.text_cost(model.config, context=round(mean_tokens / 2)),
            "steps": plan["steps"], "seconds_per_step": plan["seconds_per_step"], "train_seconds": plan["seconds"],
            "final_loss": {name: _tail_loss(log, name) for name in ("align", "instruct")},
            "teacher_forced": {k: round(v, 4) for k, v in teacher.items()}, "generated": generated,
        }
        del model, adapter
    return {
        "budget": {"minutes_per_shape": minutes, "steps_per_stage": steps, "pool_images": pool_images,
                   "instruct_conversations": conversations, "heldout_questions": heldout_questions,
                   "heldout_choice_questions": choice_questions, "threads": torch.get_num_threads(),
                   "mean_instruct_tokens": round(mean_tokens, 1), "preparation_seconds": round(prepared, 1),
                   "total_seconds": round(time.time() - started, 1)},
        "vision": {"base": str(base), "sha256": base_sha, "reuse": MERGER_NOTE},
        "recipe": asdict(config), "shapes": results,
    }


def _flat(figures: dict) -> dict[str, float]:
    """One shape's figures as ``name -> value`` rows for the Markdown table."""
    gen = figures["generated"]
    rows = {f"generated {k}": v["score"] for k, v in gen.items() if isinstance(v, dict) and "score" in v}
    rows["generated choice letter parse rate"] = gen["choice"]["parse_rate"]
    rows["generated choice chance"] = gen["choice"]["chance"]
    rows.update({f"generated choice {k}": v for k, v in gen["choice"]["by_kind"].items()})
    rows.update({f"counting, true count {k}": v for k, v in gen.get("counting_by_true_count", {}).items()})
    rows.update({f"teacher-forced {k[3:]}": v for k, v in figures["teacher_forced"].items()})
    rows.update({f"final loss {k}": v for k, v in figures["final_loss"].items()})
    rows.update({f"steps {k}": v for k, v in figures["steps"].items()})
    rows.update({f"train seconds {k}": v for k, v in figures["train_seconds"].items()})
    rows.update({f"seconds/step {k}": v for k, v in figures["seconds_per_step"].items()})
    rows["parameters"] = figures["parameters"]
    rows["decoder matrix parameters"] = figures["text_cost"]["decoder_matrix_params"]
    rows["forward MFLOPs/token"] = round(figures["text_cost"]["flops_per_token"] / 1e6, 2)
    return rows


def _relative(path: str) -> str:
    """A path as the checkout sees it (committed figures hold no machine's absolute path)."""
    from mimic_utils.artifacts import repo_root

    try:
        return str(Path(path).resolve().relative_to(repo_root().resolve()))
    except ValueError:
        return str(path)


def write_probe(result: dict, json_path: Path, command: str) -> tuple[Path, Path]:
    """``probe.json`` (every figure, a timestamp, the command) and ``probe.md`` (a side-by-side table)."""
    from datetime import datetime, timezone

    from mimic_utils.artifacts import write_json

    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(json_path, {"timestamp": stamp, "command": command, **result})
    return json_path, write_probe_markdown(json_path)


def write_probe_markdown(json_path: Path) -> Path:
    """``probe.md`` beside ``probe.json``, from what the json records (rerunnable without the probe)."""
    import json

    from mimic_utils.artifacts import write_text

    result = json.loads(Path(json_path).read_text(encoding="utf-8"))
    stamp, command = result["timestamp"], result["command"]
    labels = list(result["shapes"])
    flat = {label: _flat(result["shapes"][label]) for label in labels}
    names = list(dict.fromkeys(name for label in labels for name in flat[label]))
    budget = result["budget"]
    lines = [
        "# Organism shape probe", "",
        f"- when: {stamp}", f"- command: `{command}`",
        f"- budget: " + (f"{budget['minutes_per_shape']} min of stage 1+2 training per shape"
                         if budget["minutes_per_shape"] is not None else f"{budget['steps_per_stage']} steps per stage")
        + f", {budget['threads']} threads; {budget['pool_images']} training images, "
          f"{budget['heldout_questions']} + {budget['heldout_choice_questions']} held-out questions",
        f"- vision: `{_relative(result['vision']['base'])}` (sha256 `{result['vision']['sha256'][:16]}…`): {result['vision']['reuse']}",
        f"- stage-2 question mix (the recipe's at the time): `{json.dumps(result['recipe']['instruct_weights'])}`, "
        f"count weights `{result['recipe'].get('count_weights')}`"
        + ("" if result["recipe"]["instruct_weights"].get("choice") else
           " — no multiple choice was trained, so the multiple-choice rows measure the untrained format"),
        "", "| figure | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels),
        *[f"| {name} | " + " | ".join(str(flat[label].get(name, "")) for label in labels) + " |" for name in names],
        "", "Every figure, the recipe and the shapes: `probe.json` beside this file.", "",
    ]
    md_path = Path(json_path).with_suffix(".md")
    write_text(md_path, "\n".join(lines))
    return md_path
