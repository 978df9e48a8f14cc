"""v12 (the committed ov) and v14 (this folder's recipe) on the MIMIC benchmark cells that notebook 02's floor
check reads — every task at 1 and at 4 images (the images sweep) and counting at spread 1 — each cell with its
blind baseline (the best constant answer on its questions), v14 - v12 paired on the same questions, and the
counting answers each model gives against the true ones. Why: v14 changes only the tilt of the true counts
in the stage's single-image counting questions, and v12 over-counts Unbalanced counting at 1 image.

Run from the repository's root after notebook 01 has built the benchmark
(``python -m mimic_utils.runner --profile cpu --only 01``) and v14 is trained into
outputs/cpu/cache/tried/ov-v14-counts/ov (this folder's organism_ov.yaml says how):
    python outputs/cpu/models/tried/ov-v14-counts/mimic_cells.py
Writes mimic_cells.json and mimic_cells.md beside it; the answers go to outputs/cpu/cache/tried/ov-v14-counts/answers.
Another ov against v12 instead of v14: ``mimic_cells.py NAME FOLDER OUT_DIR`` (e.g. v13, whose weights are not
committed: ``v13 <its folder> outputs/cpu/models/tried/si-stage2-3000``)."""
import collections
import json
import sys
from pathlib import Path

import pandas as pd

from mimic_utils.analysis import diagnosis, stats
from mimic_utils.artifacts import profile_dir, repo_root
from mimic_utils.data import mimic_benchmark
from mimic_utils.evaluation import harness

HERE = Path(__file__).resolve().parent
MODELS = {"v12": "outputs/cpu/models/ov", "v14": "outputs/cpu/cache/tried/ov-v14-counts/ov"}


def cells(records: list[dict]) -> dict[str, list[dict]]:
    """The floor check's questions by cell: every task at 1 and 4 images, and counting at spread 1."""
    chosen: dict[str, list[dict]] = collections.defaultdict(list)
    for r in records:
        if r["experiment"] == "images" and r["knobs"]["n_images"] in (1, 4):
            chosen[f"{r['task']} at {r['knobs']['n_images']} image(s)"].append(r)
        elif r["experiment"] == "spread" and r["knobs"].get("spread") == 1:
            chosen[f"{r['task']}, spread 1 of {r['knobs']['n_images']} images"].append(r)
    return dict(sorted(chosen.items()))


def cell_line(cell: str, per_model: dict[str, list[dict]]) -> dict:
    """One cell: n, blind, each model's score and interval, and the other model - v12 paired."""
    line = {"cell": cell, "n": len(per_model["v12"]), "blind": round(diagnosis.blind(per_model["v12"]), 3)}
    for name, rows in per_model.items():
        found = diagnosis.cell_stats(rows)
        line[name] = f"{found['score']:.3f} [{found['lo']:.3f}, {found['hi']:.3f}]"
    other = [name for name in per_model if name != "v12"][0]
    d = stats.difference(per_model["v12"], per_model[other], paired=True)
    line[f"{other} - v12"] = f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
    return line


def said(rows: list[dict]) -> dict[str, int]:
    return dict(sorted(collections.Counter(str(r["output"]).strip() for r in rows).items()))


def main(argv: list[str]) -> int:
    root = repo_root()
    models, here, command = MODELS, HERE, "python outputs/cpu/models/tried/ov-v14-counts/mimic_cells.py"
    if argv:
        if len(argv) != 3:
            print("usage: mimic_cells.py [NAME FOLDER OUT_DIR]", file=sys.stderr)
            return 2
        models = {"v12": MODELS["v12"], argv[0]: argv[1]}
        here, command = root / argv[2], f"{command} {' '.join(argv)}"
    missing = [source for source in models.values() if not (root / source / "model.safetensors").is_file()]
    if missing:
        print(f"no weights in {missing}: train v14 first (organism_ov.yaml here says how)", file=sys.stderr)
        return 2
    records = mimic_benchmark.load(profile_dir("cpu") / "01_data_build" / "mimic", root=root)
    by_cell = cells(records)
    wanted = [r for rows in by_cell.values() for r in rows]
    scratch = root / "outputs/cpu/cache/tried/ov-v14-counts/answers"
    answers = {}
    for name, source in models.items():
        adapter = harness.load_under_study({"name": name, "source": source}, root)
        answers[name] = {r["id"]: r for r in harness.run(adapter, wanted, scratch / f"{name}.jsonl", batch_size=32,
                                                          desc=name)}
    lines, counts = [], {}
    for cell, members in by_cell.items():
        per_model = {name: [answers[name][harness.mimic_id(r)] for r in members] for name in models}
        lines.append(cell_line(cell, per_model))
        if cell.startswith("counting"):
            counts[cell] = {"truth": dict(sorted(collections.Counter(str(r["gt"]) for r in members).items())),
                            **{name: said(rows) for name, rows in per_model.items()}}
    table = pd.DataFrame(lines)
    record = {"command": command, "cells": lines,
              "counting_answers_said": counts}
    (here / "mimic_cells.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (here / "mimic_cells.md").write_text(table.to_markdown(index=False) + "\n", encoding="utf-8")
    print(table.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
