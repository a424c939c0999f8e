"""Results files: ours and the original code's are read by the same code path with the same layout."""
import h5py
import numpy as np
import pytest

from conftest import TEST_DATA, write_gaussian_kappa
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.io.results import read_results, write_rows_file
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
