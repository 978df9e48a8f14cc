"""w8: the committed ov recipe's warm phase (600 steps on 2 images) and its first grow phase (400 on 2-3) only,
from the longer-stage-2 si of tried/si-stage2-3000 (outputs/cpu/cache/tried/si-stage2-3000/si), with counting
weighted COUNTING in warm_weights instead of 2, then 1 main-phase step (the stage needs one) — a probe of whether
more counting in those phases keeps si's counting, read against v13's curves (the same si and recipe with
counting 2: tried/si-stage2-3000/ov/loss.csv) and on crowd_heldout.py's questions. Run from the repository's root:
    python outputs/cpu/models/tried/ov-v12-counting/warm.py 8
    python outputs/cpu/models/tried/ov-v12-counting/warm.py 2 0.0003   # the recipe's counting, warm_lr 3e-4
It writes into outputs/cpu/cache/tried/ov-warm-counting/w<COUNTING>[-lr<WARM_LR>] (scratch)."""
import sys
from dataclasses import replace
from pathlib import Path

from mimic_utils.organism import ov as organism_ov
from mimic_utils.organism.ov import OvConfig

counting = int(sys.argv[1])
warm_lr = float(sys.argv[2]) if len(sys.argv) > 2 else None
root = Path.cwd()
base = OvConfig.from_yaml(root / "params/cpu/organism_ov.yaml")
config = replace(base, warm_weights=dict(base.warm_weights, counting=counting), grow=[[2, 3, 400]], steps=1,
                 warm_lr=base.warm_lr if warm_lr is None else warm_lr)
organism_ov.run(config, root / "outputs/cpu/cache/tried/si-stage2-3000/si",
                root / ("outputs/cpu/cache/tried/ov-warm-counting/w" + str(counting) + ("" if warm_lr is None else f"-lr{warm_lr:g}")),
                "python outputs/cpu/models/tried/ov-v12-counting/warm.py " + " ".join(sys.argv[1:]))
