"""A real evaluation run in its own process (killed and resumed by test_harness, or under accelerate), and the
noise images and records the tests share."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image

from mimic_utils.evaluation import harness
from mimic_utils.models import tiny, vlm


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic random RGB image (different pixels per seed)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8)
    return Image.fromarray(pixels.numpy())


def make_records(folder: Path, n: int) -> list[dict]:
    """``n`` MIMIC-style records over deterministic noise images written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    families = ["counting", "listing", "common", "oddone"]
    records = []
    for i in range(n):
        paths = []
        for j in range(1 + i % 3):
            path = folder / f"img{i}_{j}.png"
            if not path.exists():
                noise_image(56, 56, 100 * i + j).save(path)
            paths.append(str(path))
        family = families[i % 4]
        records.append({"id": f"s{i:03d}", "family": family, "task": family, "experiment": "test",
                        "knobs": {"n_images": len(paths)}, "images": paths,
                        "question": f"How many dog objects are there in image {i}?", "gt": "2"})
    return records


def tiny_qwen_adapter() -> vlm.VLMAdapter:
    model, processor = tiny.build_tiny("qwen2_vl", seed=0)
    return vlm.adapter_from_model(model, processor, "qwen2_vl")


if __name__ == "__main__":
    torch.set_num_threads(1)
    folder, out, n, batch = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    harness.run(tiny_qwen_adapter(), make_records(folder, n), out, batch_size=batch, progress=False)
    print(f"processes={harness.process_state().num_processes}", flush=True)
