"""The report and comparison tables are computed from metrics, and say plainly what did not run."""

from __future__ import annotations

import json

import pandas as pd

from mimic_utils import evaluate, report


def write(root, profile, notebook, metrics):
    folder = root / "outputs" / profile / notebook
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_report_states_statuses_claims_and_numbers(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "mimic_utils").mkdir()
    write(tmp_path, "cpu", "01_data_build", {"status": "ok", "benchmark": {"total": 10}, "train": {"total": 5}})
    write(tmp_path, "cpu", "02_zero_shot_diagnosis", {
        "status": "ok", "models": {"organism": {}},
        "by_images": [{"model": "organism", "n_images": 1, "task": "t", "score": 0.8},
                      {"model": "organism", "n_images": 4, "task": "t", "score": 0.2}],
        "spread": [{"model": "organism", "spread": 1, "score": 0.7}, {"model": "organism", "spread": 4, "score": 0.1}],
        "pooling": [], "findings": ["organism: fewer right answers with more images"]})
    write(tmp_path, "cpu", "03_attention_analysis", {"status": "not_built"})
    results = pd.DataFrame([{"model": "base", "MIMIC": 0.5}])
    path = report.write_report("cpu", results, root=tmp_path)
    text = path.read_text()
    assert "| 03_attention_analysis | not_built |" in text and "| 04_data_centric_finetune | not run |" in text
    assert "organism: mean score 0.80 at 1 image(s), 0.20 at 4." in text
    assert "counting accuracy 0.70 with the total in one image, 0.10 spread over 4." in text
    assert "- organism: fewer right answers with more images" in text


def test_cross_benchmark_table_marks_benchmarks_that_did_not_run():
    mimic = pd.DataFrame([{"model": "base", "task": "a", "score": 0.2}, {"model": "base", "task": "b", "score": 0.4}])
    scores = {("ood", "base"): {"status": "done", "accuracy": 0.5, "by": {"sub_task": {"x": {"n": 2, "accuracy": 0.5}}}},
              ("blink", "base"): {"status": "not run", "reason": "offline"}}
    table = evaluate.cross_benchmark_table(mimic, scores)
    row = table.set_index("model").loc["base"]
    assert abs(row["MIMIC"] - 0.3) < 1e-9
    assert row["ood"] == 0.5 and pd.isna(row["blink"])
    appendix = evaluate.sub_task_table(scores)
    assert appendix.to_dict(orient="records") == [{"benchmark": "ood", "sub_task": "x", "model": "base", "n": 2,
                                                   "accuracy": 0.5}]


def test_cap_per_cell_keeps_the_first_questions_of_each_cell():
    records = [{"id": str(i), "experiment": "images", "task": "t", "knobs": {"n_images": i % 2}} for i in range(10)]
    kept = evaluate.cap_per_cell(records, 2)
    assert [r["id"] for r in kept] == ["0", "1", "2", "3"]
    assert evaluate.cap_per_cell(records, None) == records
