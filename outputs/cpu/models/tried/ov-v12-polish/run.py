"""ov-v12-polish: v12's weights + 800 steps of a which-image-heavy mix at a lower lr (a continuation, not a
recipe). Run from the repository's root while outputs/cpu/models/ov is v12 (the run used it at 783496b):
    python outputs/cpu/models/tried/ov-v12-polish/run.py
It writes into outputs/cpu/cache/tried/ov-v12-polish/ (ignored scratch) (start: v12's weights beside si's records; out: the trained model and
its card). The run recorded in this folder was this script with its scratch folders outside the repository
(its card's and training.json's paths are rewritten to the ones here); it has not been rerun from here."""
from dataclasses import replace
from pathlib import Path

from mimic_utils.organism import ov as organism_ov
from mimic_utils.organism.ov import OvConfig

root = Path.cwd()
start, out = root / "outputs/cpu/cache/tried/ov-v12-polish/start", root / "outputs/cpu/cache/tried/ov-v12-polish/out"
organism_ov.continuation_start(root / "outputs/cpu/models/ov", root / "outputs/cpu/models/si", start)
base = OvConfig.from_yaml(root / "params/cpu/organism_ov.yaml")
weights = dict(base.weights, which_image=24, image_total=4)  # image_total: meant image_count (a slip)
config = replace(base, warm_steps=0, grow=[], warm_weights={}, weights=weights, images=[2, 10],
                 steps=800, lr=3e-4, conversations=20000, eval_every=200)
organism_ov.run(config, start, out, "python outputs/cpu/models/tried/ov-v12-polish/run.py")
