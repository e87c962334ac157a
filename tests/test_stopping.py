"""Stopping rules: each stops where its definition says, and replays as it ran online."""

import numpy as np
import pytest

from diffusion_bias.instrument import stopping
from diffusion_bias.instrument import verdict

SETTINGS = dict(patience=2, auc_threshold=0.6, memorized_threshold=0.05, bias_mode="max")


def _bump(num, center, width=1.5):
    x = np.arange(num)
    return np.exp(-0.5 * ((x - center) / width) ** 2)


def _boot(curve, noise, seed=0, items=400, resamples=300):
    rng = np.random.default_rng(seed)
    values = np.asarray(curve)[:, None] + noise * rng.standard_normal((len(curve), items))
    return values.mean(axis=1), verdict.bootstrap_mean_curves(values, rng, resamples)


def test_test_loss_rule_waits_patience_snapshots_after_the_minimum_and_keeps_it():
    loss = [5.0, 4.0, 3.0, 3.05, 2.95, 2.9, 3.0, 3.1, 3.3]
    assert not stopping.test_loss_rule(loss[:4], patience=2).stop
    stop_at, decision = stopping.replay(
        "test_loss",
        dict(test_loss=loss, bias=np.zeros(9), bias_boot=np.zeros((1, 9))),
        **SETTINGS,
    )
    # The minimum 2.9 (index 5) is confirmed two snapshots later, at index 7.
    assert (stop_at, decision.kept_index) == (7, 5)


def test_bias_onset_rule_confirms_a_clear_peak_and_keeps_it():
    bias, boot = _boot(_bump(12, 4), noise=0.05)
    decision = stopping.bias_onset_rule(bias, boot, "max", patience=2)
    assert decision.stop and decision.kept_index == 4
    # Online, it fires as soon as two snapshots after the peak are clearly lower.
    stop_at, online = stopping.replay(
        "bias_onset", dict(test_loss=np.zeros(12), bias=bias, bias_boot=boot), **SETTINGS
    )
    assert online.kept_index == 4 and 6 <= stop_at <= 8


def test_bias_onset_rule_finds_minima_of_divergences():
    bias, boot = _boot(-_bump(12, 5), noise=0.05)
    decision = stopping.bias_onset_rule(bias, boot, "min", patience=2)
    assert decision.stop and decision.kept_index == 5


def test_bias_onset_rule_never_fires_on_a_flat_noisy_curve():
    bias, boot = _boot(np.zeros(12), noise=1.0)
    stop_at, _ = stopping.replay(
        "bias_onset", dict(test_loss=np.zeros(12), bias=bias, bias_boot=boot), **SETTINGS
    )
    assert stop_at is None


def test_bias_onset_rule_takes_no_onset_at_the_first_snapshot():
    bias, boot = _boot(np.linspace(1.0, 0.0, 8), noise=0.01)
    assert not stopping.bias_onset_rule(bias, boot, "max", patience=2).stop


def test_bias_onset_rule_respects_validity():
    bias, boot = _boot(_bump(10, 1, 1.0) + 0.5 * _bump(10, 6, 1.0), noise=0.01)
    valid = np.arange(10) >= 4
    decision = stopping.bias_onset_rule(bias, boot, "max", patience=2, valid=valid)
    assert decision.stop and decision.kept_index == 6


def test_privacy_budget_rule_keeps_the_last_snapshot_under_budget():
    auc = [0.5, 0.52, 0.55, 0.58, 0.62, 0.7]
    memorized = [0.0, 0.0, 0.0, 0.0, 0.0, 0.1]
    stop_at, decision = stopping.replay(
        "privacy_budget",
        dict(test_loss=np.zeros(6), membership_auc=auc, memorized_fraction=memorized),
        **SETTINGS,
    )
    assert (stop_at, decision.kept_index) == (4, 3)
    # Memorisation alone also exceeds the budget.
    decision = stopping.privacy_budget_rule([0.5, 0.5, 0.5], [0.0, 0.2, 0.0], 0.6, 0.05)
    assert decision.stop and decision.kept_index == 0
    # Over budget from the first snapshot on: nothing to keep.
    assert stopping.privacy_budget_rule([0.9], [0.0], 0.6, 0.05).kept_index is None


def test_none_never_stops_and_unknown_rules_are_refused():
    curves = dict(test_loss=[3.0, 2.0, 5.0, 6.0, 7.0])
    assert stopping.replay("none", curves, **SETTINGS)[0] is None
    with pytest.raises(ValueError, match="rule must be one of"):
        stopping.decide("early", curves, **SETTINGS)


def test_rule_costs_describe_the_snapshot_each_rule_keeps():
    num = 12
    bias, boot = _boot(_bump(num, 3), noise=0.02)
    test_loss = 1.0 + 0.1 * (np.arange(num) - 8.0) ** 2 / 64  # minimum at 8
    auc = np.linspace(0.5, 0.8, num)
    curves = dict(
        test_loss=test_loss,
        bias=bias,
        bias_boot=boot,
        membership_auc=auc,
        memorized_fraction=np.zeros(num),
        closer_to_own=np.linspace(0.5, 0.7, num),
    )
    epochs = np.geomspace(10, 1000, num)
    rows = {r["rule"]: r for r in stopping.rule_costs(epochs, curves, **SETTINGS)}
    assert rows["none"]["kept_epoch"] == epochs[-1] and rows["none"]["stop_epoch"] is None
    assert rows["test_loss"]["kept_epoch"] == epochs[8]
    assert rows["test_loss"]["test_loss_excess"] == 0.0
    assert rows["bias_onset"]["kept_epoch"] == epochs[3]
    onset = rows["bias_onset"]
    assert onset["test_loss_excess"] == pytest.approx(test_loss[3] / test_loss[8] - 1)
    assert onset["membership_auc"] == pytest.approx(auc[3])
    first_over = int(np.argmax(auc > SETTINGS["auc_threshold"]))
    assert rows["privacy_budget"]["kept_epoch"] == epochs[first_over - 1]
    assert rows["privacy_budget"]["stop_epoch"] == epochs[first_over]


def test_privacy_budget_in_epsilon_and_tpr_stops_at_the_first_snapshot_over_either():
    auc, memorized = np.full(6, 0.55), np.zeros(6)
    epsilon = np.array([0.0, 0.1, 0.4, 1.2, 2.0, 3.0])
    tpr = np.array([0.01, 0.02, 0.2, 0.3, 0.5, 0.9])
    # Thresholds of 0 leave the auditors' units unused: the AUC budget alone holds.
    assert not stopping.privacy_budget_rule(auc, memorized, 0.6, 0.0, epsilon, 0.0, tpr).stop
    decision = stopping.privacy_budget_rule(auc, memorized, 0.6, 0.0, epsilon, 1.0)
    assert (
        decision.stop
        and decision.kept_index == 2
        and "epsilon lower bound 1.200" in decision.reason
    )
    decision = stopping.privacy_budget_rule(auc, memorized, 0.6, 0.0, epsilon, 1.0, tpr, 0.1)
    assert decision.kept_index == 1 and "TPR at 1% FPR 0.200" in decision.reason
    rows = stopping.rule_costs(
        np.arange(6.0),
        dict(
            test_loss=np.linspace(1, 0.5, 6),
            bias=np.zeros(6),
            bias_boot=np.zeros((1, 6)),
            membership_auc=auc,
            memorized_fraction=memorized,
            closer_to_own=np.full(6, 0.5),
            epsilon=epsilon,
            tpr=tpr,
        ),
        **SETTINGS,
        epsilon_threshold=1.0,
    )
    budget = next(r for r in rows if r["rule"] == "privacy_budget")
    assert (budget["kept_epoch"], budget["epsilon"], budget["tpr"]) == (2.0, 0.4, 0.2)
