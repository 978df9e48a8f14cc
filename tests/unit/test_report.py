"""REPORT.md and notebook 06's tables are computed from metrics and predictions, with intervals, baselines
and verdicts, and say plainly what did not run or was not measured."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from mimic_utils.analysis import cross_benchmark, diagnosis, report, sentences, stats
from mimic_utils.analysis.claims import CLAIMS, claim_entry

ABOVE = stats.reference("1 image", 0.62, 0.58, 0.66, 0.24)
FLOOR = stats.reference("0 distractors", 0.70, 0.64, 0.76, 0.695)


def write(root, profile, notebook, metrics):
    folder = root / "outputs" / profile / notebook
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def study(tmp_path):
    """A checkout whose cpu outputs hold notebook 01, notebook 02 with three claims, and a placeholder 03."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "mimic_utils").mkdir()
    write(tmp_path, "cpu", "01_data_build", {"status": "ok", "benchmark": {"total": 10}, "train": {"total": 5}})
    write(tmp_path, "cpu", "02_zero_shot_diagnosis", {
        "status": "ok", "findings": ["organism: fewer right answers with more images"],
        "claims": {"1": claim_entry("1", -0.42, -0.50, -0.33, "four-task mean at 10 images − at 1 image", n=400,
                                    reference=ABOVE),
                   "2": claim_entry("2", -0.05, -0.12, 0.02, "pooling gain at 10 images", reference=ABOVE),
                   "3": claim_entry("3", 0.08, 0.02, 0.15, "counting accuracy spread over 4 − in 1 image",
                                    reference=ABOVE),
                   "4": claim_entry("4", -0.68, -0.75, -0.62, "counting with 9 − 0 distractors", reference=FLOOR)}})
    write(tmp_path, "cpu", "05_masked_qlora_finetune", {
        "status": "ok", "claims": {"9": claim_entry("9", 0.89, 0.89, 0.89, "analytic saving", analytic=True)}})
    write(tmp_path, "cpu", "03_attention_analysis", {"status": "not_built"})
    return tmp_path


def test_claims_section_keeps_every_claim_and_marks_unmeasured_ones_missing(study):
    rows = report.claims_rows("cpu", study)
    assert [r["claim"] for r in rows] == list(CLAIMS)
    verdicts = {r["claim"]: r["verdict"] for r in rows}
    assert verdicts["1"] == "reproduced" and verdicts["2"] == "inconclusive" and verdicts["3"] == "opposite"
    assert verdicts["4"] == "not testable here (floor)" and verdicts["9"] == "analytic, not measured"
    assert all(verdicts[c] == "missing" for c in ("5", "6", "7", "8", "10", "11"))
    text = report.claims_section("cpu", study)
    assert "| 1 | Accuracy falls as images are added" in text and "-0.420 [-0.500, -0.330]" in text
    assert "not measured (notebook 06 wrote no entry) | **missing** |" in text
    assert sentences.verdict_counts(rows) == ("1 reproduced, 1 opposite, 1 inconclusive, 1 not testable here (floor), "
                                           "0 not testable here (format), 1 analytic, not measured, 6 missing")


def test_claims_section_of_a_profile_that_never_ran_lists_nine_missing_claims(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    rows = report.claims_rows("smoke", tmp_path)
    assert len(rows) == len(CLAIMS) and {r["verdict"] for r in rows} == {"missing"}
    assert "**missing**, not measured (notebook 02 wrote no entry)." in sentences.claim_sentence(rows[0])
    assert sentences.verdict_counts(rows).endswith(f"{len(CLAIMS)} missing")


def test_report_holds_rule_claims_effects_statuses_tables_and_findings(study):
    results = pd.DataFrame([{"benchmark": cross_benchmark.MIMIC, "model": "base", "n": 40, "score": 0.5, "lo": 0.4,
                             "hi": 0.6, "baseline": 0.25, "parse_rate": math.nan, "reading": "above baseline"}])
    text = report.write_report("cpu", {"Models × benchmarks": results}, root=study).read_text()
    assert "only when the 95% interval of its effect excludes 0" in text and "Wilson" in text
    assert "reference condition" in text and "score − blind" in text and "analytic, not measured" in text
    assert ("| 1 | Accuracy falls as images are added (like-for-like task set) | -0.420 [-0.500, -0.330] "
            "| 1 image 0.62 [95% CI 0.58, 0.66], blind 0.24 |") in text
    assert ("Claim 1, \"Accuracy falls as images are added (like-for-like task set)\": **reproduced**; four-task "
            "mean at 10 images − at 1 image: -0.420 [95% CI -0.500, -0.330]; reference condition 1 image 0.62 "
            "[95% CI 0.58, 0.66], blind 0.24.") in text
    assert "**opposite**" in text and "**inconclusive**" in text and "**not testable here (floor)**" in text
    assert (f"Of the paper's {len(CLAIMS)} claims this run finds 1 reproduced, 1 opposite, 1 inconclusive, "
            "1 not testable here (floor), 0 not testable here (format), 1 analytic, not measured, 6 missing.") in text
    assert "| 03_attention_analysis | not_built |" in text and "| 04_data_centric_finetune | not run |" in text
    assert "## Models × benchmarks" in text
    assert re.search(r"\| MIMIC \(mean over tasks\) +\| base +\| +40 \| +0\.5 \| +0\.4 \| +0\.6 \| +0\.25 \| — +\|", text)
    assert "nan" not in text  # a value not measured is a dash
    assert "- organism: fewer right answers with more images" in text


def mc_row(i, parsed, answer="A", letters=("A", "B", "C", "D"), sub_task="counting"):
    return {"id": str(i), "letters": list(letters), "parsed": parsed, "answer": answer, "sub_task": sub_task,
            "score": float(parsed == answer)}


def test_parse_rate_counts_only_valid_letters_of_multiple_choice_rows():
    rows = [mc_row(0, "A"), mc_row(1, None), mc_row(2, "(b)"), mc_row(3, "E"),
            {"id": "4", "letters": [], "parsed": "a cat", "score": 1.0}]  # a short answer is not counted
    assert cross_benchmark.parse_rate(rows) == {"n": 4, "parsed": 2, "rate": 0.5}
    assert math.isnan(cross_benchmark.parse_rate([])["rate"])
    assert cross_benchmark.with_n_options(rows)[0]["n_options"] == 4 and "n_options" not in cross_benchmark.with_n_options(rows)[4]
    assert cross_benchmark.chance(rows[:4]) == pytest.approx(0.25)
    assert cross_benchmark.chance(rows) == pytest.approx(0.25 * 4 / 5)  # a short answer is not guessed


def test_below_half_parsed_the_reading_is_the_letter_format_not_transfer():
    silent = [mc_row(i, None if i % 4 else "A") for i in range(40)]  # a letter in 1 reply of 4
    row = cross_benchmark.benchmark_row("scene OOD", "masked", silent)
    assert row["parse_rate"] == 0.25 and row["reading"] == cross_benchmark.NO_LETTERS == "does not answer in the letter format"
    assert "does not answer in the letter format." in sentences.cell_sentence(row)
    fluent = [mc_row(i, "A") for i in range(40)]
    assert cross_benchmark.benchmark_row("scene OOD", "base", fluent)["reading"] == "above baseline"
    (found,) = cross_benchmark.compare("scene OOD", {"base": fluent, "masked": silent}, "base")
    assert found["paired"] and found["sentence"] == ("scene OOD, masked vs base: masked does not answer in the "
                                                     "letter format (parse rate 0.25), so this is no transfer result.")


def test_paired_comparison_above_the_floor_uses_the_one_rule():
    base = [mc_row(i, "A" if i < 20 else "B") for i in range(40)]  # 0.50 [0.35, 0.65], chance 0.25
    other = [mc_row(i, "A" if i < 38 else "B") for i in range(40)]
    (found,) = cross_benchmark.compare("scene OOD", {"base": base, "other": other}, "base")
    assert found["paired"] and found["diff"] == pytest.approx(0.45) and found["lo"] > 0
    assert found["sentence"].startswith("scene OOD score: rises from base (0.50) to other (0.95), +0.45 [95% CI")
    assert "McNemar p = " in found["sentence"]


def test_benchmark_table_keeps_cells_that_did_not_run():
    table = cross_benchmark.benchmark_table({("scene OOD", "base"): [mc_row(0, "A")]},
                                     {("blink", "base"): "not run: offline"})
    assert table.set_index("benchmark").loc["blink", "reading"] == "not run: offline"
    assert sentences.cell_sentence(table.to_dict(orient="records")[1]) == "blink, base: not run: offline."
    assert diagnosis.jsonable(table)[1]["score"] is None


def test_mimic_table_gives_each_task_an_interval_and_blind_baseline():
    images = {"experiment": "images", "knobs": {"n_images": 2}}
    rows = [{**images, "id": f"c{i}", "task": "counting", "scored_as": "counting", "gt": "2" if i < 6 else "3",
             "score": float(i < 5)} for i in range(10)]
    rows += [{**images, "id": f"l{i}", "task": "listing", "scored_as": "listing", "gt": "bus, car", "score": 0.5,
              "true_positive": 1, "n_pred": 2, "n_gt": 2} for i in range(10)]
    table = cross_benchmark.mimic_table({"base": rows}).set_index("task")
    wilson = stats.wilson(5, 10)
    assert (table.loc["counting", "lo"], table.loc["counting", "hi"]) == pytest.approx(wilson, abs=1e-4)
    assert table.loc["counting", "baseline"] == pytest.approx(0.6) and table.loc["listing", "baseline"] == 1.0
    assert table.loc["listing", "reading"] == "below baseline" and table.loc["counting", "baseline_kind"] == "blind"
    mean = table.loc[cross_benchmark.MIMIC]
    assert mean["score"] == pytest.approx(0.5 * (0.5 + 0.5)) and mean["lo"] <= mean["score"] <= mean["hi"]
    assert mean["n"] == 20 and mean["baseline"] == pytest.approx(0.8)
    results = cross_benchmark.results_table(table.reset_index(), {("scene OOD", "base"): [mc_row(0, "A")]})
    assert list(results["benchmark"]) == [cross_benchmark.MIMIC, "scene OOD"] and list(results["n"]) == [20, 1]


def letters_and_likelihood(right_base: int, right_tuned: int, parsed_tuned: int, n: int = 40,
                           likelihood: tuple[int, int] | None = None) -> tuple[dict, dict | None]:
    """Letter rows of a base and a tuned model on ``n`` four-option questions (``parsed_tuned`` of the tuned
    replies hold a letter), and optionally option-likelihood rows with the given right answers."""
    base = [mc_row(i, "A" if i < right_base else "B") for i in range(n)]
    tuned = [mc_row(i, ("A" if i < right_tuned else "B") if i < parsed_tuned else None) for i in range(n)]
    rows = {"base": base, "tuned": tuned}
    if likelihood is None:
        return rows, None
    return rows, {m: [{"id": str(i), "score": float(i < right)} for i in range(n)]
                  for m, right in zip(("base", "tuned"), likelihood)}


def test_transfer_claim_is_guarded_by_the_parse_rate_and_reads_likelihood_when_present():
    letters, _ = letters_and_likelihood(20, 36, 36)
    claim = cross_benchmark.transfer_claim("scene OOD", letters, "base", "tuned")
    assert claim["claim"] == "10" and claim["effect"] == pytest.approx(0.4) and claim["verdict"] == "reproduced"
    assert claim["reference"]["kind"] == "chance" and claim["reference"]["baseline"] == 0.25
    assert "scored by the letter in the reply" in claim["note"] and "letter scoring" in claim["measure"]
    # a tuned model that answers with a letter in 10 of 40 replies: its letter score says nothing
    silent, _ = letters_and_likelihood(20, 10, 10)
    refused = cross_benchmark.transfer_claim("scene OOD", silent, "base", "tuned")
    assert refused["verdict"] == "not testable here (format)" and "tuned does not answer" in refused["note"]
    # scored by option likelihood, the same model is measured
    silent, likelihood = letters_and_likelihood(20, 10, 10, likelihood=(20, 30))
    measured = cross_benchmark.transfer_claim("scene OOD", silent, "base", "tuned", likelihood)
    assert measured["verdict"] == "reproduced" and measured["effect"] == pytest.approx(0.25)
    assert "option likelihood" in measured["note"] and "option likelihood" in measured["measure"]
    # a base model below chance: the floor
    low, _ = letters_and_likelihood(4, 30, 40)
    assert cross_benchmark.transfer_claim("scene OOD", low, "base", "tuned")["verdict"] == "not testable here (floor)"
    assert cross_benchmark.transfer_claim("scene OOD", {"base": low["base"]}, "base", "tuned") is None


def test_comparison_sentence_reads_nothing_from_a_base_below_chance():
    base = [mc_row(i, "A" if i < 4 else "B") for i in range(40)]  # 0.10, chance 0.25
    other = [mc_row(i, "A" if i < 20 else "B") for i in range(40)]
    (found,) = cross_benchmark.compare("scene OOD", {"base": base, "other": other}, "base")
    assert found["sentence"].startswith("scene OOD score: not testable here (floor) — the reference condition, "
                                        "base on scene OOD, scores 0.10")
    assert "below its chance baseline 0.25" in found["sentence"] and "McNemar" not in found["sentence"]


def test_the_readme_claims_table_is_the_committed_reports():
    """README.md holds the cpu run's claims table, generated by the report's own function from the committed
    metrics (`python -m mimic_utils.analysis.report --readme`, run by `make study`): the same table as REPORT.md."""
    from pathlib import Path

    from mimic_utils.artifacts import repo_root

    root = repo_root(Path(__file__).parent)
    table = report.readme_claims((root / "README.md").read_text(encoding="utf-8"), "cpu")
    assert table == report.claims_section("cpu", root).strip("\n"), "README.md is stale: run python -m mimic_utils.analysis.report --readme"
    assert table in (root / "outputs" / "cpu" / "REPORT.md").read_text(encoding="utf-8")


def test_update_readme_rewrites_only_the_table_between_its_markers(study):
    readme = study / "README.md"
    begin = report.README_BEGIN.format(profile="cpu")
    readme.write_text(f"# title\n\n{begin}\n| old | table |\n{report.README_END}\n\nmore text\n")
    assert report.update_readme(readme, "cpu", study) is True
    text = readme.read_text()
    assert report.readme_claims(text, "cpu") == report.claims_section("cpu", study).strip("\n")
    assert text.startswith("# title\n\n") and text.endswith(f"{report.README_END}\n\nmore text\n")
    assert report.update_readme(readme, "cpu", study) is False  # already current
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no generated claims table"):
        report.update_readme(readme, "cpu", study)
