"""Checkpoints of a training subprocess: read while saved, resumed after SIGTERM or kill -9.

These need a run long enough for a signal to land mid-training; they live
apart from test_train.py so that the two files run on separate workers.
"""

import os
import re
import signal
import time

import jax
import pytest

from diffusion_bias import preemption
from tests import test_train


def _checkpoints_after(workdir, step):
    """Steps of the complete checkpoints in `workdir` later than `step`."""
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return [int(d) for d in os.listdir(folder) if d.isdigit() and int(d) > step]


# A slower run (more epochs) so that a signal lands mid-training, after a save.
LONG = ["--config.training.num_epochs=40"]


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """A 40-epoch run in a subprocess, its snapshots read as the analysis reads them meanwhile.

    Every pass opens the checkpoints read only, lists the snapshots and reads
    each new one, until the training exits.

    Returns:
        (workdir, training output, listings [each a list of steps], {step:
        params read while training}, steps read while the training still ran).
    """
    workdir = str(tmp_path_factory.mktemp("long"))
    proc = test_train._launch(workdir, *LONG)
    listings, seen, while_running = [], {}, []
    # A reader that deleted saves in flight would leave the training waiting forever.
    deadline = time.time() + 300
    try:
        while proc.poll() is None:
            assert time.time() < deadline, f"training still running after 300 s; read {listings}"
            if os.path.exists(os.path.join(workdir, "config.json")):
                ckpts = test_train._reader(workdir)
                try:
                    steps = ckpts.snapshot_steps()
                    listings.append(steps)
                    for step in steps:
                        if step not in seen:
                            seen[step] = jax.device_get(ckpts.read_snapshot(step).params)
                            if proc.poll() is None:
                                while_running.append(step)
                finally:
                    ckpts.close()
            time.sleep(0.02)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    return workdir, out, listings, seen, while_running


def test_analysis_reads_only_complete_snapshots_while_training_saves(long_run):
    workdir, _, listings, seen, while_running = long_run
    plan = list(test_train._plan(workdir))
    # Training finished with every snapshot, and no other checkpoint left.
    ckpts = test_train._reader(workdir)
    assert ckpts.snapshot_steps() == ckpts.all_steps() == plan
    ckpts.close()
    # The reader saw snapshots appear in order while the run was going on...
    assert len(while_running) >= 2, (listings, while_running)
    for steps in listings:
        assert steps == plan[: len(steps)]
    # ...and what it read then is exactly what the finished run holds.
    final = test_train._all_snapshot_params(workdir)
    assert set(seen) <= set(final)
    for step, params in seen.items():
        test_train._assert_trees_equal(params, final[step])


def _start_and_wait_for_a_save(workdir, after=-1):
    """A LONG run started in `workdir`, returned once it has saved a step past `after`."""
    proc = test_train._launch(workdir, *LONG)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not _checkpoints_after(workdir, after):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    return proc


# One workdir takes both interruptions in turn (SIGTERM, then kill -9 of the resumed
# run), so that the pair costs one run of 40 epochs, not two. The SIGTERM half tests
# preemption.py too; it stays here, beside the uninterrupted `long_run` it is
# compared with, as a test_preemption.py of its own would need its own 40-epoch run.
def test_sigterm_saves_the_step_reached_kill_9_loses_no_save_and_reruns_resume_bit_identically(
    long_run, tmp_path
):
    workdir = str(tmp_path)
    proc = _start_and_wait_for_a_save(workdir)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == preemption.PREEMPTED_EXIT_STATUS, out
    assert "Traceback" not in out, out
    match = re.search(r"SIGTERM: saved step (\d+)/160", out)
    assert match, out
    stopped = int(match[1])
    assert 0 < stopped < 160
    ckpts = test_train._reader(workdir)
    assert ckpts.all_steps()[-1] == stopped
    ckpts.close()

    # The rerun resumes from the step SIGTERM saved; killed once it has saved a later one...
    rerun = _start_and_wait_for_a_save(workdir, after=stopped)
    os.kill(rerun.pid, signal.SIGKILL)
    out, _ = rerun.communicate(timeout=120)
    assert f"Resuming from step {stopped}." in out, out

    # ...the next resumes from a save of its own, and ends with the uninterrupted snapshots.
    last = test_train._launch(workdir, *LONG)
    out, _ = last.communicate(timeout=300)
    assert last.returncode == 0, out
    match = re.search(r"Resuming from step (\d+)\.", out)
    assert match and int(match[1]) > stopped, out
    resumed, uninterrupted = (
        test_train._all_snapshot_params(workdir),
        test_train._all_snapshot_params(long_run[0]),
    )
    assert list(resumed) == list(uninterrupted) == list(test_train._plan(workdir))
    for step in resumed:
        test_train._assert_trees_equal(resumed[step], uninterrupted[step])
