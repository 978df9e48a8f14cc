"""``accelerate launch -m mimic_utils.launch --profile paper``: notebook 04's training, scaled out.

Reads the finetuning notebook's parameter file as the runner does, so a launched run and the notebook share
checkpoints (:func:`mimic_utils.training.finetune.finetune` resumes); the notebook then finds the finished
checkpoint, skips training and evaluates. A tool beside the runner: the training library never reads
parameter files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from accelerate import Accelerator

from mimic_utils import runner
from mimic_utils.artifacts import output_dir, profile_dir, repo_root
from mimic_utils.data import traindata
from mimic_utils.evaluation.harness import load_under_study
from mimic_utils.training.finetune import FinetuneConfig, finetune


def training_inputs(profile: str, notebook: str, root: Path | None = None) -> tuple[dict, FinetuneConfig, list[dict], Path]:
    """(base model entry, config, conversations incl. hub mixes, output folder) of a finetuning notebook's
    parameter file — what the notebook itself trains on, so a launched run and the notebook share checkpoints."""
    root = root or repo_root()
    matches = [nb for nb in runner.discover(profile, root) if notebook in (nb.stem, nb.number)]
    if not matches:
        raise runner.ParameterError(f"--notebook {notebook!r}: no such notebook")
    nb = matches[0]
    params = runner.load_parameters(nb, profile)
    missing = [k for k in ("base_model", "finetune_config") if k not in params]
    if missing:
        raise runner.ParameterError(f"{nb.params_file}: needs {missing} to be launched as a finetuning run")
    out = output_dir(profile, nb.stem, root)
    conversations = traindata.load(profile_dir(profile, root) / "01_data_build" / "train", root=root)
    conversations = traindata.with_hub(conversations, params.get("hub_datasets") or [], out / "hub_images")
    return params["base_model"], FinetuneConfig(**params["finetune_config"]), conversations, out / "model"


def main(argv: list[str] | None = None) -> int:
    """``accelerate launch -m mimic_utils.launch --profile paper``: train what notebook 04 trains, on every
    process accelerate starts (DDP, FSDP or DeepSpeed as its config says); the notebook then finds the
    finished checkpoint, skips training and evaluates."""
    parser = argparse.ArgumentParser(prog="python -m mimic_utils.launch", description=main.__doc__.split(";")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--notebook", default="04_data_centric_finetune")
    args = parser.parse_args(argv)
    accelerator = Accelerator()
    spec, config, conversations, out = training_inputs(args.profile, args.notebook)
    if "device" in spec or accelerator.num_processes > 1:
        spec = {**spec, "device": str(accelerator.device)}  # each process on its own GPU
    adapter = load_under_study(spec)
    result = finetune(adapter, conversations, config, out, accelerator=accelerator)
    if accelerator.is_main_process:
        print(f"[finetune] {len(result['log'])} steps on {accelerator.num_processes} process(es); saved to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
