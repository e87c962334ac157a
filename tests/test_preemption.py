"""SIGTERM recorded while installed, the previous action given back, exit status 75.

A training run stopped by SIGTERM and resumed is tested end to end in
test_checkpoints.py (beside the uninterrupted run it is compared with) and, with
two processes, in test_multihost.py.
"""

import os
import signal

import pytest

from diffusion_bias.training import preemption


def test_sigterm_is_recorded_while_installed_and_its_previous_action_comes_back():
    caught = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    try:
        notice = preemption.PreemptionNotice.install()
        assert not notice.received()
        os.kill(os.getpid(), signal.SIGTERM)
        assert notice.received()
        assert not caught  # the notice's handler, not the previous one, took it
        notice.uninstall()
        os.kill(os.getpid(), signal.SIGTERM)
        assert caught == [signal.SIGTERM]
        notice.uninstall()  # a second uninstall changes nothing
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_preempted_exits_with_ex_tempfail_and_names_the_step():
    with pytest.raises(SystemExit) as exc:
        raise preemption.Preempted(120)
    assert exc.value.code == preemption.PREEMPTED_EXIT_STATUS == 75
    assert exc.value.step == 120
