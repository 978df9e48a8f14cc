"""Two trained ov checkpoints compared on the same held-out questions, question by question.

Recipes of the ov stage differ by a few points on 150 questions a family, so their own intervals overlap
even where one is better: the comparison that can tell them apart pairs the two models' answers to the same
questions. Both checkpoints must have been scored (``heldout/*.jsonl`` beside their weights, written by the
card; the held-out questions follow from si's recipe and the ov recipe's seeds, so two recipes with the same
evaluation keys ask the same questions). ``python -m mimic_utils.organism --compare A B`` prints the table
and writes the per-question answers beside it, as the tried recipes keep them
(``outputs/cpu/models/tried/*/heldout_vs_*.csv``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mimic_utils.analysis import stats

#: the answers of the card's multi-image format check (mimic_utils.organism.formats), beside the others
MULTI_FILE = "format_multi.jsonl"
#: the held-out answer files of an ov checkpoint: per-image questions (4-10 images), single-image ones,
#: single-image multiple choice (whose rows carry no family: they are read as ``choice``), MIMIC's questions
#: over several images (formats.py; read as ``mimic_<family>_<n>img``, apart from the single-image families)
ANSWER_FILES = ("ov.jsonl", "predictions.jsonl", "choice.jsonl", MULTI_FILE)


def family_of(file_name: str, record: dict) -> str:
    """The family a held-out answer is compared under (see :data:`ANSWER_FILES`)."""
    if file_name == "choice.jsonl":
        return "choice"
    if file_name == MULTI_FILE:
        return f"mimic_{record['family']}_{record['knobs']['n_images']}img"
    return record["family"]


def answers(folder: Path) -> dict[str, dict]:
    """The held-out answers of the checkpoint in ``folder`` by question id (every file of
    :data:`ANSWER_FILES` present), each with its ``family``."""
    found: dict[str, dict] = {}
    for name in ANSWER_FILES:
        path = Path(folder) / "heldout" / name
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                found[record["id"]] = {**record, "family": family_of(name, record)}
    if not found:
        raise FileNotFoundError(f"{folder}/heldout: none of {list(ANSWER_FILES)}; score the checkpoint first "
                                "(python -m mimic_utils.organism --stage ov --rewrite-card)")
    return found


def paired_answers(a: dict[str, dict], b: dict[str, dict], names: tuple[str, str]) -> pd.DataFrame:
    """One row per question both answered: ``id``, ``family``, each side's score and answer, columns named
    after ``names``; ``attrs["unshared"]`` counts the questions only one side answered (left out, e.g. a
    checkpoint scored before multiple choice was), which the CLI reports. Refuses two sets that share no
    question (different held-out recipes)."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError(f"{names[0]} and {names[1]} answered no question in common: their held-out questions "
                         "differ (another si, seed or evaluation setting), so they cannot be paired")
    first, second = names
    rows = pd.DataFrame([{"id": i, "family": a[i]["family"], f"{first}_score": a[i]["score"],
                          f"{second}_score": b[i]["score"], f"{first}_output": a[i]["output"],
                          f"{second}_output": b[i]["output"]} for i in shared])
    rows.attrs["unshared"] = {first: len(set(a) - set(b)), second: len(set(b) - set(a))}
    return rows


def paired_table(rows: pd.DataFrame, names: tuple[str, str], seed: int = 0) -> pd.DataFrame:
    """Per family: questions, each side's mean score and ``second − first`` with its paired 95% bootstrap
    interval (:func:`mimic_utils.analysis.stats.difference`). Every family is the mean of per-question
    scores, so listing reads as the mean per-question F1, where the card reports micro F1."""
    first, second = names
    table = []
    for family, part in rows.groupby("family", sort=True):
        a = [{"id": i, "task": family, "score": s} for i, s in zip(part["id"], part[f"{first}_score"])]
        b = [{"id": i, "task": family, "score": s} for i, s in zip(part["id"], part[f"{second}_score"])]
        d = stats.difference(a, b, paired=True, seed=seed)
        table.append({"family": family, "n": len(part), first: part[f"{first}_score"].mean(),
                      second: part[f"{second}_score"].mean(), "difference": d["diff"], "lo": d["lo"], "hi": d["hi"]})
    return pd.DataFrame(table)


def compare(a_dir: Path, b_dir: Path, names: tuple[str, str] | None = None,
            out: Path | None = None) -> pd.DataFrame:
    """:func:`paired_table` of two scored checkpoints (``attrs["unshared"]``: questions only one answered,
    left out); with ``out``, the per-question rows written there (CSV) for a reader to check any figure."""
    names = names or (Path(a_dir).name, Path(b_dir).name)
    if names[0] == names[1]:
        raise ValueError(f"the two checkpoints need different names, got {names[0]!r} twice: pass --names")
    rows = paired_answers(answers(Path(a_dir)), answers(Path(b_dir)), names)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        rows.to_csv(out, index=False)
    table = paired_table(rows, names)
    table.attrs["unshared"] = rows.attrs["unshared"]
    return table
