"""Computes the bias statistics, verdict and figures of a trained run.

    python -m launch.analyze --workdir=workdirs/digits [--num_samples=2048 ...]

Reads the config saved in the workdir; writes workdir/analysis/statistics.json
and the figures beside it. Rerun after new snapshots: only new ones are computed.
"""

from absl import app
from absl import flags

from diffusion_bias import analysis
from diffusion_bias import figures
from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of a run trained by launch.train.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Coupled samples per twin.")
_SAMPLING_STEPS = flags.DEFINE_integer("sampling_steps", None, "Steps of the reverse chain.")
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    common.setup_logging()
    common.refuse_distributed("launch.analyze")
    overrides = {
        name: flag.value
        for name, flag in (("num_samples", _NUM_SAMPLES), ("sampling_steps", _SAMPLING_STEPS))
        if flag.value is not None
    }
    stats = common.exit_on_config_error(analysis.analyze, _WORKDIR.value, overrides)
    paths = figures.draw_all(stats, f"{_WORKDIR.value}/analysis")
    print(analysis.verdict_line(stats))
    for path in paths:
        print(path)


if __name__ == "__main__":
    app.run(main)
