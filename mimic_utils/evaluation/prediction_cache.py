"""Answers a model already gave, reused by every notebook that asks the same model the same question.

An answer depends only on the model (its fingerprint: weights, mask, preprocessing, pooling), the question
record (every field, the images by content) and the decoding budget, so :func:`mimic_utils.evaluation.harness.run`
looks each question up here before generating and stores what it generates: one append-only JSONL file
per model fingerprint under ``$MIMIC_CACHE_DIR/predictions`` (set by the runner); without a directory
nothing is reused (docs/caching.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from mimic_utils.models.vision_cache import ENV_DIR


@lru_cache(maxsize=200_000)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_digest(path: str) -> str:
    """sha256 of a file's bytes, memoised by (path, size, mtime) so a study run hashes each image once."""
    stat = os.stat(path)
    return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)


def _image_digest(image) -> str:
    """An in-memory image (a public benchmark row's PIL image) by its pixels; anything else by its text."""
    if hasattr(image, "tobytes") and hasattr(image, "size"):
        return hashlib.sha256(repr((image.mode, image.size)).encode() + image.tobytes()).hexdigest()
    return str(image)


def question_key(record: dict, max_new_tokens: int | None) -> str:
    """What makes two questions the same for a given model: every field of the record, each image by the
    sha256 of its bytes (a rebuilt image under the same name is a new question), and the token budget."""
    fields = record if isinstance(record, dict) else dict(vars(record))  # MIMIC dicts, benchmark dataclasses
    images = fields.get("images") or []
    digests = [file_digest(p) if isinstance(p, (str, os.PathLike)) and os.path.isfile(p) else _image_digest(p)
               for p in images]
    content = {**fields, "images": digests, "_max_new_tokens": max_new_tokens}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


class PredictionCache:
    """The raw answers stored for one model fingerprint and generation context (rescored on reuse)."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.path = Path(directory) / f"{fingerprint}.jsonl"
        self.outputs: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn line from a killed run: that answer is simply generated again
                self.outputs[entry["key"]] = entry["output"]

    def get(self, key: str) -> str | None:
        return self.outputs.get(key)

    def add(self, entries: list[tuple[str, str]]) -> None:
        """Append ``(key, raw output)`` pairs (one write, flushed) and remember them."""
        if not entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.is_file() and self.path.stat().st_size > 0 and _last_byte(self.path) != b"\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("\n" if torn else "")
            handle.write("".join(json.dumps({"key": k, "output": r}, sort_keys=True, ensure_ascii=False) + "\n"
                                 for k, r in entries))
        self.outputs.update(entries)


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


#: Bump when answers produced by the same model and question could change for a reason none of the
#: sources below capture; every stored answer is then generated again.
CACHE_VERSION = 2  # 2: lines hold the raw output only
#: The code that turns a question into the model's input and decodes its answer: the prompt builders, the
#: adapter (preprocessing, pooling, generation) and the masking. Any edit to them starts a new cache file.
GENERATION_MODULES = ("mimic_utils.data.prompts", "mimic_utils.models.vlm", "mimic_utils.models.masking",
                      "mimic_utils.evaluation.external_benchmarks")


@lru_cache(maxsize=1)
def _code_digest() -> str:
    import importlib
    import inspect

    digest = hashlib.sha256(str(CACHE_VERSION).encode())
    for name in GENERATION_MODULES:
        digest.update(inspect.getsource(importlib.import_module(name)).encode())
    return digest.hexdigest()


def generation_context(adapter) -> str:
    """What besides the weights decides an answer: the generation code (:data:`GENERATION_MODULES`,
    :data:`CACHE_VERSION`) and the processor's chat template; part of the cache file's name."""
    template = getattr(getattr(adapter, "processor", None), "chat_template", None) or ""
    return hashlib.sha256((_code_digest() + str(template)).encode()).hexdigest()[:16]


def open_cache(fingerprint: str, directory: str | Path | None = None, context: str = "") -> PredictionCache | None:
    """The cache of ``fingerprint`` (and generation ``context``) under ``directory`` (default
    ``$MIMIC_CACHE_DIR/predictions``), or None when no directory is configured."""
    if directory is None:
        root = os.environ.get(ENV_DIR)
        if not root:
            return None
        directory = Path(root) / "predictions"
    return PredictionCache(Path(directory), f"{fingerprint}-{context}" if context else fingerprint)


__all__ = ["CACHE_VERSION", "PredictionCache", "file_digest", "generation_context", "open_cache", "question_key"]
