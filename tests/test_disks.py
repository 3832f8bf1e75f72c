"""Full disks and killed runs, on a real small filesystem (a tmpfs of a few MiB) and with real signals:
a full disk ends in one message naming the file, the space and the way out, with nothing earlier lost
and no temporary file left; the cache never dies of SIGBUS; decoding workers die with their parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.data.cache import TileCache
from lib.files import DiskFullError
from lib.report.evaluate import write_submission
from lib.training.run_folder import RunFolder
from tests.helpers import write_tile

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs mounted for the test, unmounted after it; skips where mounting is not permitted."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root or CAP_SYS_ADMIN): {done.stderr.strip() or done.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Another program's file that takes all of `disk`, then gives back `leave` bytes."""
    filler = disk / "other-program.bin"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\xff" * 65536)
                f.flush()
        except OSError:  # ENOSPC: the disk is full
            pass
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_run_folder_files_on_a_full_disk_say_so_and_keep_the_previous_ones(small_disk):
    folder = RunFolder(small_disk / "runs" / "baseline")
    folder.start(fresh=True)
    first = {"model": {"weight": torch.arange(1000, dtype=torch.float32)}, "epoch": 0}
    folder.save_checkpoint("last", first)
    folder.write_history([{"epoch": 0}])
    folder.write_result({"best_valid_accuracy": 0.5})
    folder.write_split(["a.jpg"], ["b.jpg"])
    folder.record_training_fingerprint("one")
    before = {path.name: path.read_bytes() for path in folder.path.iterdir()}
    fill(small_disk)

    with pytest.raises(DiskFullError) as raised:
        folder.save_checkpoint("last", {"model": {"weight": torch.zeros(2**18)}, "epoch": 1})  # 1 MiB
    message = str(raised.value)
    assert str(folder.checkpoint_file("last")) in message and "no space left" in message
    assert "it needs about 1.0 MiB" in message and "free" in message and "RUNS_DIR=" in message
    assert "The previous last.pt is intact" in message
    for write in (lambda: folder.write_history([{"epoch": 0}, {"epoch": 1, "notes": "x" * 8192}]),
                  lambda: folder.write_result({"notes": "x" * 8192}), lambda: folder.write_split(["c.jpg" * 2000], []),
                  lambda: folder.record_training_fingerprint("two" * 3000)):  # fmt: skip
        with pytest.raises(DiskFullError, match="no space left on the disk to write .*runs_dir"):
            write()
    assert {path.name: path.read_bytes() for path in folder.path.iterdir()} == before  # nothing lost, no .tmp left
    assert torch.equal(folder.load_checkpoint("last")["model"]["weight"], first["model"]["weight"])


def test_evaluation_files_on_a_full_disk_name_reports_dir(small_disk):
    reports = small_disk / "reports"
    reports.mkdir()
    fill(small_disk)
    with pytest.raises(DiskFullError, match=r"submission\.csv: it needs 20 bytes and .*\(REPORTS_DIR=") as raised:
        write_submission(reports / "submission.csv", [1, 2], [0, 1])
    assert "Nothing half-written was left" in str(raised.value)
    assert not list(reports.iterdir())


def tiles_on_disk(folder: Path, n: int) -> list[Path]:
    return [write_tile(folder / f"{i}.png", i) for i in range(n)]  # 32x32: 3 KiB a row in the cache


def test_the_free_space_check_states_its_margin(small_disk, tmp_path):
    cache = TileCache(tiles_on_disk(tmp_path / "tiles", 4), small_disk)
    cache.open_size(32)
    with pytest.raises(ValueError, match=r"needs 12\.0 KiB in .*, plus a margin of 1\.0 GiB kept free .* has [\d.]+ MiB free"):
        cache.decode(np.arange(4), "decoding")


# Decodes 120 tiles into a cache on the small disk after `prepare`; prints what happened as JSON.
_DECODE = """
import json, os, shutil, sys
import numpy as np
sys.path.insert(0, {root!r})
import lib.data.cache as cache_module
from lib.data.cache import TileCache, DECODED
from lib.data.decode import decode_tile
from lib.files import DiskFullError
from pathlib import Path
from tests.test_disks import fill, tiles_on_disk

disk, sources = Path({disk!r}), tiles_on_disk(Path({tiles!r}), 120)
cache_module.PROCESS_DECODE_MIN, cache_module._CHUNK, cache_module.FREE_MARGIN = {process_min}, 8, 0
cache = TileCache(sources, disk)
cache.open_size(32)
cache.scan_headers(np.arange(120))
{prepare}
try:
    cache.decode(np.arange(120), "decoding")
    print(json.dumps({{"decoded": cache.decoded_now}}))
except DiskFullError as error:
    print(json.dumps({{"message": str(error), "decoded_now": cache.decoded_now}}))
os.remove(disk / "other-program.bin")
again = TileCache(sources, disk)
again.open_size(32)
again.decode(np.arange(120), "decoding")
tiles = again.tiles().numpy()
same = all(np.array_equal(tiles[i], decode_tile(sources[i], 32)[0].transpose(2, 0, 1)) for i in range(120))
print(json.dumps({{"decoded_again": again.decoded_now, "all_decoded": bool((again.state == DECODED).all()), "same_pixels": same}}))
"""


def decode_on_small_disk(small_disk: Path, tmp_path: Path, prepare: str, process_min: int = 10**9) -> list[dict]:
    """Runs _DECODE in a fresh process; the JSON lines it printed. Fails when it died of a signal."""
    script = _DECODE.format(root=str(PROJECT_ROOT), disk=str(small_disk), tiles=str(tmp_path / "tiles"), process_min=process_min,
                            prepare=textwrap.dedent(prepare))  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    assert done.returncode >= 0, f"decoding died of signal {signal.Signals(-done.returncode).name}:\n{done.stderr[-2000:]}"
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_a_disk_filled_by_another_program_after_the_check_stops_decoding_with_the_message_not_sigbus(small_disk, tmp_path):
    # The check reads the free space, then another program takes all of it before a row is written.
    prepare = """
    real_usage = shutil.disk_usage
    def usage_then_filled(path):
        shutil.disk_usage = real_usage
        fill(disk)
        return real_usage(path)._replace(free=10**12)
    shutil.disk_usage = usage_then_filled
    """
    failed, again = decode_on_small_disk(small_disk, tmp_path, prepare)
    message = failed["message"]
    assert "no space left on the disk to write" in message and f"{small_disk}/" in message and ".npy" in message
    assert "it needs 360.0 KiB" in message and "0 of the 120 tiles were decoded before it filled; a later run decodes them" in message
    assert "CACHE_DIR=" in message and "subset" in message
    assert again == {"decoded_again": 120, "all_decoded": True, "same_pixels": True}


@pytest.mark.parametrize("process_min", [10**9, 16], ids=["threads", "processes"])
def test_a_disk_that_fills_while_rows_are_written_keeps_the_rows_decoded(small_disk, tmp_path, process_min):
    # A filesystem that cannot reserve space (ZFS, some network disks): the rows' own writes meet the full disk.
    prepare = """
    import errno
    def cannot_reserve(*args):
        raise OSError(errno.EOPNOTSUPP, "not supported")
    os.posix_fallocate = cannot_reserve
    real_usage = shutil.disk_usage
    def usage_then_filled(path):
        shutil.disk_usage = real_usage
        fill(disk, leave=40 * 1024)
        return real_usage(path)._replace(free=10**12)
    shutil.disk_usage = usage_then_filled
    """
    failed, again = decode_on_small_disk(small_disk, tmp_path, prepare, process_min)
    kept = failed["decoded_now"]
    assert "no space left on the disk to write" in failed["message"]
    assert f"{kept} of the 120 tiles were decoded before it filled" in failed["message"]
    assert 0 <= kept < 120 and (kept > 0 or process_min < 120)  # threads write row by row; two workers' chunks may both fail
    assert kept == 0 or "are kept in the cache, and a later run decodes only the rest" in failed["message"]
    assert again == {"decoded_again": 120 - kept, "all_decoded": True, "same_pixels": True}


def children(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# A decoding (or a generation) whose every tile takes 0.2 s, so that it is killed halfway.
_SLOW = {
    "decoding": """
import sys, time
import numpy as np
sys.path.insert(0, {root!r})
import lib.data.cache as cache_module
from pathlib import Path
from tests.test_disks import tiles_on_disk
real = cache_module.decode_tile
cache_module.decode_tile = lambda *args: (time.sleep(0.2), real(*args))[1]
cache_module.PROCESS_DECODE_MIN = 16
cache = cache_module.TileCache(tiles_on_disk(Path({tmp!r}) / "tiles", 64), Path({tmp!r}) / "cache")
cache.open_size(32)
cache.decode(np.arange(64), "decoding")
""",
    "generating": """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import lib.data.synthetic as synthetic
real = synthetic.render_tile
synthetic.render_tile = lambda *args: (time.sleep(0.2), real(*args))[1]
synthetic.generate(Path({tmp!r}) / "generated", synthetic.SyntheticSpec(n_train=256, n_test=0, seed=3), workers=2)
""",
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("job", sorted(_SLOW))
def test_workers_die_with_their_parent_when_it_is_killed(tmp_path, job):
    run = subprocess.Popen([sys.executable, "-c", _SLOW[job].format(root=str(PROJECT_ROOT), tmp=str(tmp_path))], cwd=PROJECT_ROOT)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and run.poll() is None:
            workers = children(run.pid)
            time.sleep(0.1)
        assert len(workers) >= 2, f"the {job} started {len(workers)} worker process(es), not 2"
        time.sleep(1)  # halfway: the workers are busy with their tiles
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if alive(pid)], f"the {job}'s workers outlived it"
    finally:
        for pid in [run.pid, *workers]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
