"""Multiple choice scored by option likelihood: each option's log-probability given the prompt, argmax wins.

A model that lost the letter format (it answers "three dogs" where "B" is asked for) scores near zero by
letter extraction whatever it knows. lmms-eval's ``loglikelihood`` requests measure such a model anyway:
for each option the summed log-probability of a continuation (the option's letter, or its letter and
text) right after the prompt, the prediction being the most likely option. We do the same through the
study's adapter, so the prompt, preprocessing, pooling and masking are those of generation:

* the continuation follows the chat template's assistant turn exactly as a generated answer would;
* ``mode="letter"`` scores ``"B"``, ``mode="letter_text"`` scores ``"B. dog"`` (summed, or per-token mean
  with ``length_normalise``);
* a continuation of one token (every letter under the tokenizers we use) needs one forward of the prompt:
  the last position's log-softmax read at the letters' token ids; longer continuations run the prompt
  once per option with the continuation appended and sum its tokens' log-probabilities.

:func:`evaluate_likelihood` runs a benchmark through :func:`mimic_utils.evaluation.harness.run` (resumable
JSONL, answer cache) and writes the same row fields as generation (``parsed`` is the argmax letter,
``score`` 1/0, ``letters``), so :mod:`mimic_utils.analysis.cross_benchmark` tables and paired comparisons
read it unchanged; the parse rate of likelihood rows is 1 by construction.
:func:`mimic_utils.analysis.cross_benchmark.scoring_comparison` sets the two scorings side by side.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mimic_utils.evaluation import harness
from mimic_utils.evaluation.external_benchmarks import (MULTI_CHOICE, BenchRecord, NotRun, build_prompt, get_spec,
                                                        open_image, summarize_benchmark)
from mimic_utils.models.vision_cache import ENV_DIR

MODES = ("letter", "letter_text")


def continuation(letter: str, option: str, mode: str) -> str:
    """What is scored for one option: its letter (``"B"``) or its letter and text (``"B. dog"``)."""
    if mode not in MODES:
        raise ValueError(f"likelihood mode must be one of {MODES}, got {mode!r}")
    return letter if mode == "letter" else f"{letter}. {option}"


def _token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def continuation_tokens(tokenizer, prompt: str, text: str) -> list[int]:
    """The token ids ``text`` adds after ``prompt`` when the two are tokenized together (what the model reads
    there). Raises when joining them re-tokenizes the end of the prompt, since the prompt's own tokens would
    then differ between options."""
    before, after = _token_ids(tokenizer, prompt), _token_ids(tokenizer, prompt + text)
    if after[:len(before)] != before or len(after) == len(before):
        raise ValueError(f"continuation {text!r} does not extend the prompt's tokens (prompt ends {prompt[-20:]!r})")
    return after[len(before):]


def option_logprobs(adapter, samples: Sequence[Mapping], continuations: Sequence[Sequence[str]], pool: int = 1,
                    length_normalise: bool = False) -> list[list[float]]:
    """Per sample, the log-probability of each of its ``continuations`` right after its prompt (the chat
    template's assistant turn), summed over the continuation's tokens (or their mean with
    ``length_normalise``). ``samples`` are what ``adapter.prepare`` takes (images, question, task_family)."""
    prompts = [adapter.render_prompt(s["question"], len(s["images"]), s["task_family"]) for s in samples]
    tokens = [[continuation_tokens(adapter.tokenizer, p, c) for c in options]
              for p, options in zip(prompts, continuations, strict=True)]
    if all(len(t) == 1 for options in tokens for t in options):
        return _single_token(adapter, samples, tokens, pool)
    return _appended(adapter, samples, continuations, tokens, pool, length_normalise)


@torch.no_grad()
def _single_token(adapter, samples: Sequence[Mapping], tokens: list[list[list[int]]], pool: int) -> list[list[float]]:
    """One forward of the prompts: the last position's log-softmax at each option's one token (only that
    position's logits are computed: a full ``[batch, length, vocabulary]`` tensor of a 7B model on ten
    images would take gigabytes)."""
    batch = adapter.prepare(samples, pool=pool)
    logits = adapter.forward(batch, logits_to_keep=1).logits[:, -1, :].float()  # left padding: the prompt's end
    logprobs = torch.log_softmax(logits, dim=-1)
    return [[float(logprobs[row, t[0]]) for t in options] for row, options in enumerate(tokens)]


@torch.no_grad()
def _appended(adapter, samples: Sequence[Mapping], continuations: Sequence[Sequence[str]],
              tokens: list[list[list[int]]], pool: int, length_normalise: bool) -> list[list[float]]:
    """One row per (sample, option): the prompt with the option appended (and the template's end of turn,
    as ``prepare`` writes answers); the continuation's tokens sit just before the end of turn."""
    pairs = [(i, j) for i, options in enumerate(continuations) for j in range(len(options))]
    batch = adapter.prepare([samples[i] for i, _ in pairs], pool=pool,
                            answers=[continuations[i][j] for i, j in pairs])
    tail = len(_token_ids(adapter.tokenizer, "x" + adapter.end_of_turn)) - len(_token_ids(adapter.tokenizer, "x"))
    keep = tail + 1 + max(len(tokens[i][j]) for i, j in pairs)  # the positions that predict a continuation
    logprobs = torch.log_softmax(adapter.forward(batch, logits_to_keep=keep).logits.float(), dim=-1)
    ids = batch.inputs["input_ids"]
    length = ids.shape[1]
    found: list[list[float]] = [[] for _ in samples]
    for row, (i, j) in enumerate(pairs):
        wanted = tokens[i][j]
        end = length - tail
        start = end - len(wanted)
        if ids[row, start:end].tolist() != wanted:
            raise RuntimeError(f"sample {i}, option {j}: the batch holds {ids[row, start:end].tolist()} where the "
                               f"continuation's tokens {wanted} should be")
        # logits index k holds position length - keep + k, which predicts the token at the next position
        values = [float(logprobs[row, position - 1 - (length - keep), token])
                  for position, token in zip(range(start, end), wanted)]
        found[i].append(sum(values) / len(values) if length_normalise else sum(values))
    return found


def code_version() -> str:
    """A digest of this module's source: part of the scorer's settings, so cached log-probabilities of
    other code are never reused (:mod:`mimic_utils.prediction_cache` keys on the settings)."""
    return hashlib.sha256(inspect.getsource(sys.modules[__name__]).encode()).hexdigest()[:12]


class OptionLikelihood:
    """An adapter that "answers" a multiple-choice sample with its options' log-probabilities (a JSON
    object letter → log-probability), so :func:`mimic_utils.evaluation.harness.run` stores, resumes and caches them
    like generated replies. Samples carry ``letters`` and ``options`` besides images and prompt."""

    def __init__(self, adapter, mode: str = "letter", length_normalise: bool = False) -> None:
        continuation("A", "", mode)  # refuse an unknown mode now
        self.adapter, self.mode, self.length_normalise = adapter, mode, length_normalise
        self.settings = {**adapter.settings, "scoring": {"kind": "option likelihood", "mode": mode,
                                                         "length_normalise": length_normalise,
                                                         "code": code_version()}}

    @property
    def processor(self):
        return self.adapter.processor

    def answer(self, samples, pool: int = 1, max_new_tokens: int | None = None) -> list[str]:
        continuations = [[continuation(l, o, self.mode) for l, o in zip(s["letters"], s["options"], strict=True)]
                         for s in samples]
        found = option_logprobs(self.adapter, samples, continuations, pool, self.length_normalise)
        return [json.dumps(dict(zip(s["letters"], values))) for s, values in zip(samples, found)]


def reuse_dir(scorer: OptionLikelihood) -> Path | None:
    """Where stored log-probabilities are reused from: beside the answer cache, one folder per scoring mode
    and code version (the answer cache's key knows the model and the question, not the scoring), or None
    when no cache directory is configured."""
    root = os.environ.get(ENV_DIR)
    if not root:
        return None
    scoring = scorer.settings["scoring"]
    return Path(root) / "likelihood" / f"{scoring['mode']}-{int(scoring['length_normalise'])}-{scoring['code']}"


def choose(logprobs: Mapping[str, float]) -> str:
    """The most likely option's letter (the first in option order on a tie)."""
    return max(logprobs, key=lambda letter: (logprobs[letter], -list(logprobs).index(letter)))


def likelihood_row(record: BenchRecord, prompt: str, output: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """One line of a likelihood predictions file: the generation row's identity fields, the options'
    log-probabilities, ``parsed`` = the argmax letter and its 0/1 ``score``."""
    spec = get_spec(record.benchmark)
    logprobs = {letter: float(value) for letter, value in json.loads(output).items()}
    parsed = choose(logprobs)
    labels = {key: getattr(record, key) if hasattr(record, key) else record.meta.get(key)
              for key in ("sub_task", "question_type", *spec.breakdowns)}
    return {"id": record.id, "benchmark": record.benchmark, **labels, "answer": record.answer,
            "letters": record.letters, "n_images": len(record.images), "prompt": prompt, "output": output,
            "logprobs": logprobs, "parsed": parsed, "score": float(parsed == record.answer),
            "scoring": dict(settings.get("scoring", {})), "model": dict(settings)}


def evaluate_likelihood(adapter, name: str, records: list[BenchRecord] | NotRun, out_path: str | os.PathLike,
                        batch_size: int = 8, *, mode: str = "letter", length_normalise: bool = False, pool: int = 1,
                        progress: bool = True) -> dict[str, Any]:
    """Score a benchmark's multiple-choice questions by option likelihood (short-answer questions have no
    options and are left out), resuming from ``out_path``; the summary of
    :func:`mimic_utils.evaluation.external_benchmarks.summarize_benchmark` with ``scoring`` and ``predictions``. A
    :class:`~mimic_utils.evaluation.external_benchmarks.NotRun` passes through as ``{"status": "not run", …}``."""
    if isinstance(records, NotRun):
        return records.as_metrics()
    chosen = [r for r in records if r.question_type == MULTI_CHOICE and r.letters]
    prompts = {r.id: build_prompt(r) for r in chosen}
    scorer = OptionLikelihood(adapter, mode, length_normalise)

    def to_sample(record: BenchRecord) -> dict:
        return {"images": [open_image(i) for i in record.images], "question": prompts[record.id],
                "task_family": name, "letters": record.letters, "options": record.options}

    def to_row(record: BenchRecord, output: str, settings: dict, pool: int) -> dict:
        return likelihood_row(record, prompts[record.id], output, settings)

    rows = harness.run(scorer, chosen, out_path, batch_size, pool, progress, desc=f"{name} likelihood",
                        to_sample=to_sample, to_row=to_row, record_id=lambda r: r.id,
                        sort_key=lambda r: (len(r.images), len(prompts[r.id])), max_new_tokens=0,
                        reuse_dir=reuse_dir(scorer))
    return {**summarize_benchmark(name, rows), "scoring": scorer.settings["scoring"], "predictions": str(out_path)}


__all__ = ["MODES", "OptionLikelihood", "choose", "code_version", "continuation", "continuation_tokens",
           "evaluate_likelihood", "likelihood_row", "option_logprobs", "reuse_dir"]
