"""The entry points on bad configs, paths and arguments: one line, exit 2, workdir untouched.

Each case runs the real command line in a subprocess. The checks come before
any data, model or checkpoint work, so every case takes only the imports; the
cases run a few at a time.
"""

import concurrent.futures
import os
import re
import subprocess
import sys

import pytest

from configs import smoke
from diffusion_bias.config import config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (command, flags, text the error line must contain, workdir prepared by `_prepare`).
SMOKE = ("launch.train", "--config=configs/smoke.py")
GRAMMAR = ("launch.train", "--config=configs/smoke.py:grammar")
DIGITS = ("launch.train", "--config=configs/digits_cpu.py")
ANALYZE = ("launch.analyze",)
CASES = {
    "pool_size": (DIGITS, ["--config.splits.split_size=5000"], "config.splits", None),
    "model_name": (DIGITS, ["--config.model.name=resnet"], "config.model.name", None),
    "data_name": (DIGITS, ["--config.data.name=mnist"], "config.data.name", None),
    "q_eff": (GRAMMAR, ["--config.data.q_eff=7"], "config.data.q_eff", None),
    "grammar_pool": (GRAMMAR, ["--config.data.pool_size=100"], "config.splits", None),
    "one_twin": (SMOKE, ["--config.splits.num_splits=1"], "config.splits.num_splits", None),
    "steps_per_call": (
        SMOKE,
        ["--config.training.steps_per_call=7"],
        "config.training.steps_per_call",
        None,
    ),
    "epochs": (SMOKE, ["--config.snapshots.epochs=(3,50)"], "config.snapshots.epochs", None),
    "width": (SMOKE, ["--config.model.width=-3"], "config.model.width", None),
    "schedule": (SMOKE, ["--config.diffusion.schedule=token"], "config.diffusion.schedule", None),
    "train_analysis_field": (
        SMOKE,
        ["--config.analysis.score_times=(0,5)"],
        "config.analysis.score_times",
        None,
    ),
    "resume_mismatch": (
        SMOKE,
        ["--config.optimizer.learning_rate=0.5"],
        "optimizer.learning_rate",
        "smoke",
    ),
    "reproduce_pool": (
        ("launch.reproduce", "--settings=digits", "--num_splits=5"),
        [],
        "config.splits",
        None,
    ),
    "reproduce_pool_per_seed": (
        ("launch.reproduce", "--settings=digits", "--num_splits=5", "--seeds=0,1"),
        [],
        "config.splits",
        None,
    ),
    "analyze_num_samples": (ANALYZE, ["--analysis.num_samples=0"], "num_samples", "smoke"),
    "analyze_uturn_ratios": (
        ANALYZE,
        ["--analysis.uturn_ratios=(0.05,1.5)"],
        "config.analysis.uturn_ratios",
        "smoke",
    ),
    "analyze_one_twin_run": (ANALYZE, [], "config.splits.num_splits", "one_twin"),
    "mistyped_field": (
        SMOKE,
        ["--config.training.batchsize=3"],
        "--config.training.batchsize",
        None,
    ),
    "mistyped_analysis_field": (
        ANALYZE,
        ["--analysis.num_sample=3"],
        "--analysis.num_sample",
        "smoke",
    ),
    "field_of_another_section": (
        SMOKE,
        ["--config.training.learning_rate=3"],
        "Did you mean --config.optimizer.learning_rate?",
        None,
    ),
    "missing_config_file": (("launch.train", "--config=configs/nope.py"), [], "nope.py", None),
    "config_file_argument": (
        ("launch.train", "--config=configs/smoke.py:cifar"),
        [],
        "cifar",
        None,
    ),
    "workdir_is_a_file": (SMOKE, [], "is a file", "file"),
    "extra_argument": (SMOKE, ["extra"], "Unexpected arguments", None),
    "cpu_devices_0": (SMOKE, ["--cpu_devices=0"], "--cpu_devices", None),
    "reproduce_settings": (("launch.reproduce", "--settings=foo"), [], "foo", None),
    "analyze_extra_argument": (ANALYZE, ["extra"], "Unexpected arguments", "smoke"),
}


def _prepare(workdir, kind):
    """A workdir holding the config.json of a run (nothing else is read before the checks)."""
    if kind is None:
        return
    if kind == "file":
        with open(workdir, "w") as f:
            f.write("not a folder")
        return
    config = smoke.get_config()
    if kind == "one_twin":
        with config.unlocked():
            config.splits.num_splits = 1
    config_file.save_config(workdir, config)


def _contents(workdir):
    """{relative path: bytes} of every file under `workdir`, or None when it is absent."""
    if not os.path.exists(workdir):
        return None
    if os.path.isfile(workdir):
        with open(workdir, "rb") as f:
            return f.read()
    out = {}
    for folder, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = f.read()
    return out


def _run(case, workdir):
    command, extra, _, _ = CASES[case]
    cmd = [sys.executable, "-m", command[0], *command[1:], f"--workdir={workdir}", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{case: (process, workdir contents before, after)}, run a few at a time."""
    base = tmp_path_factory.mktemp("launch")
    before, workdirs = {}, {}
    for case, (_, _, _, kind) in CASES.items():
        workdirs[case] = str(base / case)
        _prepare(workdirs[case], kind)
        before[case] = _contents(workdirs[case])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        procs = dict(zip(CASES, pool.map(lambda c: _run(c, workdirs[c]), CASES)))
    return {c: (procs[c], before[c], _contents(workdirs[c])) for c in CASES}


def test_there_are_at_least_fifteen_cases():
    assert len(CASES) >= 15


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_is_one_line_exit_2_and_leaves_the_workdir(results, case):
    proc, before, after = results[case]
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    # absl log records ("I1202 11:09:56.80 ...") aside, the program says one line.
    said = [
        line
        for line in output.splitlines()
        if line.strip() and not re.match(r"[IWEF]\d{4} \d\d:\d\d:\d\d", line)
    ]
    assert len(said) == 1, output
    assert said[0].startswith(("Config error: ", "Usage error: ")), output
    assert CASES[case][2] in said[0], output
    assert "Traceback" not in output
    assert after == before
