"""The figures of both settings: the bias against the test loss, similarities, neighbours.

Fig. 1a (the bias curve and the held-out loss with the verdict), App. Fig. 8
(histograms of the coupled twins' similarity) and the nearest-neighbour /
memorisation curves.
"""

import textwrap
from typing import Any

import numpy as np

from diffusion_bias.figures import common
from diffusion_bias.instrument import verdict
from diffusion_bias import setting as setting_lib


def _verdict_text(stats, grid_alone=None):
    """The verdict's sentences (`verdict.in_words`), wrapped to the panel's width.

    `grid_alone`: the log-spaced grid's verdict, named after a refined one.
    """
    v = stats.get("verdict")
    if not v:
        return "No verdict in the statistics."
    sentences = list(verdict.in_words(v).values())
    if grid_alone is not None:
        sentences.append(f"(On the log-spaced grid alone: {verdict.conclusion(grid_alone)}.)")
    return "\n".join(line for text in sentences for line in textwrap.wrap(text, 100))


def _on_final_grid(stats, tokens):
    """`stats` as this figure reads it: over the refined grid, with its verdict, if replayed.

    The refined grid is the analysed snapshots plus those replayed around the
    extrema (`verdict.final`); it carries the bias curve and the test loss, not
    the similarity's s.e.m.
    """
    refined = stats.get("refined")
    if not refined:
        return stats
    view = dict(stats, verdict=refined["verdict"], checkpoints=refined["checkpoints"])
    view.update(test_loss=refined["test_loss"], test_loss_sem=refined["test_loss_sem"])
    if tokens:
        view["nn_divergence"] = refined["bias"]
    else:
        curve = "median" if common.get(stats, "sample_split.median") is not None else "mean"
        view["sample_split"] = {curve: refined["bias"]}
    return view


def _bias_curve(ax, stats, epochs, tokens):
    """Draws the bias curve on `ax` (tokens: NN divergence; images: similarity); its line or None."""
    aggregate = common.get(stats, "protocol.aggregate") or "mean"
    if tokens:
        bias_label = f"NN divergence KL(generated || held-out), {aggregate} over models"
        curve = common.vector(stats["nn_divergence"])
        bias = common.line(ax, epochs, curve, color=common.BIAS_COLOR, label=bias_label)
        common.value_axis(
            ax,
            "NN divergence (lower = samples look like held-out data)",
            curve,
            color=common.BIAS_COLOR,
        )
    else:
        # The verdict's curve: under the "median" aggregate the median over pairs,
        # which no s.e.m. describes.
        median = common.get(stats, "sample_split.median")
        curve = common.vector(
            median if median is not None else common.get(stats, "sample_split.mean")
        )
        bias = common.line(
            ax,
            epochs,
            curve,
            None if median is not None else common.vector(common.get(stats, "sample_split.sem")),
            color=common.BIAS_COLOR,
            label="sample-split similarity "
            + ("(median over twin pairs)" if median is not None else "(mean +- sem)"),
        )
        common.value_axis(ax, "similarity of coupled twin samples", curve, color=common.BIAS_COLOR)
    ax.tick_params(axis="y", colors=common.BIAS_COLOR)
    return bias


def _test_loss_curve(ax, stats, epochs):
    """Draws the test loss (+-sem) on a right axis twinned with `ax`; its line or None."""
    loss_ax = ax.twinx()
    test_loss = common.vector(stats["test_loss"])
    loss = common.line(
        loss_ax,
        epochs,
        test_loss,
        common.vector(stats.get("test_loss_sem")),
        color=common.LOSS_COLOR,
        label=f"test loss ({common.get(stats, 'protocol.aggregate') or 'mean'} over twins +- sem)",
    )
    common.value_axis(loss_ax, "held-out denoising loss", test_loss, color=common.LOSS_COLOR)
    loss_ax.tick_params(axis="y", colors=common.LOSS_COLOR)
    return loss


def _verdict_spans(ax, v):
    """Shades the 95% intervals and, if conclusive, the biased phase; the phase's handles."""
    for key, color in (
        ("bias_onset_interval", common.ONSET_COLOR),
        ("test_loss_min_interval", common.TEST_MIN_COLOR),
    ):
        interval = v.get(key)
        if interval and None not in interval:
            ax.axvspan(interval[0], interval[1], color=color, alpha=0.12, linewidth=0)
    onset, test_min = v.get("bias_onset_epoch"), v.get("test_loss_min_epoch")
    if not (v.get("conclusive") and onset is not None and test_min is not None):
        return []
    return [
        ax.axvspan(
            min(onset, test_min),
            max(onset, test_min),
            color=common.BIASED_COLOR,
            alpha=0.25,
            linewidth=0,
            label="biased generalisation",
        )
    ]


def _verdict_panel(text_ax, text, conclusive):
    """The verdict in words in a box: green when conclusive, red otherwise."""
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
            facecolor="honeydew" if conclusive else "mistyrose",
            edgecolor="grey",
        ),
    )


def fig_bias_vs_test_loss(stats: dict[str, Any], path: str) -> None:
    """Fig. 1a: the bias curve and the held-out loss over training, with the verdict.

    Over the refined grid and with its verdict where snapshots were replayed
    around the extrema (the run's verdict, `verdict.final`).

    Images: the mean sample-split similarity (+-sem), or its median over twin
    pairs where the protocol aggregates by the median; tokens: the NN
    divergence. The test loss (+-sem) is on the right axis. The onset and test-loss minimum
    are dashed, their bootstrap 95% intervals shaded; the span between them is
    the biased-generalisation phase when the verdict is conclusive.
    """
    # The tokens' bias curve is the NN divergence; the images' the sample-split similarity.
    tokens = setting_lib.of(stats["setting"]).bias_statistic == "nn_divergence"
    refined = bool(stats.get("refined"))
    grid_alone = stats.get("verdict") if refined else None
    stats = _on_final_grid(stats, tokens)
    epochs = common.epochs_of(stats)
    text = _verdict_text(stats, grid_alone)
    # The verdict panel grows with the number of reasons listed, so nothing is clipped.
    text_height = 0.2 + 0.17 * (text.count("\n") + 1)
    fig = common.new_figure(8, 5.6 + text_height)
    ax, text_ax = fig.subplots(2, 1, height_ratios=[5.2, text_height])
    common.epoch_axis(ax, epochs)
    handles = [_bias_curve(ax, stats, epochs, tokens), _test_loss_curve(ax, stats, epochs)]
    handles = [h for h in handles if h is not None]
    v = stats.get("verdict") or {}
    handles += common.mark_snapshots(ax, stats)
    handles += _verdict_spans(ax, v)
    ax.set_title(
        f"{'NN divergence' if tokens else 'Sample-split similarity'} and test loss over training"
        + (f" (refined grid, {len(epochs)} snapshots;" if refined else " (")
        + " shaded: 95% intervals)"
    )
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=3,
        fontsize="small",
        frameon=False,
    )
    _verdict_panel(text_ax, text, v.get("conclusive"))
    common.save(fig, path)


def fig_similarity_histograms(stats: dict[str, Any], path: str) -> None:
    """App. Fig. 8: histograms of the coupled twins' similarity over training.

    Left: the first, onset, test-loss-minimum and last snapshots overlaid;
    right: every snapshot as a heat map (fraction of pairs per bin).
    """
    epochs = common.epochs_of(stats)
    edges = common.vector(stats["sample_split"]["edges"])
    hist = common.matrix(stats["sample_split"]["hist"], len(edges) - 1)[:, : len(edges) - 1]
    centers = 0.5 * (edges[1:] + edges[:-1])
    fractions = np.stack([common.fraction(h) for h in hist])
    xlabel = setting_lib.of(stats["setting"]).similarity_label
    fig = common.new_figure(11, 4.5)
    left, right = fig.subplots(1, 2, width_ratios=[1.2, 1])
    keys = common.key_snapshots(stats)
    for (i, label), color in zip(keys, common.colors(len(keys), "plasma")):
        if np.isfinite(fractions[i]).any():
            left.step(
                centers,
                fractions[i],
                where="mid",
                color=color,
                label=f"epoch {common.fmt(epochs[i])} ({label})",
            )
    left.set_xlabel(xlabel)
    left.set_ylabel("fraction of coupled pairs")
    left.set_title("Similarity of coupled twin samples")
    common.legend(left, loc="upper left")

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
    right.set_yticks(ticks, [common.fmt(epochs[i]) for i in ticks])
    right.set_ylabel("epoch of the snapshot")
    right.set_xlabel(xlabel)
    right.set_title("All snapshots")
    fig.colorbar(image, ax=right, label="fraction of pairs")
    common.save(fig, path)


def fig_nearest(stats: dict[str, Any], path: str) -> None:
    """Nearest-neighbour distances and memorisation fractions over training."""
    epochs = common.epochs_of(stats)
    near = stats["nearest"]
    fig = common.new_figure(11, 4.5)
    left, right = fig.subplots(1, 2)
    distances = []
    for key, label, color in (
        ("own_d1", "samples to own training set", "C0"),
        ("other_d1", "samples to closest other set", "C1"),
        ("heldout_d1", "held-out items to training sets", "C2"),
    ):
        if near.get(key) is not None:
            distances.append(common.vector(near[key]))
            common.line(left, epochs, distances[-1], color=color, label=label)
    common.mark_snapshots(left, stats, labels=False)
    common.epoch_axis(left, epochs)
    common.value_axis(left, "mean NN distance", *distances)
    left.set_title("Distance to the nearest training item")
    common.legend(left, loc="best")

    for values, label, color in (
        (near.get("closer_to_own"), "samples closer to own set", "C0"),
        (near.get("memorized_fraction"), "memorised samples (d1/d2 < 1/3)", "C4"),
        (near.get("heldout_memorized_fraction"), "held-out with d1/d2 < 1/3", "C2"),
        (near.get("copy_fraction"), "exact copies (d1 = 0)", "C5"),
        (stats.get("membership_auc"), "membership ROC AUC (loss)", "C3"),
    ):
        if values is not None:
            common.line(right, epochs, common.vector(values), color=color, label=label)
    right.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    common.mark_snapshots(right, stats, labels=False)
    common.epoch_axis(right, epochs)
    right.set_ylabel("fraction / AUC (dotted: 0.5, chance for the AUC)")
    right.set_title("Memorisation and membership inference")
    common.legend(right, loc="best")
    fig.suptitle("Nearest neighbours in the training sets (dashed: onset, test-loss minimum)")
    common.save(fig, path)


def fig_same_split(stats: dict[str, Any], path: str) -> None:
    """Fig. 1b's control: same-split pairs (one split, two seeds) beside cross-split pairs."""
    epochs = common.epochs_of(stats)
    entry = stats["same_split"]
    fig = common.new_figure(7, 4.5)
    ax = fig.subplots()
    sim = entry["similarity"]
    for group, label, color in (
        ("same", f"same split, other seed ({entry['pairs']['same']} pairs)", "C2"),
        ("cross", f"different splits ({entry['pairs']['cross']} pairs)", "C0"),
    ):
        curve = sim[group]
        common.line(
            ax,
            epochs,
            common.vector(curve["mean"]),
            sem=common.vector(curve["sem"]),
            color=color,
            label=label,
        )
    common.mark_snapshots(ax, stats)
    part = entry.get("part_epoch")
    if part is not None:
        ax.axvline(
            part,
            color="C2",
            linestyle=":",
            linewidth=1.2,
            label=f"they part ({common.fmt(part)}; 3 paired s.e. apart from there on)",
        )
    common.epoch_axis(ax, epochs)
    ax.set_ylabel("similarity of coupled samples (+-s.e.m.)")
    common.legend(ax, loc="best")
    ax.set_title("Twins of one split against twins of different splits")
    common.save(fig, path)
