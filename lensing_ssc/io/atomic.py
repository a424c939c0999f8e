"""Writing files so that a reader never sees a partial one: temporary name, fsync, rename."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from lensing_ssc.core.errors import ResourceError

INPROGRESS_SUFFIX = ".inprogress"


def inprogress_path(final_path) -> Path:
    """``name.fits`` -> ``name.fits.inprogress`` (DESIGN.md §6)."""
    final_path = Path(final_path)
    return final_path.with_name(final_path.name + INPROGRESS_SUFFIX)


def fsync_path(path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


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


@contextlib.contextmanager
def atomic_output(final_path):
    """Yield a temporary path next to ``final_path``; rename it there only if the block succeeds."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = inprogress_path(final_path)
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    try:
        yield temporary
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    commit(temporary, final_path)


def write_json_atomic(path, payload) -> None:
    """Write ``payload`` as JSON with write-to-temporary + fsync + rename."""
    with atomic_output(path) as temporary:
        with open(temporary, "w") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True)


def ensure_free_disk(directory, needed_bytes: int, what: str) -> None:
    """Raise ResourceError naming ``what`` when ``directory`` has less than ``needed_bytes`` free."""
    directory = Path(directory)
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise ResourceError(f"{directory}: {what} needs about {needed_bytes / 2**20:.1f} MiB but only "
                            f"{free / 2**20:.1f} MiB are free")
