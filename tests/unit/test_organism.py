"""The organism's recipe: data layout matches the real processor, every stage runs, resumes and reloads."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from mimic_utils.data import scenes
from mimic_utils.models import tiny
from mimic_utils.organism import card as organism_card, cli, probe as organism_probe, recipe
from mimic_utils.organism.config import CHOICE_FAMILY, CHOICE_KINDS, OrganismConfig
from mimic_utils.models.vlm import load_adapter

SMALL = OrganismConfig(pool_images=48, heldout_images=24, vision_steps=3, align_steps=2, instruct_steps=2,
                                instruct_conversations=48, batch=8, heldout_questions=16, max_count=2)
#: the recipe's new parts at a few steps: the deeper language model, multiple choice, tilted counts
SMALL_DEEP = replace(SMALL, instruct_weights={"counting": 2, "presence": 1, "listing": 1, "naming": 1, "choice": 2},
                     count_weights=[1, 2, 2], heldout_choice_questions=12, listing_present=0.75, batch_tokens=512,
                     **tiny.ORGANISM_SHAPES["deep"])


@pytest.fixture(scope="module")
def built():
    return tiny.build_organism()


def test_patchify_equals_the_qwen2_vl_image_processor(built):
    _, processor = built
    pool = recipe.render_pool(3, 0, recipe.TRAIN_STREAM, scenes.SceneParams(), 28, progress=False)
    ours, grid = recipe.patchify(pool.images, **recipe.pixel_settings(processor))
    theirs = processor.image_processor([scenes.Scene(img.numpy(), ()).to_pil() for img in pool.images],
                                       return_tensors="pt")
    assert torch.equal(grid, theirs["image_grid_thw"])
    assert torch.allclose(ours, theirs["pixel_values"], atol=1e-5)


def test_encoded_conversation_equals_the_processor_expansion(built):
    _, processor = built
    ids, labels = recipe.encode_conversation(processor, "How many dog objects are there?", "counting", 1, "3", 16)
    from mimic_utils.data.prompts import build_messages

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
    labels = recipe.cell_labels([obj], ["cat", "dog"], 112, 28)
    assert labels[2, 1] == 2 and labels.sum() == 2


def test_listing_present_sets_the_share_of_listing_questions_not_answered_none():
    pool = recipe.render_pool(400, 0, recipe.TRAIN_STREAM, scenes.SceneParams(), 28, progress=False)
    from mimic_utils.data.traindata import single_image_questions

    def none_share(present):
        rows = single_image_questions(pool.index, 400, families=("listing",), listing_present=present)
        return sum(r["gt"] == "none" for r in rows) / len(rows)

    assert none_share(None) > 0.6  # uniform supercategories: "none" is most answers (issue #25)
    assert 0.15 < none_share(0.75) < 0.35
    assert none_share(1.0) == 0.0


def test_describe_lists_counts_in_category_order():
    assert recipe.describe({"dog": 2, "bus": 1}, ["bus", "dog"]) == "1 bus, 2 dog"
    assert recipe.describe({}, ["bus"]) == "none"


@pytest.mark.slow
@pytest.mark.parametrize("config", [SMALL, SMALL_DEEP], ids=["wide", "deep-with-choice"])
def test_every_stage_runs_resumes_and_the_saved_model_reloads(tmp_path, config):
    summary = recipe.train_organism(config, tmp_path / "base", progress=False)
    assert [e["stage"] for e in summary["log"]][::2][:2] == ["vision", "vision"]
    assert {e["stage"] for e in summary["log"]} == {"vision", "align", "instruct"}
    first = (tmp_path / "base" / "model.safetensors").read_bytes()
    again = recipe.train_organism(config, tmp_path / "base", progress=False)  # all checkpoints complete
    assert (tmp_path / "base" / "model.safetensors").read_bytes() == first
    assert again["log"] == summary["log"]
    adapter = load_adapter(tmp_path / "base", family="qwen2_vl", dtype="float32")
    text = adapter.model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (
        config.text_hidden, config.text_layers, config.text_intermediate)
    records = recipe.heldout_records(config, tmp_path / "heldout", progress=False)
    scores = recipe.evaluate_single_image(adapter, records, tmp_path / "heldout" / "p.jsonl", progress=False)
    assert set(scores) >= {"counting", "presence", "listing", "naming", "counting_by_true_count"}
    families = {k: s for k, s in scores.items() if k not in ("counting_by_true_count", "listing_present")}
    assert sum(s["n"] for s in families.values()) == config.heldout_questions
    assert all(0 <= s["blind"] <= 1 for s in families.values())
    if "listing_present" in scores:  # a subset of listing: the questions not answered "none"
        assert scores["listing_present"]["n"] < scores["listing"]["n"]
    curves = {k for entry in summary["log"] for k in entry}
    assert ("tf_choice" in curves) == ("choice" in config.instruct_weights)
    choices = recipe.heldout_choice_records(config, tmp_path / "heldout", progress=False)
    choice = recipe.evaluate_choice(adapter, choices, tmp_path / "heldout" / "c.jsonl", progress=False)
    assert choice["n"] == config.heldout_choice_questions and 0 <= choice["parse_rate"] <= 1
    assert set(choice["by_kind"]) == set(CHOICE_KINDS) and 0.2 <= choice["chance"] <= 0.5
    assert choice["lo"] <= choice["score"] <= choice["hi"] and choice["parse_lo"] <= choice["parse_rate"]
    assert all(s["lo"] <= s["score"] <= s["hi"] for k, s in scores.items() if k != "counting_by_true_count")


def test_the_card_is_written_after_training_and_rewritten_from_the_record_alone(tmp_path):
    """score_and_card after training, then --rewrite-card from training.json + loss.csv: same scores, a card
    with intervals, targets and the curve of every missed target."""
    import json

    config = replace(SMALL_DEEP, heldout_questions=10, heldout_choice_questions=6)
    out = tmp_path / "models" / "base"
    machine = {"cpu_model": "Test CPU", "cpu_count": 2, "matmul_gflops": 12.5}
    summary = {**recipe.train_organism(config, out, progress=False), "machine": machine}
    organism_card.write_curves(out, summary["log"])
    (out / "training.json").write_text(json.dumps({"config": asdict(config), "seconds": summary["seconds"],
                                                   "parameters": summary["parameters"], "command": "cmd",
                                                   "machine": machine}))
    scores = cli.score_and_card(out, config, summary, "cmd")
    assert {"choice", "choice_parse_rate"} <= set(scores)
    first = (out / "README.md").read_text(encoding="utf-8")
    assert "| 95% interval | blind | target | met |" in first and "multiple choice, letter parse rate" in first
    assert "training time (this machine: Test CPU, 2 cores, matmul 12.5 GFLOP/s)" in first
    missed = [r for r in organism_card.score_rows(scores) if r["met"] is False]
    assert all(f"{organism_card.LABELS.get(r['question'], r['question'])}: " in first for r in missed)
    assert cli.rewrite_card(out) == 0
    assert json.loads((out / "eval.json").read_text(encoding="utf-8")) == scores
    assert (out / "README.md").read_text(encoding="utf-8") == first


def test_curve_trend_reads_the_last_interval_of_a_held_out_curve():
    log = [{"stage": "instruct", "step": 300, "tf_counting": 0.5}, {"stage": "instruct", "step": 301, "loss": 1.0},
           {"stage": "instruct", "step": 600, "tf_counting": 0.6}, {"stage": "align", "step": 900, "tf_counting": 0.1}]
    assert organism_card.curve_trend(log, "counting") == "teacher-forced 0.50 → 0.60 over steps 300–600 (still rising)"
    assert organism_card.curve_trend(log[:2], "counting") == "no curve recorded"
    flat = log[:1] + [{"stage": "instruct", "step": 600, "tf_counting": 0.505}]
    assert organism_card.curve_trend(flat, "counting").endswith("(flat)")


@pytest.mark.slow
def test_an_interrupted_stage_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """Interrupt stage 0 during step 3 of 4, resume: the weights equal a run that was never stopped."""
    pool = recipe.render_pool(16, 0, recipe.TRAIN_STREAM, SMALL.scene_params(), 28, progress=False)
    schedule = recipe.StageSchedule(steps=4, lr=1e-3, batch=4, warmup=1, checkpoint_every=2, eval_every=100)

    def run(path: Path):
        torch.manual_seed(0)
        model, processor = tiny.build_organism()
        recipe.vision_stage(model, processor, pool, pool, schedule, 0, path, [], progress=False)
        return model

    uninterrupted = run(tmp_path / "a.pt")
    real, calls = recipe.patchify, []

    def interrupted_patchify(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user stops the run during step 3
        return real(*args, **kwargs)

    monkeypatch.setattr(recipe, "patchify", interrupted_patchify)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.pt")
    monkeypatch.setattr(recipe, "patchify", real)
    assert torch.load(tmp_path / "b.pt", weights_only=True)["step"] == 2  # plain tensors and values only
    resumed = run(tmp_path / "b.pt")
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_card_table_reads_the_card_and_marks_targets(tmp_path):
    import json

    assert organism_card.card_table(tmp_path) is None  # a real checkpoint's folder has no organism card
    (tmp_path / "eval.json").write_text(json.dumps({
        "counting": {"n": 10, "score": 0.85}, "presence": {"n": 10, "score": 0.5},
        "listing": {"n": 10, "score": 0.9, "blind": 0.3}, "listing_present": {"n": 5, "score": 0.9, "blind": 0.1},
        "counting_by_true_count": {"0": 1.0, "1": 0.7}}))
    (tmp_path / "training.json").write_text(json.dumps({"seconds": {"total": 3900}}))
    table = organism_card.card_table(tmp_path).set_index("question")
    assert bool(table.loc["counting", "met"]) and not bool(table.loc["presence", "met"])
    assert not bool(table.loc["listing_present", "met"]) and table.loc["listing_present", "target"] == 0.95
    assert pd.isna(table.loc["listing", "target"]) and table.loc["listing", "blind"] == 0.3
    assert table.loc["counting, true count 1", "score"] == 0.7
    assert table.loc["training minutes (2 cores)", "score"] == 65.0
    assert not bool(table.loc["training minutes (2 cores)", "met"])
    sentence = organism_card.card_sentence(table.reset_index())
    assert sentence.startswith("The organism meets 1 of its 4 targets; it misses presence 0.50 (target 0.9)")
    assert 'listing, answer not "none" (micro F1) 0.90 (target 0.95)' in sentence and "training minutes (2 cores) 65.00" in sentence


@pytest.mark.slow
def test_the_committed_organism_reloads_and_gives_its_recorded_scores(tmp_path):
    """The si weights in outputs/cpu/models/si reload with from_pretrained (through the adapter) and score
    exactly what their model card records on the same held-out questions."""
    import hashlib
    import json

    from mimic_utils.artifacts import repo_root

    folder = repo_root() / "outputs" / "cpu" / "models" / "si"
    recorded = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() in card
    config = OrganismConfig(**recorded["config"])
    adapter = load_adapter(folder, family="qwen2_vl", dtype="float32")
    records = recipe.heldout_records(config, tmp_path / "heldout", progress=False)
    scores = recipe.evaluate_single_image(adapter, records, tmp_path / "p.jsonl", progress=False)
    if config.instruct_weights.get(CHOICE_FAMILY):
        choices = recipe.heldout_choice_records(config, tmp_path / "heldout", progress=False)
        scores.update(recipe.choice_scores(
            recipe.evaluate_choice(adapter, choices, tmp_path / "c.jsonl", progress=False)))
    assert scores == json.loads((folder / "eval.json").read_text(encoding="utf-8"))


def test_family_shares_follow_the_weights_and_sum_to_the_count():
    shares = recipe.family_shares(1000, {"counting": 2, "presence": 2, "listing": 1, "naming": 1})
    assert shares == {"counting": 334, "presence": 334, "listing": 166, "naming": 166}
    assert sum(recipe.family_shares(7, {"a": 1, "b": 1, "c": 1}).values()) == 7


def test_instruct_weights_with_an_unknown_family_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "organism.yaml"
    path.write_text("instruct_weights: {counting: 2, colour: 1}\n")
    with pytest.raises(ValueError, match=r"organism\.yaml.*instruct_weights"):
        OrganismConfig.from_yaml(path)


# --- multiple choice, tokens, shapes, count weights, probe ---------------------------------------------


@pytest.fixture(scope="module")
def choice_pool():
    return recipe.render_pool(400, 0, recipe.TRAIN_STREAM, scenes.SceneParams(), 28, progress=False)


def test_letters_a_to_e_and_numbers_are_single_tokens(built):
    _, processor = built
    tokenizer = processor.tokenizer
    for text in [*"ABCDE", *(str(n) for n in range(21))]:
        for form in (text, " " + text):
            assert len(tokenizer(form, add_special_tokens=False).input_ids) == 1, form
        ids = tokenizer(text + "<|im_end|>", add_special_tokens=False).input_ids
        assert ids == [tokenizer.convert_tokens_to_ids(text), tokenizer.eos_token_id], text
    lines = tokenizer("\nA. 3\nB. dog", add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(lines)[1:3] == ["A", "."]


def test_choice_answers_are_uniform_over_positions_and_well_formed(choice_pool):
    from collections import Counter

    records = recipe.choice_questions(choice_pool.index, 4000, seed=0, max_count=5)
    assert Counter(r["sub_task"] for r in records) == dict.fromkeys(CHOICE_KINDS, 1000)
    by_size = Counter(len(r["options"]) for r in records)
    assert set(by_size) == {2, 3, 4, 5}
    positions = Counter((len(r["options"]), r["letters"].index(r["answer"])) for r in records)
    for (size, position), hits in positions.items():
        assert abs(hits / by_size[size] - 1 / size) < 0.05, (size, position, hits, by_size[size])
    assert len({p for _, p in positions}) == 5
    from mimic_utils.data.tasks import Pools

    pools = Pools(choice_pool.index)
    for r in records:
        opts, image = r["options"], r["image_ids"][0]
        assert len(set(opts)) == len(opts) and r["letters"] == list("ABCDE"[:len(opts)])
        assert opts[r["letters"].index(r["answer"])] == r["right"] and r["gt"] == r["answer"]
        classes = pools.classes[image]
        if r["sub_task"] == "count":
            assert r["right"] == str(pools.counts[image].get(r["question"].split(" objects")[0][9:], 0))
            assert sorted(map(int, opts)) == list(range(min(map(int, opts)), min(map(int, opts)) + len(opts)))
        elif r["sub_task"] in ("category", "naming"):
            assert [o for o in opts if o in classes] == [r["right"]]
            assert r["sub_task"] != "naming" or classes == {r["right"]}
        else:
            supers = {choice_pool.index.supercategory_of[c] for c in classes}
            assert [o for o in opts if o in supers] == [r["right"]]


def test_choice_prompt_is_muirbench_and_trains_the_letter(built, choice_pool):
    from mimic_utils.evaluation import external_benchmarks as benchmarks
    from mimic_utils.models import vlm

    model, processor = built
    (record,) = recipe.choice_questions(choice_pool.index, 1, seed=3, kinds={"category": 1})
    bench = recipe.choice_bench_record(record, ["x.png"])
    prompt = recipe.choice_prompt(record)
    assert prompt == benchmarks.muirbench_prompt(bench) == benchmarks.build_prompt(bench)
    assert prompt.endswith("\nAnswer with the option's letter from the given choices directly.")
    assert prompt.split("\n")[1].startswith("A. ")
    ids, labels = recipe.encode_conversation(processor, prompt, CHOICE_FAMILY, 1, record["answer"], 16)
    adapter = vlm.adapter_from_model(model, processor, "qwen2_vl")
    rendered = adapter.render_prompt(prompt, 1, recipe.CHOICE_TASK)  # what evaluation sends
    image = scenes.Scene(torch.zeros(112, 112, 3, dtype=torch.uint8).numpy(), ()).to_pil()
    expected = processor(text=[rendered], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    assert ids[:len(expected)] == expected
    assert processor.tokenizer.decode([t for t in labels if t != -100]) == record["answer"] + "<|im_end|>"


def test_count_weights_tilt_the_training_counts(choice_pool):
    from mimic_utils.data.traindata import single_image_questions

    single = single_image_questions(choice_pool.index, 200, seed=0, max_count=5, families=("counting",),
                                    count_weights=[0, 0, 1, 1, 1, 0])
    assert {int(r["gt"]) for r in single} == {2, 3, 4}
    choice = recipe.choice_questions(choice_pool.index, 100, seed=0, kinds={"count": 1},
                                       count_weights=[0, 0, 1, 1, 1, 0])
    assert {int(r["right"]) for r in choice} == {2, 3, 4}
    balanced = single_image_questions(choice_pool.index, 300, seed=0, max_count=5, families=("counting",))
    assert {int(r["gt"]) for r in balanced} == set(range(6))


def test_recipe_keys_are_validated_naming_the_file(tmp_path):
    path = tmp_path / "organism.yaml"
    cases = {
        "count_weights: [1, 2]\n": "count_weights",
        "count_weights: [1, 1, true, 2, 2, 1]\n": "count_weights",  # the ov recipe's check, shared
        "count_weights: [0, 0, 0, 0, 0, 0]\n": "count_weights",
        "count_weights: 3\n": "count_weights",
        "text_hidden: 190\ntext_heads: 4\n": "text_heads=4 must divide",
        "choice_kinds: {colour: 1}\n": "choice_kinds",
        "choice_options: [1, 4]\n": "choice_options",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=rf"organism\.yaml.*{message}"):
            OrganismConfig.from_yaml(path)
    path.write_text("instruct_weights: {counting: 2, choice: 1}\ncount_weights: [1, 1, 2, 2, 2, 1]\n")
    assert OrganismConfig.from_yaml(path).instruct_weights["choice"] == 1


def test_the_deeper_shape_costs_about_what_the_wide_one_does():
    # the next recipe (params/cpu/organism.yaml still holds the committed organism's, until it is retrained)
    costs = {}
    for name, shape in {"wide": tiny.ORGANISM_SHAPES["wide"], "recipe": tiny.ORGANISM_SHAPES["deep"]}.items():
        model_config = tiny.organism_config(**shape)
        params = sum(p.numel() for p in transformers_model(model_config).parameters())
        costs[name] = (params, tiny.text_cost(model_config, context=48)["flops_per_token"])
        assert params * 4 < 25e6  # float32 weights under 25 MB
    assert 0.85 < costs["recipe"][0] / costs["wide"][0] < 1.15
    assert 0.85 < costs["recipe"][1] / costs["wide"][1] < 1.15


def transformers_model(config):
    from transformers import Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration(config)


def test_the_recorded_first_organism_reads_back_as_the_wide_shape_without_choice():
    config = OrganismConfig()
    assert config.text_shape() == tiny.ORGANISM_SHAPES["wide"]
    assert "choice" not in config.instruct_weights and config.count_weights is None


def test_plan_steps_share_the_time_budget_like_the_recipe():
    config = replace(SMALL, align_steps=100, instruct_steps=300)
    plan = organism_probe.plan_steps(config, 1.0, None, {"align": 0.1, "instruct": 0.3})
    assert plan == {"align": 60, "instruct": 180}  # 60 * 0.1 + 180 * 0.3 = 60 s
    assert organism_probe.plan_steps(config, None, 3, {}) == {"align": 3, "instruct": 3}


@pytest.mark.slow
def test_the_probe_command_trains_both_shapes_and_writes_its_figures(tmp_path):
    import json

    import yaml

    from dataclasses import asdict

    model, processor = tiny.build_organism()
    tiny.save_tiny(model, processor, tmp_path / "base")  # stands in for the committed organism
    params = tmp_path / "organism.yaml"
    recipe = {**asdict(SMALL_DEEP), "heldout_images": 40}
    params.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "models" / "probe.json"
    argv = ["--probe", "--steps", "2", "--params", str(params), "--base", str(tmp_path / "base"), "--out", str(out),
            "--pool-images", "48", "--conversations", "64", "--heldout-questions", "8", "--choice-questions", "8",
            "--threads", "1", "--quiet"]
    assert cli.main(argv) == 0
    figures = json.loads(out.read_text())
    assert figures["timestamp"] and figures["command"].startswith("python -m mimic_utils.organism --probe")
    assert set(figures["shapes"]) == {"256x4", "192x8"}
    for label, result in figures["shapes"].items():
        assert result["steps"] == {"align": 2, "instruct": 2}
        assert result["generated"]["choice"]["n"] == 8 and "parse_rate" in result["generated"]["choice"]
        assert sum(v["n"] for k, v in result["generated"].items() if k in ("counting", "presence", "listing",
                                                                           "naming")) == 8
        assert {"tf_choice", "tf_counting"} <= set(result["teacher_forced"])
        assert result["text_cost"]["layers"] == int(label.split("x")[1])
    assert "| generated choice letter parse rate |" in out.with_suffix(".md").read_text()


def test_make_study_reuses_the_committed_organism_with_the_committed_recipe():
    from dataclasses import asdict

    from mimic_utils.artifacts import repo_root

    config = OrganismConfig.from_yaml(repo_root() / "params" / "cpu" / "organism.yaml")
    assert organism_card.trained_config(repo_root() / "outputs" / "cpu" / "models" / "si") == asdict(config)


def test_the_card_keeps_the_recorded_time_note_and_reads_only_stages_as_stages(tmp_path):
    """A record with a time note (why a stage's time was counted from another run, as the first committed si
    had) and a ``vision_resumed`` entry (not a stage): the note follows the time line, the entry is not a stage."""
    import json

    from mimic_utils.artifacts import repo_root

    scores = json.loads((repo_root() / "outputs" / "cpu" / "models" / "si" / "eval.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    summary = {"seconds": {"render": 60.0, "total": 3000.0, "vision": 1200.0, "vision_resumed": 1.7},
               "parameters": 10, "log": [], "vision_note": "stage 0 was resumed from another run's checkpoint"}
    card = organism_card.write_card(tmp_path, OrganismConfig(), summary, scores, "cmd").read_text()
    line = next(text for text in card.splitlines() if text.startswith("- training time"))
    assert line.endswith("render 1.0 min, vision 20.0 min, total 50.0 min — target ≤ 60 min met. "
                         "Stage 0 was resumed from another run's checkpoint")


def test_changed_keys_are_empty_exactly_when_the_recipes_are_equal():
    assert organism_card.changed_keys({"a": 1, "b": 2}, {"a": 1, "b": 2}) == []
    assert organism_card.changed_keys({"a": 1, "b": 3}, {"a": 1, "b": 2}) == ["b"]
    assert organism_card.changed_keys({"a": 1, "old": 2}, {"a": 1, "new": None}) == ["new", "old"]  # None is a value
    assert organism_card.changed_keys({"a": 1}, {"a": 1, "new": 0}) == ["new"]
