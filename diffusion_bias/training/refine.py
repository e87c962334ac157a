"""Extrema located finer than the snapshot grid: the training replayed between snapshots.

The bias onset and the test-loss minimum are snapshots of a log-spaced grid, and
neighbouring snapshots can be far apart where the extrema sit. Training is
deterministic (every batch and every noise draw is a function of the seed, the
twin and the step) and every snapshot holds the whole state, optimizer moments
included, so the steps between a snapshot and the next can be run again from
the earlier one, saving denser snapshots on the way: on the same device layout,
bit-identically (`tests/test_refine.py`); on another layout, equal up to float
reassociation.

`refine_steps` picks the new steps around an extremum; `replay` trains through
them into a folder of its own (the run's workdir is not written).
"""

from collections.abc import Sequence
import os

from absl import logging
import jax
import ml_collections
import numpy as np

from diffusion_bias import checkpoints
from diffusion_bias import run as run_lib
from diffusion_bias.training import twin_steps


def refine_steps(
    steps: Sequence[int] | np.ndarray, index: int, per_call: int, between: int = 3
) -> tuple[int, list[int]]:
    """New snapshot steps in the two grid intervals next to snapshot `index`.

    Args:
        steps: [C] the grid's steps, sorted.
        index: the snapshot of an extremum.
        per_call: steps per compiled call: every step is a multiple of it.
        between: new steps wanted inside each interval (evenly spaced; fewer
            when the interval is too short).

    Returns:
        (start, new): the grid step to replay from (the neighbour before, or
        `steps[index]` at the first snapshot) and the sorted new steps, none of
        them in `steps`, all in (start, next neighbour).
    """
    lo, hi = max(index - 1, 0), min(index + 1, len(steps) - 1)
    new = set()
    for a, b in ((steps[lo], steps[index]), (steps[index], steps[hi])):
        for x in np.linspace(a, b, between + 2)[1:-1]:
            s = int(round(x / per_call)) * per_call
            if a < s < b:
                new.add(s)
    return int(steps[lo]), sorted(new - {int(s) for s in steps})


def replay_layout(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, bool]:
    """`config` with a device layout this process has: the run's, else one device.

    Returns:
        (config, same): same says whether the run's own layout is kept (and
        the replay is then bit-identical).
    """
    wanted = config.training.get("num_devices", 0) or 1
    if jax.device_count() >= wanted:
        return config, True
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.training.update(twin_devices=1, num_devices=1)
    return config, False


def replay(
    config: ml_collections.ConfigDict,
    workdir: str,
    start: int,
    targets: Sequence[int],
    out_dir: str,
) -> checkpoints.TwinCheckpoints:
    """Trains the run of `workdir` from its snapshot `start` through `targets`, saving them.

    Args:
        config: the run's config (config.json as a ConfigDict).
        workdir: the run's folder; only read.
        start: a snapshot step of the run.
        targets: the steps to save, all after `start`.
        out_dir: where the replayed checkpoints go (out_dir/checkpoints).

    Returns:
        checkpoints.TwinCheckpoints of `out_dir`, read only, holding `targets`.
    """
    targets = sorted(int(t) for t in targets)
    done = checkpoints.TwinCheckpoints(out_dir, targets, read_only=True) if _has(out_dir) else None
    if done is not None and done.snapshot_steps() == targets:
        return done
    if done is not None:
        done.close()
    config, same = replay_layout(config)
    if not same:
        logging.warning(
            "Replaying on %d device(s), not the run's layout: the replayed snapshots equal "
            "an uninterrupted run's up to float reassociation, not bit for bit.",
            jax.device_count(),
        )
    run = run_lib.prepare(config, workdir)
    mesh = twin_steps.make_mesh(config)
    tx = twin_steps.get_optimizer(config)
    state, data = twin_steps.initial_state_and_data(config, run, mesh, tx)
    source = checkpoints.TwinCheckpoints(workdir, run.snapshot_steps, read_only=True)
    try:
        state = source.restore(start, checkpoints.abstract(state))
    finally:
        source.close()
    chunk = twin_steps.make_train_chunk(config, run.model, run.schedule, run.kind, mesh, tx)
    per_call = config.training.steps_per_call
    out = checkpoints.TwinCheckpoints(out_dir, targets)
    step = start
    logging.info(
        "Replaying steps %d to %d from snapshot %d of %s.", start, targets[-1], start, workdir
    )
    try:
        while step < targets[-1]:
            state, _ = chunk(state, data)
            step += per_call
            if out.save(step, state):
                logging.info("replayed to step %d of %d", step, targets[-1])
    finally:
        out.wait_until_finished()
        out.close()
    return checkpoints.TwinCheckpoints(out_dir, targets, read_only=True)


def _has(out_dir):
    return os.path.isdir(os.path.join(out_dir, "checkpoints"))
