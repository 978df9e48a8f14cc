"""ov-category-probe: does asking one image's category in MIMIC's words bring back odd-one's answer format?
The ovs trained from the longer-stage-2 si (v13, v15-v18) answer MIMIC odd-one ("Which object category appears in
only a minority of the images?") with "no" or an image number, and keep a category answer only for wordings close
to those trained (tried/ov-v17-which16/oddone_probe.json). `category_in_image` (traindata.CATEGORY_WORDINGS) asks
naming_in_image's question - the one category of a named image - as "Which object category appears in image 3?"
and four other wordings. A continuation probe, not a recipe. Run from the repository's root:
    python outputs/cpu/models/tried/ov-category-probe/run.py NAME START CATEGORY
START is v17 or v18 (their weights in outputs/cpu/cache/tried/ov-v17-which16/ov, ov-v18-warm-naming/ov, both
trained from si3000 in outputs/cpu/cache/tried/si-stage2-3000/si, whose records the continuation compares
against). Each run: START's weights + 600 steps of START's main-phase mix with category_in_image weighted
CATEGORY (0: the same mix, the control), lr 3e-4, 20,000 conversations, samples of 1-10 images, seed 0. It
writes into outputs/cpu/cache/tried/ov-category-probe/ (ignored scratch); the card's records are copied here."""
import sys
from dataclasses import replace
from pathlib import Path

from mimic_utils.organism import ov as organism_ov
from mimic_utils.organism.ov import OvConfig

STARTS = {"v17": "ov-v17-which16", "v18": "ov-v18-warm-naming"}
if len(sys.argv) != 4 or sys.argv[2] not in STARTS:
    raise SystemExit("usage: run.py NAME v17|v18 CATEGORY")
name, begin, category = sys.argv[1], sys.argv[2], int(sys.argv[3])
root = Path.cwd()
scratch = root / "outputs/cpu/cache/tried/ov-category-probe"
cache = root / "outputs/cpu/cache/tried"
start = organism_ov.continuation_start(cache / STARTS[begin] / "ov", cache / "si-stage2-3000/si", scratch / f"start-{begin}")
base = OvConfig.from_yaml(root / "outputs/cpu/models/tried" / STARTS[begin] / "organism_ov.yaml")
weights = dict(base.weights, category_in_image=category) if category else dict(base.weights)
config = replace(base, warm_steps=0, grow=[], warm_weights={}, weights=weights, steps=600, lr=3e-4,
                 conversations=20000, eval_every=200)
organism_ov.run(config, start, scratch / name, "python outputs/cpu/models/tried/ov-category-probe/run.py "
                + " ".join(sys.argv[1:]))
