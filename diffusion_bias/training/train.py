"""Twin training: K models on K disjoint splits, trained as one computation, resumably.

`train_and_evaluate` runs the compiled chunks of steps of `twin_steps` (where
the twins, their sharding and their random streams are described) from the
newest checkpoint in the workdir to the end, saving the planned snapshots.
Everything random is a function of (config.seed, split, step), so a resumed
run replays exactly the same stream, and ends with the same parameters as an
uninterrupted one.

Several processes (after `jax.distributed.initialize`) run the same program on
one global mesh: each holds the full replicated data, all of them save the
checkpoints into the shared workdir, and process 0 alone writes the other files
and logs progress.

SIGTERM (preemption) or Ctrl-C stops the run at the next call boundary, after saving that
step: the process exits with status 75 (`preemption.PREEMPTED_EXIT_STATUS`) and
the same command resumes, to the same parameters as an uninterrupted run.

One training per workdir: process 0 holds the lock `W/train.lock` while it
trains, and a second training of the same workdir refuses to start
(`files.Busy`); the lock dies with its process, so the file a killed run leaves
behind is taken over by the next run.
"""

import contextlib
import json
import os
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from diffusion_bias import checkpoints
from diffusion_bias import files
from diffusion_bias import metric_writers
from diffusion_bias import run as run_lib
from diffusion_bias.config import config_checks
from diffusion_bias.config import config_file
from diffusion_bias.training import monitor_run
from diffusion_bias.training import preemption
from diffusion_bias.training import twin_steps

LOCK = "train.lock"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> checkpoints.TwinState:
    """Trains the twins of `config` in `workdir`, resuming what is there.

    Returns:
        The final checkpoints.TwinState.

    Raises:
        preemption.Preempted: (a SystemExit, status 75) on SIGTERM, once the
            step reached is saved; the same call resumes from it.
        files.Busy: another process is training in `workdir` (`LOCK`).
    """
    # Every check, the pool size included, before the first write into the workdir.
    config_checks.check_config(config)
    _check_workdir(workdir)
    with contextlib.ExitStack() as stack:
        if jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            what = f"a training in {workdir}"
            stack.enter_context(files.exclusive(os.path.join(workdir, LOCK), what))
        return _train(config, workdir)


def _check_workdir(workdir):
    """Raises ConfigError when `workdir` is a file or cannot be written (one line, not OSError)."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise config_checks.ConfigError(f"--workdir={workdir} is a file, not a folder")
    existing = workdir
    while not os.path.exists(existing):
        existing = os.path.dirname(os.path.abspath(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise config_checks.ConfigError(f"--workdir={workdir}: {existing} cannot be written to")


def _train(config, workdir):
    run = _begin(config, workdir)
    mesh = twin_steps.make_mesh(config)
    tx = twin_steps.get_optimizer(config)  # built once: the state's and the step's
    state, data = twin_steps.initial_state_and_data(config, run, mesh, tx)
    per_call = config.training.steps_per_call
    latest_every = -(-config.snapshots.latest_every_steps // per_call) * per_call
    # Saves at the planned steps, every `latest_every` and at `total`.
    ckpts = checkpoints.TwinCheckpoints(workdir, run.snapshot_steps, latest_every=latest_every)
    start, restored = ckpts.restore_newest(checkpoints.abstract(state))
    primary = jax.process_index() == 0
    if restored is not None:
        state = restored
        if primary:
            logging.info("Resuming from step %d.", start)
    chunk = twin_steps.make_train_chunk(config, run.model, run.schedule, run.kind, mesh, tx)
    progress = _Progress(config, workdir, run, start) if primary else None
    board = progress.board if primary else None
    # SIGTERM from here on: save the step reached, then raise Preempted (exit 75).
    notice = preemption.PreemptionNotice.install()
    try:
        monitor, stopped = monitor_run.MonitorHook.resume(
            config, run, workdir, state, start, ckpts, board
        )
        if not stopped:
            loop = _Loop(config, run, workdir, ckpts, notice, monitor, progress)
            state = loop.train(chunk, state, data, start)
            if progress is not None:
                progress.done(int(jax.device_get(state.step)))
    finally:
        notice.uninstall()
        ckpts.wait_until_finished()
        ckpts.close()
        if primary:
            board.close()
    return state


def _begin(config, workdir):
    """Saves `config` (or matches the saved one), builds the run, saves its splits."""
    try:
        config_file.save_config(workdir, config)
    except ValueError as err:  # a resumed run with another config: the fields are named
        raise config_checks.ConfigError(str(err)) from None
    run = run_lib.prepare(config, workdir)
    if jax.process_index() == 0:
        np.savez(
            os.path.join(workdir, "splits.npz"),
            train=run.twin_data.splits.train,
            heldout=run.twin_data.splits.heldout,
        )
    return run


class _Loop:
    """The training calls from a step to the end: save, monitor, log, stop on SIGTERM."""

    def __init__(self, config, run, workdir, ckpts, notice, monitor, progress):
        self.per_call = config.training.steps_per_call
        self.log_every = config.training.log_every_steps
        self.run, self.workdir, self.ckpts = run, workdir, ckpts
        self.notice, self.monitor, self.progress = notice, monitor, progress

    def train(self, chunk, state, data, step):
        """Runs `chunk` from `step` to the run's total; returns the last state."""
        total, plan = self.run.total_steps, self.run.snapshot_steps
        while step < total:
            began = time.time()
            state, losses = chunk(state, data)
            losses = _finite_losses(losses, step, self.workdir)  # waits for the call
            step += self.per_call
            if self.progress is not None:
                self.progress.add(losses, self.per_call, time.time() - began)
            # Asked of every process at every call: with several, it is a collective.
            preempted = self.notice.received() and step < total
            # The final state is saved even where it is no snapshot (explicit
            # epochs without the last): a rerun then finds the run complete.
            self.ckpts.save(step, state, force=preempted or step == total)
            if step in plan and self.progress is not None:
                # A kill loses no logged point before the snapshot it can resume from.
                self.progress.board.flush()
            if self.monitor is not None and step in plan and self.monitor.at_snapshot(state, step):
                break
            log = step % self.log_every < self.per_call or step == total
            if log and self.progress is not None:
                self.progress.log(step)
            if preempted:
                self._exit_preempted(step)
        return state

    def _exit_preempted(self, step):
        self.ckpts.wait_until_finished()
        if jax.process_index() == 0:
            logging.warning(
                "%s: saved step %d/%d in %s; exiting with status %d. "
                "Rerun the same command to resume.",
                self.notice.signal_name or "SIGTERM",
                step,
                self.run.total_steps,
                os.path.join(self.workdir, "checkpoints"),
                preemption.PREEMPTED_EXIT_STATUS,
            )
        raise preemption.Preempted(step)


def _finite_losses(losses, step, workdir):
    """The losses [S, K] of the call after `step`, gathered as numpy; raises if not finite."""
    if not (losses.is_fully_addressable or losses.is_fully_replicated):
        # Twins sharded over processes: every process needs all losses.
        losses = multihost_utils.process_allgather(losses, tiled=True)
    losses = np.asarray(jax.device_get(losses))  # [S, K]
    bad = ~np.isfinite(losses)
    if bad.any():
        s, k = np.argwhere(bad)[0]
        raise FloatingPointError(
            f"non-finite training loss in split {k} at step {step + s + 1}; "
            f"stopped without saving. The last good state is in "
            f"{os.path.join(workdir, 'checkpoints')}."
        )
    return losses


class _Progress:
    """Process 0's record of training: metrics.jsonl, TensorBoard scalars and log lines.

    Each record holds the mean train loss [K] over the calls since the last one
    (the window), the steps per second of those calls (their own time: not saves, not
    the monitor, not the compiling first call), and the learning rate.
    """

    def __init__(self, config, workdir, run, start):
        self._metrics = os.path.join(workdir, "metrics.jsonl")
        self.board = metric_writers.Writer(os.path.join(workdir, "tensorboard", "train"))
        self.board.hparams(config.to_dict())
        self._lr_at = twin_steps.learning_rate_schedule(config)
        self._spe, self._total = run.steps_per_epoch, run.total_steps
        self._workdir, self._start = workdir, start
        if start >= self._total:
            logging.info("%s: already complete (%d steps).", workdir, self._total)
        else:
            logging.info(
                "Training %d twins of %s for %d steps (%d epochs of %d steps) on %d "
                "device(s), the twins over %d; %d snapshots planned.",
                config_checks.num_models(config),
                type(run.model).__name__,
                self._total,
                config.training.num_epochs,
                self._spe,
                config.training.get("num_devices", 0) or jax.device_count(),
                config.training.twin_devices,
                len(run.snapshot_steps),
            )
        self._window_losses, self._window_steps, self._window_seconds = [], 0, 0.0
        self._first = None  # (steps, seconds) of the process's first call, which compiles

    def add(self, losses, steps, seconds):
        """Adds one call's losses [S, K], its steps and its wall time to the window.

        The rate counts the calls' time alone (not saves or the monitor), and
        not the first call, which compiles, unless it is all there is.
        """
        self._window_losses.append(losses)
        if self._first is None:
            self._first = (steps, seconds)
        else:
            self._window_steps += steps
            self._window_seconds += seconds

    def done(self, step):
        """The closing log line: where the run stands and what to run next."""
        if step >= self._total and self._start < self._total:
            logging.info(
                "Training done: %d steps in %s. Next: python -m launch.analyze --workdir=%s",
                self._total,
                self._workdir,
                self._workdir,
            )

    def log(self, step):
        """Records the window ending at `step`, and starts the next."""
        steps, seconds = (
            (self._window_steps, self._window_seconds) if self._window_steps else self._first
        )
        rate = steps / max(seconds, 1e-9)
        mean = np.concatenate(self._window_losses).mean(0)
        # The rate of the window's last update (optax counts from 0).
        lr = float(self._lr_at(step - 1) if callable(self._lr_at) else self._lr_at)
        record = dict(
            step=int(step),
            epoch=step / self._spe,
            train_loss=mean.tolist(),
            steps_per_sec=rate,
            learning_rate=lr,
        )
        with open(self._metrics, "a") as f:
            f.write(json.dumps(record) + "\n")
        # Epochs on the x axis, as the monitor's and the analysis' curves.
        self.board.scalars(step // self._spe, metric_writers.training_scalars(mean, lr, rate))
        logging.info(
            "step %d/%d (epoch %d) train_loss %s  %.1f steps/s  ETA %s",
            step,
            self._total,
            step // self._spe,
            np.array2string(mean, precision=4),
            rate,
            _eta((self._total - step) / max(rate, 1e-9)),
        )
        self._window_losses, self._window_steps, self._window_seconds = [], 0, 0.0


def _eta(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
