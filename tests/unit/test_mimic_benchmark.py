"""The benchmark plan's sweeps change one thing at a time: spread at a fixed image count and answer prior,
k at several image counts, and no question naming a concept that is not in its images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from mimic_utils.data.mimic_benchmark import BenchmarkPlan, build, knob_counts, plan_specs
from mimic_utils.data.annotations import AnnotationIndex, read_coco
from mimic_utils.data.tasks import KnobError, TaskSpec, generate
from test_tasks import make_index, recompute

ABSENT_COCO = Path(__file__).parents[1] / "fixtures" / "coco" / "instances_absent.json"
#: Only the sweep under test: the others emptied.
NO_SWEEPS = dict(images=(), spread=(), distractors=(), k=())


@pytest.fixture(scope="module")
def index() -> AnnotationIndex:
    return make_index()


def named_concepts_present(record: dict, index: AnnotationIndex) -> bool:
    """Whether every class (or supercategory) the question names has an instance (member) in its images."""
    held = {c for i in record["image_ids"] for c in index.images[i].counts()}
    if record["family"] == "listing":
        held = {index.supercategory_of[c] for c in held}
    return set(record["targets"]) <= held


def test_spread_sweep_holds_image_count_and_answer_prior_fixed(index):
    plan = BenchmarkPlan(per_value=9, **{**NO_SWEEPS, "spread": (1, 2, 4)}, spread_images=5,
                         spread_answer_range=(4, 6))
    records = build(index, plan, progress=False)
    by_spread: dict[int, Counter] = {}
    for r in records:
        assert r["experiment"] == "spread" and r["gt"] == recompute(r, index), r["id"]
        assert len(r["image_ids"]) == r["knobs"]["n_images"] == 5
        assert r["knobs"]["distractors"] == 5 - r["knobs"]["spread"]
        by_spread.setdefault(r["knobs"]["spread"], Counter())[int(r["gt"])] += 1
    assert sorted(by_spread) == [1, 2, 4]
    assert all(hist == {4: 3, 5: 3, 6: 3} for hist in by_spread.values())


@pytest.mark.parametrize("settings, parameter", [
    (dict(spread=(1, 2, 4), spread_answer_range=(3, 6)), "spread_answer_range"),
    (dict(spread=(1, 6), spread_images=5, spread_answer_range=(6, 6)), "spread_images"),
    (dict(spread=(1, 2), spread_answer_range=(5, 4)), "spread_answer_range"),
])
def test_spread_settings_that_would_move_the_answer_prior_are_refused(settings, parameter):
    with pytest.raises(KnobError, match=parameter):
        BenchmarkPlan(**settings)


def test_spread_range_beyond_one_image_of_the_source_is_refused(index):
    # make_index holds at most 6 instances of a class on one image: spread 1 cannot total 7
    plan = BenchmarkPlan(per_value=2, **{**NO_SWEEPS, "spread": (1, 2)}, spread_answer_range=(2, 7))
    with pytest.raises(KnobError, match=r"spread_answer_range \[2, 7\] is out of reach at spread 1.*at most 6"):
        build(index, plan, progress=False)


def test_k_sweep_runs_at_each_image_count_with_every_named_concept_present(index):
    plan = BenchmarkPlan(per_value=5, **{**NO_SWEEPS, "k": (1, 2, 3)}, k_images=(1, 4))
    records = build(index, plan, progress=False)
    expected = {f"n{n}-k{k}": 5 for n in (1, 4) for k in (1, 2, 3)}
    assert knob_counts(records)["k"] == {"counting_unbalanced": expected, "listing": expected}
    for r in records:
        assert len(r["targets"]) == r["knobs"]["k"] and len(r["image_ids"]) == r["knobs"]["n_images"]
        assert r["gt"] == recompute(r, index) and named_concepts_present(r, index), r["id"]


def test_k_images_and_other_sweeps_accept_a_single_number():
    plan = BenchmarkPlan.from_dict({"k_images": 4, "k": [1, 2]})
    assert plan.k_images == (4,) and plan.k == (1, 2)
    assert {s.n_images for s in plan_specs(plan) if s.experiment == "k"} == {4}


def test_from_dict_refuses_unknown_keys_by_name():
    with pytest.raises(ValueError, match=r"params/x.yaml: benchmark: unknown key\(s\) \['spread_total'\]"):
        BenchmarkPlan.from_dict({"spread_total": 4}, where="params/x.yaml: benchmark")


@pytest.mark.parametrize("family, k, n_images, message", [
    ("counting", 4, 1, "needs an image holding 4 classes, but the source's images hold at most 3"),
    ("listing", 4, 4, "k=4, but only 3 supercategories have instances"),
])
def test_k_the_source_cannot_meet_is_refused_naming_k(index, family, k, n_images, message):
    split = "unbalanced" if family == "counting" else None
    with pytest.raises(KnobError, match=message):
        generate(index, TaskSpec(family, 3, n_images, k=k, split=split))


@pytest.fixture(scope="module")
def absent() -> AnnotationIndex:
    """A COCO file where ``yeti`` (an animal) and ``ghost`` (the only ``phantom``) have no instance."""
    return read_coco(ABSENT_COCO, check_files=False)


def test_fixture_has_unannotated_categories(absent):
    assert {"yeti", "ghost"} <= set(absent.categories) and absent.members("phantom") == ["ghost"]
    assert not {c for image in absent.images.values() for c in image.counts()} & {"yeti", "ghost"}


@pytest.mark.parametrize("family", ["counting", "listing"])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("n_images", [1, 3])
def test_questions_name_only_concepts_present_in_their_images(absent, family, k, n_images):
    split = "unbalanced" if family == "counting" else None
    records = generate(absent, TaskSpec(family, 8, n_images, k=k, split=split), seed=1)
    for r in records:
        assert not set(r["targets"]) & {"yeti", "ghost", "phantom"}, r["id"]
        assert named_concepts_present(r, absent) and r["gt"] == recompute(r, absent), r["id"]


def test_design_findings_check_the_records_themselves():
    from mimic_utils.data.mimic_benchmark import design_findings

    def spread_record(i, s, gt, n=4):
        return {"id": f"s{i}", "experiment": "spread", "task": "counting_balanced", "family": "counting",
                "gt": gt, "targets": ["dog"], "knobs": {"n_images": n, "spread": s},
                "evidence": [{"image_id": "a", "counts": {"dog": gt}}]}

    good = [spread_record(i, s, gt) for s in (1, 2) for i, gt in enumerate((4, 5))]
    lines = design_findings(good)
    assert lines[0] == "4 questions in 2 cells of 2 questions each."
    assert "every question has 4 images" in lines[1] and "identical at every spread" in lines[1]
    assert lines[2].startswith("Every concept")
    bad = good[:3] + [spread_record(9, 2, 4, n=6)]
    bad[0] = {**bad[0], "targets": ["cat"]}
    lines = design_findings(bad)
    assert "NOT every" in lines[1] and "NOT identical" in lines[1] and lines[2].startswith("1 questions name")
