"""Published scores beside ours: the difference, our interval, a flag for a gap sampling cannot explain."""

from __future__ import annotations

import math

import pytest
import yaml

from mimic_utils.analysis import cross_benchmark as transfer
from mimic_utils.analysis import published
from mimic_utils.evaluation import external_benchmarks

OV_05B = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"


def mc_rows(n: int, right: int, prefix: str) -> list[dict]:
    """Multiple-choice prediction rows as evaluate_benchmark writes them: ``right`` of ``n`` correct."""
    return [{"id": f"{prefix}{i}", "letters": ["A", "B", "C", "D"], "parsed": "A" if i < right else "B",
             "answer": "A", "sub_task": "t", "score": float(i < right)} for i in range(n)]


def mimic_rows(n: int, right: int) -> list[dict]:
    images = {"experiment": "images", "knobs": {"n_images": 4}}
    return [{**images, "id": f"c{i}", "task": "counting", "scored_as": "counting", "gt": "2",
             "score": float(i < right)} for i in range(n)]


@pytest.fixture
def results():
    """Notebook 06's results table from a fixture of predictions: an -ov reference model whose MuirBench
    score matches the paper, whose BLINK score is far below it, and whose Mantis-Eval cell did not run."""
    models = {"reference (ov)": None, "base": None}
    cells = {("muirbench", "reference (ov)"): mc_rows(400, 102, "m"),  # 25.5%, as published
             ("blink", "reference (ov)"): mc_rows(400, 120, "b"),  # 30.0%, published 52.1
             ("nlvr2", "reference (ov)"): mc_rows(100, 60, "n"),
             ("muirbench", "base"): mc_rows(400, 90, "m")}
    mimic = transfer.mimic_table({name: mimic_rows(200, 52) for name in models})  # 26.0%, published 26.4
    return transfer.results_table(mimic, cells, {("mantis", "reference (ov)"): "not run: offline"})


def test_measured_beside_published_with_difference_interval_and_flag(results):
    table = published.comparison(results, {"reference (ov)": OV_05B, "base": "llava-hf/llava-onevision-qwen2-0.5b-si-hf"})
    assert set(table["model"]) == {"reference (ov)"}  # the -si base has no published numbers
    rows = table.set_index("benchmark")
    muir = rows.loc["muirbench"]
    assert muir["published"] == 25.5 and muir["ours"] == pytest.approx(25.5) and muir["diff"] == pytest.approx(0.0)
    assert muir["lo"] < 25.5 < muir["hi"] and muir["n"] == 400 and muir["reading"] == "within our interval"
    blink = rows.loc["blink"]
    assert blink["diff"] == pytest.approx(30.0 - 52.1) and blink["hi"] < 52.1
    assert blink["reading"] == "outside our interval: a gap of -22.1 points our sampling cannot explain"
    assert rows.loc["mantis", "reading"] == "not measured here" and math.isnan(rows.loc["mantis", "ours"])
    assert rows.loc["nlvr2", "reading"].startswith("not comparable: the paper's NLVR2 figure is the NLVR2 subset")
    assert rows.loc["qbench2", "reading"].startswith("not comparable") and math.isnan(rows.loc["qbench2", "ours"])
    assert rows.loc["mimic", "ours"] == pytest.approx(26.0) and rows.loc["mimic", "reading"] == "within our interval"
    lines = published.sentences(table, "paper")
    assert any(line.startswith("muirbench, reference (ov): ours 25.5 [95% CI") and "vs published 25.5" in line
               and "Table 4" in line and "not verified" not in line for line in lines)
    assert any(line.startswith("mimic, reference (ov)") and "not verified against the source itself" in line
               for line in lines)
    assert any("blink, reference (ov)" in line and "outside our interval" in line for line in lines)


def test_under_cpu_the_table_says_it_applies_to_real_checkpoints_only(results):
    table = published.comparison(results, {"base": "outputs/cpu/models/base"})
    assert table.empty and list(table.columns) == published.COLUMNS
    (line,) = published.sentences(table, "cpu")
    assert line.startswith("Published numbers apply to real checkpoints only (llava-hf/") and "'cpu'" in line


def test_the_committed_table_cites_its_sources_and_marks_other_splits():
    table = published.load()
    known = set(external_benchmarks.BENCHMARKS) | {published.MIMIC_KEY}
    assert {e.benchmark for e in table.scores} <= known
    quoted = {(e.checkpoint, e.benchmark): e.score for e in table.scores}
    assert quoted[(OV_05B, "muirbench")] == 25.5 and quoted[(OV_05B, "blink")] == 52.1 and quoted[(OV_05B, "mantis")] == 39.6
    assert quoted[("llava-hf/llava-onevision-qwen2-7b-ov-hf", "mantis")] == 64.2
    assert {e.benchmark for e in table.scores if not e.comparable} == {"nlvr2", "qbench2"}
    assert all(table.sources[e.source].url.startswith("https://arxiv.org/") for e in table.scores)


def test_a_table_citing_an_unknown_source_or_lacking_a_score_is_refused(tmp_path):
    entry = {"checkpoint": OV_05B, "model": "m", "benchmark": "muirbench", "score": 25.5, "source": "elsewhere",
             "comparable": True, "verified": False, "note": "n"}
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump({"sources": {}, "scores": [entry]}))
    with pytest.raises(ValueError, match="cites unknown source 'elsewhere'"):
        published.load(path)
    source = {"title": "t", "url": "https://arxiv.org/abs/1", "where": "w"}
    path.write_text(yaml.safe_dump({"sources": {"elsewhere": source}, "scores": [{**entry, "score": None}]}))
    with pytest.raises(ValueError, match="comparable but has no score"):
        published.load(path)
