"""The figures of the controlled (token) setting: nearest-neighbour distances, KL(BP_k || model),
the loss decomposition and the U-turn.
"""

from typing import Any

import numpy as np

from diffusion_bias.figures import common


def fig_nn_histograms(stats: dict[str, Any], path: str) -> None:
    """Fig. 4a (right): NN Hamming-distance histograms of samples vs held-out data."""
    epochs = common.epochs_of(stats)
    heldout = common.vector(stats["nn_hist"].get("heldout"))
    generated = common.matrix(stats["nn_hist"]["generated"], 0 if heldout is None else len(heldout))
    fig = common.new_figure(11, 4.5)
    left, right = fig.subplots(1, 2, width_ratios=[1.2, 1])
    # The sequence length L is not in the dict: bins are shown by index (20 bins on [0, L]).
    bins = np.arange(generated.shape[1])
    if heldout is not None:
        left.bar(
            bins[: len(heldout)],
            common.fraction(heldout),
            width=0.9,
            color="lightgrey",
            label="held-out sequences (pooled over twins)",
        )
    keys = common.key_snapshots(stats)
    for (i, label), color in zip(keys, common.colors(len(keys), "plasma")):
        if np.isfinite(generated[i]).any():
            left.step(
                bins,
                common.fraction(generated[i]),
                where="mid",
                color=color,
                label=f"generated (pooled over twins), epoch {common.fmt(epochs[i])} ({label})",
            )
    left.set_xlabel(f"NN Hamming distance bin ({len(bins)} equal bins on [0, L])")
    left.set_ylabel("fraction of sequences")
    left.set_title("Distance to the nearest training sequence")
    common.legend(left, loc="best")

    grammatical = stats.get("grammatical_fraction")
    if grammatical is not None:
        common.line(
            right, epochs, common.vector(grammatical), color="C2", label="grammatical samples"
        )
    common.mark_snapshots(right, stats)
    common.epoch_axis(right, epochs)
    right.set_ylabel("fraction of grammatical samples")
    right.set_title("Samples the grammar can emit")
    common.legend(right, loc="best")
    common.save(fig, path)


def fig_sequential_learning(stats: dict[str, Any], path: str) -> None:
    """Fig. 1b / 6: KL(BP_k || model) per k, and the twins' KL, over training."""
    epochs = common.epochs_of(stats)
    ks = stats["kl_bp"].get("k")
    values = common.matrix(stats["kl_bp"]["values"], len(ks or []))
    ks = list(ks or range(values.shape[1]))
    fig = common.new_figure(8, 5)
    ax = fig.subplots()
    plotted = []
    for j, (k, color) in enumerate(zip(ks, common.colors(len(ks)))):
        common.line(ax, epochs, values[:, j], color=color, label=f"KL(BP_{k} || model)")
        plotted.append(values[:, j])
    twin = common.vector(stats.get("twin_kl"))
    if twin is not None:
        common.line(
            ax,
            epochs,
            twin,
            color="black",
            linestyle="--",
            label="sample split KL(model_a || model_b)",
        )
        plotted.append(twin)
    common.mark_snapshots(ax, stats)
    common.epoch_axis(ax, epochs)
    common.value_axis(ax, "KL per sequence (summed over tokens), critical time", *plotted)
    ax.set_title("Sequential learning: exact factorised scores BP_k vs the model (BP_0 is exact)")
    common.legend(ax, loc="best")
    common.save(fig, path)


def fig_kl_along_t(stats: dict[str, Any], path: str) -> None:
    """Fig. 3b: score divergences per sequence along t/T, at the onset and test-loss minimum.

    A panel per snapshot: KL(BP_k || model), whose peak (dotted) is where the
    model departs most from the k-factorised exact score. A last panel, where
    computed, in the authors' direction: KL(BP_0 || BP_k), which knows no data
    and peaks at the critical time, beside KL(BP_0 || model) at each snapshot.
    """
    along = stats["kl_bp_along_t"]
    ratios = common.vector(along["ratios"])
    ks = list(along.get("k") or [])
    epochs = along.get("epochs") or []
    indices = common.snapshot_indices(stats, along)
    exact = along.get("from_exact")
    panels = max(1, len(epochs)) + (1 if exact else 0)
    fig = common.new_figure(4.8 * panels + 1, 4.5)
    all_axes = np.atleast_1d(fig.subplots(1, panels, squeeze=False)[0])
    axes = all_axes[:-1] if exact else all_axes
    for ax in axes[1:]:
        ax.sharey(axes[0])
    for i, (ax, epoch) in enumerate(zip(axes, epochs)):
        values = common.matrix(along["values"][i], len(ratios)) if along["values"][i] else None
        for j, (k, color) in enumerate(zip(ks, common.colors(len(ks)))):
            if values is None or j >= len(values):
                continue
            common.line(ax, ratios, values[j], color=color, label=f"KL(BP_{k} || model)")
            peak = (along.get("peak_ratio") or [[]])[i]
            if j < len(peak or []) and peak[j] is not None:
                ax.axvline(peak[j], color=color, linestyle=":", linewidth=0.8)
        role = common.verdict_roles(stats, indices[i])
        ax.set_title(f"{role}: epoch {common.fmt(epoch)}")
        ax.set_xlabel("t/T")
        common.legend(ax, loc="best")
    # The panels share their y-axis: one scale for all of them.
    common.value_axis(
        axes[0],
        "KL divergence per sequence (summed over tokens)",
        *[common.matrix(v) for v in along["values"] if v],
    )
    if exact:
        _from_exact_panel(all_axes[-1], stats, exact, ratios, epochs, indices)
    fig.suptitle("Score divergence along time (dotted: peak of each curve)")
    common.save(fig, path)


def _from_exact_panel(ax, stats, exact, ratios, epochs, indices):
    """KL(BP_0 || BP_k) for each k (solid, peaks dotted) and KL(BP_0 || model) (dashed)."""
    curves = [common.vector(row) for row in exact.get("bp") or []]
    for row, k, color in zip(curves, exact.get("k") or [], common.colors(len(curves))):
        common.line(ax, ratios, row, color=color, label=f"KL(BP_0 || BP_{k})")
    for peak, color in zip(exact.get("bp_peak_ratio") or [], common.colors(len(curves))):
        if peak is not None:
            ax.axvline(peak, color=color, linestyle=":", linewidth=0.8)
    for i, (row, epoch) in enumerate(zip(exact.get("model") or [], epochs)):
        model = common.vector(row)
        curves.append(model)
        role = common.verdict_roles(stats, indices[i])
        common.line(
            ax,
            ratios,
            model,
            color=f"C{3 + i}",
            linestyle="--",
            label=f"KL(BP_0 || model), {role} (epoch {common.fmt(epoch)})",
        )
    ax.set_title("From exact BP (the authors' Fig. 3b)")
    ax.set_xlabel("t/T")
    common.value_axis(ax, "KL divergence per sequence (summed over tokens)", *curves)
    common.legend(ax, loc="best")


def fig_loss_decomposition(stats: dict[str, Any], path: str) -> None:
    """Fig. 4b: CE = l* (distillation of exact BP) + l~ (data-dependent excess)."""
    epochs = common.epochs_of(stats)
    dec = stats["loss_decomposition"]
    fig = common.new_figure(11, 4.5)
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
                    plotted.append(common.vector(values))
                    common.line(
                        ax,
                        epochs,
                        plotted[-1],
                        color=color,
                        linestyle=style,
                        label=f"{symbol} on {data} data, {when}",
                    )
        common.mark_snapshots(ax, stats, labels=False)
        common.epoch_axis(ax, epochs)
        common.legend(ax, loc="best")
        log[part] = common.value_axis(
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
    common.save(fig, path)


def fig_uturn(stats: dict[str, Any], path: str) -> None:
    """Fig. 5: U-turn overlap ratio model/BP vs noise level, at the onset and test-loss min.

    `uturn.epochs` lists the snapshots the U-turn was run at (the analysis runs
    it only at the bias onset and the test-loss minimum: it is costly).
    """
    uturn = stats["uturn"]
    ratios = common.vector(uturn["ratios"])
    train = common.matrix(uturn.get("train"), len(ratios))
    heldout = common.matrix(uturn.get("heldout"), len(ratios))
    roles = [common.verdict_roles(stats, i) for i in common.snapshot_indices(stats, uturn)]
    fig = common.new_figure(4.5 * len(roles) + 1, 4.5)
    axes = np.atleast_1d(fig.subplots(1, len(roles), sharey=True, squeeze=False)[0])
    for i, (ax, name) in enumerate(zip(axes, roles)):
        for values, label, color in ((train, "training", "C0"), (heldout, "held-out", "C1")):
            if values is not None:
                common.line(
                    ax, ratios, values[i, : len(ratios)], color=color, label=f"{label} sequences"
                )
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("noise level t/T of the U-turn")
        ax.set_title(f"{name}: epoch {common.fmt(uturn['epochs'][i])}")
        common.legend(ax, loc="best")
    axes[0].set_ylabel("overlap with the original, model / exact BP")
    fig.suptitle("U-turn: noise, then denoise back (dotted: as good as exact BP)")
    common.save(fig, path)


def fig_uturn_random(stats: dict[str, Any], path: str) -> None:
    """Fig. 11: the U-turn on uniform random sequences, the model beside BP_k and memorisation."""
    entry = stats["uturn_random"]
    ratios = common.vector(entry["ratios"])
    fig = common.new_figure(7, 4.5)
    ax = fig.subplots()
    bp = common.matrix(entry["bp"], len(ratios))
    # Black to mid grey: the lightest greys would vanish on white.
    shades = common.colors(len(bp) + 2, cmap="Greys_r")
    for k, (row, sem) in enumerate(zip(bp, common.matrix(entry["bp_sem"], len(ratios)))):
        label = "exact BP (k = 0)" if k == 0 else f"BP_{k}"
        common.line(ax, ratios, row, sem=sem, color=shades[k], linestyle=":", label=label)
    common.line(
        ax,
        ratios,
        common.vector(entry["memorizing"]),
        sem=common.vector(entry["memorizing_sem"]),
        color="C3",
        linestyle="--",
        label=f"memorising denoiser ({entry['memorizing_items']} training sequences)",
    )
    indices = common.snapshot_indices(stats, entry)
    palette = common.colors(len(indices))
    for j, i in enumerate(indices):
        common.line(
            ax,
            ratios,
            common.vector(entry["model"][j]),
            sem=common.vector(entry["model_sem"][j]),
            color=palette[j],
            label=f"model, {common.verdict_roles(stats, i)}: epoch {common.fmt(entry['epochs'][j])}",
        )
    ax.set_xlabel("noise level t/T of the U-turn")
    ax.set_ylabel("overlap with the random sequence (+-s.e.m.)")
    ax.set_title(f"U-turn on {entry['items']} uniform random sequences")
    common.legend(ax, loc="best")
    common.save(fig, path)
