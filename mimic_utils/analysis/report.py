"""The study's one-page findings, ``outputs/<profile>/REPORT.md``, written by notebook 06.

Every sentence is computed from the notebooks' ``metrics.json`` files, so the report cannot drift from the
results. Its centre is the claims table (:mod:`mimic_utils.analysis.claims`): one row per claim of the paper, in the
paper's direction, with the measured effect, its 95% interval (and the blind-adjusted one), its reference
condition against its baseline, and a verdict re-read from those numbers by the one rule of
:mod:`mimic_utils.analysis.stats` (reproduced, opposite, inconclusive, not testable here (floor / format), analytic,
not measured, missing), every verdict counted. A claim no notebook measured stays in the table as
"missing", and a notebook that has not run (or is a placeholder) is reported as such, never skipped
silently.

The README carries the committed ``cpu`` run's claims table between :data:`README_BEGIN` and :data:`README_END`,
written by the same function as the report (:func:`claims_section`); ``python -m mimic_utils.analysis.report
--readme`` rewrites it (``make study`` does), and a test keeps the two equal.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from mimic_utils.artifacts import profile_dir, read_json, repo_root, write_text
from mimic_utils.analysis.claims import claims_markdown, claims_table
from mimic_utils.analysis.sentences import claims_sentences

NOTEBOOKS = ("01_data_build", "02_zero_shot_diagnosis", "03_attention_analysis", "04_data_centric_finetune",
             "05_masked_qlora_finetune", "06_cross_benchmark_eval")

#: How to read every number of the report (and of notebook 06): the rule behind each word.
HOW_TO_READ = [
    "**Verdicts.** A claim is read only where its *reference condition* (the condition the claim needs to "
    "be above what a model ignoring the images scores: the 1-image score before images are added, the base "
    "model before finetuning; named in each row) lies above its blind baseline, chance or uniform attention, "
    "its 95% interval excluding it; otherwise it is *not testable here (floor)*, with both numbers. A read "
    "claim is *reproduced* only when the 95% interval of its effect excludes 0 in the paper's direction, "
    "*opposite* when it excludes 0 the other way, *inconclusive* when it contains 0. A multiple-choice "
    "letter score of a model that rarely answers with a letter is *not testable here (format)*; a figure "
    "from a formula alone is *analytic, not measured* and never counts as reproduced; *missing*: no "
    "notebook measured it (or its entry lacks a number the rule needs, named). Trend words (rises / falls "
    "/ no detectable change) follow the same rule and the same floor guard.",
    "**Blind adjustment.** Where the two ends of a comparison hold different questions whose answers are "
    "distributed differently (1 vs 10 images, k), the blind baseline changes by itself; the effect on "
    "score − blind (its interval from the same resample) stands beside the raw one and the verdict is read "
    "on it. Two models on the same questions share their blind baseline.",
    "**Parts.** A claim read in parts (claim 2: two pooling factors; claim 5: counting and listing; claim 9: "
    "FLOPs and time) is reproduced (or opposite) only when every part is; a part not testable makes the "
    "whole not testable; parts that disagree make it inconclusive.",
    "**Intervals.** 95%: Wilson for an accuracy (a 0/1 score per question); a seeded percentile bootstrap "
    "over questions (resampled within each task) for Listing F1, means over tasks and differences. Two "
    "models on the same questions are compared paired (the same resampled questions for both, plus "
    "McNemar's exact p). A model trained with several seeds: the bootstrap resamples seeds and questions "
    "together; each seed's own effect and their SD are in the claim's note.",
    "**Baselines.** *blind*: the best constant answer (the most frequent ground truth, officially scored); "
    "*chance*: 1 / options for a multiple-choice question. *above / below baseline* again means the score's "
    "interval excludes the baseline.",
    "**Parse rate.** The share of multiple-choice replies from which a valid option letter was read. Below "
    "0.5 the reading is \"does not answer in the letter format\", not a transfer result; a score by option "
    "likelihood needs no letter.",
]


def load_all(profile: str, root: Path | None = None) -> dict[str, dict | None]:
    """Each notebook's metrics, or None where it has not written any."""
    found = {}
    for notebook in NOTEBOOKS:
        path = profile_dir(profile, root) / notebook / "metrics.json"
        found[notebook] = read_json(path) if path.is_file() else None
    return found


def _status(metrics: dict | None) -> str:
    if metrics is None:
        return "not run"
    return metrics.get("status", "ok")


def claims_rows(profile: str, root: Path | None = None) -> list[dict]:
    """The claims table's rows for a profile, from whatever metrics its notebooks have written."""
    return claims_table(load_all(profile, root))


def claims_section(profile: str, root: Path | None = None) -> str:
    """The claims table of a profile as Markdown: the report's table, and the README's (:func:`update_readme`)."""
    return claims_markdown(claims_rows(profile, root))


def _cell(value: object) -> object:
    """Numbers to 3 decimals, missing values as "—" (a bare ``nan`` in a report reads like a result)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return round(value, 3) if isinstance(value, float) else value


def table_markdown(frame: pd.DataFrame) -> str:
    """A results table as Markdown, rounded, with "—" for what was not measured."""
    if frame.empty:
        return "(no rows)"
    return frame.map(_cell).to_markdown(index=False)


def _status_lines(metrics: Mapping[str, dict | None]) -> list[str]:
    lines = ["| notebook | status |", "|---|---|"] + [f"| {n} | {_status(m)} |" for n, m in metrics.items()]
    data = metrics.get("01_data_build")
    if data and "benchmark" in data and "train" in data:
        lines += ["", f"Benchmark: {data['benchmark']['total']} questions; training data: "
                      f"{data['train']['total']} conversations (disjoint image source)."]
    return lines


def _findings_lines(metrics: Mapping[str, dict | None]) -> list[str]:
    """Each notebook's own generated findings, under its name."""
    lines = []
    for notebook, found in metrics.items():
        if found and found.get("findings"):
            lines += [f"### {notebook}", ""] + [f"- {line}" for line in found["findings"]] + [""]
    return lines


def report_text(profile: str, metrics: Mapping[str, dict | None], tables: Mapping[str, pd.DataFrame]) -> str:
    """The whole of ``REPORT.md``: how to read, the claims table and its reading, what ran, the tables
    (titled, each with n and interval columns) and every notebook's findings."""
    rows = claims_table(metrics)
    lines = [f"# MIMIC study — findings (profile `{profile}`)", "",
             "Every number below is computed from the notebooks' `metrics.json`; figures are in each notebook's "
             "output folder and the executed notebooks in `executed/`.", "", "## How to read", ""]
    lines += [f"- {rule}" for rule in HOW_TO_READ]
    lines += ["", "## The paper's claims", "", claims_markdown(rows)]
    lines += [f"- {sentence}" for sentence in claims_sentences(rows)]
    lines += ["", "## What ran", ""] + _status_lines(metrics)
    for title, frame in tables.items():
        lines += ["", f"## {title}", "", table_markdown(frame)]
    findings = _findings_lines(metrics)
    if findings:
        lines += ["", "## Findings of each notebook", ""] + findings
    lines += ["", "A tiny model organism is a controlled miniature, not a reproduction of the paper's numbers: where "
              "a finding differs from the paper, read it as a property of this setting, to be checked at scale "
              "with the `paper` profile.", ""]
    return "\n".join(lines)


def write_report(profile: str, tables: Mapping[str, pd.DataFrame], root: Path | None = None) -> Path:
    """Compose ``REPORT.md`` from every notebook's metrics and notebook 06's titled tables."""
    text = report_text(profile, load_all(profile, root), tables)
    return write_text(profile_dir(profile, root) / "REPORT.md", text)


#: The README's generated claims table sits between these two lines (the profile is named in the first).
README_BEGIN = "<!-- claims table: generated by `python -m mimic_utils.analysis.report --readme` from outputs/{profile}/ -->"
README_END = "<!-- end of the generated claims table -->"


def readme_claims(text: str, profile: str = "cpu") -> str:
    """The claims table the README holds between its markers; a ``ValueError`` when they are missing."""
    begin = README_BEGIN.format(profile=profile)
    if begin not in text or README_END not in text:
        raise ValueError(f"README.md: no generated claims table (markers {begin!r} … {README_END!r})")
    return text.split(begin, 1)[1].split(README_END, 1)[0].strip("\n")


def update_readme(readme: Path, profile: str = "cpu", root: Path | None = None) -> bool:
    """Rewrite the README's claims table from ``outputs/<profile>/``'s metrics (:func:`claims_section`, the
    report's own table). Returns whether it changed."""
    text = readme.read_text(encoding="utf-8")
    current = readme_claims(text, profile)
    fresh = claims_section(profile, root).strip("\n")
    if current == fresh:
        return False
    write_text(readme, text.replace(current, fresh, 1))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimic_utils.analysis.report",
                                     description="Write the README's claims table from a profile's metrics.")
    parser.add_argument("--readme", action="store_true", help="rewrite the claims table in README.md")
    parser.add_argument("--profile", default="cpu", help="whose outputs/<profile>/ metrics (default cpu)")
    args = parser.parse_args(argv)
    if not args.readme:
        parser.print_help()
        return 2
    readme = repo_root() / "README.md"
    changed = update_readme(readme, args.profile)
    print(f"[report] README.md claims table {'rewritten' if changed else 'already current'} "
          f"(from outputs/{args.profile}/)")
    return 0


__all__ = ["HOW_TO_READ", "NOTEBOOKS", "README_BEGIN", "README_END", "claims_rows", "claims_section", "load_all",
           "readme_claims", "report_text", "table_markdown", "update_readme", "write_report"]


if __name__ == "__main__":
    sys.exit(main())
