"""Figures of the study: each function draws one kind of plot, saves it as PNG and returns the figure.

Notebooks call these so that a cell stays one line; tables go beside the figures as CSV (see
:func:`save_table`).
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from PIL import Image

from mimic_utils.artifacts import atomic_path, write_text

sns.set_theme(style="whitegrid", context="notebook")


def save_figure(fig: plt.Figure, path: Path | str) -> Path:
    """Save a figure atomically at 120 dpi (committed PNGs stay small)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    return path


def save_table(frame: pd.DataFrame, path: Path | str) -> Path:
    """Save a table as CSV and, beside it, as Markdown (for the report and for GitHub readers)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    write_text(path.with_suffix(".md"), frame.to_markdown(index=False) + "\n")
    return path


def sample_questions(records: list[dict], path: Path | str, per_task: int = 1, thumb: int = 96,
                     n_images: int = 4) -> plt.Figure:
    """One row per sample (``n_images``-image samples first): thumbnails, the question and the answer."""
    chosen: list[dict] = []
    seen: Counter[str] = Counter()
    for record in sorted(records, key=lambda r: len(r["images"]) != n_images):
        if seen[record["task"]] < per_task:
            chosen.append(record)
            seen[record["task"]] += 1
    width = max(len(r["images"]) for r in chosen)
    fig, axes = plt.subplots(len(chosen), width, figsize=(1.3 * width, 1.7 * len(chosen)), squeeze=False)
    for row, record in zip(axes, chosen):
        for ax in row:
            ax.axis("off")
        for ax, image in zip(row, record["images"]):
            ax.imshow(Image.open(image).convert("RGB").resize((thumb, thumb)))
        # the question spans its row, wrapped to the row's width (tight_layout cannot place a title wider
        # than its axes, hence the fixed margins)
        title = f"[{record['task']}] {record['question']}  →  {record['gt']}"
        row[0].set_title(textwrap.fill(title, width=int(12 * 1.3 * width)), loc="left", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.94, wspace=0.08, hspace=0.45)
    save_figure(fig, path)
    return fig


def answer_distribution(records: list[dict], path: Path | str, max_values: int = 12) -> plt.Figure:
    """Ground-truth answers per task: counts as a histogram over whole numbers (Counting, split by Balanced /
    Unbalanced), named answers as horizontal bars of the ``max_values`` most common, labels kept whole-ish."""
    tasks = sorted({r["task"] for r in records})
    fig, axes = _grid(len(tasks), width=3.8, height=3.0)
    color = sns.color_palette()[0]
    for ax, task in zip(axes, tasks):
        answers = Counter(r["gt"] for r in records if r["task"] == task)
        ax.set_title(f"{task} ({sum(answers.values())} questions)", fontsize=10)
        if all(str(a).lstrip("-").isdigit() for a in answers):
            values = sorted((int(k), v) for k, v in answers.items())
            ax.bar([k for k, _ in values], [v for _, v in values], color=color, width=0.8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("answer", fontsize=9)
            ax.set_ylabel("questions", fontsize=9)
        else:
            items = answers.most_common(max_values)[::-1]  # the most common on top
            ax.barh(range(len(items)), [v for _, v in items], color=color)
            ax.set_yticks(range(len(items)))
            ax.set_yticklabels([_shorten(str(k), 26) for k, _ in items], fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel(f"questions (the {len(items)} most common answers)" if len(answers) > len(items)
                          else "questions", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip(", ") + "…"


def _grid(count: int, width: float, height: float, columns: int = 3) -> tuple[plt.Figure, list[plt.Axes]]:
    """``count`` panels of ``width`` × ``height`` inches, at most ``columns`` a row; spare panels hidden."""
    columns = max(1, min(count, columns))
    rows = -(-count // columns)
    fig, grid = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


#: What each experiment's knob values mean, for the coverage figure (``k``: ``n<images>-k<k>``).
KNOB_TITLES = {"images": "images: n = images per question",
               "distractors": "distractors: d = images holding none of the asked concepts, beside a 1-image question",
               "blank": "blank: n = images per question, the 1-image question beside n − 1 blank images",
               "spread": "spread: s = images holding the asked concepts",
               "k": "k: n = images per question, k = concepts the question names"}


def knob_coverage(counts: dict, path: Path | str) -> plt.Figure:
    """Questions per task and knob value, one heatmap row per experiment (from the manifest's counts).

    One colour scale for every panel, from 0 (white: no such question) to the largest cell, so equal
    counts look equal; each cell shows its count. Compound values (``n4-k2``) are written on two lines.
    """
    experiments = sorted(counts)
    frames = []
    for experiment in experiments:
        frame = pd.DataFrame(counts[experiment]).T.fillna(0).astype(int)
        frames.append(frame[sorted(frame.columns, key=_knob_order)])
    vmax = max(max(int(f.to_numpy().max()), 1) for f in frames)
    columns = max(f.shape[1] for f in frames)
    heights = [f.shape[0] for f in frames]  # equal row heights; titles and tick labels go between panels
    fig, axes = plt.subplots(len(frames), 1, squeeze=False, gridspec_kw={"height_ratios": heights},
                             figsize=(2.4 + 0.75 * max(columns, 4), 0.3 * sum(heights) + 0.8 * len(frames) + 0.4))
    for ax, experiment, frame in zip(axes[:, 0], experiments, frames):
        sns.heatmap(frame, annot=True, fmt="d", cbar=False, ax=ax, cmap="Blues", vmin=0, vmax=vmax,
                    linewidths=0.5, linecolor="white", annot_kws={"fontsize": 8})
        ax.set_xticklabels([str(c).replace("-", "\n") for c in frame.columns], rotation=0, fontsize=8)
        ax.set_yticklabels(frame.index, rotation=0, fontsize=8)
        ax.set_title(KNOB_TITLES.get(experiment, experiment), fontsize=9, loc="left")
        ax.set_xlim(0, columns)  # every panel on the same cell width, blank beyond its own values
        ax.grid(False)
    fig.suptitle("questions per task and knob value", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def _knob_order(value: str) -> tuple:
    """``n2`` before ``n10``; ``n1-k3`` before ``n4-k1``: the numbers of a knob value, in order."""
    return tuple(int(n) for n in re.findall(r"\d+", str(value))) or (float("inf"),), str(value)


#: What the dashed line of a score figure is, said in its legend.
BLIND_LABEL = "dashed: blind baseline (best constant answer)"
#: The y label wherever Listing F1 sits beside accuracies.
SCORE_LABEL = "score (Listing: F1, others: accuracy)"
#: Line styles for the ``style`` column; dashed is kept for the blind baseline.
LINESTYLES = ("-", ":", "-.", (0, (1, 3)), (0, (5, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def metric_lines(frame: pd.DataFrame, x: str, y: str, hue: str, path: Path | str, title: str = "",
                 ylabel: str = "accuracy", style: str | None = None,
                 ylim: tuple[float, float] | None = (-0.02, 1.02), *, facet: str | None = None,
                 band: tuple[str, str] = ("lo", "hi"), blind: str | None = "blind",
                 blind_by: tuple[str, ...] | None = None, reference: float | None = None) -> plt.Figure:
    """Lines of a metric against a knob, one per ``hue`` (and ``style``), one panel per ``facet`` value.

    Where the table has them, each line gets its 95% interval from the ``band`` columns (computed by
    :mod:`mimic_utils.analysis.stats`, never a bootstrap across tasks): a band for up to two lines a panel, dodged
    error bars beyond, so that intervals stay readable. A dashed blind-baseline line comes from the
    ``blind`` column, one per ``blind_by`` group (default: per ``hue``; grey when not per ``hue``).
    ``reference`` draws a dotted horizontal line (e.g. 0 for a gain).
    """
    facets = list(dict.fromkeys(frame[facet])) if facet else [None]
    fig, axes = _panels(len(facets))
    colors = _palette(frame[hue])
    styles = {v: (LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)])
              for i, v in enumerate(dict.fromkeys(frame[style]))} if style else {None: ("-", "o")}
    has_band = all(c in frame for c in band)
    blind_by = blind_by if blind_by is not None else (hue,)
    drew_blind = False
    for index, (ax, value) in enumerate(zip(axes, facets)):
        part = frame if facet is None else frame[frame[facet] == value]
        _lines(ax, part, x, y, hue, style, colors, styles, band if has_band else None)
        if blind and blind in part and part[blind].notna().any():
            _blind_lines(ax, part, x, blind, blind_by, hue, colors)
            drew_blind = True
        if reference is not None:
            ax.axhline(reference, color="black", linewidth=0.8, linestyle=":")
        _integer_ticks(ax, frame[x])
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel if index % PANELS_PER_ROW == 0 else "")
        ax.set_title(f"{value}" if facet else title, fontsize=10)
    for ax in axes[len(facets):]:
        ax.set_visible(False)
    if facet:
        fig.suptitle(title, fontsize=11)
    if ylim is not None:
        axes[0].set_ylim(*ylim)
    _legend(fig, hue, colors, style, styles, drew_blind, has_band)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


#: Panels per row of a faceted figure, so that a saved figure stays readable.
PANELS_PER_ROW = 3


def loss_by_run(logs: list[pd.DataFrame], path: Path | str, window: int, title: str):
    """Training loss of several runs (loss logs with ``model`` and ``seed`` columns) as its ``window``-step
    rolling mean per run: one colour per model, one line style per seed."""
    loss = pd.concat(logs)
    loss["loss_mean"] = loss.groupby(["model", "seed"])["loss"].transform(lambda s: s.rolling(window, min_periods=1).mean())
    return metric_lines(loss, "step", "loss_mean", "model", path, style="seed", blind=None, title=title, ylabel="loss",
                        ylim=None)


def _panels(count: int) -> tuple[plt.Figure, list[plt.Axes]]:
    """A grid of ``count`` panels sharing the y axis, at most :data:`PANELS_PER_ROW` a row."""
    columns = min(count, PANELS_PER_ROW)
    rows = -(-count // columns)
    fig, grid = plt.subplots(rows, columns, figsize=(1.2 + 3.6 * columns, 0.4 + 3.2 * rows), squeeze=False,
                             sharey=True)
    return fig, list(grid.flat)


def _palette(values: pd.Series) -> dict:
    """One colour per distinct value, in order of appearance."""
    distinct = list(dict.fromkeys(values))
    return dict(zip(distinct, sns.color_palette(n_colors=max(len(distinct), 1))))


def _lines(ax: plt.Axes, frame: pd.DataFrame, x: str, y: str, hue: str, style: str | None, colors: dict,
           styles: dict, band: tuple[str, str] | None) -> None:
    """One line (with its interval) per hue and style value."""
    keys = [hue] + ([style] if style else [])
    lines = list(frame.groupby(keys, sort=False))
    gaps = pd.Series(sorted(frame[x].unique())).diff().dropna()
    step = 0.08 * (gaps.min() if len(gaps) else 1.0)
    for i, (key, part) in enumerate(lines):
        key = key if isinstance(key, tuple) else (key,)
        part = part.sort_values(x)
        if part[x].duplicated().any():
            raise ValueError(f"several rows per {x} in the line {dict(zip(keys, key))}: give each line one row per "
                             f"point (e.g. plot a like-for-like mean table, or set style/facet)")
        linestyle, marker = styles[key[1] if style else None]
        color = colors[key[0]]
        where = part[x] + (i - (len(lines) - 1) / 2) * step if band and len(lines) > 2 else part[x]
        ax.plot(where, part[y], color=color, linestyle=linestyle, marker=marker if len(part) < 60 else None,
                markersize=4, linewidth=1.4)
        if band and len(lines) > 2:
            ax.errorbar(where, part[y], yerr=[part[y] - part[band[0]], part[band[1]] - part[y]], fmt="none",
                        ecolor=color, elinewidth=0.9, capsize=2)
        elif band:
            ax.fill_between(part[x], part[band[0]], part[band[1]], color=color, alpha=0.15, linewidth=0)


def _blind_lines(ax: plt.Axes, frame: pd.DataFrame, x: str, blind: str, blind_by: tuple[str, ...], hue: str,
                 colors: dict) -> None:
    """The dashed blind baseline per question set (``blind_by`` group; the same questions share one)."""
    keys = list(blind_by)
    groups = frame.groupby(keys, sort=False) if keys else [((), frame)]
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        part = part.drop_duplicates(x).sort_values(x)
        color = colors[key[keys.index(hue)]] if hue in keys else "grey"
        ax.plot(part[x], part[blind], color=color, linestyle="--", linewidth=1.0, alpha=0.8)


def _integer_ticks(ax: plt.Axes, values: pd.Series) -> None:
    """Integer knobs get integer ticks: every value when there are few, else whole numbers only."""
    if not pd.api.types.is_numeric_dtype(values) or not (values.dropna() % 1 == 0).all():
        return
    distinct = sorted(values.dropna().unique())
    if len(distinct) <= 12:
        ax.set_xticks(distinct)
        ax.set_xticklabels([str(int(v)) for v in distinct])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend(fig: plt.Figure, hue: str, colors: dict, style: str | None, styles: dict, blind: bool,
            band: bool) -> None:
    """One legend outside the panels: hue colours, style markers, and what the band and dashes are."""
    handles = [Line2D([], [], linestyle="none", label=hue)]
    handles += [Line2D([], [], color=c, label=str(v)) for v, c in colors.items()]
    if style:
        handles.append(Line2D([], [], linestyle="none", label=style))
        handles += [Line2D([], [], color="grey", linestyle=ls, marker=m, label=str(v))
                    for v, (ls, m) in styles.items()]
    if band:
        handles.append(Patch(color="grey", alpha=0.25, label="band or bars: 95% interval"))
    if blind:
        handles.append(Line2D([], [], color="grey", linestyle="--", label=BLIND_LABEL))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)


#: Widest a bar figure gets (inches, before its legend); more groups wrap onto further rows.
BARS_MAX_WIDTH = 10.0
#: Inches per bar slot (a group of ``h`` bars takes ``h + 1`` slots, the gap included).
BAR_SLOT = 0.2


def grouped_bars(frame: pd.DataFrame, x: str, y: str, hue: str, path: Path | str, title: str = "",
                 ylabel: str = SCORE_LABEL, *, band: tuple[str, str] = ("lo", "hi"), blind: str | None = "blind",
                 blind_label: str = BLIND_LABEL, reference: float | None = None,
                 ylim: tuple[float, float] | None = (0, 1.05)) -> plt.Figure:
    """Grouped bars of a metric (e.g. tasks × models) with 95% error bars from the ``band`` columns and a
    dashed blind-baseline mark per ``x`` group from the ``blind`` column, where the table has them.

    The figure is as wide as its bars need, up to :data:`BARS_MAX_WIDTH` inches; further groups go on
    further rows (same y scale), so many models × tasks stay readable at the saved size."""
    xs, hues = list(dict.fromkeys(frame[x])), list(dict.fromkeys(frame[hue]))
    per_row = max(1, min(len(xs), int((BARS_MAX_WIDTH - 1.5) // (BAR_SLOT * (len(hues) + 1)))))
    rows = [xs[i:i + per_row] for i in range(0, len(xs), per_row)]
    width = min(BARS_MAX_WIDTH, max(4.5, 1.5 + BAR_SLOT * per_row * (len(hues) + 1)))
    fig, grid = plt.subplots(len(rows), 1, figsize=(width, 0.3 + 3.3 * len(rows)), squeeze=False, sharey=True)
    axes = list(grid[:, 0])
    colors = _palette(frame[hue])
    drew_blind = bool(blind) and blind in frame and frame[blind].notna().any()
    for ax, groups in zip(axes, rows):
        _bars(ax, frame[frame[x].isin(groups)], x, y, hue, groups, hues, colors, band, blind if drew_blind else None)
        ax.set_xlim(-0.6, per_row - 0.4)  # equal bar widths on every row
        if reference is not None:
            ax.axhline(reference, color="black", linewidth=0.8, linestyle=":")
        ax.set_ylabel(ylabel)
    handles, _ = axes[0].get_legend_handles_labels()
    if drew_blind:
        handles.append(Line2D([], [], color="black", linestyle="--", label=blind_label))
    fig.legend(handles=handles, bbox_to_anchor=(1.0, 0.5), loc="center left", fontsize=8, frameon=False, title=hue)
    axes[0].set_title(title)
    if ylim is not None:
        axes[0].set_ylim(*ylim)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def _bars(ax: plt.Axes, frame: pd.DataFrame, x: str, y: str, hue: str, xs: list, hues: list, colors: dict,
          band: tuple[str, str], blind: str | None) -> None:
    """One group of bars per ``xs`` value, one bar per ``hues`` value, error bars where ``band`` exists."""
    width = 0.8 / len(hues)
    for i, value in enumerate(hues):
        part = frame[frame[hue] == value].set_index(x).reindex(xs)
        where = [j + (i - (len(hues) - 1) / 2) * width for j in range(len(xs))]
        errors = ([part[y] - part[band[0]], part[band[1]] - part[y]] if all(c in frame for c in band) else None)
        ax.bar(where, part[y], width, color=colors[value], label=str(value), yerr=errors, capsize=2,
               error_kw={"linewidth": 0.8})
    if blind:
        for j, value in enumerate(xs):
            level = frame.loc[frame[x] == value, blind].iloc[0]
            ax.hlines(level, j - 0.45, j + 0.45, colors="black", linestyles="--", linewidth=1.0)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([str(v) for v in xs], rotation=20, ha="right", rotation_mode="anchor")
    ax.grid(axis="x", visible=False)  # a grid line through the middle bar of each group


def attention_depth(table: pd.DataFrame, path: Path | str, query_kind: str = "vision", title: str = "") -> plt.Figure:
    """Attention share against normalised depth, one line per target, with the 95% band."""
    rows = table[table["query_kind"] == query_kind]
    fig, ax = plt.subplots(figsize=(5.5, 4.4))
    for target, part in rows.groupby("target"):
        part = part.sort_values("depth")
        ax.plot(part["depth"], part["mean"], marker="o", label=target)
        ax.fill_between(part["depth"], part["ci_low"], part["ci_high"], alpha=0.2)
    ax.set_xlabel("depth (layer / last layer)")
    ax.set_ylabel("share of attention")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    # below the axes: shares span 0..1, so a legend inside would cover some curve
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def block_heatmaps(frame: pd.DataFrame, path: Path | str, title: str = "") -> plt.Figure:
    """Query-block × key-block attention of one example in the first, middle and last layer."""
    layers = sorted(frame["layer"].unique())
    picks = sorted({layers[0], layers[len(layers) // 2], layers[-1]})
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 3.6), squeeze=False)
    order = list(dict.fromkeys(frame["key"]))
    for ax, layer in zip(axes[0], picks):
        grid = frame[frame["layer"] == layer].pivot_table(index="query", columns="key", values="share")
        grid = grid.reindex(index=[q for q in order if q in grid.index] + ["answer"], columns=order)
        sns.heatmap(grid, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", cbar=False, ax=ax,
                    annot_kws={"fontsize": 7})
        ax.set_title(f"layer {layer}")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


#: The three ways notebook 02 grows a question to n images, in the padding figure's order and colours.
PADDING_ORDER = ("blank", "distractors", "images sweep")


def padding_figure(table: pd.DataFrame, path: Path | str, title: str = "") -> plt.Figure:
    """Score against the number of images for the three ways of adding images (``padding`` column of
    :func:`mimic_utils.analysis.padding_table`): blank images beside the 1-image question, distractor images
    beside it, and the images sweep's own questions; one panel per task (and model, when there are
    several), 95% intervals, each question set's blind baseline dashed in its colour."""
    frame = table.copy()
    several = "model" in frame and frame["model"].nunique() > 1
    frame["panel"] = (frame["model"].astype(str) + " · " + frame["task"]) if several else frame["task"]
    frame = frame.sort_values(["panel", "padding"], key=lambda c: c.map(
        {p: i for i, p in enumerate(PADDING_ORDER)}) if c.name == "padding" else c)
    return metric_lines(frame, "n_images", "score", "padding", path, facet="panel", blind_by=("padding",),
                        ylabel=SCORE_LABEL, title=title or "The same questions beside blank or distractor images, "
                                                           "and the images sweep")


def count_confusion_grid(confusions: dict, path: Path | str, title: str = "") -> plt.Figure:
    """Counting answers: one heatmap per (task, image count) key of ``confusions`` (tables of
    :func:`mimic_utils.analysis.count_confusion`), rows the true count, columns the predicted count (and
    the parse failures), each row shaded by its share of that true count's questions and annotated with
    the number of questions; the diagonal is where the model is right."""
    keys = list(confusions)
    columns = max(1, len({k[-1] for k in keys}))
    fig, axes = _grid(len(keys), width=3.9, height=3.2, columns=columns)
    for ax, key in zip(axes, keys):
        frame = confusions[key]
        shares = frame.div(frame.sum(axis=1).where(lambda s: s > 0, 1), axis=0)
        sns.heatmap(shares, annot=frame, fmt="d", vmin=0, vmax=1, cmap="Blues", cbar=False, ax=ax,
                    linewidths=0.4, linecolor="white", annot_kws={"fontsize": 7})
        for i, truth in enumerate(frame.index):  # outline the right answers
            if str(truth) in list(frame.columns):
                ax.add_patch(plt.Rectangle((list(frame.columns).index(str(truth)), i), 1, 1, fill=False,
                                           edgecolor="darkorange", linewidth=1.2))
        ax.set_title(" · ".join(str(k) if not isinstance(k, int) else f"{k} image" + ("" if k == 1 else "s")
                                for k in key), fontsize=9)
        ax.set_xlabel("predicted count", fontsize=8)
        ax.set_ylabel("true count", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(False)
    fig.suptitle(title or "Counting: true vs predicted (shade: share of the row; outlined: right)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return fig
