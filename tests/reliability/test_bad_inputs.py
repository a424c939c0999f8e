"""Broken inputs and configs of the mock, preprocess, kappa and analyze stages, each run through the CLI.

Every case asserts the exit code (2 bad config or input, 3 resource error), the one ``lensing-ssc: error:``
line on stderr with the key phrase (the file or key and what was expected), no hang, and no partial
output: no new FITS/HDF5/PNG file, no stage manifest, no ``*.inprogress`` left, the input files
untouched. The inputs are the reference run's files (chain.py), broken one way each. The table runs
in-process on one rank (fast: no launch); a few cases run as ``mpiexec -n 2`` jobs to show that every
rank exits with the code and the message is printed once, and that an input error found inside one
rank's task ends the whole job with code 2. No case prints a traceback.

A full disk mid-write (OSError ENOSPC) is a resource error: exit code 3, one line naming the file being
written, no retry, no partial output; shown with an injected error and, where a tmpfs can be mounted
(root), with a real full file system.
"""
import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import subprocess

import bigfile
import healpy as hp
import numpy as np
import pytest
from astropy.io import fits

from chain import SEED, STATS_STEM, TINY_CHAIN, write_chain_config
from driver import REPORT_EXIT_ENV
from job_control import driver, run_job
from lensing_ssc.cli import main
from lensing_ssc.io.healpix_maps import MapRangeWriter

FINAL_SUFFIXES = (".fits", ".h5", ".png", ".inprogress")
FINAL_NAMES = ("manifest.json", "lensing_ssc_mock.json")


# ---------------------------------------------------------------------------------------------
# How each case breaks its inputs: setup(reference, directory) -> config path, where `directory` is the
# case's output_dir and the inputs are copies of the reference run's files.

def config_only(**sections):
    return lambda reference, directory: reference.write_config(directory, **sections)


def with_data_dir(make_data_dir, **sections):
    """A config whose data_dir is ``make_data_dir(reference, directory)`` instead of the reference usmesh."""
    return lambda reference, directory: write_chain_config(directory, make_data_dir(reference, directory),
                                                           **sections)


def not_a_mock(reference, directory):
    (directory / "precious").mkdir(parents=True)
    (directory / "precious" / "notes.txt").write_text("real data, not a mock")
    return directory / "precious"


def plain_file(reference, directory):
    (directory / "usmesh.txt").write_text("not a BigFile")
    return directory / "usmesh.txt"


def empty_directory(reference, directory):
    (directory / "empty").mkdir()
    return directory / "empty"


def usmesh_without_attr(block, name):
    """A copy of the reference usmesh without the attr ``name`` of ``block``."""
    def make(reference, directory):
        copy = directory / "usmesh"
        shutil.copytree(reference.usmesh, copy)
        column = bigfile.File(str(copy))[block]
        column.attrs[name] = column.attrs[name]  # bigfile writes attrs back only once one was set
        del column.attrs[name]
        column.close()
        return copy
    return make


def stage_inputs(stage, change=None, **sections):
    """The reference inputs of ``stage`` (sheets for kappa, the kappa map for analyze), then
    ``change(directory)`` breaks one of them."""
    def setup(reference, directory):
        config = reference.workspace(stage, directory, **sections)
        if change is not None:
            change(directory)
        return config
    return setup


def sheet(directory, position):
    """The ``position``-th delta sheet of the copied reference sheets (10 of them)."""
    return sorted((directory / "mass_sheets").glob("delta-sheet-*.fits"))[position]


def kappa_map(directory):
    return directory / "kappa" / f"kappa_zs1.0_s{SEED}.fits"


def rewrite_map(path, values=None, **cards):
    """Rewrite a map file with other pixels (``values``, NESTED) and/or header cards (None deletes one)."""
    with fits.open(path) as hdus:
        primary, table = hdus[0].copy(), hdus[1].copy()
    for key, value in cards.items():
        if value is None:
            del table.header[key]
        else:
            table.header[key] = value
    if values is not None:
        column = table.data.field(0)
        column[...] = np.asarray(values, dtype=column.dtype).reshape(column.shape)
    fits.HDUList([primary, table]).writeto(path, overwrite=True)


def with_nan_pixel(path):
    values = hp.read_map(str(path), nest=True)
    values[100] = np.nan
    rewrite_map(path, values)


def truncate(path):
    path.write_bytes(path.read_bytes()[:5000])


def write_nside_16(source, target):
    """A NESTED nside-16 map at ``target`` with the identity cards of the map ``source``."""
    cards = [(k, v) for k, v in fits.getheader(source, 1).items() if k in ("SHEET", "A_FAR", "A_NEAR", "SEED", "ZS")]
    hp.write_map(str(target), np.zeros(hp.nside2npix(16)), nest=True, dtype=np.float32, overwrite=True,
                 extra_header=cards)


def remove_all_sheets(directory):
    for position in range(10):
        sheet(directory, 0).unlink()


def malformed_yaml(reference, directory):
    path = reference.write_config(directory)
    path.write_text(path.read_text() + "analysis:\n\txsize: 3\n")
    return path


# (id, command, setup, exit code, key phrase of the error line)
CASES = [
    # mock
    ("mock over a directory that is not a mock", "mock", with_data_dir(not_a_mock), 2,
     "is not a lensing_ssc mock"),
    ("mock with a non-integer particle grid", "mock",
     with_data_dir(lambda reference, directory: directory / "usmesh", mock={"particles_per_cell": 0.3}), 2,
     "mock: particles_per_cell must be > 0 and nc * particles_per_cell^(1/3) an integer"),
    ("mock without data_dir", "mock", with_data_dir(lambda reference, directory: None), 2,
     "data_dir: expected the directory to write the mock usmesh to"),
    # preprocess
    ("usmesh not found", "preprocess", with_data_dir(lambda reference, directory: directory / "nowhere"), 2,
     "usmesh directory not found"),
    ("usmesh is a plain file", "preprocess", with_data_dir(plain_file), 2, "is not a directory (data_dir)"),
    ("usmesh is an empty directory", "preprocess", with_data_dir(empty_directory), 2, "Header"),
    ("usmesh without aemitIndex.offset", "preprocess",
     with_data_dir(usmesh_without_attr("HEALPIX", "aemitIndex.offset")), 2, "aemitIndex.offset"),
    ("usmesh without a particle block", "preprocess",
     config_only(preprocessing={"dataset": "particles", "nside_out": 32}), 2, "'1/'"),
    ("sheet_range without a non-empty slice", "preprocess", config_only(preprocessing={"sheet_range": [0, 5]}), 2,
     "no non-empty slice in preprocessing.sheet_range [0, 5)"),
    ("nside_out on the HEALPIX route", "preprocess", config_only(preprocessing={"nside_out": 16}), 2,
     "preprocessing.nside_out"),
    ("nside_out not a power of two", "preprocess",
     config_only(preprocessing={"dataset": "particles", "nside_out": 12}), 2, "power of two"),
    ("preprocess over the memory limit", "preprocess", config_only(pipeline={"memory_limit_mb": 0.01}), 3,
     "pipeline.memory_limit_mb"),
    # kappa
    ("no mass-sheet directory", "kappa", config_only(), 2, "mass-sheet directory not found"),
    ("no sheets in the directory", "kappa", stage_inputs("kappa", remove_all_sheets), 2,
     "no delta-sheet-NN.fits files"),
    ("a sheet missing in the middle", "kappa", stage_inputs("kappa", lambda d: sheet(d, 4).unlink()), 2,
     "a sheet between them is missing"),
    ("a RING-ordered sheet", "kappa", stage_inputs("kappa", lambda d: rewrite_map(sheet(d, 2), ORDERING="RING")), 2,
     "ORDERING is RING"),
    ("a sheet without A_NEAR", "kappa", stage_inputs("kappa", lambda d: rewrite_map(sheet(d, 5), A_NEAR=None)), 2,
     "header has no A_NEAR"),
    ("a sheet whose SHEET contradicts its name", "kappa",
     stage_inputs("kappa", lambda d: rewrite_map(sheet(d, 6), SHEET=3)), 2, "contradicts the file name"),
    ("a sheet of another nside", "kappa", stage_inputs("kappa", lambda d: write_nside_16(sheet(d, 1), sheet(d, 1))), 2,
     "differs from NSIDE = 32"),
    ("a truncated sheet", "kappa", stage_inputs("kappa", lambda d: truncate(sheet(d, 1))), 2, "cannot read FITS map"),
    ("a sheet with a NaN pixel", "kappa", stage_inputs("kappa", lambda d: with_nan_pixel(sheet(d, 3))), 2,
     "non-finite or UNSEEN"),
    ("a source in front of every sheet", "kappa", stage_inputs("kappa", kappa={"source_redshifts": [0.01]}), 2,
     "kappa.source_redshifts: zs = 0.01 has no mass sheet in front of it"),
    ("the same source twice", "kappa", stage_inputs("kappa", kappa={"source_redshifts": [1.0, 1.0]}), 2,
     "expected distinct redshifts"),
    ("kappa over the memory limit", "kappa", stage_inputs("kappa", pipeline={"memory_limit_mb": 0.01}), 3,
     "pipeline.memory_limit_mb"),
    ("malformed YAML", "kappa", malformed_yaml, 2, "not valid YAML"),
    # analyze
    ("no kappa maps", "analyze", config_only(), 2, "no kappa maps"),
    ("a truncated kappa map", "analyze", stage_inputs("analyze", lambda d: truncate(kappa_map(d))), 2,
     "cannot read FITS map"),
    ("a RING-ordered kappa map", "analyze",
     stage_inputs("analyze", lambda d: rewrite_map(kappa_map(d), ORDERING="RING")), 2, "ORDERING is RING"),
    ("kappa maps of two nsides", "analyze",
     stage_inputs("analyze", lambda d: write_nside_16(kappa_map(d), d / "kappa" / f"kappa_zs2.0_s{SEED}.fits")), 2,
     "different NSIDE values [16, 32]"),
    ("a kappa map named without a redshift", "analyze",
     stage_inputs("analyze", lambda d: shutil.copy(kappa_map(d), d / "kappa" / f"kappa_zsX_s{SEED}.fits")), 2,
     "expected a file name kappa_zs{zs}_s{seed}.fits"),
    ("an unknown statistic", "analyze",
     stage_inputs("analyze", analysis={"statistics": ["pdf", "no_such_statistic"]}), 2, "no_such_statistic"),
    ("patches larger than the sphere allows", "analyze", stage_inputs("analyze", analysis={"patch_size_deg": 80.0}),
     2, "analysis.patch_size_deg"),
]


def files(directory):
    """path -> bytes of every file under ``directory``."""
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def new_final_outputs(before, directory):
    """Files created since ``before`` that are outputs (checkpoints are not: a stage that failed mid-way
    keeps the tasks it finished) or leftovers of an interrupted write."""
    created = [p for p in files(directory).keys() - before.keys()
               if "checkpoints" not in p.relative_to(directory).parts]
    return sorted(str(p) for p in created if p.name.endswith(FINAL_SUFFIXES) or p.name in FINAL_NAMES)


@pytest.fixture
def restore_process_state():
    """``main`` reconfigures the root logger and installs SIGTERM/SIGUSR1 handlers: put them back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    signals = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for signum, handler in signals.items():
        signal.signal(signum, handler)


def test_the_table_covers_every_stage():
    assert len(CASES) >= 20 and {case[1] for case in CASES} == {"mock", "preprocess", "kappa", "analyze"}


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")  # the truncated files
@pytest.mark.parametrize("command, setup, code, phrase", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_exits_with_its_code_one_message_and_no_output(reference, tmp_path, capsys, restore_process_state,
                                                                 command, setup, code, phrase):
    config = setup(reference, tmp_path)
    before = files(tmp_path)
    assert main([command, str(config)]) == code
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("lensing-ssc: error:")]
    assert len(errors) == 1 and phrase in errors[0], errors
    assert "Traceback" not in stderr, stderr
    assert new_final_outputs(before, tmp_path) == []
    assert not list(tmp_path.rglob("*.inprogress"))
    after = files(tmp_path)
    assert {path: after.get(path) for path in before} == before  # the inputs are untouched


# ---------------------------------------------------------------------------------------------
# Under mpiexec -n 2

MPI_CASES = {case[0]: case[1:] for case in CASES}


@pytest.mark.parametrize("case", ["a sheet missing in the middle", "kappa maps of two nsides"])
def test_every_rank_exits_with_the_code_and_one_message(reference, tmp_path, case):
    command, setup, code, phrase = MPI_CASES[case]
    config = setup(reference, tmp_path)
    before = files(tmp_path)
    failed = run_job(driver(command, config), 2, tmp_path / "logs", timeout=60, env={REPORT_EXIT_ENV: "1"})
    assert failed.returncode == code, failed.stderr
    # (mpiexec may interleave the two ranks' lines)
    assert sorted(re.findall(r"rank (\d+) exit (\d+)", failed.stdout)) == [("0", str(code)), ("1", str(code))]
    assert failed.stderr.count("lensing-ssc: error:") == 1 and phrase in failed.stderr
    assert "fatal" not in failed.stderr  # a clean collective error, not an abort
    assert "Traceback" not in failed.stderr, failed.stderr
    assert new_final_outputs(before, tmp_path) == []


def test_bad_pixel_found_by_one_rank_mid_stage_ends_the_job_with_code_2(reference, tmp_path):
    """The NaN is found inside one rank's task (no collective error there): that rank aborts the job."""
    command, setup, code, phrase = MPI_CASES["a sheet with a NaN pixel"]
    config = setup(reference, tmp_path)
    before = files(tmp_path)
    failed = run_job(driver(command, config), 2, tmp_path / "logs", timeout=60)
    assert failed.returncode == code, failed.stderr
    assert failed.stderr.count("fatal: InputError") == 1 and phrase in failed.stderr
    assert "Traceback" not in failed.stderr, failed.stderr
    assert new_final_outputs(before, tmp_path) == []


# ---------------------------------------------------------------------------------------------
# A full disk mid-write

def full_disk_line(path):
    """The error line of a write of ``path`` refused by a full disk (a regular expression)."""
    return (rf"lensing-ssc: error: {re.escape(str(path))}: no space left on device while writing "
            rf"\(free space on {re.escape(str(path.parent))}: \d+\.\d MiB\)")


def assert_one_error_line(stderr, pattern):
    """Exactly one error line, matching ``pattern``; no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("lensing-ssc: error:")]
    assert len(errors) == 1, stderr
    assert re.fullmatch(pattern, errors[0]), errors[0]
    assert "Traceback" not in stderr, stderr


def no_space(*args, **kwargs):
    """A write refused as h5py and astropy refuse it: errno ENOSPC, no file name."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.timeout(60)
def test_full_disk_while_writing_the_kappa_map(reference, tmp_path, capsys, restore_process_state, monkeypatch):
    config = reference.workspace("kappa", tmp_path)
    before = files(tmp_path)
    writes = []
    monkeypatch.setattr(MapRangeWriter, "write", lambda self, start, values: (writes.append(1), no_space()))
    assert main(["kappa", str(config)]) == 3
    assert_one_error_line(capsys.readouterr().err, full_disk_line(kappa_map(tmp_path)))
    assert writes == [1]  # not retried
    assert new_final_outputs(before, tmp_path) == []
    assert not list(tmp_path.rglob("*.inprogress"))


@pytest.mark.timeout(60)
def test_full_disk_error_raised_inside_a_task_names_its_file_and_is_not_retried(reference, tmp_path, capsys,
                                                                                 restore_process_state, monkeypatch):
    """An OSError ENOSPC that carries its file name (Python's own writes) reaches the command line as is."""
    from lensing_ssc.processing.steps import analysis_steps
    config = reference.workspace("analyze", tmp_path)
    scratch = tmp_path / "scratch" / "patch.npy"
    calls = []

    def project_patch(*args):
        calls.append(1)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(scratch))

    monkeypatch.setattr(analysis_steps, "project_patch", project_patch)
    assert main(["analyze", str(config)]) == 3
    assert_one_error_line(capsys.readouterr().err, full_disk_line(scratch))
    assert calls == [1]  # pipeline.max_retries is 3: a full disk is not retried


@contextlib.contextmanager
def small_tmpfs(directory, size_bytes):
    """``directory`` as a tmpfs of ``size_bytes`` (rounded up to pages) for the block; skips the test when
    it cannot be mounted (not root, or a container without CAP_SYS_ADMIN)."""
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def results_file(directory):
    return directory / "stats" / f"{STATS_STEM}.h5"


# Each stage checks first that the output directory has room for the file's data (the kappa map's
# 12 nside^2 float32 pixels, the results file's datasets); the tmpfs passes that check and fills during
# the write. kappa: one page more than the pixels, less than the FITS headers and padding need (astropy
# reports a short write without errno). analyze: one page less than the reference results file, written
# in one piece (errno 28); on 2 ranks with pipeline.parallel_io false (rank 0 writes), and with parallel
# HDF5 on a full disk, refused by the check (HDF5 may crash when its own write fails, h5py issue 914).
NPIX = 12 * TINY_CHAIN["mock"]["nside"] ** 2


def one_page_less_than_the_reference_results(reference):
    return results_file(reference.directory).stat().st_size - 4096


def results_file_line(directory):
    return full_disk_line(results_file(directory))


def no_room_for_the_results_line(directory):
    return (rf"lensing-ssc: error: {re.escape(str(directory / 'stats'))}: writing the results file {STATS_STEM}.h5 needs "
            rf"about \d+\.\d MiB but only 0.0 MiB are free")


FULL_DISKS = {  # id: (command, ranks, pipeline settings, tmpfs size given the reference, expected line)
    "kappa": ("kappa", 1, {}, lambda reference: NPIX * 4 + 4096,
              lambda directory: full_disk_line(kappa_map(directory))),
    "analyze": ("analyze", 1, {}, one_page_less_than_the_reference_results, results_file_line),
    "analyze gathered on 2 ranks": ("analyze", 2, {"parallel_io": False}, one_page_less_than_the_reference_results,
                                    results_file_line),
    "analyze parallel HDF5, disk already full": ("analyze", 2, {}, lambda reference: 4096,
                                                 no_room_for_the_results_line),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(FULL_DISKS))
def test_a_real_full_disk_exits_3_on_every_rank_with_one_line_naming_the_file(reference, tmp_path, case):
    command, ranks, pipeline, size, line = FULL_DISKS[case]
    config = reference.workspace(command, tmp_path, pipeline=pipeline)
    mounted = tmp_path / ("kappa" if command == "kappa" else "stats")
    with small_tmpfs(mounted, size(reference)):
        failed = run_job(driver(command, config), ranks, tmp_path / "logs", timeout=90, env={REPORT_EXIT_ENV: "1"})
        assert failed.returncode == 3, failed.stderr
        assert sorted(re.findall(r"rank (\d+) exit (\d+)", failed.stdout)) == [(str(r), "3") for r in range(ranks)]
        assert_one_error_line(failed.stderr, line(tmp_path))
        assert list(mounted.iterdir()) == []  # nor a partial file
