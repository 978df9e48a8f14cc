"""The scene world's out-of-distribution benchmark: written in MuirBench's schema, read back by its loader."""

from __future__ import annotations

import random
from collections import Counter

from mimic_utils.data import scene_ood
from mimic_utils.evaluation.external_benchmarks import build_prompt, load_benchmark


def test_the_scene_benchmark_reads_back_through_the_muirbench_loader(tmp_path):
    folder = scene_ood.write_scene_muirbench(tmp_path / "ood", n_source_images=300, per_task=6, n_images=(3,),
                                             progress=False)
    records = load_benchmark("muirbench", source=folder)
    assert len(records) == 18 and {r.sub_task for r in records} == {"counting", "common", "oddone"}
    for r in records:
        assert len(r.options) == 4 and len(set(r.options)) == 4 and r.answer in r.letters
        assert len(r.images) == 3
    prompt = build_prompt(records[0])
    assert prompt.endswith("Answer with the option's letter from the given choices directly.")


def test_the_answer_rank_among_count_options_is_not_fixed():
    rng = random.Random(0)
    ranks = Counter()
    for _ in range(200):
        options = scene_ood._choice_options({"family": "counting", "gt": "5"}, [], rng)
        ranks[sorted(options, key=int).index("5")] += 1
    assert set(ranks) == {0, 1, 2, 3} and min(ranks.values()) > 25
