"""Option-likelihood scoring of multiple choice on tiny models of every family: the one-forward path reads
the same log-probabilities as generation's first step and as the appended-continuation path, batches do
not change them, and a benchmark run writes rows the transfer tables read."""

from __future__ import annotations

import json

import pytest
import torch

from mimic_utils.analysis import cross_benchmark
from mimic_utils.evaluation import external_benchmarks as bm
from mimic_utils.evaluation import likelihood
from test_external_benchmarks import mc_record, save_muirbench

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava_onevision", "internvl")
LETTERS = ["A", "B", "C"]
OPTIONS = ["cat", "two dogs", "bird"]


@pytest.fixture(autouse=True)
def one_thread(single_thread):
    """Tiny models on one thread (see conftest.single_thread)."""


def flat(values: list[list[float]]) -> list[float]:
    return [v for row in values for v in row]


def samples(make_image) -> list[dict]:
    """Two multiple-choice samples of different lengths (2 and 3 images), so the batch is left-padded."""
    prompt = bm.build_prompt(mc_record())
    return [{"images": [make_image(56, 56, 1), make_image(84, 56, 2)], "question": prompt,
             "task_family": "muirbench", "letters": LETTERS, "options": OPTIONS},
            {"images": [make_image(56, 84, 3), make_image(56, 56, 4), make_image(84, 84, 5)],
             "question": prompt + " Think of the second image.", "task_family": "muirbench", "letters": LETTERS,
             "options": OPTIONS}]


@pytest.mark.parametrize("family", FAMILIES)
def test_letter_logprobs_are_generations_first_step(tiny_adapter, make_image, family):
    adapter = tiny_adapter(family)
    batch_samples = samples(make_image)
    found = likelihood.option_logprobs(adapter, batch_samples, [LETTERS, LETTERS])
    batch = adapter.prepare(batch_samples)
    with torch.no_grad():
        steps = adapter.model.generate(**batch.inputs, max_new_tokens=1, do_sample=False, output_scores=True,
                                       return_dict_in_generate=True, pad_token_id=adapter.tokenizer.pad_token_id)
    first = torch.log_softmax(steps.scores[0].float(), dim=-1)
    for row, sample in enumerate(batch_samples):
        prompt = adapter.render_prompt(sample["question"], len(sample["images"]), "muirbench")
        ids = [likelihood.continuation_tokens(adapter.tokenizer, prompt, letter)[0] for letter in LETTERS]
        assert found[row] == pytest.approx([float(first[row, i]) for i in ids], abs=1e-4)
        assert all(value < 0 for value in found[row])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_appended_path_agrees_with_the_one_forward_path_and_batching_changes_nothing(tiny_adapter, make_image,
                                                                                           family):
    adapter = tiny_adapter(family)
    batch_samples = samples(make_image)
    one_forward = likelihood.option_logprobs(adapter, batch_samples, [LETTERS, LETTERS])
    tokens = [[likelihood.continuation_tokens(adapter.tokenizer, adapter.render_prompt(s["question"], len(s["images"]),
                                                                                       "muirbench"), l)
               for l in LETTERS] for s in batch_samples]
    appended = likelihood._appended(adapter, batch_samples, [LETTERS, LETTERS], tokens, 1, False)
    assert flat(appended) == pytest.approx(flat(one_forward), abs=1e-4)
    texts = [[likelihood.continuation(l, o, "letter_text") for l, o in zip(LETTERS, OPTIONS)]] * 2
    together = likelihood.option_logprobs(adapter, batch_samples, texts)
    alone = [likelihood.option_logprobs(adapter, [s], [t])[0] for s, t in zip(batch_samples, texts)]
    assert flat(together) == pytest.approx(flat(alone), abs=1e-4)
    # "B. two dogs" is several tokens: its sum is below the letter's own log-probability
    assert all(t < l for row_t, row_l in zip(together, one_forward) for t, l in zip(row_t, row_l))


def test_a_multi_token_continuation_sums_its_tokens_log_probabilities(tiny_adapter, make_image):
    adapter = tiny_adapter("qwen2_vl")
    sample = samples(make_image)[0]
    text = likelihood.continuation("B", "two dogs", "letter_text")
    prompt = adapter.render_prompt(sample["question"], 2, "muirbench")
    wanted = likelihood.continuation_tokens(adapter.tokenizer, prompt, text)
    assert len(wanted) > 1
    batch = adapter.prepare([sample], answers=[text])
    with torch.no_grad():
        logprobs = torch.log_softmax(adapter.forward(batch).logits.float(), dim=-1)[0]
    ids = batch.inputs["input_ids"][0].tolist()
    start = next(i for i in range(len(ids)) if ids[i:i + len(wanted)] == wanted and i > len(ids) - 10 - len(wanted))
    manual = sum(float(logprobs[start + k - 1, token]) for k, token in enumerate(wanted))
    summed, mean = (likelihood.option_logprobs(adapter, [sample], [[text]], length_normalise=norm)[0][0]
                    for norm in (False, True))
    assert summed == pytest.approx(manual, abs=1e-4) and mean == pytest.approx(manual / len(wanted), abs=1e-4)


def test_choice_rows_and_an_unknown_mode():
    assert likelihood.choose({"A": -2.0, "B": -0.5, "C": -0.5}) == "B"  # a tie goes to the first option
    record = mc_record()
    row = likelihood.likelihood_row(record, "p", json.dumps({"A": -3.0, "B": -0.1, "C": -2.0}),
                                    {"name": "m", "scoring": {"mode": "letter"}})
    assert (row["parsed"], row["score"], row["letters"], row["sub_task"]) == ("B", 1.0, ["A", "B", "C"], "t")
    assert cross_benchmark.parse_rate([row])["rate"] == 1.0
    with pytest.raises(ValueError, match="likelihood mode must be one of"):
        likelihood.continuation("A", "cat", "text")


def test_a_benchmark_scored_by_likelihood_resumes_and_sits_beside_generation(tmp_path, monkeypatch):
    from eval_worker import tiny_qwen_adapter

    monkeypatch.delenv("MIMIC_CACHE_DIR", raising=False)
    adapter = tiny_qwen_adapter()
    records = bm.load_benchmark("muirbench", source=save_muirbench(tmp_path / "m"))
    path = tmp_path / "lik.jsonl"
    summary = likelihood.evaluate_likelihood(adapter, "muirbench", records, path, batch_size=2, progress=False)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert summary["n"] == 3 and summary["scoring"]["mode"] == "letter" and len(rows) == 3
    assert all(row["parsed"] in row["letters"] and set(row["logprobs"]) == set(row["letters"]) for row in rows)
    assert all(row["score"] == float(row["parsed"] == row["answer"]) for row in rows)
    again = likelihood.evaluate_likelihood(adapter, "muirbench", records, path, batch_size=3, progress=False)
    assert again["accuracy"] == summary["accuracy"] and path.read_text().count("\n") == 3  # resumed, not redone
    generated = bm.evaluate_benchmark(adapter, "muirbench", records, tmp_path / "gen.jsonl", 2, progress=False)
    table = cross_benchmark.scoring_comparison(
        {("scene", "m"): [json.loads(l) for l in (tmp_path / "gen.jsonl").read_text().splitlines()]},
        {("scene", "m"): rows})
    line = table.iloc[0]
    assert line["generation_n"] == line["likelihood_n"] == 3 and line["generation_score"] == generated["accuracy"]
    assert line["likelihood_score"] == summary["accuracy"] and line["chance"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert line["diff"] == pytest.approx(summary["accuracy"] - generated["accuracy"])
    assert bm.NotRun("x", "why").as_metrics() == likelihood.evaluate_likelihood(adapter, "muirbench",
                                                                                bm.NotRun("x", "why"), path)
