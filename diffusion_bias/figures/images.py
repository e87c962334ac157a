"""The figures of the image setting only: the twins' score cosine and example samples."""

from typing import Any

import matplotlib
from matplotlib.figure import Figure
import numpy as np

from diffusion_bias.figures import common


def fig_score_cosine(stats: dict[str, Any], path: str) -> None:
    """Fig. 2: cosine of the twins' predicted noise on the same noisy inputs, per t."""
    epochs = common.epochs_of(stats)
    score = stats["score_cosine"]
    times = list(score["t"])
    fig = common.new_figure(11, 4.5)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, name in zip(
        axes,
        ("heldout", "train"),
        ("noisy held-out images", "noisy training images (each twin's own)"),
    ):
        values = common.matrix(score.get(key), len(times))
        for j, (t, color) in enumerate(zip(times, common.colors(len(times)))):
            if values is not None:
                common.line(ax, epochs, values[:, j], color=color, label=f"t = {t}")
        common.mark_snapshots(ax, stats)
        common.epoch_axis(ax, epochs)
        ax.set_title(f"On {name}")
        common.legend(ax, loc="best")
    axes[0].set_ylabel("cosine of twins' predicted noise (mean over pairs)")
    fig.suptitle("Score comparison between twin models")
    common.save(fig, path)


def _unit_range(image):
    """The image rescaled to [0, 1] on its own range (NaN stays NaN; flat -> 0.5)."""
    finite = image[np.isfinite(image)]
    if not len(finite):
        return image
    lo, hi = finite.min(), finite.max()
    return (image - lo) / (hi - lo) if hi > lo else np.where(np.isfinite(image), 0.5, np.nan)


def fig_examples(stats: dict[str, Any], path: str) -> None:
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
        f"Coupled twin samples at epoch {common.fmt(examples.get('epoch'))} (bias onset)\n"
        "each above its nearest image in that twin's training set",
        fontsize="medium",
    )
    common.save(fig, path)
