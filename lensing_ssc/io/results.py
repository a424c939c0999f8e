"""The per-map statistics file (HDF5): the original layout (SCIENCE.md §7) written by all ranks.

Parallel (``pipeline.parallel_io`` true, an MPI-enabled h5py and several ranks): every rank opens the
file with ``driver='mpio'``, the datasets are created collectively with their global shapes, and each
rank writes its own rows. Serial (``parallel_io`` false, h5py without MPI -- logged once -- or one rank):
the rows are gathered on rank 0, where plain h5py builds the file in memory and Python writes it out.
Both give the same datasets. The file is written as ``*.inprogress`` and renamed by rank 0 once
complete; a failed write removes it.

A full disk is a ResourceError naming the file (exit code 3): checked before writing (room for the
datasets' bytes, on every rank together) and, when the disk fills during the write, raised by the
write itself (:func:`~lensing_ssc.io.atomic.guarded_write`). HDF5 may crash when its own write of a
file fails on a full disk (h5py issue 914), so the serial path never lets HDF5 write to disk; the
parallel path has to, and relies on the check before it.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Tuple

import h5py
import numpy as np

from lensing_ssc.io.atomic import commit, ensure_free_disk, guarded_write, inprogress_path
from lensing_ssc.parallel import Comm, root_then_bcast

log = logging.getLogger("lensing_ssc.results")
_WARNED_SERIAL = False

Finish = Optional[Callable[[h5py.File], None]]


def h5py_has_mpi() -> bool:
    return bool(h5py.get_config().mpi)


def _create_layout(handle: h5py.File, static: Mapping[str, np.ndarray], rows: Mapping[str, Tuple[tuple, str]],
                   attrs: Mapping[str, Mapping[str, object]]) -> None:
    """Collective in mpio mode: the same calls, in the same order, on every rank."""
    for path in sorted(static):
        handle.create_dataset(path, data=np.asarray(static[path]))
    for path in sorted(rows):
        shape, dtype = rows[path]
        handle.create_dataset(path, shape=shape, dtype=dtype)
    for group in sorted(attrs):
        target = handle.require_group(group) if group != "/" else handle
        for key, value in attrs[group].items():
            target.attrs[key] = value


def _dataset_bytes(static: Mapping[str, np.ndarray], rows: Mapping[str, Tuple[tuple, str]]) -> int:
    """Bytes of the datasets of the file (a lower bound of its size) [bytes]."""
    return (sum(np.asarray(values).nbytes for values in static.values())
            + sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in rows.values()))


def _write_serial(final_path: Path, temporary: Path, fill: Callable[[h5py.File], None]) -> None:
    """Rank 0: ``fill`` an in-memory HDF5 file, write its bytes to ``temporary`` and rename it."""
    image = io.BytesIO()
    with h5py.File(image, "w") as handle:
        fill(handle)
    with guarded_write(final_path, temporary):
        with open(temporary, "wb") as handle:
            handle.write(image.getbuffer())
        commit(temporary, final_path)


def _finish_and_commit(final_path: Path, temporary: Path, finish: Finish) -> None:
    """Rank 0, after the parallel write: run ``finish`` on the complete file, then rename it."""
    with guarded_write(final_path, temporary):
        if finish is not None:
            with h5py.File(temporary, "r+") as handle:
                finish(handle)
        commit(temporary, final_path)


def write_rows_file(final_path, static: Mapping[str, np.ndarray], row_shapes: Mapping[str, Tuple[tuple, str]],
                    my_first_row: int, my_rows: Mapping[str, np.ndarray], attrs: Mapping[str, Mapping[str, object]],
                    comm: Comm, finish: Finish = None, parallel_io: bool = True) -> Path:
    """Write one results file from row blocks held by every rank (collective).

    ``static``: small datasets written once (e.g. ``metadata/parameters/ell``); ``row_shapes``: path ->
    (global shape, dtype) of the per-patch datasets; ``my_rows``: this rank's block of each of them,
    starting at global row ``my_first_row``; ``attrs``: group path -> attributes. ``finish(handle)``
    runs on rank 0 with the complete file open read-write (e.g. to add ``/summary``) before the rename.
    ``parallel_io`` (``pipeline.parallel_io``): every rank writes its rows with parallel HDF5 when h5py
    supports MPI; false: the rows are gathered on rank 0, which writes the file alone with plain h5py.
    Errors on rank 0 (a full disk: ResourceError naming the file) are raised on every rank.
    """
    global _WARNED_SERIAL
    final_path = Path(final_path)
    temporary = inprogress_path(final_path)

    def prepare():
        final_path.parent.mkdir(parents=True, exist_ok=True)
        ensure_free_disk(final_path.parent, _dataset_bytes(static, row_shapes), f"the results file {final_path.name}")

    root_then_bcast(comm, prepare)
    if comm.size > 1 and parallel_io and h5py_has_mpi():
        with guarded_write(final_path, temporary):
            with h5py.File(temporary, "w", driver="mpio", comm=comm.mpi) as handle:
                _create_layout(handle, static, row_shapes, attrs)
                for path, block in my_rows.items():
                    if len(block):
                        handle[path][my_first_row:my_first_row + len(block)] = block
        comm.barrier()
        root_then_bcast(comm, lambda: _finish_and_commit(final_path, temporary, finish))
        return final_path
    if comm.size > 1 and parallel_io and not _WARNED_SERIAL and comm.is_root:
        log.warning("h5py has no MPI support: gathering result rows on rank 0 to write %s", final_path)
        _WARNED_SERIAL = True
    blocks = comm.gather((my_first_row, dict(my_rows)))

    def fill(handle: h5py.File) -> None:
        _create_layout(handle, static, row_shapes, attrs)
        for first_row, rows in blocks:
            for path, block in rows.items():
                if len(block):
                    handle[path][first_row:first_row + len(block)] = block
        if finish is not None:
            finish(handle)

    root_then_bcast(comm, lambda: _write_serial(final_path, temporary, fill))
    return final_path


def read_results(path, include_extras: bool = True) -> Dict[str, np.ndarray]:
    """Every dataset of a results file as ``{path: array}``: files of the original code and ours.

    The original layout (SCIENCE.md §7) has ``metadata``, ``power_spectra``, ``bispectra`` and
    ``smoothed_statistics``; ours adds ``patches``, ``summary`` and ``plugins`` (skipped with
    ``include_extras=False``, to compare with an original file).
    """
    extras = ("patches/", "summary/", "plugins/")
    found: Dict[str, np.ndarray] = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset) and (include_extras or not name.startswith(extras)):
            found[name] = item[()]

    with h5py.File(path, "r") as handle:
        handle.visititems(visit)
    return found
