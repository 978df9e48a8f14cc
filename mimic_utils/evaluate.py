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

from PIL import Image
from tqdm.auto import tqdm

from mimic_utils.models import model_fingerprint
from mimic_utils.scoring import aggregate, score_sample
from mimic_utils.traindata import prompt_family


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
    """One line of the predictions file."""
    family = scoring_family(record)
    scored = score_sample(family, output, record["gt"])
    return {
        "id": record["id"], "family": record["family"], "task": record.get("task", record["family"]),
        "experiment": record.get("experiment"), "knobs": record.get("knobs", {}), "gt": record["gt"],
        "output": output, **scored, "scored_as": family, "pool": pool, "model": settings,
    }


def mimic_sample(record: dict) -> dict:
    """What the adapter is asked for a MIMIC record: its images, bare question and task family."""
    return {"images": load_images(record["images"]), "question": record["question"],
            "task_family": scoring_family(record)}


def process_state():
    """accelerate's view of the launched processes.

    ``PartialState()`` only recognises several CPU processes (MULTI_CPU over gloo) when told ``cpu=True``;
    without it, two processes on a machine without GPUs each believe they are alone and write the same
    file. So CPU is asked for when there is no GPU or ``ACCELERATE_USE_CPU`` is set.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def _shard(records: list, rank: int, world: int, batch_size: int, sort_key: Callable, record_id: Callable) -> list:
    """This process's share: every ``world``-th *batch* of the single-process batching, so each sample
    is answered inside exactly the batch (same neighbours, same padding) it would get in one process."""
    return [r for b in list(batches(records, batch_size, sort_key, record_id))[rank::world] for r in b]


def run(adapter, records: list, out_path: Path | str, batch_size: int = 16, pool: int = 1,
        progress: bool = True, desc: str | None = None, *, to_sample: Callable = mimic_sample,
        to_row: Callable = prediction_row, record_id: Callable = mimic_id, sort_key: Callable = length_key,
        max_new_tokens: int | None = None) -> list[dict]:
    """Predict and score every record (resuming from ``out_path``); returns all rows, sorted by id.

    The defaults evaluate MIMIC records; a public benchmark passes its own ``to_sample(record)``,
    ``to_row(record, output, settings, pool)``, ``record_id``, ``sort_key`` and ``max_new_tokens``
    (``None`` means each MIMIC task's official budget).
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
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="sample", disable=not progress,
               desc=desc or out_path.stem, mininterval=2)
    with shard_path.open("a", encoding="utf-8") as handle:
        for batch in batches(todo, batch_size, sort_key, record_id):
            outputs = adapter.answer([to_sample(r) for r in batch], pool=pool, max_new_tokens=max_new_tokens)
            for record, output in zip(batch, outputs):
                row = {**to_row(record, output, settings, pool), "fingerprint": fingerprint}
                handle.write(dump_row(row))
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


def rewrite_clean(path: Path) -> None:
    """Drop a torn last line before appending, so the file stays valid JSONL."""
    from mimic_utils.artifacts import write_text

    if path.is_file():
        text = "".join(dump_row(r) for r in read_predictions(path))
        if text != path.read_text(encoding="utf-8"):
            write_text(path, text)


def discard_stale(path: Path, fingerprint: str, may_delete: bool = True) -> None:
    """Predictions written by another model (other weights, mask, preprocessing or pooling) are never
    resumed from: the file is set aside as ``<name>.stale.jsonl`` and the run starts over, saying so."""
    rows = read_predictions(path)
    stale = [r for r in rows if r.get("fingerprint") != fingerprint]
    if stale and may_delete:
        print(f"[evaluate] {path.name}: {len(stale)} of {len(rows)} rows come from another model "
              f"(fingerprint {stale[0].get('fingerprint')} != {fingerprint}); starting over")
        path.replace(path.with_suffix(".stale.jsonl"))


def _merge_shards(out_path: Path, world: int) -> None:
    from mimic_utils.artifacts import write_text

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


def score_table(rows: list[dict], group: str) -> list[dict]:
    """Rows of ``(group value, task, n, score)``: the headline score per task and value of ``group``
    (a record field such as ``task`` or a knob such as ``knob_n_images``)."""
    summary = summarize(rows, by=(group,))
    table = []
    for family, stats in summary.items():
        for value, cell in stats.get("by", {}).get(group, {}).items():
            table.append({group: value, "family": family, "n": cell["n"], "score": cell["score"]})
    return table


# --- what notebooks call -----------------------------------------------------------------------------

MODEL_SPEC_KEYS = {"name", "source", "family", "dtype", "device", "attn_implementation", "quantization",
                   "revision", "trust_remote_code", "preprocessing"}


def load_under_study(spec: dict, root: Path | None = None):
    """The model under study from a parameter-file entry, in one call.

    ``source`` is a hub id (the ``paper`` profile's real checkpoints) or a folder relative to the checkout
    (the organism, ``outputs/cpu/models/base``, under ``cpu`` and ``smoke``). The other keys go to
    :func:`mimic_utils.models.load_adapter`; an unknown key is refused with its name.
    """
    from mimic_utils.artifacts import repo_root
    from mimic_utils.models import load_adapter

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


def knob_table(rows: list[dict], experiment: str, knob: str) -> "pd.DataFrame":
    """Headline score per task and knob value within one experiment: columns task, knob, n, score."""
    import pandas as pd

    chosen = [r for r in rows if r.get("experiment") == experiment]
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in chosen:
        groups.setdefault((row["task"], row["knobs"][knob]), []).append(row)
    table = []
    for (task, value), members in sorted(groups.items()):
        stats = next(iter(summarize(members, by=()).values()))
        table.append({"task": task, knob: value, "n": stats["n"], "score": round(stats["score"], 4)})
    return pd.DataFrame(table)


def task_table(rows: list[dict], experiment: str = "images") -> "pd.DataFrame":
    """Headline score per task over one experiment's questions (Counting Balanced and Unbalanced apart)."""
    import pandas as pd

    table = []
    for task in sorted({r["task"] for r in rows if r.get("experiment") == experiment}):
        members = [r for r in rows if r.get("experiment") == experiment and r["task"] == task]
        stats = next(iter(summarize(members, by=()).values()))
        extra = {k: round(stats[k], 4) for k in ("precision", "recall") if k in stats}
        table.append({"task": task, "n": stats["n"], "score": round(stats["score"], 4), **extra})
    return pd.DataFrame(table)


def token_budget_table(adapters: dict, records: list[dict], n_images: tuple[int, ...] = (1, 2, 4, 10),
                       pool: int = 1) -> "pd.DataFrame":
    """Vision and text tokens of one real sample per image count, per model (for the notebooks' tables)."""
    import pandas as pd

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


def pooling_sweep(adapters: dict, records: list[dict], factors: list[int], pred_dir: Path, batch_size: int,
                  progress: bool = True) -> "pd.DataFrame":
    """Score per task and image count at each 1D pooling factor r, with vision tokens per sample.

    r = 1 reads the unpooled predictions file (``<model>.jsonl``) instead of generating again.
    """
    import pandas as pd

    table = []
    counts = sorted({len(r["images"]) for r in records})
    for name, adapter in adapters.items():
        for r in factors:
            path = pred_dir / (f"{name}.jsonl" if r == 1 else f"{name}.pool{r}.jsonl")
            rows = run(adapter, records, path, batch_size=batch_size, pool=r, progress=progress,
                       desc=f"{name} r={r}")
            budget = token_budget_table({name: adapter}, records, tuple(counts), pool=r)
            tokens = dict(zip(budget["n_images"], budget["vision_tokens"]))
            for n in counts:
                for task in sorted({row["task"] for row in rows}):
                    members = [row for row in rows if row["task"] == task and row["knobs"]["n_images"] == n]
                    if members:
                        stats = next(iter(summarize(members, by=()).values()))
                        table.append({"model": name, "n_images": n, "pool": r, "vision_tokens": int(tokens[n]),
                                      "task": task, "n": stats["n"], "score": round(stats["score"], 4)})
    return pd.DataFrame(table)


def _trend(first: float, last: float, tolerance: float = 0.03) -> str:
    if last < first - tolerance:
        return "falls"
    if last > first + tolerance:
        return "rises"
    return "stays about level"


def _mean_at(frame, knob: str, value) -> float:
    return float(frame.loc[frame[knob] == value, "score"].mean())


def diagnosis_findings(per_task, by_images, pooling, spread, distractors, by_k) -> list[str]:
    """One sentence per experiment, computed from the tables (so the narrative cannot drift from them)."""
    lines = []
    for model in sorted(per_task["model"].unique()):
        tasks = per_task[per_task["model"] == model].set_index("task")["score"]
        if {"counting_balanced", "counting_unbalanced"} <= set(tasks.index):
            lines.append(f"{model}: counting {tasks['counting_balanced']:.2f} Balanced vs "
                         f"{tasks['counting_unbalanced']:.2f} Unbalanced; listing F1 {tasks.get('listing', float('nan')):.2f}, "
                         f"common {tasks.get('common', float('nan')):.2f}, odd-one {tasks.get('oddone', float('nan')):.2f}.")
        frame = by_images[by_images["model"] == model]
        low, high = frame["n_images"].min(), frame["n_images"].max()
        a, b = _mean_at(frame, "n_images", low), _mean_at(frame, "n_images", high)
        lines.append(f"{model}: mean score over tasks {_trend(a, b)} with more images ({a:.2f} at {low} → {b:.2f} at {high}).")
        frame = pooling[pooling["model"] == model]
        if len(frame):
            n = frame["n_images"].max()
            at_n = frame[frame["n_images"] == n]
            r0, r1 = at_n["pool"].min(), at_n["pool"].max()
            a, b = _mean_at(at_n, "pool", r0), _mean_at(at_n, "pool", r1)
            lines.append(f"{model}: at {n} images, pooling r={r0} → r={r1} (vision tokens "
                         f"{at_n['vision_tokens'].max()} → {at_n['vision_tokens'].min()}): mean score {_trend(a, b)} "
                         f"({a:.2f} → {b:.2f}).")
        for label, table, knob in (("spread", spread, "spread"), ("distractors", distractors, "distractors"),
                                   ("k", by_k, "k")):
            frame = table[table["model"] == model]
            if len(frame):
                low, high = frame[knob].min(), frame[knob].max()
                a, b = _mean_at(frame, knob, low), _mean_at(frame, knob, high)
                lines.append(f"{model}: as {label} goes {low} → {high}, score {_trend(a, b)} ({a:.2f} → {b:.2f}).")
    return lines


#: The sweeps of notebook 01's plan and the knob each one varies.
SWEEPS = {"images": "n_images", "spread": "spread", "distractors": "distractors", "k": "k"}


def model_tables(rows_by_model: dict[str, list[dict]]) -> dict[str, "pd.DataFrame"]:
    """Every comparison table of the study for several models at once (a ``model`` column added):
    ``per_task`` (the images sweep, per task) and one table per sweep, keyed by its knob."""
    import pandas as pd

    tables = {"per_task": pd.concat([task_table(rows).assign(model=m) for m, rows in rows_by_model.items()],
                                    ignore_index=True)}
    for experiment, knob in SWEEPS.items():
        frames = [knob_table(rows, experiment, knob).assign(model=m) for m, rows in rows_by_model.items()]
        frames = [f for f in frames if len(f)]
        if frames:
            tables[experiment] = pd.concat(frames, ignore_index=True)
    return tables


def cap_per_cell(records: list[dict], cap: int | None) -> list[dict]:
    """At most ``cap`` questions per (experiment, task, knobs) cell, in file order (None keeps all)."""
    if not cap:
        return records
    seen: dict[tuple, int] = {}
    kept = []
    for record in records:
        key = (record.get("experiment"), record.get("task"), json.dumps(record.get("knobs", {}), sort_keys=True))
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= cap:
            kept.append(record)
    return kept


def comparison_findings(tables: dict, base: str, other: str) -> list[str]:
    """Sentences comparing two models table by table (per task, single-image, images, spread)."""
    lines = []
    per_task = tables["per_task"].pivot_table(index="task", columns="model", values="score")
    for task, row in per_task.iterrows():
        lines.append(f"{task}: {base} {row[base]:.2f} → {other} {row[other]:.2f} ({_trend(row[base], row[other])}).")
    images = tables.get("images")
    if images is not None:
        by_n = images.pivot_table(index="n_images", columns="model", values="score")
        for n in (by_n.index.min(), by_n.index.max()):
            label = "single-image questions" if n == 1 else f"{n}-image questions"
            lines.append(f"{label} (mean over tasks): {base} {by_n.loc[n, base]:.2f} → {other} {by_n.loc[n, other]:.2f}.")
    spread = tables.get("spread")
    if spread is not None:
        by_s = spread.pivot_table(index="spread", columns="model", values="score")
        top = by_s.index.max()
        lines.append(f"counting with the total spread over {top} images: {base} {by_s.loc[top, base]:.2f} → "
                     f"{other} {by_s.loc[top, other]:.2f}.")
    return lines


def cross_benchmark_table(mimic_per_task: "pd.DataFrame", scores: dict) -> "pd.DataFrame":
    """Models × benchmarks: MIMIC's mean headline score over tasks, then each benchmark's accuracy (None
    for a benchmark that did not run)."""
    import pandas as pd

    table = mimic_per_task.groupby("model", sort=False)["score"].mean().rename("MIMIC").to_frame()
    for (label, model), summary in scores.items():
        table.loc[model, label] = summary.get("accuracy") if summary.get("status") == "done" else None
    return table.reset_index()


def sub_task_table(scores: dict) -> "pd.DataFrame":
    """The appendix: accuracy per benchmark, sub-task and model."""
    import pandas as pd

    rows = []
    for (label, model), summary in scores.items():
        for sub_task, cell in summary.get("by", {}).get("sub_task", {}).items():
            rows.append({"benchmark": label, "sub_task": sub_task, "model": model, "n": cell["n"],
                         "accuracy": cell.get("accuracy", cell.get("score"))})
    return pd.DataFrame(rows)
