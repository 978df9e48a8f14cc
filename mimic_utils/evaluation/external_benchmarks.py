"""Public multi-image benchmarks (MuirBench, BLINK, NLVR2, Mantis-Eval, MMIU, Q-Bench2): each is a loader
into one record type, a prompt builder and a scorer, the three small pure pieces of an lmms-eval task
(``doc_to_visual``/``doc_to_text``/``process_results``), plus its generation budget.

    records = load_benchmark("muirbench", source=None, skip_missing=True)   # hub id, or a local copy
    summary = evaluate_benchmark(adapter, "muirbench", records, out / "muirbench.jsonl", batch_size=8)

Prompts and fields follow the official lmms-eval fork; where we deviate (images first, Mantis option
markers, letter extraction, Mantis short answers) docs/public_benchmarks.md says how and why, with the
table of datasets, fields, prompts and token budgets.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from mimic_utils.evaluation import harness
from mimic_utils.data.prompts import choice_letters
from mimic_utils.evaluation.scoring import aggregate, score_choice

MULTI_CHOICE = "multi-choice"
SHORT_ANSWER = "short-answer"
IMAGE_PLACEHOLDER = "<image>"

LETTER_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
"""MuirBench's ``post_prompt`` (also Mantis multi-choice, and Q-Bench2 with a trailing newline)."""

MANTIS_SHORT_SUFFIX = "\nPlease provide the correct answer directly."
MMIU_SUFFIX = "\nPlease answer the option directly like A,B,C,D... Answer: "

# The fork's ``tasks_exist``: MMIU tasks whose prompt puts the question before the context.
MMIU_QUESTION_FIRST = frozenset({
    "person_reid", "multiple_image_captioning", "spot_the_similarity", "face_retrieval",
    "sketch2image_retrieval", "handwritten_retrieval", "spot_the_diff", "image2image_retrieval",
    "vehicle_retrieval", "text2image_retrieval", "general_action_recognition", "video_captioning",
    "next_img_prediction", "temporal_ordering", "meme_vedio_understanding", "action_quality_assessment",
    "temporal_localization", "mevis", "ravens_progressive_matrices", "threed_indoor_recognition",
    "point_tracking", "threed_cad_recognition", "single_object_tracking",
})

# Q-Bench label names for the integer codes, as lmms-eval's qbench utils name them.
QBENCH_CONCERNS = ("Global Distortion", "Global Others", "Local Distortion", "Local Others")
QBENCH_QUESTION_KINDS = ("Yes/No", "How", "What")

BLINK_SUBTASKS = (
    "Art_Style", "Counting", "Forensic_Detection", "Functional_Correspondence", "IQ_Test", "Jigsaw",
    "Multi-view_Reasoning", "Object_Localization", "Relative_Depth", "Relative_Reflectance",
    "Semantic_Correspondence", "Spatial_Relation", "Visual_Correspondence", "Visual_Similarity",
)
"""The 14 configs of ``BLINK-Benchmark/BLINK`` (dataset viewer and the fork's ``blink.yaml``)."""


# ---------------------------------------------------------------------------------------------------------
# The common record
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetImage:
    """One image inside an Arrow-backed dataset, decoded only when opened.

    A whole benchmark does not fit in memory decoded (NLVR2 alone is 7 GB of JPEGs), so a record keeps
    this reference into the memory-mapped table and the evaluation loop decodes one batch at a time.
    """

    view: Any = field(repr=False, compare=False)  # the dataset, one image column, in "arrow" format
    row: int
    column: str
    position: int | None = None  # index inside a list-of-images column

    def open(self) -> Image.Image:
        cell = self.view[self.row].column(self.column)[0].as_py()
        if self.position is not None:
            cell = cell[self.position]
        return datasets.Image().decode_example(cell)


ImageLike = Union[Image.Image, str, os.PathLike, DatasetImage]


def open_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from any form a record holds (the reference ``doc_to_visual`` converts to RGB)."""
    if isinstance(image, DatasetImage):
        image = image.open()
    elif not isinstance(image, Image.Image):
        try:
            with Image.open(image) as opened:
                return opened.convert("RGB")
        except OSError as err:
            raise FileNotFoundError(f"cannot read image {image}: {err}") from err
    return image.convert("RGB")


@dataclass
class BenchRecord:
    """One question of a public benchmark, in the form every prompt builder and scorer reads.

    ``answer`` is a letter of ``letters`` for multiple choice, and the reference text for Mantis
    ``short-answer`` questions (which have no options). ``meta`` keeps what a prompt needs beyond the
    common fields (BLINK's ``prompt``, MMIU's ``context``) and the extra breakdown labels.
    """

    id: str
    benchmark: str
    images: Sequence[ImageLike]
    question: str
    options: list[str]
    letters: list[str]
    answer: str
    sub_task: str
    question_type: str = MULTI_CHOICE
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# Small shared pieces
# ---------------------------------------------------------------------------------------------------------


def strip_option_marker(option: str, letter: str) -> str:
    """An option's text without its own leading marker: "(A) True", "A. cat", "A: cat", "A) cat" → text.

    Mantis-Eval and NLVR2 store options with their letters; the record keeps the bare text so that a
    reply which only repeats the text can still be matched.
    """
    match = re.match(rf"\s*(?:\(\s*{letter}\s*\)|{letter}\s*[.):])\s*", option)
    return option[match.end():].strip() if match else option.strip()


def answer_letter(raw: Any, letters: Sequence[str], options: Sequence[str] = ()) -> str:
    """The gold answer as one of ``letters``, from "B", "(B)", "b.", "(B) text" or an option's text.

    Raises ``ValueError`` naming the value: a gold answer outside the choices is a data error that would
    otherwise score every reply wrong.
    """
    text = str(raw).strip()
    lone = re.fullmatch(r"[(\[]?\s*([A-Za-z])\s*[)\].:]?", text)
    if lone and lone.group(1).upper() in letters:
        return lone.group(1).upper()
    for letter, option in zip(letters, options):
        if text.lower() == str(option).strip().lower():
            return letter
    marked = re.match(r"[(\[]\s*([A-Za-z])\s*[)\]]|([A-Za-z])[.):]\s", text)
    if marked and (marked.group(1) or marked.group(2)).upper() in letters:
        return (marked.group(1) or marked.group(2)).upper()
    raise ValueError(f"answer {raw!r} is not one of the choices {list(letters)} {list(options)}")


def option_lines(record: BenchRecord, template: str = "{letter}. {option}") -> str:
    """The record's options, one per line (``"A. cat\\nB. dog"`` by default)."""
    return "\n".join(template.format(letter=l, option=o) for l, o in zip(record.letters, record.options))


def reference_images(text: str, n_images: int) -> str:
    """Replace the k-th ``<image>`` placeholder by ``<image k>``, since our images all come first.

    See the module docstring; when there are fewer placeholders than images, the unmarked images are
    taken to come first (Mantis' own evaluation prepends them).
    """
    parts = text.split(IMAGE_PLACEHOLDER)
    offset = max(n_images - (len(parts) - 1), 0)
    out = [parts[0]]
    for k, part in enumerate(parts[1:], start=1):
        out.append(f"<image {offset + k}>{part}")
    return "".join(out)


def _label(names: Sequence[str], code: Any) -> str:
    """A Q-Bench integer code as its name; an unknown code stays visible as its number."""
    if isinstance(code, int) and 0 <= code < len(names):
        return names[code]
    return str(code)


def _lettered_options(raw_options: Sequence[Any]) -> tuple[list[str], list[str]]:
    """``(letters, texts)`` for options that may carry their own markers ("(A) True")."""
    letters = choice_letters(len(raw_options))
    return letters, [strip_option_marker(str(o), l) for o, l in zip(raw_options, letters)]


def parse_mmiu_options(options: Any) -> tuple[list[str], list[str]]:
    """``(letters, texts)`` from MMIU's option string ``"A: …\\nB: …"`` (a line without a marker continues
    the previous option); a list of options is accepted too."""
    if not isinstance(options, str):
        return _lettered_options(list(options))
    letters: list[str] = []
    texts: list[str] = []
    for line in options.splitlines():
        expected = chr(ord("A") + len(letters))
        match = re.match(rf"\s*{expected}\s*[:.)]\s?(.*)", line)
        if match:
            letters.append(expected)
            texts.append(match.group(1).strip())
        elif texts:
            texts[-1] = f"{texts[-1]}\n{line}".strip()
    return letters, texts


# ---------------------------------------------------------------------------------------------------------
# Loaders: one dataset row (images already referenced) → BenchRecord. Pure; tested on plain dicts.
# ---------------------------------------------------------------------------------------------------------

Row = Mapping[str, Any]


def muirbench_record(row: Row, images: Sequence[ImageLike]) -> BenchRecord:
    """MuirBench: letter answers; ``task`` is the sub-task, image relation and type extra breakdowns."""
    options = [str(o) for o in row["options"]]
    letters = choice_letters(len(options))
    meta = {key: row[key] for key in ("image_relation", "image_type") if row.get(key) is not None}
    return BenchRecord(id=str(row["idx"]), benchmark="muirbench", images=images, question=str(row["question"]),
                       options=options, letters=letters, answer=answer_letter(row["answer"], letters, options),
                       sub_task=str(row["task"]), meta=meta)


def blink_record(row: Row, images: Sequence[ImageLike]) -> BenchRecord:
    """BLINK: answers are "(A)"; the dataset's own ``prompt`` (question and lettered choices) is kept.

    Choices may carry their "(A)" marker; it is stripped from the option text (the prompt keeps it), so
    a reply that repeats an option's text is matched to its letter.
    """
    letters, options = _lettered_options(row["choices"])
    return BenchRecord(id=str(row["idx"]), benchmark="blink", images=images, question=str(row["question"]),
                       options=options, letters=letters, answer=answer_letter(row["answer"], letters, options),
                       sub_task=str(row["sub_task"]), meta={"prompt": str(row["prompt"])})


def nlvr2_record(row: Row, images: Sequence[ImageLike]) -> BenchRecord:
    """NLVR2 (TIGER-Lab, Mantis format): options "(A) True"/"(B) False" kept as "True"/"False"."""
    letters, options = _lettered_options(row["options"])
    return BenchRecord(id=str(row["id"]), benchmark="nlvr2", images=images, question=str(row["question"]),
                       options=options, letters=letters, answer=answer_letter(row["answer"], letters, options),
                       sub_task=str(row.get("category") or "nlvr2"))


def mantis_record(row: Row, images: Sequence[ImageLike]) -> BenchRecord:
    """Mantis-Eval: multi-choice like NLVR2, or short-answer with the reference text as ``answer``."""
    question_type = str(row["question_type"])
    common = dict(id=str(row["id"]), benchmark="mantis", images=images, question=str(row["question"]),
                  sub_task=str(row.get("category") or "general"), question_type=question_type)
    if question_type == SHORT_ANSWER:
        return BenchRecord(options=[], letters=[], answer=str(row["answer"]).strip(), **common)
    if question_type != MULTI_CHOICE:
        raise ValueError(f"Mantis-Eval {row['id']}: unknown question_type {question_type!r}")
    letters, options = _lettered_options(row["options"])
    return BenchRecord(options=options, letters=letters, answer=answer_letter(row["answer"], letters, options),
                       **common)


def mmiu_record(row: Row, images: Sequence[ImageLike]) -> BenchRecord:
    """MMIU: no id field, so ``{task}_{row_index}``; ``category`` is the image folder the fork groups by
    (``./Low-level-semantic/…`` → ``Low-level-semantic``)."""
    letters, options = parse_mmiu_options(row["options"])
    first_path = str(row["input_image_path"][0]) if row["input_image_path"] else ""
    category = first_path.split("/")[1] if first_path.count("/") >= 2 else ""
    return BenchRecord(id=f"{row['task']}_{row['row_index']}", benchmark="mmiu", images=images,
                       question=str(row["question"]), options=options, letters=letters,
                       answer=answer_letter(row["output"], letters, options), sub_task=str(row["task"]),
                       meta={"context": str(row.get("context") or ""), "category": category})


def qbench2_record(row: Row, images: Sequence[ImageLike]) -> BenchRecord:
    """Q-Bench2: options ``option0..3`` with "N/A" for none; integer concern and kind named as lmms-eval."""
    options = [str(row[f"option{i}"]) for i in range(4) if row.get(f"option{i}") not in (None, "N/A")]
    letters = choice_letters(len(options))
    return BenchRecord(id=str(row["id"]), benchmark="qbench2", images=images, question=str(row["question"]),
                       options=options, letters=letters,
                       answer=answer_letter(row["correct_choice"], letters, options),
                       sub_task=_label(QBENCH_CONCERNS, row.get("question_concern")),
                       meta={"question_kind": _label(QBENCH_QUESTION_KINDS, row.get("question_type"))})


# ---------------------------------------------------------------------------------------------------------
# Prompt builders: the reference wording (see the table in the module docstring). Pure.
# ---------------------------------------------------------------------------------------------------------


def muirbench_prompt(record: BenchRecord) -> str:
    return f"{record.question}\n{option_lines(record)}{LETTER_SUFFIX}"


def blink_prompt(record: BenchRecord) -> str:
    return record.meta["prompt"]


def nlvr2_prompt(record: BenchRecord) -> str:
    return record.question


def mantis_prompt(record: BenchRecord) -> str:
    if record.question_type == SHORT_ANSWER:
        return f"{record.question}{MANTIS_SHORT_SUFFIX}"
    options = "".join("\n" + line for line in option_lines(record, " ({letter}) {option}").split("\n"))
    return f"{record.question}{options}{LETTER_SUFFIX}"


def mmiu_prompt(record: BenchRecord) -> str:
    context = record.meta.get("context", "")
    if record.sub_task in MMIU_QUESTION_FIRST:
        body = f"{record.question}\n{context}"
    else:
        body = f"{context}\n{record.question}"
    return f"Question: {body}{MMIU_SUFFIX}"


def qbench2_prompt(record: BenchRecord) -> str:
    return f"{record.question}\n{option_lines(record)}{LETTER_SUFFIX}\n"


# ---------------------------------------------------------------------------------------------------------
# Scorers
# ---------------------------------------------------------------------------------------------------------

_ANSWER_CUE = re.compile(r"\b(?:final\s+answer\s*:|answer\s*:|answer\s+is\b)", re.IGNORECASE)


def normalize_short_answer(text: Any) -> str:
    """A free-text answer in comparable form: after the last "answer:"/"answer is" cue, lower-cased,
    whitespace collapsed, surrounding punctuation and quotes removed ("Final Answer: Two." → "two")."""
    text = "" if text is None else str(text)
    cues = list(_ANSWER_CUE.finditer(text))
    if cues:
        text = text[cues[-1].end():]
    return " ".join(text.lower().split()).strip(" .,:;!?\"'()[]")


def yes_no_as_true_false(output: str) -> str:
    """A reply starting with yes/no read as True/False (the fork's NLVR2 scorer maps them the same way)."""
    match = re.match(r"\s*(yes|no)\b", output or "", re.IGNORECASE)
    if not match:
        return output
    return "True" if match.group(1).lower() == "yes" else "False"


def _as_is(output: str) -> str:
    return output


# ---------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything that makes one benchmark: where it lives, how a row becomes a record, the prompt,
    how a reply is read before letter extraction, the generation budget and the breakdowns."""

    name: str
    title: str
    hub_id: str
    split: str
    to_record: Callable[[Row, Sequence[ImageLike]], BenchRecord]
    prompt: Callable[[BenchRecord], str]
    max_new_tokens: int
    prompt_source: str
    configs: tuple[str | None, ...] = (None,)
    image_columns: tuple[str, ...] = ()
    image_path_field: str | None = None  # images are files named by this field (MMIU), not dataset columns
    breakdowns: tuple[str, ...] = ("sub_task",)
    read_response: Callable[[str], str] = _as_is
    download_note: str = ""


_FORK = "github.com/anurag-198/MIMIC lmm_eval/lmms_eval/tasks"
_UPSTREAM = "github.com/EvolvingLMMs-Lab/lmms-eval lmms_eval/tasks"

BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in (
    BenchmarkSpec("muirbench", "MuirBench", "MUIRBENCH/MUIRBENCH", "test", muirbench_record, muirbench_prompt,
                  16, f"{_FORK}/muirbench (= {_UPSTREAM}/muirbench)", image_columns=("image_list",),
                  breakdowns=("sub_task", "image_relation", "image_type")),
    BenchmarkSpec("blink", "BLINK", "BLINK-Benchmark/BLINK", "val", blink_record, blink_prompt, 16,
                  f"{_FORK}/blink (doc['prompt'] verbatim)", configs=BLINK_SUBTASKS,
                  image_columns=("image_1", "image_2", "image_3", "image_4")),
    BenchmarkSpec("nlvr2", "NLVR2", "TIGER-Lab/NLVR2", "test", nlvr2_record, nlvr2_prompt, 16,
                  f"{_FORK}/nlvr2 (question verbatim)", configs=("nlvr2",), image_columns=("images",),
                  read_response=yes_no_as_true_false),
    BenchmarkSpec("mantis", "Mantis-Eval", "TIGER-Lab/Mantis-Eval", "test", mantis_record, mantis_prompt, 16,
                  f"{_FORK}/mantis", configs=("mantis_eval",), image_columns=("images",),
                  breakdowns=("sub_task", "question_type")),
    BenchmarkSpec("mmiu", "MMIU", "FanqingM/MMIU-Benchmark", "test", mmiu_record, mmiu_prompt, 16,
                  f"{_FORK}/mmiu", image_path_field="input_image_path", breakdowns=("sub_task", "category"),
                  download_note="MMIU's images are seven zip archives in the same repository: unzip them "
                                "inside <DIR> (or pass image_root=<folder holding the unzipped folders>)."),
    BenchmarkSpec("qbench2", "Q-Bench2", "q-future/Q-Bench2-HF", "dev", qbench2_record, qbench2_prompt, 32,
                  f"{_UPSTREAM}/qbench/qbench2_dev.yaml (used unchanged by the fork)",
                  image_columns=("image1", "image2"), breakdowns=("sub_task", "question_kind")),
)}


def get_spec(name: str) -> BenchmarkSpec:
    """The spec of a benchmark by name; an unknown name is refused with the known ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


def build_prompt(record: BenchRecord) -> str:
    """The text that follows the images: the benchmark's reference wording, ``<image>`` placeholders
    turned into numbered references (see the module docstring)."""
    return reference_images(get_spec(record.benchmark).prompt(record), len(record.images))


def score_prediction(record: BenchRecord, output: str) -> dict[str, Any]:
    """``{"parsed", "score"}`` for one reply: letter extraction restricted to the record's choices, or
    normalised exact match for short answers."""
    if record.question_type == SHORT_ANSWER:
        parsed = normalize_short_answer(output)
        return {"parsed": parsed, "score": float(bool(parsed) and parsed == normalize_short_answer(record.answer))}
    reply = get_spec(record.benchmark).read_response("" if output is None else str(output))
    return score_choice(reply, record.answer, record.letters, record.options)


# ---------------------------------------------------------------------------------------------------------
# Loading: hub id or local copy → list of records
# ---------------------------------------------------------------------------------------------------------


class BenchmarkUnavailable(FileNotFoundError):
    """The benchmark's data cannot be read here; the message says how to get it."""


@dataclass(frozen=True)
class NotRun:
    """What :func:`load_benchmark` returns for a missing dataset under ``skip_missing=True``."""

    benchmark: str
    reason: str

    def as_metrics(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "status": "not run", "reason": self.reason}


def how_to_get(spec: BenchmarkSpec) -> str:
    """Instructions for making a benchmark available offline."""
    load_args = ", ".join(repr(a) for a in (spec.hub_id, spec.configs[0]) if a is not None)
    lines = [
        f"Download it once where the hub is reachable: `hf download {spec.hub_id} --repo-type dataset "
        f"--local-dir <DIR>` (huggingface_hub < 1.0: `huggingface-cli download …`) and pass "
        f"source='<DIR>' to load_benchmark;",
        f"or fill the datasets cache with datasets.load_dataset({load_args}, split={spec.split!r}) and "
        f"run with HF_HUB_OFFLINE=1; or pass source=<folder written by Dataset.save_to_disk>"
        + (" (one sub-folder per config)" if len(spec.configs) > 1 else "") + ".",
    ]
    if spec.download_note:
        lines.append(spec.download_note)
    lines.append("With skip_missing=True the benchmark is reported as 'not run' instead.")
    return "\n".join(lines)


def _unavailable(spec: BenchmarkSpec, what: str, err: BaseException | None = None) -> BenchmarkUnavailable:
    cause = f" ({type(err).__name__}: {err})" if err is not None else ""
    return BenchmarkUnavailable(f"{spec.title} is not available: {what}{cause}.\n{how_to_get(spec)}")


def _is_saved_dataset(folder: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


class BenchmarkFormatError(ValueError):
    """A dataset that is there but not in the benchmark's schema: a missing field, config or split. The
    message names the benchmark, where it was read from and what is missing."""


def _format_error(spec: BenchmarkSpec, where: str, what: str) -> BenchmarkFormatError:
    return BenchmarkFormatError(f"{spec.title} at {where}: {what}")


def _where(spec: BenchmarkSpec, source: str | os.PathLike | None, config: str | None) -> str:
    """Where one config is read from, for messages: the hub id or folder, and the config."""
    return str(source or spec.hub_id) + (f" (config {config})" if config else "")


def _load_saved(spec: BenchmarkSpec, folder: Path, split: str):
    """A split of a saved dataset (a saved ``DatasetDict`` must hold ``split``)."""
    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise _format_error(spec, str(folder), f"no split {split!r} (has {sorted(loaded)})")
        return loaded[split]
    return loaded


def local_configs(spec: BenchmarkSpec, folder: Path) -> tuple[str | None, ...]:
    """The configs to read from a local copy of a benchmark.

    One saved dataset (all of BLINK's sub-tasks, or a single one) is read once (``None``); a folder
    with a sub-folder per config (``save_to_disk`` per config, or ``hf download``) gives the configs
    that are there, so a partial copy loads; a folder without any is handed to ``load_dataset`` per config.
    """
    if not folder.exists():
        raise _unavailable(spec, f"source folder {folder} does not exist")
    if len(spec.configs) == 1:
        return spec.configs
    if _is_saved_dataset(folder):
        return (None,)
    return tuple(c for c in spec.configs if (folder / c).is_dir()) or spec.configs


def report_sub_tasks(spec: BenchmarkSpec, source: str | os.PathLike, records: list[BenchRecord]) -> str:
    """Say which of a multi-config benchmark's sub-tasks a local copy holds (printed, and returned)."""
    found = sorted({r.sub_task for r in records})
    missing = [c for c in spec.configs if c not in found]
    line = (f"[benchmarks] {spec.title} at {source}: {len(found)} of {len(spec.configs)} sub-tasks found"
            f" ({', '.join(found) or 'none'})" + (f"; missing: {', '.join(missing)}" if missing else ""))
    print(line)
    return line


def open_split(spec: BenchmarkSpec, source: str | os.PathLike | None, config: str | None, split: str,
               revision: str | None = None):
    """One config's split as a ``datasets.Dataset``, from the hub (``source=None``), a saved dataset
    (``<source>`` or ``<source>/<config>``) or a local data folder read by ``load_dataset``.

    Anything that cannot be read (no network, no cache, no such folder) becomes
    :class:`BenchmarkUnavailable` with instructions; a config or split that is not there becomes
    :class:`BenchmarkFormatError` naming the benchmark, the source and the config.
    """
    where = spec.hub_id if source is None else str(source)
    if source is not None:
        folder = Path(source)
        if not folder.exists():
            raise _unavailable(spec, f"source folder {folder} does not exist")
        for candidate in ([folder / config] if config else []) + [folder]:
            if _is_saved_dataset(candidate):
                return _load_saved(spec, candidate, split)
    try:
        return datasets.load_dataset(where, config, split=split, revision=revision)
    except OSError as err:  # ConnectionError, DatasetNotFoundError, missing files: all "not here"
        named = f"{where!r}" + (f" config {config!r}" if config else "") + f" split {split!r}"
        raise _unavailable(spec, f"cannot load {named}", err) from err
    except ValueError as err:  # an unknown config or split
        raise _format_error(spec, _where(spec, source, config), f"no config {config!r} with split {split!r} "
                            f"({type(err).__name__}: {err})") from err


def _present_images(view: Any, column: str) -> list[list[DatasetImage]]:
    """Per row, references to the images one column holds (a list column or a single, nullable image),
    read from the Arrow data without decoding."""
    values = view[column]
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        counts = [n or 0 for n in pc.list_value_length(values).to_pylist()]
        return [[DatasetImage(view, row, column, k) for k in range(n)] for row, n in enumerate(counts)]
    return [[DatasetImage(view, row, column)] if present else []
            for row, present in enumerate(values.is_valid().to_pylist())]


def dataset_images(dataset: Any, columns: Sequence[str]) -> list[list[DatasetImage]]:
    """For each row, references to its images over ``columns`` in order (null cells skipped)."""
    per_row: list[list[DatasetImage]] = [[] for _ in range(len(dataset))]
    for column in columns:
        view = dataset.select_columns([column]).with_format("arrow")
        for images, found in zip(per_row, _present_images(view, column)):
            images.extend(found)
    return per_row


def _image_files(paths: Iterable[str], image_root: Path) -> list[str]:
    """MMIU's ``./Folder/task/file.jpg`` paths under the folder holding the unzipped archives."""
    return [str(image_root / str(path).removeprefix("./")) for path in paths]


def records_from_dataset(spec: BenchmarkSpec, dataset: Any, image_root: Path | None = None,
                         where: str | None = None) -> list[BenchRecord]:
    """Every row of one loaded split as a record; images stay in the dataset (or on disk for MMIU).

    A field the benchmark reads that the dataset lacks raises :class:`BenchmarkFormatError` naming the
    benchmark, ``where`` (the source and config) and the field.
    """
    where = where or spec.hub_id
    image_columns = [c for c in spec.image_columns if c in dataset.column_names]
    if spec.image_columns and spec.image_columns[0] not in image_columns:  # the one every question has
        raise _format_error(spec, where, f"no field {spec.image_columns[0]!r} "
                            f"(fields: {', '.join(dataset.column_names)})")
    plain = dataset.remove_columns(image_columns) if image_columns else dataset
    images = dataset_images(dataset, image_columns) if image_columns else [[] for _ in range(len(dataset))]
    records = []
    for index, (row, row_images) in enumerate(zip(plain, images)):
        try:
            if spec.image_path_field:
                row_images = _image_files(row[spec.image_path_field], image_root or Path("."))
            records.append(spec.to_record({**row, "row_index": index}, row_images))
        except KeyError as err:
            raise _format_error(spec, where, f"no field {err.args[0]!r} (fields: "
                                f"{', '.join(dataset.column_names)})") from err
    return records


def _check_image_files(spec: BenchmarkSpec, records: list[BenchRecord]) -> None:
    """Benchmarks whose images are separate files: the first one must exist, else say how to get them."""
    first = next((r.images[0] for r in records if r.images), None)
    if spec.image_path_field and first is not None and not Path(first).is_file():
        raise _unavailable(spec, f"image file {first} not found")


def cap_per_sub_task(records: list[BenchRecord], limit: int | None) -> list[BenchRecord]:
    """The first ``limit`` records of every sub-task (all when ``None``): small runs keep every sub-task."""
    if limit is None:
        return records
    seen: dict[str, int] = {}
    kept = []
    for record in records:
        seen[record.sub_task] = seen.get(record.sub_task, 0) + 1
        if seen[record.sub_task] <= limit:
            kept.append(record)
    return kept


def load_benchmark(name: str, source: str | os.PathLike | None = None, *, split: str | None = None,
                   revision: str | None = None, limit: int | None = None,
                   image_root: str | os.PathLike | None = None,
                   skip_missing: bool = False) -> list[BenchRecord] | NotRun:
    """A benchmark's records, from the hub (``source=None``: its real id, configs and split) or a local copy.

    ``source``: a folder from ``hf download`` (read by ``datasets.load_dataset``) or from
    ``save_to_disk``. BLINK's 14 configs may be one saved dataset (all sub-tasks, or one), a sub-folder per
    config, or only some of them: :func:`local_configs` decides, and the sub-tasks found are reported.
    ``image_root``: where MMIU's unzipped image folders are (default ``source``). ``limit``: at most this
    many records per sub-task. A dataset that cannot be read raises :class:`BenchmarkUnavailable` saying
    how to get it, or with ``skip_missing=True`` returns :class:`NotRun` carrying that message; one in
    another schema raises :class:`BenchmarkFormatError`.
    """
    spec = get_spec(name)
    root = Path(image_root if image_root is not None else (source or "."))
    try:
        records: list[BenchRecord] = []
        configs = spec.configs if source is None else local_configs(spec, Path(source))
        for config in configs:
            dataset = open_split(spec, source, config, split or spec.split, revision)
            records.extend(records_from_dataset(spec, dataset, root, _where(spec, source, config)))
        if source is not None and len(spec.configs) > 1:
            report_sub_tasks(spec, source, records)
        records = cap_per_sub_task(records, limit)
        _check_image_files(spec, records)
    except BenchmarkUnavailable as err:
        if skip_missing:
            return NotRun(name, str(err))
        raise
    return records


# ---------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------


def _group_values(record: BenchRecord, keys: Sequence[str]) -> dict[str, Any]:
    """The record's value for each breakdown key (a field, or a ``meta`` label)."""
    return {key: getattr(record, key) if hasattr(record, key) else record.meta.get(key) for key in keys}


def prediction_row(record: BenchRecord, prompt: str, output: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """One line of the predictions JSONL: the question's identity and labels, prompt, reply, parse, score,
    generation budget and model settings (so every results file says how it was made)."""
    spec = get_spec(record.benchmark)
    return {
        "id": record.id, "benchmark": record.benchmark, **_group_values(record, ("sub_task", "question_type")),
        **_group_values(record, spec.breakdowns), "answer": record.answer, "letters": record.letters,
        "n_images": len(record.images), "prompt": prompt, "output": output,
        **score_prediction(record, output), "max_new_tokens": spec.max_new_tokens, "model": dict(settings),
    }


def summarize_benchmark(name: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy overall and per breakdown (sub-task first), ready for ``metrics.json``."""
    spec = get_spec(name)
    summary: dict[str, Any] = {"benchmark": name, "status": "done", "max_new_tokens": spec.max_new_tokens,
                               "prompt_source": spec.prompt_source}
    if not rows:
        return {**summary, "n": 0, "accuracy": None, "by": {}}
    stats = aggregate([{**row, "family": name} for row in rows], by=spec.breakdowns)[name]
    return {**summary, **stats}


def evaluate_benchmark(adapter: Any, name: str, records: list[BenchRecord] | NotRun, out_path: str | os.PathLike,
                       batch_size: int = 8, *, pool: int = 1, progress: bool = True) -> dict[str, Any]:
    """Predict, score and summarise one benchmark, resuming from ``out_path`` (JSONL, one row per id).

    ``adapter`` is anything with ``answer(samples, pool=, max_new_tokens=)`` (a ``VLMAdapter``); samples
    are ``{"images", "question", "task_family"}`` dicts whose question is the full prompt. Rows already
    in ``out_path`` are kept and skipped, a torn last line is redone (as in ``mimic_utils.evaluation.harness``).
    A :class:`NotRun` passes straight through as ``{"status": "not run", "reason": …}``.
    """
    if isinstance(records, NotRun):
        return records.as_metrics()
    spec = get_spec(name)
    prompts = {r.id: build_prompt(r) for r in records}

    def to_sample(record: BenchRecord) -> dict:
        return {"images": [open_image(i) for i in record.images], "question": prompts[record.id], "task_family": name}

    def to_row(record: BenchRecord, output: str, settings: dict, pool: int) -> dict:
        return prediction_row(record, prompts[record.id], output, settings)

    rows = harness.run(adapter, records, out_path, batch_size, pool, progress, desc=name, to_sample=to_sample,
                        to_row=to_row, record_id=lambda r: r.id, sort_key=lambda r: (len(r.images), len(prompts[r.id])),
                        max_new_tokens=spec.max_new_tokens)
    return {**summarize_benchmark(name, rows), "predictions": str(out_path)}
