"""Checkpoints: checksums that name damage, and a training subprocess read while it saves,
resumed after SIGTERM or kill -9.

The subprocess tests need a run long enough for a signal to land mid-training;
they live apart from test_train.py so that the two files run on separate workers.
"""

import collections
import os
import re
import signal
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_bias import checkpoints
from diffusion_bias.training import preemption
from tests import test_train


def _state(seed=0, ema=True):
    """A TwinState of random arrays of several dtypes, its opt_state a namedtuple like optax's."""
    import optax

    k = jax.random.split(jax.random.key(seed), 3)
    params = {
        "w": jax.random.normal(k[0], (2, 64, 40)),
        "b": jax.random.normal(k[1], (2, 40)).astype(jnp.bfloat16),
    }
    opt_state = optax.adam(1e-3).init(params)
    ema_params = jax.tree.map(lambda x: x + 1, params) if ema else None
    return checkpoints.TwinState(jnp.int32(4), params, opt_state, ema_params)


def test_checksum_changes_when_any_one_bit_of_any_leaf_changes():
    state = _state()
    base = checkpoints.checksum(state.params)
    for name, shape in (("w", (2, 64, 40)), ("b", (2, 40))):
        x = np.asarray(jax.device_get(state.params[name]))
        for flat in (0, 1, x.size // 2, x.size - 1):
            bits = x.view(np.uint16 if x.dtype.itemsize == 2 else np.uint32).copy()
            bits.reshape(-1)[flat] ^= 1 << (flat % 8)
            changed = dict(state.params, **{name: jnp.asarray(bits.view(x.dtype))})
            assert checkpoints.checksum(changed) != base, (name, flat)
    # Two leaves swapped, the same values elsewhere: the names are part of the digest.
    swapped = {"w": state.params["w"], "b2": state.params["b"]}
    assert checkpoints.checksum(swapped) != base
    assert checkpoints.checksum(jax.device_get(state.params)) == base


def test_saved_checksums_match_what_reads_back_whole_and_evaluated_only(tmp_path):
    state = _state()
    ckpts = checkpoints.TwinCheckpoints(str(tmp_path), [4])
    assert ckpts.save(4, state)
    ckpts.wait_until_finished()
    assert ckpts.recorded_checksums(4) == checkpoints.checksums(state)
    # The namedtuple opt_state reads back as dicts: the checksum is the same.
    assert checkpoints.checksums(ckpts.read_snapshot(4)) == checkpoints.checksums(state)
    only = ckpts.read_snapshot(4, evaluated_only=True)
    assert only.params is None and only.opt_state is None
    assert checkpoints.checksum(only.evaluated_params()) == checkpoints.checksum(state.ema_params)
    ckpts.close()


def test_a_reader_reads_each_steps_metadata_once_and_the_same_snapshot(tmp_path):
    state = _state()
    writer = checkpoints.TwinCheckpoints(str(tmp_path), [4])
    writer.save(4, state)
    writer.close()
    reader = checkpoints.TwinCheckpoints(str(tmp_path), [4], read_only=True)
    calls = collections.Counter()
    for name in ("metadata", "item_metadata"):
        read = getattr(reader._manager, name)

        def counted(step, name=name, read=read):
            calls[name] += 1
            return read(step)

        setattr(reader._manager, name, counted)
    first = reader.read_snapshot(4, evaluated_only=True)
    reader.recorded_checksums(4)
    once = dict(calls)
    assert once["item_metadata"] == 1
    again = reader.read_snapshot(4, evaluated_only=True)
    reader.recorded_checksums(4), reader.evaluated_field(4)
    assert calls == once  # nothing read again
    assert checkpoints.checksums(first) == checkpoints.checksums(again)
    reader.close()


def overwrite_bytes(folder, every=512, count=16):
    """Flips `count` bytes every `every` bytes of each array data file under `folder`."""
    for root, _, files in os.walk(folder):
        if os.path.basename(root) != "d":
            continue
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                data = bytearray(f.read())
            for start in range(every // 2, len(data), every):
                for i in range(start, min(start + count, len(data))):
                    data[i] ^= 0xFF
            with open(path, "wb") as f:
                f.write(bytes(data))


def test_overwritten_bytes_and_a_wrong_checksum_are_named_as_damage(tmp_path):
    state = _state()
    ckpts = checkpoints.TwinCheckpoints(str(tmp_path), [4, 8])
    ckpts.save(4, state)
    ckpts.save(8, state)
    ckpts.close()
    overwrite_bytes(os.path.join(tmp_path, "checkpoints", "4"))
    # Checkpoint 8 reads back intact, but its recorded checksum says otherwise.
    meta = os.path.join(tmp_path, "checkpoints", "8", "_CHECKPOINT_METADATA")
    with open(meta) as f:
        text = f.read()
    recorded = checkpoints.checksums(state)["ema_params"]
    with open(meta, "w") as f:
        f.write(text.replace(recorded, "0" * len(recorded)))
    reader = checkpoints.TwinCheckpoints(str(tmp_path), [4, 8], read_only=True)
    for step in (4, 8):
        with pytest.raises(
            checkpoints.DamagedCheckpoint, match=os.path.join("checkpoints", str(step))
        ):
            reader.read_snapshot(step, evaluated_only=True)
    reader.close()
    # A writer resuming sets both aside: nothing intact is left to resume from.
    writer = checkpoints.TwinCheckpoints(str(tmp_path), [4, 8])
    assert writer.restore_newest(checkpoints.abstract(state)) == (0, None)
    assert sorted(os.listdir(os.path.join(tmp_path, "damaged"))) == ["4", "8"]
    writer.close()


def _checkpoints_after(workdir, step):
    """Steps of the complete checkpoints in `workdir` later than `step`."""
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return [int(d) for d in os.listdir(folder) if d.isdigit() and int(d) > step]


# A slower run (more epochs) so that a signal lands mid-training, after a save.
LONG = ["--config.training.num_epochs=40"]


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """A 40-epoch run in a subprocess, its snapshots read as the analysis reads them meanwhile.

    Every pass opens the checkpoints read only, lists the snapshots and reads
    each new one, until the training exits.

    Returns:
        (workdir, training output, listings [each a list of steps], {step:
        params read while training}, steps read while the training still ran).
    """
    workdir = str(tmp_path_factory.mktemp("long"))
    proc = test_train._launch(workdir, *LONG)
    listings, seen, while_running = [], {}, []
    # A reader that deleted saves in flight would leave the training waiting forever.
    deadline = time.time() + 300
    try:
        while proc.poll() is None:
            assert time.time() < deadline, f"training still running after 300 s; read {listings}"
            if os.path.exists(os.path.join(workdir, "config.json")):
                ckpts = test_train._reader(workdir)
                try:
                    steps = ckpts.snapshot_steps()
                    listings.append(steps)
                    for step in steps:
                        if step not in seen:
                            seen[step] = jax.device_get(ckpts.read_snapshot(step).params)
                            if proc.poll() is None:
                                while_running.append(step)
                finally:
                    ckpts.close()
            time.sleep(0.02)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    return workdir, out, listings, seen, while_running


def test_analysis_reads_only_complete_snapshots_while_training_saves(long_run):
    workdir, _, listings, seen, while_running = long_run
    plan = list(test_train._plan(workdir))
    # Training finished with every snapshot, and no other checkpoint left.
    ckpts = test_train._reader(workdir)
    assert ckpts.snapshot_steps() == ckpts.all_steps() == plan
    ckpts.close()
    # The reader saw snapshots appear in order while the run was going on...
    assert len(while_running) >= 2, (listings, while_running)
    for steps in listings:
        assert steps == plan[: len(steps)]
    # ...and what it read then is exactly what the finished run holds.
    final = test_train._all_snapshot_params(workdir)
    assert set(seen) <= set(final)
    for step, params in seen.items():
        test_train._assert_trees_equal(params, final[step])


def _start_and_wait_for_a_save(workdir, after=-1):
    """A LONG run started in `workdir`, returned once it has saved a step past `after`."""
    proc = test_train._launch(workdir, *LONG)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not _checkpoints_after(workdir, after):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    return proc


def _stop_with(signum, workdir):
    """Sends `signum` to a LONG run once it has saved; asserts it saved and exited 75.

    Returns:
        The step it saved, the newest checkpoint of `workdir`.
    """
    proc = _start_and_wait_for_a_save(workdir)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == preemption.PREEMPTED_EXIT_STATUS, out
    assert "Traceback" not in out, out
    match = re.search(rf"{signal.Signals(signum).name}: saved step (\d+)/160", out)
    assert match, out
    stopped = int(match[1])
    assert 0 < stopped < 160
    ckpts = test_train._reader(workdir)
    assert ckpts.all_steps()[-1] == stopped
    ckpts.close()
    return stopped


# One workdir takes both interruptions in turn (SIGTERM, then kill -9 of the resumed
# run), so that the pair costs one run of 40 epochs, not two. The SIGTERM half tests
# preemption.py too; it stays here, beside the uninterrupted `long_run` it is
# compared with, as a test_preemption.py of its own would need its own 40-epoch run.
def test_sigterm_saves_the_step_reached_kill_9_loses_no_save_and_reruns_resume_bit_identically(
    long_run, tmp_path
):
    workdir = str(tmp_path)
    stopped = _stop_with(signal.SIGTERM, workdir)

    # The rerun resumes from the step SIGTERM saved; killed once it has saved a later one...
    rerun = _start_and_wait_for_a_save(workdir, after=stopped)
    os.kill(rerun.pid, signal.SIGKILL)
    out, _ = rerun.communicate(timeout=120)
    assert f"Resuming from step {stopped}." in out, out

    # ...the next resumes from a save of its own, and ends with the uninterrupted snapshots.
    last = test_train._launch(workdir, *LONG)
    out, _ = last.communicate(timeout=300)
    assert last.returncode == 0, out
    match = re.search(r"Resuming from step (\d+)\.", out)
    assert match and int(match[1]) > stopped, out
    resumed, uninterrupted = (
        test_train._all_snapshot_params(workdir),
        test_train._all_snapshot_params(long_run[0]),
    )
    assert list(resumed) == list(uninterrupted) == list(test_train._plan(workdir))
    for step in resumed:
        test_train._assert_trees_equal(resumed[step], uninterrupted[step])


def test_a_second_trainer_on_a_workdir_in_training_refuses_in_one_line(tmp_path):
    from diffusion_bias import files
    from diffusion_bias.training import train

    workdir = str(tmp_path)
    # The lock a first training holds (tests/test_files.py: it dies with its holder).
    with files.exclusive(os.path.join(workdir, train.LOCK), f"a training in {workdir}"):
        second = test_train._launch(workdir)
        out, _ = second.communicate(timeout=120)
    assert second.returncode == 2, out
    assert out.strip().splitlines()[-1] == (
        f"Error: a training in {workdir} is already running "
        f"(pid {os.getpid()} on {socket.gethostname()}); wait for it to end"
    ), out
    assert "Traceback" not in out
    assert os.listdir(workdir) == []  # the refused trainer wrote nothing


def test_ctrl_c_saves_the_step_reached_and_exits_75_like_sigterm(tmp_path):
    _stop_with(signal.SIGINT, str(tmp_path))
