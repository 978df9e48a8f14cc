"""Supervised finetuning on conversations, as a recipe: data, model, loop, checkpoint.

    config = FinetuneConfig(steps=400, lr=2e-4, batch=16)
    finetune(adapter, multi_image, single_image, config, out_dir)   # saves an HF folder load_adapter reads

* **Data.** Conversations from :mod:`mimic_utils.data.traindata` (notebook 01's ``train/``). Each step's batch
  mixes multi-image and single-image conversations: every item is single-image with probability
  ``single_ratio``, so single-image skill is rehearsed while multi-image aggregation is taught. With
  ``group_by_images`` each batch holds one number of images (the same conversations, drawn as often, with
  less padding).
* **Model.** The *data-centric* regime of the paper: vision tower and projector frozen, the language model
  trained (``train=("language_model",)``); notebook 05's LoRA regime goes through the same loop.
* **Loop.** AdamW, linear warmup then cosine decay, gradient clipping and accumulation; the loss is taken
  on the assistant's answer tokens only (answer and end-of-turn, via ``VLMAdapter.prepare(answers=…)``).
  Batches and torch's random state (dropout) depend only on (seed, step, micro-batch, process), so an
  interrupted run resumed from its last checkpoint ends at the same weights as one never stopped.
* **Scale-out.** Given an ``accelerate.Accelerator`` (``accelerate launch -m mimic_utils.launch``), the
  model and optimizer are prepared by it and every forward goes through the prepared (DDP / FSDP /
  DeepSpeed) module, backward through ``accelerator.backward``, clipping through
  ``accelerator.clip_grad_norm_``, and gradients are only synchronised on the last micro-batch of a step.
  Each process draws its own micro-batches (the stream depends on its rank).
* **Precision.** A model loaded in bf16/fp16 keeps its *trained* parameters in fp32 (master weights) and
  runs its forward under autocast, so small updates are not rounded away; frozen weights stay 16-bit.
* **Checkpoint.** Atomic ``torch.save`` of the trained parameters, the optimizer, the step and the loss
  log every ``checkpoint_every`` steps, as tensors and plain values only, resumed with
  ``torch.load(weights_only=True)`` (a checkpoint holding anything else is refused, naming the file); the
  final model is saved with ``save_pretrained`` (safetensors).
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from mimic_utils.artifacts import atomic_path, note, write_json
from mimic_utils.evaluation.harness import load_images
from mimic_utils.models.vlm import get_family, load_adapter, model_fingerprint, settable_preprocessing
from mimic_utils.data.prompts import HUB_FAMILY, prompt_family

# --- the loop every training in the study shares (the organism's stages too) -----------------------


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warmup to ``base``, then cosine decay to 10% of it."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def step_rng(seed: int, stage: str, step: int, micro: int = 0, rank: int = 0) -> random.Random:
    """The random stream of one micro-batch: it depends on (seed, stage, step, micro, rank) only, so a
    resumed run draws exactly the batches an uninterrupted one would have."""
    extra = f":{micro}:{rank}" if (micro or rank) else ""
    return random.Random(f"{seed}:{stage}:{step}{extra}")


@dataclass(frozen=True)
class StageSchedule:
    """Steps, learning rate, batch and bookkeeping of one training stage."""

    steps: int
    lr: float
    batch: int
    warmup: int = 100
    clip: float = 1.0
    checkpoint_every: int = 250
    eval_every: int = 500
    weight_decay: float = 0.01
    accumulate: int = 1


def train_stage(name: str, module: nn.Module, params: list[nn.Parameter], loss_fn, schedule: StageSchedule,
                seed: int, checkpoint: Path, log: list[dict], evaluate=None, progress: bool = True,
                save_keys: set[str] | None = None, accelerator=None) -> None:
    """Run (or resume) one stage: AdamW, warmup + cosine, clipping, accumulation, checkpoints, a loss log.

    ``loss_fn(rng, batch, model) -> loss`` draws its own micro-batch from the given random stream and runs
    the forward through ``model``: the module itself, or the accelerator-prepared wrapper under
    ``accelerate launch`` (a forward that bypasses the wrapper would not synchronise gradients).
    ``evaluate()`` returns held-out metrics logged every ``eval_every`` steps and at the end. ``save_keys``
    limits checkpoints to those state-dict entries (the trained ones), so a large frozen base is not copied.
    """
    optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    # earlier: the stage's time before this resume; unknown (None) when resumed from a checkpoint that
    # predates the record, and then no checkpoint of this stage records one: a part would read as the whole
    start, earlier = _resume(checkpoint, module, optimizer, log, name, schedule.steps)
    if start >= schedule.steps:
        return
    clock = time.time()
    rank, target = 0, module
    if accelerator is not None:
        target, optimizer = accelerator.prepare(module, optimizer)
        rank = accelerator.process_index
    is_main = accelerator is None or accelerator.is_main_process
    module.train()
    bar = tqdm(range(start, schedule.steps), desc=f"stage {name}", initial=start, total=schedule.steps,
               disable=not (progress and is_main), mininterval=2)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, schedule.steps, schedule.lr, schedule.warmup)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(schedule.accumulate):
            rng = step_rng(seed, name, step, micro, rank)
            torch.manual_seed(rng.getrandbits(63))  # dropout masks, like the batch, follow the step
            last = micro == schedule.accumulate - 1
            with (accelerator.no_sync(target) if accelerator is not None and not last else nullcontext()):
                loss = loss_fn(rng, schedule.batch, target) / schedule.accumulate
                (accelerator.backward(loss) if accelerator is not None else loss.backward())
            total += loss.item()
        if accelerator is not None:
            accelerator.clip_grad_norm_(params, schedule.clip)
            total = accelerator.reduce(torch.tensor(total), reduction="mean").item()
        else:
            torch.nn.utils.clip_grad_norm_(params, schedule.clip)
        optimizer.step()
        done = step + 1
        entry = {"stage": name, "step": done, "loss": total}
        if evaluate is not None and (done % schedule.eval_every == 0 or done == schedule.steps):
            entry.update(evaluate())
            module.train()
        log.append(entry)
        bar.set_postfix(loss=f"{total:.3f}")
        if is_main and (done % schedule.checkpoint_every == 0 or done == schedule.steps):
            save_checkpoint(checkpoint, module, optimizer, done, log, save_keys,
                            seconds=None if earlier is None else earlier + time.time() - clock)
    if accelerator is not None:
        accelerator.wait_for_everyone()


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be resumed safely; the message names the file."""


def load_checkpoint(path: Path) -> dict:
    """A checkpoint read with torch's restricted unpickler (``weights_only=True``): tensors, numbers,
    strings and plain containers only. A checkpoint file from a shared folder or a colleague's run can
    otherwise run code when it is resumed; one holding anything else is refused, naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: refused to resume: the file holds objects other than tensors and plain values, which "
            f"could run code when loaded ({reason}). Checkpoints this package writes never do; delete the "
            f"file to restart the stage from scratch") from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable training checkpoint ({err}); delete it to restart the stage") from None
    missing = sorted({"module", "optimizer", "step", "log"} - set(state if isinstance(state, dict) else ()))
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint of this package (lacks {missing})")
    return state


def _recorded_seconds(state: dict) -> float | None:
    """The ``seconds`` a checkpoint's state records (:func:`save_checkpoint`), ``None`` when it predates them."""
    return None if state.get("seconds") is None else float(state["seconds"])


def checkpoint_progress(path: Path) -> tuple[int, float | None]:
    """A stage checkpoint's step and the wall seconds it had trained for when saved (over all its resumes;
    evaluations included), read in one load: ``(0, None)`` without a checkpoint, seconds ``None`` for one
    that predates the record. What :func:`train_stage` resumes from; a caller timing its stages reads it
    first, since a resumed stage's clock misses the steps before, and a run that resumes a phase from
    another run's checkpoint counts that phase's earlier time from here rather than by hand."""
    if not Path(path).is_file():
        return 0, None
    state = load_checkpoint(Path(path))
    return int(state["step"]), _recorded_seconds(state)


def _resume(checkpoint: Path, module: nn.Module, optimizer, log: list[dict], name: str,
            steps: int) -> tuple[int, float | None]:
    """Load a checkpoint if there is one (safely: :func:`load_checkpoint`); returns the step to continue from
    and the stage's seconds before it (0 from scratch; ``None`` from a checkpoint that predates the record)."""
    if not checkpoint.is_file():
        return 0, 0.0
    state = load_checkpoint(checkpoint)
    missing, unexpected = module.load_state_dict(state["module"], strict=False)
    if unexpected:
        raise ValueError(f"{checkpoint}: holds weights this model does not have, e.g. {unexpected[:3]}")
    optimizer.load_state_dict(state["optimizer"])
    log[:] = state["log"]
    if state["step"] < steps:
        note(f"[train] {name}: resuming at step {state['step']}/{steps} from {checkpoint}")
    return state["step"], _recorded_seconds(state)


def plain(value):
    """``value`` with numpy scalars and one-element tensors made Python numbers, recursively, so that a
    loss log holds only what ``torch.load(weights_only=True)`` accepts."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(path: Path, module: nn.Module, optimizer, step: int, log: list[dict],
                    keys: set[str] | None = None, seconds: float | None = None) -> None:
    """Atomically save the (trained part of the) module, the optimizer, the step and the loss log, all as
    tensors and plain values: what :func:`load_checkpoint` reads back with ``weights_only=True``. Nothing
    else is needed to resume exactly: the batches and dropout of a step follow from (seed, stage, step).
    ``seconds``: the stage's training time so far (:func:`checkpoint_progress`)."""
    weights = module.state_dict()
    if keys is not None:
        weights = {k: v for k, v in weights.items() if k in keys}
    state = {"module": weights, "optimizer": optimizer.state_dict(), "step": int(step), "log": plain(log)}
    if seconds is not None:
        state["seconds"] = float(seconds)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def pad_batch(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad token lists into one tensor."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


# --- supervised finetuning of any adapter -----------------------------------------------------------


@dataclass(frozen=True)
class FinetuneConfig:
    """The knobs of a finetuning run (recorded beside the saved model)."""

    steps: int = 300
    lr: float = 2e-4
    batch: int = 16
    accumulate: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    clip: float = 1.0
    single_ratio: float = 0.25
    max_images: int = 10
    train: tuple[str, ...] = ("language_model",)
    lora: dict | None = None  # {"r", "alpha", "dropout"}: LoRA on the language model instead of full training
    checkpoint_every: int = 50
    seed: int = 0
    #: each batch's conversations share one number of images (:func:`grouped_batch`): the same conversations
    #: drawn as often, with the padding between a 1-image and a 10-image row gone
    group_by_images: bool = False

    def digest(self) -> str:
        """Checkpoints of another configuration are never resumed. Keys added later count only when set, so
        the runs recorded before them keep their digest."""
        values = asdict(self)
        if not values["group_by_images"]:
            del values["group_by_images"]
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def data_digest(records: list[dict]) -> str:
    """The training conversations as a digest of their ids, in any order: what "the same data" means for
    a resumed checkpoint and for the convergence benchmark's cached runs."""
    return hashlib.sha256("\n".join(sorted(r["id"] for r in records)).encode()).hexdigest()


def run_digest(config: FinetuneConfig, adapter, records: list[dict]) -> str:
    """Checkpoints are resumed only by the same run: same configuration, same starting model (weights,
    mask, preprocessing) and the same training conversations."""
    key = json.dumps([config.digest(), model_fingerprint(adapter.settings), data_digest(records)], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def set_trainable(model: nn.Module, prefixes: tuple[str, ...]) -> list[str]:
    """Freeze everything, then unfreeze parameters whose name contains one of ``prefixes`` (e.g.
    ``language_model`` — the vision tower and projector stay frozen). Returns the trained names."""
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(any(p in name for p in prefixes))
        if param.requires_grad:
            names.append(name)
    if not names:
        raise ValueError(f"no parameter name contains any of {prefixes}; nothing would be trained")
    return names


#: Every Linear of the language model of the three families (Qwen2 blocks), and nothing of the vision tower
#: or ``lm_head``: the official recipe's LoRA targets.
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def apply_lora(adapter, r: int = 128, alpha: int = 32, dropout: float = 0.05, kbit: bool = False) -> list[str]:
    """Wrap ``adapter.model`` with peft LoRA (official shape by default: r 128, alpha 32, dropout 0.05) on
    :data:`LORA_TARGETS`; the projector is trained in full (``modules_to_save``). With ``kbit`` (a 4-bit
    base on CUDA) ``prepare_model_for_kbit_training`` runs first. Returns the trained parameter names."""
    # peft takes seconds to import and only LoRA runs need it
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if kbit:
        adapter.model = prepare_model_for_kbit_training(adapter.model, use_gradient_checkpointing=False)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS,
                        modules_to_save=[get_family(adapter.family).projector])
    adapter.model = get_peft_model(adapter.model, config)
    return [n for n, p in adapter.model.named_parameters() if p.requires_grad]


def sft_batch(adapter, records: list[dict], vision_cache: bool = False):
    """A batch of conversations as the model reads them in training: prompts with their answers, left-padded
    to the longest row (``adapter.prepare``)."""
    samples = [{"images": load_images(r["images"]), "question": r["question"], "task_family": prompt_family(r["family"]),
                "image_labels": bool(r.get("image_labels", False))} for r in records]
    return adapter.prepare(samples, answers=[r["gt"] for r in records], vision_cache=vision_cache)


def sft_loss(adapter, records: list[dict], model: nn.Module | None = None) -> torch.Tensor:
    """Cross-entropy on the answer and end-of-turn tokens of a batch of conversations (left-padded),
    the forward run through ``model`` (the accelerator-prepared wrapper) when given."""
    # the vision cache runs the live projector outside ``model``'s forward, which a DDP/FSDP wrapper
    # would not see: it is used only when ``model`` is the adapter's own module
    batch = sft_batch(adapter, records, adapter.use_vision_cache and (model is None or model is adapter.model))
    ids = batch.inputs["input_ids"]
    labels = torch.full_like(ids, -100)
    tokenizer = adapter.tokenizer
    for row, record in enumerate(records):
        n = len(tokenizer(record["gt"] + adapter.end_of_turn, add_special_tokens=False).input_ids)
        labels[row, -n:] = ids[row, -n:]  # left padding: every row ends with its answer
    return adapter.forward(batch, model=model, labels=labels).loss  # under the adapter's image-block mask, if any


def mixed_batch(rng: random.Random, multi: list[dict], single: list[dict], size: int, single_ratio: float) -> list[dict]:
    """``size`` conversations, each single-image with probability ``single_ratio``."""
    return [rng.choice(single if single and rng.random() < single_ratio else multi) for _ in range(size)]


def by_images(records: list[dict]) -> dict[int, list[dict]]:
    """Conversations grouped by their number of images, for :func:`grouped_batch`."""
    groups: dict[int, list[dict]] = {}
    for record in records:
        groups.setdefault(len(record["images"]), []).append(record)
    return dict(sorted(groups.items()))


def grouped_batch(rng: random.Random, multi: dict[int, list[dict]], single: dict[int, list[dict]], size: int,
                  single_ratio: float) -> list[dict]:
    """``size`` conversations with one number of images (groups from :func:`by_images`).

    Why: a batch pads every row to its longest, and a 10-image row is about ten 1-image rows long, so
    :func:`mixed_batch`'s batches are much padding. Here the batch is single-image with probability
    ``single_ratio``, its number of images is drawn in proportion to the group's size, and its rows
    uniformly from that group: each conversation is still drawn with :func:`mixed_batch`'s probability. What
    changes is which ones share a batch: with ``accumulate`` 1 a step is all single-image or all of one
    number of images, so the loss from step to step is noisier and the optimizer takes whole steps of one
    kind (whether that costs loss per step is ``make bench NAME=lora_steps``' question)."""
    groups = single if single and rng.random() < single_ratio else multi
    counts = list(groups)
    chosen = groups[rng.choices(counts, weights=[len(groups[n]) for n in counts])[0]]
    return [rng.choice(chosen) for _ in range(size)]


def batch_sampler(multi: list[dict], single: list[dict], single_ratio: float, group_by_images: bool = False):
    """``draw(rng, size)``: a training batch drawn as a run with these settings draws it (:func:`grouped_batch`
    with ``group_by_images``, else :func:`mixed_batch`) — the one place that choice is made, for the training
    loop and for the benchmarks that time its batches."""
    if group_by_images:
        groups = by_images(multi), by_images(single)
        return lambda rng, size: grouped_batch(rng, *groups, size, single_ratio)
    return lambda rng, size: mixed_batch(rng, multi, single, size, single_ratio)


def split_conversations(records: list[dict], max_images: int) -> tuple[list[dict], list[dict]]:
    """(multi-image, single-image) conversations, dropping samples above ``max_images`` images; a
    one-image conversation mixed in from the hub or from the ov-stage data counts as single-image."""
    def is_single(r: dict) -> bool:
        return r["origin"] == "single" or (r["origin"] in (HUB_FAMILY, "ov") and len(r["images"]) == 1)

    kept = [r for r in records if len(r["images"]) <= max_images]
    return [r for r in kept if not is_single(r)], [r for r in kept if is_single(r)]


def master_weights(model: nn.Module) -> torch.dtype | None:
    """Keep the trained parameters of a 16-bit model in fp32 (the frozen ones stay 16-bit).

    Pure-bf16 AdamW rounds most small updates away (bf16 has 8 bits of mantissa); with fp32 masters and
    an autocast forward the usual mixed-precision recipe holds. Returns the 16-bit dtype the forward
    should autocast to (and the model be saved in), or ``None`` for a model that trains in fp32.
    """
    trained = [p for p in model.parameters() if p.requires_grad]
    half = next((p.dtype for p in trained if p.dtype in (torch.bfloat16, torch.float16)), None)
    if half is not None:
        for param in trained:
            param.data = param.data.float()
    return half


def merge_lora(adapter, out_dir: Path, reload_base=None) -> nn.Module:
    """Merge trained LoRA weights into a plain model that :func:`mimic_utils.models.vlm.load_adapter` reads.

    A full-precision base merges in place. A quantised (QLoRA) base must not: merging into 4-bit weights
    re-quantises them and loses the update. Then, as the QLoRA recipe does, the PEFT adapter is saved to
    ``out_dir/lora`` and merged into the base reloaded *unquantised* (in the adapter's dtype).
    ``reload_base()`` returns that reloaded model; by default the adapter's own source is loaded again.
    """
    if adapter.settings.get("quantization") is None and reload_base is None:
        return adapter.model.merge_and_unload()
    from peft import PeftModel

    lora_dir = Path(out_dir) / "lora"
    adapter.model.save_pretrained(lora_dir)
    base = reload_base() if reload_base is not None else _reload_unquantized(adapter)
    merged = PeftModel.from_pretrained(base, lora_dir).merge_and_unload()
    adapter.settings["quantization"] = None
    return merged


def _reload_unquantized(adapter) -> nn.Module:
    """The adapter's base checkpoint again, same revision, dtype and device, without quantisation."""
    s = adapter.settings
    dtype = s.get("dtype") if s.get("dtype") not in (None, "auto") else "bfloat16"
    return load_adapter(s["model"], family=s["family"], dtype=dtype, device=s.get("device", "cpu"),
                        revision=s.get("revision"), trust_remote_code=s.get("trust_remote_code", False),
                        preprocessing=settable_preprocessing(s["family"], s.get("preprocessing"))).model


def finetune(adapter, records: list[dict], config: FinetuneConfig, out_dir: Path | str, evaluate=None,
             progress: bool = True, accelerator=None, name: str = "finetune") -> dict:
    """Train ``adapter.model`` on the conversations; save it (HF format) with its processor into ``out_dir``.

    Returns ``{"log": [...], "trained_parameters": n, "config": ...}``; the loss log is also written as
    ``loss.csv`` beside the model. Under ``accelerate launch`` pass the ``Accelerator``: only its main
    process writes.
    """
    out_dir = Path(out_dir)
    multi, single = split_conversations(records, config.max_images)
    if not multi:
        raise ValueError("finetune: no multi-image conversations to train on (check notebook 01's train/)")
    if config.lora is not None:
        quantized = adapter.settings.get("quantization") is not None
        trained = apply_lora(adapter, **config.lora, kbit=quantized)
    else:
        trained = set_trainable(adapter.model, config.train)
    half = master_weights(adapter.model)
    device_type = next(adapter.model.parameters()).device.type
    params = [p for p in adapter.model.parameters() if p.requires_grad]
    schedule = StageSchedule(config.steps, config.lr, config.batch, warmup=max(1, round(config.warmup_ratio * config.steps)),
                             clip=config.clip, checkpoint_every=config.checkpoint_every, eval_every=config.steps,
                             weight_decay=config.weight_decay, accumulate=config.accumulate)

    draw = batch_sampler(multi, single, config.single_ratio, config.group_by_images)

    def loss_fn(rng: random.Random, size: int, model: nn.Module) -> torch.Tensor:
        with torch.autocast(device_type, dtype=half or torch.bfloat16, enabled=half is not None):
            return sft_loss(adapter, draw(rng, size), model)

    log: list[dict] = []
    checkpoint = out_dir / "checkpoints" / run_digest(config, adapter, records) / f"{name}.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    train_stage(name, adapter.model, params, loss_fn, schedule, config.seed, checkpoint, log, evaluate, progress,
                save_keys=set(adapter.model.state_dict()) & set(trained), accelerator=accelerator)
    adapter.model.eval()
    if config.lora is not None:
        adapter.model = merge_lora(adapter, out_dir)  # a plain model again, loadable by load_adapter
    if half is not None:
        adapter.model.to(half)  # saved in the dtype it was loaded in
    if accelerator is None or accelerator.is_main_process:
        adapter.save(out_dir)
        pd.DataFrame(log).to_csv(out_dir / "loss.csv", index=False)
        write_json(out_dir / "finetune.json", {"config": asdict(config), "trained_parameters": sum(p.numel() for p in params),
                                               "multi_image_conversations": len(multi), "single_image_conversations": len(single)})
    return {"log": log, "trained_parameters": sum(p.numel() for p in params), "config": asdict(config)}
