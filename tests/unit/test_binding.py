"""The binding probe: text twins of which-image questions, their targets, the text-only forward, the table."""

from __future__ import annotations

import pytest
import torch

from mimic_utils.organism import binding, ov as organism_ov, recipe as organism


@pytest.fixture(scope="module")
def rows(organism_pool):
    return organism_ov.ov_rows(organism_pool, 12, 1, [2, 3], {"which_image": 1}, "test")


def _spans(ids, labels):
    """The labelled stretches of a conversation, as lists of token ids."""
    spans, current = [], []
    for token, label in zip(ids, labels):
        if label == -100:
            if current:
                spans.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    return spans + ([current] if current else [])


def test_a_twin_puts_each_images_description_inside_its_delimiters_in_order(organism_deep, organism_pool, rows):
    _, processor = organism_deep
    images, question, *_ = rows[0]
    prompt = binding.twin_prompt(processor, question, [binding.block_text(organism_pool, i) for i in images])
    blocks = [part.split("<|vision_end|>")[0] for part in prompt.split("<|vision_start|>")[1:]]
    assert blocks == [binding.block_text(organism_pool, i) for i in images]
    assert processor.image_token not in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert f"Question: {question}" in prompt


def test_the_answer_is_the_only_target_and_names_the_block_holding_the_category(organism_deep, organism_pool, rows):
    _, processor = organism_deep
    convs = binding.twin_conversations(processor, rows, organism_pool)
    assert convs.images == [[] for _ in rows]
    for (images, question, _f, answer, *_), ids, labels in zip(rows, convs.ids, convs.labels):
        (span,) = _spans(ids, labels)
        assert processor.tokenizer.decode(span) == answer + "<|im_end|>"
        category = question.split("contains a ")[1].split(". Which")[0]
        holders = [n + 1 for n, i in enumerate(images) if category in dict(organism_pool.index.images[str(i)].counts())]
        assert holders == [int(answer.split()[-1])]


def test_more_turns_ask_about_other_categories_each_answer_a_target(organism_deep, organism_pool, rows):
    _, processor = organism_deep
    convs = binding.twin_conversations(processor, rows, organism_pool, turns=4)
    tokenizer = processor.tokenizer
    several = 0
    for (images, *_), ids, labels in zip(rows, convs.ids, convs.labels):
        spans = [tokenizer.decode(s) for s in _spans(ids, labels)]
        text = tokenizer.decode(ids)
        questions = [q.split("\n")[0] for q in text.split("Question: ")[1:]]
        assert 1 <= len(spans) == len(questions) <= 4
        several += len(spans) > 1
        for q, said in zip(questions, spans):
            category = q.split("contains a ")[1].split(". Which")[0]
            k = int(said.removesuffix("<|im_end|>").split()[-1])
            holders = [n + 1 for n, i in enumerate(images)
                       if category in dict(organism_pool.index.images[str(i)].counts())]
            assert holders == [k]
    assert several > 0


def test_a_family_other_than_which_image_is_refused(organism_deep, organism_pool):
    _, processor = organism_deep
    with pytest.raises(ValueError, match="which_image"):
        binding.twin_conversations(processor, [([1, 2], "How many images are shown?", "image_total", "2")],
                                   organism_pool)


def test_a_batch_without_images_runs_as_text_with_the_same_loss(organism_deep, organism_pool, rows):
    model, processor = organism_deep
    model.eval()
    convs = binding.twin_conversations(processor, rows[:3], organism_pool)
    pad = model.config.text_config.pad_token_id
    with torch.no_grad():
        batched = organism.language_forward(model, None, convs, [0, 1, 2], 4, pad).loss
        one = [model(input_ids=torch.tensor([convs.ids[i]]), labels=torch.tensor([convs.labels[i]])) for i in range(3)]
    # the batch's loss is the mean over every answer token of the three
    tokens = [sum(label != -100 for label in convs.labels[i][1:]) for i in range(3)]
    expected = sum(o.loss * n for o, n in zip(one, tokens)) / sum(tokens)
    assert torch.allclose(batched, expected, atol=1e-5)


def test_the_failure_table_says_when_the_model_follows_the_fullest_block(organism_pool, rows):
    rule = [binding.fullest_block(organism_pool, images) for images, *_ in rows]
    table = binding.failure_table(rows, rule, organism_pool)
    assert table["agrees_with_fullest_block_rule"] == 1.0
    assert table["accuracy"] == table["fullest_block_rule_accuracy"]
    right = [int(row[3].split()[-1]) for row in rows]
    table = binding.failure_table(rows, right, organism_pool)
    assert table["accuracy"] == 1.0
    assert sum(cell["n"] for key, cell in table["by"].items() if key.startswith("answer")) == len(rows)


def test_the_command_line_refuses_bad_values_before_any_work(capsys):
    for argv in (["--name", "x", "--shape", "{not json"], ["--name", "x", "--turns", "0"],
                 ["--name", "x", "--images", "1", "2"]):
        with pytest.raises(SystemExit) as exit_:
            binding.main(argv)
        assert exit_.value.code == 2
    assert "--shape: not JSON" in capsys.readouterr().err


def test_a_shape_without_fresh_is_refused_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match="needs --fresh"):
        binding.probe_model(binding.BindingProbe(shape={"text_hidden": 256}), tmp_path / "no-si-here")


def test_question_first_moves_only_the_question_before_the_blocks(organism_deep, organism_pool, rows):
    _, processor = organism_deep
    images, question, *_ = rows[0]
    blocks = [binding.block_text(organism_pool, i) for i in images]
    usual = binding.twin_prompt(processor, question, blocks)
    first = binding.twin_prompt(processor, question, blocks, question_first=True)
    assert first.count(question) == 1
    order = [first.index(question), first.index("<|vision_start|>"), first.rindex("<|vision_end|>"),
             first.index("Answer:")]
    assert order == sorted(order)
    assert sorted(first) == sorted(usual)  # the same characters, rearranged


def test_balanced_rows_leave_no_fullest_block_to_follow(organism_pool):
    rows = binding.balanced_rows(organism_pool, 40, 3, [2, 4], "test")
    assert len(rows) == 40
    positions = set()
    for images, question, family, answer in rows:
        held = [set(dict(organism_pool.index.images[str(i)].counts())) for i in images]
        category = question.split("contains a ")[1].split(". Which")[0]
        assert family == binding.FAMILY and len(set(map(len, held))) == 1 and len(set(images)) == len(images)
        assert [n + 1 for n, cats in enumerate(held) if category in cats] == [int(answer.split()[-1])]
        positions.add(int(answer.split()[-1]))
    assert positions == {1, 2, 3, 4}
    table = binding.failure_table(rows, [binding.fullest_block(organism_pool, r[0]) for r in rows], organism_pool)
    assert table["fullest_block_rule_accuracy"] < 0.6  # the first block on every tie: right at position 1 only


def test_balanced_rows_say_when_the_scenes_cannot_supply_them():
    from mimic_utils.data import scenes
    from mimic_utils.organism import recipe

    few = recipe.render_pool(6, 0, recipe.TRAIN_STREAM, scenes.SceneParams(), 28, progress=False)
    with pytest.raises(ValueError, match="6 scenes cannot supply 5 questions"):
        binding.balanced_rows(few, 5, 0, [8, 8], "test")  # 8 distinct images from 6
