"""Figures draw the study's own intervals and the blind baseline, and refuse a line with several points per x."""

from __future__ import annotations

import pandas as pd
import pytest

from mimic_utils import plots


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
    assert plots.BLIND_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]
