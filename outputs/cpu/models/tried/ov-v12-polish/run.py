"""ov-v12-polish: v12's weights + 800 steps of a which-image-heavy mix at a lower lr (a continuation, not a
recipe). Run from the repository's root at commit 783496b, where outputs/cpu/models/ov is v12:
    python outputs/cpu/models/tried/ov-v12-polish/run.py
It writes into scratch/ov-v12-polish/ (start: v12's weights beside si's records; out: the trained model and
its card)."""
import shutil
from dataclasses import replace
from pathlib import Path

from mimic_utils.organism import ov as organism_ov
from mimic_utils.organism.ov import OvConfig

root = Path.cwd()
start, out = root / "scratch/ov-v12-polish/start", root / "scratch/ov-v12-polish/out"
if not start.exists():
    start.mkdir(parents=True)
    for f in (root / "outputs/cpu/models/ov").iterdir():  # v12's weights, tokenizer and processor
        if f.is_file() and f.name not in ("README.md", "eval.json", "training.json", "loss.csv", "loss.md", "curves.png"):
            shutil.copy(f, start / f.name)
    for name in ("training.json", "eval.json"):  # si's recipe of scenes and its single-image scores
        shutil.copy(root / "outputs/cpu/models/si" / name, start / name)
base = OvConfig.from_yaml(root / "params/cpu/organism_ov.yaml")
weights = dict(base.weights, which_image=24, image_total=4)  # image_total: meant image_count (a slip)
config = replace(base, warm_steps=0, grow=[], warm_weights={}, weights=weights, images=[2, 10],
                 steps=800, lr=3e-4, conversations=20000, eval_every=200)
organism_ov.run(config, start, out, "python outputs/cpu/models/tried/ov-v12-polish/run.py")
