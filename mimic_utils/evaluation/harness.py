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
from typing import Callable, Iterable

import pandas as pd
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from PIL import Image
from tqdm.auto import tqdm

from mimic_utils.artifacts import note, repo_root, write_text
from mimic_utils.models.vlm import load_adapter, model_fingerprint
from mimic_utils.evaluation.prediction_cache import generation_context, open_cache, question_key
from mimic_utils.evaluation.scoring import aggregate, score_sample
from mimic_utils.data.prompts import prompt_family


def scoring_family(record: dict) -> str:
    """The official scorer a record is scored with (MIMIC families, and minor / single-image variants)."""
    return prompt_family(record["family"])


def length_key(record: dict) -> tuple[int, int]:
    """Sort key that groups samples of similar prompt length into the same batch."""
    return len(record["images"]), len(record["question"])


def mimic_id(record: dict) -> str:
    return record["id"]


def batches(records: list, batch_size: int, sort_key: Callable = length_key,
            record_id: Callable = mimic_id) -> Iterable[list]:
    """Records in length order, cut into batches (order of ids breaks ties, for reproducibility)."""
    ordered = sorted(records, key=lambda r: (*sort_key(r), record_id(r)))
    for start in range(0, len(ordered), batch_size):
        yield ordered[start:start + batch_size]


def dump_row(row: dict) -> str:
    """One predictions line; every writer uses it, so rewritten and merged files are byte-identical."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n"


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
    """One line of the predictions file (``base_id``: the 1-image question a padded sweep's record grows,
    so analyses pair the same question across image counts)."""
    family = scoring_family(record)
    scored = score_sample(family, output, record["gt"])
    return {
        "id": record["id"], "family": record["family"], "task": record.get("task", record["family"]),
        "experiment": record.get("experiment"), "knobs": record.get("knobs", {}), "gt": record["gt"],
        **({"base_id": record["base_id"]} if record.get("base_id") else {}),
        **({"image_labels": True} if record.get("image_labels") else {}),
        "output": output, **scored, "scored_as": family, "pool": pool, "model": settings,
    }


def mimic_sample(record: dict) -> dict:
    """What the adapter is asked for a MIMIC record: its images, bare question and task family."""
    return {"images": load_images(record["images"]), "question": record["question"],
            "task_family": scoring_family(record), "image_labels": bool(record.get("image_labels", False))}


def process_state():
    """accelerate's view of the launched processes.

    ``PartialState()`` only recognises several CPU processes (MULTI_CPU over gloo) when told ``cpu=True``;
    without it, two processes on a machine without GPUs each believe they are alone and write the same
    file. So CPU is asked for when there is no GPU or ``ACCELERATE_USE_CPU`` is set.
    """
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def _shard(records: list, rank: int, world: int, batch_size: int, sort_key: Callable, record_id: Callable) -> list:
    """This process's share: every ``world``-th *batch* of the single-process batching, so each sample
    is answered inside exactly the batch (same neighbours, same padding) it would get in one process."""
    return [r for b in list(batches(records, batch_size, sort_key, record_id))[rank::world] for r in b]


def run(adapter, records: list, out_path: Path | str, batch_size: int = 16, pool: int = 1,
        progress: bool = True, desc: str | None = None, *, to_sample: Callable = mimic_sample,
        to_row: Callable = prediction_row, record_id: Callable = mimic_id, sort_key: Callable = length_key,
        max_new_tokens: int | None = None, reuse_dir: Path | str | None = None) -> list[dict]:
    """Predict and score every record (resuming from ``out_path``); returns all rows, sorted by id.

    The defaults evaluate MIMIC records; a public benchmark passes its own ``to_sample(record)``,
    ``to_row(record, output, settings, pool)``, ``record_id``, ``sort_key`` and ``max_new_tokens``
    (``None`` means each MIMIC task's official budget). Answers the same model already gave to the same
    question in any notebook are read from :mod:`mimic_utils.evaluation.prediction_cache` (under ``reuse_dir``, by
    default ``$MIMIC_CACHE_DIR/predictions``) instead of being generated again.
    """
    state = process_state()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ids = [record_id(r) for r in records]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{out_path.name}: records hold duplicate ids; every sample needs its own id")
    shard_path = out_path if state.num_processes == 1 else out_path.with_suffix(f".rank{state.process_index}.jsonl")
    settings = {**getattr(adapter, "settings", {}), "pool": pool}
    fingerprint = model_fingerprint(settings)
    for path in (shard_path, out_path):
        discard_stale(path, fingerprint, state.is_main_process or path == shard_path)
    rewrite_clean(shard_path)
    done = {row["id"] for row in read_predictions(shard_path)} | {row["id"] for row in read_predictions(out_path)}
    mine = _shard(records, state.process_index, state.num_processes, batch_size, sort_key, record_id)
    todo = [r for r in mine if record_id(r) not in done]
    reuse = open_cache(fingerprint, reuse_dir, generation_context(adapter)) if state.num_processes == 1 else None
    keys = {record_id(r): question_key(r, max_new_tokens) for r in todo} if reuse else {}
    with shard_path.open("a", encoding="utf-8") as handle:
        # a reused answer is scored again, so a scorer change never leaves a stale score behind
        known = [reuse.get(keys[record_id(r)]) for r in todo] if reuse else []
        handle.write("".join(dump_row({**to_row(r, output, settings, pool), "fingerprint": fingerprint})
                             for r, output in zip(todo, known) if output is not None))
        todo = [r for r, output in zip(todo, known) if output is None] if reuse else todo
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="sample", disable=not progress,
                   desc=desc or out_path.stem, mininterval=2)
        for batch in batches(todo, batch_size, sort_key, record_id):
            outputs = adapter.answer([to_sample(r) for r in batch], pool=pool, max_new_tokens=max_new_tokens)
            rows = [{**to_row(record, output, settings, pool), "fingerprint": fingerprint}
                    for record, output in zip(batch, outputs)]
            handle.write("".join(dump_row(row) for row in rows))
            handle.flush()
            os.fsync(handle.fileno())
            if reuse:
                reuse.add([(keys[record_id(r)], out) for r, out in zip(batch, outputs)])
            bar.update(len(batch))
    bar.close()
    if state.num_processes > 1:
        state.wait_for_everyone()
        if state.is_main_process:
            _merge_shards(out_path, state.num_processes)
        state.wait_for_everyone()
    return _check_complete(out_path, ids)


def rewrite_clean(path: Path) -> None:
    """Drop a torn last line before appending, so the file stays valid JSONL."""
    if path.is_file():
        text = "".join(dump_row(r) for r in read_predictions(path))
        if text != path.read_text(encoding="utf-8"):
            write_text(path, text)


def discard_stale(path: Path, fingerprint: str, may_delete: bool = True) -> None:
    """Predictions written by another model (other weights, mask, preprocessing or pooling) are never
    resumed from: the file is set aside as ``<name>.stale.jsonl`` and the run starts over, saying so in the
    log (:func:`mimic_utils.artifacts.note`)."""
    rows = read_predictions(path)
    stale = [r for r in rows if r.get("fingerprint") != fingerprint]
    if stale and may_delete:
        note(f"[evaluate] {path.name}: {len(stale)} of {len(rows)} rows come from another model "
             f"(fingerprint {stale[0].get('fingerprint')} != {fingerprint}); starting over")
        path.replace(path.with_suffix(".stale.jsonl"))


def _merge_shards(out_path: Path, world: int) -> None:
    rows = {}
    for rank in range(world):
        for row in read_predictions(out_path.with_suffix(f".rank{rank}.jsonl")):
            rows[row["id"]] = row
    for row in read_predictions(out_path):
        rows.setdefault(row["id"], row)
    write_text(out_path, "".join(dump_row(rows[i]) for i in sorted(rows)))
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


# --- what notebooks call -----------------------------------------------------------------------------

MODEL_SPEC_KEYS = {"name", "source", "family", "dtype", "device", "attn_implementation", "quantization",
                   "revision", "trust_remote_code", "preprocessing"}


def load_under_study(spec: dict, root: Path | None = None):
    """The model under study from a parameter-file entry, in one call.

    ``source`` is a hub id (the ``paper`` profile's real checkpoints) or a folder relative to the checkout
    (the organism, ``outputs/cpu/models/si``, under ``cpu`` and ``smoke``). The other keys go to
    :func:`mimic_utils.models.vlm.load_adapter`; an unknown key is refused with its name.
    """
    unknown = sorted(set(spec) - MODEL_SPEC_KEYS)
    if unknown:
        raise ValueError(f"model entry {spec.get('name', spec.get('source'))!r}: unknown key(s) {unknown}; "
                         f"known: {sorted(MODEL_SPEC_KEYS)}")
    if "source" not in spec:
        raise ValueError(f"model entry {spec!r}: needs a 'source' (hub id or folder)")
    root = root or repo_root()
    source = spec["source"]
    local = root / source
    if local.exists():
        source = str(local)
    elif source.startswith("outputs/"):
        raise FileNotFoundError(f"{local}: no model there — train the organism first with `make organism`")
    options = {k: v for k, v in spec.items() if k not in ("name", "source")}
    adapter = load_adapter(source, **options)
    adapter.settings["name"] = spec.get("name", spec["source"])
    return adapter


def token_budget_table(adapters: dict, records: list[dict], n_images: tuple[int, ...] = (1, 2, 4, 10),
                       pool: int = 1) -> "pd.DataFrame":
    """Vision and text tokens of one real sample per image count, per model (for the notebooks' tables)."""
    table = []
    for name, adapter in adapters.items():
        for n in n_images:
            sample = next((r for r in records if len(r["images"]) == n), None)
            if sample is None:
                continue
            batch = adapter.prepare([{"images": load_images(sample["images"]), "question": sample["question"],
                                      "task_family": scoring_family(sample)}], pool=pool)
            budget = adapter.token_budget(batch)
            table.append({"model": name, "n_images": n, "pool": pool, "vision_tokens": budget["vision_tokens"][0],
                          "text_tokens": budget["text_tokens"][0], "total_tokens": budget["total_tokens"][0]})
    return pd.DataFrame(table)


def pooled_runs(adapter, name: str, records: list[dict], factors: list[int], pred_dir: Path, batch_size: int,
                progress: bool = True) -> dict[int, list[dict]]:
    """One model's rows at each 1D pooling factor r, on the same questions (``<model>.pool<r>.jsonl``;
    r = 1 reads the unpooled ``<model>.jsonl`` instead of generating again)."""
    return {r: run(adapter, records, pred_dir / (f"{name}.jsonl" if r == 1 else f"{name}.pool{r}.jsonl"),
                   batch_size=batch_size, pool=r, progress=progress, desc=f"{name} r={r}")
            for r in factors}


def pooled_token_budget(adapters: dict, records: list[dict], factors: list[int]) -> "pd.DataFrame":
    """Vision tokens per sample at each image count of ``records`` and each pooling factor, per model."""
    counts = tuple(sorted({len(r["images"]) for r in records}))
    return pd.concat([token_budget_table(adapters, records, counts, pool=r) for r in factors], ignore_index=True)
