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
        category = binding.asked_category(question)
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
        assert 1 <= len(spans) == len(questions) <= 4 and len(set(questions)) == len(questions)
        several += len(spans) > 1
        for q, said in zip(questions, spans):
            category = binding.asked_category(q)
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


class _Pool:
    """A pool stand-in whose images hold the given categories (one object each)."""

    categories = ["cat", "dog", "bird", "cup", "car", "bus"]

    def __init__(self, held: list[list[str]]):
        class _Image:
            def __init__(self, names):
                self.names = names

            def counts(self):
                return [(name, 1) for name in self.names]

        self.index = type("Index", (), {"images": {str(i): _Image(n) for i, n in enumerate(held)}})()

    def __len__(self):
        return len(self.index.images)


def test_the_failure_table_counts_items_ties_and_the_rule_exactly():
    pool = _Pool([["dog"], ["cat", "cup"], ["bird"], ["dog", "car", "bus"], ["cup"], ["cat"]])
    question = binding.QUESTION.format
    rows = [([0, 1], question("dog"), "which_image", "image 1"),    # rule: block 2 (2 items vs 1)
            ([2, 5], question("bird"), "which_image", "image 1"),   # 1 vs 1: a tie, no rule
            ([4, 3], question("car"), "which_image", "image 2")]    # rule: block 2, right
    table = binding.failure_table(rows, [2, 1, 2], pool)  # the model: rule, right, rule (and right)
    assert table["accuracy"] == round(2 / 3, 3) and table["picks"] == [2, 1, 2]
    assert table["ties"] == round(1 / 3, 3)
    assert table["agrees_with_fullest_block_rule_untied"] == 1.0
    assert table["fullest_block_rule_accuracy_untied"] == 0.5
    assert table["by"]["items in its block: 1"] == {"n": 2, "accuracy": 0.5}
    assert table["by"]["items in its block: 3"] == {"n": 1, "accuracy": 1.0}
    assert table["by"]["items in the other blocks: 2"] == {"n": 1, "accuracy": 0.0}
    assert table["by"]["answer image 2"] == {"n": 1, "accuracy": 1.0}
    assert binding.fullest_block(pool, [2, 5]) is None and binding.fullest_block(pool, [0, 3]) == 2
    with pytest.raises(ValueError):
        binding.failure_table(rows, [1, 1], pool)  # a pick missing


def test_the_command_line_refuses_bad_values_before_any_work(capsys):
    expected = {("--shape", "{not json", "--fresh"): "--shape: not JSON", ("--shape", "[1]", "--fresh"): "JSON object",
                ("--shape", '{"text_hidden": 256}'): "needs --fresh", ("--turns", "0"): "must be >= 1",
                ("--eval-every", "0"): "must be >= 1", ("--lr", "0"): "--lr > 0", ("--images", "1", "2"): "2..10",
                ("--question-first", "--turns", "3"): "further turns", ("--out", "x", "--name", "../y"): "names a file"}
    for extra, message in expected.items():
        with pytest.raises(SystemExit) as exit_:
            binding.main(["--name", "x", *extra])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err, extra


def test_block_numbers_are_the_tokens_training_answers_with(organism_deep, organism_pool, rows):
    model, processor = organism_deep
    tokenizer = processor.tokenizer
    numbers = binding.number_tokens(tokenizer, 10)
    assert len(set(numbers)) == 10
    for k, token in enumerate(numbers, 1):
        assert tokenizer(f"image {k}<|im_end|>", add_special_tokens=False).input_ids[-2] == token
    picks = binding.predicted_blocks(model, processor, rows, organism_pool)
    assert len(picks) == len(rows) and all(1 <= p <= len(r[0]) for p, r in zip(picks, rows))

    class Splitting:  # a tokenizer that spells every number digit by digit
        def __call__(self, text, add_special_tokens=False):
            return type("Encoded", (), {"input_ids": [ord(c) for c in text.replace("image ", "image _")]})()

    with pytest.raises(ValueError, match="one token of its own"):
        binding.number_tokens(Splitting(), 10)


def test_the_asked_category_is_read_back_from_the_question():
    assert binding.asked_category(binding.QUESTION.format("teddy bear")) == "teddy bear"
    with pytest.raises(ValueError, match="not a which-image question"):
        binding.asked_category("How many images are shown?")


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


def test_labels_put_each_blocks_number_before_it_and_change_nothing_else(organism_deep, organism_pool, rows):
    _, processor = organism_deep
    images, question, *_ = rows[0]
    blocks = [binding.block_text(organism_pool, i) for i in images]
    usual = binding.twin_prompt(processor, question, blocks)
    labelled = binding.twin_prompt(processor, question, blocks, labelled=True)
    for k, text in enumerate(blocks, start=1):
        assert f"Image {k}: <|vision_start|>{text}<|vision_end|>" in labelled
    assert labelled.count("Image ") == len(blocks)
    stripped = labelled
    for k in range(1, len(blocks) + 1):
        stripped = stripped.replace(f"Image {k}: ", "", 1)
    assert stripped == usual
    convs = binding.twin_conversations(processor, rows[:3], organism_pool, labelled=True)
    assert all("Image 1:" in processor.tokenizer.decode(ids) for ids in convs.ids)


def test_balanced_rows_leave_no_fullest_block_to_follow(organism_pool):
    rows = binding.balanced_rows(organism_pool, 40, 3, [2, 4], "test")
    assert len(rows) == 40
    positions = set()
    for images, question, family, answer in rows:
        held = [set(dict(organism_pool.index.images[str(i)].counts())) for i in images]
        category = binding.asked_category(question)
        assert family == binding.FAMILY and len(set(map(len, held))) == 1 and len(set(images)) == len(images)
        assert [n + 1 for n, cats in enumerate(held) if category in cats] == [int(answer.split()[-1])]
        positions.add(int(answer.split()[-1]))
    assert positions == {1, 2, 3, 4}
    assert all(binding.fullest_block(organism_pool, images) is None for images, *_ in rows)  # every one a tie
    table = binding.failure_table(rows, [1] * len(rows), organism_pool)
    assert table["ties"] == 1.0 and table["agrees_with_fullest_block_rule_untied"] is None


def test_balanced_rows_say_when_the_scenes_cannot_supply_them():
    from mimic_utils.data import scenes
    from mimic_utils.organism import recipe

    few = recipe.render_pool(6, 0, recipe.TRAIN_STREAM, scenes.SceneParams(), 28, progress=False)
    with pytest.raises(ValueError, match="6 scenes cannot supply 5 questions"):
        binding.balanced_rows(few, 5, 0, [8, 8], "test")  # 8 distinct images from 6
