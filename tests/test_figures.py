"""Figures from synthetic statistics dicts that follow `summary.STATISTICS_SCHEMA`."""

import json
import os

from matplotlib import image as mpimg
import numpy as np
import pytest

from diffusion_bias import figures
from diffusion_bias.figures import common

IMAGE_FIGURES = {
    "fig_bias_vs_test_loss",
    "fig_similarity_histograms",
    "fig_score_cosine",
    "fig_nearest",
    "fig_examples",
}
TOKEN_FIGURES = {
    "fig_bias_vs_test_loss",
    "fig_similarity_histograms",
    "fig_nearest",
    "fig_nn_histograms",
    "fig_sequential_learning",
    "fig_kl_along_t",
    "fig_loss_decomposition",
    "fig_uturn",
}


def _verdict(epochs, conclusive):
    if not conclusive:
        # What verdict.decide returns when no checkpoint is valid: no epochs, no intervals.
        return dict(
            conclusive=False,
            reasons=["no checkpoint is valid for the NN divergence"],
            bias_onset_epoch=None,
            test_loss_min_epoch=None,
            gap_epochs=None,
            bias_onset_index=None,
            test_loss_min_index=None,
            bias_statistic="nn_divergence (minimum)",
        )
    onset_index, test_min_index = len(epochs) // 3, (2 * len(epochs)) // 3
    onset, test_min = epochs[onset_index], epochs[test_min_index]
    return dict(
        bias_onset_index=onset_index,
        test_loss_min_index=test_min_index,
        bias_onset_epoch=onset,
        bias_onset_interval=[epochs[0], epochs[len(epochs) // 2]],
        test_loss_min_epoch=test_min,
        test_loss_min_interval=[onset, epochs[-1]],
        gap_epochs=test_min - onset,
        gap_interval=[0.5 * (test_min - onset), test_min - onset],
        conclusive=len(epochs) > 2,
        reasons=[] if len(epochs) > 2 else ["the test loss is lowest at the first snapshot"],
        bias_statistic="sample_split similarity (peak)",
    )


def synthetic_stats(setting, num_checkpoints=8, num_twins=3, conclusive=True, seed=0):
    """A statistics dict shaped like `summary.summarize`'s, with plausible curves."""
    rng = np.random.default_rng(seed)
    c = num_checkpoints
    epochs = np.geomspace(10, 2000, c) if c > 1 else np.array([100.0])
    s = np.linspace(0, 1, c)
    bump = np.exp(-(((s - 0.35) / 0.25) ** 2))
    bins = 20 if setting == "tokens" else 40
    edges = np.linspace(0, 1, bins + 1) if setting == "tokens" else np.linspace(-1, 1, bins + 1)
    stats = dict(
        setting=setting,
        checkpoints=epochs.tolist(),
        steps=[int(2 * e) for e in epochs],
        test_loss=(1.0 - 0.5 * s + 0.6 * s**2).tolist(),
        test_loss_sem=(0.01 + 0.0 * s).tolist(),
        train_loss=(1.0 - 0.7 * s).tolist(),
        sample_split=dict(
            mean=(0.3 + 0.5 * bump).tolist(),
            sem=(0.02 + 0.0 * s).tolist(),
            hist=rng.integers(0, 50, (c, bins)).tolist(),
            edges=edges.tolist(),
        ),
        nearest=dict(
            own_d1=(5 - 3 * s).tolist(),
            other_d1=(5 - s).tolist(),
            heldout_d1=(5 - s).tolist(),
            closer_to_own=(0.5 + 0.4 * s).tolist(),
            memorized_fraction=(0.5 * s**2).tolist(),
            heldout_memorized_fraction=(0.05 * s).tolist(),
        ),
        membership_auc=(0.5 + 0.3 * s).tolist(),
    )
    stats["verdict"] = _verdict(epochs.tolist(), conclusive)
    if setting == "images":
        times = [50, 100, 150, 200]
        stats["score_cosine"] = dict(
            t=times,
            heldout=(0.9 - 0.1 * s[:, None] * np.arange(1, 5)).tolist(),
            train=(0.9 - 0.2 * s[:, None] * np.arange(1, 5)).tolist(),
        )
        stats["examples"] = dict(
            epoch=stats["verdict"]["bias_onset_epoch"] or epochs[0],
            samples=rng.normal(size=(num_twins, 4, 8, 8)).tolist(),
            nearest=rng.normal(size=(num_twins, 4, 8, 8)).tolist(),
        )
        return stats
    ratios = [0.01, 0.03, 0.06, 0.09, 0.12]
    stats.update(
        grammatical_fraction=(0.2 + 0.7 * s).tolist(),
        nn_divergence=(1.0 - 0.8 * bump).tolist(),
        nn_hist=dict(
            generated=rng.integers(0, 100, (c, 20)).tolist(),
            heldout=rng.integers(0, 100, 20).tolist(),
        ),
        twin_kl=(0.5 - 0.4 * bump).tolist(),
        kl_bp=dict(
            k=list(range(5)), values=(0.1 + np.outer(1 - 0.5 * s, np.arange(1, 6))).tolist()
        ),
        uturn=dict(
            ratios=ratios,
            indices=[c // 3, (2 * c) // 3],
            epochs=[float(epochs[c // 3]), float(epochs[(2 * c) // 3])],
            train=(1.0 - 0.1 * np.outer(1 - s[[c // 3, (2 * c) // 3]], ratios)).tolist(),
            heldout=(1.0 - 0.2 * np.outer(1 - s[[c // 3, (2 * c) // 3]], ratios)).tolist(),
        ),
        kl_bp_along_t=dict(
            ratios=(np.arange(1, 26) / 25).tolist(),
            steps=list(range(20, 501, 20)),
            k=list(range(5)),
            indices=[c // 3, (2 * c) // 3],
            epochs=[float(epochs[c // 3]), float(epochs[(2 * c) // 3])],
            values=[
                [
                    ((k + 1) * np.exp(-(((np.arange(1, 26) / 25 - 0.15) / 0.1) ** 2))).tolist()
                    for k in range(5)
                ]
                for _ in range(2)
            ],
            peak_ratio=[[0.16] * 5, [0.16] * 5],
            from_exact=dict(
                k=[1, 2, 3, 4],
                bp=[
                    (k * np.exp(-(((np.arange(1, 26) / 25 - 0.15) / 0.1) ** 2))).tolist()
                    for k in range(1, 5)
                ],
                bp_peak_ratio=[0.16] * 4,
                model=[(0.5 + 0.1 * np.arange(25)).tolist() for _ in range(2)],
            ),
        ),
        loss_decomposition=dict(
            t_ratio=0.3,
            l_star_train_mean_t=(1.2 - 0.5 * s).tolist(),
            l_tilde_train_mean_t=(-0.2 * s).tolist(),
            l_star_heldout_mean_t=(1.2 - 0.4 * s).tolist(),
            l_tilde_heldout_mean_t=(0.02 * s).tolist(),
            l_star_train=(1 - 0.5 * s).tolist(),
            l_tilde_train=(-0.1 * s).tolist(),
            l_star_heldout=(1 - 0.4 * s).tolist(),
            l_tilde_heldout=(0.01 * s).tolist(),
        ),
    )
    return stats


@pytest.fixture
def low_dpi(monkeypatch):
    """Robustness tests need a PNG, not a sharp one: half the pixels, faster."""
    monkeypatch.setattr(common, "DPI", 60)


def _check_pngs(paths, expected, out_dir):
    names = {os.path.splitext(os.path.basename(p))[0] for p in paths}
    assert names == expected
    for path in paths:
        assert os.path.dirname(path) == str(out_dir)
        assert os.path.getsize(path) > 5000
        pixels = mpimg.imread(path)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 150
        # Something was drawn: not a blank canvas.
        assert pixels[..., :3].std() > 0.01


@pytest.mark.parametrize("setting", ["images", "tokens"])
def test_draws_the_setting_figures_only(setting, tmp_path):
    stats = synthetic_stats(setting)
    out = tmp_path / "analysis"
    paths = figures.draw_all(stats, str(out), strict=True)
    expected = IMAGE_FIGURES if setting == "images" else TOKEN_FIGURES
    _check_pngs(paths, expected, out)
    other = TOKEN_FIGURES - IMAGE_FIGURES if setting == "images" else IMAGE_FIGURES - TOKEN_FIGURES
    assert not other & {os.path.splitext(os.path.basename(p))[0] for p in paths}


def test_inconclusive_verdict_nan_and_none_entries(tmp_path, low_dpi):
    stats = synthetic_stats("tokens", conclusive=False)
    stats["nn_divergence"][2] = None
    stats["test_loss"][3] = float("nan")
    stats["kl_bp"]["values"][1] = None
    stats["nn_hist"]["generated"][0] = None
    stats["uturn"]["heldout"][-1][1] = None
    stats["loss_decomposition"]["l_tilde_heldout"] = None
    stats["kl_bp_along_t"]["values"][1][2] = [None] * 25
    stats["sample_split"]["hist"] = [None] * len(stats["checkpoints"])
    stats["uturn"]["train"][1] = stats["uturn"]["train"][1][:2]  # a short row
    # NaN survives the JSON round trip the figures are drawn from.
    stats = json.loads(json.dumps(stats))
    paths = figures.draw_all(stats, str(tmp_path), strict=True)
    _check_pngs(paths, TOKEN_FIGURES, tmp_path)


def test_one_checkpoint_and_no_verdict(tmp_path, low_dpi):
    stats = synthetic_stats("images", num_checkpoints=1)
    del stats["verdict"]
    paths = figures.draw_all(stats, str(tmp_path), strict=True)
    _check_pngs(paths, IMAGE_FIGURES, tmp_path)


def test_key_snapshots_are_the_verdicts_indices_or_its_epochs_in_an_older_file(tmp_path, low_dpi):
    stats = synthetic_stats("tokens", num_checkpoints=9)
    expected = [(0, "first"), (3, "bias onset"), (6, "test-loss min"), (8, "last")]
    assert common.key_snapshots(stats) == expected
    # A statistics.json written before the verdict carried indices: found by epoch.
    older = json.loads(json.dumps(stats))
    for key in ("bias_onset_index", "test_loss_min_index"):
        del older["verdict"][key]
    assert common.key_snapshots(older) == expected
    paths = figures.draw_all(older, str(tmp_path), strict=True)
    _check_pngs(paths, TOKEN_FIGURES, tmp_path)
    # An inconclusive verdict without an onset marks the ends alone.
    none = synthetic_stats("tokens", num_checkpoints=9, conclusive=False)
    assert common.key_snapshots(none) == [(0, "first"), (8, "last")]


def test_snapshot_at_epoch_zero(tmp_path, low_dpi):
    stats = synthetic_stats("images", num_checkpoints=5)
    stats["checkpoints"][0] = 0.0  # no log axis: symlog instead
    figures.fig_bias_vs_test_loss(stats, str(tmp_path / "fig.png"))
    assert mpimg.imread(tmp_path / "fig.png").shape[0] > 150


@pytest.mark.parametrize("num_twins", [2, 15])
def test_twin_counts(num_twins, tmp_path, low_dpi):
    stats = synthetic_stats("images", num_checkpoints=4, num_twins=num_twins)
    path = tmp_path / "examples.png"
    figures.fig_examples(stats, str(path))
    pixels = mpimg.imread(path)
    assert pixels.shape[0] > pixels.shape[1] * (1.5 if num_twins == 15 else 0.2)


def test_missing_keys_skip_figures_and_failures_are_contained(tmp_path):
    stats = synthetic_stats("images")
    for key in ("score_cosine", "examples", "sample_split"):
        del stats[key]
    stats["nearest"] = "broken"  # present, but not the schema's dict
    paths = figures.draw_all(stats, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == []
    with pytest.raises(AttributeError):
        figures.draw_all(stats, str(tmp_path), strict=True)


def _drawn(monkeypatch, fig_fn, stats, path):
    """The Figure that fig_fn draws (captured instead of saved)."""
    drawn = []
    monkeypatch.setattr(common, "save", lambda fig, _: drawn.append(fig))
    fig_fn(stats, path)
    return drawn[0]


def test_nn_divergence_spanning_decades_is_drawn_on_a_log_axis(monkeypatch, tmp_path):
    stats = synthetic_stats("tokens")
    c = len(stats["checkpoints"])
    # The grammar probe's shape: 27 at the start, a minimum of 0.032, then up to 0.17.
    stats["nn_divergence"] = np.interp(np.arange(c), [0, c // 2, c - 1], [27, 0.032, 0.17]).tolist()
    fig = _drawn(monkeypatch, figures.fig_bias_vs_test_loss, stats, str(tmp_path / "a.png"))
    bias_ax, loss_ax = fig.axes[0], fig.axes[-1]
    assert bias_ax.get_yscale() == "log" and "log scale" in bias_ax.get_ylabel()
    lo, hi = bias_ax.get_ylim()
    assert lo < 0.032 and hi > 27  # the minimum is inside the axis, not on its floor
    assert loss_ax.get_yscale() == "linear"  # the test loss varies within a factor of 2


@pytest.mark.parametrize("setting", ["tokens", "images"])
def test_a_refined_run_is_drawn_over_its_refined_grid_with_its_verdict(
    monkeypatch, tmp_path, setting
):
    stats = synthetic_stats(setting)
    epochs = list(stats["checkpoints"])
    # Two snapshots replayed between the first two of the grid; the refined verdict
    # places the onset on one of them.
    fine = sorted(epochs + [0.5 * (epochs[1] + epochs[2]), 0.5 * (epochs[2] + epochs[3])])
    onset = fine[2]
    v = dict(stats["verdict"], bias_onset_epoch=onset, bias_onset_index=2, conclusive=True)
    stats["refined"] = dict(
        checkpoints=fine,
        steps=list(range(len(fine))),
        test_loss=np.linspace(2, 1, len(fine)).tolist(),
        test_loss_sem=[0.01] * len(fine),
        bias=np.linspace(1, 2, len(fine)).tolist(),
        verdict=v,
    )
    stats["verdict"] = dict(stats["verdict"], conclusive=False, reasons=["flat"])
    fig = _drawn(monkeypatch, figures.fig_bias_vs_test_loss, stats, str(tmp_path / "r.png"))
    bias_ax, text_ax = fig.axes[0], fig.axes[1]
    assert len(bias_ax.lines[0].get_xdata()) == len(fine)
    assert onset in [line.get_xdata()[0] for line in bias_ax.lines[1:]]  # the refined onset
    assert f"refined grid, {len(fine)} snapshots" in bias_ax.get_title()
    text = text_ax.texts[0].get_text()
    assert "Conclusive" in text and "On the log-spaced grid alone: inconclusive" in text


def test_curves_within_two_decades_or_not_positive_stay_linear(monkeypatch, tmp_path):
    assert figures.spans_decades([27, 0.032, 0.17])
    assert not figures.spans_decades([1.0, 0.5, 0.02])  # max / min = 50
    assert not figures.spans_decades([30, 0.0, 0.1])  # a zero: no log axis
    assert not figures.spans_decades([30, -0.01, 0.1], None)
    assert figures.spans_decades([np.nan, 1e-3], [1.0])  # NaN skipped, curves pooled
    fig = _drawn(
        monkeypatch, figures.fig_bias_vs_test_loss, synthetic_stats("tokens"), str(tmp_path / "b")
    )
    assert fig.axes[0].get_yscale() == "linear"


def test_kl_along_t_and_decomposition_take_a_log_axis_from_their_range(monkeypatch, tmp_path):
    stats = synthetic_stats("tokens")
    along = stats["kl_bp_along_t"]
    along["values"] = (1e-3 + np.asarray(along["values"])).tolist()  # 1e-3 .. 5: decades
    fig = _drawn(monkeypatch, figures.fig_kl_along_t, stats, str(tmp_path / "c"))
    assert fig.axes[0].get_yscale() == "log"
    fig = _drawn(monkeypatch, figures.fig_loss_decomposition, stats, str(tmp_path / "d"))
    # l* within a factor of 2, l~ crosses zero: both linear.
    assert [ax.get_yscale() for ax in fig.axes] == ["linear", "linear"]


@pytest.mark.parametrize("written_before_indices", [False, True])
def test_per_snapshot_panels_are_titled_by_the_verdict_snapshot_they_show(
    monkeypatch, tmp_path, written_before_indices
):
    stats = synthetic_stats("tokens")
    if written_before_indices:  # an older statistics.json: found by epoch
        for entry in (stats["uturn"], stats["kl_bp_along_t"], stats["verdict"]):
            for key in ("indices", "bias_onset_index", "test_loss_min_index"):
                entry.pop(key, None)
    for fig_fn in (figures.fig_uturn, figures.fig_kl_along_t):
        fig = _drawn(monkeypatch, fig_fn, stats, str(tmp_path / "p"))
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        assert titles[0].startswith("bias onset: epoch") and titles[1].startswith("test-loss min")
    # One snapshot both the onset and the minimum: both names in its title.
    if not written_before_indices:
        stats["verdict"]["test_loss_min_index"] = stats["verdict"]["bias_onset_index"]
    stats["verdict"]["test_loss_min_epoch"] = stats["verdict"]["bias_onset_epoch"]
    fig = _drawn(monkeypatch, figures.fig_uturn, stats, str(tmp_path / "q"))
    assert fig.axes[0].get_title().startswith("bias onset = test-loss min: epoch")
