"""Supervised finetuning on conversations, as a recipe: data, model, loop, checkpoint.

    config = FinetuneConfig(steps=400, lr=2e-4, batch=16)
    finetune(adapter, multi_image, single_image, config, out_dir)   # saves an HF folder load_adapter reads

* **Data.** Conversations from :mod:`mimic_utils.traindata` (notebook 01's ``train/``). Each step's batch
  mixes multi-image and single-image conversations: every item is single-image with probability
  ``single_ratio``, so single-image skill is rehearsed while multi-image aggregation is taught.
* **Model.** The *data-centric* regime of the paper: vision tower and projector frozen, the language model
  trained (``train=("language_model",)``); notebook 05's LoRA regime goes through the same loop.
* **Loop.** AdamW, linear warmup then cosine decay, gradient clipping and accumulation; the loss is taken
  on the assistant's answer tokens only (answer and end-of-turn, via ``VLMAdapter.prepare(answers=…)``).
  Batches and torch's random state (dropout) depend only on (seed, step, micro-batch, process), so an
  interrupted run resumed from its last checkpoint ends at the same weights as one never stopped. An
  ``accelerate.Accelerator`` may be passed for device placement; multi-process data parallelism (DDP,
  FSDP, ZeRO) is **not** wired yet: the loss is computed on the unwrapped model, so gradients would not be
  averaged across processes.
* **Checkpoint.** Atomic ``torch.save`` of the trained parameters, the optimizer, the step and the loss
  log every ``checkpoint_every`` steps; the final model is saved with ``save_pretrained``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

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

    ``loss_fn(rng, batch) -> loss`` draws its own micro-batch from the given random stream; ``evaluate()``
    returns held-out metrics logged every ``eval_every`` steps and at the end. ``save_keys`` limits
    checkpoints to those state-dict entries (the trained ones), so a large frozen base is not copied.
    """
    from tqdm.auto import tqdm

    optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    start = _resume(checkpoint, module, optimizer, log, name, schedule.steps)
    if start >= schedule.steps:
        return
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
            loss = loss_fn(rng, schedule.batch) / schedule.accumulate
            (accelerator.backward(loss) if accelerator is not None else loss.backward())
            total += loss.item()
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
            save_checkpoint(checkpoint, module, optimizer, done, log, save_keys)
    if accelerator is not None:
        accelerator.wait_for_everyone()


def _resume(checkpoint: Path, module: nn.Module, optimizer, log: list[dict], name: str, steps: int) -> int:
    """Load a checkpoint if there is one; returns the step to continue from."""
    if not checkpoint.is_file():
        return 0
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    missing, unexpected = module.load_state_dict(state["module"], strict=False)
    if unexpected:
        raise ValueError(f"{checkpoint}: holds weights this model does not have, e.g. {unexpected[:3]}")
    optimizer.load_state_dict(state["optimizer"])
    log[:] = state["log"]
    if state["step"] < steps:
        print(f"[train] {name}: resuming at step {state['step']}/{steps} from {checkpoint}")
    return state["step"]


def save_checkpoint(path: Path, module: nn.Module, optimizer, step: int, log: list[dict],
                    keys: set[str] | None = None) -> None:
    """Atomically save the (trained part of the) module, the optimizer, the step and the loss log."""
    from mimic_utils.artifacts import atomic_path

    weights = module.state_dict()
    if keys is not None:
        weights = {k: v for k, v in weights.items() if k in keys}
    with atomic_path(path) as tmp:
        torch.save({"module": weights, "optimizer": optimizer.state_dict(), "step": step, "log": log}, tmp)


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

    def digest(self) -> str:
        """Checkpoints of another configuration are never resumed."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def run_digest(config: FinetuneConfig, adapter, records: list[dict]) -> str:
    """Checkpoints are resumed only by the same run: same configuration, same starting model (weights,
    mask, preprocessing) and the same training conversations."""
    from mimic_utils.models import model_fingerprint

    data = hashlib.sha256("\n".join(sorted(r["id"] for r in records)).encode()).hexdigest()
    key = json.dumps([config.digest(), model_fingerprint(adapter.settings), data], sort_keys=True)
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
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from mimic_utils.models import get_family

    if kbit:
        adapter.model = prepare_model_for_kbit_training(adapter.model, use_gradient_checkpointing=False)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS,
                        modules_to_save=[get_family(adapter.family).projector])
    adapter.model = get_peft_model(adapter.model, config)
    return [n for n, p in adapter.model.named_parameters() if p.requires_grad]


def sft_loss(adapter, records: list[dict]) -> torch.Tensor:
    """Cross-entropy on the answer and end-of-turn tokens of a batch of conversations (left-padded)."""
    from mimic_utils.evaluate import load_images
    from mimic_utils.traindata import prompt_family

    samples = [{"images": load_images(r["images"]), "question": r["question"], "task_family": prompt_family(r["family"])}
               for r in records]
    batch = adapter.prepare(samples, answers=[r["gt"] for r in records])
    ids = batch.inputs["input_ids"]
    labels = torch.full_like(ids, -100)
    tokenizer = adapter.tokenizer
    for row, record in enumerate(records):
        n = len(tokenizer(record["gt"] + adapter.end_of_turn, add_special_tokens=False).input_ids)
        labels[row, -n:] = ids[row, -n:]  # left padding: every row ends with its answer
    return adapter.forward(batch, labels=labels).loss  # under the adapter's image-block mask, if any


def mixed_batch(rng: random.Random, multi: list[dict], single: list[dict], size: int, single_ratio: float) -> list[dict]:
    """``size`` conversations, each single-image with probability ``single_ratio``."""
    return [rng.choice(single if single and rng.random() < single_ratio else multi) for _ in range(size)]


def split_conversations(records: list[dict], max_images: int) -> tuple[list[dict], list[dict]]:
    """(multi-image, single-image) conversations, dropping samples above ``max_images`` images."""
    kept = [r for r in records if len(r["images"]) <= max_images]
    return [r for r in kept if r["origin"] != "single"], [r for r in kept if r["origin"] == "single"]


def finetune(adapter, records: list[dict], config: FinetuneConfig, out_dir: Path | str, evaluate=None,
             progress: bool = True, accelerator=None, name: str = "finetune") -> dict:
    """Train ``adapter.model`` on the conversations; save it (HF format) with its processor into ``out_dir``.

    Returns ``{"log": [...], "trained_parameters": n, "config": ...}``; the loss log is also written as
    ``loss.csv`` beside the model.
    """
    import pandas as pd

    from mimic_utils.artifacts import write_json

    out_dir = Path(out_dir)
    multi, single = split_conversations(records, config.max_images)
    if not multi:
        raise ValueError("finetune: no multi-image conversations to train on (check notebook 01's train/)")
    if config.lora is not None:
        quantized = adapter.settings.get("quantization") is not None
        trained = apply_lora(adapter, **config.lora, kbit=quantized)
    else:
        trained = set_trainable(adapter.model, config.train)
    params = [p for p in adapter.model.parameters() if p.requires_grad]
    schedule = StageSchedule(config.steps, config.lr, config.batch, warmup=max(1, round(config.warmup_ratio * config.steps)),
                             clip=config.clip, checkpoint_every=config.checkpoint_every, eval_every=config.steps,
                             weight_decay=config.weight_decay, accumulate=config.accumulate)

    def loss_fn(rng: random.Random, size: int) -> torch.Tensor:
        return sft_loss(adapter, mixed_batch(rng, multi, single, size, config.single_ratio))

    log: list[dict] = []
    checkpoint = out_dir / "checkpoints" / run_digest(config, adapter, records) / f"{name}.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    train_stage(name, adapter.model, params, loss_fn, schedule, config.seed, checkpoint, log, evaluate, progress,
                save_keys=set(adapter.model.state_dict()) & set(trained), accelerator=accelerator)
    adapter.model.eval()
    if config.lora is not None:
        adapter.model = adapter.model.merge_and_unload()  # a plain model again, loadable by load_adapter
    if accelerator is None or accelerator.is_main_process:
        adapter.save(out_dir)
        pd.DataFrame(log).to_csv(out_dir / "loss.csv", index=False)
        write_json(out_dir / "finetune.json", {"config": asdict(config), "trained_parameters": sum(p.numel() for p in params),
                                               "multi_image_conversations": len(multi), "single_image_conversations": len(single)})
    return {"log": log, "trained_parameters": sum(p.numel() for p in params), "config": asdict(config)}
