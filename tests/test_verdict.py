"""The verdict: onset and test-loss minimum with bootstrap intervals, or 'inconclusive'."""

import numpy as np

from diffusion_bias import verdict
from diffusion_bias.statistics import nearest

EPOCHS = np.geomspace(10, 1000, 12)


def _noisy_items(curve, noise, rng, n=400):
    return curve[:, None] + noise * rng.standard_normal((len(curve), n))


def _decide(bias_curve, loss_curve, noise=0.01, mode="max", valid=None, seed=0):
    rng = np.random.default_rng(seed)
    bias_items = _noisy_items(np.asarray(bias_curve), noise, rng)
    loss_items = _noisy_items(np.asarray(loss_curve), noise, rng)
    return verdict.decide(
        EPOCHS,
        bias_items.mean(1),
        verdict.bootstrap_mean_curves(bias_items, rng, 300),
        loss_items.mean(1),
        verdict.bootstrap_mean_curves(loss_items, rng, 300),
        mode,
        valid=valid,
    )


def _bump(center, width=1.5):
    x = np.arange(len(EPOCHS))
    return np.exp(-0.5 * ((x - center) / width) ** 2)


def test_clear_peak_before_loss_minimum_is_conclusive_with_a_positive_gap():
    v = _decide(_bump(3), -_bump(8))
    assert v["conclusive"], v["reasons"]
    assert v["bias_onset_epoch"] == EPOCHS[3] and v["test_loss_min_epoch"] == EPOCHS[8]
    assert v["gap_interval"][0] > 0
    lo, hi = v["bias_onset_interval"]
    assert lo <= EPOCHS[3] <= hi


def test_flat_noisy_curve_is_inconclusive():
    v = _decide(np.zeros(len(EPOCHS)), -_bump(8), noise=0.5)
    assert not v["conclusive"]
    assert any("stand out" in r or "snapshot" in r for r in v["reasons"])


def test_extremum_at_the_first_or_last_snapshot_is_not_an_onset():
    v = _decide(np.linspace(0, 1, len(EPOCHS)), -_bump(8))
    assert not v["conclusive"] and any("last valid snapshot" in r for r in v["reasons"])
    v = _decide(_bump(4), np.linspace(1, 0, len(EPOCHS)))
    assert not v["conclusive"] and any("test loss is lowest at the last" in r for r in v["reasons"])


def test_onset_after_the_loss_minimum_is_inconclusive():
    v = _decide(_bump(8), -_bump(3))
    assert not v["conclusive"] and v["gap_epochs"] < 0


def test_invalid_checkpoints_are_not_searched_for_an_onset():
    curve = -_bump(5) - 2 * _bump(1, 0.5)  # deepest minimum early, at an invalid snapshot
    valid = np.arange(len(EPOCHS)) >= 3
    v = _decide(curve, -_bump(9), mode="min", valid=valid)
    assert v["bias_onset_epoch"] == EPOCHS[5]


def test_kl_bootstrap_curves_center_on_the_point_estimates():
    rng = np.random.default_rng(0)
    held = np.repeat(np.arange(5), [50, 300, 400, 200, 50])[None]  # [K=1, m] bins
    gen = np.stack([held, np.repeat(np.arange(5), [400, 300, 200, 50, 50])[None]])  # [C, K, N]
    boot = verdict.bootstrap_binned_kl_curves(gen, held, 5, nearest.histogram_kl, rng, 200)
    counts = [np.bincount(g[0], minlength=5) for g in gen]
    point = [nearest.histogram_kl(c, np.bincount(held[0], minlength=5)) for c in counts]
    assert boot.shape == (200, 2)
    assert boot[:, 0].mean() < 0.02 and abs(np.median(boot[:, 1]) - point[1]) < 0.1


def test_nn_divergence_onset_interval_covers_the_true_minimum_in_about_95_percent_of_runs():
    """Synthetic coupled token runs whose true NN-divergence curve has its minimum at c*.

    At checkpoint c a sample's NN distance comes from the held-out distribution with
    probability 1 - w_c, else from a shifted one; w_c is smallest at c* = 4. Sample j
    is coupled across checkpoints (one uniform u_j decides its branch everywhere),
    as coupled sampling couples it, and the bootstrap must respect that.
    """
    epochs = np.geomspace(10, 1000, 9)
    weights = 0.1 + 0.5 * np.abs(np.arange(9) - 4) / 4  # [C], minimum at 4
    length, num, m, k = 16, 300, 300, 2
    covered = []
    for run in range(60):
        rng = np.random.default_rng(run)
        held = rng.binomial(length, 0.4, (k, m))
        base = rng.binomial(length, 0.4, (k, num))
        shifted = rng.binomial(length, 0.15, (k, num))
        u = rng.uniform(size=(k, num))
        own = np.where(u[None] < weights[:, None, None], shifted[None], base[None])  # [C, K, N]
        curve = nearest.nn_divergence(own, held[None], length).mean(-1)
        boot = verdict.bootstrap_binned_kl_curves(
            nearest.nn_bins(own, length),
            nearest.nn_bins(held, length),
            20,
            nearest.histogram_kl,
            rng,
            200,
        )
        loss = -_bump(8)[np.r_[0:8, 7]]  # any curve: only the onset interval is read
        v = verdict.decide(
            epochs, curve, boot, loss, np.tile(loss, (200, 1)), "min", bias_name="NN divergence"
        )
        lo, hi = v["bias_onset_interval"]
        covered.append(lo <= epochs[4] <= hi)
    assert 0.85 <= np.mean(covered) <= 1.0, np.mean(covered)
