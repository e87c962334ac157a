"""The verdict: onset and test-loss minimum with bootstrap intervals, or 'inconclusive'."""

import numpy as np

from diffusion_bias.instrument import verdict
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


def test_the_verdict_names_the_snapshots_of_its_epochs_by_index():
    for onset, loss_min, mode, valid in (
        (3, 8, "max", None),
        (8, 3, "max", None),
        (5, 9, "min", np.arange(len(EPOCHS)) >= 3),
    ):
        bias = _bump(onset) if mode == "max" else -_bump(onset)
        v = _decide(bias, -_bump(loss_min), mode=mode, valid=valid)
        assert (v["bias_onset_index"], v["test_loss_min_index"]) == (onset, loss_min)
        assert type(v["bias_onset_index"]) is int and type(v["test_loss_min_index"]) is int
        assert EPOCHS[v["bias_onset_index"]] == v["bias_onset_epoch"]
        assert EPOCHS[v["test_loss_min_index"]] == v["test_loss_min_epoch"]
    none = _decide(_bump(3), -_bump(8), valid=np.zeros(len(EPOCHS), bool))
    assert none["bias_onset_index"] is None and none["test_loss_min_index"] is None


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


def test_two_units_are_averaged_and_give_the_item_bootstrap_draw_for_draw():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((5, 2, 40)).astype(np.float32)  # [C, U=2, N]
    units = verdict.bootstrap_mean_curves(values, np.random.default_rng(1), 50)
    items = verdict.bootstrap_mean_curves(values.mean(axis=1), np.random.default_rng(1), 50)
    np.testing.assert_array_equal(units, items)
    bins = rng.integers(0, 5, (4, 2, 60))  # [C, K=2, N]
    held = rng.integers(0, 5, (2, 30))
    a = verdict.bootstrap_binned_kl_curves(
        bins, held, 5, nearest.histogram_kl, np.random.default_rng(2), 20
    )
    rng = np.random.default_rng(2)  # replicate 0 by hand: items, held-out rows, no models
    items, rows = rng.integers(0, 60, 60), rng.integers(0, 30, 30)
    expected = [
        np.mean(
            [
                nearest.histogram_kl(
                    np.bincount(bins[c, k, items], minlength=5),
                    np.bincount(held[k, rows], minlength=5),
                )
                for k in range(2)
            ]
        )
        for c in range(4)
    ]
    np.testing.assert_allclose(a[0], expected, rtol=1e-12)


def test_resampling_three_or_more_units_widens_intervals_when_units_differ():
    rng = np.random.default_rng(0)
    noise = 0.3 * rng.standard_normal((6, 4, 200))  # [C, U, N]
    offsets = np.array([-1.0, -0.3, 0.4, 0.9])[None, :, None]  # units that differ
    spread = lambda b: np.diff(np.percentile(b, [2.5, 97.5], axis=0), axis=0).mean()
    units = verdict.bootstrap_mean_curves(noise + offsets, np.random.default_rng(1), 300)
    items = verdict.bootstrap_mean_curves((noise + offsets).mean(1), np.random.default_rng(1), 300)
    assert spread(units) > 5 * spread(items)
    # Units that agree: resampling them adds little.
    alike = verdict.bootstrap_mean_curves(noise, np.random.default_rng(1), 300)
    assert spread(alike) < 2 * spread(items)


def test_kl_bootstrap_resamples_models_when_there_are_three_or_more():
    rng = np.random.default_rng(0)
    held = rng.integers(0, 5, (3, 300))
    bins = np.repeat(held[None], 2, axis=0)  # [C=2, K=3, N]: every model like the reference
    bins[:, 2] = 4  # but model 2 is far from it
    boot = verdict.bootstrap_binned_kl_curves(bins, held, 5, nearest.histogram_kl, rng, 200)
    # The mean over models moves with how often model 2 is drawn: 0, 1, 2 or 3 times.
    assert boot[:, 0].std() > 0.3 * boot[:, 0].mean()
    np.testing.assert_array_equal(boot[:, 0], boot[:, 1])


def test_onset_interval_over_four_twins_covers_the_population_extremum_in_about_95_percent():
    """Each twin's similarity curve peaks at 4 + s_u (s_u ~ N(0, 1), the spread of
    independently trained twins); the population's mean curve peaks at 4. Resampling
    twins as well as samples covers it in about 95% of runs; samples alone, given
    only 4 twins whose mean peak often sits elsewhere, cover it far less often.
    """
    epochs = np.geomspace(10, 1000, 9)
    x = np.arange(9)
    covered, items_only = [], []
    for run in range(60):
        rng = np.random.default_rng(run)
        shift = rng.standard_normal(4)
        units = np.exp(-0.5 * ((x[:, None] - 4 - shift[None]) / 1.5) ** 2)  # [C, U]
        values = units[:, :, None] + 0.3 * rng.standard_normal((9, 4, 100))
        loss = np.tile(-_bump(7)[:9], (200, 1))  # any curve: only the onset interval is read
        for boot, out in (
            (verdict.bootstrap_mean_curves(values, rng, 200), covered),
            (verdict.bootstrap_mean_curves(values.mean(1), rng, 200), items_only),
        ):
            v = verdict.decide(epochs, values.mean((1, 2)), boot, loss[0], loss, "max")
            lo, hi = v["bias_onset_interval"]
            out.append(lo <= epochs[4] <= hi)
    assert 0.88 <= np.mean(covered) <= 1.0, np.mean(covered)
    assert np.mean(items_only) < 0.85, np.mean(items_only)


def _decided(conclusive=True, **extra):
    v = dict(
        bias_onset_epoch=270.0,
        bias_onset_interval=[260.0, 280.0],
        test_loss_min_epoch=12000.0,
        test_loss_min_interval=[11000.0, 13000.0],
        gap_epochs=11730.0,
        gap_interval=[10800.0, 12700.0],
        conclusive=conclusive,
        reasons=[] if conclusive else ["a", "b"],
        bias_statistic="nn_divergence (minimum)",
    )
    return {**v, **extra}


def test_verdict_in_words_states_onset_minimum_gap_with_intervals_and_the_conclusion():
    words = verdict.in_words(_decided())
    assert list(words) == ["onset", "conclusion"]
    assert words["onset"] == (
        "Bias onset (nn_divergence (minimum)) at epoch 270 [260, 280], test-loss minimum at "
        "epoch 12000 [11000, 13000], gap 11730 [10800, 12700] epochs."
    )
    assert words["conclusion"].startswith("Conclusive")
    assert verdict.in_words(_decided(False))["conclusion"] == "Inconclusive: a; b."
    assert verdict.sentence(_decided()) == " ".join(words.values())


def test_verdict_without_onset_is_only_its_reasons_and_a_gate_names_the_ungated_onset():
    none = dict(conclusive=False, reasons=["no checkpoint is valid"], bias_onset_epoch=None)
    assert verdict.sentence(none) == "Inconclusive: no checkpoint is valid."
    gated = verdict.in_words(_decided(grammaticality_gate=0.5, ungated=_decided(False)))
    assert gated["gate"].startswith("The onset is searched where at least 0.5 of the samples")
    assert (
        "Without that gate (the paper's definition): onset at epoch 270 [260, 280]"
        in (gated["gate"])
    )
    assert gated["gate"].endswith(", inconclusive.")


def test_conclusion_names_the_other_statistics_that_are_conclusive():
    assert verdict.conclusion(_decided()) == "conclusive"
    others = dict(other_statistics={"KL": dict(conclusive=True), "sim": dict(conclusive=False)})
    assert verdict.conclusion(_decided(False, **others)) == "inconclusive (conclusive by KL)"
    assert verdict.number(None) == "n/a" and verdict.number(12000.0) == "12000"
    assert verdict.number(0.123456) == "0.123" and verdict.interval(None) == "n/a"


def test_minimum_contrast_is_the_paired_z_of_the_ends_over_the_minimum():
    rng = np.random.default_rng(0)
    base = rng.normal(1.0, 0.3, 500)  # per-item difficulty, shared by every snapshot
    item_losses = np.stack([base + 0.05, base + rng.normal(0, 0.01, 500), base + 0.02])
    contrast = verdict.minimum_contrast(item_losses, 1)
    for end, key in ((0, "first"), (2, "last")):
        diff = item_losses[end] - item_losses[1]
        expected = diff.mean() / (diff.std(ddof=1) / np.sqrt(500))
        np.testing.assert_allclose(contrast[key], expected, rtol=1e-12)
    # Paired, the shared difficulty cancels: far more standard errors than unpaired.
    unpaired = 0.03 / np.sqrt(2 * 0.3**2 / 500)
    assert contrast["last"] > 10 * unpaired
    assert verdict.minimum_contrast(item_losses, 0)["first"] == 0.0


def test_nn_divergence_curves_aggregate_one_kl_per_model_and_bootstrap_around_it():
    rng = np.random.default_rng(3)
    length = 16
    own = rng.integers(0, length, (5, 3, 400)).astype(np.float64)  # [C, K, N]
    held = rng.integers(4, length, (3, 300)).astype(np.float64)  # [K, m]
    for aggregate, over in (("mean", np.mean), ("median", np.median)):
        curve, boot, per_model = verdict.nn_divergence_curves(
            own, held, length, np.random.default_rng(0), 200, aggregate
        )
        for c in range(5):
            for k in range(3):
                one = nearest.nn_divergence(own[c, k], held[k], length)
                np.testing.assert_allclose(per_model[c, k], one, rtol=1e-12)
        np.testing.assert_allclose(curve, over(per_model, axis=1), rtol=1e-12)
        assert boot.shape == (200, 5)
        # The replicates surround the point estimate (the items are many).
        assert np.all(np.abs(np.median(boot, axis=0) - curve) < 3 * boot.std(axis=0) + 1e-9)


def test_the_final_verdict_is_the_refined_grid_s_where_snapshots_were_replayed():
    grid = dict(verdict=dict(conclusive=False, reasons=["the onset does not precede it"]))
    assert verdict.final(grid) == (grid["verdict"], grid)
    assert verdict.final_sentence(grid) == verdict.sentence(grid["verdict"])
    fine = dict(steps=[1, 2, 3], verdict=dict(conclusive=True))
    stats = dict(grid, refined=fine)
    assert verdict.final(stats) == (fine["verdict"], fine)
    assert verdict.final_sentence(stats) == (
        "On the refined grid (3 snapshots): Conclusive: bias sets in before the test-loss "
        "minimum. (Log-spaced grid alone: inconclusive.)"
    )


def test_the_bias_curve_is_the_same_for_the_analysis_and_the_monitor():
    rng = np.random.default_rng(0)
    sim = rng.random((5, 1, 64))  # [C, P, N]: one pair, as K = 2
    # The analysis passes [C, P, N]; the monitor the mean over pairs [C, N].
    full = verdict.bias_curve("similarity", np.random.default_rng(1), 20, similarity=sim)
    monitor = verdict.bias_curve(
        "similarity", np.random.default_rng(1), 20, similarity=sim.mean(axis=1)
    )
    for a, b in zip(full, monitor):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(full[0], sim.mean(axis=(1, 2)))
    own_d1 = rng.integers(0, 17, (5, 2, 64)).astype(float)  # [C, K, N]
    heldout_d1 = rng.integers(0, 17, (2, 40)).astype(float)  # [K, m]
    curve, boot = verdict.bias_curve(
        "nn_divergence", np.random.default_rng(2), 20,
        own_d1=own_d1, heldout_d1=heldout_d1, length=16,
    )  # fmt: skip
    want = verdict.nn_divergence_curves(own_d1, heldout_d1, 16, np.random.default_rng(2), 20)
    np.testing.assert_array_equal(curve, want[0])
    np.testing.assert_array_equal(boot, want[1])
