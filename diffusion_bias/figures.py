"""The paper's figures, drawn from a statistics dict alone (see `summary.STATISTICS_SCHEMA`).

Figures compute nothing beyond reshaping, so they can be redrawn from
`analysis/statistics.json` without touching a model:

    stats = json.load(open("workdirs/digits/analysis/statistics.json"))
    figures.draw_all(stats, "workdirs/digits/analysis")

Every figure is a function `(stats, path) -> None` writing one PNG. Entries may
be None or NaN (a statistic that could not be computed at a snapshot): they are
skipped, never interpolated. Matplotlib's object API (`Figure`, no pyplot) is
used so that drawing needs no GUI backend and leaves pyplot's global state alone.
"""

import os
import textwrap

from absl import logging
import matplotlib
from matplotlib.figure import Figure
import numpy as np

from diffusion_bias import verdict

DPI = 120
_BIAS_COLOR = "C0"
_LOSS_COLOR = "C3"
_ONSET_COLOR = "C0"
_TEST_MIN_COLOR = "C3"
_BIASED_COLOR = "gold"


# ---------------------------------------------------------------------------
# Reading the dict.


def _get(stats, dotted):
    """stats["a"]["b"] for "a.b"; None when any level is absent or None."""
    node = stats
    for key in dotted.split("."):
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return node


def _vector(values):
    """[C] float array with None as NaN; None when absent."""
    if values is None:
        return None
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _matrix(rows, width=0):
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
            out[i, : len(row)] = _vector(row)
    return out


def _epochs(stats):
    return _vector(stats["checkpoints"])


def _index_of_epoch(epochs, epoch):
    """Index of the snapshot at `epoch` (nearest, as epochs are floats); None if absent."""
    if epoch is None or not np.isfinite(epoch) or not np.isfinite(epochs).any():
        return None
    diffs = np.abs(np.where(np.isfinite(epochs), epochs, np.inf) - epoch)
    i = int(np.argmin(diffs))
    return i if diffs[i] <= 1e-6 * max(1.0, abs(epoch)) else None


def _key_snapshots(stats):
    """[(index, label)] of the first, onset, test-loss-minimum and last snapshots."""
    epochs = _epochs(stats)
    v = stats.get("verdict") or {}
    candidates = [
        (0, "first"),
        (_index_of_epoch(epochs, v.get("bias_onset_epoch")), "bias onset"),
        (_index_of_epoch(epochs, v.get("test_loss_min_epoch")), "test-loss min"),
        (len(epochs) - 1, "last"),
    ]
    out = {}
    for i, label in candidates:
        if i is None:
            continue
        # One snapshot may be several of these (e.g. onset at the first): one entry, both names.
        out[i] = f"{out[i]} = {label}" if i in out else label
    return sorted(out.items())


def _fmt(x):
    return "n/a" if x is None else f"{x:.4g}"


def _verdict_text(stats):
    """The verdict's sentences (`verdict.in_words`), wrapped to the panel's width."""
    v = stats.get("verdict")
    if not v:
        return "No verdict in the statistics."
    sentences = verdict.in_words(v).values()
    return "\n".join(line for text in sentences for line in textwrap.wrap(text, 100))


# ---------------------------------------------------------------------------
# Drawing helpers.


def _new_figure(width, height, **kwargs):
    # Constrained layout keeps labels, twin axes and outside legends from overlapping.
    return Figure(figsize=(width, height), layout="constrained", **kwargs)


def _save(fig, path):
    fig.savefig(path, dpi=DPI)


def _epoch_axis(ax, epochs):
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


def spans_decades(*curves):
    """Whether the finite values of `curves` are all positive and max / min > LOG_AXIS_RATIO."""
    values = [np.ravel(np.asarray(c, float)) for c in curves if c is not None]
    values = np.concatenate(values) if values else np.array([])
    values = values[np.isfinite(values)]
    return bool(len(values) and (values > 0).all() and values.max() > LOG_AXIS_RATIO * values.min())


def _value_axis(ax, label, *curves, **kwargs):
    """Labels the y-axis; log scale when the curves span decades (returns whether).

    A linear axis from 30 down to 0 flattens a minimum at 0.03 into the floor
    (the NN divergence falls by three decades before its minimum).
    """
    log = spans_decades(*curves)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(label + (" (log scale)" if log else ""), **kwargs)
    return log


def _line(ax, x, y, sem=None, **kwargs):
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


def _mark_snapshots(ax, stats, labels=True):
    """Dashed verticals at the bias onset and test-loss minimum, where the verdict has them."""
    v = stats.get("verdict") or {}
    handles = []
    for key, color, name in (
        ("bias_onset_epoch", _ONSET_COLOR, "bias onset"),
        ("test_loss_min_epoch", _TEST_MIN_COLOR, "test-loss minimum"),
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
                    label=f"{name} ({_fmt(epoch)})" if labels else None,
                )
            )
    return handles


def _legend(ax, **kwargs):
    """A small legend, only where something labelled was drawn (all-NaN curves are not)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", **kwargs)


def _colors(n, cmap="viridis"):
    # Stop short of the colormap's yellow end, which is hard to see on white.
    return [matplotlib.colormaps[cmap](v) for v in np.linspace(0.0, 0.85, max(n, 1))]


def _fraction(counts):
    counts = np.asarray(counts, float)
    total = np.nansum(counts)
    return counts / total if total > 0 else counts * np.nan


# ---------------------------------------------------------------------------
# The figures.


def fig_bias_vs_test_loss(stats, path):
    """Fig. 1a: the bias curve and the held-out loss over training, with the verdict.

    Images: the mean sample-split similarity (+-sem); tokens: the NN divergence.
    The test loss (+-sem) is on the right axis. The onset and test-loss minimum
    are dashed, their bootstrap 95% intervals shaded; the span between them is
    the biased-generalisation phase when the verdict is conclusive.
    """
    epochs = _epochs(stats)
    # The tokens' bias curve is the NN divergence; the images' the sample-split similarity.
    tokens = stats.get("nn_divergence") is not None and stats.get("setting") != "images"
    text = _verdict_text(stats)
    # The verdict panel grows with the number of reasons listed, so nothing is clipped.
    text_height = 0.2 + 0.17 * (text.count("\n") + 1)
    fig = _new_figure(8, 5.6 + text_height)
    ax, text_ax = fig.subplots(2, 1, height_ratios=[5.2, text_height])
    _epoch_axis(ax, epochs)
    if tokens:
        bias_label = "NN divergence KL(generated || held-out), mean over models"
        curve = _vector(stats["nn_divergence"])
        bias = _line(ax, epochs, curve, color=_BIAS_COLOR, label=bias_label)
        _value_axis(
            ax,
            "NN divergence (lower = samples look like held-out data)",
            curve,
            color=_BIAS_COLOR,
        )
    else:
        bias_label = "sample-split similarity (mean +- sem)"
        curve = _vector(_get(stats, "sample_split.mean"))
        bias = _line(
            ax,
            epochs,
            curve,
            _vector(_get(stats, "sample_split.sem")),
            color=_BIAS_COLOR,
            label=bias_label,
        )
        _value_axis(ax, "similarity of coupled twin samples", curve, color=_BIAS_COLOR)
    ax.tick_params(axis="y", colors=_BIAS_COLOR)
    handles = [bias] if bias is not None else []

    loss_ax = ax.twinx()
    test_loss = _vector(stats["test_loss"])
    loss = _line(
        loss_ax,
        epochs,
        test_loss,
        _vector(stats.get("test_loss_sem")),
        color=_LOSS_COLOR,
        label="test loss (mean +- sem)",
    )
    _value_axis(loss_ax, "held-out denoising loss", test_loss, color=_LOSS_COLOR)
    loss_ax.tick_params(axis="y", colors=_LOSS_COLOR)
    if loss is not None:
        handles.append(loss)

    v = stats.get("verdict") or {}
    handles += _mark_snapshots(ax, stats)
    for key, color in (
        ("bias_onset_interval", _ONSET_COLOR),
        ("test_loss_min_interval", _TEST_MIN_COLOR),
    ):
        interval = v.get(key)
        if interval and None not in interval:
            ax.axvspan(interval[0], interval[1], color=color, alpha=0.12, linewidth=0)
    onset, test_min = v.get("bias_onset_epoch"), v.get("test_loss_min_epoch")
    if v.get("conclusive") and onset is not None and test_min is not None:
        handles.append(
            ax.axvspan(
                min(onset, test_min),
                max(onset, test_min),
                color=_BIASED_COLOR,
                alpha=0.25,
                linewidth=0,
                label="biased generalisation",
            )
        )
    ax.set_title(
        f"{'NN divergence' if tokens else 'Sample-split similarity'} and test loss over training"
        " (shaded: 95% intervals)"
    )
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=3,
        fontsize="small",
        frameon=False,
    )
    text_ax.axis("off")
    text_ax.text(
        0.0,
        1.0,
        text,
        va="top",
        ha="left",
        fontsize="small",
        family="monospace",
        transform=text_ax.transAxes,
        bbox=dict(
            boxstyle="round",
            facecolor="honeydew" if v.get("conclusive") else "mistyrose",
            edgecolor="grey",
        ),
    )
    _save(fig, path)


def fig_similarity_histograms(stats, path):
    """App. Fig. 8: histograms of the coupled twins' similarity over training.

    Left: the first, onset, test-loss-minimum and last snapshots overlaid;
    right: every snapshot as a heat map (fraction of pairs per bin).
    """
    epochs = _epochs(stats)
    edges = _vector(stats["sample_split"]["edges"])
    hist = _matrix(stats["sample_split"]["hist"], len(edges) - 1)[:, : len(edges) - 1]
    centers = 0.5 * (edges[1:] + edges[:-1])
    fractions = np.stack([_fraction(h) for h in hist])
    xlabel = (
        "fraction of equal tokens in twin samples"
        if stats.get("setting") == "tokens"
        else "cosine of standardised twin samples"
    )
    fig = _new_figure(11, 4.5)
    left, right = fig.subplots(1, 2, width_ratios=[1.2, 1])
    keys = _key_snapshots(stats)
    for (i, label), color in zip(keys, _colors(len(keys), "plasma")):
        if np.isfinite(fractions[i]).any():
            left.step(
                centers,
                fractions[i],
                where="mid",
                color=color,
                label=f"epoch {_fmt(epochs[i])} ({label})",
            )
    left.set_xlabel(xlabel)
    left.set_ylabel("fraction of coupled pairs")
    left.set_title("Similarity of coupled twin samples")
    _legend(left, loc="upper left")

    image = right.imshow(
        np.ma.masked_invalid(fractions),
        aspect="auto",
        origin="lower",
        cmap="magma",
        extent=(edges[0], edges[-1], -0.5, len(epochs) - 0.5),
        interpolation="nearest",
    )
    # At most ~12 epoch labels, so that they stay legible with many snapshots.
    step = max(1, int(np.ceil(len(epochs) / 12)))
    ticks = np.arange(0, len(epochs), step)
    right.set_yticks(ticks, [_fmt(epochs[i]) for i in ticks])
    right.set_ylabel("epoch of the snapshot")
    right.set_xlabel(xlabel)
    right.set_title("All snapshots")
    fig.colorbar(image, ax=right, label="fraction of pairs")
    _save(fig, path)


def fig_score_cosine(stats, path):
    """Fig. 2: cosine of the twins' predicted noise on the same noisy inputs, per t."""
    epochs = _epochs(stats)
    score = stats["score_cosine"]
    times = list(score["t"])
    fig = _new_figure(11, 4.5)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, name in zip(
        axes,
        ("heldout", "train"),
        ("noisy held-out images", "noisy training images (each twin's own)"),
    ):
        values = _matrix(score.get(key), len(times))
        for j, (t, color) in enumerate(zip(times, _colors(len(times)))):
            if values is not None:
                _line(ax, epochs, values[:, j], color=color, label=f"t = {t}")
        _mark_snapshots(ax, stats)
        _epoch_axis(ax, epochs)
        ax.set_title(f"On {name}")
        _legend(ax, loc="best")
    axes[0].set_ylabel("cosine of twins' predicted noise (mean over pairs)")
    fig.suptitle("Score comparison between twin models")
    _save(fig, path)


def fig_nearest(stats, path):
    """Nearest-neighbour distances and memorisation fractions over training."""
    epochs = _epochs(stats)
    near = stats["nearest"]
    fig = _new_figure(11, 4.5)
    left, right = fig.subplots(1, 2)
    distances = []
    for key, label, color in (
        ("own_d1", "samples to own training set", "C0"),
        ("other_d1", "samples to closest other set", "C1"),
        ("heldout_d1", "held-out items to training sets", "C2"),
    ):
        if near.get(key) is not None:
            distances.append(_vector(near[key]))
            _line(left, epochs, distances[-1], color=color, label=label)
    _mark_snapshots(left, stats, labels=False)
    _epoch_axis(left, epochs)
    _value_axis(left, "mean NN distance", *distances)
    left.set_title("Distance to the nearest training item")
    _legend(left, loc="best")

    for values, label, color in (
        (near.get("closer_to_own"), "samples closer to own set", "C0"),
        (near.get("memorized_fraction"), "memorised samples (d1/d2 < 1/3)", "C4"),
        (near.get("heldout_memorized_fraction"), "held-out with d1/d2 < 1/3", "C2"),
        (near.get("copy_fraction"), "exact copies (d1 = 0)", "C5"),
        (stats.get("membership_auc"), "membership ROC AUC (loss)", "C3"),
    ):
        if values is not None:
            _line(right, epochs, _vector(values), color=color, label=label)
    right.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    _mark_snapshots(right, stats, labels=False)
    _epoch_axis(right, epochs)
    right.set_ylabel("fraction / AUC (dotted: 0.5, chance for the AUC)")
    right.set_title("Memorisation and membership inference")
    _legend(right, loc="best")
    fig.suptitle("Nearest neighbours in the training sets (dashed: onset, test-loss minimum)")
    _save(fig, path)


def fig_nn_histograms(stats, path):
    """Fig. 4a (right): NN Hamming-distance histograms of samples vs held-out data."""
    epochs = _epochs(stats)
    heldout = _vector(stats["nn_hist"].get("heldout"))
    generated = _matrix(stats["nn_hist"]["generated"], 0 if heldout is None else len(heldout))
    fig = _new_figure(11, 4.5)
    left, right = fig.subplots(1, 2, width_ratios=[1.2, 1])
    # The sequence length L is not in the dict: bins are shown by index (20 bins on [0, L]).
    bins = np.arange(generated.shape[1])
    if heldout is not None:
        left.bar(
            bins[: len(heldout)],
            _fraction(heldout),
            width=0.9,
            color="lightgrey",
            label="held-out sequences (pooled over twins)",
        )
    keys = _key_snapshots(stats)
    for (i, label), color in zip(keys, _colors(len(keys), "plasma")):
        if np.isfinite(generated[i]).any():
            left.step(
                bins,
                _fraction(generated[i]),
                where="mid",
                color=color,
                label=f"generated (pooled over twins), epoch {_fmt(epochs[i])} ({label})",
            )
    left.set_xlabel(f"NN Hamming distance bin ({len(bins)} equal bins on [0, L])")
    left.set_ylabel("fraction of sequences")
    left.set_title("Distance to the nearest training sequence")
    _legend(left, loc="best")

    grammatical = stats.get("grammatical_fraction")
    if grammatical is not None:
        _line(right, epochs, _vector(grammatical), color="C2", label="grammatical samples")
    _mark_snapshots(right, stats)
    _epoch_axis(right, epochs)
    right.set_ylabel("fraction of grammatical samples")
    right.set_title("Samples the grammar can emit")
    _legend(right, loc="best")
    _save(fig, path)


def fig_sequential_learning(stats, path):
    """Fig. 1b / 6: KL(BP_k || model) per k, and the twins' KL, over training."""
    epochs = _epochs(stats)
    ks = stats["kl_bp"].get("k")
    values = _matrix(stats["kl_bp"]["values"], len(ks or []))
    ks = list(ks or range(values.shape[1]))
    fig = _new_figure(8, 5)
    ax = fig.subplots()
    plotted = []
    for j, (k, color) in enumerate(zip(ks, _colors(len(ks)))):
        _line(ax, epochs, values[:, j], color=color, label=f"KL(BP_{k} || model)")
        plotted.append(values[:, j])
    twin = _vector(stats.get("twin_kl"))
    if twin is not None:
        _line(
            ax,
            epochs,
            twin,
            color="black",
            linestyle="--",
            label="sample split KL(model_a || model_b)",
        )
        plotted.append(twin)
    _mark_snapshots(ax, stats)
    finite = np.concatenate(plotted) if plotted else np.array([])
    finite = finite[np.isfinite(finite)]
    # KLs span decades; a log axis only when every plotted value allows it.
    if len(finite) and (finite > 0).all():
        ax.set_yscale("log")
    _epoch_axis(ax, epochs)
    ax.set_ylabel("KL divergence per sequence (summed over tokens) at the critical time")
    ax.set_title("Sequential learning: exact factorised scores BP_k vs the model (BP_0 is exact)")
    _legend(ax, loc="best")
    _save(fig, path)


def fig_kl_along_t(stats, path):
    """Fig. 3b: KL(BP_k || model) per sequence along t/T, at the onset and test-loss minimum.

    The peak of each curve (dotted) is the critical time, where the model
    departs most from the k-factorised exact score.
    """
    along = stats["kl_bp_along_t"]
    ratios = _vector(along["ratios"])
    ks = list(along.get("k") or [])
    epochs = along.get("epochs") or []
    v = stats.get("verdict") or {}
    fig = _new_figure(4.8 * max(1, len(epochs)) + 1, 4.5)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(epochs)), sharey=True, squeeze=False)[0])
    for i, (ax, epoch) in enumerate(zip(axes, epochs)):
        values = _matrix(along["values"][i], len(ratios)) if along["values"][i] else None
        for j, (k, color) in enumerate(zip(ks, _colors(len(ks)))):
            if values is None or j >= len(values):
                continue
            _line(ax, ratios, values[j], color=color, label=f"KL(BP_{k} || model)")
            peak = (along.get("peak_ratio") or [[]])[i]
            if j < len(peak or []) and peak[j] is not None:
                ax.axvline(peak[j], color=color, linestyle=":", linewidth=0.8)
        names = [
            name
            for key, name in (
                ("bias_onset_epoch", "bias onset"),
                ("test_loss_min_epoch", "test-loss min"),
            )
            if v.get(key) is not None and abs(v[key] - epoch) < 1e-6
        ]
        ax.set_title(f"{' = '.join(names) or 'snapshot'}: epoch {_fmt(epoch)}")
        ax.set_xlabel("t/T")
        _legend(ax, loc="best")
    # The panels share their y-axis: one scale for all of them.
    _value_axis(
        axes[0],
        "KL divergence per sequence (summed over tokens)",
        *[_matrix(v) for v in along["values"] if v],
    )
    fig.suptitle("Score divergence along time (dotted: peak of each curve, the critical time)")
    _save(fig, path)


def fig_loss_decomposition(stats, path):
    """Fig. 4b: CE = l* (distillation of exact BP) + l~ (data-dependent excess)."""
    epochs = _epochs(stats)
    dec = stats["loss_decomposition"]
    fig = _new_figure(11, 4.5)
    left, right = fig.subplots(1, 2)
    ratio = dec.get("t_ratio")
    at = f"t/T = {ratio:g}" if ratio is not None else "fixed t"
    log = {}
    for ax, part, symbol in ((left, "l_star", "l*"), (right, "l_tilde", "l~")):
        plotted = []
        for where, color in (("train", "C0"), ("heldout", "C1")):
            data = "training" if where == "train" else "held-out"
            for suffix, style, when in (("", "-", at), ("_mean_t", "-.", "mean over t")):
                values = dec.get(f"{part}_{where}{suffix}")
                if values is not None:
                    plotted.append(_vector(values))
                    _line(
                        ax,
                        epochs,
                        plotted[-1],
                        color=color,
                        linestyle=style,
                        label=f"{symbol} on {data} data, {when}",
                    )
        _mark_snapshots(ax, stats, labels=False)
        _epoch_axis(ax, epochs)
        _legend(ax, loc="best")
        log[part] = _value_axis(
            ax,
            "l* = -x0_BP . log p_model" if part == "l_star" else "l~ = -(x0 - x0_BP) . log p_model",
            *plotted,
        )
    if not log["l_tilde"]:
        right.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
    left.set_title("Exact-distillation part")
    right.set_title("Excess, data-dependent part")
    fig.suptitle(
        "Loss decomposition per token (solid: at one t; dash-dot: mean over t uniform in 1..T; dashed: onset, test-loss min)"
    )
    _save(fig, path)


def fig_uturn(stats, path):
    """Fig. 5: U-turn overlap ratio model/BP vs noise level, at the onset and test-loss min.

    `uturn.epochs` lists the snapshots the U-turn was run at (the analysis runs
    it only at the bias onset and the test-loss minimum: it is costly).
    """
    uturn = stats["uturn"]
    ratios = _vector(uturn["ratios"])
    train = _matrix(uturn.get("train"), len(ratios))
    heldout = _matrix(uturn.get("heldout"), len(ratios))
    v = stats.get("verdict") or {}
    roles = []
    for epoch in uturn["epochs"]:
        names = [
            name
            for key, name in (
                ("bias_onset_epoch", "bias onset"),
                ("test_loss_min_epoch", "test-loss min"),
            )
            if v.get(key) is not None and abs(v[key] - epoch) < 1e-6
        ]
        roles.append(" = ".join(names) or "snapshot")
    fig = _new_figure(4.5 * len(roles) + 1, 4.5)
    axes = np.atleast_1d(fig.subplots(1, len(roles), sharey=True, squeeze=False)[0])
    for i, (ax, name) in enumerate(zip(axes, roles)):
        for values, label, color in ((train, "training", "C0"), (heldout, "held-out", "C1")):
            if values is not None:
                _line(ax, ratios, values[i, : len(ratios)], color=color, label=f"{label} sequences")
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("noise level t/T of the U-turn")
        ax.set_title(f"{name}: epoch {_fmt(uturn['epochs'][i])}")
        _legend(ax, loc="best")
    axes[0].set_ylabel("overlap with the original, model / exact BP")
    fig.suptitle("U-turn: noise, then denoise back (dotted: as good as exact BP)")
    _save(fig, path)


def _unit_range(image):
    """The image rescaled to [0, 1] on its own range (NaN stays NaN; flat -> 0.5)."""
    finite = image[np.isfinite(image)]
    if not len(finite):
        return image
    lo, hi = finite.min(), finite.max()
    return (image - lo) / (hi - lo) if hi > lo else np.where(np.isfinite(image), 0.5, np.nan)


def fig_examples(stats, path):
    """Twin samples at the bias onset, each above its nearest image in that twin's training set.

    The grid is one mosaic image on one axes: with K=15 twins a grid of separate
    axes would be hundreds of them, slow to lay out for nothing.
    """
    examples = stats["examples"]
    samples = np.asarray(examples["samples"], float)  # [K, E, H, W]
    nearest = np.asarray(examples["nearest"], float)
    num_twins, num_examples, height, width = samples.shape
    gap = max(1, height // 8)  # between images
    group_gap = max(2, height // 3)  # between twins, so that each pair of rows reads as one
    row_pitch = height + gap
    twin_pitch = 2 * row_pitch + group_gap
    canvas = np.full(
        (num_twins * twin_pitch - gap - group_gap, num_examples * (width + gap) - gap), np.nan
    )
    row_centers, row_labels = [], []
    for k in range(num_twins):
        for r, (images, label) in enumerate(((samples[k], "sample"), (nearest[k], "its NN"))):
            top = k * twin_pitch + r * row_pitch
            for e in range(num_examples):
                left = e * (width + gap)
                # Per-image grey range: the images are centred, their scales differ.
                canvas[top : top + height, left : left + width] = _unit_range(images[e])
            row_centers.append(top + (height - 1) / 2)
            row_labels.append(f"twin {k} {label}")
    cell = 0.8  # inches per image
    fig = Figure(
        figsize=(
            cell * num_examples * canvas.shape[1] / (num_examples * width) + 1.6,
            cell * canvas.shape[0] / height + 0.9,
        )
    )
    # Fixed margins in inches: room for the row labels on the left and the title on top.
    fig.subplots_adjust(
        left=1.4 / fig.get_figwidth(),
        right=1 - 0.1 / fig.get_figwidth(),
        bottom=0.1 / fig.get_figheight(),
        top=1 - 0.7 / fig.get_figheight(),
    )
    ax = fig.subplots()
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(canvas), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks(row_centers, row_labels, fontsize="small")
    ax.tick_params(axis="y", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(
        f"Coupled twin samples at epoch {_fmt(examples.get('epoch'))} (bias onset)\n"
        "each above its nearest image in that twin's training set",
        fontsize="medium",
    )
    _save(fig, path)


# ---------------------------------------------------------------------------
# All of them.

# (figure, keys it needs besides "checkpoints"); a tuple of keys means "any of them".
FIGURES = (
    (fig_bias_vs_test_loss, ("test_loss", ("sample_split.mean", "nn_divergence"))),
    (fig_similarity_histograms, ("sample_split.hist", "sample_split.edges")),
    (fig_score_cosine, ("score_cosine.t",)),
    (fig_nearest, ("nearest",)),
    (fig_nn_histograms, ("nn_hist.generated",)),
    (fig_sequential_learning, ("kl_bp.values",)),
    (fig_kl_along_t, ("kl_bp_along_t.values",)),
    (fig_loss_decomposition, ("loss_decomposition",)),
    (fig_uturn, ("uturn.ratios",)),
    (fig_examples, ("examples.samples", "examples.nearest")),
)


def _supported(stats, needs):
    if not stats.get("checkpoints"):
        return False
    for need in needs:
        options = need if isinstance(need, tuple) else (need,)
        if all(_get(stats, key) is None for key in options):
            return False
    return True


def available(stats):
    """The figure functions the dict has the keys for."""
    return [fn for fn, needs in FIGURES if _supported(stats, needs)]


def draw_all(stats, out_dir, strict=False):
    """Draws every figure `stats` supports into `out_dir` as `<function name>.png`.

    Args:
        stats: the statistics dict (see `summary.STATISTICS_SCHEMA`).
        out_dir: folder for the PNGs (created).
        strict: raise when a figure fails; by default the failure is logged and
            the other figures are still drawn (the statistics are already saved,
            so a broken figure should not cost the rest).

    Returns:
        The paths of the PNGs written.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for fn in available(stats):
        path = os.path.join(out_dir, f"{fn.__name__}.png")
        try:
            fn(stats, path)
        except Exception:
            if strict:
                raise
            logging.exception("Figure %s failed; drawing the others.", fn.__name__)
            continue
        paths.append(path)
    return paths
