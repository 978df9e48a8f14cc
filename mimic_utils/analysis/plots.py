"""Figures and tables of the study, as a reader of a notebook sees them.

Each figure function draws one kind of plot, saves it as PNG, shows it inline when it runs in a notebook
and returns a :class:`SavedFigure` (the path and the figure, displayed as nothing: a cell's last line never
shows a path or ``<Figure size…>``). One metric per axis, named on the axis; series the eye cannot separate go
to their own panel. Tables go beside the figures as CSV and Markdown (:func:`save_table`) and are shown
rendered, without empty columns or ``NaN`` (:func:`show_table`, :func:`show_mapping`).
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


def save_table(frame: pd.DataFrame, path: Path | str) -> None:
    """Save a table as CSV and, beside it, as Markdown (for the report and for GitHub readers). Returns
    nothing, so a notebook cell ending with it shows no path (show the table with :func:`show_table`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    write_text(path.with_suffix(".md"), frame.to_markdown(index=False) + "\n")


# --- what a notebook shows -------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class SavedFigure:
    """A figure the study saved to ``path`` (and showed inline, in a notebook). ``figure`` is the closed
    matplotlib figure, for tests to read its axes. It displays as nothing: the figure is already shown above,
    and a cell ending in a plot call must not add a path or a ``<Figure size…>`` line."""

    path: Path
    figure: plt.Figure

    def __repr__(self) -> str:
        return f"<figure {self.path.name}>"

    def _ipython_display_(self) -> None:
        return None


def in_notebook() -> bool:
    """True inside a Jupyter kernel (papermill's, nbval's or JupyterLab's), where figures are shown inline."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def show_image(path: Path | str) -> None:
    """Show a saved PNG inline in a notebook (nothing elsewhere): the file's own pixels, as committed."""
    if in_notebook():
        from IPython.display import Image as InlineImage, display

        display(InlineImage(data=Path(path).read_bytes(), format="png"))


def finish(fig: plt.Figure, path: Path | str) -> SavedFigure:
    """Save ``fig`` (:func:`save_figure`), show the saved PNG inline in a notebook, close the figure (so no
    backend shows it a second time) and return it as a :class:`SavedFigure`."""
    path = save_figure(fig, path)
    show_image(path)
    plt.close(fig)
    return SavedFigure(path, fig)


#: What a table cell shows where nothing was measured (a bare ``NaN`` reads like a result).
MISSING = "—"


def tidy_table(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A table as a reader should see it: columns with no value at all dropped, floats rounded to ``digits``
    (whole-number columns such as ``n`` shown as integers), mappings and lists as text (``layers: 4, 5;
    mode: blockwise``, not a dict's repr), anything missing as :data:`MISSING`."""
    frame = frame.dropna(axis=1, how="all")
    shown = {}
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_float_dtype(values):
            present = values.dropna()
            whole = bool(len(present)) and bool((present % 1 == 0).all())
            values = values.round(0 if whole else digits).astype("Int64" if whole else float)
        elif values.map(lambda v: isinstance(v, (Mapping, list, tuple))).any():
            values = values.map(_as_text)
        shown[column] = values.astype(object).where(values.notna(), MISSING)
    return pd.DataFrame(shown, index=frame.index)


def _as_text(value: object) -> object:
    """A mapping or list in a table cell, in words: ``layers: 4, 5, 6, 7; mode: blockwise``."""
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {v}" for k, v in flatten_mapping(value).items()) or MISSING
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or MISSING
    return value


def show_table(frame: pd.DataFrame, digits: int = 3, index: bool = False) -> None:
    """Show a table rendered (HTML in JupyterLab, aligned text elsewhere and in nbval's comparison), tidied by
    :func:`tidy_table`; returns nothing, so the cell shows the table once. Outside a notebook it prints."""
    tidy = tidy_table(frame, digits)
    text = tidy.to_string(index=index) if len(tidy.columns) else "(no columns)"
    if not in_notebook():
        print(text)
        return
    from IPython.display import display

    html = tidy.to_html(index=index, border=0, escape=True)
    display({"text/html": html, "text/plain": text}, raw=True)


def flatten_mapping(mapping: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested mappings as one level, keys joined with ``.`` (``prompt.max_new_tokens``); lists as text."""
    flat: dict[str, object] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_mapping(value, f"{name}."))
        else:
            flat[name] = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return flat


def show_mapping(mapping: Mapping, key: str = "setting", value: str = "value") -> None:
    """Show a (nested) mapping, e.g. a model's settings or a file's hashes, as a two-column table rather than a
    raw ``{…}`` dict; ``None`` shows as :data:`MISSING`."""
    flat = flatten_mapping(mapping)
    show_table(pd.DataFrame({key: list(flat), value: [MISSING if v is None else str(v) for v in flat.values()]}))


def sample_questions(records: list[dict], path: Path | str, per_task: int = 1, thumb: int = 96,
                     n_images: int = 4) -> SavedFigure:
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
    return finish(fig, path)


def answer_distribution(records: list[dict], path: Path | str, max_values: int = 12) -> SavedFigure:
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
    return finish(fig, path)


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


def knob_coverage(counts: dict, path: Path | str) -> SavedFigure:
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
    return finish(fig, path)


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


#: Lines with fewer points than this get a marker at each point; longer ones (a loss curve) are plain lines.
MARKER_LIMIT = 60
#: The tasks scored by accuracy (a question right or wrong), by their family: the rest is Listing's F1.
ACCURACY_FAMILIES = ("counting", "common", "oddone")


def metric_label(frame: pd.DataFrame, y: str) -> str:
    """The name of what a ``score`` column holds, from the tasks in the table: "accuracy" when every task is
    scored by accuracy, "Listing F1" for Listing alone, :data:`SCORE_LABEL` for a mix or a mean over tasks.
    Any other column is named by itself."""
    if y != "score" or "task" not in frame:
        return y
    families = {str(task).split("_")[0] for task in frame["task"].unique()}
    if families <= set(ACCURACY_FAMILIES):
        return "accuracy"
    return "Listing F1" if families == {"listing"} else SCORE_LABEL


def metric_lines(frame: pd.DataFrame, x: str, y: str, hue: str, path: Path | str, title: str = "",
                 ylabel: str | None = None, style: str | None = None,
                 ylim: tuple[float, float] | None = (-0.05, 1.05), *, facet: str | None = None,
                 band: tuple[str, str] = ("lo", "hi"), blind: str | None = "blind",
                 blind_by: tuple[str, ...] | None = None, reference: float | None = None,
                 backdrop: str | None = None) -> SavedFigure:
    """Lines of a metric against a knob, one per ``hue`` (and ``style``), one panel per ``facet`` value.

    Where the table has them, each line gets its 95% interval from the ``band`` columns (computed by
    :mod:`mimic_utils.analysis.stats`, never a bootstrap across tasks): a band for up to two lines a panel, dodged
    error bars beyond, so that intervals stay readable. A dashed blind-baseline line comes from the
    ``blind`` column, one per ``blind_by`` group (default: per ``hue``; grey when not per ``hue``).
    ``reference`` draws a dotted horizontal line (e.g. 0 for a gain). ``backdrop`` names a ``facet`` value
    (e.g. the base model) drawn in light grey in every other panel, to compare against without a crowd of
    lines. The y axis is named by ``ylabel``, else by :func:`metric_label`; a panel whose every value is 0
    says so (the default y range starts below 0, so such a line stays visible above the axis).
    """
    facets = list(dict.fromkeys(frame[facet])) if facet else [None]
    fig, axes = _panels(len(facets))
    colors = _palette(frame[hue])
    styles = {v: (LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)])
              for i, v in enumerate(dict.fromkeys(frame[style]))} if style else {None: ("-", "o")}
    has_band = all(c in frame for c in band)
    blind_by = blind_by if blind_by is not None else (hue,)
    keys = [k for k in (hue, style, facet) if k]
    marked = int(frame.groupby(keys, sort=False).size().max()) < MARKER_LIMIT
    ylabel = ylabel or metric_label(frame, y)
    drew_blind = False
    for index, (ax, value) in enumerate(zip(axes, facets)):
        part = frame if facet is None else frame[frame[facet] == value]
        if backdrop is not None and value != backdrop:
            behind = frame[frame[facet] == backdrop]
            for _, line in behind.groupby([hue] + ([style] if style else []), sort=False):
                line = line.sort_values(x)
                ax.plot(line[x], line[y], color="lightgrey", linewidth=2.2, zorder=0)
        _lines(ax, part, x, y, hue, style, colors, styles, band if has_band else None, marked)
        if blind and blind in part and part[blind].notna().any():
            _blind_lines(ax, part, x, blind, blind_by, hue, colors)
            drew_blind = True
        if reference is not None:
            ax.axhline(reference, color="black", linewidth=0.8, linestyle=":")
        values = part[y].dropna()
        if len(values) and (values == 0).all():
            ax.text(0.5, 0.14, "every value here is 0", transform=ax.transAxes, ha="center", fontsize=8,
                    color="dimgrey", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
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
    _legend(fig, hue, colors, style, styles, drew_blind, has_band, marked,
            backdrop=f"{backdrop} ({facet})" if backdrop is not None else None)
    fig.tight_layout()
    return finish(fig, path)


#: Panels per row of a faceted figure, so that a saved figure stays readable.
PANELS_PER_ROW = 3


def loss_by_run(logs: list[pd.DataFrame], path: Path | str, window: int, title: str):
    """Training loss of several runs (loss logs with ``model`` and ``seed`` columns) as its ``window``-step
    rolling mean per run: one panel per model, one colour per seed (seeds of one model overlap, so models
    sharing one axis would hide each other)."""
    loss = pd.concat(logs)
    loss["loss_mean"] = loss.groupby(["model", "seed"])["loss"].transform(lambda s: s.rolling(window, min_periods=1).mean())
    return metric_lines(loss, "step", "loss_mean", "seed", path, facet="model", blind=None, title=title, ylabel="loss",
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
           styles: dict, band: tuple[str, str] | None, marked: bool = True) -> None:
    """One line (with its interval) per hue and style value; a marker at each point when ``marked``."""
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
        ax.plot(where, part[y], color=color, linestyle=linestyle, marker=marker if marked else None,
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
            band: bool, marked: bool = True, backdrop: str | None = None) -> None:
    """One legend outside the panels: hue colours, style lines (with the markers only where the lines have
    them), the backdrop line, and what the band and dashes are."""
    handles = [Line2D([], [], linestyle="none", label=hue)]
    handles += [Line2D([], [], color=c, label=str(v)) for v, c in colors.items()]
    if style:
        handles.append(Line2D([], [], linestyle="none", label=style))
        handles += [Line2D([], [], color="grey", linestyle=ls, marker=m if marked else None, label=str(v))
                    for v, (ls, m) in styles.items()]
    if backdrop:
        handles.append(Line2D([], [], color="lightgrey", linewidth=2.2, label=f"grey: {backdrop}, for comparison"))
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
                 ylabel: str | None = None, *, band: tuple[str, str] = ("lo", "hi"), blind: str | None = "blind",
                 blind_label: str = BLIND_LABEL, reference: float | None = None,
                 ylim: tuple[float, float] | None = (0, 1.05)) -> SavedFigure:
    """Grouped bars of a metric (e.g. tasks × models) with 95% error bars from the ``band`` columns and a
    dashed blind-baseline mark per ``x`` group from the ``blind`` column, where the table has them.

    The figure is as wide as its bars need, up to :data:`BARS_MAX_WIDTH` inches; further groups go on
    further rows (same y scale), so many models × tasks stay readable at the saved size. The y axis is
    named by ``ylabel``, else by :func:`metric_label`."""
    ylabel = ylabel or metric_label(frame, y)
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
    return finish(fig, path)


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


def attention_depth(table: pd.DataFrame, path: Path | str, query_kind: str = "vision", title: str = "") -> SavedFigure:
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
    return finish(fig, path)


#: The y label of the attention ratio figures: what 1 means is on the axis.
RATIO_LABEL = "measured / uniform attention\n(1 = as uniform attention would)"


def ratio_by_layer(table: pd.DataFrame, path: Path | str, masked: Mapping[str, Sequence[int]] | None = None, *,
                   facet: str = "model", backdrop: str | None = "base", title: str = "") -> SavedFigure:
    """The image tokens' attention to other images as a multiple of uniform attention, per layer, one panel
    per ``facet`` value (a model), from ``table`` with ``layer, ratio, ratio_low, ratio_high`` per model
    (:func:`mimic_utils.attention.ratio_by_layer`). A dotted line marks 1 (uniform). Layers a model masks are
    shaded and labelled "masked", with no point: the mask forces that attention to 0, which is not a
    measurement. ``backdrop`` (e.g. the base model) is drawn in light grey in the other panels."""
    masked = {name: set(layers) for name, layers in (masked or {}).items()}
    models = list(dict.fromkeys(table[facet]))
    fig, axes = _panels(len(models))
    colors = _palette(table[facet])
    for index, (ax, name) in enumerate(zip(axes, models)):
        part = table[table[facet] == name].sort_values("layer")
        hidden = part["layer"].isin(masked.get(name, set()))
        shown = part.where(~hidden)  # masked layers become gaps in the line
        if backdrop is not None and name != backdrop:
            behind = table[table[facet] == backdrop].sort_values("layer")
            ax.plot(behind["layer"], behind["ratio"], color="lightgrey", linewidth=2.2, zorder=0)
        ax.plot(part["layer"], shown["ratio"], color=colors[name], marker="o", markersize=4, linewidth=1.4)
        ax.fill_between(part["layer"], shown["ratio_low"], shown["ratio_high"], color=colors[name], alpha=0.15,
                        linewidth=0)
        for layer in sorted(masked.get(name, set())):
            ax.axvspan(layer - 0.5, layer + 0.5, color="grey", alpha=0.12, linewidth=0)
        if masked.get(name):
            middle = (min(masked[name]) + max(masked[name])) / 2
            ax.text(middle, 0.5, "masked", transform=ax.get_xaxis_transform(), ha="center", va="center",
                    fontsize=9, color="dimgrey")
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
        _integer_ticks(ax, table["layer"])
        ax.set_xlim(table["layer"].min() - 0.5, table["layer"].max() + 0.5)
        ax.set_xlabel("layer")
        ax.set_ylabel(RATIO_LABEL if index % PANELS_PER_ROW == 0 else "")
        ax.set_title(str(name), fontsize=10)
    for ax in axes[len(models):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    handles = [Patch(color=colors[models[0]], alpha=0.25, label="band: 95% interval"),
               Line2D([], [], color="black", linestyle=":", label="dotted: uniform attention (1)"),
               Patch(color="grey", alpha=0.25, label="shaded: masked layers (no cross-image attention)")]
    if backdrop is not None and backdrop in models:
        handles.append(Line2D([], [], color="lightgrey", linewidth=2.2, label=f"grey: {backdrop}, for comparison"))
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.55 / fig.get_size_inches()[1], 1, 1))  # half an inch below the panels: the legend
    return finish(fig, path)


#: The y label of each panel of :func:`benchmark_panels`, by the kind of baseline a benchmark's row has.
BENCHMARK_METRICS = {"blind": "MIMIC score: mean over tasks\n(Listing: F1, others: accuracy)",
                     "chance": "multiple-choice accuracy"}
PARSE_LABEL = "parse rate\n(replies with a valid letter)"


def benchmark_panels(results: pd.DataFrame, path: Path | str, parse_floor: float | None = None,
                     title: str = "") -> SavedFigure:
    """Models × benchmarks, one metric per panel with its name on the axis: MIMIC's mean score against its
    blind baseline; for each multiple-choice benchmark its accuracy against chance and, beside it, the parse
    rate (the share of replies a letter could be read from; ``parse_floor``, dotted, is where the table stops
    reading the accuracy as a result). ``results`` is :func:`mimic_utils.transfer.results_table`."""
    results = results.dropna(subset=["score"])
    colors = _palette(results["model"])
    panels: list[tuple[str, str, pd.DataFrame]] = []
    for benchmark, part in results.groupby("benchmark", sort=False):
        kind = str(part["baseline_kind"].iloc[0]) if "baseline_kind" in part else "blind"
        panels.append((benchmark, BENCHMARK_METRICS.get(kind, "score"), part))
        if "parse_rate" in part and part["parse_rate"].notna().any():
            panels.append((benchmark, PARSE_LABEL, part))
    columns = min(len(panels), PANELS_PER_ROW)
    rows = -(-len(panels) // columns)
    width = 0.9 + 0.45 * results["model"].nunique()
    fig, grid = plt.subplots(rows, columns, figsize=(0.8 + 1.35 * width * columns, 0.6 + 3.4 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax, (benchmark, metric, part) in zip(axes, panels):
        where = range(len(part))
        if metric == PARSE_LABEL:
            ax.bar(where, part["parse_rate"], color=[colors[m] for m in part["model"]])
            if parse_floor is not None:
                ax.axhline(parse_floor, color="black", linewidth=0.8, linestyle=":")
        else:
            errors = [part["score"] - part["lo"], part["hi"] - part["score"]] if {"lo", "hi"} <= set(part) else None
            bars = ax.bar(where, part["score"], color=[colors[m] for m in part["model"]], yerr=errors, capsize=2,
                          error_kw={"linewidth": 0.8})
            unread = part["parse_rate"] < parse_floor if parse_floor is not None and "parse_rate" in part else []
            for bar, hide in zip(bars, unread):
                if hide:  # the table does not read this accuracy: too few replies held a letter
                    bar.set(hatch="///", alpha=0.45)
            if "baseline" in part and part["baseline"].notna().any():
                ax.axhline(part["baseline"].iloc[0], color="black", linewidth=1.0, linestyle="--")
        ax.set_ylim(0, 1.05)
        ax.set_xticks(list(where))
        ax.set_xticklabels([])
        ax.set_ylabel(metric, fontsize=9)
        ax.set_title(textwrap.fill(str(benchmark), 28), fontsize=9)
        ax.grid(axis="x", visible=False)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles = [Patch(color=c, label=str(m)) for m, c in colors.items()]
    handles.append(Line2D([], [], color="black", linestyle="--", label="dashed: blind baseline (MIMIC) / chance"))
    if parse_floor is not None:
        handles.append(Line2D([], [], color="black", linestyle=":",
                              label=f"dotted: parse rate {parse_floor:g}; below it the accuracy is not read"))
        handles.append(Patch(facecolor="white", edgecolor="grey", hatch="///", label="hatched: accuracy not read"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False, title="model")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return finish(fig, path)


def block_heatmaps(frame: pd.DataFrame, path: Path | str, title: str = "") -> SavedFigure:
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
    return finish(fig, path)


#: The three ways notebook 02 grows a question to n images, in the padding figure's order and colours.
PADDING_ORDER = ("blank", "distractors", "images sweep")


def padding_figure(table: pd.DataFrame, path: Path | str, title: str = "") -> SavedFigure:
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


def count_confusion_grid(confusions: dict, path: Path | str, title: str = "") -> SavedFigure:
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
    return finish(fig, path)
