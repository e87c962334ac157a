"""Does the online bias-onset rule stop where the offline analysis places the onset?

Run from the repository root:  python -m benchmarks.monitor_onset [--seeds=0,1,2,3]

For each seed (`config.seed` and `config.splits.seed`), trains configs/digits_cpu.py
to the end, analyses it offline (`analysis.analyze`), and runs the monitor that
`launch.train` would build (`config.monitor` defaults, rule "bias_onset") over
the saved snapshots in order: the same calls, on the same parameters, as
during training (the monitor reads only the snapshot's EMA parameters). Prints, per seed: the snapshot where
the rule would have stopped, the snapshot it keeps, the offline onset and
test-loss minimum, and whether the kept snapshot is within one snapshot of the
offline onset. Workdirs go to workdirs/monitor_onset/seed_<s> (resumable).
"""

import os

from absl import app
from absl import flags
from absl import logging

from configs import digits_cpu
from diffusion_bias import checkpoints
from diffusion_bias import run as run_lib
from diffusion_bias.instrument import analysis
from diffusion_bias.training import monitor_run
from diffusion_bias.training import train

_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2", "3"], "Seeds to run.")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/monitor_onset", "Folder of the runs.")
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", None, "config.monitor.num_samples (default: the config's)."
)


def one_seed(seed, workdir):
    config = digits_cpu.get_config()
    with config.unlocked():
        config.seed = seed
        config.splits.seed = seed
    train.train_and_evaluate(config, workdir)
    stats = analysis.analyze(workdir)
    v = stats["verdict"]
    with config.unlocked():
        config.monitor.update(enabled=True, stop="bias_onset")
        if _NUM_SAMPLES.value:
            config.monitor.num_samples = _NUM_SAMPLES.value
    run = run_lib.prepare(config, workdir)
    monitor = monitor_run.build(config, run)
    ckpts = checkpoints.TwinCheckpoints(workdir, run.snapshot_steps, read_only=True)
    spe = run.steps_per_epoch
    stop = None
    for step in ckpts.snapshot_steps():
        row = monitor(ckpts.read_snapshot(step).ema_params, epoch=step / spe)
        if row["decision"] == "stop":
            stop = row
            break
    ckpts.close()
    onset = v.get("bias_onset_epoch")
    kept = None if stop is None else stop["kept_epoch"]
    onset_index = v.get("bias_onset_index")
    within = (
        stop is not None
        and stop["kept_index"] is not None
        and onset_index is not None
        and abs(stop["kept_index"] - onset_index) <= 1
    )
    print(
        f"seed {seed}: rule stops at epoch {None if stop is None else stop['epoch']:g} "
        f"keeping epoch {kept}; offline onset {onset} (verdict "
        f"{'conclusive' if v.get('conclusive') else 'inconclusive'}), test-loss minimum "
        f"{v.get('test_loss_min_epoch')}; within one snapshot: {within}"
        if stop is not None
        else f"seed {seed}: the rule never fired; offline onset {onset}"
    )
    return within


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    results = [one_seed(int(s), os.path.join(_WORKDIR.value, f"seed_{s}")) for s in _SEEDS.value]
    print(f"within one snapshot of the offline onset on {sum(results)} of {len(results)} seeds")


if __name__ == "__main__":
    app.run(main)
