"""The organism's multi-image stage (ov): multi-image conversations, length buckets, checkpoint reuse, paths."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import yaml

from mimic_utils.artifacts import repo_root
from mimic_utils.data import scenes, traindata
from mimic_utils.data.tasks import Pools
from mimic_utils.models.vlm import load_adapter
from mimic_utils.organism import cli, ov as organism_ov, recipe as organism
from mimic_utils.organism.config import OrganismConfig

ROOT = repo_root()
SI = ROOT / "outputs" / "cpu" / "models" / "si"
OV = ROOT / "outputs" / "cpu" / "models" / "ov"


@pytest.fixture(scope="module")
def built(organism_deep):
    return organism_deep


@pytest.fixture(scope="module")
def pool(organism_pool):
    return organism_pool


def test_a_multi_image_conversation_is_encoded_as_the_processor_expands_it(built):
    _, processor = built
    question = "In image 2 only, how many dog objects can you see?"
    ids, labels = organism.encode_conversation(processor, question, "image_count", 3, "1", 16)
    from mimic_utils.data.prompts import build_messages

    prompt = processor.apply_chat_template(build_messages(question, 3, "common", "qwen2_vl"), add_generation_prompt=True,
                                           tokenize=False)
    image = scenes.Scene(torch.zeros(112, 112, 3, dtype=torch.uint8).numpy(), ()).to_pil()
    expected = processor(text=[prompt], images=[image] * 3, return_tensors="pt")["input_ids"][0].tolist()
    assert ids[:len(expected)] == expected
    assert processor.tokenizer.decode([t for t in labels if t != -100]) == "1<|im_end|>"


def test_rows_that_share_prompts_and_answers_encode_as_each_alone(built):
    """encode_rows renders and tokenizes each distinct prompt and answer once; every row still gets exactly
    the ids and labels it gets alone (labelled and unlabelled, label targets on), in the rows' order."""
    _, processor = built
    question = "In image 2 only, how many dog objects can you see?"
    rows = [([1, 2, 3], question, "image_count", "1", True), ([4, 5], question, "image_count", "1"),
            ([6, 7, 8], question, "image_count", "2", False), ([9, 1, 2], question, "image_count", "1", True),
            ([3], "How many images are shown?", "image_total", "1")]
    together = organism.encode_rows(processor, rows, 16, label_targets=True)
    for index, row in enumerate(rows):
        alone = organism.encode_rows(processor, [row], 16, label_targets=True)
        assert together.ids_and_labels(index) == alone.ids_and_labels(0)
    assert together.ids[0] != together.ids[2] and together.ids[0] == together.ids[3]  # "Image k: " labels, same n
    assert together.images == [row[0] for row in rows] and together.answer == ["1", "1", "2", "1", "1"]


def test_the_cached_forward_of_several_images_equals_the_pixel_forward(built, pool):
    """language_forward feeds each conversation's images, in order, as the processor's pixels would."""
    model, processor = built
    model.eval()
    side, n_tokens = organism.tokens_per_image(OrganismConfig(), processor)
    rows = [([3, 7, 1], "How many images are shown?", "image_total", "3"), ([5], "Is there a dog in the image?", "presence", "no")]
    convs = organism.encode_rows(processor, rows, n_tokens)
    features = organism.cache_vision(model, processor, pool, progress=False)
    pad = model.config.text_config.pad_token_id
    with torch.no_grad():
        cached = organism.language_forward(model, features, convs, [0], side, pad).logits
        pixel_values, grid = organism.patchify(pool.images[[3, 7, 1]], **organism.pixel_settings(processor))
        ids = torch.tensor([convs.ids[0]])
        direct = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values,
                       image_grid_thw=grid, mm_token_type_ids=(ids == model.config.image_token_id).int()).logits
    assert torch.allclose(cached, direct, atol=1e-4)


def test_token_budget_batches_mix_lengths_and_fit_the_budget_padded():
    """si's batches: uniform draws (so one-image families, whose lengths differ, mix in a batch), as many
    as fit the budget once padded to the longest."""
    lengths = [70] * 500 + [110] * 500
    budget = organism.TokenBudget(lengths, tokens=2000)
    rng = random.Random(0)
    mixed = 0
    for _ in range(300):
        picks = budget(rng)
        assert max(lengths[i] for i in picks) * len(picks) <= 2000
        assert max(lengths[i] for i in picks) * (len(picks) + 1) > 2000 - 110  # filled up to the last draw
        mixed += len({lengths[i] for i in picks}) == 2
    assert mixed > 290
    with pytest.raises(ValueError, match="does not fit"):
        organism.TokenBudget([3000], tokens=2000)


def test_the_unmasked_forward_of_a_right_padded_batch_has_the_masked_loss(built, pool):
    """language_forward passes no attention mask: right padding under causal attention leaves every real
    token's context and position as they were, so the loss equals the masked forward's."""
    model, processor = built
    side, n_tokens = 8, 16
    rows = [([1], "How many dog objects are there?", "counting", "2"),
            ([2, 5], "Which images contain a cat? Answer with each image.", "which_images", "image 2"),
            ([4], "What objects are in the image?", "describe", "1 dog, 2 cat, 1 bus")]
    convs = organism.encode_rows(processor, rows, n_tokens)
    features = organism.cache_vision(model, processor, pool, progress=False)[:8]
    pad = model.config.text_config.pad_token_id
    with torch.no_grad():
        unmasked = organism.language_forward(model, features, convs, [0, 1, 2], side, pad).loss
        masked = torch.stack([organism.language_forward(model, features, convs, [i], side, pad).loss
                              for i in range(3)])
    labelled = torch.tensor([sum(t != -100 for t in convs.labels[i][1:]) for i in range(3)], dtype=torch.float)
    assert torch.allclose(unmasked, (masked * labelled).sum() / labelled.sum(), atol=1e-5)


def test_length_buckets_fill_a_token_budget_and_draw_every_conversation_alike():
    lengths = [40] * 600 + [200] * 400
    buckets = organism.LengthBuckets(lengths, tokens=1000, buckets=5)  # groups of 200: 3 short, 2 long
    rng = random.Random(0)
    drawn = Counter()
    for _ in range(3000):
        picks = buckets(rng)
        assert sum(lengths[i] for i in picks) <= 1000 and len({lengths[i] for i in picks}) == 1
        drawn.update(picks)
    short = sum(drawn[i] for i in range(600)) / 600
    long = sum(drawn[i] for i in range(600, 1000)) / 400
    assert abs(short / long - 1) < 0.1  # the mix of the data is the mix trained on


def test_length_buckets_by_image_count_mix_the_families_of_one_count():
    """Keyed by the number of images, one-image conversations of different lengths (families) share
    buckets instead of making one bucket per family."""
    lengths = [40] * 300 + [60] * 300 + [200] * 400
    keys = [1] * 600 + [10] * 400
    buckets = organism.LengthBuckets(lengths, tokens=1000, buckets=5, keys=keys, seed=0)
    assert all(len({keys[i] for i in group}) == 1 for group in buckets.groups)
    assert all(len({lengths[i] for i in group}) == 2 for group in buckets.groups[:3])
    assert buckets.longest[:3] == [60, 60, 60]
    by_length = organism.LengthBuckets(lengths, tokens=1000, buckets=5)
    assert sum(len({lengths[i] for i in group}) == 1 for group in by_length.groups) >= 4


def test_labelled_conversations_carry_image_k_before_each_image(built, pool):
    _, processor = built
    weights = {"image_count": 1, "counting": 1}
    convs = organism_ov.stage_conversations(OrganismConfig(max_count=5), pool, processor, 200, 0, weights, [2, 4], 16,
                                            "t", image_labels=0.5)
    text = [processor.tokenizer.decode(ids) for ids in convs.ids]
    labelled = [t for t, f in zip(text, convs.family) if "Image 1: <|vision_start|>" in t]
    assert 30 < len(labelled) < 70 and all(f == "image_count" for t, f in zip(text, convs.family) if t in labelled)
    assert all(t.count("Image ") == len(images) for t, images in zip(text, convs.images) if t in labelled)


def test_label_targets_are_the_number_of_every_image_label_and_nothing_else(built):
    """With label_targets, the token after each "Image" of a labelled prompt is a target (the image's number)
    besides the answer; an unlabelled prompt, or label_targets off, keeps only the answer."""
    _, processor = built
    tokenizer = processor.tokenizer
    question = "In image 3 only, how many dog objects can you see?"
    ids, labels = organism.encode_conversation(processor, question, "image_count", 4, "1", 16, True, True)
    targets = [tokenizer.decode([t]) for t in labels if t != -100]
    assert targets == [" 1", " 2", " 3", " 4", "1", "<|im_end|>"]
    for labelled, dense in ((True, False), (False, True)):
        _, only_answer = organism.encode_conversation(processor, question, "image_count", 4, "1", 16, labelled, dense)
        assert tokenizer.decode([t for t in only_answer if t != -100]) == "1<|im_end|>"


def test_label_number_accuracy_reads_each_label_position(built, monkeypatch):
    """The probe scores the token after each "Image" against the label's number, per k: a model whose
    logits always favour " 2" is right at k = 2 and nowhere else."""
    from tests.unit.test_organism import SMALL

    model, processor = built
    two = processor.tokenizer(" 2", add_special_tokens=False).input_ids[0]

    def forward(model, features, convs, picks, side, pad):
        width = max(len(convs.ids[i]) for i in picks)
        logits = torch.zeros(len(picks), width, len(processor.tokenizer))
        logits[..., two] = 1.0
        return type("Out", (), {"logits": logits})()

    monkeypatch.setattr(organism, "language_forward", forward)
    found = organism_ov.label_number_accuracy(model, processor, SMALL,
                                              organism_ov.OvConfig(eval_images=[2, 4]), questions=12)
    assert found["2"] == 1.0 and found["1"] == found["3"] == 0.0 and set(found) == {"1", "2", "3", "4"}


def test_stage_conversations_follow_the_weights_and_hold_no_aggregation_family(built, pool):
    _, processor = built
    si = OrganismConfig(max_count=5, instruct_weights={"counting": 1, "choice": 1})
    weights = {"image_count": 2, "which_image": 1, "image_total": 1, "counting": 2, "choice": 2}
    convs = organism_ov.stage_conversations(si, pool, processor, 80, 0, weights, [1, 10], 16, "t")
    assert Counter(convs.family) == {"image_count": 20, "which_image": 10, "image_total": 10, "counting": 20, "choice": 20}
    assert not {"listing", "common", "oddone"} & set(convs.family)
    for family, images in zip(convs.family, convs.images):
        assert all(0 <= i < len(pool) for i in images)
        assert (len(images) == 1) if family in ("counting", "choice") else (1 <= len(images) <= 10)


def test_the_stage_tilts_its_counting_questions_by_its_own_count_weights_or_else_by_sis(built, pool, tmp_path):
    """``count_weights`` of the ov recipe sets the true counts its single-image counting questions draw; null
    keeps si's tilt; a list that does not give one weight per count si knows is refused before any work,
    naming the key, the value and the si folder."""
    _, processor = built
    si = OrganismConfig(max_count=5, count_weights=[1, 2, 3, 3, 3, 2])
    assert organism_ov.stage_count_weights(organism_ov.OvConfig(), si, tmp_path) == [1, 2, 3, 3, 3, 2]
    only_ones = organism_ov.OvConfig(count_weights=[0, 1, 0, 0, 0, 0])
    tilt = organism_ov.stage_count_weights(only_ones, si, tmp_path)
    assert tilt == [0, 1, 0, 0, 0, 0]
    convs = organism_ov.stage_conversations(si, pool, processor, 60, 0, {"counting": 1}, [1, 10], 16, "t", tilt)
    assert len(convs.answer) == 60 and set(convs.answer) == {"1"}
    mixed = organism_ov.stage_conversations(si, pool, processor, 60, 0, {"counting": 1}, [1, 10], 16, "t",
                                            si.count_weights)
    assert len(set(mixed.answer)) > 2
    with pytest.raises(ValueError, match=r"count_weights \[1, 1\] of the ov recipe: the si in .*si-here counts "
                                         r"0\.\.5, so it needs 6 weights, got 2"):
        organism_ov.stage_count_weights(organism_ov.OvConfig(count_weights=[1, 1]), si, tmp_path / "si-here")
    path = tmp_path / "organism_ov.yaml"
    for bad in ("[]", "[1, -1]", "[0, 0]", "[1, true]", "{1: 2}", "uniform"):
        path.write_text(f"count_weights: {bad}\n")
        with pytest.raises(ValueError, match=r"organism_ov\.yaml: count_weights must be null"):
            organism_ov.OvConfig.from_yaml(path)
    path.write_text("count_weights: [1, 1, 1, 1, 1, 1]\n")
    assert organism_ov.OvConfig.from_yaml(path).count_weights == [1] * 6
    assert organism_ov.count_tilt_line(organism_ov.OvConfig()) is None
    assert organism_ov.count_tilt_line(organism_ov.OvConfig.from_yaml(path)) == (
        "Counting tilt: the stage's single-image counting questions draw their true counts 0-5 by the weights "
        "[1, 1, 1, 1, 1, 1] (`count_weights`) instead of si's; held-out questions stay balanced.")


def test_the_stage_asks_count_crowded_of_its_counting_questions_of_crowded_images(built, pool, tmp_path):
    """``count_crowded`` sends that share of the stage's counting questions (true count 1 or more) to images
    holding two or more objects of other classes; 0 leaves the questions exactly as before the key; a share
    outside [0, 1] is refused, naming the file and the key."""
    _, processor = built
    si = OrganismConfig(max_count=5, count_weights=[1, 2, 3, 3, 3, 2])
    pools = Pools(pool.index)

    def crowded_share(count_crowded: float) -> tuple[float, list]:
        convs = organism_ov.stage_conversations(si, pool, processor, 300, 0, {"counting": 1}, [1, 10], 16, "t",
                                                si.count_weights, count_crowded=count_crowded)
        # counts 1 and 2: a 5-object world has crowded images for them (a count of 4 leaves one other object)
        images = [(imgs[0], int(answer)) for imgs, answer in zip(convs.images, convs.answer) if answer in ("1", "2")]
        crowded = [sum(pools.counts[str(i)].values()) - n >= 2 for i, n in images]
        return sum(crowded) / len(crowded), convs.ids

    plain, plain_ids = crowded_share(0.0)
    always, _ = crowded_share(1.0)
    assert always > plain + 0.2 and always > 0.9
    before = organism_ov.stage_conversations(si, pool, processor, 300, 0, {"counting": 1}, [1, 10], 16, "t",
                                             si.count_weights)
    assert before.ids == plain_ids  # the default draws what a recipe without the key drew
    path = tmp_path / "organism_ov.yaml"
    for bad in ("1.5", "-0.1", "true", "lots"):
        path.write_text(f"count_crowded: {bad}\n")
        with pytest.raises(ValueError, match=r"organism_ov\.yaml: count_crowded is a share in \[0, 1\]"):
            organism_ov.OvConfig.from_yaml(path)
    path.write_text("count_crowded: 0.7\n")
    config = organism_ov.OvConfig.from_yaml(path)
    assert config.count_crowded == 0.7
    assert organism_ov.count_crowded_line(organism_ov.OvConfig()) is None
    assert organism_ov.count_crowded_line(config).startswith("Crowded counting: 70% of the stage's single-image")


def test_ov_recipe_keys_are_validated_naming_the_file(tmp_path):
    path = tmp_path / "organism_ov.yaml"
    for text, message in {"colour: 1\n": "unknown key", "weights: {total_count: 1}\n": "weights",
                          "eval_images: [0, 4]\n": "eval_images", "bucket_by: family\n": "bucket_by",
                          "image_labels: 2\n": "image_labels", "echo: 2\n": "echo is true or false",
                          "label_targets: yes please\n": "label_targets is true or false",
                          "grow: [[3, 2, 100]]\n": "grow holds", "grow: [[2, 3]]\n": "grow holds",
                          "grow: [[2, 3, 0]]\n": "grow holds", "warm_images: [2]\n": "warm_images"}.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=rf"organism_ov\.yaml.*{message}"):
            organism_ov.OvConfig.from_yaml(path)


def test_an_ov_recorded_before_a_key_existed_is_reused_only_while_that_key_keeps_its_default(tmp_path):
    """A recipe key added later (bucket_by, image_labels, label_targets, echo, grow, curves_by_images,
    warm_weights, echo_count, echo_image, count_weights, count_crowded, format_images) defaults to
    the older recipe: a checkpoint whose training.json lacks it still matches a recipe at that default, and not
    one that sets it."""
    assert organism_ov.LATER_KEYS == ("bucket_by", "image_labels", "label_targets", "echo", "grow", "curves_by_images",
                                      "warm_weights", "echo_count", "echo_image", "count_weights", "count_crowded",
                                      "format_images")
    older = {k: v for k, v in asdict(organism_ov.OvConfig()).items() if k not in organism_ov.LATER_KEYS}
    si, ov, _ = fake_checkpoints(tmp_path, asdict(OrganismConfig()), older)
    assert organism_ov.reusable(ov, organism_ov.OvConfig(), si)[0]
    ok, why = organism_ov.reusable(ov, organism_ov.OvConfig(image_labels=0.5), si)
    assert not ok and "image_labels" in why
    ok, why = organism_ov.reusable(ov, organism_ov.OvConfig(echo=True), si)
    assert not ok and "echo" in why
    ok, why = organism_ov.reusable(ov, organism_ov.OvConfig(grow=[[3, 3, 100]]), si)
    assert not ok and "grow" in why
    ok, why = organism_ov.reusable(ov, organism_ov.OvConfig(warm_weights={"which_image": 1}), si)
    assert not ok and "warm_weights" in why
    for key in ("echo_count", "echo_image"):
        ok, why = organism_ov.reusable(ov, organism_ov.OvConfig(**{key: True}), si)
        assert not ok and key in why
    ok, why = organism_ov.reusable(ov, organism_ov.OvConfig(count_weights=[1] * 6), si)
    assert not ok and "count_weights" in why
    ok, why = organism_ov.reusable(ov, organism_ov.OvConfig(count_crowded=0.5), si)
    assert not ok and "count_crowded" in why


def test_the_phases_run_warm_then_grown_then_main_and_the_card_names_each():
    ov = organism_ov.OvConfig(warm_steps=600, warm_images=[2, 2], warm_lr=5e-4, grow=[[3, 3, 300], [4, 6, 200]],
                              images=[1, 10], steps=1000, lr=1e-3, warm_conversations=7, conversations=9)
    assert ov.phases() == [("ov-warm", [2, 2], 600, 5e-4, 7), ("ov-grow-3-3", [3, 3], 300, 5e-4, 7),
                           ("ov-grow-4-6", [4, 6], 200, 5e-4, 7), ("ov", [1, 10], 1000, 1e-3, 9)]
    assert organism_ov.curriculum_line(ov) == (
        "A curriculum: 600 steps on samples of 2 images (`ov-warm`, lr 0.0005), then 300 steps on samples of 3 "
        "images (`ov-grow-3-3`, lr 0.0005), then 200 steps on samples of 4-6 images (`ov-grow-4-6`, lr 0.0005), "
        "then 1000 steps on samples of 1-10 images (`ov`, lr 0.001).")
    assert organism_ov.OvConfig().phases() == [("ov", [1, 10], 1000, 1e-3, 60000)]
    assert organism_ov.curriculum_line(organism_ov.OvConfig()) == "1000 steps on 1-10 images (lr 0.001)."
    assert {"ov-warm", "ov-grow", "ov"} <= set(organism_ov.TRAIN_STAGES)


def test_warm_weights_shape_the_warm_and_grow_phases_only(tmp_path):
    """A focus run's schedule inside the stage: one family alone before the main phase, the mix in it."""
    ov = organism_ov.OvConfig(warm_steps=10, grow=[[2, 3, 5]], warm_weights={"which_image": 1, "image_count": 0})
    assert [ov.phase_weights(name) for name, *_ in ov.phases()] == [ov.warm_weights, ov.warm_weights, ov.weights]
    assert organism_ov.OvConfig(warm_steps=10).phase_weights("ov-warm") == organism_ov.OvConfig().weights
    assert organism_ov.curriculum_line(ov).endswith(
        "Before `ov` only which_image (1) (the `ov` phase's shares are those of `weights`).")
    (tmp_path / "ov.yaml").write_text("warm_weights: {which_image: 0}\n")
    with pytest.raises(ValueError, match=r"ov\.yaml: warm_weights gives every family a share of 0"):
        organism_ov.OvConfig.from_yaml(tmp_path / "ov.yaml")
    for bad in ("{dog: 1}", "{which_image: -1}", "{which_image: true}", "[which_image]"):
        (tmp_path / "ov.yaml").write_text(f"warm_weights: {bad}\n")
        with pytest.raises(ValueError, match=r"ov\.yaml: warm_weights must map families"):
            organism_ov.OvConfig.from_yaml(tmp_path / "ov.yaml")


def test_echoed_answers_are_scored_in_the_ground_truths_form_with_the_same_blind_baseline(tmp_path):
    """With echo the held-out which-image answers are asked as before (same questions, same "image k" ground
    truth, so the same blind baseline) and an answer "dog 3" is read back as "image 3" — only with the asked
    category before the number."""
    from tests.unit.test_organism import SMALL

    ov = organism_ov.OvConfig(eval_questions=32, eval_images=[4, 6], echo=True)
    records = organism_ov.heldout_ov_records(SMALL, ov, tmp_path, progress=False)
    plain = organism_ov.heldout_ov_records(SMALL, replace(ov, echo=False), None, progress=False)
    assert [(r["question"], r["gt"], r["image_ids"]) for r in records] == [
        (r["question"], r["gt"], r["image_ids"]) for r in plain]
    assert all(Path(image).is_file() for r in records for image in r["images"])
    assert not any(set(a["images"]) & set(b["images"]) for a, b in zip(records, plain))  # None: no PNG written
    echoed = [r for r in records if r.get("echo")]
    assert {r["family"] for r in echoed} == {"which_image", "which_images"}
    assert not any(r.get("echo") for r in plain)
    for record in echoed:
        category = record["targets"][0]
        right = organism_ov.exact_row(record, record["gt"].replace("image", category), {}, 1)
        wrong = organism_ov.exact_row(record, record["gt"].replace("image", "zebra"), {}, 1)
        assert right["score"] == 1.0 and right["echo"] and right["parsed"] == record["gt"]
        assert wrong["score"] == 0.0
    rows = [organism_ov.exact_row(r, "no", {}, 1) for r in records]
    assert organism_ov.per_image_scores(rows) == organism_ov.per_image_scores(
        [organism_ov.exact_row(r, "no", {}, 1) for r in plain])


def test_count_echoed_answers_are_scored_as_the_count_with_the_same_blind_baseline(tmp_path):
    """With echo_count the held-out count-in-image-i questions are the same (same ground truth, so the same
    blind baseline) and "dog 3 2" is read back as "2" — only with the asked category and image before it."""
    from tests.unit.test_organism import SMALL

    ov = organism_ov.OvConfig(eval_questions=32, eval_images=[4, 6], echo_count=True)
    records = organism_ov.heldout_ov_records(SMALL, ov, tmp_path, progress=False)
    plain = organism_ov.heldout_ov_records(SMALL, replace(ov, echo_count=False), tmp_path, progress=False)
    assert [(r["question"], r["gt"]) for r in records] == [(r["question"], r["gt"]) for r in plain]
    marked = [r for r in records if r.get("echo_count")]
    assert marked and {r["family"] for r in marked} == {"image_count"} and not any(r.get("echo") for r in records)
    for record in marked:
        category, image = record["targets"][0], traindata.named_image(record["question"])
        right = organism_ov.exact_row(record, f"{category} {image} {record['gt']}", {}, 1)
        other = organism_ov.exact_row(record, f"{category} {image % 4 + 1} {record['gt']}", {}, 1)
        assert right["score"] == 1.0 and right["echo_count"] and right["parsed"] == record["gt"]
        assert other["score"] == 0.0
    assert organism_ov.per_image_scores([organism_ov.exact_row(r, "1", {}, 1) for r in records]) == \
        organism_ov.per_image_scores([organism_ov.exact_row(r, "1", {}, 1) for r in plain])


def test_image_echoed_naming_answers_are_scored_without_the_number(tmp_path):
    from tests.unit.test_organism import SMALL

    ov = organism_ov.OvConfig(eval_questions=48, eval_images=[4, 6], echo_image=True,
                              weights={"naming_in_image": 1, "image_count": 1})
    records = organism_ov.heldout_ov_records(SMALL, ov, tmp_path, progress=False)
    marked = [r for r in records if r.get("echo_image")]
    assert marked and {r["family"] for r in marked} == {"naming_in_image"}
    for record in marked:
        image = traindata.named_image(record["question"])
        right = organism_ov.exact_row(record, f"{image} {record['gt']}", {}, 1)
        other = organism_ov.exact_row(record, f"{image % 4 + 1} {record['gt']}", {}, 1)
        assert right["score"] == 1.0 and right["echo_image"] and other["score"] == 0.0


def test_the_ov_card_says_when_its_answers_were_echoed(tmp_path):
    """The committed ov's scores and summary, carded as a recipe with and without echo."""
    committed = ROOT / "outputs" / "cpu" / "models" / "ov"
    scores = json.loads((committed / "eval.json").read_text())
    summary = json.loads((committed / "training.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    si_info = {"path": "outputs/cpu/models/si", "sha256": "0" * 64}
    for echo in (False, True):
        card = organism_ov.write_ov_card(tmp_path, organism_ov.OvConfig(echo=echo), summary, scores, "cmd", si_info)
        assert (organism_ov.ECHO_CARD_LINE in card.read_text()) == echo
    card = organism_ov.write_ov_card(tmp_path, organism_ov.OvConfig(echo_count=True), summary, scores, "cmd", si_info)
    assert organism_ov.ECHO_COUNT_CARD_LINE in card.read_text() and organism_ov.ECHO_CARD_LINE not in card.read_text()
    card = organism_ov.write_ov_card(tmp_path, organism_ov.OvConfig(echo_image=True), summary, scores, "cmd", si_info)
    assert organism_ov.ECHO_IMAGE_CARD_LINE in card.read_text() and organism_ov.ECHO_COUNT_CARD_LINE not in card.read_text()
    assert "Counting tilt" not in card.read_text()
    tilted = organism_ov.OvConfig(count_weights=[1] * 6)
    card = organism_ov.write_ov_card(tmp_path, tilted, summary, scores, "cmd", si_info)
    assert organism_ov.count_tilt_line(tilted) in card.read_text()


def test_exact_answers_are_read_whole():
    assert organism_ov.exact("image 3.", "image 3") and not organism_ov.exact("image 3", "image 1, image 3")


# --- the checkpoints: paths, reuse by `make study` ----------------------------------------------------


def fake_checkpoints(tmp_path: Path, si_config: dict, ov_config: dict) -> tuple[Path, Path, Path]:
    """A profile root with si and ov folders as training leaves them (weights stand-ins, training.json)."""
    models = tmp_path / "outputs" / "cpu" / "models"
    for name in ("si", "ov"):
        (models / name).mkdir(parents=True)
    (models / "si" / "model.safetensors").write_bytes(b"si weights")
    (models / "si" / "training.json").write_text(json.dumps({"config": si_config}))
    (models / "ov" / "model.safetensors").write_bytes(b"ov weights")
    si_sha = organism_ov.weights_sha256(models / "si")
    (models / "ov" / "training.json").write_text(json.dumps({"config": ov_config, "si": {"sha256": si_sha}}))
    params = tmp_path / "params" / "cpu"
    params.mkdir(parents=True)
    (params / "organism.yaml").write_text(yaml.safe_dump(si_config))
    (params / "organism_ov.yaml").write_text(yaml.safe_dump(ov_config))
    return models / "si", models / "ov", params


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A checkout whose training functions fail the test if called, and that records ov trainings."""
    si_config, ov_config = asdict(OrganismConfig()), asdict(organism_ov.OvConfig())
    si, ov, params = fake_checkpoints(tmp_path, si_config, ov_config)
    monkeypatch.setattr(cli, "repo_root", lambda: tmp_path)
    monkeypatch.setattr(cli, "profile_dir", lambda profile, root: root / "outputs" / profile)

    def no_si_training(*args, **kwargs):
        raise AssertionError("si was retrained")

    trained = []
    monkeypatch.setattr(cli, "train_organism", no_si_training)
    monkeypatch.setattr(organism_ov, "run", lambda ov_config, si_dir, out_dir, command, resumed_from=None: trained.append(out_dir))
    return {"si": si, "ov": ov, "params": params, "trained": trained}


def test_make_study_reuses_si_and_ov_when_their_recipes_match(study, capsys):
    assert cli.main(["--profile", "cpu", "--if-needed"]) == 0
    out = capsys.readouterr().out
    assert "reusing the si checkpoint" in out and "reusing the ov checkpoint" in out and study["trained"] == []


def test_make_study_never_retrains_si_silently(study, capsys):
    (study["params"] / "organism.yaml").write_text(yaml.safe_dump({**asdict(OrganismConfig()), "align_steps": 7}))
    assert cli.main(["--profile", "cpu", "--if-needed"]) == 2
    out = capsys.readouterr().out
    assert "does not retrain si" in out and "align_steps" in out and "--stage si" in out
    assert study["trained"] == []  # nor ov on top of a recipe that does not match


def test_make_study_retrains_ov_when_its_recipe_or_its_si_changed(study, capsys):
    (study["params"] / "organism_ov.yaml").write_text(yaml.safe_dump({**asdict(organism_ov.OvConfig()), "steps": 3}))
    assert cli.main(["--profile", "cpu", "--if-needed"]) == 0
    assert "differs in ['steps']" in capsys.readouterr().out and study["trained"] == [study["ov"]]
    (study["params"] / "organism_ov.yaml").write_text(yaml.safe_dump(asdict(organism_ov.OvConfig())))
    (study["si"] / "model.safetensors").write_bytes(b"other si weights")
    assert cli.main(["--profile", "cpu", "--if-needed", "--stage", "ov"]) == 0
    assert "other si weights" in capsys.readouterr().out and len(study["trained"]) == 2


def test_a_tried_recipe_trains_beside_the_committed_organisms(study, monkeypatch, tmp_path):
    """``--models`` puts both stages in another folder and their cards' command says so, so a tried recipe never
    overwrites the committed si or ov and its card retrains it."""
    commands = []
    monkeypatch.setattr(organism_ov, "run",
                        lambda ov_config, si_dir, out_dir, command, resumed_from=None: commands.append((si_dir, out_dir, command)))
    tried = tmp_path / "tried"
    (tried / "si").mkdir(parents=True)
    assert cli.main(["--profile", "cpu", "--stage", "ov", "--models", str(tried)]) == 0
    si_dir, out_dir, command = commands[0]
    assert (si_dir, out_dir) == (tried / "si", tried / "ov")
    assert command.endswith(f"--stage ov --models {tried}") and "--params" not in command
    assert (study["ov"] / "model.safetensors").read_bytes() == b"ov weights"


def tried_pair(root: Path, si_config: dict, ov_config: dict) -> Path:
    """A tried si + ov as ``--models`` leaves them: records, held-out answers and phase checkpoints."""
    tried = root / "cache" / "tried" / "longer"
    for stage, config in (("si", si_config), ("ov", ov_config)):
        folder = tried / stage
        (folder / "heldout").mkdir(parents=True)
        (folder / "checkpoints" / "abc").mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(f"tried {stage} weights".encode())
        multi = {"format_multi": {"n_images": 4}} if stage == "ov" else {}  # scored with the multi-image check
        (folder / "eval.json").write_text(json.dumps({"counting": {"score": 0.7}, **multi}))
        (folder / "heldout" / "predictions.jsonl").write_text("{}\n")
        record = {"config": config, "command": f"python -m mimic_utils.organism --stage {stage} --models {tried}"}
        if stage == "ov":
            record["si"] = {"path": str(tried / "si"), "sha256": organism_ov.weights_sha256(tried / "si")}
        (folder / "training.json").write_text(json.dumps(record))
    return tried


def test_a_tried_pair_is_adopted_only_with_the_profiles_recipe_and_keeps_the_replaced_records(study, monkeypatch,
                                                                                             tmp_path, capsys):
    carded = []
    monkeypatch.setattr(cli, "rewrite_card", lambda folder: carded.append(folder) or 0)
    monkeypatch.setattr(cli, "rewrite_ov_card", lambda folder, si_dir: carded.append(folder) or 0)
    longer = {**asdict(OrganismConfig()), "instruct_steps": 3000}
    tried = tried_pair(tmp_path, longer, asdict(organism_ov.OvConfig()))
    models = study["si"].parent
    adopt_args = ["--profile", "cpu", "--adopt", str(tried), "--retire", "v12"]
    assert cli.main(adopt_args) == 2  # the profile's recipe still says 1,500 steps
    out = capsys.readouterr().out
    assert "nothing changed" in out and "organism.yaml: differs" in out and "['instruct_steps']" in out
    assert "ov/training.json" not in out  # the ov itself matches; only si's recipe is named
    assert (models / "si" / "model.safetensors").read_bytes() == b"si weights" and not (models / "tried").exists()

    (study["params"] / "organism.yaml").write_text(yaml.safe_dump(longer))
    # an ov scored before the multi-image format check: re-scoring would add it, so it is refused before a move
    scored = (tried / "ov" / "eval.json").read_text()
    (tried / "ov" / "eval.json").write_text(json.dumps({"counting": {"score": 0.7}}))
    assert cli.main(adopt_args) == 2 and "--rewrite-card --models" in capsys.readouterr().out
    assert not (models / "tried").exists()
    (tried / "ov" / "eval.json").write_text(scored)
    assert cli.main(adopt_args) == 0 and carded == [models / "si", models / "ov"]
    for stage in ("si", "ov"):
        folder = models / stage
        assert (folder / "model.safetensors").read_bytes() == f"tried {stage} weights".encode()
        assert (folder / "heldout" / "predictions.jsonl").is_file() and not (folder / "checkpoints").exists()
        record = json.loads((folder / "training.json").read_text())
        assert record["command"] == f"python -m mimic_utils.organism --profile cpu --stage {stage}"
        assert record["adopted_from"]["command"].endswith(f"--stage {stage} --models {tried}")
        retired = models / "tried" / f"v12-{stage}"
        assert (retired / "training.json").is_file() and not (retired / "model.safetensors").exists()
    ov_record = json.loads((models / "ov" / "training.json").read_text())
    assert ov_record["si"]["sha256"] == organism_ov.weights_sha256(models / "si")
    assert ov_record["si"]["path"].endswith("outputs/cpu/models/si")
    assert yaml.safe_load((models / "tried" / "v12-si" / "organism.yaml").read_text())["instruct_steps"] == OrganismConfig().instruct_steps
    assert cli.main(["--profile", "cpu", "--if-needed"]) == 0 and study["trained"] == []  # make study reuses both
    assert cli.main(adopt_args) == 2 and "v12-si: exists" in capsys.readouterr().out

    # a card rewrite whose scores differ from the tried run's is reported, not passed over
    monkeypatch.setattr(cli, "rewrite_card", lambda folder: (folder / "eval.json").write_text('{"counting": 1}') or 0)
    assert cli.main(adopt_args[:-1] + ["v13"]) == 2
    out = capsys.readouterr().out
    assert "re-scored differently" in out and "in ['counting']" in out and "[organism] adopted " not in out


def test_notebooks_study_ov_and_finetune_si():
    def source(profile: str, notebook: str, key: str) -> str:
        values = yaml.safe_load((ROOT / "params" / profile / f"{notebook}.yaml").read_text())
        value = values[key]
        return (value[0] if isinstance(value, list) else value.get("base", value))["source"]

    for profile in ("cpu", "smoke"):
        assert source(profile, "02_zero_shot_diagnosis", "models_under_study") == "outputs/cpu/models/ov"
        assert source(profile, "03_attention_analysis", "model") == "outputs/cpu/models/ov"
        assert source(profile, "06_cross_benchmark_eval", "models_compared") == "outputs/cpu/models/ov"
        for notebook in ("04_data_centric_finetune", "05_masked_qlora_finetune"):
            assert source(profile, notebook, "base_model") == "outputs/cpu/models/si"
    paper = "llava-hf/llava-onevision-qwen2-0.5b-"
    assert source("paper", "03_attention_analysis", "model") == paper + "ov-hf"
    compared = yaml.safe_load((ROOT / "params" / "paper" / "06_cross_benchmark_eval.yaml").read_text())["models_compared"]
    assert compared["base"]["source"] == paper + "ov-hf" and compared["base-si"]["source"] == paper + "si-hf"
    for notebook in ("04_data_centric_finetune", "05_masked_qlora_finetune"):
        assert source("paper", notebook, "base_model") == paper + "si-hf"


def test_the_committed_ov_was_trained_from_the_committed_si_with_the_committed_recipe():
    config = organism_ov.OvConfig.from_yaml(ROOT / "params" / "cpu" / "organism_ov.yaml")
    ok, why = organism_ov.reusable(OV, config, SI)
    assert ok, why
    assert (OV / "model.safetensors").stat().st_size < 25e6


@pytest.mark.slow
def test_the_committed_ov_reloads_and_gives_its_recorded_scores(tmp_path):
    """The ov weights reload through the adapter, match their card's sha256 and re-score exactly the
    figures of its eval.json on the same held-out questions."""
    recorded = json.loads((OV / "training.json").read_text(encoding="utf-8"))
    assert organism_ov.weights_sha256(OV) in (OV / "README.md").read_text(encoding="utf-8")
    adapter = load_adapter(OV, family="qwen2_vl", dtype="float32")
    si_scores = json.loads((SI / "eval.json").read_text(encoding="utf-8"))
    scores = organism_ov.evaluate_ov(adapter, organism_ov.si_config(SI), organism_ov.OvConfig(**recorded["config"]),
                                     tmp_path / "heldout", si_scores, progress=False)
    assert scores == json.loads((OV / "eval.json").read_text(encoding="utf-8"))


def test_the_ov_card_table_reads_targets_blind_baselines_and_si(tmp_path):
    from mimic_utils.organism import card

    cell = {"n": 200, "lo": 0.6, "hi": 0.8, "blind": 0.4}
    (tmp_path / "eval.json").write_text(json.dumps({
        "ov": {"image_count": {**cell, "score": 0.72, "target": 0.7}, "image_describe": {**cell, "score": 0.3, "target": None}},
        "ov_labelled": {"image_count": {**cell, "score": 0.5, "target": 0.7}},
        "single": {"counting": {**cell, "score": 0.62, "si": 0.70}},
        "format_1img": {"counting": {**cell, "score": 1.0}}}))
    (tmp_path / "training.json").write_text(json.dumps({"seconds": {"ov": 1800, "total": 2400}}))
    table = card.card_table(tmp_path).set_index("question")
    assert bool(table.loc["image_count (4-10 images)", "met"]) and table.loc["image_count (4-10 images)", "blind"] == 0.4
    assert table.loc["single-image counting", "target"] == 0.65 and not bool(table.loc["single-image counting", "met"])
    assert table.loc["training minutes (2 cores)", "score"] == 30.0 and not bool(table.loc["training minutes (2 cores)", "met"])
    labelled = table.loc["image_count (4-10 images, labelled)"]
    assert labelled["score"] == 0.5 and labelled.isna()["target"] and labelled.isna()["met"]  # shown, not a target
    assert card.card_sentence(table.reset_index()).startswith("The organism meets 1 of its 3 targets")


def test_a_resumed_ov_run_counts_the_resumed_phases_time_or_says_its_time_is_a_lower_bound(tmp_path):
    """Phases resumed from an earlier run's checkpoints took their time there: the card's training time adds
    ``resumed_seconds`` when recorded, and otherwise says the figure is a lower bound and claims no target."""
    from mimic_utils.organism import card

    run = {"seconds": {"ov-grow": 600, "ov": 300, "total": 1200}}
    assert card.ov_training_minutes(run) == 15.0 and card.resumed_line(run) is None
    resumed = {**run, "resumed": {"ov-warm": 600}}
    assert card.ov_training_minutes(resumed) == 15.0
    assert "lower bound" in card.resumed_line(resumed)
    counted = {**resumed, "resumed_seconds": {"ov-warm": 450}, "resumed_from": "run A"}
    assert card.ov_training_minutes(counted) == 22.5
    assert "ov-warm at step 600" in card.resumed_line(counted) and "7.5 min" in card.resumed_line(counted)
    cell = {"n": 200, "score": 0.7, "lo": 0.6, "hi": 0.8, "blind": 0.4}
    (tmp_path / "eval.json").write_text(json.dumps({"ov": {"image_count": {**cell, "target": 0.7}},
                                                    "single": {}, "format_1img": {}}))
    for training, minutes, met in ((resumed, 15.0, None), (counted, 22.5, True),
                                   ({**counted, "resumed_seconds": {"ov-warm": 900}}, 30.0, False)):
        (tmp_path / "training.json").write_text(json.dumps(training))
        row = card.card_table(tmp_path).set_index("question").loc["training minutes (2 cores)"]
        assert row["score"] == minutes and (row["met"] is None if met is None else bool(row["met"]) == met)
    # over the target already on this run's clock: not met, known without the earlier time
    over = {"seconds": {"ov": 1800}, "resumed": {"ov-warm": 600}}
    assert card.ov_time_met(over) is False
    # a partial record of the earlier time is still a lower bound
    partial = {**run, "resumed": {"ov-warm": 600, "ov-grow-2-3": 400}, "resumed_seconds": {"ov-warm": 450}}
    assert card.ov_time_met(partial) is None and "lower bound" in card.resumed_line(partial)
    # phases listed in training order, whatever order the JSON file holds them in
    order = {"resumed": {"ov-grow-2-10": 10, "ov-warm": 600, "ov-grow-2-3": 400}}
    assert card.resumed_line(order).index("ov-warm") < card.resumed_line(order).index("ov-grow-2-3") < \
        card.resumed_line(order).index("ov-grow-2-10")
    (tmp_path / "training.json").write_text(json.dumps(resumed))
    sentence = card.card_sentence(card.card_table(tmp_path))
    assert "not known: training minutes" in sentence and "meets 1 of its 2 targets" in sentence


def test_notebook_01s_ov_mix_is_validated_naming_the_file_and_key(tmp_path):
    from mimic_utils import runner

    nb = next(n for n in runner.discover("cpu", ROOT) if n.stem == "01_data_build")
    values = yaml.safe_load((ROOT / "params" / "cpu" / "01_data_build.yaml").read_text())
    assert runner.load_parameters(nb, "cpu")["train_mix"]["ov"] == values["train_mix"]["ov"] > 0
    values["train_mix"]["ov_weights"] = {"total_count": 1}
    copy = tmp_path / "01_data_build.yaml"
    copy.write_text(yaml.safe_dump(values))
    with pytest.raises(runner.ParameterError, match=r"01_data_build\.yaml.*ov_weights.*total_count"):
        runner.load_parameters(runner.Notebook(nb.stem, nb.path, copy), "cpu")


@pytest.mark.slow
def test_the_ov_stage_runs_its_warm_grown_and_main_phases_and_resumes(tmp_path):
    """The whole ov stage at a few steps from a tiny si: a 2-3-image warm phase, a grown 4-image phase, then
    1-4 images, each with its own checkpoint and curve rows; a second call resumes them all and saves the same
    weights."""
    from tests.unit.test_organism import SMALL

    si_dir = tmp_path / "si"
    small = replace(SMALL, pool_images=64, heldout_images=100)  # held-out scenes enough for the card's 4-image check
    organism.train_organism(small, si_dir, progress=False)
    (si_dir / "training.json").write_text(json.dumps({"config": asdict(small)}))
    ov = organism_ov.OvConfig(pool_images=64, conversations=60, images=[1, 4], steps=2, warm_steps=2,
                              warm_conversations=30, warm_images=[2, 3], eval_every=2, batch_tokens=1024,
                              heldout_questions=20, eval_questions=16, format_questions=3, bucket_by="images",
                              image_labels=0.5, label_targets=True, echo=True, grow=[[4, 4, 1]])
    summary = organism_ov.train_ov(ov, si_dir, tmp_path / "ov", progress=False)
    assert [(e["stage"], e["step"]) for e in summary["log"]] == [
        ("ov-warm", 1), ("ov-warm", 2), ("ov-grow-4-4", 1), ("ov", 1), ("ov", 2)]
    assert "gen_format_1img" in summary["log"][1] and {"ov-warm", "ov-grow", "ov"} <= set(summary["seconds"])
    assert 0.0 <= summary["log"][1]["gen_format_4img"] <= 1.0  # MIMIC's questions over 4 images (formats.py)
    assert summary["resumed"] == {}  # every step trained on this run's clock
    first = (tmp_path / "ov" / "model.safetensors").read_bytes()
    again = organism_ov.train_ov(ov, si_dir, tmp_path / "ov", progress=False)
    assert again["log"] == summary["log"] and (tmp_path / "ov" / "model.safetensors").read_bytes() == first
    assert again["resumed"] == {"ov-warm": 2, "ov-grow-4-4": 1, "ov": 2}  # recorded: their time is not on its clock
    # ... but on their checkpoints': the earlier run's time of each phase, read back, not written in by hand
    assert set(again["resumed_seconds"]) == set(again["resumed"]) and summary["resumed_seconds"] == {}
    assert all(0 < again["resumed_seconds"][name] <= summary["seconds"]["total"] for name in again["resumed"])
    from mimic_utils.organism import card

    assert not card.lower_bound(again)


def test_held_out_questions_are_asked_in_both_layouts_when_the_stage_labels_images(tmp_path):
    """With image_labels > 0 every held-out per-image question is asked twice, unlabelled (the benchmark's
    layout) and labelled, and scored apart."""
    from tests.unit.test_organism import SMALL

    ov = organism_ov.OvConfig(eval_questions=16, eval_images=[4, 6], image_labels=0.5)
    records = organism_ov.heldout_ov_records(SMALL, ov, tmp_path, progress=False)
    plain = [r for r in records if not r.get("image_labels")]
    labelled = [r for r in records if r.get("image_labels")]
    assert len(plain) == len(labelled) == 16
    assert [r["id"] + "-labelled" for r in plain] == [r["id"] for r in labelled]
    assert [r["question"] for r in plain] == [r["question"] for r in labelled]
    assert len(organism_ov.heldout_ov_records(SMALL, replace(ov, image_labels=0.0), tmp_path, progress=False)) == 16
    rows = [organism_ov.exact_row(r, r["gt"] if r.get("image_labels") else "no", {}, 1) for r in records]
    assert all(r.get("image_labels", False) == ("labelled" in r["id"]) for r in rows)
    scores = organism_ov.per_image_scores([r for r in rows if r.get("image_labels")])
    assert {f: s["score"] for f, s in scores.items() if s["n"]} == {f: 1.0 for f, s in scores.items() if s["n"]}


def test_the_card_gives_the_number_of_images_no_per_count_blind_baseline():
    """Per image count, "how many images" has one answer, so its per-count blind would read 1.00 beside a
    perfect score: the card shows its per-count scores alone and keeps the blind for the other families."""
    def row(family, n, gt, output):
        return {"family": family, "knobs": {"n_images": n}, "gt": gt, "output": output, "score": float(gt == output)}
    rows = [row("image_total", 4, "4", "4"), row("image_total", 5, "5", "4"),
            row("which_image", 4, "image 2", "image 2"), row("which_image", 4, "image 1", "image 2")]
    scores = organism_ov.per_image_scores(rows)
    assert scores["image_total"]["per_image_count"]["5"]["blind"] == 1.0  # what the card must not show
    text = "\n".join(organism_ov.per_image_table(scores, "## held out"))
    blind_line = next(line for line in text.splitlines() if line.startswith("Per image count, score (blind)"))
    assert "which_image 4: 0.50 (0.50)" in blind_line and "image_total" not in blind_line
    assert "Per image count, image_total: 4: 1.00, 5: 0.00 — no blind baseline per count" in text
    only_lookup = "\n".join(organism_ov.per_image_table({"which_image": scores["which_image"]}, "## held out"))
    assert "image_total" not in only_lookup and "\n\n\n" not in only_lookup
    only_total = "\n".join(organism_ov.per_image_table({"image_total": scores["image_total"]}, "## held out"))
    assert "score (blind)" not in only_total and "Per image count, image_total" in only_total


def test_a_continuation_starts_from_ov_weights_beside_si_records(tmp_path):
    """The tried continuation probes' start: the ov folder's model files and si's recipe and scores, none of
    ov's own records (which would describe the run being continued as if it were si's)."""
    ov_dir, si_dir = tmp_path / "ov", tmp_path / "si"
    for folder, names in ((ov_dir, ["model.safetensors", "config.json", "training.json", "eval.json", "README.md"]),
                          (si_dir, ["training.json", "eval.json", "model.safetensors"])):
        folder.mkdir()
        for name in names:
            (folder / name).write_text(f"{folder.name}:{name}")
    start = organism_ov.continuation_start(ov_dir, si_dir, tmp_path / "start")
    assert {f.name: f.read_text() for f in start.iterdir()} == {
        "model.safetensors": "ov:model.safetensors", "config.json": "ov:config.json",
        "training.json": "si:training.json", "eval.json": "si:eval.json"}
    (start / "config.json").write_text("kept")
    organism_ov.continuation_start(ov_dir, si_dir, start)
    assert (start / "config.json").read_text() == "kept"


def test_a_key_added_later_names_a_new_checkpoint_folder_only_when_set():
    """``echo_count`` (UNDIGESTED_DEFAULTS) left at its default keeps a recipe's checkpoint folder the name it had
    before the key existed, so its finished phases still resume; set, it is another recipe."""
    import hashlib

    config = organism_ov.OvConfig.from_yaml(ROOT / "params" / "cpu" / "organism_ov.yaml")
    before = {k: v for k, v in asdict(config).items() if k not in organism_ov.UNDIGESTED_DEFAULTS}
    assert config.digest() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    assert replace(config, echo_count=True).digest() != config.digest()
    assert replace(config, count_weights=[1] * 6).digest() != config.digest()
    assert replace(config, count_crowded=0.5).digest() != config.digest()
    assert replace(config, format_images=2).digest() != config.digest()
