"""The ``utils.py`` of an lmms-eval MIMIC task folder: prompt, visuals and official scoring, self-contained.

:func:`mimic_utils.evaluation.lmms_tasks.write_task_folder` copies this file verbatim into the task folder as
``utils.py``, beside verbatim copies of ``mimic_utils/prompts.py`` (``mimic_prompts.py``) and
``mimic_utils/scoring.py`` (``mimic_scoring.py``). lmms-eval imports ``utils.py`` by its file path
(``!function utils.doc_to_text``), so it finds those two siblings by path too: a user needs lmms-eval,
Pillow and ``word2number`` (the authors' fork needs it as well), not this repository. Imported from inside
the ``mimic_utils`` package instead, it uses the package's own modules, so both run the same code.

What lmms-eval gets from here
-----------------------------
* ``doc_to_visual``: the record's PIL images, RGB, in order (lmms-eval puts the images; the text has no
  image tokens).
* ``doc_to_text``: ``"Question: {question}\\nAnswer:"``, Listing's suffix appended to the question, what
  simple model classes (``llava_hf``, ``llava_onevision``) place after their ``<image> <image>\\n``, i.e.
  the official user turn.
* ``doc_to_messages``: the same user turn for chat model classes, laid out by
  :func:`mimic_prompts.build_messages` for the model family named in ``lmms_eval_specific_kwargs``
  (``model_family``, default ``qwen2_vl``: images separated by ``" "``, then ``"\\nQuestion: …"``).
* ``process_results`` and the ``aggregate_*`` functions: the official scorers of ``mimic_scoring``
  (accuracy; micro precision, recall and F1 for Listing), exactly as our harness scores.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent


def _sibling(name: str, package_module: str) -> ModuleType:
    """``<name>.py`` beside this file (a task folder), else the package module it was copied from."""
    path = HERE / f"{name}.py"
    if not path.is_file():
        return importlib.import_module(package_module)
    key = f"_mimic_task_{abs(hash(str(path)))}_{name}"
    if key not in sys.modules:  # one module object per folder, however often lmms-eval imports utils
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


prompts = _sibling("mimic_prompts", "mimic_utils.data.prompts")
scoring = _sibling("mimic_scoring", "mimic_utils.evaluation.scoring")

DEFAULT_MODEL_FAMILY = "qwen2_vl"
"""The official layout (``"<image> <image>\\nQuestion: …"``); chat templates that render every image before
any text (LLaVA-OneVision, InternVL) take their own family through ``lmms_eval_specific_kwargs``."""


def family(doc: dict) -> str:
    """The scorer and prompt family of a record: its ``task`` field up to the split (``counting_balanced``
    is Counting)."""
    return prompts.normalize_task_family(str(doc["task"]).split("_")[0])


def doc_to_visual(doc: dict) -> list:
    """The record's images as RGB PIL images, in order."""
    return [image.convert("RGB") for image in doc["images"]]


def question_text(doc: dict) -> str:
    """``"Question: {question}\\nAnswer:"`` with Listing's suffix: the official text after the images."""
    return f"Question: {prompts.mimic_question_text(doc['question'], family(doc))}\nAnswer:"


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The official text after the images, between the task's optional ``pre_prompt``/``post_prompt``."""
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{question_text(doc)}{kwargs.get('post_prompt', '')}"


def doc_to_messages(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list[dict]:
    """One user turn in lmms-eval's chat format, laid out as our harness lays it out for the family."""
    model_family = (lmms_eval_specific_kwargs or {}).get("model_family", DEFAULT_MODEL_FAMILY)
    images = iter(doc_to_visual(doc))
    messages = prompts.build_messages(doc["question"], len(doc["images"]), family(doc), model_family)
    for message in messages:
        message["content"] = [{"type": "image", "url": next(images)} if item["type"] == "image" else item
                              for item in message["content"]]
    return messages


def doc_to_target(doc: dict) -> str:
    return str(doc["gt"])


def process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    """The scored sample under each metric its family reports (lmms-eval aggregates each list)."""
    name = family(doc)
    row = {"id": doc.get("id"), "task": doc.get("task"), "family": name, "gt": doc["gt"], "output": results[0],
           **scoring.score_sample(name, results[0], doc["gt"])}
    metrics = ("f1", "precision", "recall") if name == "listing" else ("accuracy",)
    return {metric: row for metric in metrics}


def _summary(rows: list[dict]) -> dict[str, Any]:
    """The official aggregate of one task's rows (they share a family)."""
    return next(iter(scoring.aggregate(rows, by=()).values()), {})


def aggregate_accuracy(rows: list[dict]) -> float:
    return float(_summary(rows).get("accuracy", 0.0))


def aggregate_f1(rows: list[dict]) -> float:
    return float(_summary(rows).get("f1", 0.0))


def aggregate_precision(rows: list[dict]) -> float:
    return float(_summary(rows).get("precision", 0.0))


def aggregate_recall(rows: list[dict]) -> float:
    return float(_summary(rows).get("recall", 0.0))


def _only(task: str):
    """A ``process_docs`` keeping the records of one ``task`` value (Counting's two splits share a config)."""

    def keep(dataset):
        return dataset.filter(lambda value: value == task, input_columns="task", keep_in_memory=True)

    keep.__name__ = f"only_{task}"
    return keep


only_counting_balanced = _only("counting_balanced")
only_counting_unbalanced = _only("counting_unbalanced")
