"""SIGTERM (a preemption) and Ctrl-C while training: save at the next step, then stop with ``Preempted``."""

import signal
import threading

from absl import logging

__all__ = ["PREEMPTED_EXIT_CODE", "Preempted", "StopSignals"]


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again" -- a restart resumes from the saved checkpoint.


class Preempted(RuntimeError):
    """SIGTERM or SIGINT (Ctrl-C) arrived; a checkpoint was saved and the run stopped."""


class StopSignals:
    """While training: SIGTERM (a preemption) and SIGINT (Ctrl-C) ask the run to stop after the current
    step, which is then checkpointed; a second Ctrl-C aborts at once (``KeyboardInterrupt``), for a
    user who would rather lose the step than wait for it."""

    NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}

    def __init__(self):
        self.requested = threading.Event()
        self.received = None
        self._previous = {}

    @property
    def stopped(self):
        """How a message says why the run stopped: "preempted" (SIGTERM) or "interrupted (Ctrl-C)"."""
        return "interrupted (Ctrl-C)" if self.received == signal.SIGINT else "preempted"

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python installs handlers only there.
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.NAMES}
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum, frame):
        if self.requested.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt("second Ctrl-C")
            return
        self.received = signum
        logging.warning("%s received: saving a checkpoint after the current step (or execution of "
                        "train.steps_per_execution steps), then stopping%s.", self.NAMES[signum],
                        "; Ctrl-C again aborts at once without saving" if signum == signal.SIGINT else "")
        self.requested.set()
