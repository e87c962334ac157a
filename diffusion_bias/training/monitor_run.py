"""The bias monitor inside `launch.train`: built from the config, resumable, rows on disk.

With `config.monitor.enabled`, training calls the monitor at every snapshot and
writes, in the workdir,

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

from absl import logging
import numpy as np
import orbax.checkpoint as ocp

from diffusion_bias import files
from diffusion_bias import setting as setting_lib
from diffusion_bias.config import config_file
from diffusion_bias.diffusion import coupled
from diffusion_bias.instrument import monitor as monitor_lib

ROWS = "monitor.jsonl"
STATE = "monitor_state.npz"
RESULT = "result.json"
RESULT_PARAMS = "result"


def build(config, run):
    """The BiasMonitor of `run` (a run.Run): its twins' data, model, schedule; `config.monitor`.

    The training sets and held-out items are the items as drawn; `run.offsets`
    [K, C] the twins' centring shifts (images), see `BiasMonitor`.
    """
    m = config.monitor
    clip = config.analysis.clip_x0 or None
    kind = run.kind
    return monitor_lib.BiasMonitor(
        coupled.denoiser(run.model, kind),
        run.schedule,
        np.asarray(run.twin_data.train),
        np.asarray(run.twin_data.heldout),
        kind,
        stop=m.stop,
        num_samples=m.num_samples,
        sampling_steps=m.sampling_steps,
        loss_items=m.loss_items,
        loss_repeats=m.loss_repeats,
        patience=m.patience,
        auc_threshold=m.auc_threshold,
        memorized_threshold=m.memorized_threshold,
        epsilon_threshold=m.epsilon_threshold,
        tpr_threshold=m.tpr_threshold,
        bootstrap=m.bootstrap,
        seed=m.seed,
        num_symbols=getattr(run.model, "num_symbols", None),
        clip_x0=clip if setting_lib.of(kind).parametrization == "eps" else None,
        twin_strategy=config.training.twin_strategy,
        offsets=run.offsets,
    )


def _training(workdir):
    """The fingerprint of the run whose config.json `workdir` holds."""
    return config_file.training_fingerprint(config_file.load_config(workdir))


def restore(monitor, workdir, upto_epoch):
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


def record(monitor, workdir):
    """Saves the monitor's state (with the run's fingerprint) and rows after a snapshot."""
    training = _training(workdir)
    with files.atomic_write(os.path.join(workdir, STATE), "wb") as f:
        np.savez(f, training=np.asarray(training), **monitor.state_dict())
    _write_rows(monitor, workdir)


def _write_rows(monitor, workdir):
    with files.atomic_write(os.path.join(workdir, ROWS)) as f:
        f.writelines(files.json_line(r) + "\n" for r in monitor.rows)


def stopped_result(workdir):
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


def save_result(workdir, monitor, kept_step, stop_step, kept_state):
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
