"""The per-map statistics file (HDF5): the original layout (SCIENCE.md §7) written by all ranks.

With an MPI-enabled h5py and several ranks, every rank opens the file with ``driver='mpio'``, the
datasets are created collectively with their global shapes, and each rank writes its own rows. Without
MPI support in h5py the rows are gathered on rank 0, which writes the file alone (logged once).
The file is written as ``*.inprogress`` and renamed by rank 0 once complete.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Tuple

import h5py
import numpy as np

from lensing_ssc.io.atomic import commit, inprogress_path
from lensing_ssc.parallel import Comm

log = logging.getLogger("lensing_ssc.results")
_WARNED_SERIAL = False


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


def write_rows_file(final_path, static: Mapping[str, np.ndarray], row_shapes: Mapping[str, Tuple[tuple, str]],
                    my_first_row: int, my_rows: Mapping[str, np.ndarray], attrs: Mapping[str, Mapping[str, object]],
                    comm: Comm, finish: Optional[Callable[[h5py.File], None]] = None) -> Path:
    """Write one results file from row blocks held by every rank (collective).

    ``static``: small datasets written once (e.g. ``metadata/parameters/ell``); ``row_shapes``: path ->
    (global shape, dtype) of the per-patch datasets; ``my_rows``: this rank's block of each of them,
    starting at global row ``my_first_row``; ``attrs``: group path -> attributes. ``finish(handle)``
    runs on rank 0 with the complete file open read-write (e.g. to add ``/summary``) before the rename.
    """
    global _WARNED_SERIAL
    final_path = Path(final_path)
    temporary = inprogress_path(final_path)
    if comm.is_root:
        final_path.parent.mkdir(parents=True, exist_ok=True)
    comm.barrier()
    if comm.size > 1 and h5py_has_mpi():
        with h5py.File(temporary, "w", driver="mpio", comm=comm.mpi) as handle:
            _create_layout(handle, static, row_shapes, attrs)
            for path, block in my_rows.items():
                if len(block):
                    handle[path][my_first_row:my_first_row + len(block)] = block
    else:
        if comm.size > 1 and not _WARNED_SERIAL and comm.is_root:
            log.warning("h5py has no MPI support: gathering result rows on rank 0 to write %s", final_path)
            _WARNED_SERIAL = True
        blocks = comm.gather((my_first_row, dict(my_rows)))
        if comm.is_root:
            with h5py.File(temporary, "w") as handle:
                _create_layout(handle, static, row_shapes, attrs)
                for first_row, rows in blocks:
                    for path, block in rows.items():
                        if len(block):
                            handle[path][first_row:first_row + len(block)] = block
    comm.barrier()
    if comm.is_root:
        if finish is not None:
            with h5py.File(temporary, "r+") as handle:
                finish(handle)
        commit(temporary, final_path)
    comm.barrier()
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
