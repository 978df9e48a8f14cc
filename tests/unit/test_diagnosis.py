"""The study's tables, contrasts, findings and claims: cells, intervals, baselines and the one rule for words."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from mimic_utils.analysis import diagnosis, sentences, stats


#: Ground truths each fixture cell cycles through, so a constant answer is right a quarter of the time.
ANSWERS = {"counting": ["2", "3", "4", "5"], "listing": ["bus, car", "cat, dog", "cup, fork", "tie, bag"],
           "common": ["bus", "cat", "cup", "tie"], "oddone": ["bus", "cat", "cup", "tie"]}


def rows(task: str, scores: list[float], experiment: str = "images", prefix: str = "q", gt: str | None = None,
         **knobs) -> list[dict]:
    """Prediction rows of one cell (0/1 scores; Listing rows carry their micro counts); the ground truths
    cycle through four answers (blind baseline 0.25) unless ``gt`` fixes one for every question."""
    knobs = {"n_images": 1, "spread": 1, "distractors": 0, "k": 1, **knobs}
    family = task.split("_")[0]
    out = []
    for i, s in enumerate(scores):
        answer = gt if gt is not None else ANSWERS[family][i % 4]
        row = {"id": f"{prefix}-{task}-{experiment}-{json.dumps(knobs, sort_keys=True)}-{i}", "task": task,
               "family": family, "scored_as": family, "experiment": experiment, "knobs": dict(knobs), "gt": answer,
               "score": float(s)}
        if family == "listing":
            row.update(true_positive=int(2 * s), n_pred=2, n_gt=2)
        out.append(row)
    return out


def images_sweep(good: int, bad: int, counts=(1, 10), prefix: str = "q") -> list[dict]:
    """The four headline tasks at each image count: ``good`` right of 20 at the first count, ``bad`` at the
    last, and Odd-One from 3 images."""
    found = []
    for n in counts:
        right = good if n == counts[0] else bad
        for task in diagnosis.HEADLINE_TASKS:
            found += rows(task, [1] * right + [0] * (20 - right), n_images=n, prefix=prefix)
    for n in (3, counts[-1]):
        found += rows("oddone", [1] * 10 + [0] * 10, n_images=n, prefix=prefix)
    return found


def test_a_per_question_random_knob_does_not_split_a_cell():
    a = {"id": "a", "experiment": "images", "task": "counting_balanced", "knobs": {"n_images": 4, "spread": 1}}
    b = {"id": "b", "experiment": "images", "task": "counting_balanced", "knobs": {"n_images": 4, "spread": 3}}
    odd = [{"id": f"o{i}", "experiment": "images", "task": "oddone", "knobs": {"n_images": 4, "majority": m}}
           for i, m in enumerate(("cat", "dog"))]
    assert diagnosis.cell_key(a) == diagnosis.cell_key(b)
    assert [r["id"] for r in diagnosis.cap_per_cell([a, b, *odd], 1)] == ["a", "o0"]
    assert diagnosis.cap_per_cell([a, b], None) == [a, b]


def test_the_k_sweep_cell_is_image_count_and_k():
    one = {"experiment": "k", "task": "listing", "knobs": {"n_images": 1, "k": 2, "spread": 1}}
    four = {"experiment": "k", "task": "listing", "knobs": {"n_images": 4, "k": 2, "spread": 3}}
    assert diagnosis.cell_key(one) == ("k", "listing", 1, 2)
    assert diagnosis.cell_key(four) == ("k", "listing", 4, 2)


def test_tables_carry_intervals_and_the_blind_baseline():
    cell = rows("counting_unbalanced", [1] * 8 + [0] * 2, gt="2") + rows("counting_unbalanced", [0] * 10,
                                                                          prefix="z", gt="3", n_images=2)
    cell[-1]["gt"] = "2"
    table = diagnosis.knob_table(cell, "images")
    assert list(table.columns) == ["task", "n_images", "n", "score", "lo", "hi", "blind"]
    first = table.iloc[0]
    assert first["score"] == 0.8 and first["lo"] == pytest.approx(0.4902, abs=1e-4) and first["blind"] == 1.0
    assert table.iloc[1]["blind"] == pytest.approx(0.9)  # "3" answered to all: 9 of 10


def test_the_headline_mean_is_like_for_like_and_odd_one_stands_apart():
    sweep = images_sweep(16, 4, counts=(1, 2, 10))
    sweep = [r for r in sweep if not (r["task"] == "listing" and r["knobs"]["n_images"] == 2)]
    table = diagnosis.headline_table(sweep)
    mean = table[table["task"] == diagnosis.MEAN_LABEL]
    assert list(mean["n_images"]) == [1, 10]  # 2 images lacks Listing, so no mean there
    assert mean.iloc[0]["score"] == pytest.approx(0.8) and mean.iloc[0]["lo"] < 0.8 < mean.iloc[0]["hi"]
    assert list(table[table["task"] == "oddone"]["n_images"]) == [3, 10]


def test_model_tables_put_the_model_first():
    tables = diagnosis.model_tables({"m": images_sweep(16, 4)})
    assert set(tables) == {"per_task", "headline", "images"}
    assert list(tables["per_task"].columns[:2]) == ["model", "task"]
    listing = tables["per_task"].set_index("task").loc["listing"]
    assert {"precision", "recall"} <= set(tables["per_task"].columns) and listing["precision"] == 0.5


def test_findings_use_the_rule_and_state_the_paper_direction():
    sweep = images_sweep(18, 2)
    found = diagnosis.sweep_contrast(sweep, "images", "m, four-task mean", diagnosis.HEADLINE_TASKS)
    assert found["diff"] == pytest.approx(-0.8) and not found["paired"] and found["hi"] < 0
    line = sentences.finding(found, -1)
    assert line.startswith("m, four-task mean: falls from 1 image (0.90) to 10 images (0.10)")
    assert "[95% CI" in line and "the paper: falls (verdict: reproduced)" in line
    level = diagnosis.sweep_contrast(images_sweep(10, 10), "images", "m", diagnosis.HEADLINE_TASKS)
    assert "no detectable change" in sentences.finding(level, -1) and "inconclusive" in sentences.finding(level, -1)


def lifted(base: list[dict], n: int, first: int, count: int, score: float) -> list[dict]:
    """``base`` with the questions ``first .. first + count - 1`` of every task at ``n`` images set to ``score``."""
    out = []
    for row in base:
        row = dict(row)
        index = int(row["id"].rsplit("-", 1)[1])
        if row["knobs"]["n_images"] == n and first <= index < first + count:
            row.update(score=score, **({"true_positive": int(2 * score)} if "true_positive" in row else {}))
        out.append(row)
    return out


def pooled(gain_at_many: int, gain_r2: int | None = None, loss_at_one: int = 0) -> dict[int, list[dict]]:
    """The same questions at r = 1, 2 and 4 (10 of 20 right per task at 1 image, 5 at 10 images): pooling
    adds ``gain_at_many`` right answers per task at 10 images (``gain_r2`` at r = 2, the same by default)
    and takes ``loss_at_one`` away at 1 image."""
    base = [r for r in images_sweep(10, 5) if r["task"] != "oddone"]

    def at(gain: int) -> list[dict]:
        return lifted(lifted(base, 10, 5, gain, 1.0), 1, 0, loss_at_one, 0.0)

    return {1: base, 2: at(gain_at_many if gain_r2 is None else gain_r2), 4: at(gain_at_many)}


def test_length_effect_is_the_pooling_gain_at_many_images_minus_at_one():
    effect = diagnosis.length_effect(pooled(10), 10, 4, "m")
    assert effect["a"] == pytest.approx(0.0) and effect["b"] == pytest.approx(0.5)
    assert effect["diff"] == pytest.approx(0.5) and effect["lo"] > 0
    table = diagnosis.pooling_table(pooled(10))
    mean = table[(table["task"] == diagnosis.MEAN_LABEL) & (table["pool"] == 4)].set_index("n_images")
    assert mean.loc[10, "gain"] == pytest.approx(0.5) and mean.loc[10, "length_effect"] == pytest.approx(0.5)
    assert mean.loc[1, "gain"] == 0 and math.isnan(mean.loc[1, "length_effect"])
    # one interval for the gain at 10 images, whether read from the table or from the length effect
    assert (mean.loc[10, "gain_lo"], mean.loc[10, "gain_hi"]) == pytest.approx(
        (effect["gain_at_n"]["lo"], effect["gain_at_n"]["hi"]), abs=1e-4)


def test_claim_two_is_read_on_the_pooling_gain_at_many_images_not_on_the_length_effect():
    gain = diagnosis.diagnosis_claims(diagnosis.diagnosis_contrasts([], pooled(10), "m", 4), "m")["2"]
    assert gain["verdict"] == "reproduced" and gain["effect"] == pytest.approx(0.5)
    assert [p["name"] for p in gain["parts"]] == ["r = 4", "r = 2"]
    assert gain["reference"]["label"] == "1 image, no pooling" and gain["reference"]["score"] == pytest.approx(0.5)
    assert "r=4" in gain["measure"] and "r=2" in gain["measure"] and "not the verdict" in gain["note"]
    # pooling destroys information at 1 image and changes nothing at 10: a large length effect, no gain
    losing = diagnosis.diagnosis_contrasts([], pooled(0, loss_at_one=8), "m", 4)
    assert losing["pooling_length"]["diff"] == pytest.approx(0.4) and losing["pooling_length"]["lo"] > 0
    claim = diagnosis.diagnosis_claims(losing, "m")["2"]
    assert claim["effect"] == 0 and claim["verdict"] == "inconclusive"
    assert "length effect" in claim["note"] and "+0.40" in claim["note"]
    # the two factors disagree: reproduced only if both are
    split = diagnosis.diagnosis_claims(diagnosis.diagnosis_contrasts([], pooled(10, gain_r2=0), "m", 4), "m")["2"]
    assert [p["verdict"] for p in split["parts"]] == ["reproduced", "inconclusive"]
    assert split["verdict"] == "inconclusive"


def test_claim_pool_factor_keeps_four_tokens_per_image():
    budget = pd.DataFrame({"n_images": [1, 1, 1, 1, 10], "pool": [1, 2, 4, 8, 4],
                           "vision_tokens": [16, 8, 4, 2, 40]})
    per_image = diagnosis.tokens_per_image(budget)
    assert per_image == {1: 16, 2: 8, 4: 4, 8: 2}
    assert diagnosis.claim_pool_factor(per_image) == 4 and diagnosis.claim_pool_factor({1: 16}) == 1


def k_sweep(counting: tuple[int, int, int], listing: tuple[int, int, int], n_images: int = 1) -> list[dict]:
    """The k sweep at one image count: right answers of 20 at k = 1, 2, 3 for counting and for listing."""
    found = []
    for k, (c, l) in enumerate(zip(counting, listing), start=1):
        found += rows("counting_unbalanced", [1] * c + [0] * (20 - c), "k", n_images=n_images, k=k)
        found += rows("listing", [1] * l + [0] * (20 - l), "k", n_images=n_images, k=k)
    return found


def diagnosis_sweep(spread_start: int = 15, counting_k1: int = 15) -> list[dict]:
    sweep = images_sweep(18, 2)
    sweep += rows("counting_balanced", [1] * spread_start + [0] * (20 - spread_start), "spread", n_images=6, spread=1)
    sweep += rows("counting_balanced", [1] * 3 + [0] * 17, "spread", n_images=6, spread=6)
    sweep += rows("counting_unbalanced", [1] * 15 + [0] * 5, "distractors")
    sweep += rows("counting_unbalanced", [1] * 14 + [0] * 6, "distractors", n_images=10, distractors=9)
    sweep += k_sweep((counting_k1, 10, 5), (15, 18, 5)) + k_sweep((15, 10, 5), (15, 10, 5), n_images=4)
    return sweep


def test_diagnosis_claims_one_to_five():
    contrasts = diagnosis.diagnosis_contrasts(diagnosis_sweep(), pooled(10), "m", 4)
    assert {"images", "oddone", "pooling", "pooling_r2", "pooling_length", "spread", "distractors",
            "k_counting_unbalanced", "k_listing", "k_listing_at_4"} <= set(contrasts)
    claims = diagnosis.diagnosis_claims(contrasts, "m")
    assert sorted(claims, key=int) == ["1", "2", "3", "4", "5"]
    assert claims["1"]["verdict"] == "reproduced" and claims["2"]["verdict"] == "reproduced"
    # different questions at the two ends, but the same answer distribution: nothing to adjust
    assert "adjusted" not in claims["1"] and "same answer distribution" in claims["1"]["measure"]
    assert claims["1"]["reference"]["label"] == "1 image" and claims["1"]["reference"]["baseline"] == 0.25
    assert claims["3"]["verdict"] == "reproduced" and "same image count, 6" in claims["3"]["measure"]
    assert claims["4"]["verdict"] == "inconclusive"
    # claim 5: counting and listing read apart, each k curve on its own
    five = claims["5"]
    assert [p["name"] for p in five["parts"]] == ["counting_unbalanced at 1 image", "listing at 1 image"]
    assert five["verdict"] == "reproduced" and all(p["verdict"] == "reproduced" for p in five["parts"])
    assert "listing at 1 image by k: k = 1 0.75" in five["note"] and "k = 2 0.90" in five["note"]
    assert "not monotone" in five["note"] and "listing at 4 images by k" in five["note"]
    lines = diagnosis.diagnosis_findings({"m": contrasts})
    assert len(lines) == len(contrasts) and not any("±" in line for line in lines)
    assert len(diagnosis.diagnosis_findings({"m": contrasts}, ["k"])) == 4
    json.dumps(diagnosis.jsonable(contrasts), allow_nan=False)


def test_claims_at_the_floor_are_not_read():
    # spread 1 at 0 right (below blind 0.25), counting at k = 1 at the blind baseline (5 of 20)
    contrasts = diagnosis.diagnosis_contrasts(diagnosis_sweep(spread_start=0, counting_k1=5), pooled(10), "m", 4)
    claims = diagnosis.diagnosis_claims(contrasts, "m")
    assert claims["3"]["verdict"] == "not testable here (floor)"
    assert [p["verdict"] for p in claims["5"]["parts"]] == ["not testable here (floor)", "reproduced"]
    assert claims["5"]["verdict"] == "not testable here (floor)"
    line = sentences.finding(contrasts["spread"], -1)
    assert line.startswith("m, counting accuracy: not testable here (floor) — the reference condition, spread = 1,")
    assert "scores 0.00" in line and "blind baseline 0.25" in line and line.endswith(
        "(verdict: not testable here (floor)).")


def test_a_knob_that_moves_the_answers_is_read_above_the_blind_baseline():
    # 1 image: every answer "2" (blind 1.0 for counting) — the model is right 18 of 20 by answering "2"
    sweep = rows("counting_balanced", [1] * 18 + [0] * 2, gt="2") + rows("counting_balanced", [1] * 5 + [0] * 15,
                                                                        prefix="z", n_images=10)
    found = diagnosis.sweep_contrast(sweep, "images", "m", ("counting_balanced",))
    assert found["reference"]["baseline"] == 1.0 and not stats.above_baseline(found["reference"])
    assert found["adjusted"]["blind_a"] == 1.0 and found["adjusted"]["blind_b"] == 0.25
    assert found["adjusted"]["diff"] == pytest.approx((0.25 - 0.25) - (0.9 - 1.0))
    assert stats.contrast_verdict(found, -1) == "not testable here (floor)"


def test_seeded_claim_covers_seeds_and_questions():
    base = images_sweep(10, 5)
    runs_a = [base, base, base]
    runs_b = [lifted(base, 10, 5, gain, 1.0) for gain in (10, 0, 2)]
    claim = diagnosis.seeded_claim("8", runs_a, runs_b, "LoRA (no mask)", "masked LoRA (late)", [0, 1, 2])
    assert claim["claim"] == "8" and claim["reference"]["label"].startswith("LoRA (no mask)")
    per_seed = [stats.difference(a, b)["diff"] for a, b in zip(runs_a, runs_b)]
    assert per_seed[1] == 0 and per_seed[0] > 5 * per_seed[2] > 0
    assert (f"per-seed paired differences seed 0 {per_seed[0]:+.3f}, seed 1 +0.000, seed 2 {per_seed[2]:+.3f} "
            f"(SD {pd.Series(per_seed).std():.4f})") in claim["note"]
    assert claim["effect"] == pytest.approx(sum(per_seed) / 3)
    same = diagnosis.seeded_claim("8", runs_a, [lifted(base, 10, 5, 4, 1.0)] * 3, "a", "b", [0, 1, 2])
    assert (claim["hi"] - claim["lo"]) > (same["hi"] - same["lo"])


def test_two_models_are_compared_paired_on_the_same_questions():
    base = images_sweep(16, 8)
    tuned = [dict(r, score=1.0) if r["knobs"]["n_images"] == 10 and r["task"] == "common" else r for r in base]
    tables = diagnosis.comparison_tables({"base": base, "tuned": tuned}, "base", "tuned")
    per_task = tables["diff_per_task"].set_index("task")
    assert per_task.loc["common", "diff"] == pytest.approx(0.3) and per_task.loc["common", "change"] == "rises"
    assert per_task.loc["listing", "change"] == "no detectable change"
    by_images = tables["diff_by_images"]
    single = by_images[(by_images["task"] == diagnosis.MEAN_LABEL) & (by_images["n_images"] == 1)].iloc[0]
    assert single["diff"] == 0 and single["change"] == "no detectable change"
    lines = diagnosis.comparison_findings({"base": base, "tuned": tuned}, "base", "tuned")
    assert any(line.startswith("common: rises from base") for line in lines)
    assert any("(forgetting check): no detectable change" in line for line in lines)
    claim = diagnosis.comparison_claim("7", {"base": base, "tuned": tuned}, "base", "tuned")
    assert claim["effect"] == pytest.approx(0.3 / 5) and "paired" in claim["measure"]
    assert claim["reference"]["label"] == "base, MIMIC mean over tasks" and claim["verdict"] == "reproduced"
    assert claim["n"] == len([r for r in base if r["experiment"] == "images"])  # questions, not rows of both


def test_jsonable_writes_nan_as_null():
    frame = pd.DataFrame([{"a": 1.0, "b": math.nan}])
    assert diagnosis.jsonable({"t": frame, "x": (math.inf, 2)}) == {"t": [{"a": 1.0, "b": None}], "x": [None, 2]}




def test_claim_eleven_reads_the_blank_control_per_task():
    # the same 1-image questions beside 9 blank images (same ids: paired); counting falls, listing does not
    contrasts = {}
    for task, name, right in (("counting_balanced", "blank_counting", 6), ("listing", "blank_listing", 15)):
        one = rows(task, [1] * 16 + [0] * 4, "blank")
        ten = [dict(r, knobs={**r["knobs"], "n_images": 10}, score=float(i < right),
                    **({"true_positive": 2 * int(i < right)} if task == "listing" else {})) for i, r in enumerate(one)]
        contrasts[name] = diagnosis.contrast(one, ten, f"m, {task} beside blank images", "1 image", "10 images",
                                             knob="n_images")
    claim = diagnosis.diagnosis_claims(contrasts, "m")["11"]
    assert all(contrasts[n]["paired"] and "adjusted" not in contrasts[n] for n in contrasts)
    assert [p["verdict"] for p in claim["parts"]] == ["reproduced", "inconclusive"]
    assert claim["verdict"] == "inconclusive" and "paired" in claim["measure"]


# --- the blank-image control and what the model answers ---------------------------------------------------


def padded_rows(experiment: str, task: str, n: int, scores: list[float], gt: str = "3") -> list[dict]:
    """A padded sweep's rows: question q<i> (its 1-image ``base_id``) at ``n`` images."""
    found = rows(task, scores, experiment=experiment, prefix=f"{experiment}{n}", gt=gt, n_images=n,
                 distractors=n - 1 if experiment == "distractors" else 0)
    return [{**r, "base_id": f"{task}-q{i}"} for i, r in enumerate(found)]


def blank_study() -> list[dict]:
    """Blank: 16/20 right at 1 image, 6/20 at 10 (the same questions); distractors 16 → 2; the images sweep."""
    found = []
    for task in diagnosis.BLANK_TASKS:
        found += padded_rows("blank", task, 1, [1] * 16 + [0] * 4)
        found += padded_rows("blank", task, 10, [1] * 6 + [0] * 14)
    found += padded_rows("distractors", "counting_balanced", 1, [1] * 16 + [0] * 4)
    found += padded_rows("distractors", "counting_balanced", 10, [1] * 2 + [0] * 18)
    return found + images_sweep(12, 3)


def test_padding_table_puts_the_three_ways_of_adding_images_side_by_side():
    table = diagnosis.padding_table(blank_study())
    assert set(table["padding"]) == {"blank", "distractors", "images sweep"}
    counting = table[table["task"] == "counting_balanced"].set_index(["padding", "n_images"])
    assert counting.loc[("blank", 10), "score"] == 0.3 and counting.loc[("distractors", 10), "score"] == 0.1
    assert counting.loc[("blank", 1), "blind"] == counting.loc[("blank", 10), "blind"]  # the same questions
    assert {"lo", "hi", "blind", "n"} <= set(table.columns)
    assert "distractors" not in set(table[table["task"] == "listing"]["padding"])


def test_the_blank_contrast_pairs_the_same_question_across_image_counts():
    found = diagnosis.length_contrasts(blank_study(), "m")
    blank = found["blank"]
    assert blank["paired"] and blank["n"] == 40 and blank["diff"] == pytest.approx(-0.5)
    assert blank["hi"] < 0 and found["blank_counting"]["paired"] and found["blank_listing"]["n"] == 20
    distraction = found["distraction"]  # distractors − blank images at 10 images, same questions
    assert distraction["paired"] and distraction["diff"] == pytest.approx(0.1 - 0.3)
    assert "p_mcnemar" in distraction
    # the same questions unpaired would give a wider interval than paired here (q0..q5 right at both ends)
    unpaired = diagnosis.stats.difference(diagnosis.select(blank_study(), "blank", ("counting_balanced",), n_images=1),
                                         diagnosis.select(blank_study(), "blank", ("counting_balanced",), n_images=10))
    assert not unpaired["paired"] and unpaired["hi"] - unpaired["lo"] > found["blank_counting"]["hi"] - found["blank_counting"]["lo"]


def test_paired_questions_hold_the_same_ids_at_both_ends_and_rebuild_the_contrast():
    found = diagnosis.paired_questions(blank_study())
    assert (found["a_n"], found["b_n"]) == (1, 10) and [r["id"] for r in found["a"]] == [r["id"] for r in found["b"]]
    assert {r["task"] for r in found["a"]} == set(diagnosis.BLANK_TASKS) and "true_positive" in found["a"][-1]
    again = diagnosis.stats.difference(found["a"], found["b"])
    assert again["paired"] and again["diff"] == pytest.approx(diagnosis.length_contrasts(blank_study(), "m")["blank"]["diff"])
    json.dumps(diagnosis.jsonable(found))  # fits metrics.json


def counting_answers(pairs: list[tuple[str, int | None]], n: int = 1) -> list[dict]:
    return [{"id": f"c{i}", "task": "counting_balanced", "family": "counting", "scored_as": "counting",
             "experiment": "images", "knobs": {"n_images": n}, "gt": gt, "parsed": parsed,
             "score": float(parsed is not None and str(parsed) == gt)} for i, (gt, parsed) in enumerate(pairs)]


def test_count_confusion_has_true_rows_predicted_columns_and_an_unparsed_column():
    answers = counting_answers([("1", 1), ("1", 2), ("2", 2), ("3", None), ("3", 40), ("2", 0)])
    table = diagnosis.count_confusion(answers)
    assert list(table.index) == [1, 2, 3]
    assert list(table.columns) == ["0", "1", "2", "3", ">6", diagnosis.UNPARSED]
    assert table.loc[1, "1"] == 1 and table.loc[1, "2"] == 1 and table.loc[3, diagnosis.UNPARSED] == 1
    assert table.loc[3, ">6"] == 1 and int(table.to_numpy().sum()) == 6
    clean = diagnosis.count_confusion(counting_answers([("1", 1), ("2", 3)]))
    assert diagnosis.UNPARSED not in clean.columns and ">5" not in clean.columns


def test_answer_summary_tells_a_constant_answer_from_over_counting():
    constant = counting_answers([(str(g), 1) for g in (1, 2, 3, 4, 5, 1, 2, 3, 4, 5)], n=10)
    over = counting_answers([(str(g), g + 2) for g in (1, 2, 3, 4, 5)] + [("3", None)], n=4)
    summary = diagnosis.answer_summary(constant + over).set_index("n_images")
    assert summary.loc[10, "top_answer"] == "1" and summary.loc[10, "top_share"] == 1.0
    assert summary.loc[10, "top_right"] == 0.2 and summary.loc[10, "mean_error"] == -2.0
    assert summary.loc[4, "mean_error"] == 2.0 and summary.loc[4, "over"] == pytest.approx(5 / 6, abs=1e-4)
    assert summary.loc[4, "unparsed"] == pytest.approx(1 / 6, abs=1e-4) and summary.loc[4, "distinct"] == 6
    lines = diagnosis.answer_findings(diagnosis.answer_summary(constant), "m")
    assert lines == ["m, counting_balanced at 10 images: score 0.20; the most frequent answer '1' is 100% of 10 "
                     "answers (1 distinct); parsed counts are -2.00 off on average (over 0%, under 80%, unparsed 0%); "
                     "of the 5 true counts asked it never answers 2, 3, 4, 5 (1 said)."]
    assert summary.loc[10, "counts_said"] == 0.2 and summary.loc[10, "never_said"] == "2, 3, 4, 5"
    # over-counting by two says 3, 4 and 5 (of 1..5 asked; the unparsed answer says nothing)
    assert summary.loc[4, "never_said"] == "1, 2" and summary.loc[4, "counts_said"] == 0.6
    every = counting_answers([(str(g), g) for g in (1, 2, 3)], n=2)
    assert diagnosis.answer_findings(diagnosis.answer_summary(every), "m")[0].endswith(
        "it answers each of the 3 true counts asked at least once.")
    named = [{"id": "n", "task": "common", "family": "common", "scored_as": "common", "knobs": {"n_images": 2},
              "gt": "dog", "parsed": "cat", "score": 0.0}]
    mixed = diagnosis.answer_findings(diagnosis.answer_summary(every + named), "m")
    assert [("true counts" in line) for line in mixed] == [False, True]  # common's row has no count range


def test_wrong_answers_rank_the_most_frequent_wrong_replies_per_cell():
    common = [{"id": f"o{i}", "task": "common", "family": "common", "scored_as": "common",
               "knobs": {"n_images": 4}, "gt": gt, "parsed": reply, "score": float(gt in reply.lower())}
              for i, (gt, reply) in enumerate([("dog", "cat"), ("bus", "cat"), ("car", "Car"), ("dog", "dog"),
                                               ("cup", "bus")])]
    listing = [{"id": "l", "task": "listing", "family": "listing", "scored_as": "listing",
                "knobs": {"n_images": 4}, "gt": "bus, car", "parsed": ["car", "bus", "car"], "score": 0.8}]
    table = diagnosis.wrong_answers(common + listing, top=2)
    first = table.iloc[0].to_dict()
    assert first == {"task": "common", "n_images": 4, "answer": "cat", "count": 2, "share": 0.4, "instead_of": "bus"}
    assert table[table["task"] == "common"]["answer"].tolist() == ["cat", "bus"]  # "car" was right: not wrong
    assert table[table["task"] == "listing"]["answer"].tolist() == ["bus, car"]  # items as the gt joins them


def test_count_confusions_cover_each_counting_task_at_the_image_counts_asked():
    answers = [{**r, "task": task} for task in diagnosis.COUNTING_TASKS
               for r in counting_answers([("1", 1), ("2", 3)], n=4) + counting_answers([("2", None)], n=10)]
    found = diagnosis.count_confusions(answers, (1, 4, 10))
    assert list(found) == [("counting_balanced", 4), ("counting_balanced", 10), ("counting_unbalanced", 4),
                           ("counting_unbalanced", 10)]
    assert found[("counting_balanced", 10)].loc[2, diagnosis.UNPARSED] == 1


def test_floor_check_reads_each_condition_against_its_blind_baseline():
    import pandas as pd

    def cell(task, n, score, lo, hi, blind, **knobs):
        return {"model": "m", "task": task, "n_images": n, "n": 200, "score": score, "lo": lo, "hi": hi,
                "blind": blind, **knobs}

    tables = {
        "images": pd.DataFrame([cell("common", 1, 0.9, 0.85, 0.95, 0.05), cell("listing", 1, 0.07, 0.04, 0.1, 0.06),
                                cell("common", 4, 0.3, 0.2, 0.4, 0.05)]),
        "headline": pd.DataFrame([cell(diagnosis.MEAN_LABEL, 4, 0.25, 0.22, 0.28, 0.11),
                                  cell(diagnosis.MEAN_LABEL, 10, 0.15, 0.12, 0.18, 0.10),
                                  cell("oddone", 4, 0.5, 0.4, 0.6, 0.06)]),
        "spread": pd.DataFrame([cell("counting_balanced", 4, 0.2, 0.15, 0.25, 0.5, spread=1),
                                cell("counting_balanced", 4, 0.1, 0.05, 0.15, 0.5, spread=2)]),
    }
    check = diagnosis.floor_check(tables, "m").set_index("condition")
    assert list(check.index) == ["common at 1 image", "listing at 1 image", "four-task mean at 4 images",
                                 "four-task mean at 10 images",
                                 "counting_balanced, target in 1 of 4 images (spread 1)"]
    assert check.loc["common at 1 image", "met"] and not check.loc["listing at 1 image", "met"]  # lo 0.04 < 0.06
    assert check.loc["four-task mean at 4 images", "needed"] == 0.21 and check.loc["four-task mean at 4 images", "met"]
    assert check.loc["four-task mean at 10 images", "needed"] == 0.10
    assert not check.loc["counting_balanced, target in 1 of 4 images (spread 1)", "met"]
    sentence = diagnosis.floor_sentence(check.reset_index(), "m")
    assert sentence.startswith("m is above the floor in 3 of 5 conditions; not in: listing at 1 image 0.07")
    assert diagnosis.floor_check({}, "m").empty
