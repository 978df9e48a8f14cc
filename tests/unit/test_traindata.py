"""Training conversations: answers recompute from the evidence, sizes and mixes are honoured."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from mimic_utils.data import traindata
from mimic_utils.data.tasks import KnobError
from mimic_utils.data.prompts import build_messages
from mimic_utils.data.traindata import TrainMix, build, family_counts, prompt_family, single_image_questions
from test_tasks import make_index, recompute


@pytest.fixture(scope="module")
def index():
    return make_index(n_images=500, seed=7)


def check_minor(record: dict, index) -> None:
    counts = [index.images[i].counts() for i in record["image_ids"]]
    question, answer, (target,) = record["question"], record["gt"], record["targets"]
    if record["family"] == "counting_minor":
        which = int(question.rstrip("?").split("image ")[-1]) - 1
        assert answer == str(counts[which][target])
    elif record["family"] == "listing_minor":
        assert answer == ", ".join(str(j + 1) for j, c in enumerate(counts) if c[target])
    elif record["family"] == "common_minor":
        assert answer == ("yes" if all(c[target] for c in counts) else "no")
    else:
        holders = [j + 1 for j, c in enumerate(counts) if c[target]]
        assert holders == [int(answer)]


def test_training_mix_has_the_requested_sizes_and_correct_answers(index):
    mix = TrainMix(mimic=40, minor=40, single=40, min_images=2, max_images=10, seed=1)
    records = build(index, mix, progress=False)
    assert len(records) == 120 and len({r["id"] for r in records}) == 120
    counts = family_counts(records)
    assert counts["minor/listing_minor"] == 10 and counts["mimic/oddone"] == 10 and counts["single/naming"] == 10
    for r in records:
        assert all(i in index.images for i in r["image_ids"])
        if r["origin"] == "mimic":
            assert r["gt"] == recompute(r, index)
            assert 2 <= len(r["images"]) <= 10
        elif r["origin"] == "minor":
            check_minor(r, index)
        user, assistant = r["messages"]
        assert [c["type"] for c in user["content"] if c["type"] == "image"] == ["image"] * len(r["images"])
        assert [user] == build_messages(r["question"], len(r["images"]), prompt_family(r["family"]), "qwen2_vl")
        assert user["content"][-1]["text"].startswith("\nQuestion: " + r["question"])
        assert assistant == {"role": "assistant", "content": [{"type": "text", "text": r["gt"]}]}
    assert build(index, mix, progress=False) == records


def test_single_image_counting_is_balanced_over_true_counts_including_zero(index):
    records = single_image_questions(index, 240, seed=2, max_count=5, families=("counting",))
    answers = Counter(r["gt"] for r in records)
    assert sorted(answers) == ["0", "1", "2", "3", "4", "5"]
    assert max(answers.values()) - min(answers.values()) < 25
    for r in records:
        assert r["question"].startswith(f"How many {r['targets'][0]} objects")
        assert r["gt"] == str(index.images[r["image_ids"][0]].counts()[r["targets"][0]])


def test_single_image_presence_and_listing_answers(index):
    for r in single_image_questions(index, 60, seed=3, families=("presence", "listing", "naming")):
        counts = index.images[r["image_ids"][0]].counts()
        (target,) = r["targets"]
        assert r["family"] == "naming" or target in r["question"]
        if r["family"] == "presence":
            assert r["gt"] == ("yes" if counts[target] else "no")
        elif r["family"] == "listing":
            sup = target
            assert r["gt"] == (", ".join(sorted(c for c in counts if index.supercategory_of[c] == sup)) or "none")
        else:
            assert set(counts) == {r["gt"]}


def test_impossible_mixes_fail_clearly(index):
    with pytest.raises(KnobError, match="max_images"):
        TrainMix(min_images=2, max_images=11)
    with pytest.raises(KnobError, match="max_count=40, but no image"):
        single_image_questions(index, 30, max_count=40, families=("counting",))


def test_save_and_load_roundtrip(index, tmp_path):
    from pathlib import Path

    from mimic_utils.data.traindata import load, save

    mix = TrainMix(mimic=8, minor=8, single=8, seed=4)
    records = build(index, mix, progress=False)
    manifest = save(records, tmp_path, mix, index, root=Path("/data"))
    assert load(tmp_path) == records
    assert '"minor/oddone_minor": 2' in manifest.read_text()
    (tmp_path / "conversations.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="content differs"):
        load(tmp_path)


def _mantis_style_dataset(folder, rows):
    """A local dataset in the Mantis-Instruct schema (what the hub loader reads), written as parquet."""
    import io

    import datasets

    from eval_worker import noise_image

    def png(seed):
        buffer = io.BytesIO()
        noise_image(32, 32, seed).save(buffer, format="PNG")
        return buffer.getvalue()

    features = datasets.Features({
        "id": datasets.Value("string"),
        "images": datasets.Sequence(datasets.Image(decode=False)),
        "conversation": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "source": datasets.Value("string"),
    })
    data = datasets.Dataset.from_dict({
        "id": [r[0] for r in rows],
        "images": [[{"bytes": png(10 * i + k), "path": None} for k in range(r[1])] for i, r in enumerate(rows)],
        "conversation": [r[2] for r in rows],
        "source": ["test"] * len(rows),
    }, features=features)
    folder.mkdir(parents=True)
    data.to_parquet(str(folder / "train-00000.parquet"))
    return folder


def test_hub_conversations_in_the_mantis_schema_become_training_records(tmp_path):
    from mimic_utils.training import finetune

    user = {"role": "user", "content": "<image><image> Are the two images the same?"}
    rows = [("a", 2, [user, {"role": "assistant", "content": "No."}, user, {"role": "assistant", "content": "x"}]),
            ("b.1", 1, [{"role": "user", "content": "<image> What is shown?"}, {"role": "assistant", "content": "dog"}]),
            ("c", 2, [{"role": "assistant", "content": "orphan reply"}])]
    folder = _mantis_style_dataset(tmp_path / "mantis", rows)
    records = traindata.hub_conversations({"name": str(folder), "split": "train", "limit": 3}, tmp_path / "img",
                                          progress=False)
    assert [r["id"] for r in records] == ["hub-mantis-a", "hub-mantis-b.1"]  # no user→assistant exchange in "c"
    first = records[0]
    assert first["question"] == "Are the two images the same?" and first["gt"] == "No."
    assert len(first["images"]) == 2 and all(Path(p).is_file() for p in first["images"])
    assert Path(records[1]["images"][0]).name == "hub-mantis-b.1-0.png"  # a dot in the id is not a suffix
    assert traindata.prompt_family("hub") == "hub"
    multi, single = finetune.split_conversations(records, 10)
    assert [r["id"] for r in multi] == ["hub-mantis-a"] and [r["id"] for r in single] == ["hub-mantis-b.1"]


def test_hub_spec_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        traindata.hub_conversations({"name": "x", "subset": "nlvr2"}, tmp_path)
    folder = _mantis_style_dataset(tmp_path / "m", [("a", 1, [{"role": "user", "content": "q"},
                                                               {"role": "assistant", "content": "a"}])])
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "train-00000.parquet").drop(["conversation"])
    pq.write_table(table, folder / "train-00000.parquet")
    with pytest.raises(ValueError, match="Mantis-Instruct"):
        traindata.hub_conversations({"name": str(folder)}, tmp_path / "img", progress=False)


# --- the organism's multi-image stage (ov) ------------------------------------------------------------


HAND_SUPER = {"dog": "animal", "cat": "animal", "bus": "vehicle", "car": "vehicle"}


def hand_made_index():
    """Eight images whose objects are written out here, so every ov answer can be checked by hand."""
    from mimic_utils.data.annotations import AnnotationIndex, ImageAnnotation, ObjectAnnotation

    supercategory_of = dict(HAND_SUPER)
    contents = {"a": {"dog": 2, "cat": 1}, "b": {"bus": 1}, "c": {}, "d": {"dog": 1}, "e": {"car": 3},
                "f": {"cat": 2, "car": 1}, "g": {"bus": 2, "dog": 1}, "h": {"cat": 1}}
    images = {}
    for image_id, counts in contents.items():
        objects = tuple(ObjectAnnotation(c, supercategory_of[c], (1.0, 2.0, 10.0, 10.0))
                        for c, n in counts.items() for _ in range(n))
        images[image_id] = ImageAnnotation(image_id, Path(f"/train/{image_id}.png"), 112, 112, objects)
    return AnnotationIndex(images, list(supercategory_of), supercategory_of, "1" * 64, "hand-made"), contents


def by_hand(record: dict, contents: dict) -> str:
    """The ov answer from the hand-written contents alone (independent of the builders)."""
    counts = [contents[i] for i in record["image_ids"]]
    question, family = record["question"], record["family"]
    if family == "image_total":
        return str(len(counts))
    if family in ("image_count", "image_describe"):
        which = int(question.split("image ")[1].split()[0].rstrip("?")) - 1
        if family == "image_count":
            return str(counts[which].get(record["targets"][0], 0))
        order = ["dog", "cat", "bus", "car"]
        text = ", ".join(f"{counts[which][c]} {c}" for c in order if counts[which].get(c)) or "none"
        return f"Image {which + 1}: {text}"
    if family == "listing_in_image":  # "In image 3 only, list the categories of animal that appear"
        which = int(question.split("image ")[1].split()[0]) - 1
        supercategory = question.split("categories of ")[1].split(" that")[0]
        return ", ".join(sorted(c for c in counts[which] if HAND_SUPER[c] == supercategory)) or "none"
    if family == "naming_in_image":  # "Image 2 shows one kind of object. Which category is it?"
        which = int(question.split()[1]) - 1
        assert len(counts[which]) == 1
        return next(iter(counts[which]))
    if family == "category_in_image":  # "Which object category appears in image 2?" and other wordings
        which = int(question.lower().split("image ")[1].split()[0].rstrip("?.,")) - 1
        assert len(counts[which]) == 1
        return next(iter(counts[which]))
    target = record["targets"][0]
    holders = [f"image {j + 1}" for j, c in enumerate(counts) if c.get(target)]
    if family == "every_image":
        return "yes" if len(holders) == len(counts) else "no"
    if family == "which_image":
        assert len(holders) == 1
    return ", ".join(holders)


def test_ov_answers_are_right_on_hand_made_annotations():
    index, contents = hand_made_index()
    records = traindata.ov_questions(index, 900, seed=3, images=(1, 4), weights=dict.fromkeys(traindata.OV_FAMILIES, 1))
    assert Counter(r["family"] for r in records) == dict.fromkeys(traindata.OV_FAMILIES, 100)
    for r in records:
        assert r["gt"] == by_hand(r, contents), r
        assert r["knobs"]["n_images"] == len(r["images"]) and r["origin"] == "ov"
        assert len(r["images"]) >= traindata.OV_MIN_IMAGES.get(r["family"], 1)
    describe = next(r for r in records if r["family"] == "image_describe" and not contents[
        r["image_ids"][int(r["question"].split("image ")[1].rstrip("?")) - 1]])
    assert describe["gt"].endswith(": none")
    assert {r["gt"] for r in records if r["family"] == "every_image"} == {"yes", "no"}


def test_ov_questions_never_ask_an_aggregation_and_name_images_not_numbers(index):
    from mimic_utils.data.tasks import question_for

    records = traindata.ov_questions(index, 1200, seed=1, images=(1, 10), weights=dict.fromkeys(traindata.OV_FAMILIES, 1))
    assert {r["family"] for r in records} == set(traindata.OV_FAMILIES)
    assert not set(traindata.OV_FAMILIES) & set(traindata.MIMIC_FAMILIES)
    mimic_wordings = {question_for(f, ["dog"]).split(" dog")[-1] for f in traindata.MIMIC_FAMILIES}
    for r in records:
        assert not any(w and w in r["question"] for w in mimic_wordings), r["question"]
        assert "across all images" not in r["question"] and "minority" not in r["question"]
        assert all(i in index.images for i in r["image_ids"])  # images of the given training source only
        assert r["images"] == [str(index.images[i].path) for i in r["image_ids"]]
        if r["family"] in ("which_image", "which_images"):
            assert all(part.startswith("image ") for part in r["gt"].split(", ")), r["gt"]
            assert len(r["gt"].split(", ")) <= traindata.WHICH_IMAGES_MAX
        if r["family"] in ("image_count", "image_describe"):
            assert "image " in r["question"]
    assert {len(r["images"]) for r in records} == set(range(1, 11))


def test_category_in_image_asks_naming_in_images_question_in_every_wording_and_only_where_weighted(index):
    import random

    pools = traindata.Pools(index)
    for seed in range(40):
        named = traindata.OV_BUILDERS["naming_in_image"](pools, random.Random(seed), 5)
        worded = traindata.OV_BUILDERS["category_in_image"](pools, random.Random(seed), 5)
        assert worded[:2] == named[:2] and worded[3] == named[3]  # same images, category and answer
        assert traindata.named_image(worded[2]) == traindata.named_image(named[2])
    records = traindata.ov_questions(index, 300, seed=4, images=(2, 6), weights={"category_in_image": 1})
    def wording(question: str) -> str:  # the one wording that, filled with the named image, is the question
        k = traindata.named_image(question)
        return next(w for w in traindata.CATEGORY_WORDINGS if w.format(image=f"image {k}", Image=f"Image {k}") == question)

    used = {wording(r["question"]) for r in records}
    assert used == set(traindata.CATEGORY_WORDINGS)
    assert all(r["question"].startswith(("Which object category", "Looking at image", "Image ")) for r in records)
    unweighted = {r["family"] for r in traindata.ov_questions(index, 200, seed=4, images=(2, 6))}
    assert unweighted == set(traindata.UNWEIGHTED_FAMILIES) and "category_in_image" not in unweighted


def test_the_ov_share_of_a_training_mix_is_written_beside_the_aggregation_data(index):
    mix = TrainMix(mimic=40, minor=0, single=20, ov=60, ov_images=(2, 5), seed=2,
                   ov_weights={"image_count": 1, "which_image": 1, "image_total": 1})
    records = build(index, mix, progress=False)
    counts = family_counts(records)
    assert counts["ov/image_count"] == counts["ov/which_image"] == counts["ov/image_total"] == 20
    assert not any(k.startswith("minor/") for k in counts) and sum(v for k, v in counts.items() if k.startswith("mimic/")) == 40
    assert all(2 <= len(r["images"]) <= 5 for r in records if r["origin"] == "ov")
    with pytest.raises(KnobError, match="ov_weights"):
        TrainMix(ov=10, ov_weights={"counting": 1})
    with pytest.raises(KnobError, match="ov_images"):
        TrainMix(ov=10, ov_images=(0, 11))


def test_echo_writes_the_asked_category_before_each_image_number_and_nothing_else_changes(index):
    plain = traindata.ov_questions(index, 400, seed=3, images=(2, 6))
    echo = traindata.ov_questions(index, 400, seed=3, images=(2, 6), forms=("echo",))
    assert [(r["id"], r["question"], r["image_ids"]) for r in plain] == [(r["id"], r["question"], r["image_ids"]) for r in echo]
    changed = 0
    for before, after in zip(plain, echo):
        if before["family"] not in traindata.ECHO_FAMILIES:
            assert after["gt"] == before["gt"] and after["messages"] == before["messages"]
            continue
        category = before["targets"][0]
        assert after["gt"] == before["gt"].replace("image", category) and "image" not in after["gt"]
        assert traindata.unechoed(after["gt"], category) == before["gt"]
        assert after["messages"][-1]["content"][0]["text"] == after["gt"]
        changed += 1
    assert changed > 50
    assert traindata.unechoed("cat 3", "dog") == "cat 3"  # a wrong category is not read as an image


def test_echo_count_writes_the_category_and_the_image_before_each_count_and_nothing_else_changes(index):
    plain = traindata.ov_questions(index, 400, seed=3, images=(2, 6))
    both = traindata.ov_questions(index, 400, seed=3, images=(2, 6), forms=("echo_count", "echo"))
    assert [(r["id"], r["question"], r["image_ids"]) for r in plain] == [(r["id"], r["question"], r["image_ids"]) for r in both]
    counted = 0
    for before, after in zip(plain, both):
        if before["family"] not in traindata.COUNT_ECHO_FAMILIES:
            assert after["gt"] == (traindata.echoed(before["gt"], before["targets"][0])
                                   if before["family"] in traindata.ECHO_FAMILIES else before["gt"])
            continue
        category, image = before["targets"][0], traindata.named_image(before["question"])
        assert after["gt"] == f"{category} {image} {before['gt']}"
        assert traindata.count_unechoed(after["gt"], category, image) == before["gt"]
        assert after["messages"][-1]["content"][0]["text"] == after["gt"]
        counted += 1
    assert counted > 20
    # only the asked category and image are read back: another image or category stays a wrong answer
    assert traindata.count_unechoed("dog 2 3", "dog", 3) == "dog 2 3"
    assert traindata.count_unechoed("cat 3 3", "dog", 3) == "cat 3 3"
    assert traindata.count_unechoed("Dog 3 1.", "dog", 3) == "1" == traindata.count_unechoed(" dog  3 1", "dog", 3)
    with pytest.raises(ValueError, match="no image named"):
        traindata.named_image("How many dog objects can you see?")


def test_echo_image_writes_the_named_images_number_before_each_naming_answer(index):
    plain = traindata.ov_questions(index, 400, seed=3, images=(2, 10))
    echoed = traindata.ov_questions(index, 400, seed=3, images=(2, 10), forms=("echo_image",))
    named = 0
    for before, after in zip(plain, echoed):
        if before["family"] not in traindata.IMAGE_ECHO_FAMILIES:
            assert after["gt"] == before["gt"]
            continue
        image = traindata.named_image(before["question"])
        assert after["gt"] == f"{image} {before['gt']}" and traindata.image_unechoed(after["gt"], image) == before["gt"]
        named += 1
    assert named > 20
    assert traindata.image_unechoed("10 dog", 1) == "10 dog" and traindata.image_unechoed("2 dog", 3) == "2 dog"


def test_answer_forms_are_named_by_their_switches_and_an_unknown_one_is_refused(index):
    from mimic_utils.organism.ov import OvConfig

    assert OvConfig(echo_count=True, echo=True).forms == ("echo", "echo_count") and OvConfig().forms == ()
    assert TrainMix(ov=10, ov_echo_count=True).ov_forms == ("echo_count",)
    with pytest.raises(KnobError, match=r"unknown answer forms \['echo_colour'\]; known: \['echo', 'echo_count'"):
        traindata.ov_questions(index, 10, forms=("echo", "echo_colour"))


def test_the_finetunes_mix_echoes_its_ov_answers_as_the_ov_stage_does(index):
    """``ov_echo`` gives the finetunes' ov data the ov stage's answer form; the records are otherwise the same."""
    plain = build(index, TrainMix(mimic=0, minor=0, single=0, ov=200, ov_images=(2, 6), seed=2), progress=False)
    echo = build(index, TrainMix(mimic=0, minor=0, single=0, ov=200, ov_images=(2, 6), seed=2, ov_echo=True),
                 progress=False)
    assert [r["id"] for r in plain] == [r["id"] for r in echo]
    echoed = [(a, b) for a, b in zip(plain, echo) if a["family"] in traindata.ECHO_FAMILIES]
    assert echoed and all(b["gt"] == traindata.echoed(a["gt"], a["targets"][0]) for a, b in echoed)
    assert all(b["messages"][-1]["content"][0]["text"] == b["gt"] for _, b in echoed)  # what the finetunes train on
    assert all(a["gt"] == b["gt"] for a, b in zip(plain, echo) if a["family"] not in traindata.ECHO_FAMILIES)
    counts = build(index, TrainMix(mimic=0, minor=0, single=0, ov=200, ov_images=(2, 6), seed=2, ov_echo_count=True),
                   progress=False)
    assert [b["gt"] for b in counts] == [
        traindata.count_echoed(a["gt"], a["targets"][0], traindata.named_image(a["question"]))
        if a["family"] in traindata.COUNT_ECHO_FAMILIES else a["gt"] for a in plain]


def test_a_share_of_ov_questions_labels_its_images_and_the_questions_stay_the_same(index):
    """``image_labels`` only changes how a drawn question is laid out: the same questions at any share,
    about that share of them with "Image k: " before each image, in the record and its messages."""
    plain = traindata.ov_questions(index, 400, seed=3, images=(2, 6))
    mixed = traindata.ov_questions(index, 400, seed=3, images=(2, 6), image_labels=0.5)
    assert [(r["id"], r["question"], r["gt"], r["image_ids"]) for r in plain] == \
        [(r["id"], r["question"], r["gt"], r["image_ids"]) for r in mixed]
    labelled = [r for r in mixed if r.get("image_labels")]
    assert 150 < len(labelled) < 250 and not any(r.get("image_labels") for r in plain)
    for r in labelled:
        texts = [c["text"] for c in r["messages"][0]["content"] if c["type"] == "text"]
        assert [t for t in texts if t.startswith("Image ")] == [f"Image {k}: " for k in range(1, len(r["images"]) + 1)]
    mix = TrainMix(mimic=0, minor=0, single=0, ov=40, ov_image_labels=1.0, seed=2)
    assert all(r["image_labels"] for r in build(index, mix, progress=False))
    with pytest.raises(KnobError, match="ov_image_labels"):
        TrainMix(ov=10, ov_image_labels=1.5)


def test_images_without_a_category_are_the_scan_of_certain_images_in_order(index):
    """traindata._without draws from Pools.by_count instead of scanning; the list (and so every draw) must be
    the scan's: certain images only, in index order, none holding the category."""
    import copy
    import random

    from mimic_utils.data.tasks import Pools

    uncertain = copy.copy(index)
    uncertain.meta = {"dropped": {image_id: {"dog": 1} for image_id in list(index.images)[::4]}}
    pools = Pools(uncertain)
    for category in index.categories:
        scan = [i for i in pools.ids if not pools.uncertain[i] and category not in pools.classes[i]]
        assert pools.by_count.get((category, 0), []) == scan
        drawn = traindata._without(pools, random.Random(3), category, 5)
        assert drawn == random.Random(3).sample(scan, 5)
    with pytest.raises(KnobError, match="images without"):
        traindata._without(pools, random.Random(0), index.categories[0], len(pools.ids))


def test_the_ov_questions_benchmark_finds_the_same_questions_as_the_scan_it_replaced(tmp_path):
    import json

    from mimic_utils.bench import perf

    path = perf.main(["--out-dir", str(tmp_path), "ov_questions", "--count", "300", "--images", "400"])
    figures = json.loads(path.read_text())["figures"]
    assert figures["questions"] == 300 and figures["same_questions"] is True
    assert "which_image" in figures["weights"] and figures["seconds_scan"] > 0
