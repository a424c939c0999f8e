"""Results files: ours and the original code's are read by the same code path with the same layout.

The MPI test runs under ``mpiexec -n 2 python -m pytest --with-mpi -m mpi tests/io/test_results.py``.
"""
import errno
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import TEST_DATA, write_gaussian_kappa
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.errors import ResourceError
from lensing_ssc.io import atomic, results
from lensing_ssc.io.results import h5py_has_mpi, read_results, write_rows_file
from lensing_ssc.parallel import get_comm
from lensing_ssc.processing.pipeline import AnalysisPipeline

ORIGINAL = TEST_DATA / "original_stats_zs1.0_s100_oa10.h5"


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """Our results file for the original's settings (10 deg, 265 patches, 5 ngal x 4 scales), at a
    tiny xsize so it runs in seconds."""
    tmp_path = tmp_path_factory.mktemp("compat")
    write_gaussian_kappa(tmp_path / "kappa", nside=64, seed=100)
    config = ProcessingConfig(output_dir=str(tmp_path), batch_size=40, analysis={"xsize": 32})
    return AnalysisPipeline(config).execute().outputs[0]


def test_same_groups_datasets_shapes_and_dtypes_as_the_original(ours):
    original = read_results(ORIGINAL)
    mine = read_results(ours, include_extras=False)
    assert len(original) == 186  # SCIENCE.md §11.1
    assert sorted(original) == sorted(mine)
    for name, values in original.items():
        assert mine[name].shape == values.shape, name
        assert mine[name].dtype == values.dtype, name
    with h5py.File(ORIGINAL, "r") as a, h5py.File(ours, "r") as b:
        assert set(a["metadata/parameters"].attrs) <= set(b["metadata/parameters"].attrs)
        for key, value in a["metadata/parameters"].attrs.items():
            mine = b["metadata/parameters"].attrs[key]
            if key not in ("creation_date", "xsize", "pixarea_arcmin2"):  # ours ran at xsize 32
                assert mine == value, key
            assert np.asarray(mine).dtype.kind == np.asarray(value).dtype.kind, key


def test_our_extras_are_provenance_patches_and_summary(ours):
    extras = set(read_results(ours)) - set(read_results(ours, include_extras=False))
    assert {"patches/centers", "patches/replication_flag"} <= extras
    assert "summary/power_spectra/ngal_7/cl/cov" in extras
    with h5py.File(ours, "r") as handle:
        assert handle["summary/power_spectra/ngal_7/cl"].attrs["hartlap_factor"] == pytest.approx((265 - 8 - 2) / 264)
        np.testing.assert_allclose(handle["patches/centers"][132], [np.pi / 2, 0.0], atol=1e-12)


def test_serial_fallback_writes_the_same_file_layout(tmp_path):
    """write_rows_file on one rank (the path taken when h5py lacks MPI) with a finish hook."""
    comm = get_comm()
    path = write_rows_file(tmp_path / "r.h5", {"meta/x": np.arange(3)}, {"rows/a": ((4, 2), "f4")}, 0,
                           {"rows/a": np.ones((4, 2))}, {"/": {"k": 1}}, comm,
                           finish=lambda handle: handle.create_dataset("summary/n", data=4))
    found = read_results(path)
    np.testing.assert_array_equal(found["rows/a"], np.ones((4, 2), dtype=np.float32))
    assert found["summary/n"] == 4 and not (tmp_path / "r.h5.inprogress").exists()


def write_small_file(final):
    return write_rows_file(final, {"meta/x": np.arange(3.0)}, {"rows/a": ((4,), "f4")}, 0, {"rows/a": np.ones(4)},
                           {}, get_comm())


def test_disk_full_during_the_write_names_the_results_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """The file's bytes reach the disk through one Python write: ENOSPC there, as on a full disk."""
    class FullDisk:
        def __init__(self, path, mode):
            self.file = open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results, "open", FullDisk, raising=False)  # the module's name for the builtin
    final = tmp_path / "stats" / "stats_zs1.0_s5_oa10.h5"
    with pytest.raises(ResourceError) as caught:
        write_small_file(final)
    assert re.fullmatch(rf"{re.escape(str(final))}: no space left on device while writing \(free space on "
                        rf"{re.escape(str(final.parent))}: \d+\.\d MiB\)", str(caught.value)), str(caught.value)
    assert list(final.parent.iterdir()) == []


def test_no_room_for_the_datasets_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "free_bytes", lambda directory: 20)  # the datasets need 3 x 8 + 4 x 4 bytes
    final = tmp_path / "stats" / "r.h5"
    with pytest.raises(ResourceError, match=r"the results file r.h5 needs about 0.0 MiB but only 0.0 MiB are free"):
        write_small_file(final)
    assert list(final.parent.iterdir()) == []
    monkeypatch.setattr(atomic, "free_bytes", lambda directory: 40)
    assert read_results(write_small_file(final))["rows/a"].tolist() == [1, 1, 1, 1]


# ---------------------------------------------------------------------------------------------
# pipeline.parallel_io under mpiexec -n 2

ROW_SHAPES = {"rows/a": ((7, 2, 3), "f4"), "rows/b": ((7,), "f8")}


def all_rows():
    rng = np.random.default_rng(3)
    return {path: rng.normal(size=shape).astype(dtype) for path, (shape, dtype) in ROW_SHAPES.items()}


@pytest.mark.mpi(min_size=2)
def test_parallel_and_gathered_writes_give_the_same_datasets(mpi_tmp_path, monkeypatch):
    """parallel_io true: every rank writes its rows (driver 'mpio'); false: rank 0 alone, plain h5py.
    Same datasets (names, shapes, dtypes, bytes) and attributes either way."""
    comm = get_comm()
    opened = []  # (file, driver) of every h5py.File this rank opens; file "memory" for a file-like object

    class SpyFile(h5py.File):
        def __init__(self, name, mode="r", **kwargs):
            opened.append((Path(name).name if isinstance(name, (str, Path)) else "memory", kwargs.get("driver")))
            super().__init__(name, mode, **kwargs)

    monkeypatch.setattr(results.h5py, "File", SpyFile)
    rows = all_rows()
    bounds = np.linspace(0, 7, comm.size + 1).astype(int)
    first, stop = bounds[comm.rank], bounds[comm.rank + 1]
    my_rows = {path: values[first:stop] for path, values in rows.items()}
    attrs = {"/": {"n_ranks": comm.size}, "rows": {"k": 1}}
    paths, files_opened = {}, {}
    for parallel in (True, False):
        opened.clear()
        paths[parallel] = write_rows_file(
            mpi_tmp_path / f"parallel_{parallel}.h5", {"meta/x": np.arange(3.0)}, ROW_SHAPES, first, my_rows, attrs,
            comm, finish=lambda handle: handle.create_dataset("summary/n", data=7), parallel_io=parallel)
        files_opened[parallel] = list(opened)
    if h5py_has_mpi():  # every rank writes; rank 0 then adds /summary
        assert files_opened[True] == [("parallel_True.h5.inprogress", "mpio")] + \
            ([("parallel_True.h5.inprogress", None)] if comm.is_root else [])
    assert files_opened[False] == ([("memory", None)] if comm.is_root else [])  # rank 0 alone
    if comm.is_root:
        parallel, serial = read_results(paths[True]), read_results(paths[False])
        assert sorted(parallel) == sorted(serial) == ["meta/x", "rows/a", "rows/b", "summary/n"]
        for name, values in serial.items():
            assert parallel[name].dtype == values.dtype and parallel[name].shape == values.shape, name
            assert np.asarray(parallel[name]).tobytes() == np.asarray(values).tobytes(), name
        for name, values in rows.items():
            np.testing.assert_array_equal(serial[name], values)
        with h5py.File(paths[True], "r") as a, h5py.File(paths[False], "r") as b:
            for group in ("/", "rows"):
                assert dict(a[group].attrs) == dict(b[group].attrs)
    comm.barrier()
