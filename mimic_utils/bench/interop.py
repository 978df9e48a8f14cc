"""Our MIMIC in lmms-eval, side by side with our harness: ``make interop`` (``python -m mimic_utils.bench.interop``).

Inside ``.venv-interop`` (lmms-eval 0.7.3 beside the pinned torch and transformers, never torchvision) it
builds a small benchmark and its task folder, checks that lmms-eval's prompts and visuals equal ours,
scores our answers with lmms-eval's own scorers, runs the organism end to end through lmms-eval with
:class:`MimicHuggingface` (lmms-eval's ``huggingface`` class with a constructor that needs no
torchvision), and writes the agreement and both speeds to ``outputs/bench/lmms_eval.json``. The steps
and why the model class is what it is: docs/lmms_eval.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mimic_utils.data import annotations, mimic_benchmark, prompts, scene_formats, scenes
from mimic_utils.evaluation import harness, lmms_tasks
from mimic_utils.artifacts import repo_root
from mimic_utils.models.vlm import family_for_model_type, load_processor
from mimic_utils.bench.perf import write_result

PROFILE = "interop"
MODEL = "outputs/cpu/models/si"
OUT = "tmp/outputs/interop"
SCENES = {"n_images": 1500, "seed": 0, "params": {"image_size": 112, "max_objects": 5, "same_category_prob": 0.5}}
"""The smoke profile's scene world (``params/smoke/01_data_build.yaml``)."""
PLAN = {"per_value": 5, "answer_range": [1, 6], "images": [3, 4, 6, 8], "spread": [], "distractors": [], "k": []}
"""5 questions per task at each of 3, 4, 6 and 8 images: 20 per task (Odd-One needs 3 images or more)."""
BATCH_SIZE = 16
DEFAULT_LMMS_BATCH = 1
"""What lmms-eval runs with when ``--batch_size`` is not given (the model class's default)."""
MODEL_NAME = "mimic_hf"
CLASS_PATH = f"{__name__}.MimicHuggingface"
"""Where the registry finds the class: this very module, also when it runs as ``__main__``."""


# ---------------------------------------------------------------------------------------------------------
# 1. The benchmark, its export and its task folder
# ---------------------------------------------------------------------------------------------------------


def build(out: Path, root: Path) -> list[dict]:
    """The interop benchmark's records (absolute image paths), exported with their task folder."""
    world = scenes.SceneParams(**SCENES["params"])
    coco_json = scene_formats.write_coco_split(out / "scenes", SCENES["n_images"], SCENES["seed"], world,
                                               progress=False)
    plan = mimic_benchmark.BenchmarkPlan.from_dict({**PLAN, "seed": SCENES["seed"]}, where="interop plan")
    records = mimic_benchmark.build(annotations.read_coco(coco_json), plan, progress=False)
    mimic_benchmark.export_hf(records, out / "hf")
    lmms_tasks.write_task_folder(out / "hf", out / "lmms_eval", PROFILE, root=root)
    return records


# ---------------------------------------------------------------------------------------------------------
# lmms-eval: the model class and the tasks
# ---------------------------------------------------------------------------------------------------------


def _model_class() -> type:
    """Define :class:`MimicHuggingface` (on first use, so that this module imports without lmms-eval)."""
    import transformers
    from lmms_eval.api.model import lmms
    from lmms_eval.models.chat.huggingface import Huggingface

    class ProcessorCall:
        """The processor, called the way transformers 5 accepts: ``Huggingface.generate_until`` passes
        ``audios=`` (refused since transformers 5: "use ``audio``") and empty ``videos``/``audios`` lists."""

        def __init__(self, processor: Any) -> None:
            self.processor = processor

        def __call__(self, *args: Any, audios: list | None = None, videos: list | None = None, **kwargs: Any):
            media = {"audio": audios or None, "videos": videos or None}
            return self.processor(*args, **{k: v for k, v in media.items() if v is not None}, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.processor, name)

    class MimicHuggingface(Huggingface):
        """lmms-eval's ``huggingface`` chat class, loading the model as saved and the processor without
        torchvision; ``generate_until`` and everything else are inherited (see the module docstring).
        ``answer_seconds`` collects the wall time of every ``generate_until`` call, for the speed figures."""

        __qualname__ = "MimicHuggingface"
        answer_seconds: list[float] = []

        def __init__(self, pretrained: str, device: str = "cpu", batch_size: int | str = 1, dtype: str = "auto",
                     max_length: int = 2048, **kwargs: Any) -> None:
            lmms.__init__(self)
            if kwargs:
                raise TypeError(f"{MODEL_NAME}: unknown model_args {sorted(kwargs)}")
            config = transformers.AutoConfig.from_pretrained(pretrained)
            model = transformers.AutoModelForImageTextToText.from_pretrained(pretrained, dtype=dtype)
            self._model = model.to(device).eval()
            self.processor = ProcessorCall(load_processor(pretrained, family_for_model_type(config.model_type,
                                                                                           pretrained)))
            self._tokenizer = self.processor.tokenizer
            self._config, self._device, self.device_map = model.config, torch.device(device), device
            self.batch_size_per_gpu, self._max_length = int(batch_size), max_length
            self.use_cache, self.system_prompt, self.interleave_visuals = True, None, False
            self.max_num_frames, self.trust_remote_code = 32, False

        def generate_until(self, requests: list) -> list:
            start = time.perf_counter()
            try:
                return super().generate_until(requests)
            finally:
                MimicHuggingface.answer_seconds.append(time.perf_counter() - start)

    return MimicHuggingface


def model_class() -> type:
    """:class:`MimicHuggingface`, built once per module."""
    if "MimicHuggingface" not in globals():
        globals()["MimicHuggingface"] = _model_class()
    return globals()["MimicHuggingface"]


def __getattr__(name: str) -> Any:
    """Module attribute ``MimicHuggingface``, resolved lazily when lmms-eval's registry imports it."""
    if name == "MimicHuggingface":
        return model_class()
    raise AttributeError(name)


def manifest() -> Any:
    """lmms-eval's registration of ``mimic_hf``: the payload an ``lmms_eval.models`` entry point names
    (``mimic_hf = "mimic_utils.bench.interop:manifest"`` in ``pyproject.toml`` makes ``lmms-eval --model mimic_hf``
    work from the command line)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, chat_class_path=CLASS_PATH)


def register_model() -> None:
    """Make ``mimic_hf`` known to lmms-eval in this process, as the entry point would."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)


def leaf_tasks(task_dict: dict) -> Iterator[Any]:
    """The task objects of an lmms-eval task dict (groups nest dicts; leaves may be ``(group, task)``)."""
    for value in task_dict.values():
        if isinstance(value, dict):
            yield from leaf_tasks(value)
        elif isinstance(value, tuple):
            yield from (v for v in value[1:] if v is not None)
        elif value is not None:
            yield value


def load_tasks(folder: Path) -> tuple[Any, dict[str, Any]]:
    """lmms-eval's ``TaskManager`` over the task folder, and the group's tasks by name (chat variant)."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=str(folder))
    tasks = get_task_dict([f"mimic_{PROFILE}"], manager, "chat")
    return manager, {task.config.task: task for task in leaf_tasks(tasks)}


# ---------------------------------------------------------------------------------------------------------
# 2. Prompts and visuals
# ---------------------------------------------------------------------------------------------------------


def same_pixels(ours: list, theirs: list) -> bool:
    return len(ours) == len(theirs) and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, theirs))


def rendered_chat(task: Any, doc: dict, processor: Any) -> str:
    """The text lmms-eval's ``Huggingface.generate_until`` renders for one doc (placeholders unexpanded)."""
    from lmms_eval.protocol import ChatMessages

    messages = ChatMessages(messages=task.doc_to_messages(doc)).to_hf_messages()
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def doc_checks(task: Any, doc: dict, record: dict, adapter: Any) -> dict[str, bool]:
    """One doc: lmms-eval's visuals, simple-class prompt, chat prompt and budget against our harness's."""
    family = harness.scoring_family(record)
    n = len(record["images"])
    simple = " ".join(["<image>"] * n) + "\n" + task.doc_to_text(doc)
    return {
        "visuals": same_pixels(harness.load_images(record["images"]), task.doc_to_visual(doc)),
        "text": simple == prompts.official_user_turn(record["question"], n, family),
        "chat": rendered_chat(task, doc, adapter.processor) == adapter.render_prompt(record["question"], n, family),
        "budget": task.config.generation_kwargs["max_new_tokens"] == prompts.max_new_tokens_for(family),
    }


def check_prompts(tasks: dict[str, Any], records: dict[str, dict], adapter: Any) -> dict[str, Any]:
    """Per check, how many of all docs agree; the first disagreeing doc id of each, if any."""
    results: dict[str, list[bool]] = {}
    first: dict[str, str] = {}
    n = 0
    for task in tasks.values():
        for doc in task.test_docs():
            n += 1
            for check, ok in doc_checks(task, doc, records[doc["id"]], adapter).items():
                results.setdefault(check, []).append(ok)
                if not ok:
                    first.setdefault(check, doc["id"])
    return {"docs": n, **{check: f"{sum(oks)}/{len(oks)}" for check, oks in results.items()},
            "all_equal": all(all(oks) for oks in results.values()), "first_mismatch": first}


# ---------------------------------------------------------------------------------------------------------
# 3-5. Our harness, scoring through lmms-eval, lmms-eval end to end
# ---------------------------------------------------------------------------------------------------------


def timed(run: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def our_metrics(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Our headline metrics per task (accuracy, or Listing's F1, precision and recall)."""
    metrics = {}
    for task in sorted({row["task"] for row in rows}):
        stats = next(iter(harness.summarize([r for r in rows if r["task"] == task], by=()).values()))
        metrics[task] = {k: stats[k] for k in ("accuracy", "f1", "precision", "recall") if k in stats}
    return metrics


def lmms_metrics(task: Any, outputs: dict[str, str]) -> dict[str, float]:
    """One task's metrics from lmms-eval's own ``process_results`` and aggregation over given outputs."""
    values: dict[str, list] = {}
    for doc in task.test_docs():
        for metric, value in task.process_results(doc, [outputs[doc["id"]]]).items():
            values.setdefault(metric, []).append(value)
    aggregation = task.aggregation()
    return {metric: float(aggregation[metric](items)) for metric, items in values.items()}


def mimic_task(name: str) -> str:
    return name.removeprefix(f"mimic_{PROFILE}_")


def compare_metrics(ours: dict[str, dict], theirs: dict[str, dict]) -> dict[str, Any]:
    """Per task, both metric sets and whether they are equal (to 1e-12)."""
    table = {}
    for task, metrics in ours.items():
        other = theirs.get(task, {})
        equal = set(metrics) == set(other) and all(abs(metrics[k] - other[k]) <= 1e-12 for k in metrics)
        table[task] = {"ours": metrics, "lmms_eval": other, "equal": equal}
    return {"all_equal": all(cell["equal"] for cell in table.values()), "tasks": table}


def run_lmms_eval(manager: Any, model: Path) -> tuple[dict, float, float]:
    """``simple_evaluate`` over the group with ``mimic_hf`` at lmms-eval's default batch size: the results,
    the whole call's seconds (model and data loading, answering, scoring) and the answering seconds."""
    from lmms_eval import evaluator

    register_model()
    answering = model_class().answer_seconds
    answering.clear()
    results, seconds = timed(lambda: evaluator.simple_evaluate(
        model=MODEL_NAME, model_args=f"pretrained={model}", tasks=[f"mimic_{PROFILE}"], task_manager=manager,
        log_samples=True, bootstrap_iters=0, verbosity="WARNING"))
    return results, seconds, sum(answering)


def lmms_outputs(results: dict) -> dict[str, str]:
    """lmms-eval's answer per question id, from its logged samples."""
    return {sample["doc"]["id"]: sample["filtered_resps"][0]
            for samples in results["samples"].values() for sample in samples}


def lmms_result_metrics(results: dict) -> dict[str, dict[str, float]]:
    """lmms-eval's reported metrics per task (``"accuracy,none"`` → ``accuracy``)."""
    table = {}
    for name, cell in results["results"].items():
        if name.startswith(f"mimic_{PROFILE}_"):
            table[mimic_task(name)] = {k.split(",")[0]: float(v) for k, v in cell.items()
                                       if "," in k and "stderr" not in k}
    return table


def answer_agreement(rows: list[dict], theirs: dict[str, str]) -> dict[str, Any]:
    """How many of lmms-eval's answers equal our harness's, exactly and after stripping whitespace."""
    exact = [row["id"] for row in rows if theirs.get(row["id"]) == row["output"]]
    stripped = [row["id"] for row in rows if (theirs.get(row["id"]) or "").strip() == row["output"].strip()]
    differ = [{"id": r["id"], "ours": r["output"], "lmms_eval": theirs.get(r["id"])}
              for r in rows if r["id"] not in stripped]
    return {"n": len(rows), "exact": len(exact), "stripped": len(stripped), "examples": differ[:5]}


def speed(n: int, seconds: float, batch_size: int) -> dict[str, Any]:
    return {"batch_size": batch_size, "seconds": round(seconds, 2), "samples_per_second": round(n / seconds, 2)}


def versions() -> dict[str, str]:
    return {name: version(name) for name in ("lmms_eval", "torch", "transformers", "datasets", "accelerate")}


# ---------------------------------------------------------------------------------------------------------
# The whole check
# ---------------------------------------------------------------------------------------------------------


def check(out: Path, root: Path, model: Path, batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    """Steps 1-5 (see the module docstring); returns the figures for ``outputs/bench/lmms_eval.json``."""
    records = build(out, root)
    by_id = {record["id"]: record for record in records}
    adapter = harness.load_under_study({"name": "organism", "source": str(model)}, root=root)
    manager, tasks = load_tasks(out / "lmms_eval")
    prompt_check = check_prompts(tasks, by_id, adapter)
    for stale in out.glob("harness*.jsonl"):  # harness.run resumes: a timed run must start empty
        stale.unlink()
    adapter.answer([harness.mimic_sample(records[0])])  # warm-up, so that neither timed run pays for it
    rows, ours_s = timed(lambda: harness.run(adapter, records, out / "harness.jsonl", batch_size, progress=False))
    rows_1, ours_1_s = timed(lambda: harness.run(adapter, records, out / "harness_b1.jsonl", 1, progress=False))
    ours = our_metrics(rows)
    our_outputs = {row["id"]: row["output"] for row in rows}
    scored = compare_metrics(ours, {mimic_task(n): lmms_metrics(t, our_outputs) for n, t in tasks.items()})
    results, lmms_s, answering_s = run_lmms_eval(manager, model)
    theirs = lmms_outputs(results)
    lmms_rows = [{**row, "output": theirs.get(row["id"], "")} for row in rows]
    return {
        "questions": {"n": len(records), "per_task": {t: sum(r["task"] == t for r in records) for t in ours},
                      "plan": PLAN, "scenes": SCENES, "export": str(out.relative_to(root) / "hf")},
        "model": {"source": str(model.relative_to(root)), "lmms_eval_model": MODEL_NAME,
                  "lmms_eval_class": "mimic_utils.bench.interop.MimicHuggingface (subclass of "
                                     "lmms_eval.models.chat.huggingface.Huggingface)",
                  "adaptations": ["constructor: model in its saved dtype (float32), not bfloat16; processor "
                                  "built without torchvision (AutoProcessor needs it for the video processor)",
                                  "processor call: empty audios=/videos= dropped (transformers 5 refuses "
                                  "audios=)"]},
        "prompts": prompt_check,
        "scores_of_our_outputs": scored,
        "answers": {"lmms_eval_vs_harness_batched": answer_agreement(rows, theirs),
                    "lmms_eval_vs_harness_batch1": answer_agreement(rows_1, theirs),
                    "harness_batch1_vs_batched": answer_agreement(rows, {r["id"]: r["output"] for r in rows_1})},
        "end_to_end_scores": compare_metrics(our_metrics(lmms_rows), lmms_result_metrics(results)),
        "end_to_end_vs_harness": compare_metrics(ours, lmms_result_metrics(results)),
        "speed": {"harness_batched": speed(len(rows), ours_s, batch_size),
                  "harness_batch1": speed(len(rows), ours_1_s, 1),
                  "lmms_eval_answering": speed(len(rows), answering_s, DEFAULT_LMMS_BATCH),
                  "lmms_eval_whole_call": speed(len(rows), lmms_s, DEFAULT_LMMS_BATCH),
                  "ratio_harness_batched_over_lmms_eval_answering": round(answering_s / ours_s, 2),
                  "note": "answering = lmms-eval's generate_until (chat template, processor, generate, decode); "
                          "whole call adds model and data loading and scoring. Our harness: harness.run "
                          "(image loading, processor, generate, decode, scoring, JSONL), after one warm-up "
                          "question. Ratio above 1: our harness answers faster."},
        "versions": versions(),
    }


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=OUT, help="work folder, relative to the checkout (default %(default)s)")
    parser.add_argument("--model", default=MODEL, help="model folder, relative to the checkout")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="our harness's batch size")
    args = parser.parse_args(argv)
    root = repo_root()
    figures = check(root / args.out, root, root / args.model, args.batch_size)
    command = "make interop  # " + " ".join(["python -m mimic_utils.bench.interop", *(argv or sys.argv[1:])])
    path = write_result("lmms_eval", command, figures)  # no target, so no ratio against one
    print(json.dumps({k: figures[k] for k in ("prompts", "answers", "speed")}, indent=1))
    return path


if __name__ == "__main__":
    main()
