"""The organism's recipe: data layout matches the real processor, every stage runs, resumes and reloads."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mimic_utils import organism, organism_card, scenes, tiny
from mimic_utils.models import load_adapter

SMALL = organism.OrganismConfig(pool_images=48, heldout_images=24, vision_steps=3, align_steps=2, instruct_steps=2,
                                instruct_conversations=48, batch=8, heldout_questions=16, max_count=2)


@pytest.fixture(scope="module")
def built():
    return tiny.build_organism()


def test_patchify_equals_the_qwen2_vl_image_processor(built):
    _, processor = built
    pool = organism.render_pool(3, 0, organism.TRAIN_STREAM, scenes.SceneParams(), 28, progress=False)
    ours, grid = organism.patchify(pool.images, **organism.pixel_settings(processor))
    theirs = processor.image_processor([scenes.Scene(img.numpy(), ()).to_pil() for img in pool.images],
                                       return_tensors="pt")
    assert torch.equal(grid, theirs["image_grid_thw"])
    assert torch.allclose(ours, theirs["pixel_values"], atol=1e-5)


def test_encoded_conversation_equals_the_processor_expansion(built):
    _, processor = built
    ids, labels = organism.encode_conversation(processor, "How many dog objects are there?", "counting", 1, "3", 16)
    from mimic_utils.prompts import build_messages

    prompt = processor.apply_chat_template(build_messages("How many dog objects are there?", 1, "counting", "qwen2_vl"),
                                           add_generation_prompt=True, tokenize=False)
    image = scenes.Scene(torch.zeros(112, 112, 3, dtype=torch.uint8).numpy(), ()).to_pil()
    expected = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    assert ids[:len(expected)] == expected
    answer = [t for t in labels if t != -100]
    assert processor.tokenizer.decode(answer) == "3<|im_end|>"
    assert labels[:len(expected)] == [-100] * len(expected)


def test_cell_labels_put_each_object_in_the_cell_of_its_centre():
    obj = scenes.SceneObject("dog", 18, (30, 60, 20, 10), 0.0)  # centre (40, 65): row 2, column 1
    labels = organism.cell_labels([obj], ["cat", "dog"], 112, 28)
    assert labels[2, 1] == 2 and labels.sum() == 2


def test_describe_lists_counts_in_category_order():
    assert organism.describe({"dog": 2, "bus": 1}, ["bus", "dog"]) == "1 bus, 2 dog"
    assert organism.describe({}, ["bus"]) == "none"


@pytest.mark.slow
def test_every_stage_runs_resumes_and_the_saved_model_reloads(tmp_path):
    summary = organism.train_organism(SMALL, tmp_path / "base", progress=False)
    assert [e["stage"] for e in summary["log"]][::2][:2] == ["vision", "vision"]
    assert {e["stage"] for e in summary["log"]} == {"vision", "align", "instruct"}
    first = (tmp_path / "base" / "model.safetensors").read_bytes()
    again = organism.train_organism(SMALL, tmp_path / "base", progress=False)  # all checkpoints complete
    assert (tmp_path / "base" / "model.safetensors").read_bytes() == first
    assert again["log"] == summary["log"]
    adapter = load_adapter(tmp_path / "base", family="qwen2_vl", dtype="float32")
    records = organism.heldout_records(SMALL, tmp_path / "heldout", progress=False)
    scores = organism.evaluate_single_image(adapter, records, tmp_path / "heldout" / "p.jsonl", progress=False)
    assert set(scores) >= {"counting", "presence", "listing", "naming", "counting_by_true_count"}
    assert sum(s["n"] for k, s in scores.items() if k != "counting_by_true_count") == SMALL.heldout_questions


@pytest.mark.slow
def test_an_interrupted_stage_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """Interrupt stage 0 during step 3 of 4, resume: the weights equal a run that was never stopped."""
    pool = organism.render_pool(16, 0, organism.TRAIN_STREAM, SMALL.scene_params(), 28, progress=False)
    schedule = organism.StageSchedule(steps=4, lr=1e-3, batch=4, warmup=1, checkpoint_every=2, eval_every=100)

    def run(path: Path):
        torch.manual_seed(0)
        model, processor = tiny.build_organism()
        organism.vision_stage(model, processor, pool, pool, schedule, 0, path, [], progress=False)
        return model

    uninterrupted = run(tmp_path / "a.pt")
    real, calls = organism.patchify, []

    def interrupted_patchify(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user stops the run during step 3
        return real(*args, **kwargs)

    monkeypatch.setattr(organism, "patchify", interrupted_patchify)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.pt")
    monkeypatch.setattr(organism, "patchify", real)
    assert torch.load(tmp_path / "b.pt", weights_only=False)["step"] == 2
    resumed = run(tmp_path / "b.pt")
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_card_table_reads_the_card_and_marks_targets(tmp_path):
    import json

    assert organism_card.card_table(tmp_path) is None  # a real checkpoint's folder has no organism card
    (tmp_path / "eval.json").write_text(json.dumps({
        "counting": {"n": 10, "score": 0.85}, "presence": {"n": 10, "score": 0.5},
        "listing": {"n": 10, "score": 0.9}, "counting_by_true_count": {"0": 1.0, "1": 0.7}}))
    (tmp_path / "training.json").write_text(json.dumps({"seconds": {"total": 3900}}))
    table = organism_card.card_table(tmp_path).set_index("question")
    assert bool(table.loc["counting", "met"]) and not bool(table.loc["presence", "met"])
    assert table.loc["listing", "met"] is None
    assert table.loc["counting, true count 1", "score"] == 0.7
    assert table.loc["training minutes (2 cores)", "score"] == 65.0
    assert not bool(table.loc["training minutes (2 cores)", "met"])


@pytest.mark.slow
def test_the_committed_organism_reloads_and_gives_its_recorded_scores(tmp_path):
    """The weights in outputs/cpu/models/base reload with from_pretrained (through the adapter) and score
    exactly what their model card records on the same held-out questions."""
    import hashlib
    import json

    from mimic_utils.artifacts import repo_root

    folder = repo_root() / "outputs" / "cpu" / "models" / "base"
    recorded = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() in card
    config = organism.OrganismConfig(**recorded["config"])
    adapter = load_adapter(folder, family="qwen2_vl", dtype="float32")
    records = organism.heldout_records(config, tmp_path / "heldout", progress=False)
    scores = organism.evaluate_single_image(adapter, records, tmp_path / "p.jsonl", progress=False)
    assert scores == json.loads((folder / "eval.json").read_text(encoding="utf-8"))


def test_family_shares_follow_the_weights_and_sum_to_the_count():
    shares = organism.family_shares(1000, {"counting": 2, "presence": 2, "listing": 1, "naming": 1})
    assert shares == {"counting": 334, "presence": 334, "listing": 166, "naming": 166}
    assert sum(organism.family_shares(7, {"a": 1, "b": 1, "c": 1}).values()) == 7


def test_instruct_weights_with_an_unknown_family_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "organism.yaml"
    path.write_text("instruct_weights: {counting: 2, colour: 1}\n")
    with pytest.raises(ValueError, match=r"organism\.yaml.*instruct_weights"):
        organism.OrganismConfig.from_yaml(path)
