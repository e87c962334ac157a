"""benchmarks/accelerator.py: its FLOP count, and (slow) the whole check on a CPU."""

import json
import math
import os
import subprocess
import sys

import jax
import pytest

from benchmarks import accelerator
from benchmarks import train_step
from configs import smoke
from diffusion_bias import run as run_lib
from diffusion_bias.training import twin_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_xla_step_flops_agree_with_the_hand_count_of_the_transformer_matmuls(tmp_path):
    config = smoke.get_config("grammar")
    with config.unlocked():
        config.model.update(width=128, num_layers=2, num_heads=4)
        config.training.update(batch_size=64, steps_per_call=2)
    run = run_lib.prepare(config, str(tmp_path))
    mesh = twin_steps.make_mesh(config)
    example = jax.nn.one_hot(run.train[0, :1], run.model.num_symbols)
    tx = twin_steps.get_optimizer(config)
    state = jax.eval_shape(lambda: twin_steps.init_state(config, run.model, example, tx))
    data = jax.ShapeDtypeStruct(run.train.shape, run.train.dtype)
    length, q = run.train.shape[-1], run.model.num_symbols
    hand = 2 * train_step.hand_flops(128, 2, length, q, 64)  # K = 2 twins
    xla = accelerator.step_flops(config, run, mesh, tx, state, data)
    # XLA counts the matmuls and the elementwise rest (norms, softmax, Adam): a few % more.
    assert hand < xla < 1.1 * hand
    forward = accelerator.forward_flops(run, state.params)
    assert hand / 2 / 64 / 3 < forward < 1.1 * hand / 2 / 64 / 3


def test_durations_read_in_the_largest_fitting_unit():
    assert accelerator.duration(42.0) == "42.0 s"
    assert accelerator.duration(600.0) == "10.0 min"
    assert accelerator.duration(3 * 3600.0) == "3.0 h"
    assert accelerator.duration(5 * 86400.0) == "5.0 days"


@pytest.mark.slow
def test_the_check_runs_on_a_cpu_and_extrapolates_what_it_measured(tmp_path):
    out = tmp_path / "accelerator.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.accelerator",
        "--config=configs/smoke.py:grammar",
        "--train_seconds=0.5",
        "--num_samples=16",
        "--uturn_items=4",
        "--uturn_repeats=1",
        f"--workdir={tmp_path}",
        f"--out={out}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["platform"] == "cpu" and r["total_steps"] == 40 and r["num_snapshots"] == 4
    assert math.isclose(r["train_total_s_extrapolated"], r["total_steps"] / r["train_steps_per_s"])
    assert math.isclose(r["snapshot_s_extrapolated"], r["snapshot_s"] * 64 / 16)
    assert r["analysis_total_s_extrapolated"] > 4 * r["snapshot_s_extrapolated"]
    assert 0 < r["train_mfu"] < 1 and 0 < r["snapshot_sampling_mfu_lower_bound"] < 1
    assert "training:" in proc.stdout and "extrapolated:" in proc.stdout
