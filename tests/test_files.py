"""Tests of the atomic write: a file is replaced whole or not at all."""

import os

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
