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
    fig = plots.metric_lines(frame(), "n_images", "score", "task", tmp_path / "f.png").figure
    ax = fig.axes[0]
    assert len(ax.collections) == 2  # one 95% band per task, from lo/hi
    assert len(dashed(ax)) == 2 and all(list(line.get_ydata()) == [0.25] * 3 for line in dashed(ax))
    assert list(ax.get_xticks()) == [1, 2, 6]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert plots.BLIND_LABEL in labels and (tmp_path / "f.png").is_file()


def test_many_lines_get_error_bars_and_facets_wrap(tmp_path):
    fig = plots.metric_lines(frame(("a", "b", "c", "d")), "n_images", "score", "task", tmp_path / "f.png",
                             facet="task").figure
    assert len(fig.axes) == 6 and sum(ax.get_visible() for ax in fig.axes) == 4
    fig = plots.metric_lines(frame(("a", "b", "c")), "n_images", "score", "task", tmp_path / "g.png").figure
    kinds = {c.__class__.__name__ for c in fig.axes[0].collections}
    assert kinds == {"LineCollection"}  # three lines: dodged error bars, no overlapping bands


def test_a_line_with_several_rows_per_x_is_refused(tmp_path):
    with pytest.raises(ValueError, match="several rows per n_images"):
        plots.metric_lines(frame(), "n_images", "score", "blind", tmp_path / "f.png")


def test_bars_carry_error_bars_and_the_blind_mark(tmp_path):
    data = frame().query("n_images == 1").assign(model="m")
    fig = plots.grouped_bars(data, "task", "score", "model", tmp_path / "b.png").figure
    ax = fig.axes[0]
    assert any(c.__class__.__name__ == "LineCollection" for c in ax.collections)  # error bars and blind marks
    assert plots.BLIND_LABEL in [t.get_text() for t in fig.legends[0].get_texts()]


def test_many_bars_wrap_onto_rows_at_a_readable_size(tmp_path):
    """Seven models × five tasks once made a 2287 × 409 px strip; fifteen tasks now take three rows."""
    tasks = [f"task_{i}" for i in range(15)]
    data = pd.DataFrame([{"task": t, "model": f"model {m}", "score": 0.5, "lo": 0.4, "hi": 0.6, "blind": 0.2}
                         for m in range(7) for t in tasks])
    fig = plots.grouped_bars(data, "task", "score", "model", tmp_path / "b.png").figure
    assert len(fig.axes) == 3 and fig.get_size_inches()[0] <= plots.BARS_MAX_WIDTH
    with Image.open(tmp_path / "b.png") as image:
        assert image.width <= 1600 and image.width / image.height < 4


def test_knob_coverage_shares_one_colour_scale_and_splits_compound_labels(tmp_path):
    counts = {"images": {"common": {"n1": 200, "n2": 200, "n10": 200}, "oddone": {"n10": 200}},
              "k": {"listing": {"n1-k1": 200, "n1-k2": 200, "n4-k1": 200, "n4-k3": 200}},
              "spread": {"counting_balanced": {"s1": 50, "s2": 200}}}
    fig = plots.knob_coverage(counts, tmp_path / "k.png").figure
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
    fig = plots.answer_distribution(records, tmp_path / "a.png").figure
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
    fig = plots.padding_figure(table, tmp_path / "p.png").figure
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["counting_balanced", "listing"]
    assert len(dashed(visible[0])) == 3 and len(dashed(visible[1])) == 2  # one baseline per question set
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[1:4] == list(plots.PADDING_ORDER) and (tmp_path / "p.png").is_file()
    several = pd.concat([table.assign(model="a"), table.assign(model="b")])
    fig = plots.padding_figure(several, tmp_path / "q.png").figure
    assert sum(ax.get_visible() for ax in fig.axes) == 4


def test_count_confusion_grid_outlines_the_right_answers(tmp_path):
    from mimic_utils.analysis.diagnosis import count_confusion

    answers = [{"gt": str(g), "parsed": p, "scored_as": "counting"} for g, p in ((1, 1), (2, 3), (2, None))]
    fig = plots.count_confusion_grid({("counting_balanced", 1): count_confusion(answers),
                                      ("counting_balanced", 4): count_confusion(answers[:2])}, tmp_path / "c.png").figure
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["counting_balanced · 1 image", "counting_balanced · 4 images"]
    assert len(visible[0].patches) == 2 and (tmp_path / "c.png").is_file()  # true counts 1 and 2 outlined


def test_the_y_axis_names_the_metric_the_tasks_are_scored_by(tmp_path):
    counting = frame(("counting_balanced", "common"))
    assert plots.metric_label(counting, "score") == "accuracy"
    assert plots.metric_label(frame(("listing",)), "score") == "Listing F1"
    assert plots.metric_label(frame(("four-task mean", "oddone")), "score") == plots.SCORE_LABEL
    assert plots.metric_label(counting, "loss") == "loss"
    ax = plots.metric_lines(counting, "n_images", "score", "task", tmp_path / "f.png").figure.axes[0]
    assert ax.get_ylabel() == "accuracy"
    bars = plots.grouped_bars(frame(("listing", "common")).query("n_images == 1").assign(model="m"), "task", "score",
                              "model", tmp_path / "b.png").figure
    assert bars.axes[0].get_ylabel() == plots.SCORE_LABEL


def test_long_curves_have_no_markers_and_neither_has_their_legend(tmp_path):
    """A loss curve of 60 steps: the seed legend once showed markers the lines never had."""
    loss = pd.DataFrame([{"model": m, "seed": s, "step": t, "loss": 1.0 / t} for m in ("a", "b") for s in (0, 1)
                         for t in range(1, 61)])
    fig = plots.metric_lines(loss, "step", "loss", "seed", tmp_path / "l.png", facet="model", blind=None,
                             ylim=None).figure
    assert {line.get_marker() for ax in fig.axes for line in ax.get_lines()} == {"None"}
    assert {h.get_marker() for h in fig.legends[0].legend_handles if hasattr(h, "get_marker")} == {"None"}
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["a", "b"] and fig.axes[0].get_ylabel() == "loss"
    short = plots.metric_lines(frame(), "n_images", "score", "task", tmp_path / "s.png", style="task").figure
    assert "o" in {h.get_marker() for h in short.legends[0].legend_handles if hasattr(h, "get_marker")}


def test_loss_by_run_gives_each_model_its_panel_and_each_seed_its_colour(tmp_path):
    """Notebook 05's loss figure: seeds of one model overlap, so models sharing an axis hid each other."""
    logs = [pd.DataFrame({"model": m, "seed": s, "step": range(1, 5), "loss": [4.0, 2.0, 0.0, 2.0]})
            for m in ("no mask", "late") for s in (0, 1)]
    fig = plots.loss_by_run(logs, tmp_path / "loss.png", 2, title="loss").figure
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["no mask", "late"]
    for ax in panels:
        assert len({line.get_color() for line in ax.get_lines()}) == 2  # one colour per seed
        assert list(ax.get_lines()[0].get_ydata()) == [4.0, 3.0, 1.0, 1.0]  # the 2-step rolling mean


def test_a_backdrop_model_is_drawn_grey_in_every_other_panel(tmp_path):
    data = pd.concat([frame(("four-task mean",)).assign(model=m) for m in ("base", "tuned", "masked")])
    fig = plots.metric_lines(data, "n_images", "score", "model", tmp_path / "f.png", facet="model",
                             backdrop="base").figure
    greys = [sum(line.get_color() == "lightgrey" for line in ax.get_lines()) for ax in fig.axes[:3]]
    assert greys == [0, 1, 1]
    assert any("grey: base" in t.get_text() for t in fig.legends[0].get_texts())


def test_an_all_zero_panel_says_so_and_its_line_sits_above_the_axis(tmp_path):
    zero = frame(("counting_balanced",)).assign(score=0.0, lo=0.0, hi=0.02)
    ax = plots.metric_lines(zero, "n_images", "score", "task", tmp_path / "z.png").figure.axes[0]
    assert "every value here is 0" in [t.get_text() for t in ax.texts]
    assert ax.get_ylim()[0] < -0.03  # the zero line is not drawn on the frame


def ratio_table() -> pd.DataFrame:
    rows = []
    for model, masked in (("base", ()), ("masked LoRA (late)", (4, 5, 6, 7))):
        for layer in range(8):
            ratio = float("nan") if layer in masked else 1.0 + layer / 10
            rows.append({"model": model, "layer": layer, "ratio": ratio, "ratio_low": ratio - 0.1, "ratio_high": ratio + 0.1})
    return pd.DataFrame(rows)


def test_ratio_by_layer_draws_masked_layers_as_masked_not_as_zeros(tmp_path):
    fig = plots.ratio_by_layer(ratio_table(), tmp_path / "r.png", {"masked LoRA (late)": [4, 5, 6, 7]}).figure
    base, late = fig.axes[:2]
    assert base.get_ylabel() == plots.RATIO_LABEL and late.get_title() == "masked LoRA (late)"
    line = next(l for l in late.get_lines() if l.get_color() != "lightgrey" and l.get_linestyle() == "-")
    assert all(y != y for y in line.get_ydata()[4:]) and list(line.get_ydata()[:4]) == [1.0, 1.1, 1.2, 1.3]
    assert [t.get_text() for t in late.texts] == ["masked"] and not base.texts
    assert any(l.get_linestyle() == ":" and list(l.get_ydata()) == [1.0, 1.0] for l in late.get_lines())


def test_benchmark_panels_give_each_metric_its_own_axis_and_parse_rate_beside_accuracy(tmp_path):
    results = pd.DataFrame(
        [{"benchmark": "MIMIC (mean over tasks)", "model": m, "score": 0.3, "lo": 0.2, "hi": 0.4, "baseline": 0.1,
          "baseline_kind": "blind", "parse_rate": float("nan")} for m in ("base", "tuned")]
        + [{"benchmark": "scene OOD", "model": m, "score": 0.2, "lo": 0.1, "hi": 0.3, "baseline": 0.25,
            "baseline_kind": "chance", "parse_rate": rate} for m, rate in (("base", 0.8), ("tuned", 0.2))])
    fig = plots.benchmark_panels(results, tmp_path / "r.png", parse_floor=0.5).figure
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in shown] == [plots.BENCHMARK_METRICS["blind"], plots.BENCHMARK_METRICS["chance"],
                                                 plots.PARSE_LABEL]
    assert [p.get_height() for p in shown[2].patches] == [0.8, 0.2]
    assert [p.get_hatch() for p in shown[1].patches] == [None, "///"]  # parse rate 0.2: its accuracy is not read
    assert [ax.get_title() for ax in shown] == ["MIMIC (mean over tasks)", "scene OOD", "scene OOD"]


def test_a_saved_figure_shows_inline_once_and_displays_as_nothing(tmp_path, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(plots, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **kw: shown.extend(objects))
    saved = plots.metric_lines(frame(), "n_images", "score", "task", tmp_path / "f.png")
    assert len(shown) == 1 and shown[0].data == (tmp_path / "f.png").read_bytes()
    assert saved._ipython_display_() is None and repr(saved) == "<figure f.png>"
    assert saved.path == tmp_path / "f.png" and saved.figure.axes


def test_tables_show_rendered_without_empty_columns_or_nan(monkeypatch, capsys):
    import IPython.display

    table = pd.DataFrame({"question": ["counting", "choice"], "n": [300.0, 400.0], "score": [0.70312, float("nan")],
                          "note": [None, None]})
    tidy = plots.tidy_table(table)
    assert list(tidy.columns) == ["question", "n", "score"] and list(tidy["n"]) == [300, 400]
    assert list(tidy["score"]) == [0.703, plots.MISSING]
    masks = plots.tidy_table(pd.DataFrame({"model": ["base", "masked"],
                                           "mask": [None, {"layers": [4, 5, 6, 7], "mode": "blockwise"}]}))
    assert list(masks["mask"]) == [plots.MISSING, "layers: 4, 5, 6, 7; mode: blockwise"]
    plots.show_table(table)  # outside a notebook: printed
    assert "NaN" not in capsys.readouterr().out
    shown = []
    monkeypatch.setattr(plots, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **kw: shown.extend(objects))
    plots.show_table(table)
    plots.show_mapping({"model": "organism", "prompt": {"max_new_tokens": 16}, "revision": None, "sizes": [1, 2]})
    html, settings = shown[0]["text/html"], shown[1]["text/plain"]
    assert "<table" in html and "NaN" not in html and "nan" not in html and "—" in html
    assert "prompt.max_new_tokens" in settings and "1, 2" in settings and "{" not in settings


def test_saving_a_table_or_metrics_returns_nothing_a_cell_would_show(tmp_path):
    """A cell that ends by saving must not show ``PosixPath('outputs/…')`` as its value."""
    from mimic_utils.artifacts import read_metrics, write_metrics

    assert plots.save_table(frame(), tmp_path / "t.csv") is None
    assert (tmp_path / "t.csv").is_file() and (tmp_path / "t.md").is_file()
    assert write_metrics("cpu", "01_demo", {"n": 1}, root=tmp_path) is None
    assert read_metrics("cpu", "01_demo", root=tmp_path) == {"n": 1}
