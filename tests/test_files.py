"""Tests of the atomic write: a file is replaced whole or not at all."""

import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from diffusion_bias import files


def test_atomic_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")
    with files.atomic_write(path) as f:
        f.write("new")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["config.json"]


def test_a_crash_mid_write_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "statistics.json"
    path.write_text('{"complete": true}')
    with pytest.raises(RuntimeError, match="killed"):
        with files.atomic_write(path) as f:
            f.write('{"compl')
            f.flush()
            raise RuntimeError("killed mid-write")
    assert path.read_text() == '{"complete": true}'
    assert os.listdir(tmp_path) == ["statistics.json"]


def test_a_crash_before_the_first_write_creates_no_file(tmp_path):
    path = tmp_path / "new.npz"
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_write(path, "wb"):
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_savez_through_a_binary_atomic_write_keeps_the_target_name(tmp_path):
    path = tmp_path / "cache.npz"
    with files.atomic_write(path, "wb") as f:
        np.savez(f, x=np.arange(3))
    with np.load(path) as data:
        np.testing.assert_array_equal(data["x"], np.arange(3))
    assert os.listdir(tmp_path) == ["cache.npz"]


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path):
    plain, atomic = tmp_path / "plain", tmp_path / "atomic"
    with open(plain, "w") as f:
        f.write("x")
    with files.atomic_write(atomic) as f:
        f.write("x")
    assert os.stat(atomic).st_mode == os.stat(plain).st_mode


def test_atomic_write_rejects_modes_other_than_w_and_wb(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with files.atomic_write(tmp_path / "x", "a"):
            pass
    assert os.listdir(tmp_path) == []


def test_json_line_writes_non_finite_floats_as_null_and_is_strict_json():
    row = {"a": float("nan"), "b": [1.5, np.float64("inf"), -float("inf")], "c": {"d": 2}, "e": "x"}
    line = files.json_line(row)

    def refuse(constant):
        raise ValueError(constant)

    assert json.loads(line, parse_constant=refuse) == {
        "a": None,
        "b": [1.5, None, None],
        "c": {"d": 2},
        "e": "x",
    }


def test_exclusive_refuses_a_second_holder_naming_the_first_and_frees_on_exit(tmp_path):
    path = str(tmp_path / "lock")
    with files.exclusive(path, "the work"):
        with pytest.raises(
            files.Busy, match=rf"the work is already running \(pid {os.getpid()} on"
        ):
            with files.exclusive(path, "the work"):
                pass
    with files.exclusive(path, "the work"):
        pass
    assert not os.path.exists(path)


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    path = str(tmp_path / "lock")
    code = (
        "import sys, time; from diffusion_bias import files\n"
        f"with files.exclusive({path!r}, 'w'):\n    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(files.Busy, match=f"pid {holder.pid}"):
            with files.exclusive(path, "w"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with files.exclusive(path, "w"):
        pass


def test_disk_full_finds_enospc_in_the_chain_or_in_words_and_nothing_else():
    full = OSError(errno.ENOSPC, "No space left on device", "x.npz")
    assert files.disk_full(full) is full
    try:
        try:
            raise full
        except OSError as err:
            raise RuntimeError("save finalize failed") from err
    except RuntimeError as wrapped:
        assert files.disk_full(wrapped) is full
    worded = ValueError("Error writing local file: No space left on device [os_error=28]")
    assert files.disk_full(worded) is worded
    assert files.disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert files.disk_full(ValueError("bad value")) is None
