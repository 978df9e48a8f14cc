"""Why crowded 1-image counting fails, on notebook 02's 1-image counting questions (images sweep, both splits) whose
true count is 1 and whose image holds two or more objects of other classes, from one model's answers: whether a
target's centre shares its 28 px cell (the merged vision token stage 0 labels by object centre) with another
object's centre, whether another object of the target's supercategory is there, and what the wrong answers say.

Run from the repository's root: python outputs/cpu/models/tried/ov-v12-counting/crowd_why.py ANSWERS.jsonl
(v12's answers: outputs/cpu/cache/tried/ov-v14-counts/answers/v12.jsonl, written by mimic_cells.py). Prints."""
import collections
import json
import sys

from mimic_utils.artifacts import profile_dir
from mimic_utils.data.tasks import CROWD_OTHERS

CELL = 28


def main(path: str) -> None:
    build = profile_dir("cpu") / "01_data_build"
    coco = json.loads((build / "scenes/coco/instances_train2017.json").read_text(encoding="utf-8"))
    names = {c["id"]: c["name"] for c in coco["categories"]}
    supercategory = {c["name"]: c["supercategory"] for c in coco["categories"]}
    cells = collections.defaultdict(list)
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        cells[a["image_id"]].append((names[a["category_id"]], int((x + w / 2) // CELL), int((y + h / 2) // CELL)))
    records = {}
    for line in (build / "mimic/counting.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        records[r["id"]] = r
    shared, kin, said = collections.Counter(), collections.defaultdict(lambda: [0, 0]), collections.Counter()
    for line in open(path, encoding="utf-8"):
        answer = json.loads(line)
        r = records.get(answer["id"])
        if not r or r["experiment"] != "images" or r["knobs"]["n_images"] != 1 or r["gt"] != "1":
            continue
        counts, target = r["evidence"][0]["counts"], r["targets"][0]
        if sum(counts.values()) - 1 < CROWD_OTHERS:
            continue
        objects = cells[int(r["image_ids"][0])]
        mine = [(cx, cy) for name, cx, cy in objects if name == target]
        theirs = [(cx, cy) for name, cx, cy in objects if name != target]
        shared[any(c in theirs for c in mine)] += 1
        related = any(supercategory[k] == supercategory[target] for k in counts if k != target)
        kin[related][0] += answer["score"] == 1.0
        kin[related][1] += 1
        if answer["score"] != 1.0:
            said[str(answer["output"]).strip()] += 1
    print(f"questions: {sum(shared.values())}; a target centre in another object's cell: {shared[True]}")
    for related in (False, True):
        right, n = kin[related]
        print(f"another object of the target's supercategory {'present' if related else 'absent'}: {right}/{n} right")
    print("wrong answers:", dict(said.most_common()))


if __name__ == "__main__":
    main(sys.argv[1])
