"""The main job: train and analyse the embedded settings, then write a report.

    python -m launch.reproduce [--workdir=workdirs/reproduce] [--settings=digits,grammar]
        [--num_splits=2]

Run from the repository root. Each setting trains its twins (configs/<name>_cpu.py),
analyses every snapshot and draws its figures; then W/report.md gathers the
verdicts, numbers and figures. Interrupted, the same command resumes: training
from its latest checkpoint, analysis from its per-snapshot cache.
"""

import importlib
import os
import time

from absl import app
from absl import flags
from absl import logging

from diffusion_bias import analysis
from diffusion_bias import figures
from diffusion_bias import report
from diffusion_bias import run as run_lib
from diffusion_bias import train
from launch import common

SETTINGS = {"digits": "configs.digits_cpu", "grammar": "configs.grammar_cpu"}

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/reproduce", "Folder of all outputs.")
_SETTINGS = flags.DEFINE_list("settings", list(SETTINGS), f"Settings among {list(SETTINGS)}.")
_NUM_SPLITS = flags.DEFINE_integer(
    "num_splits", None, "Twins per setting (default: the config's); more gives tighter intervals."
)


def setting_configs(settings, num_splits=None):
    """{name: config} of the embedded settings, with `num_splits` twins if given."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise app.UsageError(f"Unknown settings {unknown}; choose among {list(SETTINGS)}")
    configs = {}
    for name in settings:
        config = importlib.import_module(SETTINGS[name]).get_config()
        if num_splits is not None:
            with config.unlocked():
                config.splits.num_splits = num_splits
        configs[name] = config
    return configs


def run(workdir, configs):
    """Trains, analyses and reports every {name: config}; returns the report path.

    Shows progress wherever it is called from: a notebook has no `app.run` to
    set up logging, so this does.
    """
    common.setup_logging()
    sections, timings = [], {}
    stages = len(configs) * 2
    for i, (name, config) in enumerate(configs.items()):
        run_dir = os.path.join(workdir, name)
        logging.info("[%d/%d] training the %s twins in %s", 2 * i + 1, stages, name, run_dir)
        start = time.time()
        train.train_and_evaluate(config, run_dir)
        timings[f"{name}: training"] = time.time() - start
        logging.info("[%d/%d] analysing the %s snapshots", 2 * i + 2, stages, name)
        start = time.time()
        stats = analysis.analyze(run_dir)
        paths = figures.draw_all(stats, os.path.join(run_dir, "analysis"))
        timings[f"{name}: analysis"] = time.time() - start
        logging.info("%s: %s", name, analysis.verdict_line(stats))
        sections.append((name, stats, paths))
    path = report.write_report(workdir, sections, timings)
    logging.info("Report: %s", path)
    return path


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    common.setup_logging()
    common.refuse_distributed("launch.reproduce")
    configs = setting_configs(_SETTINGS.value, _NUM_SPLITS.value)
    # Every setting's config is checked before the first one starts training.
    for config in configs.values():
        common.exit_on_config_error(run_lib.check_config, config)
    path = common.exit_on_config_error(run, _WORKDIR.value, configs)
    print(path)


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
