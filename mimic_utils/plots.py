"""Figures of the study: each function draws one kind of plot, saves it as PNG and returns the figure.

Notebooks call these so that a cell stays one line; tables go beside the figures as CSV (see
:func:`save_table`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
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
    fig, axes = plt.subplots(len(chosen), width, figsize=(1.3 * width, 1.6 * len(chosen)), squeeze=False)
    for row, record in zip(axes, chosen):
        for ax in row:
            ax.axis("off")
        for ax, image in zip(row, record["images"]):
            ax.imshow(Image.open(image).convert("RGB").resize((thumb, thumb)))
        row[0].set_title(f"[{record['task']}] {record['question']}  →  {record['gt']}", loc="left", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def answer_distribution(records: list[dict], path: Path | str, max_values: int = 12) -> plt.Figure:
    """Histogram of ground-truth answers per task (Counting split by Balanced / Unbalanced)."""
    tasks = sorted({r["task"] for r in records})
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        answers = Counter(r["gt"] if len(r["gt"]) < 18 else r["gt"][:16] + "…" for r in records if r["task"] == task)
        items = answers.most_common(max_values)
        if task.startswith("counting"):
            items = sorted(answers.items(), key=lambda kv: int(kv[0]))
        ax.bar([k for k, _ in items], [v for _, v in items], color=sns.color_palette()[0])
        ax.set_title(task, fontsize=10)
        ax.tick_params(axis="x", rotation=60 if not task.startswith("counting") else 0, labelsize=8)
    axes[0][0].set_ylabel("questions")
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def knob_coverage(counts: dict, path: Path | str) -> plt.Figure:
    """Heatmaps of questions per task and knob value, one panel per experiment (from the manifest)."""
    experiments = sorted(counts)
    fig, axes = plt.subplots(1, len(experiments), figsize=(4.2 * len(experiments), 3), squeeze=False)
    for ax, experiment in zip(axes[0], experiments):
        frame = pd.DataFrame(counts[experiment]).T.fillna(0).astype(int)
        frame = frame[sorted(frame.columns, key=lambda c: (len(c), c))]
        sns.heatmap(frame, annot=True, fmt="d", cbar=False, ax=ax, cmap="Blues", annot_kws={"fontsize": 7})
        ax.set_title(experiment)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def metric_lines(frame: pd.DataFrame, x: str, y: str, hue: str, path: Path | str, title: str = "",
                 ylabel: str = "accuracy", style: str | None = None,
                 ylim: tuple[float, float] | None = (-0.02, 1.02)) -> plt.Figure:
    """A line plot of a metric against a knob, one line per ``hue`` (e.g. task or model)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    sns.lineplot(data=frame, x=x, y=y, hue=hue, style=style, marker="o" if len(frame) < 200 else None, ax=ax)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, frameon=False)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def grouped_bars(frame: pd.DataFrame, x: str, y: str, hue: str, path: Path | str, title: str = "",
                 ylabel: str = "accuracy") -> plt.Figure:
    """Grouped bars of a metric, e.g. tasks × models."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * frame[x].nunique() * max(1, frame[hue].nunique()) / 2), 3.6))
    sns.barplot(data=frame, x=x, y=y, hue=hue, ax=ax)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, frameon=False)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def attention_depth(table: pd.DataFrame, path: Path | str, query_kind: str = "vision", title: str = "") -> plt.Figure:
    """Attention share against normalised depth, one line per target, with the 95% band."""
    rows = table[table["query_kind"] == query_kind]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for target, part in rows.groupby("target"):
        part = part.sort_values("depth")
        ax.plot(part["depth"], part["mean"], marker="o", label=target)
        ax.fill_between(part["depth"], part["ci_low"], part["ci_high"], alpha=0.2)
    ax.set_xlabel("depth (layer / last layer)")
    ax.set_ylabel("share of attention")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend()
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
