"""Answers are reused across runs of the same model on the same questions, and only then."""

import json

from mimic_utils.evaluation import harness, prediction_cache


class CountingAdapter:
    """A stand-in for the model call only (harness.run's contract): answers '3', counts questions."""

    def __init__(self, weights: str = "w1"):
        self.settings = {"model": "stub", "weights_fingerprint": weights}
        self.asked = 0

    def answer(self, samples, pool=1, max_new_tokens=None):
        self.asked += len(samples)
        return ["3"] * len(samples)


def records(tmp_path, n=6, question="How many dog objects are there in total across all images?"):
    image = tmp_path / "a.png"
    if not image.exists():
        image.write_bytes(b"not really a png")
    return [{"id": f"q{i}", "family": "counting", "task": "counting_unbalanced", "experiment": "images",
             "knobs": {"n_images": 1}, "images": [str(image)], "question": question, "gt": 3} for i in range(n)]


def no_images(record):
    return {"images": [], "question": record["question"], "task_family": "counting"}


def test_a_second_notebook_reads_the_answers_instead_of_generating(tmp_path):
    reuse = tmp_path / "cache"
    first, second = CountingAdapter(), CountingAdapter()
    rows = harness.run(first, records(tmp_path), tmp_path / "02" / "base.jsonl", to_sample=no_images,
                        reuse_dir=reuse, progress=False)
    again = harness.run(second, records(tmp_path), tmp_path / "04" / "base.jsonl", to_sample=no_images,
                         reuse_dir=reuse, progress=False)
    assert first.asked == 6 and second.asked == 0
    assert again == rows
    assert (tmp_path / "04" / "base.jsonl").read_text() == (tmp_path / "02" / "base.jsonl").read_text()


def test_another_model_or_question_or_image_is_answered_again(tmp_path):
    reuse = tmp_path / "cache"
    harness.run(CountingAdapter(), records(tmp_path), tmp_path / "a.jsonl", to_sample=no_images, reuse_dir=reuse,
                 progress=False)
    other_model = CountingAdapter("w2")
    harness.run(other_model, records(tmp_path), tmp_path / "b.jsonl", to_sample=no_images, reuse_dir=reuse,
                 progress=False)
    assert other_model.asked == 6
    other_question = CountingAdapter()
    harness.run(other_question, records(tmp_path, question="How many cat objects?"), tmp_path / "c.jsonl",
                 to_sample=no_images, reuse_dir=reuse, progress=False)
    assert other_question.asked == 6
    (tmp_path / "a.png").write_bytes(b"rebuilt image, same name")
    other_image = CountingAdapter()
    harness.run(other_image, records(tmp_path), tmp_path / "d.jsonl", to_sample=no_images, reuse_dir=reuse,
                 progress=False)
    assert other_image.asked == 6
    budget = CountingAdapter()
    harness.run(budget, records(tmp_path), tmp_path / "e.jsonl", to_sample=no_images, reuse_dir=reuse,
                 max_new_tokens=4, progress=False)
    assert budget.asked == 6


def test_a_torn_cache_line_is_generated_again(tmp_path):
    reuse = tmp_path / "cache"
    adapter = CountingAdapter()
    harness.run(adapter, records(tmp_path), tmp_path / "a.jsonl", to_sample=no_images, reuse_dir=reuse,
                 progress=False)
    (path,) = reuse.glob("*.jsonl")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    again = CountingAdapter()
    rows = harness.run(again, records(tmp_path), tmp_path / "b.jsonl", to_sample=no_images, reuse_dir=reuse,
                        progress=False)
    assert again.asked == 1 and len(rows) == 6
    assert all(json.loads(line)["key"] for line in path.read_text().splitlines()[-1:])


def test_without_a_directory_nothing_is_reused(tmp_path, monkeypatch):
    monkeypatch.delenv(prediction_cache.ENV_DIR, raising=False)
    assert prediction_cache.open_cache("abc") is None


def test_benchmark_dataclass_records_have_keys(tmp_path):
    from PIL import Image

    from mimic_utils.evaluation.external_benchmarks import BenchRecord

    def record(colour):
        return BenchRecord("b1", "muirbench", [Image.new("RGB", (4, 4), colour)], "Which?", ["a", "b"], ["A", "B"],
                           "A", "counting")

    assert prediction_cache.question_key(record("red"), 16) == prediction_cache.question_key(record("red"), 16)
    assert prediction_cache.question_key(record("red"), 16) != prediction_cache.question_key(record("blue"), 16)


def test_a_changed_chat_template_or_generation_code_starts_a_new_cache(tmp_path, monkeypatch):
    reuse = tmp_path / "cache"

    class Templated(CountingAdapter):
        def __init__(self, template):
            super().__init__()
            self.processor = type("P", (), {"chat_template": template})()

    harness.run(Templated("{{ a }}"), records(tmp_path), tmp_path / "a.jsonl", to_sample=no_images,
                 reuse_dir=reuse, progress=False)
    same, other = Templated("{{ a }}"), Templated("{{ b }}")
    harness.run(same, records(tmp_path), tmp_path / "b.jsonl", to_sample=no_images, reuse_dir=reuse, progress=False)
    harness.run(other, records(tmp_path), tmp_path / "c.jsonl", to_sample=no_images, reuse_dir=reuse, progress=False)
    assert same.asked == 0 and other.asked == 6
    monkeypatch.setattr(prediction_cache, "CACHE_VERSION", prediction_cache.CACHE_VERSION + 1)
    prediction_cache._code_digest.cache_clear()
    bumped = Templated("{{ a }}")
    harness.run(bumped, records(tmp_path), tmp_path / "d.jsonl", to_sample=no_images, reuse_dir=reuse, progress=False)
    prediction_cache._code_digest.cache_clear()
    assert bumped.asked == 6
