"""Writing files so that a reader never sees a partial one: temporary name, fsync, rename.

A write refused because the disk is full or the quota used up becomes a one-line ResourceError (exit
code 3, never retried) naming the file being written and the free space left (:func:`guarded_write`).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import shutil
import sys
from pathlib import Path

from lensing_ssc.core.errors import ResourceError, is_disk_full

INPROGRESS_SUFFIX = ".inprogress"
# astropy and numpy report a short write as an OSError without errno: it counts as a full disk when the
# file system has less than this left when the error is raised [bytes].
NEARLY_FULL_BYTES = 2**20


def inprogress_path(final_path) -> Path:
    """``name.fits`` -> ``name.fits.inprogress`` (DESIGN.md §6)."""
    final_path = Path(final_path)
    return final_path.with_name(final_path.name + INPROGRESS_SUFFIX)


def fsync_path(path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


# Linux sync_file_range(2) flag: start writing the dirty pages out, do not wait for them.
_SYNC_FILE_RANGE_WRITE = 2


@functools.lru_cache(maxsize=1)
def _sync_file_range():
    """libc's sync_file_range, or None where there is none (not Linux). Python's os module lacks it,
    hence ctypes."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return function


def start_writeback(path) -> None:
    """Ask the kernel to start writing ``path``'s dirty pages to disk now, without waiting (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; a no-op elsewhere or on failure). A writer that streams
    a large file calls it as it goes, so that the closing fsync of :func:`commit` finds most pages
    already written while the writer was computing the next ones, instead of blocking on all of them."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            start_writeback_fd(fd)
        finally:
            os.close(fd)


def start_writeback_fd(fd: int, offset: int = 0, nbytes: int = 0) -> None:
    """:func:`start_writeback` of the bytes ``[offset, offset + nbytes)`` of the open file ``fd`` (``nbytes``
    0: to the end of the file)."""
    function = _sync_file_range()
    if function is not None:
        function(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # its errors are ignored, as a hint's should be


def commit(temporary, final) -> None:
    """fsync ``temporary``, rename it onto ``final`` and fsync the directory."""
    fsync_path(temporary)
    os.replace(temporary, final)
    with contextlib.suppress(OSError):
        dir_fd = os.open(Path(final).parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def free_bytes(directory) -> int:
    """Bytes free for this user on the file system of ``directory`` (or of its nearest existing parent)."""
    probe = Path(directory)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def disk_full_error(path, exc: OSError) -> ResourceError:
    """The one-line error for ``exc``, a write of ``path`` refused by a full disk or an exhausted quota."""
    path = Path(path)
    reason = "disk quota exceeded" if exc.errno == errno.EDQUOT else "no space left on device"
    return ResourceError(f"{path}: {reason} while writing (free space on {path.parent}: "
                         f"{free_bytes(path.parent) / 2**20:.1f} MiB)")


@contextlib.contextmanager
def guarded_write(final_path, temporary):
    """Around the writing of ``temporary`` (to be renamed ``final_path``): an OSError of a full disk or
    quota (errno ENOSPC/EDQUOT, or no errno with under NEARLY_FULL_BYTES free) is re-raised as
    :func:`disk_full_error` naming ``final_path``; on any error ``temporary`` is removed (None: a file
    written in parts by several processes, which is kept)."""
    final_path = Path(final_path)
    try:
        try:
            yield
        except OSError as exc:  # the free space is measured before the partial file is removed
            if is_disk_full(exc) or (exc.errno is None and free_bytes(final_path.parent) < NEARLY_FULL_BYTES):
                raise disk_full_error(final_path, exc) from exc
            raise
    except BaseException:
        if temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                Path(temporary).unlink()
        raise


@contextlib.contextmanager
def atomic_output(final_path):
    """Yield a temporary path next to ``final_path``; rename it there only if the block succeeds
    (a full disk: ResourceError naming ``final_path``, see :func:`guarded_write`)."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = inprogress_path(final_path)
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    with guarded_write(final_path, temporary):
        yield temporary
        commit(temporary, final_path)


def write_json_atomic(path, payload) -> None:
    """Write ``payload`` as JSON with write-to-temporary + fsync + rename."""
    with atomic_output(path) as temporary:
        with open(temporary, "w") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True)


def ensure_free_disk(directory, needed_bytes: int, what: str) -> None:
    """Raise ResourceError naming ``what`` when ``directory`` has less than ``needed_bytes`` free."""
    free = free_bytes(directory)
    if free < needed_bytes:
        raise ResourceError(f"{directory}: writing {what} needs about {needed_bytes / 2**20:.1f} MiB but only "
                            f"{free / 2**20:.1f} MiB are free")
