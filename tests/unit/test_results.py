"""Reading an earlier notebook's results: a missing or mistyped key stops the run naming the file and the key."""

from __future__ import annotations

import json

import pytest

from mimic_utils.analysis import results


def write(tmp_path, metrics: dict):
    folder = tmp_path / "outputs" / "p" / "03_attention_analysis"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder / "metrics.json"


def test_notebook_03s_results_read_back_typed(tmp_path):
    write(tmp_path, {"auto_layer": None, "sample_ids": ["b", "a", "gone"], "other": 1})
    found = results.attention_results("p", tmp_path)
    assert found.auto_layer is None and found.sample_ids == ["b", "a", "gone"]
    assert found.records([{"id": "a"}, {"id": "b"}]) == [{"id": "b"}, {"id": "a"}]  # notebook 03's order


@pytest.mark.parametrize("metrics, message", [
    ({"sample_ids": ["a"]}, r"metrics.json: no key 'auto_layer' \(notebook 03_attention_analysis writes it"),
    ({"auto_layer": 3, "sample_id": ["a"]}, r"metrics.json: no key 'sample_ids'"),
    ({"auto_layer": "3", "sample_ids": ["a"]}, r"key 'auto_layer' holds '3', expected int or NoneType"),
    ({"auto_layer": True, "sample_ids": ["a"]}, r"key 'auto_layer' holds True"),
    ({"auto_layer": 3, "sample_ids": []}, r"'sample_ids' is empty"),
])
def test_a_renamed_missing_or_mistyped_key_names_the_file_and_the_key(tmp_path, metrics, message):
    path = write(tmp_path, metrics)
    with pytest.raises(results.ResultsError, match=message) as error:
        results.attention_results("p", tmp_path)
    assert "sample_ids' is empty" in str(error.value) or str(path) in str(error.value)


def test_a_notebook_that_has_not_run_says_which_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebook 03_attention_analysis under profile 'p' first"):
        results.attention_results("p", tmp_path)
