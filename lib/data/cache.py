"""The memory-mapped tile cache: each data set's tiles decoded once into one uint8 array per tile
size under data/cache/, filled row by row as runs ask for rows, by threads or worker processes; and,
beside it, the tiles normalised to a stain target, one array per target (lib/data/stain.py)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from lib.data.decode import (TILE_SIZE, BadImagesError, DecodeRecord, check_multi_page, check_non_square, decode_tile, source_signature,
                             square_tile)
from lib.data.layouts import H5Tile, TileSource
from lib.data.stain import StainTarget, normalize_stain
from lib.files import amount, disk_full_error, is_disk_full, write_whole
from lib.paths import TILE_CACHE_DIR
from lib.progress import progress
from lib.workers import die_with_parent

CACHE_VERSION = 4  # bump when decoding or the cache's files change, so that old caches are not reused (2: row-by-row cache; 3: EXIF orientation, >8-bit scaling, pages; 4: non-square tiles cropped or padded, not squashed)


# A tile's row in the cache: not decoded yet, decoded, or unreadable (its reason kept in the cache's meta).
NOT_DECODED, DECODED, UNREADABLE = 0, 1, 2
# A row of a stain-normalised cache file: not normalised yet, normalised, or kept as decoded (its stain undefined: too little tissue).
STAIN_NOT_DONE, STAIN_DONE, STAIN_KEPT = 0, 1, 2
# Below this many tiles to decode, threads (no start-up cost); above it, one process per core: PIL's
# TIFF and PNG readers parse headers in Python, under the GIL, so threads gain little on small files
# (96x96 TIFFs on 2 cores: 2,800 tiles/s with threads, 11,800 with processes).
PROCESS_DECODE_MIN = 2048
_CHUNK = 256  # tiles per task handed to a worker process
# Left free beside the cache when decoding begins: the runs' checkpoints (ResNet50's last.pt is about
# 0.3 GiB) and the system often share its disk, and a cache that took the last byte would fail them.
FREE_MARGIN = 2**30
_MEND_SIZE = ", or draw fewer tiles (subset) or smaller ones (tile_size)"


def _content_key(sources: list[TileSource], multi_page: str = "refuse", non_square: str = "crop") -> str:
    """Identifies the data set's files and their content (sizes and times), how files of several
    images are read and how tiles that are not square are made square, whatever the tile size."""
    digest = hashlib.sha256(repr((CACHE_VERSION, multi_page, non_square)).encode())
    h5_stats: dict[Path, os.stat_result] = {}
    for source in sources:
        if isinstance(source, H5Tile):  # one stat per HDF5 file, not one per row
            stat = h5_stats.get(source.file) or h5_stats.setdefault(source.file, os.stat(source.file))
            signature = [str(source), stat.st_size, stat.st_mtime_ns]
        else:
            signature = source_signature(source)
        digest.update(repr(signature).encode())
    return digest.hexdigest()[:24]


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Whole or absent: written to a temporary name, flushed, then renamed (lib/files.py).
    Raises DiskFullError naming the file on a full disk."""
    write_whole(path, lambda f: np.save(f, array), "cache_dir", needed=array.nbytes + 128, tmp=path.with_name(path.name + ".tmp.npy"))


def _overwrite_npy(path: Path, array: np.ndarray) -> None:
    """Rewrite an .npy file's values where they lie, flushed: overwriting blocks it holds takes no
    new disk space, so the states and headers of rows decoded before a disk filled can still be
    kept. Each value is valid old or new, so an interruption halfway loses only marks (rows decoded
    again). A file of another shape or unreadable is written afresh. Raises DiskFullError."""
    try:
        offset, same = _npy_offset(path, array)
    except (OSError, ValueError):  # missing or broken: written whole instead
        same = False
    if not same:
        return _save_npy(path, array)
    fd = os.open(path, os.O_WRONLY)
    try:
        _pwrite_all(fd, np.ascontiguousarray(array).tobytes(), offset)
        os.fsync(fd)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(path, "cache_dir", array.nbytes, "Its earlier values are kept.", _MEND_SIZE) from None
        raise
    finally:
        os.close(fd)


def _npy_offset(path: Path, array: np.ndarray) -> tuple[int, bool]:
    """Where `path`'s values begin, and whether it holds an array of `array`'s shape and type."""
    on_disk = np.load(path, mmap_mode="r")
    return on_disk.offset, (on_disk.shape, on_disk.dtype) == (array.shape, array.dtype)


def _pwrite_all(fd: int, data: bytes | np.ndarray, offset: int) -> None:
    """All of `data` at `offset`: a disk that fills mid-write writes part, then raises ENOSPC on the rest."""
    view = memoryview(data).cast("B")
    while len(view):
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _write_sparse_npy(f, shape: tuple[int, ...]) -> None:
    """An uint8 .npy of `shape` with no value written: the header, then a hole the length of the data."""
    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
    f.truncate(f.tell() + int(np.prod(shape)))


# Set in each decoding process: the cache file it writes rows into, and where its rows begin (None when only checking).
_worker_file: tuple[int, int] | None = None


def _start_worker(data_file: str | None, parent_pid: int) -> None:
    global _worker_file
    die_with_parent(parent_pid)  # a decoding killed halfway leaves no worker behind (each holds hundreds of MB)
    if data_file:
        # Rows are written with pwrite, not through a writable mapping: on a sparse file every
        # first touch of a mapped page faults and allocates (measured: 30 % of the decode time).
        _worker_file = (os.open(data_file, os.O_WRONLY), np.load(data_file, mmap_mode="r").offset)


def _decode_chunk(chunk: list[tuple[int, str]], size: int, multi_page: str = "refuse",
                  non_square: str = "crop") -> list[tuple[int, str, str, str, dict]]:  # fmt: skip
    """In a worker process: decode files into the shared cache; (row, error, mode, "WxH", notes) for each."""
    done = []
    for row, path in chunk:
        try:
            tile, mode, shape, notes = decode_tile(Path(path), size, multi_page, non_square)
        except Exception as error:  # PIL raises several types; every one means "not a usable image"
            done.append((row, f"{type(error).__name__}: {error}", "", "", {}))
            continue
        if _worker_file is not None:
            fd, offset = _worker_file
            row_bytes = np.ascontiguousarray(tile.transpose(2, 0, 1))
            _pwrite_all(fd, row_bytes, offset + row * row_bytes.nbytes)  # ENOSPC: the chunk fails, the parent says why
        done.append((row, "", mode, shape, notes))
    return done


def _header_chunk(chunk: list[tuple[int, str]]) -> list[tuple[int, int, int, str]]:
    """In a worker process: (row, width, height, mode) from each file's header (PIL opens lazily);
    (row, -2, -2, "") when unreadable, left for decoding to report."""
    return [_header(row, Path(path)) for row, path in chunk]


def _header(row: int, source: TileSource) -> tuple[int, int, int, str]:
    try:
        with source.open("rb") as f, Image.open(f) as image:
            return row, image.width, image.height, image.mode
    except Exception:  # a broken file: decoding finds it again and lists it with its reason
        return row, -2, -2, ""


class TileCache:
    """A data set's decoded tiles: for each size, one (N, 3, size, size) uint8 array whose row i is
    sources[i], memory-mapped from `cache_dir/<key>-<size>.npy` (in memory without a cache_dir), and
    filled row by row as runs ask for them, so a subset decodes only its own tiles; the file is
    sparse until then. Per row it also keeps the state (NOT_DECODED, DECODED, UNREADABLE) and the
    header (width, height, mode code; -1 not looked at yet). <key> covers every file's size and time:
    a changed file gives a new cache, and the old one is removed. Processes that share a cache (run
    notebooks executing at once, `make run-all JOBS=N`) take turns at it: each step that reads and
    writes its files holds `<key>.lock` (_exclusive) and starts from what the others saved."""

    def __init__(self, sources: list[TileSource], cache_dir: str | Path | None, keep_tiles: bool = True, multi_page: str = "refuse",
                 non_square: str = "crop"):  # fmt: skip
        if not sources:
            raise ValueError("no tiles to decode")
        check_multi_page(multi_page)
        check_non_square(non_square)
        self.sources, self.keep_tiles, self.multi_page, self.non_square = sources, keep_tiles, multi_page, non_square
        self.cache_dir = Path(cache_dir) if cache_dir and keep_tiles else None
        self.size, self.array, self.state, self.decoded_now = 0, None, None, 0
        # While decoding into the cache file: its descriptor, where its rows begin; the meta as last saved.
        self._data_fd, self._data_offset, self._meta_saved = None, 0, ""
        self._lock_fd, self._lock_depth = None, 0
        # "notes": per decoded row, what decoding did beyond resizing (EXIF orientation, bit depth, pages).
        self.meta = {"first": str(sources[0]), "n": len(sources), "modes": [], "bad": {}, "notes": {}}
        self.headers = np.full((len(sources), 3), -1, dtype=np.int32)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self.key = _content_key(sources, multi_page, non_square)
            with self._exclusive():  # reads the meta and headers another process saved, if any
                if not (self._file(".json").is_file() and self._file(".headers.npy").is_file()):
                    _forget_older_caches(self.cache_dir, self.meta["first"], spare=self._file(".lock"))
                    self._save_meta()

    @contextmanager
    def _exclusive(self):
        """This cache's files to this process alone while the block runs, against other processes
        on the same data set (runs at once, JOBS=N: one could otherwise rename a new, empty file over
        the one another decodes into, or save its row states over the other's): a flock on
        `<key>.lock`, which the system drops with its process however it ends. On entry the meta,
        headers and row states are read again, so the block starts from what the others saved.
        Reentrant; a no-op without a cache_dir."""
        if self.cache_dir is None:
            yield
            return
        if self._lock_depth == 0:
            fd = os.open(self._file(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    print(f"waiting for another process using the tile cache {self._file('.lock')} (a run beside this one, "
                          "decoding the same data set)", flush=True)  # fmt: skip
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            if self._lock_depth == 1:
                self._read_saved()
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)  # explicit: decoding's forked workers hold copies of the descriptor
                os.close(self._lock_fd)
                self._lock_fd = None

    def _read_saved(self) -> None:
        """The meta, headers and (for an open size) row states as saved on disk, where they are."""
        meta_file, headers_file = self._file(".json"), self._file(".headers.npy")
        if meta_file.is_file() and headers_file.is_file():
            self.meta, self.headers = json.loads(meta_file.read_text()), np.load(headers_file)
            self._meta_saved = json.dumps(self.meta)
        state_file = self._file(".state.npy", self.size) if self.size else None
        if state_file is not None and state_file.is_file():
            self.state = np.load(state_file)
            for row in self.meta["bad"]:
                self.state[int(row)] = UNREADABLE

    def _file(self, suffix: str, size: int = 0) -> Path:
        return self.cache_dir / f"{self.key}{f'-{size}' if size else ''}{suffix}"

    def _save_meta(self) -> None:
        """The meta (when changed) before the headers: the headers' mode codes index its list of modes.
        Raises DiskFullError."""
        if self.cache_dir is not None:
            text = json.dumps(self.meta)
            if text != self._meta_saved:
                write_whole(self._file(".json"), text.encode(), "cache_dir", tmp=self._file(".json.tmp"))
                self._meta_saved = text
            _overwrite_npy(self._file(".headers.npy"), self.headers)

    def _mode_code(self, mode: str) -> int:
        if mode not in self.meta["modes"]:
            self.meta["modes"].append(mode)
        return self.meta["modes"].index(mode)

    def scan_headers(self, rows: np.ndarray) -> None:
        """Width, height and mode of each of `rows` not looked at yet, from the file headers only."""
        with self._exclusive():
            self._scan_headers(rows)

    def _scan_headers(self, rows: np.ndarray) -> None:
        todo = rows[self.headers[rows, 0] == -1]
        if not len(todo):
            return
        is_h5 = np.array([isinstance(self.sources[row], H5Tile) for row in todo], dtype=bool)
        shapes = {}  # an HDF5 array's tiles share its shape: one look per file
        for row in todo[is_h5]:
            source = self.sources[row]
            if source.file not in shapes:
                shapes[source.file] = source.h5_dataset().shape
            _, height, width, _ = shapes[source.file]
            self.headers[row] = (width, height, self._mode_code("RGB"))
        results = self._run(todo[~is_h5], None, "reading tile headers")
        for row, width, height, mode in results:
            self.headers[row] = (width, height, self._mode_code(mode) if mode else -2)
        self._save_meta()

    def native_size(self, rows: np.ndarray) -> tuple[int | None, str]:
        """The side of the `rows`' tiles when all are square and alike (None otherwise), and their sizes in words."""
        self.scan_headers(rows)
        readable = self.headers[rows][self.headers[rows, 0] > 0]
        if not len(readable):
            return None, "unreadable"
        shapes, counts = np.unique(readable[:, :2], axis=0, return_counts=True)
        words = ", ".join(f"{n} of {w}x{h}" for (w, h), n in sorted(zip(map(tuple, shapes), counts), key=lambda x: -x[1])[:5])
        if len(shapes) == 1 and shapes[0, 0] == shapes[0, 1]:
            return int(shapes[0, 0]), f"{shapes[0, 0]}x{shapes[0, 1]}"
        return None, words + (", ..." if len(shapes) > 5 else "")

    def open_size(self, size: int) -> None:
        """The array and row states for tiles of `size` pixels; a new cache file starts sparse."""
        self.size, n = size, len(self.sources)
        if self.cache_dir is None:
            # np.zeros takes pages from the system as rows are written: untouched rows cost no memory.
            self.array = np.zeros((n, 3, size, size), dtype=np.uint8) if self.keep_tiles else None
            self.state = np.zeros(n, dtype=np.uint8)
        else:
            data_file, state_file = self._file(".npy", size), self._file(".state.npy", size)
            with self._exclusive():  # made once, by one process: the others map that file, never one renamed over it
                if not (data_file.is_file() and state_file.is_file()):
                    write_whole(data_file, lambda f: _write_sparse_npy(f, (n, 3, size, size)), "cache_dir",
                                tmp=data_file.with_name(data_file.name + ".tmp.npy"))  # sparse: no row written yet
                    _save_npy(state_file, np.zeros(n, dtype=np.uint8))
                self.array, self.state = np.load(data_file, mmap_mode="r+"), np.load(state_file)
            self._data_offset = self.array.offset
        for row in self.meta["bad"]:  # unreadable at one size is unreadable at every size
            self.state[int(row)] = UNREADABLE

    def decode(self, rows: np.ndarray, desc: str) -> None:
        """Decode those of `rows` not decoded yet (PIL, in parallel; HDF5 rows in blocks) into the
        cache. Raises ValueError when the disk has too little room before decoding begins, and
        DiskFullError when it fills while decoding: the rows decoded until then are kept. Another
        process decoding into the same cache is waited for, and the rows it decoded are not decoded again."""
        with self._exclusive():
            self._decode(rows, desc)

    def _decode(self, rows: np.ndarray, desc: str) -> None:
        todo = rows[self.state[rows] == NOT_DECODED]
        self.decoded_now = len(todo)
        if not len(todo):
            return
        decoded_before = int((self.state == DECODED).sum())
        full = None
        if self.cache_dir is not None:
            self._check_room(len(todo))
            self._data_fd = os.open(self._file(".npy", self.size), os.O_RDWR)
        try:
            try:
                self._reserve(todo)
                h5_rows = todo[np.array([isinstance(self.sources[row], H5Tile) for row in todo], dtype=bool)]
                if len(h5_rows):
                    self._read_h5(h5_rows)
                file_rows = np.setdiff1d(todo, h5_rows) if len(h5_rows) else todo
                for row, error, mode, shape, notes in self._run(file_rows, self.size, desc):
                    if error:
                        self.state[row] = UNREADABLE
                        self.meta["bad"][str(row)] = error
                    else:
                        self.state[row] = DECODED
                        width, height = map(int, shape.split("x"))
                        self.headers[row] = (width, height, self._mode_code(mode))
                        if notes:
                            self.meta.setdefault("notes", {})[str(row)] = notes
            except OSError as error:
                if not is_disk_full(error):
                    raise
                full = error
            if self._data_fd is not None:
                os.fsync(self._data_fd)  # the pixels on disk before the states say so
        except OSError as error:
            if not is_disk_full(error):
                raise
            full = error  # the pixels may not have reached the disk: none of this call's rows counts as decoded
            self.state[todo[self.state[todo] == DECODED]] = NOT_DECODED
        finally:
            if self._data_fd is not None:
                os.close(self._data_fd)
                self._data_fd = None
        self._save_meta()
        if self.cache_dir is not None:  # the states last: a row counts as decoded once its pixels are on disk
            _overwrite_npy(self._file(".state.npy", self.size), self.state)
        if full is not None:
            self._disk_filled(todo, decoded_before)

    def _check_room(self, n_rows: int) -> None:
        """Before minutes of decoding: room for `n_rows` rows and FREE_MARGIN. Raises ValueError."""
        need, free = n_rows * self.row_bytes, shutil.disk_usage(self.cache_dir).free
        if need + FREE_MARGIN > free:
            raise ValueError(f"decoding {n_rows} tiles of {self.size}x{self.size} needs {amount(need)} in {self.cache_dir}, plus a margin "
                             f"of {amount(FREE_MARGIN)} kept free for the system and the runs' checkpoints, and it has {amount(free)} "
                             "free: free space on that disk, or set cache_dir to a larger one (CACHE_DIR=/a/larger/disk with make, "
                             f"cache_dir=... in a notebook){_MEND_SIZE}")  # fmt: skip

    def _reserve(self, rows: np.ndarray) -> None:
        """Claim the disk blocks of `rows` in the sparse cache file before any is written: a full disk
        (another program may fill it while decoding runs) then fails here, as an OSError, and the
        rows' writes cannot run out of room. A filesystem that cannot reserve is left to the
        writes, which report a full disk as an OSError too (pwrite, never a write through the mapping)."""
        if self._data_fd is None:
            return
        rows = np.sort(rows)
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)  # runs of neighbouring rows: one call each
        for first, stop in zip(starts, [*starts[1:], len(rows)]):
            try:
                os.posix_fallocate(self._data_fd, self._data_offset + int(rows[first]) * self.row_bytes, int(stop - first) * self.row_bytes)
            except OSError as error:
                if error.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    return
                raise

    def _disk_filled(self, todo: np.ndarray, decoded_before: int) -> None:
        """Raises the one message for a disk that filled while decoding `todo`."""
        now = int(np.isin(self.state[todo], (DECODED, UNREADABLE)).sum())
        self.decoded_now = now
        kept = f"{now} of the {len(todo)} tiles were decoded before it filled; " + (
            f"they and the {decoded_before} decoded earlier are kept in the cache, and a later run decodes only the rest." if now
            else "a later run decodes them.")  # fmt: skip
        raise disk_full_error(self._file(".npy", self.size), "cache_dir", (len(todo) - now) * self.row_bytes, kept, _MEND_SIZE) from None

    def _put_rows(self, rows: np.ndarray, tiles: np.ndarray) -> None:
        """(n, 3, size, size) `tiles` into `rows`: into the cache file with pwrite, which reports a
        full disk as an OSError, where a write through the mapping into a sparse file would die of
        SIGBUS; into the array in memory without a cache_dir."""
        if self._data_fd is None:
            if self.array is not None:
                self.array[rows] = tiles
            return
        for row, tile in zip(np.atleast_1d(rows).tolist(), tiles):
            _pwrite_all(self._data_fd, np.ascontiguousarray(tile), self._data_offset + row * self.row_bytes)

    def _run(self, rows: np.ndarray, size: int | None, desc: str) -> Iterator[tuple]:
        """Decode (size given) or read the headers of (size None) `rows`: per-row results as they come.
        An error (a full disk) or an interruption stops the tiles not started yet."""
        if not len(rows):
            return
        to_files = all(isinstance(self.sources[row], Path) for row in rows[:64])  # zip members and HDF5 rows stay in this process
        bar = progress(total=len(rows), desc=desc, unit="tile", leave=False)
        try:
            if to_files and len(rows) >= PROCESS_DECODE_MIN and (os.cpu_count() or 1) > 1:
                data_file = str(self._file(".npy", self.size)) if size and self.cache_dir is not None else None
                if size and self.array is not None and data_file is None:  # in memory: processes cannot write into it
                    yield from self._run_threads(rows, size, bar)
                else:
                    yield from self._run_processes(rows, size, data_file, bar)
            elif size:
                yield from self._run_threads(rows, size, bar)
            else:
                for row in rows:
                    yield _header(int(row), self.sources[row])
                    bar.update()
        finally:
            bar.close()

    def _run_processes(self, rows: np.ndarray, size: int | None, data_file: str | None, bar) -> Iterator[tuple]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        chunks = [[(int(row), str(self.sources[row])) for row in rows[i : i + _CHUNK]] for i in range(0, len(rows), _CHUNK)]
        # fork, as DataLoader's workers: the workers start at once and only run PIL and numpy.
        with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("fork"),
                                 initializer=_start_worker, initargs=(data_file, os.getpid())) as pool:  # fmt: skip
            futures = [pool.submit(_decode_chunk, chunk, size, self.multi_page, self.non_square) if size else pool.submit(_header_chunk, chunk)
                       for chunk in chunks]  # fmt: skip
            try:
                for future in as_completed(futures):
                    done = future.result()
                    yield from done
                    bar.update(len(done))
            finally:
                for future in futures:
                    future.cancel()

    def _run_threads(self, rows: np.ndarray, size: int, bar) -> Iterator[tuple]:
        def work(row: int):
            try:
                tile, mode, shape, notes = decode_tile(self.sources[row], size, self.multi_page, self.non_square)
            except Exception as error:  # PIL raises several types; every one means "not a usable image"
                return row, f"{type(error).__name__}: {error}", "", "", {}
            self._put_rows(np.array([row]), tile.transpose(2, 0, 1)[None])
            return row, "", mode, shape, notes

        # PIL releases the GIL while decoding JPEG, so threads use every core without copying tiles between processes.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            futures = [pool.submit(work, row) for row in rows.tolist()]
            try:
                for future in futures:
                    yield future.result()
                    bar.update()
            finally:
                for future in futures:
                    future.cancel()

    def _read_h5(self, rows: np.ndarray) -> None:
        """HDF5 rows need no decoding: read in blocks of neighbouring rows, moved to channels-first."""
        by_dataset: dict[tuple, list[int]] = {}
        for row in rows:
            source = self.sources[row]
            by_dataset.setdefault((source.file, source.dataset), []).append(int(row))
        bar = progress(total=len(rows), desc="reading HDF5 tiles", unit="tile", leave=False)
        for rows_here in by_dataset.values():
            rows_here = np.array(sorted(rows_here, key=lambda r: self.sources[r].row))
            h5_rows = np.array([self.sources[r].row for r in rows_here])
            dataset = self.sources[rows_here[0]].h5_dataset()
            for start in range(0, len(rows_here), 1024):
                cache_rows, wanted = rows_here[start : start + 1024], h5_rows[start : start + 1024]
                first, last = int(wanted[0]), int(wanted[-1]) + 1
                # A block read is one contiguous copy; scattered rows (a small subset) are picked one by one.
                block = dataset[first:last][wanted - first] if last - first <= 4 * len(wanted) else dataset[wanted]
                height, width = block.shape[1:3]
                if (height, width) != (self.size, self.size):
                    block = np.stack([np.asarray(square_tile(Image.fromarray(tile), self.size, self.non_square)) for tile in block])
                self._put_rows(cache_rows, block.transpose(0, 3, 1, 2))
                self.state[cache_rows] = DECODED
                self.headers[cache_rows] = (width, height, self._mode_code("RGB"))
                bar.update(len(cache_rows))
        bar.close()

    @property
    def row_bytes(self) -> int:
        return 3 * self.size * self.size

    def tiles(self) -> torch.Tensor:
        """(N, 3, size, size) uint8 over the cache file's pages, not a copy: only the rows a run
        touches come into memory, and the system can drop them again. A private mapping, so that
        nothing written to the tensor reaches the cache."""
        if self.cache_dir is None:
            return torch.from_numpy(self.array)
        self.array.flush()
        return torch.from_numpy(np.load(self._file(".npy", self.size), mmap_mode="c"))

    def record(self, rows: np.ndarray) -> DecodeRecord:
        """What decoding did to `rows`: sizes resized, modes converted, files unreadable, where the cache is."""
        ok = rows[self.state[rows] == DECODED]
        width, height, mode = self.headers[ok].T
        other_size = (width != self.size) | (height != self.size)
        resized = Counter(f"{w}x{h}" for w, h in zip(width[other_size].tolist(), height[other_size].tolist()))
        converted = Counter(self.meta["modes"][m] for m in mode.tolist() if m >= 0 and self.meta["modes"][m] != "RGB")
        bad = [[str(self.sources[row]), self.meta["bad"].get(str(row), "unreadable")] for row in rows[self.state[rows] == UNREADABLE]]
        counted = {"oriented": Counter(), "rescaled": Counter(), "pages": Counter()}
        row_notes = self.meta.get("notes", {})
        for row in ok.tolist():
            for name, key in row_notes.get(str(row), {}).items():
                counted[name][key] += 1
        return DecodeRecord(resized=dict(resized), converted=dict(converted), oriented=dict(counted["oriented"]),
                            rescaled=dict(counted["rescaled"]), pages=dict(counted["pages"]), non_square=self.non_square, bad=bad,
                            cache=self.describe(len(rows)))  # fmt: skip

    def stain_normalized(self, rows: np.ndarray, target: StainTarget, device: torch.device | str | None = None,
                         desc: str = "normalising stain") -> tuple[torch.Tensor, int, int]:  # fmt: skip
        """(N, 3, size, size) uint8 whose `rows` (decoded already: decode) hold their tiles normalised to
        `target` (lib/data/stain.py, on `device`, the CPU by default), how many of `rows` were kept as
        they were (stain undefined: too little tissue), and how many were normalised by this call (the
        rest read from the cache). The one way to normalised tiles, for training
        and the evaluation alike. Normalised once per row into a cache file of their own, keyed by the
        target's method and digest beside the tile size, so raw and normalised tiles (or tiles
        normalised to two targets) never mix; a later call reads them. Raises ValueError before
        writing when the disk has too little room, DiskFullError when it fills."""
        with self._exclusive():  # one process normalises a row; the others read it
            return self._stain_normalized(rows, target, device, desc)

    def _stain_normalized(self, rows: np.ndarray, target: StainTarget, device, desc: str) -> tuple[torch.Tensor, int, int]:
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[self.state[rows] == DECODED]
        raw = self.tiles()
        variant = f"-{target.method}-{target.digest()}"
        if self.cache_dir is None:
            array = np.zeros_like(self.array)
            state = np.zeros(len(self.sources), dtype=np.uint8)
        else:
            data_file, state_file = self._file(f"{variant}.npy", self.size), self._file(f"{variant}.state.npy", self.size)
            if not (data_file.is_file() and state_file.is_file()):
                write_whole(data_file, lambda f: _write_sparse_npy(f, tuple(raw.shape)), "cache_dir", tmp=data_file.with_name(data_file.name + ".tmp.npy"))
                _save_npy(state_file, np.zeros(len(self.sources), dtype=np.uint8))
            array, state = np.load(data_file, mmap_mode="r"), np.load(state_file)
        todo = rows[state[rows] == STAIN_NOT_DONE]
        if len(todo):
            self._normalize_rows(todo, raw, target, device, desc, array, state, variant)
        kept = int((state[rows] == STAIN_KEPT).sum())
        if self.cache_dir is None:
            return torch.from_numpy(array), kept, len(todo)
        return torch.from_numpy(np.load(self._file(f"{variant}.npy", self.size), mmap_mode="c")), kept, len(todo)

    def _normalize_rows(self, todo: np.ndarray, raw: torch.Tensor, target: StainTarget, device, desc: str, array: np.ndarray,
                        state: np.ndarray, variant: str) -> None:  # fmt: skip
        """Normalise `todo` rows of `raw` into `array` (in memory) or its cache file, and mark them in `state`."""
        device = torch.device(device or "cpu")
        fd = None
        if self.cache_dir is not None:
            self._check_room(len(todo))
            data_file = self._file(f"{variant}.npy", self.size)
            fd, offset = os.open(data_file, os.O_RDWR), array.offset
        bar = progress(total=len(todo), desc=desc, unit="tile", leave=False)
        try:
            for start in range(0, len(todo), 256):
                block = todo[start : start + 256]
                tiles, normalized = normalize_stain(raw[torch.from_numpy(block)].to(device), target)
                tiles, normalized = tiles.cpu().numpy(), normalized.cpu().numpy()
                if fd is None:
                    array[block] = tiles
                else:
                    for row, tile in zip(block.tolist(), tiles):
                        _pwrite_all(fd, tile, offset + row * self.row_bytes)
                state[block] = np.where(normalized, STAIN_DONE, STAIN_KEPT)
                bar.update(len(block))
            if fd is not None:
                os.fsync(fd)  # the pixels on disk before the states say so
        except OSError as error:
            if is_disk_full(error):
                raise disk_full_error(self._file(f"{variant}.npy", self.size), "cache_dir", len(todo) * self.row_bytes,
                                      "No normalised tile of this call is counted; a later run normalises them again.", _MEND_SIZE) from None  # fmt: skip
            raise
        finally:
            bar.close()
            if fd is not None:
                os.close(fd)
        if self.cache_dir is not None:
            _overwrite_npy(self._file(f"{variant}.state.npy", self.size), state)

    def describe(self, n_rows: int) -> str:
        if self.cache_dir is None:
            return ""
        data_file = self._file(".npy", self.size)
        on_disk = os.stat(data_file).st_blocks * 512  # the sparse file's real size
        done = (f"wrote {data_file}: {self.decoded_now} of the run's {n_rows} tiles decoded into it now" if self.decoded_now
                else f"read {data_file}: all {n_rows} of the run's tiles decoded before")
        return (f"{done}; {on_disk / 2**30:.2f} GiB on disk ({int((self.state == DECODED).sum())} of {len(self.state)} tiles of "
                f"{self.size}x{self.size}); cache_dir moves it")  # fmt: skip


def _forget_older_caches(cache_dir: Path, first: str, spare: Path | None = None) -> None:
    """A data set that changed leaves its old cache behind: drop every cache of the same set (by its
    first file), all but `spare` (the lock file its caller holds: another process must find the same one)."""
    for meta_file in cache_dir.glob("*.json"):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("first") == first:
            key = meta_file.stem
            for old in cache_dir.glob(f"{key}*"):
                if old != spare:
                    old.unlink(missing_ok=True)


def decode_tiles(sources: list[TileSource], size: int = TILE_SIZE, desc: str = "decoding tiles",
                 skip_bad_images: bool = False, cache_dir: str | Path | None = TILE_CACHE_DIR,
                 multi_page: str = "refuse", non_square: str = "crop", stain: StainTarget | None = None,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, np.ndarray, DecodeRecord]:  # fmt: skip
    """Every source decoded to one (N_ok, 3, size, size) uint8 tensor, the (N,) bool mask of the
    sources kept, and what decoding did. Bad files are all found first and listed in one
    BadImagesError, unless `skip_bad_images`, which leaves them out and records how many. With
    `cache_dir`, the tensor lies over the memory-mapped cache (no copy, unless files were skipped:
    then the kept rows are gathered), reused while no file changes. With `stain` (a run's
    StainTarget), the tiles normalised to it (TileCache.stain_normalized, on `device`), cached apart."""  # fmt: skip
    cache = TileCache(sources, cache_dir, multi_page=multi_page, non_square=non_square)
    rows = np.arange(len(sources))
    cache.open_size(size)
    cache.decode(rows, desc)
    record = cache.record(rows)
    _raise_unless_skipped(record, skip_bad_images)
    ok = cache.state == DECODED
    tiles = cache.tiles() if stain is None else cache.stain_normalized(rows, stain, device, f"{desc}: normalising stain")[0]
    return (tiles if ok.all() else tiles[torch.from_numpy(np.flatnonzero(ok))]), ok, record




def _raise_unless_skipped(record: DecodeRecord, skip_bad_images: bool) -> None:
    if record.bad and not skip_bad_images:
        listed = "\n".join(f"  {path}: {why}" for path, why in record.bad)
        raise BadImagesError(f"{len(record.bad)} file(s) could not be read as images (nothing has been trained yet):\n{listed}\n"
                             "Replace or remove them, or set skip_bad_images=True to leave them out (the run records how many).")  # fmt: skip
    record.skipped = len(record.bad)
