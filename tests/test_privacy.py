"""The membership audit: jax_privacy's numbers, no choice made on the items scored, valid bounds."""

from jax_privacy import auditing
import numpy as np
import pytest
from scipy import stats

from diffusion_bias.statistics import privacy


def _losses(seed=0, num_twins=2, n=64, m=80, times=5, leak=1.0):
    """One snapshot's losses: members lower by `leak` (strongest at time 2), held-out not."""
    rng = np.random.default_rng(seed)
    shift = leak * np.exp(-0.5 * (np.arange(times) - 2.0) ** 2)[None, :, None]  # [1, S, 1]
    own_t = rng.standard_normal((num_twins, times, n)) - shift
    partner_t = rng.standard_normal((num_twins, times, n))
    heldout_t = rng.standard_normal((num_twins, times, m))
    return dict(
        own=own_t.mean(1),
        partner=partner_t.mean(1),
        heldout=heldout_t.mean(1),
        own_t=own_t,
        partner_t=partner_t,
        heldout_t=heldout_t,
    )


def test_the_documented_case_gives_tpr_0_11_at_1pct_fpr_and_auc_0_595():
    in_scores, out_scores = np.arange(100) + 9.5, np.arange(100)
    assert privacy.tpr_at_fpr(in_scores, out_scores, [0.01])[0] == pytest.approx(0.11)
    assert privacy.auc(in_scores, out_scores) == pytest.approx(0.595)


def test_gaussian_scores_of_known_separation_give_the_analytic_tpr():
    rng = np.random.default_rng(0)
    separation, num = 2.0, 200_000
    members, nonmembers = rng.normal(separation, 1, num), rng.normal(0, 1, num)
    for fpr, tpr in zip(privacy.FPRS, privacy.tpr_at_fpr(members, nonmembers)):
        analytic = stats.norm.sf(stats.norm.isf(fpr) - separation)
        assert tpr == pytest.approx(analytic, abs=0.01)
    analytic_auc = stats.norm.cdf(separation / np.sqrt(2))
    assert privacy.auc(members, nonmembers) == pytest.approx(analytic_auc, abs=0.003)


def test_audit_numbers_equal_jax_privacy_called_on_the_evaluation_half():
    scores, _ = privacy.attack_scores(_losses())
    out = privacy.audit(scores, num_resamples=50, seed=3)
    for name, s in scores.items():
        members, heldout = s["members"][:, 1::2].ravel(), s["heldout"][:, 1::2].ravel()
        auditor = auditing.CanaryScoreAuditor(members, heldout)
        assert out["auc"][name] == pytest.approx(auditor.attack_auroc(), abs=1e-12)
        np.testing.assert_allclose(out["tpr"][name], auditor.tpr_at_given_fpr(privacy.FPRS))
    strongest = scores[out["strongest"]]
    auditor = auditing.CanaryScoreAuditor(
        strongest["members"][:, 1::2].ravel(), strongest["heldout"][:, 1::2].ravel()
    )
    params = auditing.BootstrapParams.confidence_interval(50, 0.95, 3)
    np.testing.assert_allclose(out["auc_interval"], auditor.attack_auroc(bootstrap_params=params))
    np.testing.assert_allclose(
        out["tpr_interval"][1], auditor.tpr_at_given_fpr(0.001, bootstrap_params=params)
    )
    eps = scores[out["epsilon_score"]]
    per_twin = [
        auditing.CanaryScoreAuditor(m[1::2], p[1::2]).epsilon_one_run(0.05 / 2, 1e-5)
        for m, p in zip(eps["members"], eps["partner"])
    ]
    np.testing.assert_allclose(out["epsilon_per_twin"], per_twin)
    assert out["epsilon"] == pytest.approx(max(per_twin), rel=1e-9) and out["epsilon"] > 0


def test_the_time_and_the_strongest_score_are_chosen_on_items_that_are_not_scored():
    losses = _losses(leak=1.5)
    scores, time_index = privacy.attack_scores(losses)
    assert time_index == 2  # where members separate best
    out = privacy.audit(scores, num_resamples=20)
    # Scrambling the scored (odd) items changes no choice ...
    scrambled = {k: v.copy() for k, v in losses.items()}
    rng = np.random.default_rng(1)
    for name, v in scrambled.items():
        v[..., 1::2] = rng.standard_normal(v[..., 1::2].shape)
    scores_b, time_b = privacy.attack_scores(scrambled)
    out_b = privacy.audit(scores_b, num_resamples=20)
    assert time_b == time_index and out_b["strongest"] == out["strongest"]
    assert out_b["epsilon_score"] == out["epsilon_score"]
    # ... and a rank-preserving change of the choosing (even) items changes no number.
    warped = {k: v.copy() for k, v in losses.items()}
    for v in warped.values():
        v[..., 0::2] = v[..., 0::2] ** 3 + 5 * v[..., 0::2]
    scores_c, time_c = privacy.attack_scores(warped)
    out_c = privacy.audit(scores_c, num_resamples=20)
    assert time_c == time_index
    for key in ("auc", "tpr", "strongest", "epsilon", "epsilon_score"):
        assert out_c[key] == out[key]


def test_the_reference_twin_calibrates_but_never_gives_the_epsilon_bound():
    losses = _losses(leak=0.0)
    # Items hard for every model: the reference twin's loss on them is high too.
    difficulty = np.random.default_rng(2).gamma(2.0, 2.0, size=(2, 64))
    losses["own"] = losses["own"] + difficulty - 0.5
    losses["partner"] = losses["partner"] + difficulty[::-1]
    scores, _ = privacy.attack_scores(losses)
    # Twin 0's reference is twin 1, whose partner losses are on twin 0's items.
    np.testing.assert_allclose(
        scores["calibrated_twin"]["members"][0], -(losses["own"][0] - losses["partner"][1])
    )
    out = privacy.audit(scores, num_resamples=20)
    assert out["strongest"] == "calibrated_twin"
    assert out["epsilon_score"] in privacy.EPSILON_VALID
    assert scores["calibrated_twin"]["partner"] is None


def test_bp_calibration_subtracts_the_exact_loss_of_the_same_item():
    losses = _losses()
    bp = dict(own=np.arange(128.0).reshape(2, 64), heldout=np.arange(80.0))
    scores, _ = privacy.attack_scores(losses, bp=bp)
    s = scores["calibrated_bp"]
    np.testing.assert_allclose(s["members"], -(losses["own"] - bp["own"]))
    np.testing.assert_allclose(s["heldout"], -(losses["heldout"] - bp["heldout"][None]))
    # Twin k's partner items are twin k + 1's: their exact losses are bp own[k + 1].
    np.testing.assert_allclose(s["partner"][0], -(losses["partner"][0] - bp["own"][1]))
    np.testing.assert_allclose(s["partner"][1], -(losses["partner"][1] - bp["own"][0]))


def test_with_two_seeds_a_split_references_and_partners_are_models_of_other_splits():
    # Models 0, 1 on split 0; 2, 3 on split 1; 4, 5 on split 2. Partner of m: m + 2 mod 6.
    losses = _losses(num_twins=6)
    bp = dict(own=np.arange(6 * 64.0).reshape(6, 64), heldout=np.arange(80.0))
    scores, _ = privacy.attack_scores(losses, bp=bp, seeds_per_split=2)
    partner = [(m + 2) % 6 for m in range(6)]
    for m in range(6):
        # The reference is the model whose partner items are m's own items.
        r = partner.index(m)
        assert r // 2 != m // 2
        np.testing.assert_allclose(
            scores["calibrated_twin"]["members"][m], -(losses["own"][m] - losses["partner"][r])
        )
        np.testing.assert_allclose(
            scores["calibrated_bp"]["partner"][m],
            -(losses["partner"][m] - bp["own"][partner[m]]),
        )


def _randomized_response(rng, inside, epsilon):
    """Scores of an epsilon-DP mechanism per canary: 1 says "in", right w.p. e^eps / (1 + e^eps)."""
    truthful = rng.random(inside.shape) < 1 / (1 + np.exp(-epsilon))
    return np.where(truthful, inside, ~inside).astype(float) + 1e-3 * rng.random(inside.shape)


@pytest.mark.parametrize("assignment", ["independent coins", "fixed-size split"])
def test_the_one_run_bound_exceeds_the_true_epsilon_rarely_under_either_assignment(assignment):
    """The twins' default split puts exactly half of the candidates in: not independent
    coins, which the bound assumes. Against a mechanism that is exactly epsilon-DP, the
    95% bound must exceed epsilon in at most about 5% of the audits either way."""
    rng = np.random.default_rng(0)
    true_epsilon, num_candidates, trials = 1.0, 200, 300
    exceeded = 0
    for _ in range(trials):
        if assignment == "independent coins":
            inside = rng.random(num_candidates) < 0.5
        else:
            inside = rng.permutation(num_candidates) < num_candidates // 2
        scores = _randomized_response(rng, inside, true_epsilon)
        bound, _ = privacy.epsilon_lower_bound(
            scores[inside][None], scores[~inside][None], confidence=0.95, delta=1e-5
        )
        exceeded += bound > true_epsilon
    # Binomial(300, 0.05) exceeds 25 with probability < 0.5%.
    assert exceeded <= 25


def test_with_coins_each_twin_is_audited_on_the_canaries_dealt_to_it_or_its_partner():
    members = np.arange(12.0).reshape(2, 6)
    partner = -np.arange(12.0).reshape(2, 6)
    canary_twin = np.array([0, 1, 1, 0, 1, 0])
    (in0, out0), (in1, out1) = privacy.canaries(members, partner, canary_twin)
    np.testing.assert_array_equal(in0, members[0, [0, 3, 5]])
    np.testing.assert_array_equal(out0, partner[0, [1, 2, 4]])
    np.testing.assert_array_equal(in1, members[1, [1, 2, 4]])
    np.testing.assert_array_equal(out1, partner[1, [0, 3, 5]])
    # Without coins, every own item is in and every partner item out.
    (in0, out0), _ = privacy.canaries(members, partner)
    assert len(in0) == len(out0) == 6
