"""The lmms-eval task folder, checked without lmms-eval: its YAML, its self-contained ``utils.py``, prompts
and visuals against our harness's, and scores against ``mimic_utils.evaluation.scoring`` on the scoring fixtures."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest

import test_scoring
from eval_worker import make_records
from mimic_utils.data import prompts
from mimic_utils.evaluation import harness, lmms_tasks
from mimic_utils.data.mimic_benchmark import export_hf
from mimic_utils.evaluation.scoring import aggregate, score_sample

TASKS = ["counting_balanced", "counting_unbalanced", "listing", "common", "oddone"]


def mimic_records(folder: Path) -> list[dict]:
    """Ten records over every task value an export holds (Counting in both splits)."""
    records = make_records(folder, 10)
    for record in records:
        if record["family"] == "counting":
            record["task"] = TASKS[int(record["id"][1:]) // 4 % 2]
        if record["family"] == "listing":
            record["gt"] = "bus, car"
    return records


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """An HF export of :func:`mimic_records` and its task folder, inside a stand-in checkout root."""
    root = tmp_path_factory.mktemp("checkout")
    export_hf(mimic_records(root / "images"), root / "hf")
    lmms_tasks.write_task_folder(root / "hf", root / "lmms_eval", "unit", root=root)
    return root / "lmms_eval"


def load_utils(folder: Path):
    """``utils.py`` imported by its file path, as lmms-eval's ``!function`` constructor does."""
    spec = importlib.util.spec_from_file_location("utils", folder / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def task_yaml(folder: Path, task: str) -> dict:
    return lmms_tasks.load_yaml((folder / f"mimic_unit_{task}.yaml").read_text())


def docs(folder: Path, task: str) -> list[dict]:
    """The records lmms-eval evaluates for one task: the config loaded from disk, then ``process_docs``."""
    config = task_yaml(folder, task)
    split = datasets.load_from_disk(str(folder.parent / config["dataset_path"]))["test"]
    if "process_docs" in config:
        split = getattr(load_utils(folder), config["process_docs"].split(".")[1])(split)
    return list(split)


# ---------------------------------------------------------------------------------------------------------
# The folder and its YAML
# ---------------------------------------------------------------------------------------------------------


def test_one_yaml_per_task_a_group_and_the_support_files(folder):
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"mimic_unit_{t}.yaml" for t in TASKS] + ["mimic_unit.yaml", "utils.py", "mimic_prompts.py",
                                                 "mimic_scoring.py", "README.md"])
    group = lmms_tasks.load_yaml((folder / "mimic_unit.yaml").read_text())
    assert group["group"] == "mimic_unit" and group["task"] == [f"mimic_unit_{t}" for t in TASKS]
    assert "--include_path" in (folder / "README.md").read_text()


@pytest.mark.parametrize("task", TASKS)
def test_task_yaml_loads_from_disk_decodes_greedily_and_names_real_functions(folder, task):
    config = task_yaml(folder, task)
    family = task.split("_")[0]
    assert config["task"] == f"mimic_unit_{task}" and config["test_split"] == "test"
    assert config["dataset_path"] == f"hf/{family}" and config["dataset_kwargs"] == {"load_from_disk": True}
    assert config["generation_kwargs"] == {"max_new_tokens": 32 if family == "listing" else 16,
                                           "temperature": 0, "do_sample": False}
    utils = load_utils(folder)
    functions = [v for v in config.values() if isinstance(v, lmms_tasks.Function)]
    functions += [m["aggregation"] for m in config["metric_list"]]
    assert all(f.startswith("utils.") and callable(getattr(utils, f.split(".")[1])) for f in functions)
    assert [m["metric"] for m in config["metric_list"]] == (
        ["f1", "precision", "recall"] if family == "listing" else ["accuracy"])


def test_dataset_path_is_absolute_for_an_export_outside_the_root(tmp_path):
    export_hf(mimic_records(tmp_path / "images"), tmp_path / "hf")
    lmms_tasks.write_task_folder(tmp_path / "hf", tmp_path / "tasks", "elsewhere", root=tmp_path / "checkout")
    config = lmms_tasks.load_yaml((tmp_path / "tasks" / "mimic_elsewhere_common.yaml").read_text())
    assert config["dataset_path"] == (tmp_path / "hf" / "common").resolve().as_posix()


def test_rewriting_drops_tasks_the_new_export_lacks(tmp_path):
    records = mimic_records(tmp_path / "images")
    export_hf(records, tmp_path / "hf")
    lmms_tasks.write_task_folder(tmp_path / "hf", tmp_path / "tasks", "p", root=tmp_path)
    export_hf([r for r in records if r["task"] != "counting_unbalanced"], tmp_path / "hf")
    names = lmms_tasks.write_task_folder(tmp_path / "hf", tmp_path / "tasks", "p", root=tmp_path)
    assert "mimic_p_counting_unbalanced" not in names
    assert not (tmp_path / "tasks" / "mimic_p_counting_unbalanced.yaml").exists()


def test_a_missing_export_and_a_bad_profile_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no exported MIMIC config"):
        lmms_tasks.write_task_folder(tmp_path, tmp_path / "tasks", "cpu")
    with pytest.raises(ValueError, match="becomes part of task names"):
        lmms_tasks.write_task_folder(tmp_path, tmp_path / "tasks", "my-profile")


def test_utils_needs_neither_mimic_utils_nor_the_checkout(folder):
    script = (f"import sys, importlib.util; sys.modules['mimic_utils'] = None\n"
              f"spec = importlib.util.spec_from_file_location('utils', {str(folder / 'utils.py')!r})\n"
              "u = importlib.util.module_from_spec(spec); spec.loader.exec_module(u)\n"
              "print(u.doc_to_text({'question': 'Which?', 'task': 'listing'}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=folder, check=True)
    assert done.stdout == f"Question: Which?{prompts.LISTING_SUFFIX}\nAnswer:\n"


# ---------------------------------------------------------------------------------------------------------
# Prompts and visuals equal our harness's
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_prompts_and_visuals_equal_ours(folder, task):
    utils = load_utils(folder)
    kept = docs(folder, task)
    sources = {r["id"]: r for r in mimic_records(folder.parent / "images")}
    assert sorted(d["id"] for d in kept) == sorted(i for i, r in sources.items() if r["task"] == task)
    for doc in kept:
        record = sources[doc["id"]]
        family = harness.scoring_family(record)
        n = len(record["images"])
        ours = prompts.build_messages(record["question"], n, family, "qwen2_vl")
        # simple model classes (llava_hf, llava_onevision) put "<image> <image>\n" before doc_to_text
        assert " ".join(["<image>"] * n) + "\n" + utils.doc_to_text(doc) == prompts.official_user_turn(
            record["question"], n, family)
        assert "\n" + utils.doc_to_text(doc) == ours[0]["content"][-1]["text"]
        visuals = utils.doc_to_visual(doc)
        assert [np.asarray(v).tolist() for v in visuals] == [
            np.asarray(i).tolist() for i in harness.load_images(record["images"])]
        for model_family, kwargs in (("qwen2_vl", None), ("llava_onevision", {"model_family": "llava_onevision"})):
            messages = utils.doc_to_messages(doc, kwargs)
            expected = prompts.build_messages(record["question"], n, family, model_family)
            assert [{k: v for k, v in item.items() if k != "url"} for item in messages[0]["content"]] == \
                expected[0]["content"]
            assert [item["url"].tobytes() for item in messages[0]["content"] if item["type"] == "image"] == \
                [v.tobytes() for v in visuals]
        assert utils.doc_to_target(doc) == record["gt"]


# ---------------------------------------------------------------------------------------------------------
# Scores equal mimic_utils.evaluation.scoring on the scoring test fixtures
# ---------------------------------------------------------------------------------------------------------


def fixture_cases(test) -> list[tuple]:
    """The ``(prediction, gt, …)`` rows of one parametrized test of ``tests/unit/test_scoring.py``."""
    return list(test.pytestmark[0].args[1])


CASES = {
    "counting_balanced": [(p, gt) for p, gt, _ in fixture_cases(test_scoring.test_score_counting)]
    + [(p, 3 if expected is None else expected) for p, expected in fixture_cases(test_scoring.test_parse_count)],
    "listing": [(p, gt) for p, gt, _ in fixture_cases(test_scoring.test_listing_counts)],
    "common": [(p, gt) for p, gt, _ in fixture_cases(test_scoring.test_score_contains)],
    "oddone": [(p, gt) for p, gt, _ in fixture_cases(test_scoring.test_score_contains)],
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_process_results_and_aggregation_score_like_ours(folder, task):
    utils = load_utils(folder)
    family = task.split("_")[0]
    metrics = [m["metric"] for m in task_yaml(folder, task)["metric_list"]]
    collected: dict[str, list] = {metric: [] for metric in metrics}
    ours = []
    for k, (prediction, gt) in enumerate(CASES[task]):
        doc = {"id": f"q{k}", "task": task, "question": "q", "gt": str(gt), "images": []}
        result = utils.process_results(doc, [prediction])
        assert sorted(result) == sorted(metrics)
        for metric, row in result.items():
            assert {key: row[key] for key in score_sample(family, prediction, str(gt))} == score_sample(
                family, prediction, str(gt))
            collected[metric].append(row)
        ours.append({"family": family, **score_sample(family, prediction, str(gt))})
    expected = aggregate(ours, by=())[family]
    for metric in metrics:
        assert getattr(utils, f"aggregate_{metric}")(collected[metric]) == expected[metric]


# ---------------------------------------------------------------------------------------------------------
# The interop check's bookkeeping (the check itself runs in .venv-interop: `make interop`)
# ---------------------------------------------------------------------------------------------------------


def test_interop_compares_answers_and_metrics_task_by_task():
    from mimic_utils.bench import interop

    rows = [{"id": "a", "output": "3"}, {"id": "b", "output": " cat"}, {"id": "c", "output": "dog"}]
    agreement = interop.answer_agreement(rows, {"a": "3", "b": "cat", "c": "bus"})
    assert (agreement["exact"], agreement["stripped"]) == (1, 2)
    assert agreement["examples"] == [{"id": "c", "ours": "dog", "lmms_eval": "bus"}]
    compared = interop.compare_metrics({"listing": {"f1": 0.5}, "common": {"accuracy": 1.0}},
                                       {"listing": {"f1": 0.5}, "common": {"accuracy": 0.0}})
    assert compared["tasks"]["listing"]["equal"] and not compared["all_equal"]
    assert list(interop.leaf_tasks({"group": {"t1": "task one", "t2": ("group", "task two")}})) == [
        "task one", "task two"]
