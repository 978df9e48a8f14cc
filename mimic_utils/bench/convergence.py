"""``python -m mimic_utils.bench lora_steps``: has notebook 05's LoRA stopped learning at its step count?

Issue 25 asks that masked and unmasked LoRA train until the loss has flattened. Under a warmup + cosine
schedule every curve looks flat at its end, because the learning rate goes to zero there, so the curve of
one run cannot tell. This trains the unmasked variant of notebook 05 (its own parameter file: start
model, LoRA shape, learning rate, batch, data, one seed) at the notebook's step count and at longer ones,
and scores each on the notebook's MIMIC questions: if a longer run ends at a lower loss and a higher score
(paired over the same questions), the notebook's runs had not converged. ``--variant late`` (any key of the
notebook's ``ablation`` but ``auto``) trains a masked variant instead, written to
``outputs/bench/lora_steps_<variant>.json`` with its paired difference from the cached unmasked run of the
same steps: claim 8's comparison at each step count. One seed: intervals resample questions, not seeds. Models are kept under
``outputs/<profile>/cache/bench_lora_steps/<settings digest>/`` (ignored; the digest of the notebook's
settings but its step count, its start model and its training data, so a changed parameter file or data
trains anew) and resume when rerun.

Two timing benchmarks of the same notebook's training step sit beside it: ``lora_dropout`` (what LoRA dropout
costs) and ``lora_grouped`` (what batches of one number of images, ``group_by_images``, save).
"""

from __future__ import annotations

import argparse
import time

from mimic_utils.artifacts import profile_dir, repo_root

NOTEBOOK = "05_masked_qlora_finetune"
#: the loss is read as means over windows of this many steps (notebook 05's loss figure uses the same)
WINDOW = 20


#: notebook 05's unmasked variant (a key of its ``ablation``), the one claim 8 compares the masked ones with
UNMASKED = "no mask"


def run_folder(variant: str, steps: int, seed: int, lr: float | None = None) -> str:
    """The cache folder of one run (the unmasked runs at the notebook's learning rate keep the unprefixed
    names they were first written under; another learning rate is a different run, so its own folder)."""
    from mimic_utils.training.lora_ablation import path_safe  # with torch, as the benchmark's run imports it

    name = f"steps{steps}_seed{seed}" if variant == UNMASKED else f"{path_safe(variant)}_steps{steps}_seed{seed}"
    return name if lr is None else f"{name}_lr{lr:g}"


def result_name(variant: str, lr: float | None = None, grouped: bool = False) -> str:
    """The result file's name: one per variant, learning rate and batching, so a rerun with other options
    adds a file."""
    from mimic_utils.training.lora_ablation import path_safe

    name = "lora_steps" if variant == UNMASKED else f"lora_steps_{path_safe(variant)}"
    name = name if lr is None else f"{name}_lr{lr:g}"
    return f"{name}_grouped" if grouped else name


def settings_digest(params: dict, base: dict | None = None, data: str = "") -> str:
    """A short digest of what notebook 05's runs train with, other than the step count: every field of its
    :class:`~mimic_utils.training.finetune.FinetuneConfig` with the LoRA shape (the configuration's own
    digest, so a knob added to it is covered too), the start model as loaded (``base``: with the 4-bit
    quantization a CUDA machine adds), the masked layers of every variant (``ablation``) and the training
    data (``data``: :func:`~mimic_utils.training.finetune.data_digest` of its conversations). The
    benchmark's cached runs and their answers live under it: ``harness.run`` keeps the answers already in
    a run's folder, so a folder reused after any of these changed would score the new model with the old
    answers."""
    import hashlib
    import json

    from mimic_utils.training.finetune import FinetuneConfig

    config = FinetuneConfig(**{**params["finetune_config"], "steps": 0}, lora=params["lora"])
    key = json.dumps([config.digest(), base or params["base_model"], params["ablation"], data], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def window_means(losses: list[float], window: int = WINDOW) -> list[float]:
    """Means of consecutive ``window``-step slices of a loss log (the last one may be shorter)."""
    return [round(sum(part) / len(part), 4) for part in (losses[i:i + window] for i in range(0, len(losses), window))]


def bench_lora_steps(args: argparse.Namespace) -> dict:
    """Notebook 05's unmasked LoRA at its step count and longer: final loss and MIMIC score of each.

    ``train_seconds`` runs from loading the start model to the saved merged model (``None`` when the run
    resumed from a checkpoint, whose earlier steps are not on this clock)."""
    import torch

    from mimic_utils import runner
    from mimic_utils.analysis import diagnosis, stats
    from mimic_utils.data import mimic_benchmark, traindata
    from mimic_utils.evaluation import harness
    from mimic_utils.evaluation.harness import read_predictions
    from mimic_utils.models import masking
    from mimic_utils.training import finetune, lora_ablation

    torch.set_num_threads(args.threads)
    root = repo_root()
    notebook = next(nb for nb in runner.discover(args.profile, root) if nb.stem == NOTEBOOK)
    params = runner.load_parameters(notebook, args.profile)  # validated: a bad value names file and key
    spec = params["ablation"].get(args.variant)
    if spec is None or spec == "auto":
        raise ValueError(f"{notebook.params_file}: ablation has no variant {args.variant!r} this benchmark can "
                         f"train (it reads {sorted(k for k, v in params['ablation'].items() if v != 'auto')}; "
                         "'auto' needs notebook 03's layer)")
    notebook_steps = params["finetune_config"]["steps"]
    # batches of one number of images: the question is the same steps' loss and score against the notebook's
    # mixed batches (the cached run of the same steps), so no longer run is asked for
    grouped = getattr(args, "group_by_images", False) and not params["finetune_config"].get("group_by_images", False)
    mixed_params = params
    if grouped:
        params = {**params, "finetune_config": {**params["finetune_config"], "group_by_images": True}}
    asked = args.steps or ([] if grouped else [2 * notebook_steps])
    if not grouped and max(asked) <= notebook_steps:
        raise ValueError(f"--steps {asked}: whether notebook 05's {notebook_steps} steps ({notebook.params_file}, "
                         "finetune_config.steps) have converged needs a longer run than that")
    # another learning rate than the notebook's is the question "would fewer, larger steps get there"
    lr = None if args.lr is None or args.lr == params["finetune_config"]["lr"] else args.lr
    if lr is not None and not lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    data = profile_dir(args.profile) / "01_data_build"
    conversations = traindata.load(data / "train", root=root)
    benchmark = mimic_benchmark.load(data / "mimic", root=root)
    records = diagnosis.cap_per_cell([r for r in benchmark if r["experiment"] in params["experiments"]],
                                     params["max_per_cell"])
    # as notebook 05 loads it: QLoRA on a 4-bit base where CUDA is there and the file asks for it
    base = {**params["base_model"], **({"quantization": "4bit"} if params["quantize_4bit"] and torch.cuda.is_available() else {})}
    cache, data_digest = profile_dir(args.profile) / "cache" / "bench_lora_steps", finetune.data_digest(conversations)
    work = cache / settings_digest(params, base, data_digest)
    mixed_work = cache / settings_digest(mixed_params, base, data_digest)
    runs, rows, versus_unmasked, versus_mixed = {}, {}, {}, {}
    for steps in sorted({notebook_steps, *asked}):
        config = finetune.FinetuneConfig(**{**params["finetune_config"], "steps": steps,
                                            **({"lr": lr} if lr is not None else {})}, lora=params["lora"])
        folder = work / run_folder(args.variant, steps, args.seed, lr)
        # a run with any checkpoint resumes (as done, or part-way): its time is not all on this clock
        trained_before = any((folder / "checkpoints").glob("*/*.pt")) if folder.is_dir() else False
        begin = time.perf_counter()
        adapter = harness.load_under_study(base, root)
        layers = masking.resolve_layers(spec, masking.num_text_layers(adapter.model))
        log = lora_ablation.train_masked_lora(adapter, layers, conversations, config, folder, args.seed)["log"]
        seconds = time.perf_counter() - begin
        del adapter
        model = lora_ablation.load_trained(params["base_model"], args.variant, folder, root)
        rows[steps] = harness.run(model, records, folder / "predictions.jsonl", batch_size=params["batch_size"],
                                  progress=False)
        means = window_means([entry["loss"] for entry in log if "loss" in entry])
        runs[str(steps)] = {"train_seconds": None if trained_before else round(seconds, 1),
                            "loss_window_means": means, "final_loss": means[-1],
                            "mimic": {k: v for k, v in stats.estimate(rows[steps]).items() if k != "method"}}
        unmasked = work / run_folder(UNMASKED, steps, args.seed, lr) / "predictions.jsonl"
        if args.variant != UNMASKED and unmasked.is_file():  # claim 8's difference at this step count, one seed
            found = stats.difference(read_predictions(unmasked), rows[steps], paired=True)
            versus_unmasked[str(steps)] = {k: found[k] for k in ("diff", "lo", "hi")}
        mixed = mixed_work / run_folder(args.variant, steps, args.seed, lr) / "predictions.jsonl"
        if grouped and mixed.is_file():  # grouped - mixed batches at the same steps, one seed
            found = stats.difference(read_predictions(mixed), rows[steps], paired=True)
            versus_mixed[str(steps)] = {k: found[k] for k in ("diff", "lo", "hi")}
        print(f"[lora_steps] {args.variant}, {steps} steps: final {WINDOW}-step loss {means[-1]:.3f}, MIMIC "
              f"{runs[str(steps)]['mimic']['score']:.3f}", flush=True)
    longest = max(rows)
    gain = stats.difference(rows[notebook_steps], rows[longest], paired=True) if longest > notebook_steps else {}
    return {"result_name": result_name(args.variant, lr, grouped), "group_by_images": params["finetune_config"].get("group_by_images", False),
            "profile": args.profile, "variant": args.variant, "layers": list(layers), "seed": args.seed,
            "lr": params["finetune_config"]["lr"] if lr is None else lr, "lora": params["lora"],
            "notebook_steps": notebook_steps, "window": WINDOW,
            **({"minus_unmasked_same_steps": versus_unmasked} if versus_unmasked else {}),
            **({"grouped_minus_mixed_same_steps": versus_mixed} if versus_mixed else {}),
            "questions": len(records), "blind": round(stats.blind_mean(rows[notebook_steps]), 4), "runs": runs,
            **({f"gain_{longest}_over_{notebook_steps}": {k: gain[k] for k in ("diff", "lo", "hi") if k in gain}}
               if gain else {})}


def lora_steps_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="cpu", help="whose notebook-05 parameters and notebook-01 data")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="step counts besides the notebook's own (its finetune_config.steps), at least one "
                             "above it (default: twice the notebook's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default=UNMASKED,
                        help="a key of notebook 05's ablation ('no mask', 'late', 'early'); a masked one is also "
                             "compared with the unmasked run of the same steps and seed, when it is cached")
    parser.add_argument("--lr", type=float, default=None,
                        help="a learning rate instead of the notebook's (its own runs, folders and result file): "
                             "whether fewer steps at a larger rate reach the longer runs' loss and score")
    parser.add_argument("--group-by-images", action="store_true",
                        help="batches of one number of images (finetune_config.group_by_images; its own runs, "
                             "folders and result file), compared with the cached mixed-batch run of the same "
                             "steps: whether grouping costs loss or score per step (--steps optional)")
    parser.add_argument("--threads", type=int, default=2)


def _notebook_data(args: argparse.Namespace) -> tuple[dict, list[dict], list[dict]]:
    """Notebook 05's parameters and its (multi-image, single-image) training conversations."""
    from mimic_utils import runner
    from mimic_utils.data import traindata
    from mimic_utils.training import finetune

    root = repo_root()
    notebook = next(nb for nb in runner.discover(args.profile, root) if nb.stem == NOTEBOOK)
    params = runner.load_parameters(notebook, args.profile)
    conversations = traindata.load(profile_dir(args.profile) / "01_data_build" / "train", root=root)
    return params, *finetune.split_conversations(conversations, params["finetune_config"]["max_images"])


def _notebook_batches(args: argparse.Namespace) -> tuple[dict, list[list[dict]]]:
    """Notebook 05's parameters and ``args.steps + 1`` training batches drawn as it draws them (its
    ``finetune_config``, ``group_by_images`` included)."""
    import random

    from mimic_utils.training import finetune

    params, multi, single = _notebook_data(args)
    settings, rng = params["finetune_config"], random.Random(args.seed)
    draw = finetune.batch_sampler(multi, single, settings["single_ratio"], settings.get("group_by_images", False))
    return params, [draw(rng, settings["batch"]) for _ in range(args.steps + 1)]


def _seconds_per_step(params: dict, batches: list[list[dict]], dropout: float) -> float:
    """Mean time of a LoRA training step (forward, backward, AdamW) of notebook 05's start model over
    ``batches``, the first untimed (allocations, lazy initialisation); their vision features are read once
    before, untimed, as the study's cache already holds them (notebook 04 read these images)."""
    import torch

    from mimic_utils.evaluation import harness
    from mimic_utils.training import finetune

    adapter = harness.load_under_study(params["base_model"], repo_root())
    lora = params["lora"]
    trained = finetune.apply_lora(adapter, r=lora["r"], alpha=lora["alpha"], dropout=dropout)
    named = dict(adapter.model.named_parameters())
    optimizer = torch.optim.AdamW([named[n] for n in trained], lr=params["finetune_config"]["lr"])
    adapter.model.train()
    with torch.no_grad():
        for batch in batches:
            finetune.sft_loss(adapter, batch)
    times = []
    for step, batch in enumerate(batches):
        begin = time.perf_counter()
        finetune.sft_loss(adapter, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - begin)
    return sum(times) / len(times)


def bench_lora_dropout(args: argparse.Namespace) -> dict:
    """What LoRA dropout costs a training step of notebook 05 on this machine (why ``cpu`` sets it to 0).

    One process, the same start model, the same batches (drawn as notebook 05 draws them) and their vision
    features already cached: for each dropout, ``--steps`` timed forward + backward + optimizer steps
    after one untimed step. ``ratio`` is the step time without dropout over the step time with the
    notebook's other dropout (``--dropout``, the official 0.05): below 1 is the saving."""
    import torch

    if args.steps < 1 or not 0 < args.dropout < 1:
        raise ValueError(f"--steps must be at least 1 and --dropout in (0, 1), got {args.steps} and {args.dropout}")
    torch.set_num_threads(args.threads)
    params, batches = _notebook_batches(args)
    seconds = {}
    for dropout in (args.dropout, 0.0):
        seconds[dropout] = _seconds_per_step(params, batches, dropout)
        print(f"[lora_dropout] dropout {dropout}: {seconds[dropout]:.3f} s per step", flush=True)
    return {"profile": args.profile, "batch": params["finetune_config"]["batch"], "lora": params["lora"],
            "steps": args.steps, "seconds_per_step": {str(k): round(v, 4) for k, v in seconds.items()},
            "ratio": round(seconds[0.0] / seconds[args.dropout], 4)}


def real_token_share(adapter, batches: list[list[dict]]) -> float:
    """The share of the token positions of ``batches``, as the model reads them in training (every row
    left-padded to its batch's longest), that are not padding."""
    from mimic_utils.training import finetune

    real = padded = 0
    for batch in batches:
        mask = finetune.sft_batch(adapter, batch).inputs["attention_mask"]
        real, padded = real + int(mask.sum()), padded + mask.numel()
    return real / padded


def regrouped(batches: list[list[dict]]) -> list[list[dict]]:
    """The same rows cut into batches of the same size after sorting them by number of images: what
    ``group_by_images`` does to a batch's padding, on the very rows of ``batches`` (a paired comparison)."""
    rows = sorted((r for batch in batches for r in batch), key=lambda r: len(r["images"]))
    size = len(batches[0])
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def bench_lora_grouped(args: argparse.Namespace) -> dict:
    """What one number of images per batch (``group_by_images``) saves a training step of notebook 05.

    Notebook 05 draws each row of a batch on its own, so a batch mixes 1-image and 10-image conversations
    and pads every row to the longest. Here ``--steps + 1`` batches are drawn that way and the same rows are
    cut again into batches after sorting them by number of images (:func:`regrouped`; a batch at a boundary
    between two counts still mixes them, as :func:`~mimic_utils.training.finetune.grouped_batch` never
    does): the same tokens, so the comparison is paired. The same start model and LoRA (the notebook's,
    its dropout) time each set of batches, one process, vision features cached, after the same untimed
    first batch, and the share of real (non-padding) token positions of the timed batches is counted. ``ratio`` is the grouped
    seconds per step over the mixed ones: below 1 is the saving. Whether the loss per step is the same is
    ``lora_steps``' question (``group_by_images`` in the notebook's ``finetune_config``)."""
    import random

    import torch

    from mimic_utils.evaluation import harness
    from mimic_utils.training import finetune

    if args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    torch.set_num_threads(args.threads)
    params, multi, single = _notebook_data(args)
    settings, draw = params["finetune_config"], random.Random(args.seed)
    mixed = [finetune.mixed_batch(draw, multi, single, settings["batch"], settings["single_ratio"])
             for _ in range(args.steps + 1)]
    arms = {"mixed": mixed, "grouped": mixed[:1] + regrouped(mixed[1:])}  # the same untimed first batch
    adapter = harness.load_under_study(params["base_model"], repo_root())  # its processor pads the batches
    shares = {label: real_token_share(adapter, batches[1:]) for label, batches in arms.items()}
    del adapter
    seconds = {}
    for label, batches in arms.items():
        seconds[label] = _seconds_per_step(params, batches, params["lora"]["dropout"])
        print(f"[lora_grouped] {label}: {seconds[label]:.3f} s per step, {shares[label]:.3f} of tokens real", flush=True)
    return {"profile": args.profile, "batch": settings["batch"], "lora": params["lora"], "steps": args.steps,
            "seconds_per_step": {k: round(v, 4) for k, v in seconds.items()},
            "real_token_share": {k: round(v, 4) for k, v in shares.items()},
            "ratio": round(seconds["grouped"] / seconds["mixed"], 4)}


def lora_dropout_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="cpu", help="whose notebook-05 parameters and notebook-01 data")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per dropout (one more is untimed)")
    parser.add_argument("--dropout", type=float, default=0.05, help="the dropout compared with none")
    parser.add_argument("--seed", type=int, default=0, help="the batches' draw")
    parser.add_argument("--threads", type=int, default=2)


def lora_grouped_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="cpu", help="whose notebook-05 parameters and notebook-01 data")
    parser.add_argument("--steps", type=int, default=16, help="timed steps per way of batching (one more is untimed)")
    parser.add_argument("--seed", type=int, default=0, help="the batches' draw")
    parser.add_argument("--threads", type=int, default=2)
