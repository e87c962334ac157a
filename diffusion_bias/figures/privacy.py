"""The membership audit over training: epsilon lower bound and TPR at low FPR, ROC curves."""

from typing import Any

import numpy as np

from diffusion_bias.figures import common


def _strongest(p, field, column):
    """[C] the strongest score's value of `field` ({score: [C][F]}) at `column`."""
    values = [p[field][s][i][column] for i, s in enumerate(p["strongest"])]
    return common.vector(values)


def _intervals(p, column):
    """[C, 2] the strongest score's TPR interval at FPR `column`."""
    return np.array([row[column] for row in p["tpr_interval"]], dtype=float)


def fig_privacy(stats: dict[str, Any], path: str) -> None:
    """Left: the one-run epsilon bound and the TPR at 1% and 0.1% FPR over training, beside
    the test loss, onset and minimum marked. Right: ROC curves on log-log axes."""
    p = stats["privacy"]
    epochs = common.epochs_of(stats)
    fig = common.new_figure(12, 4.6)
    left, right = fig.subplots(1, 2)
    eps = common.vector(p["epsilon"])
    common.line(left, epochs, eps, color="C4", label=f"epsilon >= ({100 * p['confidence']:g}%)")
    left.set_ylabel(f"one-run epsilon lower bound (delta = {p['delta']:g})")
    tpr_ax = left.twinx()
    for column, fpr, color in ((0, p["fprs"][0], "C0"), (1, p["fprs"][1], "C2")):
        tpr = _strongest(p, "tpr", column)
        common.line(tpr_ax, epochs, tpr, color=color, label=f"TPR at {100 * fpr:g}% FPR")
        band = _intervals(p, column)
        ok = np.isfinite(band).all(axis=1) & np.isfinite(epochs)
        if ok.sum() > 1:
            tpr_ax.fill_between(
                epochs[ok], band[ok, 0], band[ok, 1], color=color, alpha=0.15, linewidth=0
            )
    tpr_ax.set_ylabel("TPR of the strongest score (band: bootstrap interval)")
    loss_ax = left.twinx()
    loss_ax.spines["right"].set_position(("axes", 1.18))
    common.line(
        loss_ax,
        epochs,
        common.vector(stats["test_loss"]),
        color=common.LOSS_COLOR,
        linestyle=":",
        label="test loss",
    )
    loss_ax.set_ylabel("held-out loss", color=common.LOSS_COLOR)
    common.mark_snapshots(left, stats)
    common.epoch_axis(left, epochs)
    handles = [h for ax in (left, tpr_ax, loss_ax) for h in ax.get_legend_handles_labels()[0]]
    left.legend(handles=handles, fontsize="small", loc="upper left")
    left.set_title("Membership audit over training")

    roc = p.get("roc") or {}
    for i, (index, score) in enumerate(zip(roc.get("indices", []), roc.get("score", []))):
        fpr, tpr = np.asarray(roc["fpr"][i], float), np.asarray(roc["tpr"][i], float)
        ok = (fpr > 0) & (tpr > 0)
        role = common.verdict_roles(stats, index)
        if index == len(stats["checkpoints"]) - 1 and role == "snapshot":
            role = "last"
        right.plot(
            fpr[ok],
            tpr[ok],
            color=common.colors(len(roc["indices"]))[i],
            label=f"{role}, epoch {common.fmt(roc['epochs'][i])} ({score})",
        )
    right.plot([1e-4, 1], [1e-4, 1], color="grey", linewidth=0.8, linestyle=":")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("false-positive rate (log)")
    right.set_ylabel("true-positive rate (log)")
    right.set_title("ROC of the strongest score (dotted: chance)")
    common.legend(right, loc="lower right")
    fig.suptitle("Privacy: members (own split) against held-out items, evaluation half")
    common.save(fig, path)
