"""statistics.json of the token setting from synthetic per-snapshot arrays.

Each paper definition is recomputed here in plain numpy (the paper (arXiv 2603.03469), "Protocol
details") and compared with what `summary.summarize` writes.
"""

import dataclasses

import numpy as np
import pytest

from configs import smoke
from diffusion_bias.config import config_checks
from diffusion_bias.instrument import record as record_lib
from diffusion_bias.instrument import report
from diffusion_bias.instrument import summary
from diffusion_bias.instrument import verdict
from diffusion_bias.statistics import nearest

K, N, M, C, L = 3, 300, 200, 5, 8  # smoke grammar: depth 3, L = 8


def _paper_histogram_kl(p_counts, q_counts):
    """The authors' smoothing: normalise, clip to [1e-8, 1], no renormalisation."""
    p = np.clip(p_counts / p_counts.sum(), 1e-8, 1)
    q = np.clip(q_counts / q_counts.sum(), 1e-8, 1)
    return np.sum(p * np.log(p / q))


def _per_step(seed=0):
    rng = np.random.default_rng(seed)
    heldout_d1 = rng.integers(0, L + 1, (K, M)).astype(float)
    heldout_d2 = heldout_d1 + rng.integers(0, 3, (K, M))
    out = []
    for c in range(C):
        # Each model drifts toward its training set at its own pace.
        shift = rng.integers(0, 4, (K, 1))
        own_d1 = np.clip(rng.integers(0, L + 1, (K, N)) - shift, 0, L).astype(float)
        own_d2 = own_d1 + rng.integers(0, 3, (K, N))
        out.append(
            dict(
                similarity=rng.random((K * (K - 1) // 2, N)),
                own_d1=own_d1,
                own_d2=own_d2,
                own_index=np.zeros((K, N), np.int32),
                other_d1=own_d1 + 1,
                heldout_d1=heldout_d1,
                heldout_d2=heldout_d2,
                test_losses=rng.random((K, M)) + np.abs(c - 3),
                train_losses=rng.random((K, 32)),
                partner_losses=rng.random((K, 32)),
                own_losses_t=rng.random((K, 3, 32)),
                partner_losses_t=rng.random((K, 3, 32)),
                heldout_losses_t=rng.random((K, 3, M)),
                bp_own_losses=rng.random((K, 32)),
                bp_heldout_losses=rng.random(M),
                grammatical=np.full(K, [0.1, 0.3, 0.8, 0.9, 0.9][c]),
                twin_kl=rng.random((K * (K - 1) // 2, M)),
                kl_bp=rng.random((K, 4)),
                decomposition=rng.random((K, 4)),
                decomposition_mean_t=rng.random((K, 4)),
                decomposition_steps=np.arange(1, 100, 10),
            )
        )
    return out


def _config(**analysis_fields):
    config = smoke.get_config("grammar")
    with config.unlocked():
        config.analysis.update(num_samples=N, bootstrap=40, **analysis_fields)
    return config


def _summarize(config, per_step):
    spe = config.splits.split_size // config.training.batch_size
    records = [record_lib.SnapshotRecord.from_arrays(r) for r in per_step]
    return summary.summarize(config, [spe * (c + 1) for c in range(C)], records)


def test_nn_divergence_is_the_mean_over_models_of_each_models_kl():
    per_step = _per_step()
    stats = _summarize(_config(), per_step)
    expected = np.zeros((C, K))
    for c, r in enumerate(per_step):
        for k in range(K):
            gen = np.histogram(r["own_d1"][k], bins=20, range=(0, L))[0]
            held = np.histogram(r["heldout_d1"][k], bins=20, range=(0, L))[0]
            expected[c, k] = _paper_histogram_kl(gen, held)
    np.testing.assert_allclose(stats["nn_divergence_per_model"], expected, rtol=1e-12)
    np.testing.assert_allclose(stats["nn_divergence"], expected.mean(1), rtol=1e-12)
    # Pooling all models into one histogram is a different number.
    pooled = [
        _paper_histogram_kl(
            np.histogram(r["own_d1"], bins=20, range=(0, L))[0],
            np.histogram(r["heldout_d1"], bins=20, range=(0, L))[0],
        )
        for r in per_step
    ]
    assert not np.allclose(stats["nn_divergence"], pooled)


def test_histogram_kl_does_not_renormalise_after_clipping():
    p, q = np.array([0, 3, 5, 2]), np.array([4, 0, 4, 2])
    assert nearest.histogram_kl(p, q) == pytest.approx(_paper_histogram_kl(p, q), rel=1e-12)
    # Renormalising the clipped q would give a (slightly) different value.
    qc = np.clip(q / q.sum(), 1e-8, 1)
    pc = np.clip(p / p.sum(), 1e-8, 1)
    renorm = np.sum(pc / pc.sum() * np.log((pc / pc.sum()) / (qc / qc.sum())))
    assert nearest.histogram_kl(p, q) != renorm


def test_kl_bootstrap_resamples_items_jointly_across_models_and_checkpoints():
    per_step = _per_step(1)
    own = np.stack([r["own_d1"] for r in per_step])  # [C, K, N]
    own[1] = own[0]  # two identical checkpoints
    held = per_step[0]["heldout_d1"]  # [K, m]
    boot = verdict.bootstrap_binned_kl_curves(
        nearest.nn_bins(own, L),
        nearest.nn_bins(held, L),
        20,
        nearest.histogram_kl,
        np.random.default_rng(0),
        50,
    )
    assert boot.shape == (50, C)
    # The same samples are drawn at every checkpoint: identical checkpoints stay identical.
    np.testing.assert_array_equal(boot[:, 0], boot[:, 1])
    # Replicate 0 recomputed from its definition: K = 3 models drawn with replacement,
    # one draw of sample indices for all models and checkpoints, one of held-out
    # indices, per-model KL, mean over the drawn models.
    rng = np.random.default_rng(0)
    models = rng.integers(0, K, K)
    items = rng.integers(0, own.shape[-1], own.shape[-1])
    rows = rng.integers(0, held.shape[-1], held.shape[-1])
    expected = [
        np.mean(
            [
                _paper_histogram_kl(
                    np.histogram(own[c, k, items], bins=20, range=(0, L))[0],
                    np.histogram(held[k, rows], bins=20, range=(0, L))[0],
                )
                for k in models
            ]
        )
        for c in range(C)
    ]
    np.testing.assert_allclose(boot[0], expected, rtol=1e-12)


def test_nn_bins_agree_with_numpy_histogram_edges():
    d = np.array([0, 0.79, 0.8, 1.6, 15.2, 15.99, 16, 7, 8, 0.8 * 3])
    counts = np.bincount(nearest.nn_bins(d, 16), minlength=20)
    np.testing.assert_array_equal(counts, np.histogram(d, bins=20, range=(0, 16))[0])


def test_memorised_fraction_is_the_strict_ratio_test_and_copies_are_counted_apart():
    d1 = np.array([0, 0, 0, 1, 2, 3, 0])
    d2 = np.array([0, 1, 5, 4, 6, 9, 0])
    # Ratio test d1/d2 < 1/3: 0/1, 0/5, 1/4 pass; 0/0 is undefined and does not.
    assert nearest.memorized_fraction(d1, d2) == pytest.approx(3 / 7)
    assert nearest.exact_copy_fraction(d1) == pytest.approx(4 / 7)
    per_step = _per_step(2)
    stats = _summarize(_config(), per_step)
    for c, r in enumerate(per_step):
        d1, d2 = r["own_d1"].ravel(), r["own_d2"].ravel()
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = d1 / d2
        assert stats["nearest"]["memorized_fraction"][c] == pytest.approx(np.mean(ratio < 1 / 3))
        assert stats["nearest"]["copy_fraction"][c] == pytest.approx(np.mean(d1 == 0))
    assert set(stats["at_onset_and_test_min"]) >= {"memorized_fraction", "copy_fraction"}


def test_the_verdicts_snapshots_are_indices_into_checkpoints_and_index_the_curves():
    per_step = _per_step(5)
    stats = _summarize(_config(min_grammatical=0.5), per_step)
    v, epochs = stats["verdict"], stats["checkpoints"]
    for found in (v, v["ungated"], *v["other_statistics"].values()):
        assert epochs[found["bias_onset_index"]] == found["bias_onset_epoch"]
        assert epochs[found["test_loss_min_index"]] == found["test_loss_min_epoch"]
    assert v["test_loss_min_index"] == int(np.argmin(stats["test_loss"]))
    at = stats["at_onset_and_test_min"]
    where = [v["bias_onset_index"], v["test_loss_min_index"]]
    assert at["memorized_fraction"] == [stats["nearest"]["memorized_fraction"][i] for i in where]
    assert at["membership_auc"] == [stats["membership_auc"][i] for i in where]


def test_grammaticality_gate_is_optional_and_the_ungated_onset_is_reported_beside_it():
    per_step = _per_step(3)
    gated = _summarize(_config(min_grammatical=0.5), per_step)["verdict"]
    free = _summarize(_config(min_grammatical=0.0), per_step)["verdict"]
    assert free["grammaticality_gate"] == 0 and "ungated" not in free
    assert gated["grammaticality_gate"] == 0.5
    for key in ("bias_onset_epoch", "test_loss_min_epoch", "gap_epochs", "conclusive"):
        assert gated["ungated"][key] == free[key]
    divergence = np.asarray(_summarize(_config(), per_step)["nn_divergence"])
    epochs = _summarize(_config(), per_step)["checkpoints"]
    assert free["bias_onset_epoch"] == epochs[int(np.argmin(divergence))]
    assert gated["bias_onset_epoch"] == epochs[2 + int(np.argmin(divergence[2:]))]
    # The gate's range is the config checks' (the summary reads checked configs).
    with pytest.raises(config_checks.ConfigError, match="min_grammatical"):
        config_checks.check_analysis(_config(min_grammatical=1.5))


def test_loss_decomposition_averaged_over_t_is_reported_beside_t_ratio_0_3():
    per_step = _per_step(4)
    dec = _summarize(_config(), per_step)["loss_decomposition"]
    mean_t = np.stack([r["decomposition_mean_t"].mean(0) for r in per_step])
    at_03 = np.stack([r["decomposition"].mean(0) for r in per_step])
    names = ("l_star_train", "l_tilde_train", "l_star_heldout", "l_tilde_heldout")
    for i, name in enumerate(names):
        np.testing.assert_allclose(dec[name + "_mean_t"], mean_t[:, i])
        np.testing.assert_allclose(dec[name], at_03[:, i])


def test_report_states_the_protocol_and_the_ungated_onset(tmp_path):
    config = _config(min_grammatical=0.5, sampling_steps=0, uturn_repeats=7)
    with config.unlocked():
        config.monitor.patience = 1
    stats = _summarize(config, _per_step(5))
    assert stats["protocol"]["chain_steps"] == config.diffusion.num_steps
    text = report.setting_section("grammar", stats, [], str(tmp_path))
    assert f"full reverse chain of T = {config.diffusion.num_steps} steps" in text
    assert f"U-turn on {config.analysis.uturn_items} sequences x 7 noise repetitions" in text
    assert "Without that gate (the paper's definition): onset at epoch" in text
    assert "exact copies" in text
    assert "What each stopping rule would have cost" in text
    for rule in ("none", "test_loss", "bias_onset", "privacy_budget"):
        assert f"| {rule} |" in text
    # The test-loss rule (patience 1) keeps the held-out loss minimum (index 3 of 5).
    rows = {r["rule"]: r for r in stats["stopping_rules"]}
    assert rows["test_loss"]["kept_epoch"] == stats["checkpoints"][3]
    assert rows["test_loss"]["test_loss_excess"] == 0.0
    assert rows["none"]["quality"] == stats["grammatical_fraction"][-1]
    stats = _summarize(_config(min_grammatical=0.0, sampling_steps=20), _per_step(5))
    text = report.setting_section("grammar", stats, [], str(tmp_path))
    assert "respaced to 20 of T" in text and "no grammaticality gate" in text


def test_kl_along_t_summary_is_the_twin_mean_and_its_peak_is_the_critical_time():
    rng = np.random.default_rng(6)
    ratios = np.arange(1, 26) / 25
    exact_bp = rng.random((3, 25))  # KL(BP_0 || BP_k), k = 1..3: no data, one for all
    curves = [
        dict(
            values=rng.random((K, 4, 25)),
            exact_bp=exact_bp,
            exact_model=rng.random((K, 25)),
            steps=np.arange(4, 101, 4),
            ratios=ratios,
        )
        for _ in range(2)
    ]
    out = summary.kl_along_t(curves, [1, 3], [10.0, 30.0])
    for e, c in enumerate(curves):
        mean = c["values"].mean(0)  # [k, R]
        np.testing.assert_allclose(out["values"][e], mean)
        assert out["peak_ratio"][e] == [ratios[np.argmax(row)] for row in mean]
        np.testing.assert_allclose(out["from_exact"]["model"][e], c["exact_model"].mean(0))
    assert out["indices"] == [1, 3] and out["epochs"] == [10.0, 30.0]
    assert out["k"] == [0, 1, 2, 3]
    assert out["from_exact"]["k"] == [1, 2, 3]
    np.testing.assert_allclose(out["from_exact"]["bp"], exact_bp)
    assert out["from_exact"]["bp_peak_ratio"] == [ratios[np.argmax(row)] for row in exact_bp]


def test_three_twins_keep_per_model_and_per_pair_curves_and_two_do_not():
    per_step = _per_step()
    stats = _summarize(_config(), per_step)  # K = 3: 3 models, 3 pairs
    np.testing.assert_allclose(
        stats["test_loss_per_model"], [r["test_losses"].mean(1) for r in per_step]
    )
    np.testing.assert_allclose(
        stats["sample_split"]["mean_per_pair"], [r["similarity"].mean(1) for r in per_step]
    )
    np.testing.assert_allclose(stats["twin_kl_per_pair"], [r["twin_kl"].mean(1) for r in per_step])
    whole = ("similarity", "twin_kl", "bp_heldout_losses")  # not per twin
    two = [
        {
            k: (v[:2] if k not in whole else v[:1] if k != "bp_heldout_losses" else v)
            for k, v in r.items()
        }
        for r in per_step
    ]
    stats = _summarize(_config(), two)
    assert "test_loss_per_model" not in stats and "twin_kl_per_pair" not in stats
    assert "mean_per_pair" not in stats["sample_split"]


def _pair_records(num_snapshots=6, num_samples=400, seed=0):
    """Records of 4 models (2 splits x 2 seeds): same-split pairs more alike from snapshot 3."""
    rng = np.random.default_rng(seed)
    records = []
    for c in range(num_snapshots):
        sim = rng.normal(0.5, 0.1, (6, num_samples))  # pairs of twin_pairs(4)
        if c >= 3:
            sim[[0, 5]] += 0.2  # (0, 1) and (2, 3): the same-split pairs
        required = dataclasses.fields(record_lib.SnapshotRecord)
        arrays = {f.name: np.zeros(1) for f in required if f.default is dataclasses.MISSING}
        arrays.update(
            similarity=sim, twin_kl=rng.random((6, num_samples)), test_losses=np.ones((4, 3))
        )
        records.append(record_lib.SnapshotRecord.from_arrays(arrays))
    return records


def test_split_pairs_keeps_cross_split_pairs_for_the_statistics_and_sets_same_split_aside():
    records = _pair_records()
    cross, same = summary.split_pairs(records, 2)
    for r, rc, rs in zip(records, cross, same):
        np.testing.assert_array_equal(rc.similarity, r.similarity[[1, 2, 3, 4]])
        np.testing.assert_array_equal(rs.twin_kl, r.twin_kl[[0, 5]])
        np.testing.assert_array_equal(rc.test_losses, r.test_losses)  # per model: kept
    assert summary.split_pairs(records, 1) == (records, None)


def test_same_and_cross_split_pairs_part_where_they_stay_three_paired_errors_apart():
    records = _pair_records()
    cross, same = summary.split_pairs(records, 2)
    epochs = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    out = summary.same_split_curves(epochs, cross, same, 2)
    assert out["pairs"] == dict(cross=4, same=2)
    assert out["part_index"] == 3 and out["part_epoch"] == 8.0
    # The paired z, recomputed: each sample's group means, then their difference.
    r = records[4].similarity
    d = r[[0, 5]].mean(0) - r[[1, 2, 3, 4]].mean(0)
    np.testing.assert_allclose(out["z"][4], d.mean() / (d.std(ddof=1) / np.sqrt(len(d))))
    np.testing.assert_allclose(out["similarity"]["same"]["mean"][4], r[[0, 5]].mean())
    # Apart at one snapshot only, then together again: they have not parted.
    late = _pair_records()
    for c in (4, 5):
        late[c].similarity[[0, 5]] -= 0.2
    cross, same = summary.split_pairs(late, 2)
    assert summary.same_split_curves(epochs, cross, same, 2)["part_epoch"] is None


def test_uturn_random_averages_each_sequence_over_twins_before_its_standard_error():
    rng = np.random.default_rng(0)
    results = [
        dict(
            model=rng.random((2, 3, 50)),
            memorizing=rng.random((2, 3, 50)),
            bp=rng.random((4, 3, 50)),
        )
        for _ in range(2)
    ]
    config = _config()
    with config.unlocked():
        config.analysis.uturn_random_ratios = (0.05, 0.075, 0.1)
        config.analysis.memorizing_items = 10**6  # more than a split holds
    out = summary.uturn_random(config, [1, 4], [10.0, 40.0], results)
    assert out["memorizing_items"] == config.splits.split_size
    per_sequence = results[1]["model"].mean(0)  # [R, N]
    np.testing.assert_allclose(out["model"][1], per_sequence.mean(1))
    np.testing.assert_allclose(out["model_sem"][1], per_sequence.std(1, ddof=1) / np.sqrt(50))
    # The baselines depend on no snapshot: read from the first.
    np.testing.assert_allclose(out["memorizing"], results[0]["memorizing"].mean(0).mean(1))
    np.testing.assert_allclose(out["bp"], results[0]["bp"].mean(2))
    assert out["epochs"] == [10.0, 40.0] and out["ratios"] == [0.05, 0.075, 0.1]


def test_the_test_loss_curve_reads_the_every_step_losses_where_computed():
    per_step = _per_step()
    rng = np.random.default_rng(1)
    for r in per_step:
        r["test_losses_every_step"] = rng.random((K, 5)) + 3.0
    stats = _summarize(_config(), per_step)
    np.testing.assert_allclose(
        stats["test_loss"], [r["test_losses_every_step"].mean() for r in per_step], rtol=1e-6
    )
    # Membership keeps the loss grid's held-out losses.
    without = _summarize(
        _config(), [{k: v for k, v in r.items() if "every" not in k} for r in per_step]
    )
    assert stats["membership_auc"] == without["membership_auc"]
    assert stats["test_loss"] != without["test_loss"]
