"""The minimal lookup probe: its sequences, targets and filler, a short run, the command line."""

from __future__ import annotations

import random
import re

import pytest
import torch

from mimic_utils.organism import binding, lookup


@pytest.fixture(scope="module")
def processor(organism_deep):
    return organism_deep[1]


def _blocks(ids, vocab):
    """The categories of each block of a sequence."""
    blocks, current = [], None
    for token in ids:
        if token == vocab.start:
            current = []
        elif token == vocab.end:
            blocks.append(current)
            current = None
        elif current is not None and token in vocab.categories:
            current.append(token)
    return blocks


def _answers(labels):
    return [i for i, label in enumerate(labels) if label != -100]


def test_every_target_is_the_number_of_the_block_holding_a_category_not_asked_before(processor):
    task = lookup.LookupTask(blocks=3, items=4, gap=5, queries=4)
    vocab = lookup.Vocabulary.of(processor, task.blocks)
    for seed in range(20):
        ids, labels = lookup.sample(task, vocab, random.Random(seed), gap=task.gap)
        blocks = _blocks(ids, vocab)
        assert [len(b) for b in blocks] == [4, 4, 4] and len({c for b in blocks for c in b}) == 12
        answers = _answers(labels)
        asked = [ids[i - 1 - task.gap] for i in answers]
        assert len(answers) == task.queries and len(set(asked)) == task.queries
        for i, category in zip(answers, asked):
            assert ids[i - task.gap:i] == vocab.filler[-task.gap:]
            (holder,) = [k for k, b in enumerate(blocks) if category in b]
            assert labels[i] == ids[i] == vocab.numbers[holder]


def test_echo_answers_restate_the_category_then_its_block_number(processor):
    task = lookup.LookupTask(blocks=3, gap=4, echo=True)
    vocab = lookup.Vocabulary.of(processor, task.blocks)
    ids, labels = lookup.sample(task, vocab, random.Random(1), gap=task.gap)
    blocks = _blocks(ids, vocab)
    answers = _answers(labels)
    assert len(answers) == 2 * task.queries
    for echo, number in zip(answers[::2], answers[1::2]):
        assert number == echo + 1 and ids[echo] == ids[echo - 1 - task.gap]  # the category asked, again
        assert ids[echo - task.gap:echo] == vocab.filler[-task.gap:]
        (holder,) = [k for k, b in enumerate(blocks) if ids[echo] in b]
        assert labels[echo] == ids[echo] and labels[number] == vocab.numbers[holder]


def test_labels_put_image_k_before_each_block_with_the_answer_token_inside(processor):
    task = lookup.LookupTask(blocks=3, items=2, queries=2, labels=True)
    vocab = lookup.Vocabulary.of(processor, task.blocks)
    ids, labels = lookup.sample(task, vocab, random.Random(4))
    text = processor.tokenizer.decode(ids)
    assert re.match(r"Image 1: <\|vision_start\|>.*<\|vision_end\|>Image 2: <\|vision_start\|>.*"
                    r"<\|vision_end\|>Image 3: <\|vision_start\|>", text)
    assert all(vocab.numbers[k] in vocab.labels[k] for k in range(task.blocks))
    plain, _ = lookup.sample(lookup.LookupTask(blocks=3, items=2, queries=2), vocab, random.Random(4))
    assert [t for t in ids if t not in {t for label in vocab.labels for t in label}] == \
        [t for t in plain if t not in {t for label in vocab.labels for t in label}]


def test_echo_accuracy_needs_the_category_and_the_number_right(processor):
    vocab = lookup.Vocabulary.of(processor, 2)
    dog, cat = vocab.categories[:2]
    ids = torch.tensor([[vocab.start, dog, vocab.end, dog, dog, vocab.numbers[0]]] * 2)
    labels = torch.tensor([[-100, -100, -100, -100, dog, vocab.numbers[0]]] * 2)

    class Fixed(torch.nn.Module):
        def forward(self, input_ids):
            logits = torch.zeros(*input_ids.shape, len(processor.tokenizer))
            logits[0, 3, dog] = logits[0, 4, vocab.numbers[0]] = 5.0  # row 0: both right
            logits[1, 3, cat] = logits[1, 4, vocab.numbers[0]] = 5.0  # row 1: the number right, the copy wrong
            return type("Out", (), {"logits": logits})()

    assert lookup.accuracy(lookup.answer_logits(Fixed(), ids), vocab, labels) == 1.0
    assert lookup.echo_accuracy(lookup.answer_logits(Fixed(), ids), vocab, labels) == 0.5


def test_reverse_queries_name_a_block_not_asked_before_and_answer_its_category(processor):
    task = lookup.LookupTask(blocks=4, items=1, gap=3, queries=3, reverse=True)
    vocab = lookup.Vocabulary.of(processor, task.blocks)
    for seed in range(20):
        ids, labels = lookup.sample(task, vocab, random.Random(seed), gap=task.gap)
        blocks = _blocks(ids, vocab)
        answers = _answers(labels)
        asked = [ids[i - 1 - task.gap] for i in answers]
        assert [len(b) for b in blocks] == [1] * 4 and len(answers) == 3 and len(set(asked)) == 3
        for i, number in zip(answers, asked):
            assert ids[i - task.gap:i] == vocab.filler[-task.gap:]
            assert labels[i] == ids[i] == blocks[vocab.numbers.index(number)][0]


def test_reverse_accuracy_picks_among_the_sequences_block_categories(processor):
    vocab = lookup.Vocabulary.of(processor, 2)
    dog, cat, bus = vocab.categories[:3]
    count = vocab.counts[0]
    ids = torch.tensor([[vocab.start, count, dog, vocab.end, vocab.start, count, cat, vocab.end, vocab.newline,
                         vocab.numbers[1], cat]] * 2)
    labels = torch.full_like(ids, -100)
    labels[:, -1] = cat
    logits = torch.zeros(2, ids.shape[1] - 1, len(processor.tokenizer))
    logits[:, -1, bus] = 9.0  # a category no block holds does not count
    logits[0, -1, cat] = logits[1, -1, dog] = 5.0
    assert lookup.reverse_accuracy(logits, vocab, ids, labels) == 0.5
    # an earlier answer is no longer a candidate: a second query that prefers it picks the other block
    two = torch.tensor([[vocab.start, count, dog, vocab.end, vocab.start, count, cat, vocab.end, vocab.newline,
                         vocab.numbers[1], cat, vocab.newline, vocab.numbers[0], dog]])
    marked = torch.full_like(two, -100)
    marked[0, 10], marked[0, 13] = cat, dog
    prefers_cat = torch.zeros(1, two.shape[1] - 1, len(processor.tokenizer))
    prefers_cat[..., cat] = 5.0
    assert lookup.reverse_accuracy(prefers_cat, vocab, two, marked) == 1.0


def test_reverse_chance_counts_the_answers_already_given():
    assert lookup.reverse_chance(lookup.LookupTask(blocks=2, items=1, queries=1, reverse=True)) == 0.5
    six = lookup.LookupTask(blocks=6, items=1, queries=5, reverse=True)
    assert abs(lookup.reverse_chance(six) - (1 / 6 + 1 / 5 + 1 / 4 + 1 / 3 + 1 / 2) / 5) < 1e-12


def test_blocks_are_written_as_the_twins_write_them(processor):
    task = lookup.LookupTask(items=3, queries=1)
    vocab = lookup.Vocabulary.of(processor, task.blocks)
    ids, _ = lookup.sample(task, vocab, random.Random(3))
    text = processor.tokenizer.decode(ids)
    for block in text.split("<|vision_start|>")[1:]:
        assert re.fullmatch(r"[1-5] [a-z ]+(, [1-5] [a-z ]+){2}", block.split("<|vision_end|>")[0])
    assert vocab.later_counts[0] == vocab.numbers[0]  # " 1" after a comma is the answer token for block 1


def test_the_filler_is_read_off_the_real_twin_prompt(processor):
    vocab = lookup.Vocabulary.of(processor, 2)
    tokenizer = processor.tokenizer
    prompt = binding.twin_prompt(processor, binding.QUESTION.format("cat"), ["2 dog", "1 cat"]) + "image"
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    assert ids[-len(vocab.filler):] == vocab.filler
    assert tokenizer.decode(ids[-len(vocab.filler) - 1:-len(vocab.filler)]) == " cat"
    assert tokenizer.decode(vocab.filler).startswith(". Which image is it?") and len(vocab.filler) == 18


def test_the_no_gap_share_drops_the_filler_in_training_draws_only(processor):
    task = lookup.LookupTask(gap=6, no_gap_share=1.0, queries=3)
    vocab = lookup.Vocabulary.of(processor, task.blocks)
    train, train_labels = lookup.sample(task, vocab, random.Random(1))
    held, _ = lookup.sample(task, vocab, random.Random(1), gap=task.gap)
    assert vocab.filler[-1] not in train and len(held) == len(train) + 3 * 6
    assert all(train[i - 1] in vocab.categories for i in _answers(train_labels))


def test_training_fillers_vary_between_min_train_gap_and_gap(processor):
    task = lookup.LookupTask(gap=6, min_train_gap=2, queries=1)
    vocab = lookup.Vocabulary.of(processor, task.blocks)
    rng = random.Random(2)
    widths = set()
    for _ in range(60):
        ids, labels = lookup.sample(task, vocab, rng)
        (answer,) = _answers(labels)
        asked = max(i for i in range(answer) if ids[i] in vocab.categories)
        width = answer - asked - 1
        widths.add(width)
        assert ids[asked + 1:answer] == vocab.filler[len(vocab.filler) - width:]
    assert widths == {2, 3, 4, 5, 6}


def test_accuracy_picks_among_the_block_numbers_only(processor):
    vocab = lookup.Vocabulary.of(processor, 2)

    class Prefers:
        """Puts the most weight on a word token, then on block 2's number."""

        def eval(self):
            pass

        def __call__(self, input_ids):
            logits = torch.zeros(*input_ids.shape, len(processor.tokenizer))
            logits[..., vocab.categories[0]] = 9.0
            logits[..., vocab.numbers[1]] = 5.0
            return type("Out", (), {"logits": logits})()

    ids = torch.tensor([[vocab.start, vocab.end, vocab.numbers[1], vocab.numbers[0]]])
    labels = torch.tensor([[-100, -100, vocab.numbers[1], vocab.numbers[0]]])
    assert lookup.accuracy(lookup.answer_logits(Prefers(), ids), vocab, labels) == 0.5


def test_a_tokenizer_that_splits_a_number_is_refused(processor):
    tokenizer = processor.tokenizer

    class Splitting:
        def __call__(self, text, add_special_tokens=False):
            ids = tokenizer(text, add_special_tokens=False).input_ids
            return type("Encoded", (), {"input_ids": ids + ids if text == " 2" else ids})()

        def convert_tokens_to_ids(self, token):
            return tokenizer.convert_tokens_to_ids(token)

    splitting = type("Processor", (), {"tokenizer": Splitting(), "image_token": processor.image_token,
                                       "apply_chat_template": processor.apply_chat_template})()
    with pytest.raises(ValueError, match="' 2' is not one token"):
        lookup.Vocabulary.of(splitting, 2)


@pytest.mark.parametrize(("task", "message"), [
    (lookup.LookupTask(gap=19), "gap 19 is outside 0..18"),
    (lookup.LookupTask(gap=3, min_train_gap=4), "min_train_gap 4 is outside 0..gap"),
    (lookup.LookupTask(items=2, queries=3), "queries \\(3\\) exceed items \\(2\\)"),
    (lookup.LookupTask(blocks=10, items=9, queries=1), "need 90 categories"),
    (lookup.LookupTask(no_gap_share=1.5), "no_gap_share 1.5"),
    (lookup.LookupTask(steps=10, warm_steps=10), "warm_steps 10 is outside 0..steps - 1"),
    (lookup.LookupTask(blocks=3, items=2, queries=1, reverse=True), "reverse needs items 1"),
    (lookup.LookupTask(blocks=2, items=1, queries=2, reverse=True), "reverse needs items 1"),
    (lookup.LookupTask(blocks=3, items=1, queries=1, reverse=True, echo=True), "reverse and echo"),
    (lookup.LookupTask(blocks=6, items=1, queries=3, reverse=True, warm_steps=5, warm_blocks=3),
     "needs queries below it"),
])
def test_a_task_the_vocabulary_cannot_supply_is_refused_before_any_model(processor, task, message, monkeypatch):
    def no_model(*_args, **_kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(lookup.tiny, "build_organism", no_model)
    with pytest.raises(ValueError, match=message):
        lookup.run(task, processor, {})


def test_warm_steps_ask_every_query_at_distance_zero_first(processor, monkeypatch):
    gaps = []
    real = lookup.batch

    def recording(task, vocab, rng, n, pad, gap=None):
        if n == task.batch:
            gaps.append(gap)
        return real(task, vocab, rng, n, pad, gap)

    monkeypatch.setattr(lookup, "batch", recording)
    shape = {"text_hidden": 32, "text_layers": 1, "text_heads": 2, "text_intermediate": 64}
    lookup.run(lookup.LookupTask(gap=3, steps=5, warm_steps=2, batch=4, heldout=8, eval_every=5), processor, shape,
               progress=False)
    assert gaps == [0, 0, None, None, None]


def test_warm_blocks_show_fewer_blocks_in_the_warm_steps_only(processor, monkeypatch):
    shown = []
    real = lookup.batch

    def recording(task, vocab, rng, n, pad, gap=None):
        if n == task.batch:
            shown.append(task.blocks)
        return real(task, vocab, rng, n, pad, gap)

    monkeypatch.setattr(lookup, "batch", recording)
    shape = {"text_hidden": 32, "text_layers": 1, "text_heads": 2, "text_intermediate": 64}
    task = lookup.LookupTask(blocks=3, items=2, queries=2, steps=4, warm_steps=2, warm_blocks=2, batch=4, heldout=8,
                             eval_every=4)
    record = lookup.run(task, processor, shape, progress=False)
    assert shown == [2, 2, 3, 3] and record["chance"] == 0.333


def test_a_short_run_records_its_curve_and_hands_out_each_unfinished_point(processor):
    shape = {"text_hidden": 32, "text_layers": 1, "text_heads": 2, "text_intermediate": 64}
    partials = []
    record = lookup.run(lookup.LookupTask(steps=5, batch=4, heldout=8, eval_every=2), processor, shape,
                        progress=False, on_point=partials.append)
    assert [e["step"] for e in record["curve"]] == [2, 4, 5] and record["finished"] is True
    assert all(0.0 <= e["heldout"] <= 1.0 for e in record["curve"]) and record["chance"] == 0.5
    # a run stopped after step 4 would have left its first two points, marked unfinished
    assert [[e["step"] for e in p["curve"]] for p in partials] == [[2], [2, 4]]
    assert all(p["finished"] is False and "minutes" in p for p in partials)
    echoed = lookup.run(lookup.LookupTask(steps=2, batch=4, heldout=8, eval_every=2, echo=True), processor, shape,
                        progress=False)
    assert 0.0 <= echoed["curve"][-1]["heldout_full"] <= echoed["curve"][-1]["heldout"]


def test_the_answer_numbers_are_tokenized_as_the_answers_end(processor):
    vocab = lookup.Vocabulary.of(processor, 4)
    assert vocab.numbers == binding.number_tokens(processor.tokenizer, 4)


@pytest.mark.parametrize(("argv", "message"), [
    (["--name", "a b"], "--name names a file"),
    (["--name", "x", "--blocks", "1"], "--blocks within 2..10"),
    (["--name", "x", "--steps", "0"], "must be >= 1"),
    (["--name", "x", "--gap", "-1"], "gap -1 is outside"),
    (["--name", "x", "--gap", "3", "--min-train-gap", "4"], "min_train_gap 4 is outside"),
    (["--name", "x", "--no-gap-share", "1.5"], "no_gap_share 1.5"),
    (["--name", "x", "--steps", "5", "--warm-steps", "5"], "warm_steps 5 is outside"),
    (["--name", "x", "--blocks", "3", "--warm-blocks", "2"], "warm_blocks 2 needs warm_steps > 0"),
    (["--name", "x", "--blocks", "3", "--warm-steps", "2", "--warm-blocks", "4"], "warm_blocks 4 needs"),
])
def test_the_command_line_refuses_bad_values_before_any_training(argv, message, capsys, monkeypatch):
    def no_training(*_args, **_kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(lookup, "run", no_training)
    with pytest.raises(SystemExit) as stopped:
        lookup.main(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
