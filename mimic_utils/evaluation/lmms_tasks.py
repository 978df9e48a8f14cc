"""The MIMIC benchmark as an lmms-eval task folder, written next to its HF export.

Upstream lmms-eval has no MIMIC task, so every export of ours gets a folder that lmms-eval reads with
``--include_path``: one YAML per task (``mimic_<profile>_counting_balanced`` … ``_oddone``), the group
``mimic_<profile>``, and a self-contained ``utils.py`` (:mod:`mimic_utils.evaluation.lmms_task_utils`) with verbatim
copies of our prompt and scoring modules::

    write_task_folder("outputs/cpu/01_data_build/mimic/hf", "outputs/cpu/01_data_build/mimic/lmms_eval", "cpu")

``dataset_path`` is written relative to the checkout when the export lies inside it, because lmms-eval
resolves it against its working directory, not the YAML's folder (docs/lmms_eval.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from mimic_utils.data import prompts
from mimic_utils.evaluation import lmms_task_utils, scoring
from mimic_utils.artifacts import repo_root, write_text
from mimic_utils.data.tasks import FAMILIES

#: Files copied into every task folder: ``utils.py`` imports the two others from beside itself.
SUPPORT_FILES = {"utils.py": lmms_task_utils, "mimic_prompts.py": prompts, "mimic_scoring.py": scoring}

#: lmms-eval model names whose chat template renders every image before any text (see prompts.py).
TEMPLATE_LAYOUT_MODELS = {"llava_hf": "llava_onevision", "internvl_hf": "internvl"}

#: Counting's two splits share the ``counting`` config; these ``process_docs`` keep one each.
SPLIT_FILTERS = {"counting_balanced": "only_counting_balanced", "counting_unbalanced": "only_counting_unbalanced"}


class Function(str):
    """A YAML scalar written with lmms-eval's ``!function`` tag (``!function utils.doc_to_text``)."""


def _represent_function(dumper: yaml.SafeDumper, value: Function) -> yaml.ScalarNode:
    return dumper.represent_scalar("!function", str(value))


class _Dumper(yaml.SafeDumper):
    """A SafeDumper that also writes :class:`Function` tags and keeps our key order."""


_Dumper.add_representer(Function, _represent_function)


def dump_yaml(config: dict[str, Any]) -> str:
    """YAML text of one task or group config, in the given key order."""
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


def load_yaml(text: str) -> dict[str, Any]:
    """Parse a task YAML as lmms-eval's index does, ``!function`` values read back as :class:`Function`."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: Function(loader.construct_scalar(node)))
    return yaml.load(text, Loader=Loader)


def export_tasks(export_dir: Path) -> dict[str, list[str]]:
    """``{config: [task values]}`` of an HF export, configs in the official order, tasks sorted."""
    import datasets  # about a second to import; only reading an export needs it

    found: dict[str, list[str]] = {}
    for config in FAMILIES:
        folder = export_dir / config
        if not (folder / "dataset_dict.json").is_file():
            continue
        split = datasets.load_from_disk(str(folder))["test"]
        found[config] = sorted(split.unique("task"))
    if not found:
        raise FileNotFoundError(f"{export_dir}: no exported MIMIC config (expected folders {', '.join(FAMILIES)} "
                                "written by mimic_utils.data.mimic_benchmark.export_hf)")
    return found


def dataset_path(folder: Path, root: Path) -> str:
    """The config folder as lmms-eval will be given it: relative to ``root`` when inside it, else absolute."""
    folder = folder.resolve()
    return folder.relative_to(root).as_posix() if folder.is_relative_to(root) else folder.as_posix()


def model_kwargs() -> dict[str, dict[str, str]]:
    """``lmms_eval_specific_kwargs``: the official layout by default, the template layout where needed."""
    empty = {"pre_prompt": "", "post_prompt": ""}
    kwargs = {"default": {"model_family": lmms_task_utils.DEFAULT_MODEL_FAMILY, **empty}}
    kwargs.update({model: {"model_family": family, **empty} for model, family in TEMPLATE_LAYOUT_MODELS.items()})
    return kwargs


def metric_list(family: str) -> list[dict[str, Any]]:
    """The metrics a family reports: accuracy, or Listing's micro F1 (headline), precision and recall."""
    names = ("f1", "precision", "recall") if family == "listing" else ("accuracy",)
    return [{"metric": name, "aggregation": Function(f"utils.aggregate_{name}"), "higher_is_better": True}
            for name in names]


def task_config(task: str, config: str, data: str, profile: str) -> dict[str, Any]:
    """One lmms-eval task over one MIMIC task value of one exported config."""
    family = prompts.normalize_task_family(task.split("_")[0])
    body: dict[str, Any] = {
        "task": f"mimic_{profile}_{task}",
        "dataset_path": data,
        "dataset_kwargs": {"load_from_disk": True},
        "test_split": "test",
        "output_type": "generate_until",
    }
    if task in SPLIT_FILTERS:
        body["process_docs"] = Function(f"utils.{SPLIT_FILTERS[task]}")
    elif task != config:
        raise ValueError(f"export config {config!r} holds task {task!r}, which no MIMIC task folder knows")
    for hook in ("doc_to_visual", "doc_to_text", "doc_to_messages", "doc_to_target", "process_results"):
        body[hook] = Function(f"utils.{hook}")
    body["generation_kwargs"] = {"max_new_tokens": prompts.max_new_tokens_for(family), "temperature": 0,
                                 "do_sample": False}
    body["metric_list"] = metric_list(family)
    body["lmms_eval_specific_kwargs"] = model_kwargs()
    body["metadata"] = {"version": 0.0, "profile": profile, "mimic_task": task, "config": config}
    return body


def _header(what: str, export: str) -> str:
    return (f"# {what}, written by mimic_utils.evaluation.lmms_tasks from {export}; rewritten with every export.\n"
            "# dataset_path goes to datasets.load_from_disk unchanged: a relative path is relative to the\n"
            "# directory lmms-eval is started in (the checkout root).\n")


def _readme(profile: str, folder: str, tasks: list[str]) -> str:
    return (f"# MIMIC ({profile}) for lmms-eval\n\nWritten by `mimic_utils.evaluation.lmms_tasks.write_task_folder`. "
            f"From the checkout root:\n\n```\nlmms-eval --model <model> --model_args pretrained=<checkpoint> "
            f"--tasks mimic_{profile} \\\n    --include_path {folder} --batch_size 1\n```\n\nTasks: "
            + ", ".join(f"`{t}`" for t in tasks) + ". `utils.py` needs Pillow and `word2number` only; "
            "`mimic_prompts.py` and `mimic_scoring.py` are verbatim copies of this repository's prompt and "
            "scoring modules.\n")


def write_task_folder(export_dir: str | os.PathLike, out_dir: str | os.PathLike, profile: str,
                      root: str | os.PathLike | None = None) -> list[str]:
    """Write the lmms-eval task folder for an HF export (see the module docstring); returns the task names.

    ``profile`` names the group (``mimic_<profile>``) and prefixes every task, so exports of several
    profiles can sit in one ``--include_path``. ``root`` (default: the checkout) is what relative
    ``dataset_path`` values are relative to.
    """
    if not re.fullmatch(r"[A-Za-z0-9_]+", profile):
        raise ValueError(f"profile {profile!r}: use letters, digits and '_' (it becomes part of task names)")
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    root = Path(root).resolve() if root is not None else repo_root()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("mimic_*.yaml"):  # tasks of an earlier export that this one lacks
        stale.unlink()
    names = []
    for config, tasks in export_tasks(export_dir).items():
        data = dataset_path(export_dir / config, root)
        for task in tasks:
            body = task_config(task, config, data, profile)
            write_text(out_dir / f"{body['task']}.yaml", _header(f"MIMIC task {task}", data) + dump_yaml(body))
            names.append(body["task"])
    group = {"group": f"mimic_{profile}", "task": names, "metadata": {"version": 0.0, "profile": profile}}
    export = dataset_path(export_dir, root)
    write_text(out_dir / f"mimic_{profile}.yaml", _header(f"MIMIC group mimic_{profile}", export) + dump_yaml(group))
    for name, module in SUPPORT_FILES.items():
        write_text(out_dir / name, Path(module.__file__).read_text(encoding="utf-8"))
    write_text(out_dir / "README.md", _readme(profile, dataset_path(out_dir, root), names))
    return names
