"""A real finetuning run under ``accelerate launch`` (test_finetune): each rank saves the weights it ends with."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from eval_worker import make_records, tiny_qwen_adapter
from mimic_utils.training import finetune


def conversations(folder: Path, n: int) -> list[dict]:
    """Training conversations over noise images: multi-image and single-image ones."""
    records = make_records(folder, n)
    for i, r in enumerate(records):
        r["origin"] = "single" if len(r["images"]) == 1 else "mimic"
        r["gt"] = str(i % 4)
    return records


if __name__ == "__main__":
    torch.set_num_threads(1)
    images, out = Path(sys.argv[1]), Path(sys.argv[2])
    accelerator = Accelerator()
    torch.manual_seed(0)
    adapter = tiny_qwen_adapter()
    config = finetune.FinetuneConfig(steps=3, lr=1e-3, batch=2, accumulate=2, checkpoint_every=2)
    finetune.finetune(adapter, conversations(images, 8), config, out / "model", progress=False, accelerator=accelerator)
    torch.save(adapter.model.state_dict(), out / f"rank{accelerator.process_index}.pt")
    print(f"processes={accelerator.num_processes}", flush=True)
