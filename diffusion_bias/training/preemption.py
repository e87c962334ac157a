"""Preemption: SIGTERM or Ctrl-C caught while training runs, the step reached saved, exit 75.

Schedulers announce a preemption with SIGTERM; a person at the terminal presses
Ctrl-C (SIGINT). While the training loop runs, `PreemptionNotice` records
either; the loop saves the step it reached and raises `Preempted`, which exits
with status 75 (EX_TEMPFAIL, "rerun to resume"). The same command then resumes
from that step (`checkpoints.TwinCheckpoints`). A second Ctrl-C before the
save completes interrupts at once, as Ctrl-C does elsewhere.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils
import numpy as np

# Exit status of a run stopped by SIGTERM after saving: EX_TEMPFAIL of
# sysexits.h, "temporary failure, the user is invited to retry".
PREEMPTED_EXIT_STATUS = 75


class Preempted(SystemExit):
    """Training stopped on SIGTERM or Ctrl-C after saving `step`; exits with status 75."""

    def __init__(self, step):
        super().__init__(PREEMPTED_EXIT_STATUS)
        self.step = step


class PreemptionNotice:
    """Records SIGTERM and SIGINT from `install()` to `uninstall()`; the loop asks `received()`.

    The handler only sets a flag (no logging or I/O inside a signal handler);
    the training loop checks it between compiled calls, saves and stops. With
    several processes, a SIGTERM to any of them counts for all: `received()`
    gathers every process's flag, so all stop at the same step (each call of it
    is a collective, made once per compiled call by every process). Outside the
    main thread, where Python cannot set handlers, SIGTERM keeps its action.

    Not Orbax's PreemptionCheckpointingPolicy: it asks JAX's preemption sync
    point, which fires only when called with the exact step id after the
    fastest process's last one, and the loop's steps go by `steps_per_call`.
    The handler here replaces JAX's SIGTERM notifier (set by
    jax.distributed.initialize), which records the signal and keeps running.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self._flag = False
        self._installed = False
        self._previous = {}
        self.signal_name = None

    @classmethod
    def install(cls) -> "PreemptionNotice":
        """A notice whose handler now catches SIGTERM and SIGINT."""
        notice = cls()
        if threading.current_thread() is threading.main_thread():
            for signum in cls.SIGNALS:
                notice._previous[signum] = signal.signal(signum, notice._handle)
            notice._installed = True
        return notice

    def uninstall(self) -> None:
        """Gives SIGTERM and SIGINT back their previous actions."""
        if self._installed:
            for signum, previous in self._previous.items():
                # None: a handler set outside Python (JAX's, after jax.distributed).
                signal.signal(signum, signal.SIG_DFL if previous is None else previous)
            self._installed = False

    def _handle(self, signum, frame):
        del frame
        if signum == signal.SIGINT and self._flag:
            raise KeyboardInterrupt  # the second Ctrl-C: do not wait for the save
        self._flag = True
        self.signal_name = signal.Signals(signum).name

    def received(self) -> bool:
        """Whether any process got SIGTERM; the same answer on every process."""
        if jax.process_count() == 1:
            return self._flag
        return bool(np.any(multihost_utils.process_allgather(np.int32(self._flag))))
