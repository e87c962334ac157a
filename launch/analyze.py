"""Computes the bias statistics, verdict and figures of a trained run.

    python -m launch.analyze --workdir=workdirs/digits [--output_dir=DIR] [--refine] \
        [--analysis.num_samples=2048 --analysis.score_times='(50,100)' ...]

Reads the config saved in the workdir; any field of its `analysis` section
(diffusion_bias/config/default_config.py) can be overridden as --analysis.<field>=...,
and is checked before anything is written. Writes O/analysis/statistics.json,
the figures beside it and TensorBoard event files in O/tensorboard/analysis,
where O is --output_dir, by default the workdir (a run one cannot write to, a
shared one, is analysed with --output_dir). Rerun after new snapshots: only new
ones are computed. SIGTERM or Ctrl-C stops it with status 75, the snapshots
analysed so far kept in the cache. --refine replays the training around the bias
onset and the test-loss minimum (diffusion_bias/training/refine.py) and reports both on
the denser grid as well; give it the run's CPU devices (--cpu_devices=K) to
replay bit-identically a run trained with a device per twin.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from diffusion_bias import checkpoints
from diffusion_bias import run as run_lib
from diffusion_bias.config import config_checks
from diffusion_bias.config import default_config
from diffusion_bias.instrument import analysis
from diffusion_bias.instrument import verdict
from launch import common

# --helpshort lists the shared flags (--cpu_devices, the distributed ones) too.
flags.adopt_module_key_flags(common)

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of a run trained by launch.train.")
_REFINE = flags.DEFINE_bool(
    "refine",
    False,
    "Also replay the training around the bias onset and the test-loss minimum with "
    "denser snapshots, and locate both on the denser grid (statistics.json: refined); "
    "the same as --analysis.refine=True.",
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where analysis/ and tensorboard/analysis/ go (default: the workdir)."
)
try:
    # Reads the --analysis.<field> overrides from sys.argv already, here.
    _ANALYSIS = config_flags.DEFINE_config_dict(
        "analysis",
        default_config.get_config().analysis,
        "Analysis fields; only those given on the command line replace the run's.",
    )
except (AttributeError, KeyError) as err:
    common.unknown_field_exit(err, sys.argv)
flags.mark_flag_as_required("workdir")


def checked_config(workdir, overrides, output_dir=None):
    """The run's config with `overrides` in its analysis section, every field checked.

    Raises:
        ConfigError: the workdir holds no trained run, a field is invalid, or
            the output folder cannot be written.
    """
    if not os.path.exists(os.path.join(workdir, "config.json")):
        raise config_checks.ConfigError(
            f"--workdir={workdir} holds no config.json: train it first (launch.train)"
        )
    out = output_dir or workdir
    writable = os.path.isdir(out) and os.access(out, os.W_OK | os.X_OK)
    if output_dir is None and not writable:
        raise config_checks.ConfigError(
            f"--workdir={workdir} cannot be written to: pass --output_dir=DIR for the results"
        )
    if output_dir is not None and os.path.exists(out) and not writable:
        raise config_checks.ConfigError(f"--output_dir={out} is not a folder one can write to")
    config = analysis.analysis_config(workdir, overrides)
    config_checks.check_config(config, devices=False)
    # Read only: nothing is created in the workdir, and a running training is safe.
    found = []
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        ckpts = checkpoints.TwinCheckpoints(workdir, run_lib.snapshot_steps(config), read_only=True)
        found = ckpts.snapshot_steps()
        ckpts.close()
    if not found:
        raise config_checks.ConfigError(f"--workdir={workdir} holds no snapshots: train it first")
    return config


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    common.setup_logging()
    # --refine replays the training: on the run's device layout if given the devices.
    common.set_cpu_devices()
    common.refuse_distributed("launch.analyze")
    # Only the fields given on the command line: the others keep the run's values.
    overrides = dict(config_flags.get_override_values(flags.FLAGS["analysis"]))
    workdir, output_dir = _WORKDIR.value, _OUTPUT_DIR.value
    common.exit_on_config_error(checked_config, workdir, overrides, output_dir)
    out = output_dir or workdir
    stats = common.interruptible(
        common.exit_on_config_error,
        analysis.analyze,
        workdir,
        overrides,
        output_dir,
        _REFINE.value or None,
        resume=f"The snapshots analysed so far are cached in {out}/analysis/cache; "
        "rerun the same command to go on.",
    )
    # Imported here: matplotlib takes a second, which a bad config need not wait for.
    from diffusion_bias import figures

    paths = figures.draw_all(stats, os.path.join(out, "analysis"))
    print(verdict.final_sentence(stats))
    for path in paths:
        print(path)


if __name__ == "__main__":
    common.run(main)
