"""Run any adapter over any benchmark: batched greedy generation, official scoring, resumable JSONL.

    rows = run(adapter, records, "outputs/cpu/02_zero_shot_diagnosis/predictions/base.jsonl")
    metrics = summarize(rows)

* **Batches** hold samples of similar length (sorted by image count and question length), left-padded by
  the adapter, with each task's official ``max_new_tokens``.
* **Predictions** go to a JSONL file, one line per sample: id, task, knobs, raw output, parsed answer,
  score, and the model and preprocessing settings. Lines are appended batch by batch and flushed.
* **Resume**: rows already in the file are kept and their ids skipped, so a killed run started again
  ends with exactly the rows of an uninterrupted one (a torn last line is dropped and redone).
* **Several processes**: under ``accelerate launch --num_processes N`` each process takes every N-th
  sample into its own shard file; the main process merges the shards into the final file, sorted by
  id, which is then identical to a single-process run's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from PIL import Image
from tqdm.auto import tqdm

from mimic_utils.scoring import aggregate, score_sample
from mimic_utils.traindata import prompt_family


def scoring_family(record: dict) -> str:
    """The official scorer a record is scored with (MIMIC families, and minor / single-image variants)."""
    return prompt_family(record["family"])


def length_key(record: dict) -> tuple[int, int]:
    """Sort key that groups samples of similar prompt length into the same batch."""
    return len(record["images"]), len(record["question"])


def batches(records: list[dict], batch_size: int) -> Iterable[list[dict]]:
    """Records in length order, cut into batches (order of ids breaks ties, for reproducibility)."""
    ordered = sorted(records, key=lambda r: (*length_key(r), r["id"]))
    for start in range(0, len(ordered), batch_size):
        yield ordered[start:start + batch_size]


def read_predictions(path: Path) -> list[dict]:
    """Rows already written; a torn last line (a run killed mid-write) is dropped so it is redone."""
    if not path.is_file():
        return []
    rows, lines = [], path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: malformed prediction line (not the last one): delete the file")
    return rows


def load_images(paths: list[str]) -> list[Image.Image]:
    """Open a sample's images; a missing file is named."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except OSError as err:
            raise FileNotFoundError(f"cannot read image {path}: {err}") from err
    return images


def prediction_row(record: dict, output: str, settings: dict, pool: int) -> dict:
    """One line of the predictions file."""
    family = scoring_family(record)
    scored = score_sample(family, output, record["gt"])
    return {
        "id": record["id"], "family": record["family"], "task": record.get("task", record["family"]),
        "experiment": record.get("experiment"), "knobs": record.get("knobs", {}), "gt": record["gt"],
        "output": output, **scored, "scored_as": family, "pool": pool, "model": settings,
    }


def _shard(records: list[dict], rank: int, world: int) -> list[dict]:
    ordered = sorted(records, key=lambda r: r["id"])
    return ordered[rank::world]


def run(adapter, records: list[dict], out_path: Path | str, batch_size: int = 16, pool: int = 1,
        progress: bool = True, desc: str | None = None) -> list[dict]:
    """Predict and score every record (resuming from ``out_path``); returns all rows, sorted by id."""
    from accelerate import PartialState

    state = PartialState()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ids = [r["id"] for r in records]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{out_path.name}: records hold duplicate ids; every sample needs its own id")
    shard_path = out_path if state.num_processes == 1 else out_path.with_suffix(f".rank{state.process_index}.jsonl")
    done = {row["id"] for row in read_predictions(shard_path)}
    mine = _shard(records, state.process_index, state.num_processes)
    todo = [r for r in mine if r["id"] not in done]
    _rewrite_clean(shard_path)
    settings = {**adapter.settings, "pool": pool}
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="sample", disable=not progress,
               desc=desc or out_path.stem, mininterval=2)
    with shard_path.open("a", encoding="utf-8") as handle:
        for batch in batches(todo, batch_size):
            samples = [{"images": load_images(r["images"]), "question": r["question"],
                        "task_family": scoring_family(r)} for r in batch]
            outputs = adapter.answer(samples, pool=pool)
            for record, output in zip(batch, outputs):
                handle.write(json.dumps(prediction_row(record, output, settings, pool), sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch))
    bar.close()
    if state.num_processes > 1:
        state.wait_for_everyone()
        if state.is_main_process:
            _merge_shards(out_path, state.num_processes)
        state.wait_for_everyone()
    return _check_complete(out_path, ids)


def _rewrite_clean(path: Path) -> None:
    """Drop a torn last line before appending, so the file stays valid JSONL."""
    if path.is_file():
        rows = read_predictions(path)
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        if text != path.read_text(encoding="utf-8"):
            path.write_text(text, encoding="utf-8")


def _merge_shards(out_path: Path, world: int) -> None:
    from mimic_utils.artifacts import write_text

    rows = {}
    for rank in range(world):
        for row in read_predictions(out_path.with_suffix(f".rank{rank}.jsonl")):
            rows[row["id"]] = row
    for row in read_predictions(out_path):
        rows.setdefault(row["id"], row)
    write_text(out_path, "".join(json.dumps(rows[i], sort_keys=True) + "\n" for i in sorted(rows)))
    for rank in range(world):
        out_path.with_suffix(f".rank{rank}.jsonl").unlink(missing_ok=True)


def _check_complete(out_path: Path, ids: list[str]) -> list[dict]:
    rows = read_predictions(out_path)
    by_id = {row["id"]: row for row in rows}
    missing = sorted(set(ids) - set(by_id))
    if missing or len(rows) != len(by_id):
        raise RuntimeError(f"{out_path}: {len(missing)} ids missing (e.g. {missing[:3]}), "
                           f"{len(rows) - len(by_id)} duplicated")
    return [by_id[i] for i in sorted(ids)]


def summarize(rows: list[dict], by: tuple[str, ...] = ("task",)) -> dict:
    """Official aggregate scores (accuracy, or micro P/R/F1 for Listing) overall and per ``by`` key."""
    flat = [{**row, **{f"knob_{k}": v for k, v in row.get("knobs", {}).items()}} for row in rows]
    for row in flat:
        row["family"] = row["scored_as"]
    return aggregate(flat, by=by)


def score_table(rows: list[dict], group: str) -> list[dict]:
    """Rows of ``(group value, task, n, score)``: the headline score per task and value of ``group``
    (a record field such as ``task`` or a knob such as ``knob_n_images``)."""
    summary = summarize(rows, by=(group,))
    table = []
    for family, stats in summary.items():
        for value, cell in stats.get("by", {}).get(group, {}).items():
            table.append({group: value, "family": family, "n": cell["n"], "score": cell["score"]})
    return table
