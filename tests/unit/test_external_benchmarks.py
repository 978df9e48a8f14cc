"""Public benchmarks: loaders, prompt builders and scorers apart, then end to end on offline fixtures.

Every fixture is a tiny dataset in the benchmark's real schema (field names, feature types, answer
formats, config and split layout), built with ``datasets`` and saved to ``tmp_path``; a scripted model
with the adapter's ``answer`` signature replies with canned strings.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
from datasets import Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage

from mimic_utils.evaluation import external_benchmarks as bm
from mimic_utils.evaluation.external_benchmarks import BenchRecord

# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def picture(seed: int) -> PILImage.Image:
    """A small solid image; the size varies with the seed so that images are told apart."""
    return PILImage.new("RGB", (8 + seed % 5, 8), ((53 * seed) % 256, 90, 160))


class ScriptedModel:
    """Replies with the canned string of the first key found in the prompt; records every call."""

    settings = {"name": "scripted", "preprocessing": {"note": "none"}}

    def __init__(self, replies: dict[str, str]):
        self.replies = replies
        self.calls: list[dict] = []

    def answer(self, samples, pool: int = 1, max_new_tokens: int | None = None) -> list[str]:
        outputs = []
        for sample in samples:
            assert all(isinstance(image, PILImage.Image) and image.mode == "RGB" for image in sample["images"])
            assert bm.IMAGE_PLACEHOLDER not in sample["question"]
            self.calls.append({"prompt": sample["question"], "n_images": len(sample["images"]),
                               "max_new_tokens": max_new_tokens, "task_family": sample["task_family"]})
            outputs.append(next((reply for key, reply in self.replies.items() if key in sample["question"]), ""))
        return outputs


class FailingModel:
    """The same model resumed, which must not be asked anything (every row is already written)."""

    settings = ScriptedModel.settings

    def answer(self, samples, pool: int = 1, max_new_tokens: int | None = None) -> list[str]:
        raise AssertionError("the model was called although every prediction was already written")


def mc_record(**overrides) -> BenchRecord:
    """A MuirBench-style record with options cat/dog/bird and gold answer B."""
    fields = dict(id="q1", benchmark="muirbench", images=[picture(1), picture(2)], question="Which animal?",
                  options=["cat", "dog", "bird"], letters=["A", "B", "C"], answer="B", sub_task="t")
    return BenchRecord(**{**fields, **overrides})


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach the hub: an unreadable dataset must fail at once, not after network retries."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# ---------------------------------------------------------------------------------------------------------
# Fixtures in each benchmark's real schema
# ---------------------------------------------------------------------------------------------------------

MUIR_FEATURES = Features({
    "idx": Value("string"), "task": Value("string"), "image_relation": Value("string"),
    "image_type": Value("string"), "question": Value("string"), "options": List(Value("string")),
    "answer": Value("string"), "image_list": List(Image()), "counterpart_idx": Value("string"),
})


def save_muirbench(folder: Path) -> Path:
    rows = {
        "idx": ["muir_1", "muir_2", "muir_3"],
        "task": ["Counting", "Image-Text Matching", "Image-Text Matching"],
        "image_relation": ["Complementary", "Independent", "Independent"],
        "image_type": ["Photo", "Photo", "Drawing"],
        "question": ["How many cats are there in <image> and <image> together?",
                     "Which picture shows a red kite, given <image>?",
                     "Which drawing is a sheep?"],
        "options": [["1", "2", "3"], ["<image>", "<image>"], ["the first", "the second"]],
        "answer": ["B", "A", "B"],
        "image_list": [[picture(1), picture(2)], [picture(3), picture(4), picture(5)], [picture(6), picture(7)]],
        "counterpart_idx": ["", "", ""],
    }
    Dataset.from_dict(rows, features=MUIR_FEATURES).save_to_disk(str(folder))
    return folder


BLINK_FEATURES = Features({
    "idx": Value("string"), "question": Value("string"), "sub_task": Value("string"),
    **{f"image_{k}": Image() for k in range(1, 5)}, "choices": List(Value("string")),
    "answer": Value("string"), "prompt": Value("string"), "explanation": Value("string"),
})


def blink_config(sub_task: str, marked: bool = False) -> Dataset:
    """One BLINK config of one question; the k-th config has k % 4 + 1 images. ``marked`` choices keep
    their "(A) " prefix, as the hub's do."""
    k = bm.BLINK_SUBTASKS.index(sub_task)
    images = {f"image_{i}": [picture(10 * k + i) if i <= k % 4 + 1 else None] for i in range(1, 5)}
    question = f"Question {sub_task}: which image?"
    choices = ["the first image", "the second image"]
    rows = {"idx": [f"val_{sub_task}_1"], "question": [question], "sub_task": [sub_task], **images,
            "choices": [[f"({l}) {c}" for l, c in zip("AB", choices)] if marked else choices], "answer": ["(B)"],
            "prompt": [f"{question}\nSelect from the following choices.\n(A) the first image\n"
                       f"(B) the second image"], "explanation": [""]}
    return Dataset.from_dict(rows, features=BLINK_FEATURES)


def save_blink(folder: Path, sub_tasks: tuple[str, ...] = bm.BLINK_SUBTASKS) -> Path:
    """One saved dataset per config, as ``<folder>/<config>``."""
    for sub_task in sub_tasks:
        blink_config(sub_task).save_to_disk(str(folder / sub_task))
    return folder


MANTIS_FEATURES = Features({
    "id": Value("string"), "question_type": Value("string"), "question": Value("string"),
    "images": List(Image()), "options": List(Value("string")), "answer": Value("string"),
    "data_source": Value("string"), "category": Value("string"),
})


def save_nlvr2(folder: Path) -> Path:
    statement = "<image><image>\n{}\nIs the statement true or false?"
    rows = {
        "id": ["nlvr2_0", "nlvr2_1", "nlvr2_2"], "question_type": ["multi-choice"] * 3,
        "question": [statement.format(s) for s in ("Two dogs in total.", "One bird on the left.",
                                                   "Three boats on the right.")],
        "images": [[picture(1), picture(2)], [picture(3), picture(4)], [picture(5), picture(6)]],
        "options": [["(A) True", "(B) False"]] * 3, "answer": ["A", "B", "A"],
        "data_source": ["nlvr2"] * 3, "category": ["nlvr2"] * 3,
    }
    Dataset.from_dict(rows, features=MANTIS_FEATURES).save_to_disk(str(folder))
    return folder


def save_mantis(folder: Path) -> Path:
    """Saved as ``<folder>/mantis_eval``, the hub config's name."""
    rows = {
        "id": ["m_mc1", "m_mc2", "m_sa1", "m_sa2"],
        "question_type": ["multi-choice", "multi-choice", "short-answer", "short-answer"],
        "question": ["<image><image> Which animal appears in both images?", "Which one is brighter? <image> <image>",
                     "How many birds are in <image>?", "How many cars in <image>?"],
        "images": [[picture(1), picture(2)], [picture(3), picture(4)], [picture(5)], [picture(6)]],
        "options": [["cat", "dog"], ["A. the first image", "B. the second image"], [], []],
        "answer": ["(A)", "B", "2", "2"],
        "data_source": ["x"] * 4, "category": ["animals", "brightness", "counting", "counting"],
    }
    Dataset.from_dict(rows, features=MANTIS_FEATURES).save_to_disk(str(folder / "mantis_eval"))
    return folder


def save_mmiu(folder: Path) -> Path:
    """A local data folder as ``hf download`` leaves it: a parquet file read by ``load_dataset`` and the
    unzipped image folders that ``input_image_path`` names."""
    rows = []
    for task, category, answer in (("forensic_detection_blink", "Low-level-semantic", "D"),
                                   ("forensic_detection_blink", "Low-level-semantic", "A"),
                                   ("spot_the_diff", "High-level-sub-semantic", "B")):
        k = sum(r["task"] == task for r in rows)
        paths = [f"./{category}/{task}/{task}_{k}_{i}.jpg" for i in range(2)]
        for i, path in enumerate(paths):
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            picture(7 * k + i).save(folder / path)
        rows.append({"task": task, "visual_input_component": "natural image", "source": "fixture",
                     "options": "A: the first image\nB: the second image\nC: the third image\nD: the fourth image",
                     "question": f"Which image is real? ({task} {k})",
                     "context": f"You are a judge ({task} {k}).\nSelect from the following choices.\n"
                                "A: the first image\nB: the second image\nC: the third image\nD: the fourth image\n",
                     "input_image_path": paths, "output": answer})
    Dataset.from_list(rows).to_parquet(str(folder / "test.parquet"))
    return folder


QBENCH_FEATURES = Features({
    "id": Value("int64"), "image1": Image(), "image2": Image(), "question": Value("string"),
    **{f"option{i}": Value("string") for i in range(4)}, "question_type": Value("int64"),
    "question_concern": Value("int64"), "correct_choice": Value("string"),
})


def save_qbench2(folder: Path) -> Path:
    """A saved ``DatasetDict`` with the hub's two splits."""
    rows = {
        "id": [0, 1, 2], "image1": [picture(1), picture(3), picture(5)], "image2": [picture(2), picture(4), picture(6)],
        "question": ["Which image is sharper?", "Is the first image noisier than the second?", "How is the exposure?"],
        "option0": ["The first", "Yes", "Over"], "option1": ["The second", "No", "Under"],
        "option2": ["Both", "N/A", "Fine"], "option3": ["N/A", "N/A", "N/A"],
        "question_type": [2, 0, 1], "question_concern": [0, 0, 2], "correct_choice": ["B", "A", "C"],
    }
    split = Dataset.from_dict(rows, features=QBENCH_FEATURES)
    DatasetDict({"dev": split, "test": split}).save_to_disk(str(folder))
    return folder


# ---------------------------------------------------------------------------------------------------------
# Loaders (pure: one row → record)
# ---------------------------------------------------------------------------------------------------------


def test_blink_row_becomes_a_record_with_letter_answer_and_its_own_prompt():
    row = {"idx": "val_Jigsaw_3", "question": "Which piece fits?", "sub_task": "Jigsaw",
           "choices": ["the first", "the second"], "answer": "(B)", "prompt": "Which piece fits?\n(A) …"}
    record = bm.blink_record(row, ["a.png", "b.png"])
    assert (record.id, record.answer, record.letters, record.sub_task) == ("val_Jigsaw_3", "B", ["A", "B"], "Jigsaw")
    assert record.options == ["the first", "the second"] and record.meta["prompt"] == row["prompt"]


def test_lettered_options_lose_their_markers_and_answers_map_to_letters():
    row = {"id": "n1", "question": "q", "options": ["(A) True", "(B) False"], "answer": "B", "category": "nlvr2"}
    record = bm.nlvr2_record(row, [])
    assert record.options == ["True", "False"] and record.answer == "B"
    assert [bm.strip_option_marker(o, l) for o, l in (("A. cat", "A"), ("B: dog", "B"), ("C) cow", "C"),
                                                        ("A cat", "A"))] == ["cat", "dog", "cow", "A cat"]
    letters = ["A", "B"]
    assert [bm.answer_letter(a, letters, ["True", "False"]) for a in ("(A)", "b", "B.", "False", "(B) False")] \
        == ["A", "B", "B", "B", "B"]
    with pytest.raises(ValueError, match="not one of the choices"):
        bm.answer_letter("E", letters, ["True", "False"])


def test_mantis_short_answer_keeps_the_reference_text_and_no_options():
    row = {"id": "s", "question_type": "short-answer", "question": "How many?", "options": [], "answer": " 2 ",
           "category": "counting"}
    record = bm.mantis_record(row, [])
    assert (record.question_type, record.answer, record.options, record.letters) == ("short-answer", "2", [], [])
    with pytest.raises(ValueError, match="question_type"):
        bm.mantis_record({**row, "question_type": "essay"}, [])


def test_mmiu_options_string_and_category_from_the_image_path():
    row = {"task": "spot_the_diff", "question": "q", "context": "c", "options": "A: one\nB: two\n  more\nC: three",
           "input_image_path": ["./High-level-sub-semantic/spot_the_diff/x_0.jpg"], "output": "C", "row_index": 7}
    record = bm.mmiu_record(row, ["/data/x_0.jpg"])
    assert record.options == ["one", "two\n  more", "three"] and record.letters == ["A", "B", "C"]
    assert (record.id, record.answer, record.meta["category"]) == ("spot_the_diff_7", "C", "High-level-sub-semantic")


def test_qbench2_drops_na_options_and_names_its_codes():
    row = {"id": 5, "question": "q", "option0": "Yes", "option1": "No", "option2": "N/A", "option3": None,
           "question_type": 0, "question_concern": 3, "correct_choice": "No"}
    record = bm.qbench2_record(row, [])
    assert record.options == ["Yes", "No"] and record.answer == "B" and record.id == "5"
    assert record.sub_task == "Local Others" and record.meta["question_kind"] == "Yes/No"
    assert bm.qbench2_record({**row, "question_concern": 9}, []).sub_task == "9"


# ---------------------------------------------------------------------------------------------------------
# Prompt builders: the reference wording, exactly
# ---------------------------------------------------------------------------------------------------------


def test_muirbench_prompt_lists_options_and_appends_the_letter_instruction():
    assert bm.muirbench_prompt(mc_record()) == (
        "Which animal?\nA. cat\nB. dog\nC. bird\nAnswer with the option's letter from the given choices directly.")


def test_qbench2_prompt_is_muirbench_wording_with_a_trailing_newline():
    record = mc_record(benchmark="qbench2")
    assert bm.qbench2_prompt(record) == bm.muirbench_prompt(record) + "\n"


def test_mantis_prompts_for_both_question_types():
    assert bm.mantis_prompt(mc_record(benchmark="mantis", options=["cat", "dog"], letters=["A", "B"])) == (
        "Which animal?\n (A) cat\n (B) dog\nAnswer with the option's letter from the given choices directly.")
    short = mc_record(benchmark="mantis", question_type="short-answer", options=[], letters=[], answer="2")
    assert bm.mantis_prompt(short) == "Which animal?\nPlease provide the correct answer directly."


def test_mmiu_prompt_orders_question_and_context_as_the_fork():
    context_first = mc_record(benchmark="mmiu", sub_task="forensic_detection_blink", meta={"context": "CTX"})
    question_first = mc_record(benchmark="mmiu", sub_task="spot_the_diff", meta={"context": "CTX"})
    suffix = "\nPlease answer the option directly like A,B,C,D... Answer: "
    assert bm.mmiu_prompt(context_first) == "Question: CTX\nWhich animal?" + suffix
    assert bm.mmiu_prompt(question_first) == "Question: Which animal?\nCTX" + suffix


def test_blink_and_nlvr2_prompts_are_the_dataset_text_verbatim():
    assert bm.blink_prompt(mc_record(benchmark="blink", meta={"prompt": "P\n(A) x"})) == "P\n(A) x"
    assert bm.nlvr2_prompt(mc_record(benchmark="nlvr2", question="Q?")) == "Q?"


def test_image_placeholders_become_numbered_references_in_image_order():
    assert bm.reference_images("A <image> and <image>", 2) == "A <image 1> and <image 2>"
    assert bm.reference_images("then <image>", 3) == "then <image 3>"  # unmarked images come first
    assert bm.reference_images("no placeholder", 2) == "no placeholder"
    record = mc_record(question="Which follows <image>?", options=["<image>", "<image>"], images=[1, 2, 3])
    assert bm.build_prompt(record).startswith("Which follows <image 1>?\nA. <image 2>\nB. <image 3>\n")


def test_every_benchmark_declares_its_budget():
    assert {name: spec.max_new_tokens for name, spec in bm.BENCHMARKS.items()} == {
        "muirbench": 16, "blink": 16, "nlvr2": 16, "mantis": 16, "mmiu": 16, "qbench2": 32}
    assert len(bm.BLINK_SUBTASKS) == 14 and bm.BENCHMARKS["blink"].configs == bm.BLINK_SUBTASKS


# ---------------------------------------------------------------------------------------------------------
# Scorers
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply, parsed", [
    ("The correct answer is (B)", "B"),  # the upstream bug read "T"
    ("(B)", "B"), ("B.", "B"), ("B) dog", "B"), ("b", "B"), ("Answer: B", "B"),
    ("dog", "B"),  # option text without a letter
    ("(A)", "A"), ("A.", "A"), ("A) cat", "A"), ("cat", "A"),
    ("", None), ("I cannot tell.", None), ("D", None), ("A or B", None),
])
def test_letter_extraction_is_restricted_to_the_valid_choices(reply, parsed):
    scored = bm.score_prediction(mc_record(), reply)
    assert scored["parsed"] == parsed
    assert scored["score"] == float(parsed == "B")


@pytest.mark.parametrize("reply, parsed", [("Yes", "A"), ("no.", "B"), ("True", "A"), ("The statement is false", "B"),
                                           ("(B)", "B"), ("maybe", None)])
def test_nlvr2_reads_yes_no_as_true_false(reply, parsed):
    record = mc_record(benchmark="nlvr2", options=["True", "False"], letters=["A", "B"], answer="A")
    assert bm.score_prediction(record, reply)["parsed"] == parsed


@pytest.mark.parametrize("reply, correct", [("2", True), ("Final Answer: 2.", True), ("The answer is  2", True),
                                            ("12", False), ("two", False), ("", False)])
def test_short_answers_are_scored_by_normalised_exact_match(reply, correct):
    record = mc_record(benchmark="mantis", question_type="short-answer", options=[], letters=[], answer="2")
    assert bm.score_prediction(record, reply)["score"] == float(correct)
    assert bm.normalize_short_answer('  "Two  Cats." ') == "two cats"


# ---------------------------------------------------------------------------------------------------------
# End to end: saved fixture → load_benchmark → prompt → scripted model → scores
# ---------------------------------------------------------------------------------------------------------


def test_muirbench_end_to_end_with_per_sub_task_accuracy(tmp_path):
    source = save_muirbench(tmp_path / "muirbench")
    records = bm.load_benchmark("muirbench", source=source)
    assert [len(r.images) for r in records] == [2, 3, 2]
    model = ScriptedModel({"cats": "The correct answer is (B)", "red kite": "B.", "sheep": "the second"})
    summary = bm.evaluate_benchmark(model, "muirbench", records, tmp_path / "p.jsonl", batch_size=2, progress=False)
    assert summary["status"] == "done" and summary["n"] == 3
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["by"]["sub_task"]["Counting"]["accuracy"] == 1.0
    assert summary["by"]["sub_task"]["Image-Text Matching"]["accuracy"] == 0.5
    assert summary["by"]["image_type"]["Drawing"]["accuracy"] == 1.0
    assert {call["max_new_tokens"] for call in model.calls} == {16}
    assert {call["task_family"] for call in model.calls} == {"muirbench"}
    kite = next(call["prompt"] for call in model.calls if "red kite" in call["prompt"])
    assert kite == ("Which picture shows a red kite, given <image 1>?\nA. <image 2>\nB. <image 3>\n"
                    "Answer with the option's letter from the given choices directly.")
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert {"id", "prompt", "output", "parsed", "score", "sub_task", "model", "max_new_tokens"} <= set(rows[0])
    assert rows[0]["model"]["name"] == "scripted" and rows[0]["model"]["pool"] == 1


def test_blink_reads_all_fourteen_configs_and_scores_each_sub_task(tmp_path):
    source = save_blink(tmp_path / "blink")
    records = bm.load_benchmark("blink", source=source)
    assert [r.sub_task for r in records] == list(bm.BLINK_SUBTASKS)
    assert [len(r.images) for r in records] == [k % 4 + 1 for k in range(14)]  # empty image slots skipped
    right = set(bm.BLINK_SUBTASKS[::2])
    model = ScriptedModel({f"Question {s}:": "(B)" if s in right else "(A) the first image" for s in bm.BLINK_SUBTASKS})
    summary = bm.evaluate_benchmark(model, "blink", records, tmp_path / "blink.jsonl", batch_size=4, progress=False)
    assert summary["accuracy"] == 0.5
    assert {s: cell["accuracy"] for s, cell in summary["by"]["sub_task"].items()} == {
        s: float(s in right) for s in bm.BLINK_SUBTASKS}
    assert model.calls[0]["prompt"].endswith("\n(A) the first image\n(B) the second image")


def test_nlvr2_end_to_end_maps_yes_no(tmp_path):
    records = bm.load_benchmark("nlvr2", source=save_nlvr2(tmp_path / "nlvr2"))
    model = ScriptedModel({"Two dogs": "Yes", "One bird": "No, it is not.", "Three boats": "False"})
    summary = bm.evaluate_benchmark(model, "nlvr2", records, tmp_path / "n.jsonl", progress=False)
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert model.calls[0]["prompt"].startswith("<image 1><image 2>\n")


def test_mantis_end_to_end_both_question_types(tmp_path):
    records = bm.load_benchmark("mantis", source=save_mantis(tmp_path / "mantis"))
    assert records[1].options == ["the first image", "the second image"] and records[0].answer == "A"
    model = ScriptedModel({"both images": "A) cat", "brighter": "The answer is B", "birds": "Final Answer: 2.",
                           "cars": "12"})
    summary = bm.evaluate_benchmark(model, "mantis", records, tmp_path / "m.jsonl", progress=False)
    assert summary["accuracy"] == 0.75
    assert summary["by"]["question_type"] == {
        "multi-choice": {"n": 2, "accuracy": 1.0, "score": 1.0},
        "short-answer": {"n": 2, "accuracy": 0.5, "score": 0.5}}
    brighter = next(c["prompt"] for c in model.calls if "brighter" in c["prompt"])
    assert brighter == ("Which one is brighter? <image 1> <image 2>\n (A) the first image\n (B) the second image\n"
                        "Answer with the option's letter from the given choices directly.")


def test_mmiu_end_to_end_from_a_local_data_folder_with_image_files(tmp_path):
    source = save_mmiu(tmp_path / "mmiu")
    records = bm.load_benchmark("mmiu", source=source)
    assert [r.id for r in records] == ["forensic_detection_blink_0", "forensic_detection_blink_1", "spot_the_diff_2"]
    assert all(Path(p).is_file() for r in records for p in r.images)
    model = ScriptedModel({"blink 0": "D", "blink 1": "B", "spot_the_diff 0": "B. the second image"})
    summary = bm.evaluate_benchmark(model, "mmiu", records, tmp_path / "mmiu.jsonl", progress=False)
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["by"]["category"]["Low-level-semantic"]["accuracy"] == 0.5
    assert all(c["prompt"].startswith("Question: ") and c["prompt"].endswith("like A,B,C,D... Answer: ")
               for c in model.calls)


def test_qbench2_end_to_end_with_its_budget(tmp_path):
    records = bm.load_benchmark("qbench2", source=save_qbench2(tmp_path / "qbench2"))
    assert [r.letters for r in records] == [["A", "B", "C"], ["A", "B"], ["A", "B", "C"]]
    model = ScriptedModel({"sharper": "B", "noisier": "No", "exposure": "C."})
    summary = bm.evaluate_benchmark(model, "qbench2", records, tmp_path / "q.jsonl", progress=False)
    assert summary["accuracy"] == pytest.approx(2 / 3)  # "No" is option text B, gold A
    assert summary["by"]["sub_task"]["Global Distortion"]["n"] == 2
    assert summary["by"]["question_kind"]["How"]["accuracy"] == 1.0
    assert {c["max_new_tokens"] for c in model.calls} == {32}


def test_limit_keeps_the_first_records_of_every_sub_task(tmp_path):
    records = bm.load_benchmark("muirbench", source=save_muirbench(tmp_path / "m"), limit=1)
    assert [r.id for r in records] == ["muir_1", "muir_2"]


# ---------------------------------------------------------------------------------------------------------
# Resume and bookkeeping
# ---------------------------------------------------------------------------------------------------------


def test_a_finished_run_is_not_asked_again_and_a_torn_line_is_redone(tmp_path):
    records = bm.load_benchmark("muirbench", source=save_muirbench(tmp_path / "m"))
    replies = {"cats": "B", "red kite": "A", "sheep": "B"}
    out = tmp_path / "p.jsonl"
    first = bm.evaluate_benchmark(ScriptedModel(replies), "muirbench", records, out, progress=False)
    assert bm.evaluate_benchmark(FailingModel(), "muirbench", records, out, progress=False) == first
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # killed mid-write
    model = ScriptedModel(replies)
    assert bm.evaluate_benchmark(model, "muirbench", records, out, progress=False) == first
    assert len(model.calls) == 1 and len(out.read_text().splitlines()) == 3


def test_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="duplicate ids"):
        bm.evaluate_benchmark(ScriptedModel({}), "muirbench", [mc_record(), mc_record()], tmp_path / "p.jsonl")


def test_an_empty_benchmark_summarises_without_a_score(tmp_path):
    summary = bm.evaluate_benchmark(ScriptedModel({}), "muirbench", [], tmp_path / "p.jsonl", progress=False)
    assert summary["n"] == 0 and summary["accuracy"] is None


# ---------------------------------------------------------------------------------------------------------
# BLINK as users keep it, and datasets in another schema
# ---------------------------------------------------------------------------------------------------------


def test_blink_from_one_saved_folder_holding_every_config_reads_it_once(tmp_path, capsys):
    folder = tmp_path / "blink"
    datasets.concatenate_datasets([blink_config(s) for s in bm.BLINK_SUBTASKS]).save_to_disk(str(folder))
    records = bm.load_benchmark("blink", source=folder)
    assert [r.sub_task for r in records] == list(bm.BLINK_SUBTASKS)
    assert len({r.id for r in records}) == 14
    assert f"BLINK at {folder}: 14 of 14 sub-tasks found" in capsys.readouterr().out
    summary = bm.evaluate_benchmark(ScriptedModel({"Question": "(B)"}), "blink", records, tmp_path / "b.jsonl",
                                    progress=False)
    assert summary["n"] == 14 and summary["accuracy"] == 1.0


def test_blink_from_the_folder_of_a_single_config(tmp_path, capsys):
    folder = tmp_path / "Counting"
    DatasetDict({"val": blink_config("Counting")}).save_to_disk(str(folder))
    records = bm.load_benchmark("blink", source=folder)
    assert [r.sub_task for r in records] == ["Counting"]
    out = capsys.readouterr().out
    assert "1 of 14 sub-tasks found (Counting); missing: Art_Style, Forensic_Detection" in out


def test_blink_with_only_some_config_folders_loads_those_and_names_the_rest(tmp_path, capsys):
    present = ("Jigsaw", "Art_Style", "IQ_Test")
    records = bm.load_benchmark("blink", source=save_blink(tmp_path / "blink", present))
    assert [r.sub_task for r in records] == ["Art_Style", "IQ_Test", "Jigsaw"]  # in the configs' order
    out = capsys.readouterr().out
    assert "3 of 14 sub-tasks found (Art_Style, IQ_Test, Jigsaw); missing: Counting," in out


def test_blink_choices_keep_their_marker_in_the_prompt_and_lose_it_for_matching(tmp_path):
    blink_config("Jigsaw", marked=True).save_to_disk(str(tmp_path / "blink" / "Jigsaw"))
    records = bm.load_benchmark("blink", source=tmp_path / "blink")
    assert records[0].options == ["the first image", "the second image"]
    assert bm.build_prompt(records[0]).endswith("\n(A) the first image\n(B) the second image")
    assert bm.score_prediction(records[0], "the second image") == {"parsed": "B", "score": 1.0}
    assert bm.score_prediction(records[0], "The first image.")["parsed"] == "A"


def without(saved: Path, field: str, out: Path) -> Path:
    """A saved dataset (or ``DatasetDict``) written again to ``out`` without one column."""
    datasets.load_from_disk(str(saved)).remove_columns(field).save_to_disk(str(out))
    return out


@pytest.mark.parametrize("name, save, config, field", [
    ("muirbench", save_muirbench, None, "options"),
    ("muirbench", save_muirbench, None, "image_list"),
    ("blink", lambda f: save_blink(f, ("Jigsaw",)), "Jigsaw", "prompt"),
    ("blink", lambda f: save_blink(f, ("Jigsaw",)), "Jigsaw", "image_1"),
    ("nlvr2", save_nlvr2, None, "answer"),
    ("mantis", save_mantis, "mantis_eval", "question_type"),
    ("qbench2", save_qbench2, None, "correct_choice"),
])
def test_a_missing_field_names_the_benchmark_the_path_and_the_field(tmp_path, name, save, config, field):
    saved = save(tmp_path / "saved")
    source = tmp_path / "copy"
    without(saved / config if config else saved, field, source / config if config else source)
    with pytest.raises(bm.BenchmarkFormatError) as caught:
        bm.load_benchmark(name, source=source)
    message = str(caught.value)
    assert message.startswith(f"{bm.get_spec(name).title} at {source}") and f"no field {field!r}" in message
    assert not config or f"(config {config})" in message


def test_a_missing_field_of_a_data_folder_is_named_too(tmp_path):
    source = save_mmiu(tmp_path / "mmiu")
    frame = datasets.load_dataset("parquet", data_files=str(source / "test.parquet"), split="train")
    frame.remove_columns("output").to_parquet(str(source / "test.parquet"))
    with pytest.raises(bm.BenchmarkFormatError, match=f"MMIU at {source}: no field 'output'"):
        bm.load_benchmark("mmiu", source=source)


def test_a_missing_config_or_split_names_the_benchmark_and_the_path(tmp_path):
    folder = tmp_path / "nlvr2"
    folder.mkdir()
    Dataset.from_dict({"id": ["x"]}).to_parquet(str(folder / "test.parquet"))
    with pytest.raises(bm.BenchmarkFormatError, match=rf"NLVR2 at {folder} \(config nlvr2\): no config 'nlvr2'"):
        bm.load_benchmark("nlvr2", source=folder)
    saved = save_qbench2(tmp_path / "qbench2")
    with pytest.raises(bm.BenchmarkFormatError, match=f"Q-Bench2 at {saved}: no split 'val'"):
        bm.load_benchmark("qbench2", source=saved, split="val")


# ---------------------------------------------------------------------------------------------------------
# Missing datasets
# ---------------------------------------------------------------------------------------------------------


def test_an_unreachable_hub_dataset_says_how_to_get_it():
    with pytest.raises(bm.BenchmarkUnavailable) as caught:
        bm.load_benchmark("muirbench")
    message = str(caught.value)
    assert "hf download MUIRBENCH/MUIRBENCH --repo-type dataset" in message
    assert "huggingface-cli" in message and "source=" in message and "skip_missing" in message


def test_a_missing_local_copy_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bm.load_benchmark("blink", source=tmp_path / "nowhere")


def test_skip_missing_reports_not_run_and_runs_nothing(tmp_path):
    missing = bm.load_benchmark("nlvr2", source=tmp_path / "nowhere", skip_missing=True)
    assert isinstance(missing, bm.NotRun) and "hf download TIGER-Lab/NLVR2" in missing.reason
    summary = bm.evaluate_benchmark(FailingModel(), "nlvr2", missing, tmp_path / "n.jsonl")
    assert summary["status"] == "not run" and summary["benchmark"] == "nlvr2"
    assert not (tmp_path / "n.jsonl").exists()


def test_mmiu_without_its_unzipped_images_is_unavailable(tmp_path):
    source = save_mmiu(tmp_path / "mmiu")
    with pytest.raises(bm.BenchmarkUnavailable, match="unzip"):
        bm.load_benchmark("mmiu", source=source, image_root=tmp_path / "elsewhere")
    assert isinstance(bm.load_benchmark("mmiu", source=source, image_root=tmp_path, skip_missing=True), bm.NotRun)


def test_an_unknown_benchmark_is_refused():
    with pytest.raises(ValueError, match="known: muirbench"):
        bm.load_benchmark("mmbench")


# ---------------------------------------------------------------------------------------------------------
# Through a real adapter
# ---------------------------------------------------------------------------------------------------------


def test_a_tiny_real_adapter_answers_every_record(tmp_path, single_thread):
    from eval_worker import tiny_qwen_adapter

    records = bm.load_benchmark("muirbench", source=save_muirbench(tmp_path / "m"))
    summary = bm.evaluate_benchmark(tiny_qwen_adapter(), "muirbench", records, tmp_path / "p.jsonl",
                                    batch_size=2, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert summary["n"] == 3 and all(isinstance(row["output"], str) for row in rows)
    assert rows[0]["model"]["family"] == "qwen2_vl"
