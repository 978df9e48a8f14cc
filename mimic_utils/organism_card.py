"""What the organism leaves beside its weights, and how notebooks read it back.

``python -m mimic_utils.organism`` writes, next to ``model.safetensors``: the model card (``README.md``:
recipe, time, held-out scores, weights hash), ``loss.csv`` and ``curves.png`` (every step, with held-out
metrics where evaluated), ``eval.json`` and ``training.json``. :func:`card_table` reads the last two back
for notebook 02, and :func:`recorded_config` lets ``make study`` reuse a committed organism whose recorded
configuration matches the profile's (see docs/organism.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd

from mimic_utils.artifacts import write_text
from mimic_utils.plots import save_figure, save_table

if TYPE_CHECKING:  # the recipe imports this module to write its card
    from mimic_utils.organism import OrganismConfig

TARGETS = {"counting": 0.80, "presence": 0.90}
TARGET_MINUTES = 60  # whole training, from scratch, on 2 cores


def write_card(out_dir: Path, config: "OrganismConfig", summary: dict, scores: dict, command: str) -> Path:
    """The model card (README.md beside the weights): recipe, data, time, held-out scores, weights hash."""
    weights = out_dir / "model.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    seconds = summary.get("seconds", {})
    met = {k: scores.get(k, {}).get("score", 0.0) >= v for k, v in TARGETS.items()}
    lines = [
        "# MIMIC model organism (tiny Qwen2-VL)",
        "",
        "A `Qwen2VLForConditionalGeneration` with a small config, trained from scratch on the CPU by",
        "`mimic_utils.organism` on the embedded scene world (OpenMoji pictograms of COCO categories, CC BY-SA 4.0).",
        "Recipe: stage 0 dense vision pretraining (our stand-in for CLIP/SigLIP), stage 1 alignment on scene",
        "descriptions, stage 2 single-image instruction tuning. It never saw a multi-image question.",
        "",
        f"- command: `{command}`",
        f"- parameters: {summary.get('parameters', 'n/a'):,}",
        f"- weights: `model.safetensors`, sha256 `{sha}`",
        f"- training time (this machine, 2 cores): " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()),
        "",
        "## Held-out single-image scores (real generation through `mimic_utils.models`, official scorers)",
        "",
        "| question | n | score |",
        "|---|---|---|",
        *[f"| {k} | {v['n']} | {v['score']:.3f} |" for k, v in scores.items() if isinstance(v, dict) and "n" in v],
        "",
        "Counting accuracy per true count: " + ", ".join(f"{k}: {v:.2f}" for k, v in scores.get("counting_by_true_count", {}).items()),
        "",
        "Targets (issue #5): counting ≥ 0.80 — " + ("met" if met["counting"] else "**not met**")
        + "; presence ≥ 0.90 — " + ("met" if met["presence"] else "**not met**") + ".",
        "",
        *([] if all(met.values()) else [
            "Where the targets are not met, `curves.png` and `loss.csv` show why: the held-out teacher-forced "
            "curves of stage 2 tell whether counting and presence were still rising at the end (then a longer "
            "stage 2 is the next step) or had plateaued (then the language stage, not the budget, is the "
            "limit: try a higher learning rate, a little vision learning rate, or more presence questions). "
            "The vision tower itself reads presence and counts far better (stage-0 metrics in `loss.csv`).", ""]),
        "## Training configuration",
        "",
        "```json",
        json.dumps(asdict(config), indent=2, sort_keys=True),
        "```",
        "",
        "Loss and held-out curves: `loss.csv`, `curves.png`. Held-out scores: `eval.json`.",
        "",
    ]
    return write_text(out_dir / "README.md", "\n".join(lines))


def write_curves(out_dir: Path, log: list[dict]) -> None:
    """``loss.csv`` (every step, with held-out metrics where evaluated) and ``curves.png``."""
    frame = pd.DataFrame(log)
    frame.insert(0, "global_step", range(1, len(frame) + 1))
    with_metrics = frame.dropna(axis=1, how="all")
    save_table(with_metrics, out_dir / "loss.csv")
    metrics = [c for c in frame.columns if c not in ("global_step", "stage", "step", "loss")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for stage, part in frame.groupby("stage", sort=False):
        left.plot(part["global_step"], part["loss"].rolling(25, min_periods=1).mean(), label=stage)
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_title("training loss (25-step mean)")
    left.legend()
    for column in metrics:
        points = frame.dropna(subset=[column])
        right.plot(points["global_step"], points[column], marker="o", label=column)
    right.set_xlabel("step")
    right.set_title("held-out metrics")
    right.set_ylim(0, 1)
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, out_dir / "curves.png")
    plt.close(fig)


def recorded_config(out_dir: Path) -> dict | None:
    """The configuration recorded beside committed weights (``training.json``), if any."""
    path = out_dir / "training.json"
    if not (path.is_file() and (out_dir / "model.safetensors").is_file()):
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("config")


def card_table(folder: Path) -> pd.DataFrame | None:
    """The organism's held-out single-image scores and training time, as its model card records them
    (``eval.json`` and ``training.json`` beside the weights), for notebooks to show; ``None`` for a
    folder that holds no organism (a real checkpoint has neither file)."""
    folder = Path(folder)
    if not ((folder / "eval.json").is_file() and (folder / "training.json").is_file()):
        return None
    scores = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
    minutes = json.loads((folder / "training.json").read_text(encoding="utf-8"))["seconds"]["total"] / 60
    rows = [{"question": name, "n": value["n"], "score": round(value["score"], 3),
             "target": TARGETS.get(name), "met": None if name not in TARGETS else value["score"] >= TARGETS[name]}
            for name, value in scores.items() if isinstance(value, dict) and "score" in value]
    rows += [{"question": f"counting, true count {count}", "n": None, "score": round(score, 3), "target": None,
              "met": None} for count, score in scores.get("counting_by_true_count", {}).items()]
    rows.append({"question": "training minutes (2 cores)", "n": None, "score": round(minutes, 1), "target": TARGET_MINUTES,
                 "met": minutes <= TARGET_MINUTES})
    return pd.DataFrame(rows)
