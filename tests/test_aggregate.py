"""config.analysis.aggregate: the verdict's curves over twins and twin pairs by the mean or the median.

The authors' CelebA figure (cos_dis_aggregate.py in Experiments/src/Generation/
of davide-beltrame/Why-Diffusion-Models-Don-t-Memorize) takes, per snapshot, the
median over the 105 twin pairs of each pair's mean cosine similarity and the
argmin of 1 - that median (the cosine distance), and the argmin of the median
over the 15 models of each model's test loss. It is re-implemented here in plain
numpy on synthetic arrays where the mean and the median disagree, and compared
with what `summary.summarize` decides.
"""

import numpy as np
import pytest

from configs import smoke
from diffusion_bias import run as run_lib
from diffusion_bias.instrument import record as record_lib
from diffusion_bias.instrument import report
from diffusion_bias.instrument import summary
from diffusion_bias.instrument import verdict

C, N, M = 6, 40, 30  # snapshots, coupled samples per pair, held-out items


def _authors_epochs(epochs, pair_sims, model_losses):
    """The authors' aggregation: (tau_cos, tau_loss) from per-pair and per-model curves.

    pair_sims: [P, C] each pair's mean cosine similarity over its samples;
    model_losses: [K, C] each model's test loss.
    """
    cosine_median = np.nanmedian(pair_sims, axis=0)
    loss_median = np.nanmedian(model_losses, axis=0)
    return epochs[np.argmin(1 - cosine_median)], epochs[np.argmin(loss_median)]


def _image_per_step(num_twins, seed=0):
    """Synthetic image snapshots of `num_twins` twins where most pairs (models) agree.

    With 15 twins: 85 of the 105 pairs peak a little at snapshot 2, 20 peak far
    higher at snapshot 4 (the mean's peak); 10 of the 15 models reach a shallow
    loss minimum at snapshot 3, 5 a deep one at snapshot 1 (the mean's minimum).
    """
    rng = np.random.default_rng(seed)
    pairs = num_twins * (num_twins - 1) // 2
    sim_curve = np.full((C, pairs), 0.5)
    outliers = max(pairs * 20 // 105, 1) if num_twins > 2 else 0
    sim_curve[2, outliers:] += 0.05
    sim_curve[4, :outliers] += 0.4
    loss_curve = np.full((C, num_twins), 1.0)
    deep = num_twins // 3
    loss_curve[3, deep:] -= 0.05
    loss_curve[1, :deep] -= 0.5
    out = []
    for c in range(C):
        noise = 0.01 * rng.standard_normal((pairs, N))
        out.append(
            dict(
                similarity=(sim_curve[c][:, None] + noise).astype(np.float32),
                test_losses=loss_curve[c][:, None] + 0.01 * rng.standard_normal((num_twins, M)),
                train_losses=rng.random((num_twins, 16)),
                partner_losses=rng.random((num_twins, 16)),
                own_losses_t=rng.random((num_twins, 3, 16)),
                partner_losses_t=rng.random((num_twins, 3, 16)),
                heldout_losses_t=rng.random((num_twins, 3, M)),
                own_d1=rng.random((num_twins, N)),
                own_d2=1 + rng.random((num_twins, N)),
                own_index=np.zeros((num_twins, N), np.int32),
                other_d1=rng.random((num_twins, N)),
                heldout_d1=rng.random((num_twins, M)),
                heldout_d2=1 + rng.random((num_twins, M)),
                score_cosine_heldout=rng.random((pairs, 2)),
                score_cosine_train=rng.random((pairs, 2)),
                example_samples=rng.random((num_twins, 2, 4, 4, 1)),
                example_nearest=rng.random((num_twins, 2, 4, 4, 1)),
            )
        )
    return out


def _config(num_twins, aggregate):
    config = smoke.get_config()
    with config.unlocked():
        config.splits.num_splits = num_twins
        config.analysis.update(
            num_samples=N, bootstrap=40, privacy_bootstrap=10, aggregate=aggregate
        )
    return config


def _summarize(config, per_step):
    spe = run_lib.steps_per_epoch(config)
    records = [record_lib.SnapshotRecord.from_arrays(r) for r in per_step]
    return summary.summarize(config, [spe * (c + 1) for c in range(C)], records)


def test_the_median_picks_the_authors_snapshots_where_the_mean_does_not():
    per_step = _image_per_step(15)
    epochs = np.asarray(_summarize(_config(15, "mean"), per_step)["checkpoints"])
    pair_sims = np.stack([r["similarity"].mean(axis=1) for r in per_step], axis=1)  # [P, C]
    model_losses = np.stack([r["test_losses"].mean(axis=1) for r in per_step], axis=1)  # [K, C]
    assert pair_sims.shape == (105, C) and model_losses.shape == (15, C)
    tau_cos, tau_loss = _authors_epochs(epochs, pair_sims, model_losses)
    assert (tau_cos, tau_loss) == (epochs[2], epochs[3])

    median = _summarize(_config(15, "median"), per_step)
    v = median["verdict"]
    assert (v["bias_onset_epoch"], v["test_loss_min_epoch"]) == (tau_cos, tau_loss)
    assert (v["bias_onset_index"], v["test_loss_min_index"]) == (2, 3)
    # The curves statistics.json holds are the authors' medians.
    np.testing.assert_allclose(
        1 - np.asarray(median["sample_split"]["median"]),
        1 - np.median(pair_sims, axis=0),
        rtol=1e-6,
    )
    np.testing.assert_allclose(median["test_loss"], np.median(model_losses, axis=0), rtol=1e-12)
    assert summary.bias_curve(median) == median["sample_split"]["median"]
    assert median["protocol"]["aggregate"] == "median"

    # The mean (this package's default) picks other snapshots on the same arrays.
    mean = _summarize(_config(15, "mean"), per_step)
    assert (mean["verdict"]["bias_onset_index"], mean["verdict"]["test_loss_min_index"]) == (4, 1)
    assert "median" not in mean["sample_split"]
    assert mean["protocol"]["aggregate"] == "mean"


def test_median_bootstrap_replicates_are_the_median_of_the_drawn_units():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((4, 15, 25))  # [C, U, N]
    boot = verdict.bootstrap_mean_curves(values, np.random.default_rng(1), 5, "median")
    means = verdict.bootstrap_mean_curves(values, np.random.default_rng(1), 5)
    draw = np.random.default_rng(1)  # the same draws: units, then items
    for b in range(5):
        units, items = draw.integers(0, 15, 15), draw.integers(0, 25, 25)
        drawn = values[:, units][:, :, items]
        np.testing.assert_allclose(boot[b], np.median(drawn.mean(axis=2), axis=1), rtol=1e-12)
        np.testing.assert_allclose(means[b], drawn.mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(
        verdict.unit_curve(values, "median"), np.median(values.mean(axis=2), axis=1)
    )
    with pytest.raises(ValueError, match="aggregate"):
        verdict.bootstrap_mean_curves(values, rng, 5, "mode")


def test_two_twins_give_the_same_numbers_by_either_aggregate_and_as_before():
    per_step = _image_per_step(2)
    mean = _summarize(_config(2, "mean"), per_step)
    median = _summarize(_config(2, "median"), per_step)
    # The median of one pair (two models) is its mean: every number is the same.
    assert median["protocol"].pop("aggregate") == "median"
    assert mean["protocol"].pop("aggregate") == "mean"
    median["sample_split"].pop("median")
    assert median == mean
    # And the mean is what it was before the field: over twins first, then items.
    sim = np.stack([r["similarity"] for r in per_step])
    loss = np.stack([r["test_losses"] for r in per_step])
    assert mean["test_loss"] == loss.mean(axis=1).mean(axis=1).tolist()
    onset = int(np.argmax(sim.mean(axis=1).mean(axis=1)))
    assert mean["verdict"]["bias_onset_index"] == onset
    # The bootstrap: the item bootstrap of the means over twins, draw for draw.
    # config.analysis.seed = 0; the test loss is drawn first, then the bias.
    rng = np.random.default_rng(0)
    loss_boot = verdict.bootstrap_mean_curves(loss.mean(axis=1), rng, 40)
    bias_boot = verdict.bootstrap_mean_curves(sim.mean(axis=1), rng, 40)
    again = np.random.default_rng(0)
    for boot, values in ((loss_boot, loss.mean(axis=1)), (bias_boot, sim.mean(axis=1))):
        idx = again.integers(0, values.shape[1], (40, values.shape[1]))
        np.testing.assert_array_equal(
            boot, np.stack([values.astype(np.float64)[:, i].mean(axis=1) for i in idx])
        )
    epochs = np.asarray(mean["checkpoints"])
    lo, hi = np.percentile(epochs[np.argmax(bias_boot, axis=1)], [2.5, 97.5])
    assert mean["verdict"]["bias_onset_interval"] == [lo, hi]


def test_tokens_aggregate_the_nn_divergence_over_models_and_pairs_by_the_median():
    config = smoke.get_config("grammar")
    with config.unlocked():
        config.analysis.update(bootstrap=20, privacy_bootstrap=10, aggregate="median")
    k, length = 4, 8
    rng = np.random.default_rng(3)
    per_step = []
    for c in range(C):
        own_d1 = rng.integers(0, length + 1, (k, N)).astype(float)
        per_step.append(
            dict(
                similarity=rng.random((k * (k - 1) // 2, N)),
                own_d1=own_d1,
                own_d2=own_d1 + 1,
                own_index=np.zeros((k, N), np.int32),
                other_d1=own_d1 + 1,
                heldout_d1=rng.integers(0, length + 1, (k, M)).astype(float),
                heldout_d2=np.full((k, M), length + 1.0),
                test_losses=rng.random((k, M)),
                train_losses=rng.random((k, 16)),
                partner_losses=rng.random((k, 16)),
                own_losses_t=rng.random((k, 3, 16)),
                partner_losses_t=rng.random((k, 3, 16)),
                heldout_losses_t=rng.random((k, 3, M)),
                grammatical=np.ones(k),
                twin_kl=rng.random((k * (k - 1) // 2, M)),
                kl_bp=rng.random((k, 4)),
                decomposition=rng.random((k, 4)),
            )
        )
    stats = _summarize(config, per_step)
    per_model = np.asarray(stats["nn_divergence_per_model"])
    np.testing.assert_allclose(stats["nn_divergence"], np.median(per_model, axis=1))
    v = stats["verdict"]
    assert v["bias_onset_index"] == int(np.argmin(np.median(per_model, axis=1)))
    losses = np.stack([r["test_losses"].mean(axis=1) for r in per_step])  # [C, K]
    assert v["test_loss_min_index"] == int(np.argmin(np.median(losses, axis=1)))
    twin_kl = np.stack([r["twin_kl"].mean(axis=1) for r in per_step])  # [C, P]
    other = v["other_statistics"]["sample_split KL at the critical time (minimum)"]
    assert other["bias_onset_index"] == int(np.argmin(np.median(twin_kl, axis=1)))


def test_the_report_states_the_aggregate():
    stats = _summarize(_config(15, "median"), _image_per_step(15))
    assert "verdict curves: the median over twins and twin pairs" in report.protocol_text(
        stats["protocol"]
    )
    two = report.protocol_text(dict(summary.protocol(_config(2, "median"))))
    assert "the median over twins and twin pairs (with 2 twins, the mean)" in two
