"""The twin training engine on the smoke config: determinism, resume, errors (signals: test_checkpoints.py)."""

import json
import logging
import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from configs import smoke
from diffusion_bias import checkpoints
from diffusion_bias import run as run_lib
from diffusion_bias.config import config_checks
from diffusion_bias.config import config_file
from diffusion_bias.training import train
from diffusion_bias.training import twin_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plan(workdir):
    """The planned snapshot steps of the run in `workdir`, from its config.json."""
    return run_lib.snapshot_steps(ml_collections.ConfigDict(config_file.load_config(workdir)))


def _reader(workdir):
    """The workdir's checkpoints opened as the analysis opens them."""
    return checkpoints.TwinCheckpoints(workdir, _plan(workdir), read_only=True)


def _final_params(workdir):
    ckpts = _reader(workdir)
    try:
        last = ckpts.snapshot_steps()[-1]
        return jax.device_get(ckpts.read_snapshot(last).params), last
    finally:
        ckpts.close()


def _all_snapshot_params(workdir):
    """{step: params} of every snapshot in `workdir`."""
    ckpts = _reader(workdir)
    try:
        return {s: jax.device_get(ckpts.read_snapshot(s).params) for s in ckpts.snapshot_steps()}
    finally:
        ckpts.close()


def _has_checkpoint(workdir):
    folder = os.path.join(workdir, "checkpoints")
    return os.path.isdir(folder) and any(d.isdigit() for d in os.listdir(folder))


def _assert_trees_equal(a, b, **tol):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        if tol:
            np.testing.assert_allclose(x, y, **tol)
        else:
            np.testing.assert_array_equal(x, y)


def _launch(workdir, *overrides, env=None):
    cmd = [
        sys.executable,
        "-m",
        "launch.train",
        "--config=configs/smoke.py",
        f"--workdir={workdir}",
        *overrides,
    ]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted smoke run, trained in this process."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    state = train.train_and_evaluate(smoke.get_config(), workdir)
    return workdir, state


def test_run_writes_config_snapshot_plan_and_metrics(reference):
    workdir, state = reference
    config = smoke.get_config()
    assert config_file.load_config(workdir)["splits"]["split_size"] == 64
    ckpts = _reader(workdir)
    assert ckpts.snapshot_steps() == list(run_lib.snapshot_steps(config))
    # The latest saves between snapshots (every 8 steps) were deleted as newer came.
    assert ckpts.all_steps() == list(run_lib.snapshot_steps(config))
    ckpts.close()
    assert int(state.step) == config.training.num_epochs * run_lib.steps_per_epoch(config)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert len(f.read().splitlines()) == 5


def test_twins_start_from_different_parameters_unless_shared(reference):
    workdir, _ = reference
    config = smoke.get_config()
    model_and_data = run_lib.prepare(config, workdir)
    model, example = model_and_data.model, model_and_data.twin_data.train[0, :1]
    state = twin_steps.init_state(config, model, example, twin_steps.get_optimizer(config))
    kernel = state.params["input"]["kernel"]
    assert not np.allclose(kernel[0], kernel[1])
    with config.unlocked():
        config.training.shared_init = True
    state = twin_steps.init_state(config, model, example, twin_steps.get_optimizer(config))
    np.testing.assert_array_equal(
        state.params["input"]["kernel"][0], state.params["input"]["kernel"][1]
    )


def test_same_config_and_seed_give_identical_parameters(reference, tmp_path):
    workdir, _ = reference
    train.train_and_evaluate(smoke.get_config(), str(tmp_path))
    _assert_trees_equal(_final_params(workdir), _final_params(str(tmp_path)))


def test_unreadable_checkpoint_is_named_set_aside_and_the_run_resumes_before_it(
    reference, tmp_path, caplog
):
    workdir, _ = reference
    caplog.set_level(logging.INFO)
    config = smoke.get_config()
    # Stop half way: a run of 5 epochs in its own workdir, then damage its newest checkpoint.
    short = str(tmp_path / "short")
    with config.unlocked():
        config.training.num_epochs = 5
    train.train_and_evaluate(config, short)
    ckpts = _reader(short)
    *_, before, newest = ckpts.all_steps()
    ckpts.close()
    for root, _, files in os.walk(os.path.join(short, "checkpoints", str(newest))):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\0garbage")
    # Resuming the full-length run in that workdir needs the same config.
    os.remove(os.path.join(short, "config.json"))
    state = train.train_and_evaluate(smoke.get_config(), short)
    named = os.path.join("checkpoints", str(newest))
    assert any(named in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
    assert any(f"Resuming from step {before}." in r.getMessage() for r in caplog.records)
    assert os.path.isdir(os.path.join(short, "damaged", str(newest)))
    _assert_trees_equal(jax.device_get(state.params), _final_params(workdir)[0])
    # The damaged step was saved again in its place: every snapshot reads.
    resumed, uninterrupted = _all_snapshot_params(short), _all_snapshot_params(workdir)
    assert list(resumed) == list(uninterrupted)
    for step in resumed:
        _assert_trees_equal(resumed[step], uninterrupted[step])


def test_rerun_with_a_different_config_names_the_differing_fields(reference):
    workdir, _ = reference
    config = smoke.get_config()
    with config.unlocked():
        config.optimizer.learning_rate = 0.5
    with pytest.raises(ValueError, match="optimizer.learning_rate"):
        train.train_and_evaluate(config, workdir)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("training.batch_size", -1, "training.batch_size"),
        ("training.batch_size", 65, "batch_size"),
        ("splits.num_splits", 30, "exceeds the 1797 items"),
        ("training.twin_strategy", "pmap", "training.twin_strategy"),
        ("training.steps_per_call", 7, "steps_per_call"),
        ("optimizer.learning_rate", 0.0, "learning_rate"),
        ("training.ema_decay", 1.0, "ema_decay"),
    ],
)
def test_invalid_config_values_raise_before_any_work(tmp_path, field, value, match):
    config = smoke.get_config()
    section, name = field.split(".")
    with config.unlocked():
        config[section][name] = value
    with pytest.raises(config_checks.ConfigError, match=match):
        train.train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_unknown_config_field_fails_loudly():
    config = smoke.get_config()
    with pytest.raises(AttributeError, match="batch_size"):
        config.training.batchsize = 3


def test_non_finite_loss_stops_the_run_naming_split_and_step(tmp_path):
    config = smoke.get_config()
    with config.unlocked():
        config.optimizer.learning_rate = 1e30
    with pytest.raises(FloatingPointError, match=r"split \d at step \d+"):
        train.train_and_evaluate(config, str(tmp_path))


def test_sequential_twin_strategy_matches_vmap(reference, tmp_path):
    workdir, _ = reference
    config = smoke.get_config()
    with config.unlocked():
        config.training.twin_strategy = "map"
    state = train.train_and_evaluate(config, str(tmp_path))
    _assert_trees_equal(
        jax.device_get(state.params), _final_params(workdir)[0], rtol=1e-4, atol=1e-5
    )


def _train_losses(workdir):
    """[logs, K] the twins' train losses in metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return np.array([json.loads(line)["train_loss"] for line in f])


def test_bfloat16_compute_trains_like_float32_on_float32_parameters(reference, tmp_path):
    workdir, _ = reference
    config = smoke.get_config()
    with config.unlocked():
        config.model.dtype = "bfloat16"
    state = train.train_and_evaluate(config, str(tmp_path))
    # Parameters, EMA and optimizer moments stay float32 (the step counters int32).
    leaves = jax.tree.leaves((state.params, state.ema_params, state.opt_state))
    assert {str(a.dtype) for a in leaves} == {"float32", "int32"}
    half, full = _train_losses(str(tmp_path)), _train_losses(workdir)
    assert half.shape == full.shape and np.all(half[-1] < half[0])
    np.testing.assert_allclose(half, full, rtol=1e-2)


def _launch_as_reference(reference_dir, workdir, *flags, env=None):
    """launch.train's log for a smoke run in `workdir`, whose parameters equal the reference's."""
    proc = _launch(workdir, *flags, env={"JAX_PLATFORMS": "cpu", **(env or {})})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    _assert_trees_equal(
        _final_params(workdir)[0], _final_params(reference_dir)[0], rtol=1e-4, atol=1e-5
    )
    return out


def test_twins_on_their_own_cpu_devices_give_the_one_device_result_and_analyse_on_one(
    reference, tmp_path
):
    workdir, _ = reference
    layout = ["--config.training.twin_devices=2", "--config.training.num_devices=2"]
    out = _launch_as_reference(workdir, str(tmp_path), "--cpu_devices=2", *layout)
    assert "on 2 device(s), the twins over 2" in out
    # Snapshots saved from two devices read back on this process's one.
    assert jax.device_count() == 1
    assert len(_all_snapshot_params(str(tmp_path))) == len(_all_snapshot_params(workdir))


def test_four_devices_give_the_one_device_result(reference, tmp_path):
    workdir, _ = reference
    four = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = _launch_as_reference(workdir, str(tmp_path), env=four)
    assert "on 4 device(s)" in out


def test_a_run_ends_with_a_done_line_and_a_rerun_says_it_is_already_complete(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    workdir = str(tmp_path)
    config = smoke.get_config()
    train.train_and_evaluate(config, workdir)
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("Training done")
        and m.endswith(f"Next: python -m launch.analyze --workdir={workdir}")
        for m in messages
    ), messages
    caplog.clear()
    train.train_and_evaluate(config, workdir)
    messages = [r.getMessage() for r in caplog.records]
    assert any("already complete" in m for m in messages)
    assert not any(m.startswith(("Training 2", "Training done")) for m in messages), messages


def test_the_logged_rate_leaves_out_the_compiling_first_call(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = smoke.get_config()
    run = run_lib.prepare(config, str(tmp_path))
    progress = train._Progress(config, str(tmp_path), run, 0)
    losses = np.ones((4, 2))
    progress.add(losses, 4, 100.0)  # the call that compiles
    progress.log(4)
    progress.add(losses, 4, 1.0)
    progress.add(losses, 4, 1.0)
    progress.log(12)
    progress.board.close()
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rates = [json.loads(line)["steps_per_sec"] for line in f]
    # Alone in its window, the first call is all there is; after it, only the others count.
    assert rates == [0.04, 4.0]


# launch.train with every checkpoint save after the second failing as on a full disk.
_DISK_FULLS_AFTER_TWO_SAVES = """
import errno, runpy, sys
import orbax.checkpoint as ocp
save, calls = ocp.CheckpointManager.save, []
def full(self, *args, **kwargs):
    calls.append(1)
    if len(calls) > 2:
        raise OSError(errno.ENOSPC, "No space left on device", "checkpoints/tmp")
    return save(self, *args, **kwargs)
ocp.CheckpointManager.save = full
sys.argv = ["launch.train", "--config=configs/smoke.py", "--workdir=" + sys.argv[1]]
runpy.run_module("launch.train", run_name="__main__")
"""


def test_a_full_disk_ends_training_in_one_line_with_75_and_the_rerun_resumes_bit_identically(
    reference, tmp_path
):
    workdir = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", _DISK_FULLS_AFTER_TWO_SAVES, workdir],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 75, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if not line.startswith(("I", "W"))]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.match(r"Disk full \(saving step \d+ .*\): \[Errno 28\] No space left", errors[0])
    assert "rerun the same command" in errors[0]
    out = _launch_as_reference(reference[0], workdir)
    assert "Resuming from step" in out, out


def test_a_workdir_one_cannot_write_is_refused_in_one_line(tmp_path, monkeypatch):
    # The tests run as root, whom file modes do not stop: os.access answers as for another user.
    access = os.access
    locked = str(tmp_path / "locked")
    os.makedirs(locked)
    monkeypatch.setattr(
        os, "access", lambda path, mode: False if path == locked else access(path, mode)
    )
    for workdir in (locked, os.path.join(locked, "run")):
        with pytest.raises(config_checks.ConfigError, match=f"{locked} cannot be written to"):
            train.train_and_evaluate(smoke.get_config(), workdir)
    assert os.listdir(locked) == []
