"""The statistics module against known values, and the one rule for words."""

import math

import pytest

from mimic_utils.analysis import stats


def rows(scores, task="counting", prefix="q"):
    return [{"id": f"{prefix}{i}", "task": task, "score": float(s), "gt": 1, "scored_as": "counting"}
            for i, s in enumerate(scores)]


def test_wilson_known_values():
    # Wilson 95% interval of 8/10 is (0.4902, 0.9433) (Newcombe 1998, table I)
    lo, hi = stats.wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert stats.wilson(0, 20)[0] == 0.0 and stats.wilson(0, 20)[1] == pytest.approx(0.1611, abs=1e-4)
    assert all(math.isnan(v) for v in stats.wilson(0, 0))


def test_estimate_uses_wilson_for_accuracy_and_bootstrap_for_listing():
    cell = stats.estimate(rows([1] * 8 + [0] * 2))
    assert cell["method"] == "wilson" and cell["score"] == 0.8 and cell["n"] == 10
    listing = [{"id": str(i), "task": "listing", "score": 0.0, "true_positive": tp, "n_pred": 2, "n_gt": 2}
               for i, tp in enumerate([2, 1, 0, 2, 2, 1])]
    cell = stats.estimate(listing)
    # micro F1: tp 8 of 12 predicted and 12 true → 0.667
    assert cell["method"] == "bootstrap" and cell["score"] == pytest.approx(8 / 12)
    assert cell["lo"] < cell["score"] < cell["hi"]
    assert stats.estimate(listing, seed=3) == stats.estimate(listing, seed=3)  # seeded


def test_estimate_over_tasks_is_the_mean_of_task_scores():
    mixed = rows([1, 1, 1, 1], task="a") + rows([0, 0, 0, 1, 1, 1, 1, 1], task="b", prefix="b")
    cell = stats.estimate(mixed)
    assert cell["score"] == pytest.approx((1.0 + 5 / 8) / 2) and cell["method"] == "bootstrap"


def test_paired_difference_excludes_zero_when_one_model_wins_everywhere():
    a, b = rows([0] * 60 + [1] * 40), rows([1] * 100)
    diff = stats.difference(a, b)
    assert diff["paired"] and diff["diff"] == pytest.approx(0.6)
    assert diff["lo"] > 0.4 and diff["hi"] <= 0.7
    assert stats.change_word(diff["lo"], diff["hi"]) == "rises"
    assert diff["p_mcnemar"] == pytest.approx(2 * 0.5 ** 60)
    assert stats.verdict(diff["lo"], diff["hi"], expected_sign=+1) == "reproduced"
    assert stats.verdict(diff["lo"], diff["hi"], expected_sign=-1) == "opposite"


def test_no_detectable_change_when_the_interval_contains_zero():
    a = rows([1, 0] * 20)
    b = rows([0, 1] * 20)  # same accuracy, answers swapped
    diff = stats.difference(a, b)
    assert diff["diff"] == 0 and diff["lo"] < 0 < diff["hi"]
    assert stats.change_word(diff["lo"], diff["hi"]) == "no detectable change"
    assert stats.verdict(diff["lo"], diff["hi"], expected_sign=-1) == "inconclusive"
    assert diff["p_mcnemar"] == pytest.approx(1.0)
    assert "[95% CI" in stats.change_sentence("score", "1 image", "10 images", diff)


def test_unpaired_difference_on_different_questions():
    a, b = rows([1] * 30 + [0] * 10), rows([1] * 5 + [0] * 35, prefix="z")
    diff = stats.difference(a, b)
    assert not diff["paired"] and diff["diff"] == pytest.approx(5 / 40 - 30 / 40)
    assert diff["hi"] < 0 and "p_mcnemar" not in diff


def test_paired_needs_the_same_questions():
    with pytest.raises(ValueError, match="same questions"):
        stats.difference(rows([1, 0]), rows([1, 0, 1]), paired=True)


def test_difference_of_differences():
    cells = {"a": rows([1] * 20 + [0] * 20, prefix="a"), "b": rows([1] * 20 + [0] * 20, prefix="a"),
             "c": rows([0] * 40, prefix="c"), "d": rows([1] * 30 + [0] * 10, prefix="c")}
    dd = stats.difference_of_differences(cells)
    assert dd["diff"] == pytest.approx(0.75) and dd["lo"] > 0.5


def test_blind_baseline_is_the_best_constant_answer():
    counting = [{"gt": g, "scored_as": "counting", "score": 0.0} for g in (2, 2, 2, 3)]
    assert stats.blind_baseline(counting) == 0.75
    listing = [{"gt": g, "scored_as": "listing", "score": 0.0} for g in ("bus, car", "bus, car", "bus")]
    # answering "bus, car" always: tp 2+2+1 of 6 predicted and 5 true → F1 = 2·(5/6)(1)/(5/6+1)
    assert stats.blind_baseline(listing) == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert stats.blind_baseline([{"n_options": 4, "gt": "A"}, {"n_options": 2, "gt": "B"}]) == 0.375


def test_claims_table_keeps_missing_claims_and_takes_verdicts_from_the_rule():
    from mimic_utils.analysis import claims

    up = claims.claim_entry("7", 0.16, 0.10, 0.22, "MIMIC mean, finetuned − base", n=400)
    down = claims.claim_entry("1", -0.5, -0.6, -0.4, "four-task mean, 10 − 1 images")
    flat = claims.claim_entry("8", 0.01, -0.02, 0.04, "masked − unmasked LoRA")
    wrong_way = claims.claim_entry("2", -0.1, -0.2, -0.05, "length effect")
    assert [e["verdict"] for e in (up, down, flat, wrong_way)] == ["reproduced", "reproduced", "inconclusive",
                                                                   "opposite"]
    rows = claims.claims_table({"02": {"claims": {"1": down, "2": wrong_way}}, "04": {"claims": {"7": up}},
                                "05": None})
    assert [r["claim"] for r in rows] == [str(i) for i in range(1, 10)]
    assert rows[2]["verdict"] == "missing" and "notebook 02" in rows[2]["measure"]
    text = claims.claims_markdown(rows)
    assert "**opposite**" in text and "+0.160 [+0.100, +0.220]" in text
    with pytest.raises(KeyError):
        claims.claim_entry("10", 0, 0, 0, "x")
