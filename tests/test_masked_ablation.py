"""Notebook 05's masked-LoRA ablation: specs resolved to layers before training (duplicates trained once,
an unresolvable `auto` dropped with a reason), folder names later notebooks read, seed-averaged scores that
keep Listing micro, and a seed that fixes LoRA's initial matrices too."""

from __future__ import annotations

import pytest
import torch

from eval_worker import tiny_qwen_adapter
from finetune_worker import conversations
from mimic_utils.analysis import stats
from mimic_utils.training import finetune

ABLATION = {"no mask": "none", "early": "first_half", "late": "second_half", "auto": "auto"}


def test_auto_that_repeats_late_is_trained_once_and_reported_under_both_names():
    distinct, aliases, notes = finetune.resolve_ablation(ABLATION, 24, auto_layer=12)
    assert distinct == {"no mask": (), "early": tuple(range(12)), "late": tuple(range(12, 24))}
    assert aliases == {"auto": "late"}
    assert len(notes) == 1 and "same layers as 'late'" in notes[0]


def test_a_distinct_auto_is_trained_and_a_missing_one_is_dropped_with_a_reason():
    distinct, aliases, _ = finetune.resolve_ablation(ABLATION, 24, auto_layer=18)
    assert distinct["auto"] == tuple(range(18, 24)) and not aliases
    distinct, aliases, notes = finetune.resolve_ablation(ABLATION, 24, auto_layer=None)
    assert "auto" not in distinct and not aliases
    assert notes and "not trained" in notes[0]


def test_the_first_seed_keeps_the_folder_later_notebooks_read():
    label = finetune.variant_label("late", (2, 3))
    assert label == "masked LoRA (late)" and finetune.variant_label("no mask", ()) == "LoRA (no mask)"
    assert finetune.model_folder(label, 0, 0) == "masked_LoRA_late"
    assert finetune.model_folder(label, 2, 0) == "masked_LoRA_late_seed2"
    assert finetune.model_folder("data-centric + masked", 0, 0) == "data-centric_plus_masked"


def listing_row(question: str, tp: int, n_pred: int, n_gt: int) -> dict:
    return {"id": question, "task": "listing", "true_positive": tp, "n_pred": n_pred, "n_gt": n_gt,
            "score": 2 * tp / (n_pred + n_gt)}


def test_seed_average_averages_scores_and_keeps_listing_micro():
    first = [{"id": "a", "task": "common", "score": 1.0}, {"id": "b", "task": "common", "score": 0.0}]
    second = [{"id": "b", "task": "common", "score": 1.0}, {"id": "a", "task": "common", "score": 1.0}]
    averaged = {r["id"]: r for r in finetune.seed_average([first, second])}
    assert (averaged["a"]["score"], averaged["b"]["score"], averaged["a"]["seeds"]) == (1.0, 0.5, 2)
    runs = [[listing_row("q", 1, 2, 2)], [listing_row("q", 2, 4, 2)]]
    pooled = stats.score(runs[0] + [{**runs[1][0], "id": "r"}])  # micro F1 over both seeds' predictions
    assert stats.score(finetune.seed_average(runs)) == pytest.approx(pooled)
    with pytest.raises(ValueError, match="different questions"):
        finetune.seed_average([first, first[:1]])


def test_a_seed_fixes_the_lora_initialisation_and_the_batches(tmp_path):
    data = conversations(tmp_path / "img", 8)
    config = finetune.FinetuneConfig(steps=1, lr=1e-2, batch=2, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    weights = []
    for run, seed in enumerate((3, 3, 4)):
        adapter = tiny_qwen_adapter()
        torch.manual_seed(100 + run)  # whatever the global state before, the seed decides
        finetune.train_masked_lora(adapter, (1,), data, config, tmp_path / f"run{run}", seed)
        assert adapter.mask_layers == (1,)
        weights.append({n: p.detach().clone() for n, p in adapter.model.named_parameters()})
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
    assert any(not torch.equal(weights[0][n], weights[2][n]) for n in weights[0])
