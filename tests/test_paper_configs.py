"""The paper configs carry the paper's analysis protocol (the paper (arXiv 2603.03469), "Protocol details")."""

import numpy as np
import pytest

from configs import celeba_paper
from configs import digits_cpu
from configs import grammar_cpu
from configs import grammar_paper
from diffusion_bias import run as run_lib
from diffusion_bias.diffusion import schedules
from diffusion_bias.instrument import measure
from diffusion_bias.instrument import report
from diffusion_bias.instrument import summary
from diffusion_bias.statistics import uturn


def test_grammar_paper_analysis_is_the_papers_protocol():
    for n in ("5000", "12000", "70000"):
        config = grammar_paper.get_config(n)
        a = config.analysis
        schedule = schedules.token_schedule(config.diffusion.num_steps)
        # Full reverse chain of T = 500 steps, not a respacing.
        assert measure.sampling_schedule(schedule, a.sampling_steps) is schedule
        assert schedule.num_steps == 500
        assert a.num_samples == 50_000
        # The NN divergence's reference: 50,000 sequences (the authors' --N-test default).
        assert config.splits.heldout_size == 50_000
        # The authors' twin i trains on sequences[i * n:(i + 1) * n] of their pool of
        # 10^6 (train_transformer.py refuses a slice past its end): 15 twins where 15
        # blocks fit, 14 at n = 70,000.
        num_splits = config.splits.num_splits
        assert num_splits == min(15, 10**6 // int(n)) and num_splits * int(n) <= 10**6
        assert (15, 15, 14)[("5000", "12000", "70000").index(n)] == num_splits
        assert config.data.pool_size >= num_splits * int(n) + 50_000
        assert (a.uturn_items, a.uturn_repeats) == (1000, 100)
        # The authors' sequential_learning.py (--N-test 3000 --reps 5) and
        # loss_decomposition.py (every training item).
        assert (a.kl_items, a.kl_repeats, a.decomposition_items) == (3000, 5, 0)
        # The paper's code truncates: int(0.085 * 500) = 42.
        assert uturn.uturn_steps(schedule, a.uturn_ratios) == [5, 15, 25, 42, 60]
        # Fig. 11 (uturn_overlap_random.py --N-test 100 --reps 100 --grid 5 --T-min 0.05
        # --T-max 0.1 --empirical-size 256): t = int(r * 500) on np.linspace's grid.
        assert (a.uturn_random_items, a.memorizing_items) == (100 * 100, 256)
        steps = [int(r * 500) for r in np.linspace(0.05, 0.1, 5)]
        assert uturn.uturn_steps(schedule, a.uturn_random_ratios) == steps
        assert a.min_grammatical == 0
        proto = summary.protocol(config)
        assert proto["chain_steps"] == 500 and proto["min_grammatical"] == 0
        assert proto["decomposition_items"] == int(n)


def _torch_logspace_float32(start, end, steps):
    """torch.logspace on the CPU in float32: base^(start + step i) for the first half,
    base^(end - step (steps - 1 - i)) for the rest (its symmetric kernel)."""
    start, end = np.float32(start), np.float32(end)
    step = (end - start) / np.float32(steps - 1)
    exps = [
        start + step * np.float32(i) if i < steps // 2 else end - step * np.float32(steps - 1 - i)
        for i in range(steps)
    ]
    return np.float32(10.0) ** np.array(exps, np.float32)


# The authors' grammar checkpoints for 20000 epochs, written out from their formula.
AUTHORS_GRAMMAR_EPOCHS_20000 = (
    100, 124, 155, 193, 241, 301, 376, 468, 584, 729, 909, 1134, 1414,
    1763, 2199, 2742, 3419, 4264, 5318, 6632, 8270, 10313, 12861, 16038, 20000,
)  # fmt: skip


@pytest.mark.parametrize("n", ["5000", "12000", "70000"])
def test_grammar_paper_snapshots_are_the_authors_checkpoint_epochs(n):
    config = grammar_paper.get_config(n)
    num_epochs = config.training.num_epochs
    # modules/training.py: torch.logspace(2, torch.log10(torch.tensor(n_epochs)), 25).long();
    # torch's log10 of the integer tensor is the float32 nearest log10(n_epochs).
    end = np.float32(np.log10(num_epochs))
    theirs = _torch_logspace_float32(2, end, 25).astype(np.int64)
    assert config.snapshots.epochs == tuple(int(e) for e in theirs)
    if num_epochs == 20000:
        assert config.snapshots.epochs == AUTHORS_GRAMMAR_EPOCHS_20000
    if num_epochs == 35000:
        assert theirs[-1] == 34999  # torch 2.13's own output: 10^4.5440679 = 34999.985
    # Every one a snapshot (one epoch per compiled call), and nothing else.
    spe = run_lib.steps_per_epoch(config)
    assert tuple(int(s) // spe for s in run_lib.snapshot_steps(config)) == tuple(theirs)


def test_celeba_paper_samples_512_per_model_on_the_full_chain():
    config = celeba_paper.get_config()
    schedule = schedules.image_schedule(config.diffusion.num_steps)
    assert measure.sampling_schedule(schedule, config.analysis.sampling_steps) is schedule
    assert schedule.num_steps == 1000 and config.analysis.num_samples == 512
    # The authors' compare_scores.py in their Fig. 2 command: 512 items (one full batch).
    assert config.analysis.score_items == 512
    # Their eps step clips nothing, and the report does not say it does.
    protocol = summary.protocol(config)
    assert protocol["image_sampler"] == "paper" and protocol["clip_x0"] is None
    assert "clipped" not in report.protocol_text(protocol)
    # ... at their t = 50..200, 0-indexed: the same noise levels are our steps 51..201,
    # whose alpha_bar is their alphas_cumprod[t] (prod of the first t + 1 alphas).
    betas = np.linspace(1e-4, 0.02, 1000)  # their linear DDPM schedule
    theirs = np.cumprod(1 - betas)[[50, 100, 150, 200]]
    ours = np.asarray(schedule.alpha_bars)[list(config.analysis.score_times)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    # The authors' U-Net (tests/test_models.py checks what the two fields build).
    assert (config.model.layout, config.model.param_init) == ("authors", "torch")
    # Their test loss (loss_compute.py, EVAL_N=50): 50 held-out images at every step.
    a = config.analysis
    assert (a.test_loss_every_step, a.test_loss_items) == (True, 50)
    assert summary.protocol(config)["test_loss_every_step_items"] == 50
    # ... and theirs and compare_scores.py centre by the first 40,000 images' mean.
    assert (a.eval_centering, a.eval_centering_items) == ("common", 40_000)
    assert summary.protocol(config)["eval_centering_items"] == 40_000
    # Their training never draws their t = 0 (randint(low=1, high=1000)): our step 1.
    assert config.diffusion.min_train_step == 2


# The authors' CelebA checkpoints: training_times of their sample-split script
# (Why-Diffusion-Models-Don-t-Memorize, Experiments/src/Generation/
# sample_split_inference.py), written out: np.linspace(10, 4999, 50, dtype=int)[1:21].
AUTHORS_CELEBA_EPOCHS = (
    111, 213, 315, 417, 519, 620, 722, 824, 926, 1028,
    1129, 1231, 1333, 1435, 1537, 1639, 1740, 1842, 1944, 2046,
)  # fmt: skip


def test_celeba_paper_grid_is_the_authors_and_its_verdict_takes_their_medians():
    config = celeba_paper.get_config()
    assert config.snapshots.epochs == AUTHORS_CELEBA_EPOCHS
    spe = run_lib.steps_per_epoch(config)
    steps = run_lib.snapshot_steps(config)
    # Exactly their 20 epochs: no snapshot at the last epoch (5000).
    assert tuple(int(s) // spe for s in steps) == AUTHORS_CELEBA_EPOCHS
    assert all(s % spe == 0 for s in steps)
    assert config.analysis.aggregate == "median"
    assert summary.protocol(config)["aggregate"] == "median"
    # The other paper and CPU configs keep the mean.
    for other in (grammar_paper.get_config("12000"), digits_cpu.get_config()):
        assert summary.protocol(other)["aggregate"] == "mean"


def test_cpu_configs_keep_the_respaced_chain_and_search_every_snapshot():
    for config in (digits_cpu.get_config(), grammar_cpu.get_config()):
        assert summary.protocol(config)["chain_steps"] == 100
    # As the paper: the NN-divergence onset is sought over every snapshot.
    assert summary.protocol(grammar_cpu.get_config())["min_grammatical"] == 0.0
