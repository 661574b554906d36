"""Write Hugging Face model folders: streaming sharded safetensors, atomic folders, side files.

* :class:`ShardedWriter` writes tensors straight from storage arrays into safetensors shards whose
  headers were planned up front, so no model is ever buffered whole; shards and
  ``model.safetensors.index.json`` are named and laid out like ``save_pretrained``'s.
* :func:`atomic_output_dir` builds a folder beside its target and renames it into place at the end:
  a reader (or a crash) sees the old folder, no folder, or the complete new one.
* :func:`copy_model_files` carries config, generation config, tokenizer and chat template over.

Example:
    >>> plan = [(n, *src.info(n)) for n in src.names()]  # doctest: +SKIP
    >>> with atomic_output_dir("out") as tmp, ShardedWriter(tmp, plan) as w:  # doctest: +SKIP
    ...     for n in src.names():
    ...         w.write(n, src.array(n))
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fnmatch
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ._tmp import reap_and_tag, reap_stale, tagged
from .errors import ModelError, OutputExistsError
from .format.dtypes import storage_dtype
from .format.safetensors_io import build_header, join_ranges

INDEX_NAME = "model.safetensors.index.json"
#: Files that hold weights (never copied by :func:`copy_model_files`).
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt",
                   "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.gguf", "*.onnx")

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes in a size like ``5_000_000``, ``"5GB"`` (10**9) or ``"2GiB"`` (2**30), as transformers reads them.

    Raises:
        ModelError: not a positive size.
    """
    if isinstance(size, int) and not isinstance(size, bool):
        n = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
        if not m or m.group(2).upper() not in _UNITS:
            raise ModelError(f"max shard size {size!r} is not a size like 5GB, 500MB or 2GiB")
        n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ModelError(f"max shard size must be positive, got {size!r}")
    return n


def plan_shards(entries: list[tuple[str, str, tuple[int, ...]]], max_shard_size: int) -> list[list[int]]:
    """Split tensors, in order, into shards of at most ``max_shard_size`` data bytes.

    Like ``save_pretrained``: a tensor that would overflow the current shard starts a new one, and
    a tensor larger than the limit gets a shard of its own.

    Returns:
        Lists of entry indices, one list per shard.
    """
    if not entries:
        return [[]]
    shards: list[list[int]] = []
    size = 0
    for i, (_, dtype, shape) in enumerate(entries):
        nbytes = int(np.prod(shape, dtype=np.int64)) * storage_dtype(dtype).itemsize
        if not shards or (size + nbytes > max_shard_size and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    return shards


class ShardedWriter:
    """Stream tensors into safetensors shards planned up front.

    Every tensor's place in its shard is known from the plan, so tensors can be written in any
    order and from several threads (:meth:`write_at`, :meth:`target`), or appended in plan order
    (:meth:`write`); a tensor may arrive in pieces, so even one huge tensor never has to be whole
    in memory. Writes are positional (``pwrite``) into files opened with their header.

    Args:
        out_dir: existing folder to write into.
        plan: ``(name, dtype name, shape)`` of every tensor, in file order.
        max_shard_size: bytes per shard (int, or ``"5GB"``-style string).
        metadata: extra ``__metadata__`` strings for every shard (``{"format": "pt"}`` is always
            set, as transformers expects it).
        weights_name: file name when there is one shard; shards are named
            ``model-00001-of-00003.safetensors`` from its stem.
        progress: optional ``progress("write", bytes_done, bytes_total)`` after each tensor.
        flush_behind: start the disk write-back of what is written every 64 MiB, on a
            background thread (Linux ``sync_file_range``), so that a final fsync finds little
            left to do; the fsync itself is the caller's (see :func:`atomic_output_dir`).
        io_lock: held during each write (a context manager; default a :class:`threading.Lock`).
            Threads writing at once then take turns asleep rather than spinning on the file's
            lock in the kernel; share it with anything else that writes through :meth:`target`.

    Raises:
        ModelError: an empty or duplicate-name plan, or a bad ``max_shard_size``.
    """

    def __init__(self, out_dir: str | os.PathLike, plan: Iterable[tuple[str, str, tuple[int, ...]]], *,
                 max_shard_size: int | str = 5_000_000_000, metadata: Mapping[str, str] | None = None,
                 weights_name: str = "model.safetensors",
                 progress: Callable[[str, int, int], None] | None = None, flush_behind: bool = False,
                 io_lock: contextlib.AbstractContextManager | None = None):
        self.out_dir = Path(out_dir)
        self._entries = [(str(n), str(d), tuple(int(x) for x in s)) for n, d, s in plan]
        names = [e[0] for e in self._entries]
        self._index = {n: i for i, n in enumerate(names)}
        if len(self._index) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ModelError(f"write plan names tensors more than once: {dup[:5]}")
        self._nbytes = [int(np.prod(s, dtype=np.int64)) * storage_dtype(d).itemsize for _, d, s in self._entries]
        groups = plan_shards(self._entries, parse_size(max_shard_size))
        stem = weights_name.removesuffix(".safetensors")
        n = len(groups)
        self.shard_names = [weights_name] if n == 1 else [f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        meta = {"format": "pt", **dict(metadata or {})}
        self._shard_of = [0] * len(self._entries)
        self._offset = [0] * len(self._entries)  # file offset of each tensor's first byte
        self._headers = []
        self._left = []  # bytes of each shard not yet written
        for s, idx in enumerate(groups):
            header, _ = build_header([(*self._entries[i], self._nbytes[i]) for i in idx], meta)
            pos = len(header)
            for i in idx:
                self._shard_of[i], self._offset[i] = s, pos
                pos += self._nbytes[i]
            self._headers.append(header)
            self._left.append(pos - len(header))
        self.total_size = sum(self._nbytes)
        self._progress = progress
        self._lock = threading.Lock()
        self._io_lock = io_lock if io_lock is not None else threading.Lock()
        self._next = 0  # write(): index of the tensor being appended
        self._done_bytes = 0  # write(): bytes of that tensor written so far
        self._got = [0] * len(self._entries)  # bytes written of each tensor
        self._written = 0
        self._fds: dict[int, int] = {}
        self._opened: set[int] = set()
        self._closed = False
        self._unflushed: dict[int, list[tuple[int, int]]] = {}  # shard -> written ranges not yet flushed
        self._flusher = _Flusher() if flush_behind else None

    @property
    def io_lock(self) -> contextlib.AbstractContextManager:
        """The lock held during each write (see ``io_lock``)."""
        return self._io_lock

    @property
    def flushes_behind(self) -> bool:
        """Whether write-back is started as tensors are finished (``flush_behind``)."""
        return self._flusher is not None

    @property
    def files(self) -> list[Path]:
        """Paths of the shard files (all of them once closed)."""
        return [self.out_dir / s for s in self.shard_names]

    def write(self, name: str, data: np.ndarray) -> None:
        """Append (a consecutive piece of) the next planned tensor.

        Args:
            name: must be the next tensor of the plan (or the one being written in pieces).
            data: storage array of the planned dtype; either the whole tensor (its shape must
                match) or a C-order piece of it.

        Raises:
            ModelError: out-of-order name, wrong dtype or shape, or more bytes than planned.
        """
        if self._closed or self._next >= len(self._entries):
            raise ModelError(f"cannot write {name!r}: every planned tensor has been written")
        pname = self._entries[self._next][0]
        if name != pname:
            raise ModelError(f"tensors must be written in plan order: expected {pname!r}, got {name!r}")
        self.write_at(name, data, self._done_bytes)
        self._done_bytes += data.nbytes
        if self._done_bytes == self._nbytes[self._next]:
            self._next += 1
            self._done_bytes = 0

    def write_at(self, name: str, data: np.ndarray, start: int = 0) -> None:
        """Write (a C-order piece of) tensor ``name`` at byte ``start`` of its data; thread-safe.

        Raises:
            ModelError: a tensor not in the plan, wrong dtype or shape, or bytes past its end.
        """
        i = self._check(name)
        _, dtype, shape = self._entries[i]
        if data.dtype != storage_dtype(dtype):
            raise ModelError(f"tensor {name!r}: planned as {dtype} (numpy {storage_dtype(dtype)}), got numpy {data.dtype}")
        want = self._nbytes[i]
        if start == 0 and data.nbytes == want and tuple(data.shape) != shape:
            raise ModelError(f"tensor {name!r}: planned shape {list(shape)}, got {list(data.shape)}")
        if start < 0 or start + data.nbytes > want:
            raise ModelError(f"tensor {name!r}: bytes {start}..{start + data.nbytes} written, plan says {want}")
        fd = self._fd(self._shard_of[i])
        _pwrite_all(fd, memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8)), self._offset[i] + start,
                    self._io_lock)
        self._account(i, start, data.nbytes)

    def target(self, name: str) -> tuple[int, int]:
        """``(file descriptor, file offset)`` of tensor ``name``'s data, for code that writes it
        itself (``pwrite``; e.g. a compiled kernel); call :meth:`finish` once it has. Thread-safe.

        Raises:
            ModelError: a tensor not in the plan.
        """
        i = self._check(name)
        return self._fd(self._shard_of[i]), self._offset[i]

    def finish(self, name: str) -> None:
        """Record that every byte of tensor ``name`` was written through :meth:`target`."""
        i = self._check(name)
        self._account(i, 0, self._nbytes[i] - self._got[i], whole=True)

    def _check(self, name: str) -> int:
        if self._closed:
            raise ModelError(f"cannot write {name!r}: the writer is closed")
        i = self._index.get(name)
        if i is None:
            raise ModelError(f"tensor {name!r} is not in the write plan")
        return i

    def _fd(self, shard: int) -> int:
        with self._lock:
            fd = self._fds.get(shard)
            if fd is None:
                path = self.out_dir / self.shard_names[shard]
                if shard in self._opened:  # complete and closed already (a zero-byte tensor comes late)
                    fd = os.open(path, os.O_WRONLY)
                else:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    _pwrite_all(fd, memoryview(self._headers[shard]), 0)
                    self._opened.add(shard)
                    if self._flusher is not None:
                        self._unflushed.setdefault(shard, []).append((0, len(self._headers[shard])))
                self._fds[shard] = fd
            return fd

    def _account(self, i: int, start: int, nbytes: int, whole: bool = False) -> None:
        """Count bytes written of tensor ``i``; flush-behind and close a shard once complete."""
        s = self._shard_of[i]
        with self._lock:
            self._got[i] += nbytes
            self._written += nbytes
            self._left[s] -= nbytes
            complete = self._got[i] == self._nbytes[i]
            if self._flusher is not None and nbytes:
                ranges = self._unflushed.setdefault(s, [])
                ranges.append((self._offset[i] + (0 if whole else start), nbytes))
                if self._left[s] == 0 or sum(n for _, n in ranges) >= _FLUSH_STEP:
                    for a, b in join_ranges((off, off + n) for off, n in ranges):
                        self._flusher.submit(self._fds[s], a, b - a)
                    ranges.clear()
            if self._left[s] == 0 and s in self._fds:
                os.close(self._fds.pop(s))
            written = self._written
        if complete and self._progress is not None:
            self._progress("write", written, self.total_size)

    def close(self) -> None:
        """Finish: check every planned tensor was written, write the index when sharded.

        Raises:
            ModelError: tensors of the plan were never written (names the first one).
        """
        if self._closed:
            return
        self._closed = True
        self._close_fds()
        missing = [i for i, (g, n) in enumerate(zip(self._got, self._nbytes)) if g != n]
        if missing:
            raise ModelError(f"{self.out_dir}: {len(missing)} planned tensor(s) never written or incomplete, "
                             f"starting with {self._entries[missing[0]][0]!r}")
        for s in range(len(self.shard_names)):  # shards of zero-byte tensors only / empty plans
            if s not in self._opened:
                fd = os.open(self.out_dir / self.shard_names[s], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    _pwrite_all(fd, memoryview(self._headers[s]), 0)
                finally:
                    os.close(fd)
        if len(self.shard_names) > 1:
            index = {"metadata": {"total_size": self.total_size},
                     "weight_map": {n: self.shard_names[self._shard_of[i]] for i, (n, _, _) in enumerate(self._entries)}}
            (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    def _close_fds(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
        if self._flusher is not None:
            self._flusher.close()

    def abort(self) -> None:
        """Stop without finishing (files written so far stay; remove the folder to discard them)."""
        self._closed = True
        self._close_fds()

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


#: Bytes between two early write-back requests of :class:`ShardedWriter` (``flush_behind``).
_FLUSH_STEP = 64 << 20
_SYNC_FILE_RANGE_WRITE = 2


class _Flusher:
    """Starts the kernel's write-back of file ranges on one background thread (best effort).

    Each request holds its own duplicate of the file descriptor, so the writer may close its
    own at any time. Where ``sync_file_range`` is missing (not Linux) nothing is done.
    """

    def __init__(self):
        self._fn = _sync_file_range()
        self._pool = ThreadPoolExecutor(1) if self._fn is not None else None

    def submit(self, fd: int, offset: int, length: int) -> None:
        if self._pool is None:
            return
        dup = os.dup(fd)
        self._pool.submit(self._run, dup, offset, length)

    def _run(self, fd: int, offset: int, length: int) -> None:
        try:
            self._fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # errors only lose the head start
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _libc_function(name: str):
    """A libc function through ctypes, or None where there is no such function (not Linux)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True), name)
    except (OSError, AttributeError):
        return None


def _sync_file_range():
    fn = _libc_function("sync_file_range")
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


#: Bytes per ``pwrite`` call: a large write holds the file's lock for its whole copy, which
#: would stall the other threads writing the same file.
_WRITE_STEP = 1 << 20


def _pwrite_all(fd: int, buf: memoryview, offset: int, lock: contextlib.AbstractContextManager | None = None) -> None:
    # Straight from the caller's memory, in steps; os.pwrite may write less than asked.
    pos = 0
    while pos < len(buf):
        with lock if lock is not None else contextlib.nullcontext():
            pos += os.pwrite(fd, buf[pos : pos + _WRITE_STEP], offset + pos)


# --- atomic folders ---------------------------------------------------------------------------

_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    fn = _libc_function("renameat2")
    if fn is None:
        return False
    at_fdcwd = -100
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fresh_dir(parent: Path, prefix: str) -> Path:
    # Not tempfile.mkdtemp: its 0700 mode would become the output folder's; os.mkdir honours umask.
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise OutputExistsError(f"{parent}: cannot create a temporary folder {prefix}*")


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, *, overwrite: bool = False, fsync: bool = True) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``out_dir`` and move it into place at the end.

    On success the temporary folder is fsynced and renamed to ``out_dir``; an existing
    ``out_dir`` (with ``overwrite``) is swapped out atomically where the OS allows (Linux), else
    moved aside first, and then deleted. On any exception the temporary folder is removed and
    ``out_dir`` is untouched. A killed process may leave a ``.NAME.tmp-<pid>-*`` folder beside it,
    never a partial ``out_dir``; the next run removes such folders once their process is gone.

    Args:
        out_dir: the folder to create.
        overwrite: replace an existing ``out_dir``.
        fsync: flush files to disk before the rename (off only for throwaway outputs).

    Yields:
        The temporary folder to write into.

    Raises:
        OutputExistsError: ``out_dir`` exists (checked before and after the work) and
            ``overwrite`` is false.
    """
    out = Path(out_dir).absolute()
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{out} already exists; choose another output or allow overwriting (--force)")
    out.parent.mkdir(parents=True, exist_ok=True)
    reap_stale(out.parent, f".{out.name}.old-")
    tmp = _fresh_dir(out.parent, reap_and_tag(out.parent, f".{out.name}.tmp-"))
    try:
        yield tmp
        if fsync:
            _fsync_tree(tmp)
        if out.exists() or out.is_symlink():
            if not overwrite:
                raise OutputExistsError(f"{out} appeared while the output was being written; nothing was replaced")
            if _exchange(tmp, out):
                shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
            else:
                old = _fresh_dir(out.parent, tagged(f".{out.name}.old-"))
                os.rmdir(old)
                os.rename(out, old)
                os.rename(tmp, out)
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink()
        else:
            os.rename(tmp, out)
        if fsync:
            _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_model_files(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, *,
                     exclude: Iterable[str] = ()) -> list[str]:
    """Copy everything of a model folder but its weights: config, generation config, tokenizer, chat template...

    Top-level regular files only; hidden files, sub-folders and weight files
    (:data:`WEIGHT_PATTERNS`) are skipped.

    Args:
        src_dir: the model folder to copy from.
        dst_dir: existing destination folder.
        exclude: more glob patterns of file names to skip (e.g. ``"README.md"``).

    Returns:
        The copied file names, sorted.
    """
    skip = tuple(WEIGHT_PATTERNS) + tuple(exclude)
    copied = []
    for f in sorted(Path(src_dir).iterdir()):
        if f.name.startswith(".") or not f.is_file() or any(fnmatch.fnmatch(f.name, p) for p in skip):
            continue
        shutil.copyfile(f, Path(dst_dir) / f.name)
        copied.append(f.name)
    return copied
