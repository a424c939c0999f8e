"""Kappa tasks writing straight into the maps' partial files (``*.fits.inprogress``): resume after a crash
checked through the CRC-32 records, partial files removed on bad input, and bad deltas found through the
product of the Born sum (bad_delta_bound) whatever the weights."""
import logging

import healpy as hp
import numpy as np
import pytest

from lensing_ssc.core.errors import InputError
from lensing_ssc.io.healpix_maps import MapRangeWriter, read_header_and_layout, read_nested_map
from lensing_ssc.processing.pipeline.kappa import KappaPipeline
from lensing_ssc.processing.steps import kappa_steps
from test_kappa_pipeline import make_config, write_sheet  # the helpers of the kappa stage tests

NSIDE = 4  # 12 tasks of nside^2 = 16 pixels
SOURCES = (1.0, 1.2)  # both within the sheets' reach (z = 1.22 for sheet 45)
SHEETS = range(45, 70)
MAP_NAMES = [f"kappa_zs{zs}_s7.fits" for zs in SOURCES]


def write_sheets(directory, deltas):
    for index, delta in deltas.items():
        write_sheet(directory, index, delta)


def random_deltas(seed=3):
    rng = np.random.default_rng(seed)
    return {i: rng.normal(0, 0.5, 12 * NSIDE**2) for i in SHEETS}


def map_bytes(directory):
    return [(directory / "kappa" / name).read_bytes() for name in MAP_NAMES]


@pytest.fixture
def reference(tmp_path):
    """Maps of an uninterrupted run on the sheets of random_deltas()."""
    directory = tmp_path / "reference"
    write_sheets(directory, random_deltas())
    assert KappaPipeline(make_config(directory, SOURCES)).execute().tasks_done == 12
    return map_bytes(directory)


class Crash(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing retries or cleans up."""


def crash_after_tasks(monkeypatch, ntasks):
    """Make the kappa stage crash when it starts reading task ``ntasks`` (a task reads each sheet's
    range once: one block at this nside); returns a function undoing it."""
    original, calls = kappa_steps.MapRangeReader.read_into, []

    def read_into(*args, **kwargs):
        calls.append(args)
        if len(calls) > ntasks * len(SHEETS):
            raise Crash()
        return original(*args, **kwargs)

    monkeypatch.setattr(kappa_steps.MapRangeReader, "read_into", read_into)
    return lambda: monkeypatch.setattr(kappa_steps.MapRangeReader, "read_into", original)


def crashed_run(tmp_path, monkeypatch):
    """A run crashed after 5 of its 12 tasks; returns its output directory."""
    directory = tmp_path / "crashed"
    write_sheets(directory, random_deltas())
    undo = crash_after_tasks(monkeypatch, 5)
    with pytest.raises(Crash):
        KappaPipeline(make_config(directory, SOURCES)).execute()
    undo()
    return directory


def test_a_crash_leaves_the_partial_maps_and_no_final_map(tmp_path, monkeypatch):
    directory = crashed_run(tmp_path, monkeypatch)
    kappa = directory / "kappa"
    assert sorted(p.name for p in kappa.iterdir()) == [f"{name}.inprogress" for name in MAP_NAMES]
    for name in MAP_NAMES:  # tasks 0-4 are in, the rest still 0 as allocated
        values, header = read_nested_map(kappa / f"{name}.inprogress")
        assert header["ORDERING"] == "NESTED" and np.all(values[:80] != 0) and np.all(values[80:] == 0)


def test_a_lost_partial_map_makes_the_rerun_redo_every_task(tmp_path, monkeypatch, reference, caplog):
    directory = crashed_run(tmp_path, monkeypatch)
    (directory / "kappa" / f"{MAP_NAMES[1]}.inprogress").unlink()
    with caplog.at_level(logging.WARNING, logger="lensing_ssc"):
        resumed = KappaPipeline(make_config(directory, SOURCES)).execute()
    assert (resumed.tasks_skipped, resumed.tasks_done) == (0, 12)
    assert any("partial maps of the interrupted run are missing or changed" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    assert map_bytes(directory) == reference
    assert sorted(p.name for p in (directory / "kappa").iterdir()) == MAP_NAMES


def test_changed_bytes_in_a_partial_map_make_the_rerun_redo_that_task_only(tmp_path, monkeypatch, reference):
    directory = crashed_run(tmp_path, monkeypatch)
    _, layout = read_header_and_layout(directory / "kappa" / f"{MAP_NAMES[1]}.inprogress")
    with MapRangeWriter(layout) as writer:
        writer.write(2 * 16 + 3, np.array([123.0]))  # one pixel of task 2, in the second map
    resumed = KappaPipeline(make_config(directory, SOURCES)).execute()
    assert (resumed.tasks_skipped, resumed.tasks_done) == (4, 8)
    assert map_bytes(directory) == reference


def test_a_plain_rerun_after_a_crash_keeps_the_finished_tasks(tmp_path, monkeypatch, reference):
    directory = crashed_run(tmp_path, monkeypatch)
    resumed = KappaPipeline(make_config(directory, SOURCES)).execute()
    assert (resumed.tasks_skipped, resumed.tasks_done) == (5, 7)
    assert map_bytes(directory) == reference


def test_bad_input_mid_stage_leaves_no_partial_map(tmp_path, reference):
    deltas = random_deltas()
    bad = deltas[60].copy()
    bad[170] = np.nan  # task 10 of 12: ten tasks have written their ranges by then
    write_sheets(tmp_path / "bad", {**deltas, 60: bad})
    with pytest.raises(InputError, match=r"delta-sheet-60\.fits: 1 non-finite or UNSEEN pixel.*first at 170"):
        KappaPipeline(make_config(tmp_path / "bad", SOURCES)).execute()
    assert list((tmp_path / "bad" / "kappa").iterdir()) == []  # neither partial nor final maps
    # the sheet fixed, the next run starts the maps afresh and gives those of an uninterrupted run
    write_sheet(tmp_path / "bad", 60, deltas[60])
    rerun = KappaPipeline(make_config(tmp_path / "bad", SOURCES)).execute()
    assert (rerun.tasks_skipped, rerun.tasks_done) == (0, 12)
    assert map_bytes(tmp_path / "bad") == reference


# ---------------------------------------------------------------------------------------------
# Bad deltas found through the Born sum, whatever the weights

SUM_SHEETS = [50, 51, 52, 53]


def sheets_with(directory, values_of):
    """Sheets SUM_SHEETS of nside NSIDE with deltas ``values_of(index)`` (float32 on disk, as the
    preprocess stage writes them); returns their SheetInfo and the stored deltas (float64, n_sheets x npix)."""
    for index in SUM_SHEETS:
        write_sheet(directory, index, values_of(index))
    sheets, _, _, _ = kappa_steps.discover_sheets(directory / "mass_sheets")
    return sheets, np.stack([read_nested_map(s.path)[0] for s in sheets])


def good_deltas(index):
    return np.random.default_rng(index).normal(0.0, 0.5, 12 * NSIDE**2)


@pytest.mark.parametrize("tiny", [1e-12, 1e-20])
def test_unseen_delta_in_a_sheet_of_tiny_weight_is_reported(tmp_path, tiny):
    def deltas(index):
        values = good_deltas(index)
        if index == 52:
            values[37] = hp.UNSEEN
        return values

    sheets, _ = sheets_with(tmp_path, deltas)
    weights = np.array([[0.02, 0.03, tiny, 0.01],
                        [0.01, 0.0, tiny / 2, 0.02]])
    with pytest.raises(InputError) as caught:
        kappa_steps.born_sum_range(sheets, weights, 0, 12 * NSIDE**2)
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "mass_sheets" / "delta-sheet-52.fits"))
    assert "1 non-finite or UNSEEN pixel(s)" in message and "first at 37" in message


def test_large_finite_delta_is_summed_not_refused(tmp_path, monkeypatch):
    """A delta of 1e6 (a dense halo in a thin shell) with a sheet of weight 1e-25 elsewhere: the kappa
    lies beyond bad_delta_bound, the sheets are searched, nothing is wrong and the sum is exact."""
    big_pixel = 77

    def deltas(index):
        values = good_deltas(index)
        values[big_pixel] = 1e6 if index == 50 else 0.0
        return values

    sheets, stored = sheets_with(tmp_path, deltas)
    weights = np.array([[0.5, 0.03, 1e-25, 0.01],
                        [0.25, 0.0, 1e-25, 0.02]])
    assert 0.25 * 1e6 > kappa_steps.bad_delta_bound(weights)  # so the search does run
    searched = []
    check = kappa_steps._check_deltas
    monkeypatch.setattr(kappa_steps, "_check_deltas", lambda *args: searched.append(args[2]) or check(*args))
    kappa = kappa_steps.born_sum_range(sheets, weights, 0, 12 * NSIDE**2)
    assert searched == [0]  # the one block was searched
    np.testing.assert_array_equal(kappa[:, big_pixel], weights[:, 0] * 1e6)  # the other deltas are 0 there
    exact = (weights.astype(np.longdouble) @ stored.astype(np.longdouble)).astype(np.float64)
    np.testing.assert_allclose(kappa, exact, rtol=1e-13, atol=1e-17)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_delta_in_a_sheet_used_by_one_source_is_reported(tmp_path, monkeypatch, value):
    def deltas(index):
        values = good_deltas(index)
        if index == 51:
            values[130] = value
        return values

    sheets, _ = sheets_with(tmp_path, deltas)
    weights = np.array([[0.02, 0.0, 0.01, 0.01],
                        [0.01, 0.0, 0.02, 0.02],
                        [0.03, 1e-3, 0.03, 0.03]])  # sheet 51 is used by the third source only
    monkeypatch.setattr(kappa_steps, "BORN_READ_PIXELS", 16)  # the bad pixel lies in piece 8 of 12
    monkeypatch.setattr(kappa_steps, "BORN_BLOCK_PIXELS", 8)
    with pytest.raises(InputError) as caught:
        kappa_steps.born_sum_range(sheets, weights, 0, 12 * NSIDE**2)
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "mass_sheets" / "delta-sheet-51.fits"))
    assert "in NESTED pixels [128, 144), first at 130" in message
    # the ranges before the bad block are fine
    assert np.all(np.isfinite(kappa_steps.born_sum_range(sheets, weights, 0, 128)))


def test_bad_delta_bound_by_hand():
    weights = np.array([[0.0, 0.02, 1e-3, 0.5],
                        [0.01, 0.03, 0.0, 0.1]])
    # largest weight of each sheet: 0.01, 0.03, 1e-3, 0.5; the smallest of those: 1e-3
    assert kappa_steps.bad_delta_bound(weights) == pytest.approx(0.5 * 1.6375e30 * 1e-3, rel=1e-15)
    # one UNSEEN delta (also rounded to float32) moves the kappa of the source weighting its sheet most by at
    # least twice the bound, whichever sheet it is in
    bound = kappa_steps.bad_delta_bound(weights)
    for unseen in (hp.UNSEEN, float(np.float32(hp.UNSEEN))):
        assert np.all(abs(unseen) * weights.max(axis=0) >= 2 * bound * (1 - 1e-7))
    assert kappa_steps.bad_delta_bound(weights[:, [1, 3]]) == pytest.approx(0.5 * 1.6375e30 * 0.03, rel=1e-15)
