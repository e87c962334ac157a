"""Snapshots of the twin state: a log-spaced plan kept forever, a rolling latest.

A run's workdir holds

    config.json      the resolved config the run was started with
    snapshots/STEP/  Orbax checkpoints at the planned steps, never deleted
    latest/STEP/     the newest state for resuming (Orbax keeps one)

Orbax writes each checkpoint into a temporary folder and renames it when
complete, so a run killed mid-save leaves no half checkpoint behind; a
checkpoint damaged afterwards is reported by name and skipped on resume.
"""

import json
import os

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp


def snapshot_plan(total_steps, num_snapshots, first_step, multiple_of=1):
    """Log-spaced snapshot steps from `first_step` to `total_steps`.

    Args:
        total_steps: the last training step (always in the plan).
        num_snapshots: how many steps to aim for; fewer come back when rounding
            makes neighbours coincide.
        first_step: the earliest snapshot, >= 1.
        multiple_of: every step is rounded to a multiple of this (the number of
            steps per compiled call, so that snapshots fall on call boundaries).

    Returns:
        int64 [S] sorted unique steps in [multiple_of, total_steps].
    """
    if not 1 <= first_step <= total_steps:
        raise ValueError(
            f"first snapshot step {first_step} must be in [1, total_steps={total_steps}]"
        )
    steps = np.geomspace(first_step, total_steps, num_snapshots)
    steps = np.round(steps / multiple_of).astype(np.int64) * multiple_of
    steps = np.clip(steps, multiple_of, total_steps)
    return np.unique(np.append(steps, total_steps))


def save_config(workdir, config):
    """Writes `config.json`, or checks that a resumed run has the same config.

    Fields under `analysis` are not compared: they do not change training. In a
    multi-process run every process checks, and process 0 alone writes.

    Raises:
        ValueError: the workdir holds a run with a different config; the
            message names the fields that differ.
    """
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort(sort_keys=True))
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        # The analysis section does not change training; it may differ.
        diffs = sorted(d for d in _diff(saved, current) if not d.startswith("analysis"))
        if diffs:
            raise ValueError(
                f"{workdir} holds a run with a different config; differing fields: "
                f"{', '.join(diffs)}. Use a new --workdir, or the same config to resume."
            )
        return
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() != 0:
        # One writer: processes sharing the workdir would race on the same temp file.
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(current, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def load_config(workdir):
    """The config dict saved by `save_config`."""
    with open(os.path.join(workdir, "config.json")) as f:
        return json.load(f)


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            yield from _diff(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")


def _barrier_prefix(name):
    """Multi-process options giving one manager's cross-process barriers their own names.

    With several processes, a manager syncs them at named barriers, some named
    alike in every manager; two managers saving at once (a snapshot while the
    latest still finishes in the background) then collide: "Barrier
    ThreadSaveMultiHostValueHolder:set_value_start is already ongoing".
    """
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


class TwinCheckpoints:
    """The snapshot and latest managers of one run."""

    def __init__(self, workdir):
        self.snapshots = ocp.CheckpointManager(
            os.path.join(os.path.abspath(workdir), "snapshots"),
            item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(
                create=True,
                cleanup_tmp_directories=True,
                multiprocessing_options=_barrier_prefix("snapshots"),
            ),
        )
        self.latest = ocp.CheckpointManager(
            os.path.join(os.path.abspath(workdir), "latest"),
            item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                create=True,
                cleanup_tmp_directories=True,
                multiprocessing_options=_barrier_prefix("latest"),
            ),
        )

    def save(self, step, state, snapshot, latest):
        """Saves `state` at `step` as a snapshot and/or as the latest state."""
        if snapshot:
            self.snapshots.save(step, args=ocp.args.StandardSave(state))
        if latest and not snapshot:
            self.latest.save(step, args=ocp.args.StandardSave(state))

    def snapshot_steps(self):
        return sorted(self.snapshots.all_steps())

    def restore_snapshot(self, step, abstract_state):
        """The state saved as snapshot `step`."""
        return self.snapshots.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def read_snapshot(self, step):
        """Snapshot `step` as saved, on this process's first device.

        Needs no target state, and reads snapshots written on any number of
        devices (the analysis may run elsewhere than the training).

        Returns:
            dict of arrays ("step", "params", "opt_state", "ema_params").
        """
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            self.snapshots.item_metadata(step),
        )
        return self.snapshots.restore(step, args=ocp.args.StandardRestore(target))

    def restore_newest(self, abstract_state):
        """The newest readable state, from either manager.

        A checkpoint that fails to load is logged by name and skipped, so a
        damaged latest falls back to the snapshot before it.

        Returns:
            (step, state), or (0, None) when nothing readable is saved.
        """
        candidates = [(s, self.latest) for s in self.latest.all_steps()]
        candidates += [(s, self.snapshots) for s in self.snapshots.all_steps()]
        for step, manager in sorted(candidates, key=lambda c: -c[0]):
            try:
                state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
            except Exception as err:  # Orbax raises many types for damaged files.
                path = os.path.join(str(manager.directory), str(step))
                logging.warning(
                    "Checkpoint %s is unreadable (%s: %s); trying an older one.",
                    path,
                    type(err).__name__,
                    err,
                )
                continue
            return step, state
        return 0, None

    def wait_until_finished(self):
        self.snapshots.wait_until_finished()
        self.latest.wait_until_finished()

    def close(self):
        self.snapshots.close()
        self.latest.close()


def abstract(state):
    """Shape/dtype/sharding structs of `state`, the target Orbax restores into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
