"""Multi-process training: two local CPU processes against one process."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from configs import smoke
from diffusion_bias.training import preemption
from diffusion_bias.training import train
from tests import test_train

ROOT = test_train.ROOT


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_processes(workdir, logdir, *overrides, num_processes=2, devices_per_process=1):
    """Starts `num_processes` processes of launch.train on the smoke config.

    Everything listens on the loopback interface only. Returns the processes
    and their log paths.
    """
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        # A test must not join a cluster of the machine it runs on.
        if not key.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))
    }
    env.update(
        JAX_PLATFORMS="cpu",
        # JAX's default bind address is every interface ([::]:port).
        JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
    )
    procs, logs = [], []
    for i in range(num_processes):
        log = os.path.join(logdir, f"process_{i}.log")
        with open(log, "w") as out:
            cmd = [
                sys.executable,
                "-m",
                "launch.train",
                "--config=configs/smoke.py",
                f"--workdir={workdir}",
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={num_processes}",
                f"--process_id={i}",
                *overrides,
            ]
            procs.append(
                subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            )
        logs.append(log)
    return procs, logs


def _wait_all(procs, logs, timeout):
    """Waits for every process; one failing or the timeout ends them all."""
    deadline = time.time() + timeout
    try:
        while any(p.poll() is None for p in procs):
            # A process that failed, exited or not yet (JAX's exit waits for the
            # others), leaves the others waiting until JAX's own timeouts.
            failed = any(p.poll() not in (None, 0) for p in procs)
            failed = failed or "Traceback (most recent call last)" in _read(logs)
            assert not failed and time.time() < deadline, _read(logs)
            time.sleep(0.2)
        assert all(p.returncode == 0 for p in procs), _read(logs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [_read([log]) for log in logs]


def _read(logs):
    texts = []
    for log in logs:
        with open(log) as f:
            texts.append(f"--- {log}\n{f.read()[-5000:]}")
    return "\n".join(texts)


def test_two_processes_give_the_one_process_result(tmp_path):
    workdir = str(tmp_path / "two")
    procs, logs = _launch_processes(workdir, str(tmp_path))
    # The one-process run trains here meanwhile.
    single = str(tmp_path / "one")
    train.train_and_evaluate(smoke.get_config(), single)
    out = _wait_all(procs, logs, timeout=300)

    assert "Process 0 of 2: 1 local of 2 devices" in out[0]
    assert "on 2 device(s)" in out[0]
    # Process 0 alone logs progress and writes the metrics.
    assert "train_loss" not in out[1]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert len(f.read().splitlines()) == 5
    params, step = test_train._final_params(workdir)
    expected, expected_step = test_train._final_params(single)
    assert step == expected_step
    test_train._assert_trees_equal(params, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_twins_split_over_two_processes_resume_to_the_one_process_result(tmp_path):
    """Twins sharded across processes (2 x 2 devices), stopped half way, resumed."""
    workdir = str(tmp_path / "two")
    devices = dict(devices_per_process=2)
    twins = "--config.training.twin_devices=2"
    procs, logs = _launch_processes(
        workdir, str(tmp_path), twins, "--config.training.num_epochs=5", **devices
    )
    single = str(tmp_path / "one")
    train.train_and_evaluate(smoke.get_config(), single)
    _wait_all(procs, logs, timeout=300)
    # The full-length run resumes in that workdir only under the same config.
    os.remove(os.path.join(workdir, "config.json"))
    procs, logs = _launch_processes(workdir, str(tmp_path), twins, **devices)
    out = _wait_all(procs, logs, timeout=300)

    assert "Resuming from step 20" in out[0]
    assert "on 4 device(s)" in out[0]
    test_train._assert_trees_equal(
        test_train._final_params(workdir)[0],
        test_train._final_params(single)[0],
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_saved_step_and_the_rerun_resumes(tmp_path):
    """Preemption of a two-process run: SIGTERM reaches process 1 alone."""
    workdir = str(tmp_path / "two")
    longer = "--config.training.num_epochs=40"
    procs, logs = _launch_processes(workdir, str(tmp_path), longer)
    try:
        deadline = time.time() + 300
        while not test_train._has_checkpoint(workdir):
            assert time.time() < deadline and all(p.poll() is None for p in procs), _read(logs)
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # Both stop, after the save, with the preemption status.
    assert [p.returncode for p in procs] == [preemption.PREEMPTED_EXIT_STATUS] * 2, _read(logs)
    match = re.search(r"SIGTERM: saved step (\d+)/160", _read(logs[:1]))
    assert match, _read(logs)
    stopped = int(match[1])
    ckpts = test_train._reader(workdir)
    assert ckpts.all_steps()[-1] == stopped
    ckpts.close()

    procs, logs = _launch_processes(workdir, str(tmp_path), longer)
    out = _wait_all(procs, logs, timeout=300)
    assert f"Resuming from step {stopped}." in out[0]
    config = smoke.get_config()
    with config.unlocked():
        config.training.num_epochs = 40
    single = str(tmp_path / "one")
    train.train_and_evaluate(config, single)
    test_train._assert_trees_equal(
        test_train._final_params(workdir)[0],
        test_train._final_params(single)[0],
        rtol=1e-4,
        atol=1e-5,
    )


def test_partial_multi_process_settings_are_a_usage_error(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "launch.train",
        "--config=configs/smoke.py",
        f"--workdir={tmp_path}",
        "--num_processes=2",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "--coordinator_address, --process_id" in proc.stderr
    assert not os.path.exists(tmp_path / "config.json")
