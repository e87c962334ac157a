"""The bias monitor inside `launch.train`: built from the config, resumable, rows on disk.

With `config.monitor.enabled`, the training loop holds one `MonitorHook`: it
catches up on resume, runs the monitor at every snapshot and saves what a
stopping rule keeps. In the workdir:

    monitor.jsonl        one row per snapshot: epoch, statistics, the rule's
                         decision ("continue" or "stop"), kept_epoch once stopped
    monitor_state.npz    the monitor's per-item history, to continue after a restart
    result.json          once a rule has stopped training: rule, reason, kept epoch/step
    result/              the kept snapshot's parameters (Orbax), the run's result

A resumed run reloads the history up to the step it resumes from, so the rule
sees exactly the curves an uninterrupted run would have seen. The state and the
result record the run's `config_file.training_fingerprint`: those of another
run (a workdir retrained with another config) are not reloaded. Rows and
result are strict JSON (null where a statistic is undefined).
"""

import json
import os
import time
from typing import Any

from absl import logging
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from diffusion_bias import files
from diffusion_bias.config import config_file
from diffusion_bias.diffusion import coupled
from diffusion_bias.instrument import monitor as monitor_lib

ROWS = "monitor.jsonl"
STATE = "monitor_state.npz"
RESULT = "result.json"
RESULT_PARAMS = "result"


def build(config: ml_collections.ConfigDict, run: Any) -> monitor_lib.BiasMonitor:
    """The BiasMonitor of `run` (a run.Run): its twins' data, model, schedule; `config.monitor`.

    The training sets and held-out items are the items as drawn; `run.offsets`
    [K, C] the twins' centring shifts (images), see `BiasMonitor`.
    """
    kind = run.kind
    return monitor_lib.BiasMonitor(
        coupled.denoiser(run.model, kind),
        run.schedule,
        np.asarray(run.twin_data.train),
        np.asarray(run.twin_data.heldout),
        kind,
        monitor_lib.MonitorSettings.from_config(config.monitor),
        num_symbols=getattr(run.model, "num_symbols", None),
        clip_x0=config.analysis.clip_x0 or None,  # the probe applies it to eps models only
        twin_strategy=config.training.twin_strategy,
        offsets=run.offsets,
    )


def _training(workdir):
    """The fingerprint of the run whose config.json `workdir` holds."""
    return config_file.training_fingerprint(config_file.load_config(workdir))


def restore(monitor: monitor_lib.BiasMonitor, workdir: str, upto_epoch: float) -> None:
    """Reloads the monitor's history up to `upto_epoch` and rewrites its rows to match.

    A state saved by another run (another training fingerprint) is not reloaded.
    """
    training = _training(workdir)
    path = os.path.join(workdir, STATE)
    if not os.path.exists(path):
        return
    with np.load(path) as f:
        state = {k: f[k] for k in f.files}
    if str(state.pop("training", training)) == training:
        monitor.load_state_dict(state, upto_epoch=upto_epoch)
    else:
        logging.warning("%s was saved by another run (another config); not reloaded.", path)
    _write_rows(monitor, workdir)


def record(monitor: monitor_lib.BiasMonitor, workdir: str) -> None:
    """Saves the monitor's state (with the run's fingerprint) and rows after a snapshot."""
    training = _training(workdir)
    with files.atomic_write(os.path.join(workdir, STATE), "wb") as f:
        np.savez(f, training=np.asarray(training), **monitor.state_dict())
    _write_rows(monitor, workdir)


def _write_rows(monitor, workdir):
    with files.atomic_write(os.path.join(workdir, ROWS)) as f:
        f.writelines(files.json_line(r) + "\n" for r in monitor.rows)


def stopped_result(workdir: str) -> dict[str, Any] | None:
    """The saved result.json of the workdir's run if a rule stopped it, else None."""
    path = os.path.join(workdir, RESULT)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    if result.get("training", _training(workdir)) != _training(workdir):
        # Kept, renamed, so that no reader takes it for this run's result.
        logging.warning(
            "%s was written by another run (another config); renamed %s.old_run.", path, RESULT
        )
        os.replace(path, path + ".old_run")
        return None
    return result


def save_result(
    workdir: str,
    monitor: monitor_lib.BiasMonitor,
    kept_step: int | None,
    stop_step: int,
    kept_state: Any,
) -> dict[str, Any]:
    """Writes result.json and the kept snapshot's parameters (result/).

    `kept_state` is the checkpoints.TwinState at `kept_step`, None when no
    snapshot is kept (a rule that stops at the first snapshot: kept_epoch null).
    """
    params = {}
    if kept_state is not None:
        kept = dict(params=kept_state.params, ema_params=kept_state.ema_params)
        params = {k: v for k, v in kept.items() if v}
    target = os.path.join(os.path.abspath(workdir), RESULT_PARAMS)
    if kept_step is not None:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(target, params, force=True)
    result = dict(
        rule=monitor.stop,
        reason=monitor.reason,
        kept_epoch=monitor.kept_epoch if kept_step is not None else None,
        kept_step=kept_step,
        stopped_at_step=int(stop_step),
        parameters=RESULT_PARAMS if kept_step is not None else None,
        training=_training(workdir),
    )
    with files.atomic_write(os.path.join(workdir, RESULT)) as f:
        json.dump(files.finite_or_none(result), f, indent=1, allow_nan=False)
    return result


class MonitorHook:
    """The monitor as the training loop's one hook.

    `resume` builds it (or none) and catches up with the snapshots the monitor
    has not seen; `at_snapshot` runs it on a snapshot, records its row (files,
    TensorBoard) and, when its rule stops, saves the kept state.
    """

    def __init__(
        self,
        monitor: monitor_lib.BiasMonitor,
        run: Any,
        workdir: str,
        ckpts: Any,
        board: Any = None,
    ):
        """`monitor` a BiasMonitor (`build`); `ckpts` the run's checkpoints.TwinCheckpoints;
        `board` the training's metric writer (None on other processes)."""
        self.monitor, self.workdir, self.ckpts, self.board = monitor, workdir, ckpts, board
        self.steps_per_epoch = run.steps_per_epoch

    @classmethod
    def resume(
        cls,
        config: ml_collections.ConfigDict,
        run: Any,
        workdir: str,
        state: Any,
        start: int,
        ckpts: Any,
        board: Any = None,
    ) -> tuple["MonitorHook | None", bool]:
        """The hook (None if the monitor is disabled), caught up with the snapshots up
        to `start`, where training resumes with `state`.

        Returns:
            (hook, stopped): stopped when its rule has stopped the run, in an earlier
            run or on a snapshot saved before a crash that it had not seen.
        """
        if not config.monitor.enabled:
            return None, False
        done = stopped_result(workdir)
        if done is not None:
            logging.info("A %s rule already stopped this run: %s", done["rule"], done["reason"])
            return None, True
        spe = run.steps_per_epoch
        hook = cls(build(config, run), run, workdir, ckpts, board)
        restore(hook.monitor, workdir, upto_epoch=start / spe)
        if hook.monitor.kept_epoch is not None:
            # The rule had stopped, and the run ended before writing its result.
            hook._save_result(start)
            return hook, True
        # Snapshots saved before a crash that the monitor had not yet seen.
        rows = hook.monitor.rows
        seen = rows[-1]["epoch"] * spe if rows else 0
        for missed in [int(s) for s in run.snapshot_steps if seen < s <= start]:
            missed_state = state if missed == start else ckpts.read_snapshot(missed)
            if hook.at_snapshot(missed_state, missed):
                return hook, True
        return hook, False

    def at_snapshot(self, state: Any, step: int) -> bool:
        """Runs the monitor on the snapshot `state` at `step`; True when its rule stops.

        Its row goes to monitor.jsonl and, as monitor/<statistic> scalars at `step`'s
        epoch, to the training TensorBoard beside the train loss.
        """
        spe = self.steps_per_epoch
        began = time.time()
        row = self.monitor(state.evaluated_params(), epoch=step / spe)
        record(self.monitor, self.workdir)
        scalars = {k: v for k, v in row.items() if isinstance(v, float) and k != "epoch"}
        if self.board is not None:
            monitored = {f"monitor/{k}": v for k, v in scalars.items() if k != "kept_epoch"}
            self.board.scalars(int(round(step / spe)), monitored)
            # A kill loses no snapshot's row: the event file is complete up to here.
            self.board.flush()
        logging.info(
            "monitor at epoch %g: %s  (%.1f s)",
            row["epoch"],
            "  ".join(f"{k} {v:.4g}" for k, v in scalars.items()),
            time.time() - began,
        )
        if row["decision"] != "stop":
            return False
        self._save_result(step)
        return True

    def _save_result(self, step):
        """Writes the stopped monitor's result (kept parameters, result.json) at `step`."""
        spe, monitor = self.steps_per_epoch, self.monitor
        kept = monitor.kept_epoch
        kept_step = int(round(kept * spe)) if np.isfinite(kept) else None
        self.ckpts.wait_until_finished()
        kept_state = self.ckpts.read_snapshot(kept_step) if kept_step is not None else None
        save_result(self.workdir, monitor, kept_step, step, kept_state)
        logging.info(
            "Stopping at epoch %g (rule %s): %s; %s.",
            step / spe,
            monitor.stop,
            monitor.reason,
            f"kept the snapshot at epoch {kept:g}" if kept_step is not None else "no snapshot kept",
        )
