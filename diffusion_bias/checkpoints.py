"""Checkpoints of the twin state: log-spaced snapshots kept forever, the latest for resuming.

A run's workdir holds

    config.json         the resolved config the run was started with
                        (`config_file.py`)
    checkpoints/STEP/   Orbax checkpoints of one manager: the planned snapshot
                        steps (`run.snapshot_steps`), never deleted, and the
                        newest step, kept for resuming
    damaged/STEP/       checkpoints found unreadable or altered on resume, set aside

Orbax's own policies decide what is written and what is kept: a save at the
planned steps and every `latest_every` steps (SpecificStepsPolicy,
FixedIntervalPolicy), and after each save the planned steps and the newest one
stay (CustomSteps, LatestN(1)) while the others are deleted.

Orbax writes each checkpoint into a temporary folder and renames it when
complete, so a reader only ever lists complete checkpoints, and a run killed
mid-save leaves no half checkpoint behind (the next run's writer removes the
temporary folder). Opened with `read_only=True`, a manager neither creates nor
deletes anything: the analysis reads the snapshots complete so far while the
training still runs and saves.

Orbax keeps no checksum of the arrays, so every save records one of its own in
the checkpoint's custom metadata (`checksums`: per field of the state, a digest
of the arrays' bits, computed on the devices that hold them), and every read
compares the arrays it restored with it. A checkpoint damaged afterwards
(unreadable, or bytes overwritten so that it reads back other numbers) raises
`DamagedCheckpoint` naming it; resuming sets it aside and tries the one before.
The same digest is the snapshot's identity: the analysis keys its cache by it,
so a retrained run never reuses another run's statistics. Checkpoints saved
before checksums were recorded read back unchecked.

SIGTERM (how schedulers announce a preemption) is caught while training runs
(`preemption.py`): the loop saves the step it reached and exits; the same
command then resumes from that step.

This layout (one `checkpoints/` folder) replaced `snapshots/` and `latest/`;
workdirs of the old layout are not read.
"""

import dataclasses
import hashlib
import os
from typing import Any
from typing import Self

from absl import logging
import flax.struct
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
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

    def evaluated_params(self) -> Any:
        """The parameters the statistics read: the average if kept, else the trained ones."""
        ema = self.ema_params
        return ema if ema is not None and jax.tree.leaves(ema) else self.params


# The fields of a TwinState that hold arrays, each with its own checksum.
FIELDS = ("params", "opt_state", "ema_params")


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be read, or reads back other numbers than were saved."""

    def __init__(self, path, reason):
        super().__init__(f"checkpoint {path} is damaged: {reason}")
        self.path, self.reason = path, reason

    @classmethod
    def unreadable(cls, path: str, err: BaseException) -> Self:
        """From the error reading it raised, in one line (TensorStore's run to pages)."""
        first = (str(err).splitlines() or [""])[0].split(" [tensorstore_spec")[0]
        return cls(path, f"unreadable ({type(err).__name__}: {first[:300]})")


def _words(x):
    """The bits of array `x` as uint32, its shape kept (64-bit types gain a last axis of 2)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    bits = x.dtype.itemsize * 8
    if bits < 32:
        return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{bits}")).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)


@jax.jit
def _leaf_sums(leaves):
    """[L, 2] uint32: per leaf, the sum of its words and their sum weighted by 2i+1.

    i is a word's flat index. Integer sums wrap exactly, so the result is the
    same for any reduction order, sharding or device; an odd weight is
    invertible modulo 2^32, so changing any one word changes the weighted sum.
    """
    sums = []
    for x in leaves:
        w = _words(x)
        # The flat index from per-axis iotas: a reshape would gather a sharded array.
        strides = np.cumprod((w.shape + (1,))[:0:-1])[::-1] % 2**32
        index = sum(
            jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * np.uint32(stride)
            for axis, stride in enumerate(strides)
        )
        index = jnp.asarray(index, jnp.uint32)
        weighted = jnp.sum(w * (2 * index + 1), dtype=jnp.uint32)
        sums.append(jnp.stack([jnp.sum(w, dtype=jnp.uint32), weighted]))
    return jnp.stack(sums) if sums else jnp.zeros((0, 2), jnp.uint32)


def checksum(tree: Any) -> str:
    """A hex digest of the bits, shapes and dtypes of `tree`'s arrays, wherever they live.

    The arrays are reduced where they are (no transfer of the arrays to the
    host), then the per-leaf sums are hashed with their names, shapes and
    dtypes. Leaves are named as Orbax names them on disk (`ocp.tree.to_flat_dict`),
    so a tree and its restored copy (tuples and namedtuples read back as
    dicts) have the same digest.
    """
    flat = ocp.tree.to_flat_dict(tree, sep="/")
    names = sorted(flat)
    sums = _leaf_sums([jnp.asarray(flat[n]) for n in names])
    # The sums come back replicated: any addressable copy is the whole result.
    sums = np.asarray(sums.addressable_data(0))
    digest = hashlib.sha256(np.ascontiguousarray(sums, np.uint32).tobytes())
    for name in names:
        x = flat[name]
        digest.update(f"{name}:{tuple(x.shape)}:{jnp.dtype(x.dtype)};".encode())
    return digest.hexdigest()[:16]


def checksums(state: TwinState) -> dict[str, str]:
    """{field: checksum} of a TwinState's array fields (`FIELDS`)."""
    return {name: checksum(getattr(state, name)) for name in FIELDS}


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


def snapshot_plan(
    total_steps: int, num_snapshots: int, first_step: int, multiple_of: int = 1
) -> np.ndarray:
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
        # A reader's memo of each step's metadata: a complete step never changes, and
        # Orbax reads and parses its files at every call (about 50 ms a step).
        self._metadata, self._item_metadata = {}, {}
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
            # The PyTree handler (what StandardCheckpointHandler wraps; both
            # read each other's checkpoints) restores a subtree: the analysis
            # reads the evaluated parameters alone.
            item_handlers=ocp.PyTreeCheckpointHandler(),
            options=options,
        )

    def save(self, step: int, state: TwinState, force: bool = False) -> bool:
        """Saves the TwinState `state` at `step` if the policies ask for it (or `force`).

        The save records the state's `checksums` in the checkpoint's metadata.

        Returns:
            Whether a save started (it completes in the background).
        """
        if not (force or self._manager.should_save(step)):
            return False
        try:
            return self._manager.save(
                step,
                args=ocp.args.PyTreeSave(_to_tree(state)),
                force=force,
                custom_metadata={"checksums": checksums(state)},
            )
        except Exception as err:
            # A save finishes in the background: its error may surface at the next one.
            err.add_note(f"saving step {step} (or finishing the save before it)")
            raise

    def all_steps(self) -> list[int]:
        """Every complete checkpoint's step, planned or not, sorted."""
        return sorted(self._manager.all_steps())

    def snapshot_steps(self) -> list[int]:
        """The complete planned snapshots, sorted (a running training adds more)."""
        planned = set(self._planned)
        return [s for s in self.all_steps() if s in planned]

    def recorded_checksums(self, step: int) -> dict[str, str]:
        """{field: checksum} saved with checkpoint `step`; {} for one saved without.

        Raises:
            DamagedCheckpoint: its metadata cannot be read.
        """
        try:
            custom = self._memo(self._metadata, step, self._manager.metadata).custom_metadata or {}
        except Exception as err:  # Orbax and TensorStore raise many types for damaged files.
            raise DamagedCheckpoint.unreadable(self._path(step), err) from err
        return dict(custom.get("checksums") or {})

    def _memo(self, memo, step, read):
        """read(step), kept in `memo` by a reader; a writer reads it again each time."""
        if step in memo:
            return memo[step]
        value = read(step)
        if self._read_only:
            memo[step] = value
        return value

    def evaluated_field(self, step: int) -> str:
        """The field the statistics read: "ema_params" if `step` keeps an average, else "params".

        Raises:
            DamagedCheckpoint: its metadata cannot be read.
        """
        try:
            ema = self._memo(self._item_metadata, step, self._manager.item_metadata).get(
                "ema_params"
            )
        except Exception as err:  # Orbax and TensorStore raise many types for damaged files.
            raise DamagedCheckpoint.unreadable(self._path(step), err) from err
        return "ema_params" if ema is not None and jax.tree.leaves(ema) else "params"

    def read_snapshot(self, step: int, evaluated_only: bool = False) -> TwinState:
        """Checkpoint `step` as saved, on this process's first device, checked.

        Needs no target state, and reads checkpoints written on any number of
        devices (the analysis may run elsewhere than the training).

        Args:
            step: a complete checkpoint's step.
            evaluated_only: restore only the parameters the statistics read
                (`TwinState.evaluated_params`); the other fields come back None.

        Returns:
            The TwinState saved at `step`.

        Raises:
            DamagedCheckpoint: unreadable, or its arrays differ from their checksum.
        """
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        try:
            target = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                dict(self._memo(self._item_metadata, step, self._manager.item_metadata)),
            )
            if evaluated_only:
                field = self.evaluated_field(step)
                target = {"step": target["step"], field: target[field]}
            tree = self._restore(step, target, partial=evaluated_only)
        except Exception as err:  # Orbax and TensorStore raise many types for damaged files.
            raise DamagedCheckpoint.unreadable(self._path(step), err) from err
        state = _from_tree({"params": None, "opt_state": None, **tree})
        self._verify(step, state, [f for f in FIELDS if f in tree])
        return state

    def restore(self, step: int, abstract_state: TwinState) -> TwinState:
        """Checkpoint `step` restored into `abstract_state` (shardings included), checked.

        Raises:
            DamagedCheckpoint: unreadable, or its arrays differ from their checksums.
        """
        try:
            tree = self._restore(step, _to_tree(abstract_state))
        except Exception as err:  # Orbax raises many types for damaged files.
            raise DamagedCheckpoint.unreadable(self._path(step), err) from err
        state = _from_tree(tree)
        self._verify(step, state, FIELDS)
        return state

    def _restore(self, step, target, partial=False):
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        return self._manager.restore(
            step,
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=partial
            ),
        )

    def _verify(self, step, state, fields):
        """Raises DamagedCheckpoint when a field of `state` differs from its recorded checksum."""
        recorded = self.recorded_checksums(step)
        for field in fields:
            if field in recorded and checksum(getattr(state, field)) != recorded[field]:
                raise DamagedCheckpoint(
                    self._path(step), f"its {field} differ from the checksum saved with them"
                )

    def restore_newest(self, abstract_state: TwinState) -> tuple[int, TwinState | None]:
        """The newest intact TwinState; damaged newer ones are set aside.

        `abstract_state` (a TwinState of `abstract`) is the target restored into.

        A checkpoint that fails to load or to match its checksums is logged by name and moved to
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
                state = self.restore(step, abstract_state)
            except DamagedCheckpoint as err:
                logging.warning(
                    "%s; setting it aside in %s and trying an older one.",
                    err,
                    os.path.join(self._workdir, "damaged"),
                )
                damaged.append(step)
                continue
            found = (step, state)
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

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def abstract(state: TwinState) -> TwinState:
    """Shape/dtype/sharding structs of `state`, the target Orbax restores into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
