"""Preemption: SIGTERM caught while training runs, the step reached saved, exit 75.

Schedulers announce a preemption with SIGTERM. While the training loop runs,
`PreemptionNotice` records it; the loop saves the step it reached and raises
`Preempted`, which exits with status 75 (EX_TEMPFAIL, "rerun to resume"). The
same command then resumes from that step (`checkpoints.TwinCheckpoints`).
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
    """Training stopped on SIGTERM after saving `step`; exits with status 75."""

    def __init__(self, step):
        super().__init__(PREEMPTED_EXIT_STATUS)
        self.step = step


class PreemptionNotice:
    """Records SIGTERM from `install()` to `uninstall()`; the loop asks `received()`.

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

    def __init__(self):
        self._flag = False
        self._installed = False
        self._previous = None

    @classmethod
    def install(cls):
        """A notice whose handler now catches SIGTERM."""
        notice = cls()
        if threading.current_thread() is threading.main_thread():
            notice._previous = signal.signal(signal.SIGTERM, notice._handle)
            notice._installed = True
        return notice

    def uninstall(self):
        """Gives SIGTERM back its previous action."""
        if self._installed:
            # None: a handler set outside Python (JAX's, after jax.distributed).
            previous = signal.SIG_DFL if self._previous is None else self._previous
            signal.signal(signal.SIGTERM, previous)
            self._installed = False

    def _handle(self, signum, frame):
        del signum, frame
        self._flag = True

    def received(self):
        """Whether any process got SIGTERM; the same answer on every process."""
        if jax.process_count() == 1:
            return self._flag
        return bool(np.any(multihost_utils.process_allgather(np.int32(self._flag))))
