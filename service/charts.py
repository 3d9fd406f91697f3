"""Pictures of the statistics. matplotlib is imported on first use, so the API starts without it."""

from __future__ import annotations

import io

import numpy as np

from service.schemas import JobStats

BARS_UP_TO = 60  # classes; beyond, bars and names would overlap, so classes become a sorted curve


def _series(stats: JobStats) -> list[tuple[str, np.ndarray]]:
    classes = stats.classes.values()
    series = [
        ("pseudo-labeled", [c.pseudo_labeled for c in classes]),
        (f"pseudo-labeled, confidence ≥ {stats.threshold:g}", [c.above_threshold for c in classes]),
    ]
    if stats.labeled_dataset_id is not None:
        series.append((f"labeled (dataset {stats.labeled_dataset_id})", [c.labeled for c in classes]))
    return [(label, np.asarray(counts)) for label, counts in series]


def _bars(axes, names: list[str], series) -> None:
    x = np.arange(len(names))
    width = 0.8 / len(series)
    for i, (label, counts) in enumerate(series):
        axes.bar(x + (i - (len(series) - 1) / 2) * width, counts, width, label=label)
    axes.set_xticks(x, names, rotation=60, ha="right")


def _sorted_curves(axes, series) -> None:
    """Classes in order of their pseudo-labeled count: the slope is the imbalance."""
    order = np.argsort(-series[0][1], kind="stable")
    for label, counts in series:
        axes.step(np.arange(len(order)), counts[order], where="mid", label=label)
    axes.set_xlabel("classes, by pseudo-labeled count")


def stats_chart(stats: JobStats, *, fmt: str) -> bytes:
    """Per class: pseudo-labeled, pseudo-labeled at or above the threshold, and labeled counts."""
    # The Figure class needs no pyplot and no global backend: safe in a threaded server.
    from matplotlib.figure import Figure

    names, series = list(stats.classes), _series(stats)
    wide = len(names) > BARS_UP_TO
    figure = Figure(figsize=(12 if wide else 4 + 0.45 * len(names), 5), layout="constrained")
    axes = figure.subplots()
    if wide:
        _sorted_curves(axes, series)
    else:
        _bars(axes, names, series)
    axes.set_ylabel("images")
    axes.set_title(
        f"Job {stats.job_id}: {stats.totals.above_threshold} of {stats.totals.pseudo_labeled} "
        f"pseudo labels at or above {stats.threshold:g}"
    )
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt)
    return buffer.getvalue()
