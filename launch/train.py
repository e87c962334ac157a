"""Trains the twins of a config; rerun with the same workdir to resume.

    python -m launch.train --config=configs/digits_cpu.py --workdir=workdirs/digits \
        [--config.training.num_epochs=100 ...]

Run from the repository root. Intentionally kept short: everything happens in
`diffusion_bias.training.train.train_and_evaluate`.

Several processes (hosts, or local CPU processes) train one run data-parallel:
start the same command once per process, adding

    --coordinator_address=HOST0:PORT --num_processes=N --process_id=I

(or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID), or just
--distributed under Slurm, Open MPI or on Cloud TPU. The workdir must be one
folder that all processes share.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from diffusion_bias.training import train
from launch import common

# --helpshort lists the shared flags (--cpu_devices, the distributed ones) too.
flags.adopt_module_key_flags(common)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the run's snapshots and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    common.setup_logging()
    common.set_cpu_devices()
    common.maybe_initialize_distributed()
    config = common.config_value(_CONFIG)
    common.exit_on_config_error(train.train_and_evaluate, config, _WORKDIR.value)


if __name__ == "__main__":
    common.run(main)
