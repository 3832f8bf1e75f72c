"""One writer per folder, as Snakemake and DVC lock a working directory: a lock file that the
operating system releases when its process ends, holding a line that names its holder.

`make run-all` holds runs_dir's and reports_dir's locks for its whole run, `make report` reports_dir's
and runs_dir's, and `fit` runs_dir's (shared: runs of other names may train beside it) with its own
run's (`runs_dir/.<run>.lock`). A pipeline tells the notebooks it executes, through the environment
(HELD_FOR_CHILDREN), which locks it holds for them, so its own notebooks' `fit` proceeds while another
pipeline's, or a notebook's in JupyterLab, is refused at once by name.

The locks are flock(2) locks: the kernel drops them when the holder's process ends, however it ends,
so a lock is never left behind by a killed process; its holder line may be, and the next holder
says that it takes the lock over.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = ".lock"
# What a pipeline holds for the notebooks it executes: {"pid": its pid, "locks": [lock files]}. Its
# kernels inherit it; a lock named there is theirs to use while that pid still holds it.
HELD_FOR_CHILDREN = "HISTO_WRITER_LOCKS"


class FolderInUse(RuntimeError):
    """Another process writes the folder. The message names it (pid, command, since when) and how
    to wait for it or clear its lock."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a lock, as its holder wrote it into the lock file."""

    pid: int
    purpose: str  # "make run-all", "training baseline", ...
    command: str
    since: float  # seconds since the epoch

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} ({self.purpose}: `{self.command}`), since {started}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive all the same
        return True
    return True


def read_holder(lock_file: Path) -> Holder | None:
    """The holder line a lock file holds, or None (no file, released, or unreadable: a holder caught
    mid-write)."""
    try:
        record = json.loads(Path(lock_file).read_text() or "null")
        return Holder(**record) if record else None
    except (OSError, ValueError, TypeError):
        return None


class WriterLock:
    """The lock on `lock_file`, for a folder the message calls `what` ("runs_dir /x/runs").
    Exclusive by default; `shared=True` admits other shared holders and refuses an exclusive one.
    Use as a context manager, or acquire() and release()."""

    def __init__(self, lock_file: str | Path, what: str, purpose: str, shared: bool = False, siblings: str = ""):
        self.path = Path(lock_file)
        self.what, self.purpose, self.shared = what, purpose, shared
        self.siblings = siblings  # a glob beside it naming other holders to report when this one is refused (".*.lock")
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        """Take the lock, or raise FolderInUse naming its holder. A holder line left by a process that
        ended without releasing it is taken over, and that is said."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(self._in_use_message()) from None
        self._fd = fd
        left = read_holder(self.path)
        if left is not None and left.pid != os.getpid():
            # Only a holder of the exclusive lock writes its line, and clears it on release: a line here
            # belongs to a process that ended (killed, or its machine lost) while it held the lock.
            state = "which is gone" if not _alive(left.pid) else "which no longer holds it"
            print(f"{self.what}: taking over the lock {self.path} left by {left.describe()}, {state}", flush=True)
        if not self.shared:
            line = json.dumps({"pid": os.getpid(), "purpose": self.purpose, "command": shlex.join(sys.orig_argv), "since": time.time()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, line.encode(), 0)
        elif left is not None:
            os.ftruncate(fd, 0)  # no exclusive holder can be there while this one holds it shared
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        if not self.shared:
            os.ftruncate(self._fd, 0)  # released in order: no holder line is left to take over
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _in_use_message(self) -> str:
        holders = [read_holder(self.path)]
        if self.siblings:
            holders += [read_holder(path) for path in sorted(self.path.parent.glob(self.siblings))]
        named = [holder for holder in holders if holder is not None and _alive(holder.pid)]
        if named:
            who = "; ".join(holder.describe() for holder in named)
            pids = " ".join(str(holder.pid) for holder in named)
            stop = f"or, if it is stuck, stop it (kill {pids}): its lock goes with its process"
        else:
            who = "a process that left no name in it"
            stop = f"`fuser -v {self.path}` names it; the lock goes with its process"
        return (f"{self.what} is being written by another process: {who}. One writer at a time keeps a run folder whole, so "
                f"this one stops before writing anything. Wait for it to finish and start again, {stop} ({self.path}); or give "
                "this one another folder")  # fmt: skip


def lock_file(folder: str | Path) -> Path:
    """The lock file of a whole folder (runs_dir, reports_dir)."""
    return Path(folder) / LOCK_FILE


def held_by_parent(lock: str | Path) -> bool:
    """True when the pipeline that executes this process's notebook holds `lock` for it: named in
    HELD_FOR_CHILDREN, its holder line names that pipeline, and that pipeline is alive."""
    try:
        held = json.loads(os.environ.get(HELD_FOR_CHILDREN, "") or "null")
    except ValueError:
        return False
    if not held or os.path.realpath(lock) not in {os.path.realpath(path) for path in held.get("locks", [])}:
        return False
    holder = read_holder(Path(lock))
    return holder is not None and holder.pid == held.get("pid") and _alive(holder.pid)


@contextmanager
def held_for_children(locks: list[WriterLock]):
    """Take `locks` (in order; any taken are released if a later one is refused) and name them in
    HELD_FOR_CHILDREN while held, for the notebooks' kernels this process starts."""
    taken: list[WriterLock] = []
    before = os.environ.get(HELD_FOR_CHILDREN)
    try:
        for lock in locks:
            taken.append(lock.acquire())
        os.environ[HELD_FOR_CHILDREN] = json.dumps({"pid": os.getpid(), "locks": [str(lock.path) for lock in taken]})
        yield taken
    finally:
        if before is None:
            os.environ.pop(HELD_FOR_CHILDREN, None)
        else:
            os.environ[HELD_FOR_CHILDREN] = before
        for lock in reversed(taken):
            lock.release()
