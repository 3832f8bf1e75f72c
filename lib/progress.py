"""Progress bars on long work: tqdm's bar where it redraws in place (a terminal, JupyterLab), plain
lines where it cannot (a log file, `make run-all > log`, the notebooks the pipeline executes).

tqdm redraws its bar with carriage returns, which a log keeps as one ever-growing line of escape
debris; in a log, a line every PLAIN_INTERVAL_S seconds (and a last one when the work ends) says
the same. HISTO_PROGRESS=plain or =bar in the environment overrides the choice; =off shows none (the processes of a
run under torchrun other than rank 0, whose bars would repeat rank 0's).
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

PROGRESS_ENV = "HISTO_PROGRESS"  # "plain", "bar" or "off"; the pipeline sets "plain" for the notebooks it executes
PLAIN_INTERVAL_S = 30.0  # seconds between two progress lines in a log


def plain_output(stream) -> bool:
    """True when progress on `stream` should be plain lines: HISTO_PROGRESS says so, or, unset, the
    stream is no terminal and this is no interactive Jupyter kernel (whose output area redraws)."""
    mode = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if mode in ("plain", "bar"):
        return mode == "plain"
    if "ipykernel" in sys.modules:
        return False
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        return True


class _Lines:
    """A file for tqdm that keeps each status it draws as one whole line, without carriage returns
    or cursor movements."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\x1b[A", "").replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable=None, *, desc: str, unit: str, total: int | None = None, leave: bool = True, initial: int = 0, file=None) -> tqdm:
    """tqdm over `iterable` (or a manual bar of `total`), plain lines when plain_output(file or
    stderr). A bar with leave=False (the batches of one epoch) prints nothing in a log unless it
    runs longer than PLAIN_INTERVAL_S; one with leave=True ends with its last line kept."""
    stream = file if file is not None else sys.stderr
    if os.environ.get(PROGRESS_ENV, "").strip().lower() == "off":
        return tqdm(iterable, total=total, initial=initial, disable=True)
    if not plain_output(stream):
        return tqdm(iterable, desc=desc, unit=unit, total=total, leave=leave, initial=initial, file=stream)
    return tqdm(iterable, desc=desc, unit=unit, total=total, initial=initial, file=_Lines(stream), ascii=True, ncols=100,
                mininterval=PLAIN_INTERVAL_S, delay=0 if leave else PLAIN_INTERVAL_S, leave=leave)  # fmt: skip
