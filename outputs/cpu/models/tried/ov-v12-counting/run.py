"""ov-v12-counting: continuations of v12 (the committed ov) with more single-image counting in the mix, and a
share of it asked of crowded images (a probe, not a recipe). Run from the repository's root while
outputs/cpu/models/ov is v12:
    python outputs/cpu/models/tried/ov-v12-counting/run.py NAME COUNTING [CROWDED [START]]
    # the three runs recorded here:
    python outputs/cpu/models/tried/ov-v12-counting/run.py c1-count18 18
    python outputs/cpu/models/tried/ov-v12-counting/run.py c2-count18-crowded 18 0.7
    python outputs/cpu/models/tried/ov-v12-counting/run.py c3-v13-count18-crowded 18 0.7 v13
Each: v12's weights (beside si's training.json and eval.json, so the scenes' recipe and the single-image scores
compared against are si's) + 600 steps of v12's main-phase mix with counting weighted COUNTING instead of 6,
CROWDED of its counting questions (true count 1 or more) asked of an image with two or more objects of other
classes (`count_crowded`), lr 3e-4, 20,000 conversations, samples of 1-10 images, seed 0 (the held-out
questions are v12's). START v13: v13's weights instead (v12's recipe trained from the candidate si of
tried/si-stage2-3000, both in outputs/cpu/cache/tried/si-stage2-3000/ as that folder's commands leave them), beside
that si's records. It writes into outputs/cpu/cache/tried/ov-v12-counting/ (ignored scratch). The runs recorded
here were this script's first version with its scratch folder under outputs/cpu/cache/tried/s20/."""
import sys
from dataclasses import replace
from pathlib import Path

from mimic_utils.organism import ov as organism_ov
from mimic_utils.organism.ov import OvConfig

if len(sys.argv) not in (3, 4, 5) or (len(sys.argv) == 5 and sys.argv[4] not in ("v12", "v13")):
    raise SystemExit("usage: run.py NAME COUNTING [CROWDED [v12|v13]]")
name, counting = sys.argv[1], int(sys.argv[2])
crowded = float(sys.argv[3]) if len(sys.argv) >= 4 else 0.0
begin = sys.argv[4] if len(sys.argv) == 5 else "v12"
root = Path.cwd()
scratch = root / "outputs/cpu/cache/tried/ov-v12-counting"
ov_dir, si_dir = {"v12": ("outputs/cpu/models/ov", "outputs/cpu/models/si"),
                  "v13": ("outputs/cpu/cache/tried/si-stage2-3000/ov", "outputs/cpu/cache/tried/si-stage2-3000/si")}[begin]
start = organism_ov.continuation_start(root / ov_dir, root / si_dir, scratch / ("start" if begin == "v12" else "start-v13"))
base = OvConfig.from_yaml(root / "params/cpu/organism_ov.yaml")
config = replace(base, warm_steps=0, grow=[], warm_weights={}, weights=dict(base.weights, counting=counting),
                 steps=600, lr=3e-4, conversations=20000, eval_every=200, count_crowded=crowded)
organism_ov.run(config, start, scratch / name, "python outputs/cpu/models/tried/ov-v12-counting/run.py "
                + " ".join(sys.argv[1:]))
