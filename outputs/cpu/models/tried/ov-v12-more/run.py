"""ov-v12-more: v12's weights + 1,500 more steps of its main phase (a continuation, not a recipe). Run from
the repository's root while outputs/cpu/models/ov is v12 (the run used it at 43aacc6):
    python outputs/cpu/models/tried/ov-v12-more/run.py
It writes into outputs/cpu/cache/tried/ov-v12-more/ (ignored scratch) (start: v12's weights beside si's records; out: the trained model and its
card). The run recorded in this folder was this script with its scratch folders outside the repository (its card's and training.json's
paths are rewritten to the ones here); it has not been rerun from here."""
from dataclasses import replace
from pathlib import Path

from mimic_utils.organism import ov as organism_ov
from mimic_utils.organism.ov import OvConfig

root = Path.cwd()
start, out = root / "outputs/cpu/cache/tried/ov-v12-more/start", root / "outputs/cpu/cache/tried/ov-v12-more/out"
organism_ov.continuation_start(root / "outputs/cpu/models/ov", root / "outputs/cpu/models/si", start)
config = replace(OvConfig.from_yaml(root / "params/cpu/organism_ov.yaml"), warm_steps=0, grow=[], warm_weights={},
                 steps=1500, eval_every=300)
organism_ov.run(config, start, out, "python outputs/cpu/models/tried/ov-v12-more/run.py")
