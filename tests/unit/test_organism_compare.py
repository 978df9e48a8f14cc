"""Two ov checkpoints compared question by question (python -m mimic_utils.organism --compare)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mimic_utils.organism import cli, compare


def scored(folder: Path, scores: dict[str, list[float]], choice: list[float] = ()) -> Path:
    """A checkpoint folder with held-out answers: per family, one score per question (ids shared across
    folders), and multiple-choice rows (no family field, as the choice scorer writes them)."""
    (folder / "heldout").mkdir(parents=True)
    rows = [{"id": f"{family}-{k}", "family": family, "score": s, "output": str(s)}
            for family, values in scores.items() for k, s in enumerate(values)]
    (folder / "heldout" / "ov.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if choice:
        (folder / "heldout" / "choice.jsonl").write_text("".join(
            json.dumps({"id": f"choice-{k}", "sub_task": "naming", "score": s, "output": "A"}) + "\n"
            for k, s in enumerate(choice)))
    return folder


def test_the_paired_table_reads_the_change_per_family_with_its_interval(tmp_path):
    a = scored(tmp_path / "a", {"which_image": [0.0] * 40 + [1.0] * 60, "image_count": [1.0] * 50}, [1.0, 0.0] * 20)
    b = scored(tmp_path / "b", {"which_image": [1.0] * 100, "image_count": [1.0] * 50}, [1.0, 0.0] * 20)
    table = compare.compare(a, b, ("old", "new"), out=tmp_path / "answers.csv").set_index("family")
    assert list(table.index) == ["choice", "image_count", "which_image"]
    row = table.loc["which_image"]
    assert (row["n"], row["old"], row["new"], row["difference"]) == (100, 0.6, 1.0, pytest.approx(0.4))
    assert 0.25 < row["lo"] < 0.4 < row["hi"] <= 0.55  # 40 questions gained, none lost: the interval excludes 0
    assert table.loc["image_count", "difference"] == 0 and table.loc["image_count", "lo"] == 0
    assert table.loc["choice", "n"] == 40 and table.loc["choice", "difference"] == 0
    assert table.attrs["unshared"] == {"old": 0, "new": 0}
    answers = pd.read_csv(tmp_path / "answers.csv")
    assert list(answers.columns) == ["id", "family", "old_score", "new_score", "old_output", "new_output"]
    assert len(answers) == 190


def test_unpairable_checkpoints_are_refused_saying_why(tmp_path, capsys):
    a = scored(tmp_path / "a", {"which_image": [1.0]})
    (tmp_path / "c" / "heldout").mkdir(parents=True)
    (tmp_path / "c" / "heldout" / "ov.jsonl").write_text(json.dumps({"id": "other", "family": "which_image",
                                                                      "score": 1.0, "output": "x"}) + "\n")
    with pytest.raises(ValueError, match="no question in common"):
        compare.compare(a, tmp_path / "c", ("a", "c"))
    with pytest.raises(ValueError, match="different names"):
        compare.compare(a, tmp_path / "c", ("same", "same"))
    assert cli.main(["--compare", str(a), str(tmp_path / "missing")]) == 2
    assert "score the checkpoint first" in capsys.readouterr().out


def test_questions_only_one_side_answered_are_left_out_and_said(tmp_path, capsys):
    a = scored(tmp_path / "a", {"which_image": [1.0, 0.0]}, [1.0, 1.0])
    b = scored(tmp_path / "b", {"which_image": [1.0, 1.0]})  # scored before multiple choice was
    table = compare.compare(a, b, ("a", "b"))
    assert list(table["family"]) == ["which_image"] and table.attrs["unshared"] == {"a": 2, "b": 0}
    assert cli.main(["--compare", str(a), str(b), "--names", "a", "b"]) == 0
    assert "left out, answered by one side only: 2 questions of a" in capsys.readouterr().out
