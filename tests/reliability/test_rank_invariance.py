"""The whole tiny chain (mock -> preprocess -> kappa -> analyze) at 2 and 3 ranks gives the outputs of the
one-rank reference run: the same mock usmesh bytes, FITS sheets and kappa maps with identical data bytes
and headers, and results files with identical datasets and attributes (DESIGN.md §5: results do not
depend on the number of ranks; only the rank count and creation date may differ). A last test checks
that the comparison itself sees a one-ulp change."""
import shutil

import h5py
import numpy as np
import pytest
from astropy.io import fits

from chain import CHAIN_STAGES, SEED, STATS_STEM, write_chain_config
from job_control import run_job
from outputs import final_outputs, hdf5_differences, output_differences


def usmesh_files(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("nranks", [2, 3])
def test_whole_chain_gives_the_one_rank_outputs(reference, tmp_path, nranks):
    output = tmp_path / "out"
    config = write_chain_config(output, output / "usmesh", mock_enabled=True)
    done = run_job(["-m", "lensing_ssc", "run", config, "--stages", CHAIN_STAGES], nranks, tmp_path / "logs")
    assert done.returncode == 0, done.stderr
    assert usmesh_files(output / "usmesh") == usmesh_files(reference.usmesh)
    assert output_differences(reference.directory, output) == []
    assert len(final_outputs(output)) == reference.tasks("preprocess") + 2  # the sheets, the kappa map, the results


def test_the_comparison_sees_one_changed_value(reference, tmp_path):
    """One ulp in one pixel or in one dataset element, a changed attribute, a missing file and a leftover
    ``*.inprogress`` are each reported; a changed rank count is not."""
    copy = tmp_path / "copy"
    for subdir in ("mass_sheets", "kappa", "stats"):
        shutil.copytree(reference.directory / subdir, copy / subdir)
    assert output_differences(reference.directory, copy) == []

    sheet = sorted((copy / "mass_sheets").glob("delta-sheet-*.fits"))[3]
    with fits.open(sheet) as hdus:
        first_pixel = hdus[1].fileinfo()["datLoc"]
    raw = bytearray(sheet.read_bytes())
    raw[first_pixel + 3] ^= 1  # the last bit of the first (big-endian float32) pixel
    sheet.write_bytes(bytes(raw))
    found = output_differences(reference.directory, copy)
    assert len(found) == 1 and found[0].startswith(f"{sheet} HDU 1: data bytes differ")

    stats = copy / "stats" / f"{STATS_STEM}.h5"
    with h5py.File(stats, "r+") as handle:
        cl = handle["power_spectra/ngal_0/cl"]
        cl[7, 2] = np.nextafter(cl[7, 2], np.float32(np.inf))
        handle.attrs["n_ranks"] = 99
        handle.attrs["zs"] = 1.5
    assert hdf5_differences(reference.directory / "stats" / stats.name, stats) == [
        f"{stats}:/: attributes differ: zs=1.5 (expected 1.0)", f"{stats}:power_spectra/ngal_0/cl: dataset differs"]

    kappa = copy / "kappa" / f"kappa_zs1.0_s{SEED}.fits"
    kappa.rename(kappa.with_name(kappa.name + ".inprogress"))
    assert output_differences(reference.directory, copy, stages=("kappa",)) == [
        f"{copy}: final outputs differ: missing ['{kappa.relative_to(copy)}'], extra []",
        f"{kappa}.inprogress: left behind"]
