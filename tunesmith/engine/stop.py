"""Stopping a run cleanly: Ctrl-C / SIGTERM finish the current optimizer step, checkpoint, and exit.

Also the fault injection that the resume tests use to send real signals at a chosen step.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import torch
from accelerate import Accelerator


class StopFlag:
    """Ctrl-C / SIGTERM ask the loop to stop after the current optimizer step and checkpoint."""

    def __init__(self):
        self._requested = False
        self._old = {}
        if _is_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self._requested:  # a second Ctrl-C stops at once
            self.restore()
            raise KeyboardInterrupt
        self._requested = True

    def requested(self, acc: Accelerator, step: int, sync_every: int) -> bool:
        if acc.num_processes == 1:
            return self._requested
        if step % sync_every:
            return False
        flag = torch.tensor([1.0 if self._requested else 0.0])
        return bool(acc.reduce(flag, "sum").item() > 0)  # all processes stop at the same step

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def fault_injection() -> Callable[[int], None]:
    """For tests of resume: TUNESMITH_FAULT_AT_STEP='6:INT' (or ':KILL') signals this process after step 6."""
    spec = os.environ.get("TUNESMITH_FAULT_AT_STEP")
    if not spec:
        return lambda step: None
    at, _, sig = spec.partition(":")
    signum = signal.SIGKILL if sig.upper() == "KILL" else signal.SIGINT

    def maybe(step: int) -> None:
        if step == int(at):
            os.kill(os.getpid(), signum)

    return maybe
