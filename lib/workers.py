"""Worker processes that end with the process that started them: a decoding or a generation killed
by any signal, SIGKILL included, leaves no worker behind holding its memory."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # from linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """In a worker process, as its executor's initializer (initargs=(os.getpid(),)): ask Linux to
    SIGKILL it when its parent ends (PR_SET_PDEATHSIG), and end it at once if the parent `parent_pid`
    died before it could ask. The signal follows the thread that started the worker, so start the
    pool from the thread that waits on it. Elsewhere than Linux only the second check holds.
    Returns None; raises nothing."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # a C library without prctl: the worker lives as it did before
            pass
    if os.getppid() != parent_pid:  # orphaned already: the kernel would never send the signal now
        os._exit(1)
