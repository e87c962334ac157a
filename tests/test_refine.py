"""The training replayed between snapshots: bit-identical to the run, and the refined verdict."""

import jax
import numpy as np
import pytest

from configs import smoke
from diffusion_bias import checkpoints
from diffusion_bias import run as run_lib
from diffusion_bias.instrument import analysis
from diffusion_bias.instrument import report
from diffusion_bias.training import refine
from diffusion_bias.training import train


def test_refine_steps_fall_strictly_inside_the_neighbouring_intervals_on_call_boundaries():
    steps = [4, 8, 20, 60, 200]
    start, new = refine.refine_steps(steps, 2, per_call=4)
    assert start == 8
    assert new == [12, 16, 32, 40, 48]
    assert all(s % 4 == 0 and 8 < s < 60 and s not in steps for s in new)
    # At the first snapshot there is only the interval after it to fill.
    start, new = refine.refine_steps(steps, 0, per_call=4)
    assert start == 4 and new == []  # (4, 8) holds no other multiple of 4 but 8 itself
    start, new = refine.refine_steps(steps, 4, per_call=4, between=1)
    assert start == 60 and new == [128]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("refine"))
    train.train_and_evaluate(smoke.get_config(), workdir)
    return workdir


def test_a_replayed_snapshot_equals_the_run_s_leaf_for_leaf(run_dir, tmp_path):
    config = analysis.analysis_config(run_dir)
    steps = list(run_lib.snapshot_steps(config))
    start, end = steps[1], steps[2]
    between = [s for s in range(start + 4, end, 4)]
    replayed = refine.replay(config, run_dir, start, [*between, end], str(tmp_path))
    original = checkpoints.TwinCheckpoints(run_dir, steps, read_only=True)
    try:
        assert replayed.snapshot_steps() == [*between, end]
        ours, theirs = replayed.read_snapshot(end), original.read_snapshot(end)
        assert checkpoints.checksums(ours) == checkpoints.checksums(theirs)
        for a, b in zip(
            jax.tree.leaves(jax.device_get(ours)), jax.tree.leaves(jax.device_get(theirs))
        ):
            np.testing.assert_array_equal(a, b)
    finally:
        replayed.close()
        original.close()


def test_refined_analysis_adds_snapshots_around_the_extrema_and_reports_them(run_dir, tmp_path):
    out = str(tmp_path)
    stats = analysis.analyze(run_dir, output_dir=out, refine=True)
    refined = stats["refined"]
    assert refined is not None and refined["replays"]
    assert set(stats["steps"]) < set(refined["steps"]) and refined["steps"] == sorted(
        refined["steps"]
    )
    # Where the grids share a snapshot, the refined curves hold the same numbers.
    for i, step in enumerate(stats["steps"]):
        j = refined["steps"].index(step)
        assert refined["test_loss"][j] == stats["test_loss"][i]
    assert len(refined["bias"]) == len(refined["steps"])
    for key in ("bias_onset_epoch", "test_loss_min_epoch", "conclusive"):
        assert key in refined["verdict"]
    section = report.setting_section("digits", stats, [], out)
    assert f"{len(refined['steps'])} in all" in section
    # A rerun replays nothing and reads every snapshot from the cache: the same numbers.
    again = analysis.analyze(run_dir, output_dir=out, refine=True)
    assert again["refined"] == refined
