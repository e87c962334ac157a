"""What every figure shares: reading the statistics dict, axes, curves, markers, colours.

Entries may be None or NaN (a statistic that could not be computed at a
snapshot): they become NaN here and are skipped when drawn, never interpolated.
"""

from collections.abc import Sequence
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
import numpy as np
import numpy.typing as npt

DPI = 120
BIAS_COLOR = "C0"
LOSS_COLOR = "C3"
ONSET_COLOR = "C0"
TEST_MIN_COLOR = "C3"
BIASED_COLOR = "gold"


# Reading the dict.


def get(stats: dict[str, Any], dotted: str) -> Any:
    """stats["a"]["b"] for "a.b"; None when any level is absent or None."""
    node = stats
    for key in dotted.split("."):
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return node


def vector(values: Sequence[float | None] | np.ndarray | None) -> np.ndarray | None:
    """[C] float array with None as NaN; None when absent."""
    if values is None:
        return None
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def matrix(
    rows: Sequence[Sequence[float | None] | np.ndarray | None] | np.ndarray | None, width: int = 0
) -> np.ndarray | None:
    """[C, W] float array, W >= width; a None row or entry (not computed) becomes NaN.

    Short rows are padded with NaN, so that a column always means the same
    thing (a t, a k, a ratio) and a row lines up with its x values.
    """
    if rows is None:
        return None
    width = max([width] + [len(r) for r in rows if r is not None])
    out = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        if row is not None:
            out[i, : len(row)] = vector(row)
    return out


def epochs_of(stats: dict[str, Any]) -> np.ndarray:
    return vector(stats["checkpoints"])


def index_of_epoch(epochs: np.ndarray, epoch: float | None) -> int | None:
    """Index of the snapshot at `epoch` (nearest, as epochs are floats); None if absent."""
    if epoch is None or not np.isfinite(epoch) or not np.isfinite(epochs).any():
        return None
    diffs = np.abs(np.where(np.isfinite(epochs), epochs, np.inf) - epoch)
    i = int(np.argmin(diffs))
    return i if diffs[i] <= 1e-6 * max(1.0, abs(epoch)) else None


def verdict_index(stats: dict[str, Any], which: str) -> int | None:
    """Index of the verdict's snapshot `which` ("bias_onset" or "test_loss_min"); None if none.

    The verdict names it (`<which>_index`). A statistics.json written before the
    verdict carried indices has the epoch alone: that one is found by its epoch,
    so that the figures of older workdirs still mark it.
    """
    v = stats.get("verdict") or {}
    if f"{which}_index" in v:
        return v[f"{which}_index"]
    return index_of_epoch(epochs_of(stats), v.get(f"{which}_epoch"))


def snapshot_indices(stats: dict[str, Any], entry: dict[str, Any]) -> list[int | None]:
    """Snapshot indices of a per-snapshot entry (uturn, kl_bp_along_t).

    Older statistics.json files list the epochs alone: those are found by epoch.
    """
    if "indices" in entry:
        return list(entry["indices"])
    return [index_of_epoch(epochs_of(stats), epoch) for epoch in entry.get("epochs") or []]


def verdict_roles(stats: dict[str, Any], index: int | None) -> str:
    """What the verdict makes of snapshot `index`, e.g. "bias onset = test-loss min"."""
    names = [
        name
        for which, name in (("bias_onset", "bias onset"), ("test_loss_min", "test-loss min"))
        if index is not None and verdict_index(stats, which) == index
    ]
    return " = ".join(names) or "snapshot"


def key_snapshots(stats: dict[str, Any]) -> list[tuple[int, str]]:
    """[(index, label)] of the first, onset, test-loss-minimum and last snapshots."""
    candidates = [
        (0, "first"),
        (verdict_index(stats, "bias_onset"), "bias onset"),
        (verdict_index(stats, "test_loss_min"), "test-loss min"),
        (len(stats["checkpoints"]) - 1, "last"),
    ]
    out = {}
    for i, label in candidates:
        if i is None:
            continue
        # One snapshot may be several of these (e.g. onset at the first): one entry, both names.
        out[i] = f"{out[i]} = {label}" if i in out else label
    return sorted(out.items())


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


# Drawing helpers.


def new_figure(width: float, height: float, **kwargs: Any) -> Figure:
    # Constrained layout keeps labels, twin axes and outside legends from overlapping.
    return Figure(figsize=(width, height), layout="constrained", **kwargs)


def save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=DPI)


def epoch_axis(ax: Axes, epochs: np.ndarray) -> None:
    """Log x-axis over the snapshots (they are log-spaced); symlog if an epoch is <= 0."""
    finite = epochs[np.isfinite(epochs)]
    positive = finite[finite > 0]
    if len(finite) and len(positive) == len(finite):
        ax.set_xscale("log")
        if finite.min() == finite.max():
            # One snapshot: a decade around it rather than a singular range.
            ax.set_xlim(finite.min() / 3, finite.max() * 3)
    else:
        ax.set_xscale("symlog", linthresh=float(positive.min()) if len(positive) else 1.0)
    ax.set_xlabel("epoch (log scale)")


# A curve whose largest value is this many times its smallest is drawn on a log axis.
LOG_AXIS_RATIO = 100.0


def spans_decades(*curves: npt.ArrayLike | None) -> bool:
    """Whether the finite values of `curves` are all positive and max / min > LOG_AXIS_RATIO."""
    values = [np.ravel(np.asarray(c, float)) for c in curves if c is not None]
    values = np.concatenate(values) if values else np.array([])
    values = values[np.isfinite(values)]
    return bool(len(values) and (values > 0).all() and values.max() > LOG_AXIS_RATIO * values.min())


def value_axis(ax: Axes, label: str, *curves: npt.ArrayLike | None, **kwargs: Any) -> bool:
    """Labels the y-axis; log scale when the curves span decades (returns whether).

    A linear axis from 30 down to 0 flattens a minimum at 0.03 into the floor
    (the NN divergence falls by three decades before its minimum).
    """
    log = spans_decades(*curves)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(label + (" (log scale)" if log else ""), **kwargs)
    return log


def line(
    ax: Axes,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    sem: npt.ArrayLike | None = None,
    **kwargs: Any,
) -> Line2D | None:
    """Plots y(x) over finite points only, with a +-sem band; returns the line or None."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    # Markers, so that a single snapshot (or isolated finite ones) still shows.
    kwargs.setdefault("marker", "o")
    kwargs.setdefault("markersize", 3)
    (line,) = ax.plot(x[ok], y[ok], **kwargs)
    if sem is not None:
        sem = np.asarray(sem, float)
        band = ok & np.isfinite(sem)
        if band.sum() > 1:
            ax.fill_between(
                x[band],
                y[band] - sem[band],
                y[band] + sem[band],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    return line


def mark_snapshots(ax: Axes, stats: dict[str, Any], labels: bool = True) -> list[Line2D]:
    """Dashed verticals at the bias onset and test-loss minimum, where the verdict has them."""
    v = stats.get("verdict") or {}
    handles = []
    for key, color, name in (
        ("bias_onset_epoch", ONSET_COLOR, "bias onset"),
        ("test_loss_min_epoch", TEST_MIN_COLOR, "test-loss minimum"),
    ):
        epoch = v.get(key)
        if epoch is not None and np.isfinite(epoch):
            handles.append(
                ax.axvline(
                    epoch,
                    color=color,
                    linestyle="--",
                    linewidth=1,
                    alpha=0.7,
                    label=f"{name} ({fmt(epoch)})" if labels else None,
                )
            )
    return handles


def legend(ax: Axes, **kwargs: Any) -> None:
    """A small legend, only where something labelled was drawn (all-NaN curves are not)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", **kwargs)


def colors(n: int, cmap: str = "viridis") -> list[tuple[float, float, float, float]]:
    # Stop short of the colormap's yellow end, which is hard to see on white.
    return [matplotlib.colormaps[cmap](v) for v in np.linspace(0.0, 0.85, max(n, 1))]


def fraction(counts: npt.ArrayLike) -> np.ndarray:
    counts = np.asarray(counts, float)
    total = np.nansum(counts)
    return counts / total if total > 0 else counts * np.nan
