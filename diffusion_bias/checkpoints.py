"""Checkpoints of the twin state: log-spaced snapshots kept forever, the latest for resuming.

A run's workdir holds

    config.json         the resolved config the run was started with
                        (`config_file.py`)
    checkpoints/STEP/   Orbax checkpoints of one manager: the planned snapshot
                        steps (`run.snapshot_steps`), never deleted, and the
                        newest step, kept for resuming
    damaged/STEP/       checkpoints found unreadable on resume, set aside

Orbax's own policies decide what is written and what is kept: a save at the
planned steps and every `latest_every` steps (SpecificStepsPolicy,
FixedIntervalPolicy), and after each save the planned steps and the newest one
stay (CustomSteps, LatestN(1)) while the others are deleted.

Orbax writes each checkpoint into a temporary folder and renames it when
complete, so a reader only ever lists complete checkpoints, and a run killed
mid-save leaves no half checkpoint behind (the next run's writer removes the
temporary folder). Opened with `read_only=True`, a manager neither creates nor
deletes anything: the analysis reads the snapshots complete so far while the
training still runs and saves. A checkpoint damaged afterwards is reported by
name, set aside and skipped on resume.

SIGTERM (how schedulers announce a preemption) is caught while training runs
(`preemption.py`): the loop saves the step it reached and exits; the same
command then resumes from that step.

This layout (one `checkpoints/` folder) replaced `snapshots/` and `latest/`;
workdirs of the old layout are not read.
"""

import dataclasses
import os
from typing import Any

from absl import logging
import flax.struct
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


@flax.struct.dataclass
class TwinState:
    """The twins' training state; all but `step` stacked on a leading twin axis [K].

    Attributes:
        step: [] int32, the optimizer steps taken.
        params: the twins' parameters.
        opt_state: the twins' optimizer states.
        ema_params: the exponential moving average of `params`; None (or an
            empty tree, as read back) when training keeps none.

    On disk it is the dict {"step", "params", "opt_state", "ema_params"}, the
    layout of the runs saved before this class existed.
    """

    step: Any
    params: Any
    opt_state: Any
    ema_params: Any

    def evaluated_params(self):
        """The parameters the statistics read: the average if kept, else the trained ones."""
        ema = self.ema_params
        return ema if ema is not None and jax.tree.leaves(ema) else self.params


def _to_tree(state):
    """The saved dict of a TwinState (one level: its fields stay as they are)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(TwinState)}


def _from_tree(tree):
    return TwinState(
        step=tree["step"],
        params=tree["params"],
        opt_state=tree["opt_state"],
        ema_params=tree.get("ema_params"),
    )


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


class TwinCheckpoints:
    """The checkpoints of one run, in `workdir/checkpoints`.

    Args:
        workdir: the run's folder.
        snapshot_steps: int [S] the planned snapshot steps of the run; they are
            saved and never deleted, and they alone are `snapshot_steps()`.
        latest_every: a writer also saves every this many steps, keeping only
            the newest of those; None saves the planned steps alone.
        read_only: open for reading only (the analysis, tests): nothing is
            created, cleaned up or deleted, so a reader is safe beside a
            training run that writes the same folder.
    """

    def __init__(self, workdir, snapshot_steps, latest_every=None, read_only=False):
        self._workdir = os.path.abspath(workdir)
        self._planned = sorted({int(s) for s in np.asarray(snapshot_steps).ravel()})
        self._read_only = read_only
        if read_only:
            options = ocp.CheckpointManagerOptions(
                read_only=True,
                create=False,
                # No per-step metadata read on opening: a step the training
                # deletes meanwhile (an older latest) cannot fail the listing.
                lightweight_initialize=True,
                save_interval_steps=0,
            )
        else:
            save = [policies.SpecificStepsPolicy(frozenset(self._planned))]
            if latest_every:
                save.append(policies.FixedIntervalPolicy(latest_every))
            options = ocp.CheckpointManagerOptions(
                create=True,
                # Only a writer may remove the temporary folders of an
                # interrupted save: a reader would delete a save in flight.
                cleanup_tmp_directories=True,
                save_decision_policy=policies.AnySavePolicy(save),
                preservation_policy=policies.AnyPreservationPolicy(
                    [policies.CustomSteps(self._planned), policies.LatestN(1)]
                ),
            )
        self._manager = ocp.CheckpointManager(
            os.path.join(self._workdir, "checkpoints"),
            item_handlers=ocp.StandardCheckpointHandler(),
            options=options,
        )

    def save(self, step, state, force=False):
        """Saves the TwinState `state` at `step` if the policies ask for it (or `force`).

        Returns:
            Whether a save started (it completes in the background).
        """
        return self._manager.save(step, args=ocp.args.StandardSave(_to_tree(state)), force=force)

    def all_steps(self):
        """Every complete checkpoint's step, planned or not, sorted."""
        return sorted(self._manager.all_steps())

    def snapshot_steps(self):
        """The complete planned snapshots, sorted (a running training adds more)."""
        planned = set(self._planned)
        return [s for s in self.all_steps() if s in planned]

    def read_snapshot(self, step):
        """Checkpoint `step` as saved, on this process's first device.

        Needs no target state, and reads checkpoints written on any number of
        devices (the analysis may run elsewhere than the training).

        Returns:
            The TwinState saved at `step`.
        """
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            self._manager.item_metadata(step),
        )
        return _from_tree(self._manager.restore(step, args=ocp.args.StandardRestore(target)))

    def restore_newest(self, abstract_state):
        """The newest readable TwinState; unreadable newer ones are set aside.

        `abstract_state` (a TwinState of `abstract`) is the target restored into.

        A checkpoint that fails to load is logged by name and moved to
        workdir/damaged/, so that the resumed run saves that step again in its
        place (Orbax saves no step at or below an existing one).

        Returns:
            (step, state), or (0, None) when nothing readable is saved.
        """
        if self._read_only:
            raise ValueError("restore_newest sets damaged checkpoints aside: open as a writer")
        damaged, found = [], (0, None)
        for step in reversed(self.all_steps()):
            try:
                state = self._manager.restore(
                    step, args=ocp.args.StandardRestore(_to_tree(abstract_state))
                )
            except Exception as err:  # Orbax raises many types for damaged files.
                logging.warning(
                    "Checkpoint %s is unreadable (%s: %s); setting it aside in %s and "
                    "trying an older one.",
                    self._path(step),
                    type(err).__name__,
                    err,
                    os.path.join(self._workdir, "damaged"),
                )
                damaged.append(step)
                continue
            found = (step, _from_tree(state))
            break
        if damaged:
            self._set_aside(damaged)
        return found

    def _path(self, step):
        return os.path.join(str(self._manager.directory), str(step))

    def _set_aside(self, steps):
        """Moves checkpoints `steps` to workdir/damaged/STEP (or STEP.N if taken)."""
        if jax.process_index() == 0:
            os.makedirs(os.path.join(self._workdir, "damaged"), exist_ok=True)
            for step in steps:
                dest, n = os.path.join(self._workdir, "damaged", str(step)), 0
                while os.path.exists(dest):
                    n += 1
                    dest = os.path.join(self._workdir, "damaged", f"{step}.{n}")
                os.replace(self._path(step), dest)
        if jax.process_count() > 1:
            # The other processes list the folder only once process 0 has moved them.
            multihost_utils.sync_global_devices("diffusion_bias: damaged checkpoints set aside")
        self._manager.reload()

    def wait_until_finished(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()


def abstract(state):
    """Shape/dtype/sharding structs of `state`, the target Orbax restores into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
