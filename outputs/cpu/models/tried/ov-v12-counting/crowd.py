"""Counting at 1 image (notebook 02's images sweep) split by how crowded the image is: each model's accuracy at
true counts 1 and 2 on images with at most one object of another class beside the counted ones, and with two
or more, with Wilson 95% intervals. Why: v12 misses MIMIC Unbalanced counting at 1 image (0.585, blind 0.65),
and the misses sit on the crowded images.

Run from the repository's root after mimic_cells.py (ov-v14-counts/) has written the models' answers:
    python outputs/cpu/models/tried/ov-v12-counting/crowd.py NAME=ANSWERS.jsonl ...
(the answers of v12, v13, v14, c1 and c2 are in outputs/cpu/cache/tried/ov-v14-counts/answers/, not committed).
Writes crowd.md and crowd.json beside this script."""
import collections
import json
import sys
from pathlib import Path

import pandas as pd

from mimic_utils.analysis.stats import wilson
from mimic_utils.artifacts import profile_dir, repo_root
from mimic_utils.data import mimic_benchmark
from mimic_utils.data.tasks import CROWD_OTHERS

HERE = Path(__file__).resolve().parent


def crowd_label(others: int) -> str:
    """How crowded an image is: the objects of other classes beside the counted ones, in two bins."""
    return f"{CROWD_OTHERS}+ others" if others >= CROWD_OTHERS else f"0-{CROWD_OTHERS - 1} others"


def crowd_cell(record: dict) -> tuple[str, str, str] | None:
    """(task, true count, crowd) of a 1-image counting question of the images sweep at true count 1 or 2."""
    if record["family"] != "counting" or record["experiment"] != "images" or record["knobs"]["n_images"] != 1:
        return None
    if record["gt"] not in ("1", "2"):
        return None
    others = sum(record["evidence"][0]["counts"].values()) - int(record["gt"])
    return record["task"], record["gt"], crowd_label(others)


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv):
        print("usage: crowd.py NAME=ANSWERS.jsonl ...", file=sys.stderr)
        return 2
    root = repo_root()
    records = {r["id"]: r for r in mimic_benchmark.load(profile_dir("cpu") / "01_data_build" / "mimic", root=root)}
    table = collections.defaultdict(dict)
    for arg in argv:
        name, path = arg.split("=", 1)
        hits = collections.defaultdict(lambda: [0, 0])
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            answer = json.loads(line)
            record = records.get(answer["id"])
            cell = crowd_cell(record) if record else None
            if cell:
                hits[cell][0] += answer["score"] == 1.0
                hits[cell][1] += 1
        for cell, (right, n) in hits.items():
            lo, hi = wilson(right, n)
            table[cell]["n"] = n
            table[cell][name] = f"{right / n:.2f} [{lo:.2f}, {hi:.2f}]"
    rows = [{"task": t, "true count": c, "image": crowd, **values} for (t, c, crowd), values in sorted(table.items())]
    frame = pd.DataFrame(rows)
    (HERE / "crowd.md").write_text(frame.to_markdown(index=False) + "\n", encoding="utf-8")
    (HERE / "crowd.json").write_text(json.dumps({"command": "python outputs/cpu/models/tried/ov-v12-counting/crowd.py "
                                                 + " ".join(argv), "rows": rows},
                                                indent=2) + "\n", encoding="utf-8")
    print(frame.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
