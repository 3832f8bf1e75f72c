"""Files written whole, as databases write them: to a temporary name, flushed to the disk, then renamed
over the old one. A full disk ends in one message naming the file, the space needed and free and how
to mend it, with the previous file intact and nothing half-written left behind."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Callable

# A full disk, and a full quota, which a user mends the same way.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No room on a disk for a file; its message names the file, the space needed and free, and how to mend it."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


def is_disk_full(error: BaseException | None) -> bool:
    """True when `error`, or an error it was raised from or while handling, is a full disk or quota:
    torch.save's zip writer reports one as a RuntimeError ("unexpected pos") raised over the
    file's own OSError."""
    for _ in range(8):  # a chain is short; the bound guards against a cycle
        if error is None:
            return False
        if isinstance(error, OSError) and error.errno in _NO_ROOM:
            return True
        error = error.__cause__ or error.__context__
    return False


def amount(n_bytes: float) -> str:
    """`n_bytes` in words a reader compares at a glance: 512 bytes, 3.0 KiB, 94.1 MiB, 1.3 GiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


def disk_full_error(path: str | Path, place: str, needed: int | None = None, kept: str = "", mend_also: str = "",
                    about: bool = False) -> DiskFullError:  # fmt: skip
    """The one message for a full disk under `path`: the file, the bytes `needed` (when known;
    `about` when estimated) and free there now, what is `kept` (a sentence), and how to mend it: free
    space, or move `place` (the parameter that chose the folder: runs_dir, cache_dir, reports_dir)
    to a larger disk; `mend_also` adds other ways (", or ..."). Returns the error, to raise."""
    path = Path(path)
    folder = next((p for p in (path.parent, *path.parents) if p.is_dir()), path.parent)
    free = shutil.disk_usage(folder).free
    needs = f"it needs {'about ' if about else ''}{amount(needed)} and " if needed is not None else ""
    return DiskFullError(f"no space left on the disk to write {path}: {needs}{folder} has {amount(free)} free. {kept} To mend it, "
                         f"free space on that disk, or move {place} to a larger one ({place.upper()}=/a/larger/disk with make, "
                         f"{place}=... in a notebook){mend_also}.")  # fmt: skip


def write_whole(path: str | Path, content: bytes | Callable[[BinaryIO], object], place: str, needed: int | None = None,
                tmp: Path | None = None) -> Path:  # fmt: skip
    """Write `content` (bytes, or a function that writes into an open binary file) to `tmp` (default
    `path` + ".<pid>.tmp"), flush it to the disk (fsync), rename it over `path` and flush the folder, so that
    neither an interruption nor a power loss leaves a half-written file under `path`. `place` names
    the parameter that moves the folder, for the message; `needed` estimates the size a function
    writes. Returns `path`.

    Raises DiskFullError (the previous file intact, `tmp` removed) when the disk or quota is full;
    any other error as it came, `tmp` removed."""
    path = Path(path)
    tmp = tmp or path.with_name(f"{path.name}.{os.getpid()}.tmp")  # unique to its writer: two never rename each other's
    existed = path.is_file()
    try:
        with open(tmp, "wb") as f:
            content(f) if callable(content) else f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:  # Ctrl-C too: no temporary file is left behind
        tmp.unlink(missing_ok=True)
        if not is_disk_full(error):
            raise
        kept = f"The previous {path.name} is intact; nothing half-written was left." if existed else "Nothing half-written was left."
        size = needed if callable(content) else len(content)
        raise disk_full_error(path, place, size, kept, about=callable(content)) from None
    sync_folder(path.parent)
    return path


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename) to the disk, as databases do after renaming a file."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened for reading: the rename stands, only less durably
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot flush a folder; the rename is done all the same
        pass
    finally:
        os.close(fd)


def stored_bytes(obj) -> int:
    """About the bytes torch.save writes for `obj`: its tensors' storages (each once), walked through
    dicts, lists and tuples; numbers and names add little."""
    import torch

    seen, total, todo = set(), 0, [obj]
    while todo:
        item = todo.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(item, dict):
            todo += item.values()
        elif isinstance(item, (list, tuple)):
            todo += item
    return total
