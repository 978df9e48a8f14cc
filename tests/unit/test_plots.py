"""Figures draw the study's own intervals and the blind baseline, and refuse a line with several points per x."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
from PIL import Image

from mimic_utils.analysis import plots


def frame(tasks=("a", "b")) -> pd.DataFrame:
    return pd.DataFrame([{"task": t, "n_images": n, "score": 0.5, "lo": 0.3, "hi": 0.7, "blind": 0.25}
                         for t in tasks for n in (1, 2, 6)])


def dashed(ax) -> list:
    return [line for line in ax.get_lines() if line.get_linestyle() == "--"]


def test_lines_draw_bands_the_blind_baseline_and_integer_ticks(tmp_path):
    fig = plots.metric_lines(frame(), "n_images", "score", "task", tmp_path / "f.png")
    ax = fig.axes[0]
    assert len(ax.collections) == 2  # one 95% band per task, from lo/hi
    assert len(dashed(ax)) == 2 and all(list(line.get_ydata()) == [0.25] * 3 for line in dashed(ax))
    assert list(ax.get_xticks()) == [1, 2, 6]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert plots.BLIND_LABEL in labels and (tmp_path / "f.png").is_file()


def test_many_lines_get_error_bars_and_facets_wrap(tmp_path):
    fig = plots.metric_lines(frame(("a", "b", "c", "d")), "n_images", "score", "task", tmp_path / "f.png",
                             facet="task")
    assert len(fig.axes) == 6 and sum(ax.get_visible() for ax in fig.axes) == 4
    fig = plots.metric_lines(frame(("a", "b", "c")), "n_images", "score", "task", tmp_path / "g.png")
    kinds = {c.__class__.__name__ for c in fig.axes[0].collections}
    assert kinds == {"LineCollection"}  # three lines: dodged error bars, no overlapping bands


def test_a_line_with_several_rows_per_x_is_refused(tmp_path):
    with pytest.raises(ValueError, match="several rows per n_images"):
        plots.metric_lines(frame(), "n_images", "score", "blind", tmp_path / "f.png")


def test_bars_carry_error_bars_and_the_blind_mark(tmp_path):
    data = frame().query("n_images == 1").assign(model="m")
    fig = plots.grouped_bars(data, "task", "score", "model", tmp_path / "b.png")
    ax = fig.axes[0]
    assert any(c.__class__.__name__ == "LineCollection" for c in ax.collections)  # error bars and blind marks
    assert plots.BLIND_LABEL in [t.get_text() for t in fig.legends[0].get_texts()]


def test_many_bars_wrap_onto_rows_at_a_readable_size(tmp_path):
    """Seven models × five tasks once made a 2287 × 409 px strip; fifteen tasks now take three rows."""
    tasks = [f"task_{i}" for i in range(15)]
    data = pd.DataFrame([{"task": t, "model": f"model {m}", "score": 0.5, "lo": 0.4, "hi": 0.6, "blind": 0.2}
                         for m in range(7) for t in tasks])
    fig = plots.grouped_bars(data, "task", "score", "model", tmp_path / "b.png")
    assert len(fig.axes) == 3 and fig.get_size_inches()[0] <= plots.BARS_MAX_WIDTH
    with Image.open(tmp_path / "b.png") as image:
        assert image.width <= 1600 and image.width / image.height < 4


def test_knob_coverage_shares_one_colour_scale_and_splits_compound_labels(tmp_path):
    counts = {"images": {"common": {"n1": 200, "n2": 200, "n10": 200}, "oddone": {"n10": 200}},
              "k": {"listing": {"n1-k1": 200, "n1-k2": 200, "n4-k1": 200, "n4-k3": 200}},
              "spread": {"counting_balanced": {"s1": 50, "s2": 200}}}
    fig = plots.knob_coverage(counts, tmp_path / "k.png")
    meshes = [ax.collections[0] for ax in fig.axes]
    assert {(m.norm.vmin, m.norm.vmax) for m in meshes} == {(0, 200)}  # 200 is as dark in every panel
    by_title = {ax.get_title(loc="left").split(":")[0]: ax for ax in fig.axes}
    assert [t.get_text() for t in by_title["images"].get_xticklabels()] == ["n1", "n2", "n10"]
    assert [t.get_text() for t in by_title["k"].get_xticklabels()] == ["n1\nk1", "n1\nk2", "n4\nk1", "n4\nk3"]
    assert all(t.get_rotation() == 0 for ax in fig.axes for t in ax.get_yticklabels())


def test_answer_distribution_counts_on_whole_numbers_and_names_on_bars(tmp_path):
    records = ([{"task": "counting_balanced", "gt": str(n)} for n in range(1, 22)]
               + [{"task": "listing", "gt": "cell phone, keyboard, laptop, mouse, remote"}] * 3
               + [{"task": "listing", "gt": "tv"}])
    fig = plots.answer_distribution(records, tmp_path / "a.png")
    counting, listing = fig.axes[:2]
    assert all(float(t).is_integer() for t in counting.get_xticks())
    assert len(counting.get_xticks()) <= 12  # 21 answers, not 21 colliding labels
    labels = [t.get_text() for t in listing.get_yticklabels()]
    assert labels[-1].startswith("cell phone, keyboard") and labels[-1].endswith("…") and len(labels[-1]) <= 26


def test_sample_questions_with_long_questions_lay_out_without_warnings(tmp_path, make_image):
    for i in range(3):
        make_image(32, 32, i).save(tmp_path / f"{i}.png")
    records = [{"task": task, "question": "Which object category appears in only a minority of the images? " * 2,
                "gt": "cell phone, keyboard, tv", "images": [str(tmp_path / f"{i}.png") for i in range(3)]}
               for task in ("oddone", "listing")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.sample_questions(records, tmp_path / "s.png")


def test_padding_figure_draws_the_three_paddings_per_task_with_their_baselines(tmp_path):
    table = pd.DataFrame([{"task": t, "padding": p, "n_images": n, "score": 0.5, "lo": 0.4, "hi": 0.6,
                           "blind": 0.2 if p != "images sweep" else 0.1 * n}
                          for t in ("counting_balanced", "listing") for p in plots.PADDING_ORDER
                          if not (t == "listing" and p == "distractors") for n in (1, 2, 3)])
    fig = plots.padding_figure(table, tmp_path / "p.png")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["counting_balanced", "listing"]
    assert len(dashed(visible[0])) == 3 and len(dashed(visible[1])) == 2  # one baseline per question set
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[1:4] == list(plots.PADDING_ORDER) and (tmp_path / "p.png").is_file()
    several = pd.concat([table.assign(model="a"), table.assign(model="b")])
    fig = plots.padding_figure(several, tmp_path / "q.png")
    assert sum(ax.get_visible() for ax in fig.axes) == 4


def test_count_confusion_grid_outlines_the_right_answers(tmp_path):
    from mimic_utils.analysis.diagnosis import count_confusion

    answers = [{"gt": str(g), "parsed": p, "scored_as": "counting"} for g, p in ((1, 1), (2, 3), (2, None))]
    fig = plots.count_confusion_grid({("counting_balanced", 1): count_confusion(answers),
                                      ("counting_balanced", 4): count_confusion(answers[:2])}, tmp_path / "c.png")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["counting_balanced · 1 image", "counting_balanced · 4 images"]
    assert len(visible[0].patches) == 2 and (tmp_path / "c.png").is_file()  # true counts 1 and 2 outlined
