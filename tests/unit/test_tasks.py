"""MIMIC task generators: every answer recomputed independently, knobs honoured, impossible knobs refused."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from mimic_utils.data.mimic_benchmark import BenchmarkPlan, build, export_hf, knob_counts, load, load_hf, plan_specs, save
from mimic_utils.data.annotations import AnnotationIndex, ImageAnnotation, ObjectAnnotation
from mimic_utils.data.tasks import KnobError, TaskSpec, generate, generate_all

SUPERS = {
    "vehicle": ["bus", "car", "truck", "bicycle"],
    "animal": ["cat", "dog", "horse", "zebra"],
    "food": ["apple", "banana", "pizza"],
}


def make_index(n_images: int = 600, seed: int = 0, max_objects: int = 6) -> AnnotationIndex:
    """A random index in the shape the readers produce: images with 0..max objects of 1..3 classes."""
    rng = random.Random(seed)
    categories = [c for members in SUPERS.values() for c in members]
    supercategory_of = {c: s for s, members in SUPERS.items() for c in members}
    images = {}
    for number in range(n_images):
        classes = rng.sample(categories, rng.choice([1, 1, 1, 2, 2, 3]))
        objects = []
        for _ in range(rng.randint(0, max_objects)):
            cat = rng.choice(classes)
            objects.append(ObjectAnnotation(cat, supercategory_of[cat], (1.0, 2.0, 10.0, 10.0)))
        image_id = str(1000 + number)
        images[image_id] = ImageAnnotation(image_id, Path(f"/data/{image_id}.png"), 112, 112, tuple(objects))
    return AnnotationIndex(images, categories, supercategory_of, "0" * 64, "test")


@pytest.fixture(scope="module")
def index() -> AnnotationIndex:
    return make_index()


def recompute(record: dict, index: AnnotationIndex) -> str:
    """The answer from the index alone, written independently of mimic_utils.data.tasks."""
    counts = [index.images[i].counts() for i in record["image_ids"]]
    family, targets = record["family"], record["targets"]
    if family == "counting":
        return str(sum(c[t] for c in counts for t in targets))
    if family == "listing":
        present = set()
        for c in counts:
            present |= {cat for cat in c if index.supercategory_of[cat] in targets}
        return ", ".join(sorted(present))
    presence = Counter(cat for c in counts for cat in set(c))
    n = len(counts)
    if family == "common":
        everywhere = [cat for cat, p in presence.items() if p == n]
        assert len(everywhere) == 1, f"{record['id']}: common must be unique, got {everywhere}"
        return everywhere[0]
    minority = [cat for cat, p in presence.items() if p < n / 2]
    assert len(minority) == 1, f"{record['id']}: odd-one must be unique, got {minority}"
    assert all(p > n / 2 for cat, p in presence.items() if cat != minority[0])
    return minority[0]


def holds_target(record: dict, index: AnnotationIndex, image_id: str) -> bool:
    classes = set(index.images[image_id].counts())
    if record["family"] == "listing":
        return any(index.supercategory_of[c] in record["targets"] for c in classes)
    return bool(classes & set(record["targets"]))


@pytest.mark.parametrize("spec", [
    TaskSpec("counting", 40, 4, split="balanced"),
    TaskSpec("counting", 40, 5, spread=2, split="unbalanced"),
    TaskSpec("counting", 30, 4, k=2, split="unbalanced"),
    TaskSpec("listing", 40, 4),
    TaskSpec("listing", 30, 3, spread=1, k=2),
    TaskSpec("common", 40, 3),
    TaskSpec("common", 20, 1),
    TaskSpec("oddone", 40, 5, spread=2),
    TaskSpec("oddone", 40, 3),
], ids=lambda s: s.name)
def test_every_answer_recomputes_from_the_annotations(index, spec):
    records = generate(index, spec, seed=3)
    assert len(records) == spec.count
    assert len({r["id"] for r in records}) == spec.count
    for r in records:
        assert r["gt"] == recompute(r, index), r["id"]
        assert len(r["images"]) == len(set(r["image_ids"])) == spec.n_images
        assert [e["image_id"] for e in r["evidence"]] == r["image_ids"]
        assert all(dict(index.images[e["image_id"]].counts()) == e["counts"] for e in r["evidence"])
        held = sum(holds_target(r, index, i) for i in r["image_ids"])
        assert held == r["knobs"]["spread"], r["id"]
        assert r["knobs"]["distractors"] == spec.n_images - held
        if spec.spread is not None:
            assert r["knobs"]["spread"] == spec.spread
        assert len(r["targets"]) == spec.k


def test_balanced_counting_is_uniform_over_the_answer_range(index):
    records = generate(index, TaskSpec("counting", 60, 3, spread=2, split="balanced", answer_range=(2, 7)))
    answers = Counter(int(r["gt"]) for r in records)
    assert sorted(answers) == [2, 3, 4, 5, 6, 7]
    assert set(answers.values()) == {10}


def test_balanced_range_is_capped_by_what_the_source_holds(index):
    # make_index draws at most 6 objects per image, so one image totals at most 6
    records = generate(index, TaskSpec("counting", 36, 1, split="balanced", answer_range=(1, 9)))
    assert Counter(int(r["gt"]) for r in records) == {n: 6 for n in range(1, 7)}
    with pytest.raises(KnobError, match="out of reach"):
        generate(index, TaskSpec("counting", 5, 1, spread=1, split="balanced", answer_range=(40, 40)))


def test_unbalanced_counting_follows_the_natural_tail(index):
    records = generate(index, TaskSpec("counting", 200, 2, spread=2, split="unbalanced"))
    answers = Counter(int(r["gt"]) for r in records)
    assert answers.most_common(1)[0][1] > 200 / len(answers)  # some totals far more frequent than others


def test_same_seed_gives_identical_records_and_another_seed_differs(index):
    spec = TaskSpec("listing", 20, 4)
    assert generate(index, spec, seed=1) == generate(index, spec, seed=1)
    assert generate(index, spec, seed=1) != generate(index, spec, seed=2)


@pytest.mark.parametrize("kwargs, knob", [
    (dict(family="oddone", count=5, n_images=2), "n_images >= 3"),
    (dict(family="oddone", count=5, n_images=4, spread=2), "spread"),
    (dict(family="common", count=5, n_images=3, k=2), "k must be 1"),
    (dict(family="counting", count=5, n_images=3), "split"),
    (dict(family="listing", count=5, n_images=11), "n_images"),
    (dict(family="listing", count=5, n_images=3, spread=4), "spread"),
    (dict(family="counting", count=5, n_images=4, spread=4, split="balanced", answer_range=(1, 3)), "answer_range"),
])
def test_impossible_knobs_fail_at_spec_time_naming_the_knob(kwargs, knob):
    with pytest.raises(KnobError, match=knob):
        TaskSpec(**kwargs)


def test_knobs_the_data_cannot_meet_fail_clearly_instead_of_returning_fewer(index):
    # Reachable in principle (two dense images of one class exist) but too rare to fill the batch.
    sparse = make_index(n_images=40, seed=9)
    with pytest.raises(KnobError, match="total is"):
        generate(sparse, TaskSpec("counting", 30, 2, spread=2, split="balanced", answer_range=(11, 12)))
    tiny = make_index(n_images=4)
    with pytest.raises(KnobError, match="n_images=10"):
        generate(tiny, TaskSpec("listing", 3, 10))
    no_single = make_index(n_images=50)
    no_single.images = {k: v for k, v in no_single.images.items() if len(set(v.counts())) != 1}
    with pytest.raises(KnobError, match="single class"):
        generate(no_single, TaskSpec("oddone", 3, 5))


def test_plan_covers_every_knob_value_with_per_value_questions(index):
    plan = BenchmarkPlan(per_value=6, images=(1, 3), spread=(1, 2, 4), spread_images=5, spread_answer_range=(4, 6),
                         distractors=(0, 3), k=(1, 2), k_images=3)
    records = build(index, plan, progress=False)
    counts = knob_counts(records)
    assert counts["images"]["counting_balanced"] == {"n1": 6, "n3": 6}
    assert counts["images"]["oddone"] == {"n3": 6}  # odd-one needs three images
    assert counts["spread"]["counting_balanced"] == {"s1": 6, "s2": 6, "s4": 6}
    assert {r["knobs"]["n_images"] for r in records if r["experiment"] == "spread"} == {5}
    assert counts["distractors"]["counting_balanced"] == {"d0": 6, "d3": 6}
    assert counts["k"]["listing"] == {"n3-k1": 6, "n3-k2": 6}
    assert len(records) == (len(plan_specs(plan)) + len(plan.distractors)) * 6  # distractors: padded questions


def test_duplicate_specs_in_a_plan_are_refused(index):
    spec = TaskSpec("listing", 3, 2)
    with pytest.raises(KnobError, match="duplicate ids"):
        generate_all(index, [spec, spec], progress=False)


def test_save_load_roundtrip_and_manifest(index, tmp_path):
    plan = BenchmarkPlan(per_value=4, images=(2,), spread=(1,), spread_answer_range=(1, 3), distractors=(0,), k=(1,))
    records = build(index, plan, progress=False)
    manifest = save(records, tmp_path, plan, index, root=Path("/data"))
    loaded = load(tmp_path)
    assert len(loaded) == len(records)
    assert {r["id"]: r for r in loaded} == {r["id"]: r for r in records}
    text = manifest.read_text()
    assert '"sha256": "' + "0" * 64 in text and '"per_value": 4' in text
    save(records, tmp_path / "again", plan, index, root=Path("/data"))
    assert (tmp_path / "again" / "counting.jsonl").read_bytes() == (tmp_path / "counting.jsonl").read_bytes()
    (tmp_path / "listing.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="listing.jsonl: content differs"):
        load(tmp_path)


def test_hf_export_loads_back_with_official_fields(index, tmp_path):
    from PIL import Image

    image_dir = tmp_path / "img"
    image_dir.mkdir()
    small = make_index(n_images=80, seed=5)
    for image in small.images.values():
        Image.new("RGB", (8, 8), (10, 20, 30)).save(image_dir / image.path.name)
    small.images = {k: ImageAnnotation(v.image_id, image_dir / v.path.name, 8, 8, v.objects)
                    for k, v in small.images.items()}
    records = generate(small, TaskSpec("counting", 3, 2, split="unbalanced"))
    records += generate(small, TaskSpec("listing", 2, 2))
    records += generate(small, TaskSpec("common", 2, 2))
    records += generate(small, TaskSpec("oddone", 2, 3))
    export_hf(records, tmp_path / "hf")
    dataset = load_hf(tmp_path / "hf", "counting")["test"]
    assert list(dataset.features) == ["images", "question", "gt", "task", "id"]
    assert dataset.features["gt"].dtype == "string"
    row = dataset[0]
    assert row["id"] == records[0]["id"] and row["gt"] == records[0]["gt"]
    assert len(row["images"]) == 2 and row["images"][0].size == (8, 8)
    with pytest.raises(FileNotFoundError, match="no exported config"):
        load_hf(tmp_path / "hf", "missing")


def members_of(supercategories: list[str]) -> set[str]:
    return {c for s in supercategories for c in SUPERS[s]}


def test_images_with_dropped_annotations_are_never_used(index):
    """A crowd or group-of box leaves an image's count unknown: it may not hold nor be a distractor."""
    uncertain = make_index(n_images=600)
    dropped = {image_id: {"dog": 1} for image_id in list(uncertain.images)[::3]}
    uncertain.meta = {"dropped": dropped}
    for spec in (TaskSpec("counting", 30, 4, split="unbalanced"), TaskSpec("listing", 30, 4),
                 TaskSpec("common", 20, 3), TaskSpec("oddone", 20, 3)):
        for r in generate(uncertain, spec):
            used = set(r["image_ids"]) & set(dropped)
            if r["family"] in ("common", "oddone"):
                assert not used, r["id"]  # every class of every image matters
            queried = members_of(r["targets"]) if r["family"] == "listing" else set(r["targets"])
            assert not used or "dog" not in queried, r["id"]


def test_pool_lookup_tables_equal_a_scan_of_every_image(index):
    from mimic_utils.data.tasks import Pools

    pools = Pools(index)
    for category in index.categories:
        for n in range(0, 6):
            scan = [i for i in pools.certain if pools.counts[i][category] == n]
            assert pools.by_count.get((category, n), []) == scan  # same order: the same random draws
    assert pools.single_class == [i for i in pools.certain if len(pools.classes[i]) == 1]
