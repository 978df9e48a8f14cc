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
NO_SWEEPS = dict(images=(), spread=(), distractors=(), k=(), blank=())


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
    assert knob_counts(records)["k"] == {"counting_balanced": expected, "listing": expected}
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
    assert "(questions per answer: 4: 1, 5: 1)" in lines[1]  # words, not a dict's repr
    assert lines[2].startswith("Every concept")
    bad = good[:3] + [spread_record(9, 2, 4, n=6)]
    bad[0] = {**bad[0], "targets": ["cat"]}
    lines = design_findings(bad)
    assert "NOT every" in lines[1] and "NOT identical" in lines[1] and lines[2].startswith("1 questions name")


# --- padded sweeps (blank images, distractors) and the Balanced k sweep ----------------------------------


def answer_histograms(records: list[dict], experiment: str, knob: str) -> dict:
    """Per task and knob value: the answer histogram."""
    found: dict = {}
    for r in records:
        if r["experiment"] == experiment:
            found.setdefault((r["task"], r["knobs"]["n_images"] if knob == "n_images" else (r["knobs"]["n_images"],
                                                                                             r["knobs"][knob])),
                             Counter())[str(r["gt"])] += 1
    return found


@pytest.fixture(scope="module")
def padded(index, tmp_path_factory) -> tuple[list[dict], Path]:
    folder = tmp_path_factory.mktemp("blank")
    plan = BenchmarkPlan(per_value=10, **{**NO_SWEEPS, "images": (1,), "distractors": (0, 2, 5), "blank": (1, 3, 10)})
    return build(index, plan, progress=False, blank_dir=folder), folder


def test_blank_sweep_asks_the_one_image_questions_beside_blank_images(index, padded):
    from PIL import Image

    records, folder = padded
    one_image = {r["id"]: r for r in records if r["experiment"] == "images"}
    blank = [r for r in records if r["experiment"] == "blank"]
    assert {r["task"] for r in blank} == {"counting_balanced", "listing"}
    assert Counter(r["knobs"]["n_images"] for r in blank) == {1: 20, 3: 20, 10: 20}
    for r in blank:
        base = one_image[r["base_id"]]
        assert (r["question"], r["gt"], r["targets"]) == (base["question"], base["gt"], base["targets"]), r["id"]
        assert len(r["images"]) == r["knobs"]["n_images"] == r["knobs"]["blank"] + 1
        assert r["images"].count(base["images"][0]) == 1 and base["image_ids"][0] in r["image_ids"]
        pads = [(p, e) for p, e in zip(r["images"], r["evidence"]) if p != base["images"][0]]
        assert all(e["counts"] == {} and Path(p).parent == folder for p, e in pads), r["id"]  # annotations
        for path, _ in pads:  # pixels: one uniform colour, the size of the target image
            pixels = Image.open(path).convert("RGB")
            assert pixels.getcolors() is not None and len(pixels.getcolors()) == 1, path
            assert pixels.size == (index.images[base["image_ids"][0]].width, index.images[base["image_ids"][0]].height)
    histograms = answer_histograms(records, "blank", "n_images")
    for task in ("counting_balanced", "listing"):
        assert len({tuple(sorted(h.items())) for (t, _), h in histograms.items() if t == task}) == 1, task


def test_blank_images_differ_in_colour_and_hold_their_colour_across_builds(index, padded, tmp_path):
    from PIL import Image

    records, folder = padded
    colours = {Image.open(p).convert("RGB").getpixel((0, 0)) for p in sorted(folder.glob("*.png"))}
    assert len(colours) == len(list(folder.glob("*.png"))) == 9  # 10 images: the target and 9 blanks
    plan = BenchmarkPlan(per_value=10, **{**NO_SWEEPS, "blank": (3, 10)})
    again = build(index, plan, progress=False, blank_dir=tmp_path)
    same = {r["id"]: r["images"] for r in records if r["experiment"] == "blank"}
    assert all([Path(p).name for p in r["images"]] == [Path(p).name for p in same[r["id"]]] for r in again)


def test_distractor_sweep_pads_the_same_balanced_questions_with_images_without_the_target(index, padded):
    records, _ = padded
    one_image = {r["id"]: r for r in records if r["experiment"] == "images"}
    rows = [r for r in records if r["experiment"] == "distractors"]
    assert {r["task"] for r in rows} == {"counting_balanced"}
    by_question: dict = {}
    for r in rows:
        base = one_image[r["base_id"]]
        assert (r["question"], r["gt"]) == (base["question"], base["gt"]) and r["gt"] == recompute(r, index)
        others = [i for i in r["image_ids"] if i != base["image_ids"][0]]
        assert len(others) == r["knobs"]["distractors"] == r["knobs"]["n_images"] - 1
        assert not any(set(index.images[i].counts()) & set(r["targets"]) for i in others), r["id"]
        by_question.setdefault(r["base_id"], {})[r["knobs"]["distractors"]] = set(others)
    assert all(d[0] <= d[2] <= d[5] for d in by_question.values())  # nested: d adds images to d - 1's
    histograms = answer_histograms(records, "distractors", "distractors")
    assert len({tuple(sorted(h.items())) for h in histograms.values()}) == 1
    assert max(histograms[("counting_balanced", (1, 0))].values()) <= 0.25 * 10


def test_padded_versions_of_a_question_put_the_target_at_the_same_place(padded):
    records, _ = padded
    where = {}
    for r in records:
        if r["experiment"] in ("blank", "distractors") and r["task"] == "counting_balanced":
            target = next(i for i, e in enumerate(r["evidence"]) if e["counts"].get(r["targets"][0]))
            where.setdefault((r["base_id"], r["knobs"]["n_images"]), set()).add(target)
    assert all(len(places) == 1 for places in where.values())
    assert len({p for (_, n), places in where.items() if n == 10 for p in places}) > 1  # not always first


def test_k_sweep_counting_is_balanced_with_one_histogram_at_every_k(index):
    plan = BenchmarkPlan(per_value=8, **{**NO_SWEEPS, "k": (1, 2, 3)}, k_images=(1, 4), k_answer_range=(3, 7))
    records = build(index, plan, progress=False)
    histograms = answer_histograms([r for r in records if r["task"] == "counting_balanced"], "k", "k")
    for n_images, top in ((1, 6), (4, 7)):  # make_index holds at most 6 instances of a class on one image
        at_n = {key: h for (_, key), h in histograms.items() if key[0] == n_images}
        assert len(at_n) == 3 and len({tuple(sorted(h.items())) for h in at_n.values()}) == 1
        assert {int(v) for h in at_n.values() for v in h} == set(range(3, top + 1))
    assert all(r["gt"] == recompute(r, index) and named_concepts_present(r, index) for r in records)


@pytest.mark.parametrize("settings, parameter", [
    (dict(k=(1, 2, 3), k_answer_range=(2, 6)), "k_answer_range"),
    (dict(k=(1, 2), k_answer_range=(4, 3)), "k_answer_range"),
    (dict(distractors=(0, 10)), "distractors"),
    (dict(blank=(0, 4)), "blank"),
    (dict(blank=(1, 11)), "blank"),
])
def test_padded_and_k_settings_that_cannot_be_met_are_refused_by_name(settings, parameter):
    with pytest.raises(KnobError, match=parameter):
        BenchmarkPlan(**settings)


def test_a_k_range_the_source_cannot_reach_and_a_blank_sweep_without_a_folder_are_refused(index):
    with pytest.raises(KnobError, match=r"k_answer_range \[7, 9\] is out of reach at k_images=1.*at most 6"):
        build(index, BenchmarkPlan(per_value=2, **{**NO_SWEEPS, "k": (1, 2)}, k_images=(1,),
                                   k_answer_range=(7, 9)), progress=False)
    with pytest.raises(KnobError, match="blank .* needs a folder"):
        build(index, BenchmarkPlan(per_value=2, **{**NO_SWEEPS, "blank": (1, 2)}), progress=False)


def test_a_realistic_scene_world_build_keeps_the_counting_sweeps_blind_baseline_low(tmp_path):
    """The smoke profile's plan on a scene world: every Counting cell of the distractor, blank and k sweeps
    has one histogram per knob value, and a constant answer is right at most a quarter of the time."""
    import yaml

    from mimic_utils.analysis import stats
    from mimic_utils.data import annotations, scene_formats, scenes

    world = scenes.SceneParams(image_size=112, max_objects=5, same_category_prob=0.5)
    index = annotations.read_coco(scene_formats.write_coco_split(tmp_path / "coco", 1500, 0, world, progress=False))
    settings = yaml.safe_load((Path(__file__).parents[2] / "params" / "smoke" / "01_data_build.yaml").read_text())
    plan = BenchmarkPlan.from_dict(settings["benchmark"])
    records = build(index, plan, progress=False, blank_dir=tmp_path / "blank")
    for experiment, knob in (("distractors", "distractors"), ("blank", "n_images"), ("k", "k")):
        rows = [{**r, "scored_as": "counting"} for r in records
                if r["experiment"] == experiment and r["task"] == "counting_balanced"]
        histograms = answer_histograms(rows, experiment, knob)
        assert len({tuple(sorted(h.items())) for h in histograms.values()}) == 1, experiment
        for key in histograms:
            cell = [r for r in rows if (r["knobs"]["n_images"] if knob == "n_images" else
                                        (r["knobs"]["n_images"], r["knobs"][knob])) == key[1]]
            assert stats.blind_baseline(cell) <= 0.25, (experiment, key)
