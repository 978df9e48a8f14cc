"""The statistics module against known values, and the one rule for words."""

import math

import pandas as pd
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


def counting_rows(scores, gts, prefix="q", task="counting"):
    """0/1 rows of one counting cell with the given ground truths (the blind baseline follows them)."""
    return [{"id": f"{prefix}{i}", "task": task, "score": float(s), "gt": g, "scored_as": "counting"}
            for i, (s, g) in enumerate(zip(scores, gts, strict=True))]


def test_blind_adjusted_effect_removes_a_change_of_the_answer_distribution():
    # 1 image: 30 of 40 answers are "2" (blind 0.75), the model scores 0.90; 10 images: four answers equally
    # often (blind 0.25), the model scores 0.35. Raw: -0.55; above the blind baseline: +0.10 and +0.15
    one = counting_rows([1] * 36 + [0] * 4, ["2"] * 30 + ["3"] * 10, "a")
    ten = counting_rows([1] * 14 + [0] * 26, ["1", "2", "3", "4"] * 10, "b")
    diff = stats.difference(one, ten)
    assert not diff["paired"] and diff["diff"] == pytest.approx(-0.55) and diff["hi"] < 0
    adjusted = diff["adjusted"]
    assert (adjusted["blind_a"], adjusted["blind_b"]) == (pytest.approx(0.75), pytest.approx(0.25))
    assert adjusted["diff"] == pytest.approx(-0.05) and adjusted["lo"] < 0 < adjusted["hi"]
    # the verdict is read on the adjusted interval: the raw fall is the answers' distribution, not the model
    assert stats.read_interval(diff) == (adjusted["lo"], adjusted["hi"])
    assert stats.verdict(*stats.read_interval(diff), -1) == "inconclusive"
    assert stats.verdict(diff["lo"], diff["hi"], -1) == "reproduced"
    # its interval comes from the same resample as the raw one: same questions drawn, so not wider than the
    # raw interval plus the spread of two blind baselines drawn independently
    assert adjusted["hi"] - adjusted["lo"] < (diff["hi"] - diff["lo"]) + 0.4
    assert "score − blind: no detectable change" in stats.change_sentence("m", "1 image", "10 images", diff)
    # two models on the same questions share their blind baseline, and so do different questions with the
    # same answer distribution: nothing to adjust
    assert "adjusted" not in stats.difference(one, counting_rows([0] * 40, ["2"] * 30 + ["3"] * 10, "a"))
    assert "adjusted" not in stats.difference(one, counting_rows([0] * 40, ["3"] * 10 + ["2"] * 30, "z"))
    assert stats.answer_shares(one) == {"counting": {"2": 0.75, "3": 0.25}}


def test_blind_rows_score_the_constant_answer_per_question():
    cell = counting_rows([0, 0, 0, 0], ["2", "2", "2", "3"])
    assert [r["score"] for r in stats.blind_rows(cell)] == [1, 1, 1, 0]
    assert [r["id"] for r in stats.blind_rows(cell)] == ["q0", "q1", "q2", "q3"]
    mixed = cell + counting_rows([0, 0], ["5", "6"], "z", task="other")
    assert stats.blind_mean(mixed) == pytest.approx((0.75 + 0.5) / 2)


REF_ABOVE = stats.reference("1 image", 0.62, 0.58, 0.66, 0.24)
REF_AT_FLOOR = stats.reference("0 distractors", 0.70, 0.64, 0.76, 0.695)


def test_each_verdict_from_hand_made_numbers():
    assert stats.verdict(-0.5, -0.4, -1, reference=REF_ABOVE) == "reproduced"
    assert stats.verdict(0.1, 0.3, -1, reference=REF_ABOVE) == "opposite"
    assert stats.verdict(-0.1, 0.05, -1, reference=REF_ABOVE) == "inconclusive"
    # a clear fall read from a reference condition at its blind baseline is not read at all
    assert stats.verdict(-0.75, -0.62, -1, reference=REF_AT_FLOOR) == "not testable here (floor)" == stats.FLOOR
    below = stats.reference("base on scene OOD", 0.16, 0.12, 0.20, 0.25, "chance")
    assert stats.verdict(0.1, 0.2, +1, reference=below) == stats.FLOOR
    assert stats.verdict(0.89, 0.89, +1, analytic=True) == "analytic, not measured" == stats.ANALYTIC
    assert stats.verdict(0.1, 0.2, +1) == "reproduced"  # no reference: nothing to guard (a compute claim)
    assert stats.baseline_word(REF_AT_FLOOR) == "not distinguishable from" and stats.baseline_word(below) == "below"


def test_floor_sentence_gives_both_numbers_and_does_not_read_the_change():
    diff = {"a": 0.70, "b": 0.015, "diff": -0.685, "lo": -0.75, "hi": -0.62}
    line = stats.change_sentence("m, counting accuracy", "0 distractors", "9 distractors", diff,
                                 reference=REF_AT_FLOOR)
    assert line.startswith("m, counting accuracy: not testable here (floor)")
    assert "0.70 [95% CI 0.64, 0.76]" in line and "blind baseline 0.69" in line and "is not read" in line
    assert "falls" not in line
    assert stats.change_sentence("m", "a", "b", diff, reference=REF_ABOVE).startswith("m: falls from a (0.70)")
    # a reference read back from metrics.json with an undefined interval (null) is not above anything
    undefined = {**REF_ABOVE, "lo": None, "hi": None}
    assert not stats.above_baseline(undefined) and "[95% CI —, —]" in stats.floor_sentence("m", undefined)


def test_combined_verdict_of_a_claim_in_parts():
    assert stats.combine_verdicts(["reproduced", "reproduced"]) == "reproduced"
    assert stats.combine_verdicts(["opposite", "opposite"]) == "opposite"
    assert stats.combine_verdicts(["reproduced", "inconclusive"]) == "inconclusive"
    assert stats.combine_verdicts(["reproduced", "opposite"]) == "inconclusive"  # the parts disagree
    assert stats.combine_verdicts(["reproduced", stats.FLOOR]) == stats.FLOOR
    assert stats.combine_verdicts([stats.FLOOR, stats.FORMAT]) == stats.FORMAT
    assert stats.combine_verdicts([]) == "missing"


def seed_runs(per_seed_right: list[int], n: int = 100, prefix: str = "q") -> list[list[dict]]:
    """One run per seed over the same ``n`` questions (two tasks): the first ``right`` of each task right."""
    runs = []
    for right in per_seed_right:
        rows = []
        for task in ("a", "b"):
            rows += [{"id": f"{prefix}{task}{i}", "task": task, "score": float(i < right), "gt": str(i % 4),
                      "scored_as": "counting"} for i in range(n)]
        runs.append(rows)
    return runs


def test_seed_bootstrap_scores_listing_by_micro_f1_when_a_run_mixes_tasks():
    """Claim 8's runs hold every task: Listing inside them is micro F1, as in ``estimate``, not the mean of
    per-question F1 (which a score array of the whole run would give)."""
    def run(prefix: str, hits: int) -> list[dict]:
        rows = [{"id": f"c{i}", "task": "counting", "score": float(i < hits), "gt": "1", "scored_as": "counting"}
                for i in range(10)]
        # one question with 9 ground-truth items all found, nine with one item missed: micro F1 0.9, mean F1 0.1
        rows += [{"id": f"l{i}", "task": "listing", "scored_as": "listing", "gt": "x",
                  "true_positive": 9.0 if i == 0 else 0.0, "n_pred": 9.0 if i == 0 else 0.0,
                  "n_gt": 9.0 if i == 0 else 1.0, "score": 1.0 if i == 0 else 0.0} for i in range(10)]
        return rows

    a, b = run("a", 4), run("b", 6)
    found = stats.seed_difference([a], [b])
    assert found["a"] == pytest.approx(stats.estimate(a)["score"])  # (0.4 + micro F1 of listing) / 2
    assert found["diff"] == pytest.approx(stats.difference(a, b, paired=True)["diff"])


def test_seed_bootstrap_resamples_seeds_and_questions():
    base = seed_runs([40, 40, 40])
    agree = stats.seed_difference(base, seed_runs([50, 50, 50]))
    disagree = stats.seed_difference(base, seed_runs([65, 40, 45]))
    # both average +0.10 over seeds; seeds that disagree widen the interval
    assert agree["diff"] == pytest.approx(0.10) and disagree["diff"] == pytest.approx(0.10)
    assert agree["per_seed"] == pytest.approx([0.1, 0.1, 0.1]) and agree["seed_sd"] == pytest.approx(0.0)
    assert disagree["per_seed"] == pytest.approx([0.25, 0.0, 0.05])
    assert disagree["seed_sd"] == pytest.approx(float(pd.Series([0.25, 0.0, 0.05]).std()))
    assert (disagree["hi"] - disagree["lo"]) > 1.5 * (agree["hi"] - agree["lo"])
    assert disagree["lo"] < 0.05 and agree["lo"] > 0.05
    assert agree["a"] == pytest.approx(0.40) and agree["a_lo"] < 0.40 < agree["a_hi"]
    # one seed: the paired bootstrap over questions
    one = stats.seed_difference(base[:1], seed_runs([50])[:1])
    paired = stats.difference(base[0], seed_runs([50])[0])
    assert one["diff"] == pytest.approx(paired["diff"]) and math.isnan(one["seed_sd"])
    assert one["hi"] - one["lo"] == pytest.approx(paired["hi"] - paired["lo"], abs=0.02)
    with pytest.raises(ValueError, match="same seeds"):
        stats.seed_difference(base, base[:2])


def test_claims_table_reads_every_verdict_by_the_rule_and_names_what_is_missing():
    from mimic_utils.analysis import claims

    up = claims.claim_entry("7", 0.16, 0.10, 0.22, "MIMIC mean, finetuned − base", n=400, reference=REF_ABOVE)
    down = claims.claim_entry("1", -0.5, -0.6, -0.4, "four-task mean, 10 − 1 images", reference=REF_ABOVE)
    flat = claims.claim_entry("8", 0.01, -0.02, 0.04, "masked − unmasked LoRA", reference=REF_ABOVE)
    floor = claims.claim_entry("4", -0.68, -0.75, -0.62, "0 → 9 distractors", reference=REF_AT_FLOOR)
    analytic = claims.claim_entry("9", 0.89, 0.89, 0.89, "analytic FLOPs saving", analytic=True)
    adjusted = claims.claim_entry("3", -0.5, -0.6, -0.4, "spread", reference=REF_ABOVE,
                                  adjusted={"diff": 0.02, "lo": -0.05, "hi": 0.09, "blind_a": 0.6, "blind_b": 0.1})
    wrong_way = claims.claim_entry("6", 0.28, 0.25, 0.31, "late − early", reference=REF_ABOVE)
    verdicts = [e["verdict"] for e in (up, down, flat, floor, analytic, adjusted, wrong_way)]
    assert verdicts == ["reproduced", "reproduced", "inconclusive", stats.FLOOR, stats.ANALYTIC, "inconclusive",
                        "opposite"]
    old = {"claim": "2", "effect": 0.47, "lo": 0.43, "hi": 0.51, "measure": "length effect", "verdict": "reproduced"}
    old_nine = {"claim": "9", "effect": 0.89, "lo": 0.89, "hi": 0.89, "measure": "analytic", "verdict": "reproduced"}
    rows = claims.claims_table({"02": {"claims": {"1": down, "2": old, "3": adjusted, "4": floor}},
                                "03": {"claims": {"6": wrong_way}}, "04": {"claims": {"7": up}},
                                "05": {"claims": {"8": flat, "9": old_nine}}})
    assert [r["claim"] for r in rows] == [str(i) for i in range(1, 12)]
    by_claim = {r["claim"]: r for r in rows}
    # an entry from before the floor guard is not read as reproduced: the key it lacks is named
    assert by_claim["2"]["verdict"] == "missing" and "claims.2.reference" in by_claim["2"]["measure"]
    assert "+0.47 [95% CI +0.43, +0.51]" in by_claim["2"]["measure"]
    # a compute entry without measured parts is a formula, whatever verdict it was written with
    assert by_claim["9"]["verdict"] == stats.ANALYTIC and "claims.9.parts" in by_claim["9"]["note"]
    assert by_claim["5"]["verdict"] == "missing" and "notebook 02" in by_claim["5"]["measure"]
    assert by_claim["10"]["verdict"] == "missing" and "notebook 06" in by_claim["10"]["measure"]
    text = claims.claims_markdown(rows)
    assert "**opposite**" in text and "+0.160 [+0.100, +0.220]" in text
    assert "− blind: +0.020 [-0.050, +0.090]" in text and "0 distractors 0.70 [95% CI 0.64, 0.76], blind 0.69" in text
    with pytest.raises(KeyError):
        claims.claim_entry("12", 0, 0, 0, "x")
