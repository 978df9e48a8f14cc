"""Single-image counting at true counts 1 and 2 on si's held-out scene stream (never trained on), the images
drawn as the stage draws them (``count_crowded`` 0) and all crowded (1: two or more objects of other classes),
split by the crowd actually on the image, per model. Why: MIMIC's 1-image Unbalanced questions are mostly crowded
images with one target object, where v12 says "2"; this asks whether a model reads a count out of a crowd on
the organism's own held-out scenes, and where in si -> ov that reading is lost.

Run from the repository's root:
    python outputs/cpu/models/tried/ov-v12-counting/crowd_heldout.py NAME=MODEL_FOLDER ...
Writes crowd_heldout.md and crowd_heldout.json beside this script; the answers go to
outputs/cpu/cache/tried/ov-v12-counting/crowd_heldout/ (scratch)."""
import json
import sys
from pathlib import Path

import pandas as pd

from mimic_utils.analysis.stats import wilson
from mimic_utils.artifacts import repo_root
from mimic_utils.data import traindata
from mimic_utils.data.tasks import Pools
from mimic_utils.evaluation import harness
from mimic_utils.organism import ov as organism_ov, recipe as organism

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from crowd import crowd_label  # noqa: E402  (the same bins as on notebook 02's questions)
QUESTIONS, SEED, ONLY_ONE_AND_TWO = 300, 77, (0, 1, 1, 0, 0, 0)


def question_sets(root: Path, folder: Path) -> dict[str, list[dict]]:
    """The two sets of held-out counting questions (as drawn, all crowded), their images written into ``folder``."""
    si = organism_ov.si_config(root / "outputs/cpu/models/si")
    pool = organism_ov.heldout_pool(si, False)
    pools = Pools(pool.index)
    sets = {}
    for name, crowded in (("as drawn", 0.0), ("all crowded", 1.0)):
        records = traindata.single_image_questions(pool.index, QUESTIONS, seed=SEED, max_count=si.max_count,
                                                   families=("counting",), pools=pools, prefix=f"crowd-{crowded}",
                                                   count_weights=ONLY_ONE_AND_TWO, count_crowded=crowded)
        for r in records:
            r["images"] = [str(organism.heldout_png(pool, int(i), folder)) for i in r["image_ids"]]
            r["others"] = sum(pools.counts[r["image_ids"][0]].values()) - int(r["gt"])
        sets[name] = records
    return sets


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv):
        print("usage: crowd_heldout.py NAME=MODEL_FOLDER ...", file=sys.stderr)
        return 2
    root = repo_root()
    folder = root / "outputs/cpu/cache/tried/ov-v12-counting/crowd_heldout"
    folder.mkdir(parents=True, exist_ok=True)
    sets = question_sets(root, folder)
    rows = []
    for name, source in (a.split("=", 1) for a in argv):
        adapter = harness.load_under_study({"name": name, "source": source}, root)
        for set_name, records in sets.items():
            answers = harness.run(adapter, records, folder / f"{name}-{set_name.replace(' ', '_')}.jsonl",
                                  batch_size=32, progress=False)
            scores = {}
            for record, answer in zip(records, answers, strict=True):
                scores.setdefault((record["gt"], crowd_label(record["others"])), []).append(answer["score"])
            for (gt, crowd), hits in sorted(scores.items()):
                lo, hi = wilson(sum(hits), len(hits))
                rows.append({"model": name, "questions": set_name, "true count": gt, "image": crowd, "n": len(hits),
                             "score": f"{sum(hits) / len(hits):.2f} [{lo:.2f}, {hi:.2f}]"})
    frame = pd.DataFrame(rows)
    (HERE / "crowd_heldout.md").write_text(frame.to_markdown(index=False) + "\n", encoding="utf-8")
    (HERE / "crowd_heldout.json").write_text(json.dumps({"command": "python outputs/cpu/models/tried/ov-v12-counting/"
                                                         "crowd_heldout.py " + " ".join(argv), "rows": rows},
                                                        indent=2) + "\n", encoding="utf-8")
    print(frame.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
