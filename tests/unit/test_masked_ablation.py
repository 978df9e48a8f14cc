"""Notebook 05's masked-LoRA ablation: specs resolved to layers before training (duplicates trained once,
an unresolvable `auto` dropped with a reason), folder names later notebooks read, seed-averaged scores that
keep Listing micro, and a seed that fixes LoRA's initial matrices too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eval_worker import tiny_qwen_adapter
from finetune_worker import conversations
from mimic_utils.analysis import masked_lora, stats
from mimic_utils.training import finetune, lora_ablation

ABLATION = {"no mask": "none", "early": "first_half", "late": "second_half", "auto": "auto"}


def test_auto_that_repeats_late_is_trained_once_and_reported_under_both_names():
    distinct, aliases, notes = lora_ablation.resolve_ablation(ABLATION, 24, auto_layer=12)
    assert distinct == {"no mask": (), "early": tuple(range(12)), "late": tuple(range(12, 24))}
    assert aliases == {"auto": "late"}
    assert len(notes) == 1 and "same layers as 'late'" in notes[0]


def test_a_distinct_auto_is_trained_and_a_missing_one_is_dropped_with_a_reason():
    distinct, aliases, _ = lora_ablation.resolve_ablation(ABLATION, 24, auto_layer=18)
    assert distinct["auto"] == tuple(range(18, 24)) and not aliases
    distinct, aliases, notes = lora_ablation.resolve_ablation(ABLATION, 24, auto_layer=None)
    assert "auto" not in distinct and not aliases
    assert notes and "not trained" in notes[0]


def test_the_first_seed_keeps_the_folder_later_notebooks_read():
    label = lora_ablation.variant_label("late", (2, 3))
    assert label == "masked LoRA (late)" and lora_ablation.variant_label("no mask", ()) == "LoRA (no mask)"
    assert lora_ablation.model_folder(label, 0, 0) == "masked_LoRA_late"
    assert lora_ablation.model_folder(label, 2, 0) == "masked_LoRA_late_seed2"
    assert lora_ablation.model_folder("data-centric + masked", 0, 0) == "data-centric_plus_masked"


def listing_row(question: str, tp: int, n_pred: int, n_gt: int) -> dict:
    return {"id": question, "task": "listing", "true_positive": tp, "n_pred": n_pred, "n_gt": n_gt,
            "score": 2 * tp / (n_pred + n_gt)}


def test_seed_average_averages_scores_and_keeps_listing_micro():
    first = [{"id": "a", "task": "common", "score": 1.0}, {"id": "b", "task": "common", "score": 0.0}]
    second = [{"id": "b", "task": "common", "score": 1.0}, {"id": "a", "task": "common", "score": 1.0}]
    averaged = {r["id"]: r for r in lora_ablation.seed_average([first, second])}
    assert (averaged["a"]["score"], averaged["b"]["score"], averaged["a"]["seeds"]) == (1.0, 0.5, 2)
    runs = [[listing_row("q", 1, 2, 2)], [listing_row("q", 2, 4, 2)]]
    pooled = stats.score(runs[0] + [{**runs[1][0], "id": "r"}])  # micro F1 over both seeds' predictions
    assert stats.score(lora_ablation.seed_average(runs)) == pytest.approx(pooled)
    with pytest.raises(ValueError, match="different questions"):
        lora_ablation.seed_average([first, first[:1]])


def test_a_seed_fixes_the_lora_initialisation_and_the_batches(tmp_path):
    data = conversations(tmp_path / "img", 8)
    config = finetune.FinetuneConfig(steps=1, lr=1e-2, batch=2, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    weights = []
    for run, seed in enumerate((3, 3, 4)):
        adapter = tiny_qwen_adapter()
        torch.manual_seed(100 + run)  # whatever the global state before, the seed decides
        lora_ablation.train_masked_lora(adapter, (1,), data, config, tmp_path / f"run{run}", seed)
        assert adapter.mask_layers == (1,)
        weights.append({n: p.detach().clone() for n, p in adapter.model.named_parameters()})
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
    assert any(not torch.equal(weights[0][n], weights[2][n]) for n in weights[0])


# --- the plan notebook 05 trains, and the tables and claim it reads (mimic_utils.analysis.masked_lora)


def test_the_plan_gives_the_claim_pair_every_seed_and_the_data_centric_pair_the_first():
    plan = lora_ablation.plan_runs(ABLATION, "second_half", [0, 1], ("no mask", "late"), 24, auto_layer=12)
    runs = [(run.label, run.layers, run.seed, run.start) for run in plan.runs]
    assert runs == [("LoRA (no mask)", (), 0, "base"), ("LoRA (no mask)", (), 1, "base"),
                    ("masked LoRA (early)", tuple(range(12)), 0, "base"),
                    ("masked LoRA (late)", tuple(range(12, 24)), 0, "base"),
                    ("masked LoRA (late)", tuple(range(12, 24)), 1, "base"),
                    ("data-centric + masked", tuple(range(12, 24)), 0, "data-centric"),
                    ("data-centric + LoRA (no mask)", (), 0, "data-centric")]
    assert plan.pair_labels == ("LoRA (no mask)", "masked LoRA (late)")
    assert plan.alias_labels() == {"masked LoRA (auto)": "masked LoRA (late)"}
    assert plan.describe()[0] == "LoRA (no mask): from base, masked layers [], seed 0"
    assert plan.describe()[-1].startswith("note: 'auto' (auto) masks the same layers as 'late'")
    assert plan.comparisons()[-1] == ("LoRA (no mask)", "masked LoRA (early)", "exploratory, one seed")
    folders = {("masked LoRA (late)", 0): ROOT / "m" / "late", ("masked LoRA (late)", 1): ROOT / "m" / "late_seed1"}
    recorded = lora_ablation.AblationPlan({}, {}, [], {}, plan.runs[3:5], plan.claim_pair, [0, 1]).recorded(folders, ROOT)
    assert recorded == {"masked LoRA (late)": {"folders": ["m/late", "m/late_seed1"], "mask_layers": list(range(12, 24)),
                                               "start": "base"}}


ROOT = Path("/checkout")


def common_rows(scores: list[float]) -> list[dict]:
    return [{"id": f"q{i}", "task": "common", "experiment": "images", "knobs": {"n_images": 2}, "family": "common",
             "gt": ("bus", "cat", "cup", "tie")[i % 4], "score": s}
            for i, s in enumerate(scores)]


def test_tables_and_claim_8_read_the_runs_paired_and_per_seed():
    run_rows = {("LoRA (no mask)", 0): common_rows([0, 0, 1, 1]), ("LoRA (no mask)", 1): common_rows([0, 1, 1, 1]),
                ("late", 0): common_rows([1, 1, 1, 1]), ("late", 1): common_rows([1, 1, 1, 0])}
    folders = {key: ROOT / "models" / f"{key[0]}{key[1]}" for key in run_rows}
    per_seed = masked_lora.per_seed_table(run_rows, folders, ROOT)
    assert list(per_seed["score"]) == [0.5, 0.75, 1.0, 0.75] and per_seed["folder"][0] == "models/LoRA (no mask)0"
    rows = {"LoRA (no mask)": lora_ablation.seed_average(run_rows_of(run_rows, "LoRA (no mask)")),
            "late": lora_ablation.seed_average(run_rows_of(run_rows, "late"))}
    summary = masked_lora.summary_table(rows, per_seed).set_index("model")
    assert summary.loc["late", "score"] == 0.875 and summary.loc["late", "seeds"] == 2
    differences = masked_lora.per_seed_differences(run_rows, "LoRA (no mask)", "late", [0, 1])
    assert differences == {0: pytest.approx(0.5), 1: pytest.approx(0.0)}
    claim = masked_lora.claim8(run_rows, "LoRA (no mask)", "late", [0, 1], "organism", 60)
    assert claim["claim"] == "8" and claim["effect"] == pytest.approx(0.25)
    assert "per-seed paired differences seed 0 +0.500, seed 1 +0.000" in claim["note"]
    assert claim["note"].endswith("; organism, 60 steps") and "reference" in claim
    line = masked_lora.mimic_line(rows, "LoRA (no mask)", "late", "why")
    # four questions: unmasked LoRA's interval reaches the blind baseline (0.25), so the change is not read
    assert line.startswith("MIMIC mean over tasks (why): not testable here (floor)")


def run_rows_of(run_rows: dict, label: str) -> list:
    return [rows for (name, _), rows in run_rows.items() if name == label]
