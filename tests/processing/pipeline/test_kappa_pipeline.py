"""KappaPipeline on one rank: Born sums against analytic cases and SCIENCE.md §3.1, file contract,
input errors, skip/restart, resume after a crash, and the C_ell validation."""
import json
import threading

import bigfile
import healpy as hp
import numpy as np
import pytest
from astropy.io import fits

from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.cosmology import comoving_distance_mpc, make_cosmology
from lensing_ssc.core.errors import ConfigError, InputError
from lensing_ssc.io.healpix_maps import read_header, read_nested_map, write_nested_map
from lensing_ssc.processing.pipeline.kappa import KappaPipeline
from lensing_ssc.processing.steps import kappa_steps
from lensing_ssc.processing.steps.kappa_steps import (
    compare_binned_cl,
    format_index_ranges,
    measured_cl,
    validation_ell_edges,
)
from lensing_ssc.science.born import born_weights, shell_distances_mpc, weights_hash
from lensing_ssc.science.limber import limber_cl_shells, pixel_window
from lensing_ssc.science.linear_power import linear_power_spectrum

COSMO = make_cosmology()
# SCIENCE.md §3.1 reference table for sheets 28..99: zs -> (first sheet with Wbar > 0, sum_i Wbar_i)
REFERENCE = {0.5: (67, 0.01848), 1.0: (50, 0.06564), 1.5: (40, 0.12832), 2.0: (33, 0.19788),
             2.5: (29, 0.26983)}


def write_sheet(output_dir, index, values, **extra):
    cards = [("SHEET", index, ""), ("A_FAR", 0.01 * index, ""), ("A_NEAR", 0.01 * (index + 1), "")]
    cards = [card for card in cards if card[0] not in extra] + [(k, v, "") for k, v in extra.items() if v is not None]
    write_nested_map(output_dir / "mass_sheets" / f"delta-sheet-{index:02d}.fits", values, cards)


def make_config(output_dir, source_redshifts=(1.0,), seed=7, **sections):
    return ProcessingConfig(output_dir=str(output_dir), seed=seed,
                            kappa={"source_redshifts": list(source_redshifts)},
                            pipeline={"memory_monitoring": False, **sections.pop("pipeline", {})}, **sections)


def weights_of(indices, zs):
    indices = np.asarray(indices)
    return born_weights(COSMO, 0.01 * indices, 0.01 * (indices + 1), zs)


def read_map(path):
    return read_nested_map(path, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Born sums

def test_empty_line_of_sight_gives_minus_the_sum_of_weights(tmp_path):
    sheets = np.arange(28, 100)
    for i in sheets:
        write_sheet(tmp_path, i, -np.ones(12))  # nside 1
    result = KappaPipeline(make_config(tmp_path, tuple(REFERENCE))).execute()
    assert result.success and result.tasks_done == 12
    for zs, (first_sheet, table_sum) in REFERENCE.items():
        kappa, header = read_map(tmp_path / "kappa" / f"kappa_zs{zs}_s7.fits")
        weights = weights_of(sheets, zs)
        expected = np.float32(sum(-w for w in weights))  # float64 in ascending sheet order, then float32
        np.testing.assert_array_equal(kappa, np.full(12, expected))
        assert kappa[0] == pytest.approx(-table_sum, abs=5e-6)  # table quoted to 4-5 digits
        assert header["SHEETS"] == f"{first_sheet}-99"
        assert header["NSHEETS"] == 100 - first_sheet


def test_single_nonzero_sheet_gives_weight_times_delta_and_file_contract(tmp_path):
    nside, chosen = 8, 70
    delta = np.random.default_rng(1).normal(0.0, 0.3, 12 * nside**2).astype(np.float32)
    for i in range(40, 80):  # reach z = 1.5
        write_sheet(tmp_path, i, delta if i == chosen else np.zeros(12 * nside**2), SEED=123)
    result = KappaPipeline(make_config(tmp_path, (1.0, 1.5), seed=None)).execute()  # seed from SEED header
    assert result.success
    for zs, first_sheet in ((1.0, 50), (1.5, 40)):  # SCIENCE.md §3.1: the first sheet with Wbar > 0
        path = tmp_path / "kappa" / f"kappa_zs{zs}_s123.fits"
        assert str(path) in result.outputs
        kappa, header = read_map(path)
        weight = weights_of([chosen], zs)[0]
        np.testing.assert_array_equal(kappa, (weight * delta.astype(np.float64)).astype(np.float32))
        assert header["ORDERING"] == "NESTED" and header["NSIDE"] == nside
        assert header["ZS"] == zs and header["SEED"] == 123 and "MOCK" not in header
        assert header["SHEETS"] == f"{first_sheet}-79" and header["NSHEETS"] == 80 - first_sheet
        assert header["WHASH"] == weights_hash(weights_of(range(first_sheet, 80), zs))  # of the SHEETS
        weight_keys = [key for key in header if key.startswith("W") and key[1:].isdigit()]
        assert weight_keys == [f"W{i:03d}" for i in range(first_sheet, 80)]  # the summed sheets, in order
        np.testing.assert_allclose([header[key] for key in weight_keys], weights_of(range(first_sheet, 80), zs),
                                   rtol=1e-14)
        with fits.open(path) as hdus:
            assert hdus[1].columns[0].format.endswith("E")  # float32 on disk


def test_far_sheets_do_not_contribute(tmp_path):
    nside, sheets, zs = 4, np.arange(40, 100), 0.5
    rng = np.random.default_rng(2)
    chi_s = float(comoving_distance_mpc(COSMO, zs))
    _, _, chi_mid = shell_distances_mpc(COSMO, 0.01 * sheets, 0.01 * (sheets + 1))
    deltas = {}
    for i, far in zip(sheets, chi_mid >= chi_s):
        deltas[i] = (rng.normal(0, 1e6 if far else 0.1, 12 * nside**2)).astype(np.float32)
        write_sheet(tmp_path, i, deltas[i])
    assert KappaPipeline(make_config(tmp_path, (zs,))).execute().success
    kappa, header = read_map(tmp_path / "kappa" / "kappa_zs0.5_s7.fits")
    near = sheets[chi_mid < chi_s]
    assert near[0] == 67 and header["SHEETS"] == "67-99"
    expected = sum(w * deltas[i].astype(np.float64) for i, w in zip(near, weights_of(near, zs)))
    np.testing.assert_allclose(kappa, expected, rtol=1e-6, atol=1e-9)


def test_format_index_ranges():
    assert format_index_ranges([28, 29, 30, 40, 42, 43]) == "28-30,40,42-43"
    assert format_index_ranges([5]) == "5" and format_index_ranges([]) == ""


# ---------------------------------------------------------------------------------------------
# Inputs and seed

def simple_sheets(output_dir, nside=2, sheets=range(50, 56), **extra):
    for i in sheets:
        write_sheet(output_dir, i, np.full(12 * nside**2, 0.1 * (i - 49)), **extra)


def raises_input_error(config, *fragments):
    with pytest.raises(InputError) as info:
        KappaPipeline(config).execute()
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_and_empty_sheet_directory(tmp_path):
    raises_input_error(make_config(tmp_path), str(tmp_path / "mass_sheets"), "not found")
    (tmp_path / "mass_sheets").mkdir()
    (tmp_path / "mass_sheets" / "notes.txt").write_text("no sheets here")
    raises_input_error(make_config(tmp_path), str(tmp_path / "mass_sheets"), "no delta-sheet-NN.fits")


@pytest.mark.parametrize("key", ["A_FAR", "A_NEAR"])
def test_missing_scale_factor_names_file_and_key(tmp_path, key):
    simple_sheets(tmp_path)
    write_sheet(tmp_path, 53, np.zeros(48), **{key: None})
    raises_input_error(make_config(tmp_path), "delta-sheet-53.fits", key)


def test_mixed_nside_and_ring_ordering_are_refused(tmp_path):
    simple_sheets(tmp_path)
    write_sheet(tmp_path, 54, np.zeros(12 * 4**2))
    raises_input_error(make_config(tmp_path), "delta-sheet-54.fits", "NSIDE")
    hp.write_map(str(tmp_path / "mass_sheets" / "delta-sheet-54.fits"), np.zeros(48), nest=False, overwrite=True,
                 extra_header=[("SHEET", 54), ("A_FAR", 0.54), ("A_NEAR", 0.55)])
    raises_input_error(make_config(tmp_path), "delta-sheet-54.fits", "ORDERING")


def test_missing_sheet_in_the_range_is_refused_without_output(tmp_path):
    simple_sheets(tmp_path, sheets=[50, 51, 53, 54])
    raises_input_error(make_config(tmp_path), "delta-sheet-53.fits", "missing")
    assert not (tmp_path / "kappa").exists() or not list((tmp_path / "kappa").glob("*.fits"))


def small_born_sums(tmp_path, monkeypatch, indices, seed, prefetch):
    """Random nside-4 sheets ``indices`` (their SheetInfo list), the Born sums in pieces of 16 pixels and
    products of 8, read ahead in a thread or not (``prefetch``)."""
    rng = np.random.default_rng(seed)
    for index in indices:
        write_sheet(tmp_path, index, rng.normal(0.0, 0.5, 12 * 4**2).astype(np.float32))
    monkeypatch.setattr(kappa_steps, "BORN_READ_PIXELS", 16)
    monkeypatch.setattr(kappa_steps, "BORN_BLOCK_PIXELS", 8)
    monkeypatch.setattr(kappa_steps, "has_spare_core", lambda: prefetch)
    return kappa_steps.discover_sheets(tmp_path / "mass_sheets")[0]


@pytest.mark.parametrize("prefetch", [True, False])
def test_blocked_born_sum_is_position_independent_and_matches_an_exact_sum(tmp_path, monkeypatch, prefetch):
    sheets = small_born_sums(tmp_path, monkeypatch, range(40, 60), 5, prefetch)
    weights = np.stack([weights_of(range(40, 60), zs) for zs in (0.8, 1.0, 1.5)])
    weights[1, 3] = 0.0  # a sheet used by some sources only
    whole = kappa_steps.born_sum_range(sheets, weights, 0, 64)
    pieces = [kappa_steps.born_sum_range(sheets, weights, a, b) for a, b in [(0, 16), (16, 32), (32, 64)]]
    assert np.concatenate(pieces, axis=1).tobytes() == whole.tobytes()
    deltas = np.stack([read_nested_map(s.path)[0][:64] for s in sheets]).astype(np.longdouble)
    exact = weights.astype(np.longdouble) @ deltas
    np.testing.assert_allclose(whole, exact.astype(np.float64), rtol=1e-13, atol=1e-17)


@pytest.mark.parametrize("prefetch", [True, False])
def test_born_sums_read_ahead_across_a_ranks_ranges_and_start_afresh_out_of_order(tmp_path, monkeypatch, prefetch):
    sheets = small_born_sums(tmp_path, monkeypatch, range(40, 50), 8, prefetch)
    weights = np.stack([weights_of(range(40, 50), zs) for zs in (1.0, 1.5)])
    ranges = [(64, 128), (0, 64), (128, 192)]  # a rank's tasks need not be in pixel order
    alone = {r: kappa_steps.born_sum_range(sheets, weights, *r).copy() for r in ranges}
    reads = []
    original = kappa_steps.MapRangeReader.read_into

    def read_into(reader, start, stop, out):
        reads.append((start, stop))
        original(reader, start, stop, out)

    monkeypatch.setattr(kappa_steps.MapRangeReader, "read_into", read_into)
    with kappa_steps.BornSums(sheets, weights, ranges=ranges) as sums:
        in_order = {r: sums.sum_range(*r).copy() for r in ranges}
        # every piece read once, in the ranges' order
        assert reads == [piece for first, last in ranges for piece in
                         [(a, a + 16) for a in range(first, last, 16)] for _ in sums.sheets]
        retried = sums.sum_range(0, 64).copy()  # out of order (a retried task): read on its own
        after = sums.sum_range(128, 192).copy()  # and the later ranges from there
        stray = sums.sum_range(8, 40).copy()  # a range not in the list, pieces not on its boundaries
    for r in ranges:
        assert in_order[r].tobytes() == alone[r].tobytes()
    assert retried.tobytes() == alone[(0, 64)].tobytes() and after.tobytes() == alone[(128, 192)].tobytes()
    np.testing.assert_array_equal(stray, kappa_steps.born_sum_range(sheets, weights, 8, 40))
    assert not [t for t in threading.enumerate() if t.name == "lensing_ssc-prefetch"]  # the reader is joined


def test_box_size_of_the_sheets_is_carried_to_the_kappa_header(tmp_path):
    simple_sheets(tmp_path, BOXSIZE=625.0)
    output = KappaPipeline(make_config(tmp_path)).execute().outputs[0]
    assert read_header(output)["BOXSIZE"] == 625.0


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, hp.UNSEEN])
def test_non_finite_or_unseen_pixels_are_an_error(tmp_path, value):
    simple_sheets(tmp_path)
    bad = np.zeros(48)
    bad[17] = value
    write_sheet(tmp_path, 52, bad)
    raises_input_error(make_config(tmp_path), "delta-sheet-52.fits",
                       "1 non-finite or UNSEEN pixel(s) in NESTED pixels [16, 20), first at 17")  # tasks of nside^2 = 4


def test_seed_missing_everywhere_names_both_places_and_disagreeing_seeds(tmp_path):
    simple_sheets(tmp_path)
    raises_input_error(make_config(tmp_path, seed=None), "`seed:`", "SEED")
    write_sheet(tmp_path, 50, np.zeros(48), SEED=1)
    write_sheet(tmp_path, 51, np.zeros(48), SEED=2)
    raises_input_error(make_config(tmp_path, seed=None), "disagree on header SEED")
    assert KappaPipeline(make_config(tmp_path, seed=3)).execute().outputs[0].endswith("kappa_zs1.0_s3.fits")


def test_sources_outside_the_sheets_are_config_errors(tmp_path):
    simple_sheets(tmp_path)  # sheets 50..55: z in [0.79, 1.0]
    with pytest.raises(ConfigError, match="kappa.source_redshifts.*no mass sheet in front of it"):
        KappaPipeline(make_config(tmp_path, (0.2,))).execute()
    with pytest.raises(ConfigError, match=r"kappa.source_redshifts: zs = 1.01 lies beyond the mass sheets in .*"
                                          r"ends at z = 1\b.* between z = 1 and 1.01"):
        KappaPipeline(make_config(tmp_path, (0.9, 1.01))).execute()
    assert not (tmp_path / "kappa").exists() or not any((tmp_path / "kappa").iterdir())
    assert KappaPipeline(make_config(tmp_path, (1.0,))).execute().success  # a source at the far edge is fine
    with pytest.raises(ConfigError, match="distinct"):
        KappaPipeline(make_config(tmp_path, (1.0, 1.0))).execute()


# ---------------------------------------------------------------------------------------------
# Skip, restart, resume

def test_up_to_date_outputs_are_skipped_until_restart_or_new_weights(tmp_path):
    simple_sheets(tmp_path, sheets=range(40, 60))
    assert KappaPipeline(make_config(tmp_path)).execute().tasks_done == 12
    path = tmp_path / "kappa" / "kappa_zs1.0_s7.fits"
    first_bytes, first_mtime = path.read_bytes(), path.stat().st_mtime_ns
    assert not (tmp_path / "checkpoints" / "kappa").exists()  # partial sums dropped once the maps exist

    leftover = tmp_path / "checkpoints" / "kappa" / "tasks"  # as a kill after the last write leaves them
    leftover.mkdir(parents=True)
    (leftover / "00000000.npz").write_bytes(b"partial sums")
    again = KappaPipeline(make_config(tmp_path)).execute()
    assert again.success and again.tasks_done == 0 and path.stat().st_mtime_ns == first_mtime
    assert again.outputs == [str(path)]
    assert not (tmp_path / "checkpoints" / "kappa").exists()

    restarted = KappaPipeline(make_config(tmp_path, pipeline={"resume": "restart"})).execute()
    assert restarted.tasks_done == 12 and path.read_bytes() == first_bytes

    first_hash = read_map(path)[1]["WHASH"]
    other_cosmology = make_config(tmp_path, cosmology={"H0": 70.0, "Om0": 0.3})
    assert KappaPipeline(other_cosmology).execute().tasks_done == 12
    sheets = np.arange(40, 60)
    weights = born_weights(make_cosmology(70.0, 0.3), 0.01 * sheets, 0.01 * (sheets + 1), 1.0)
    new_hash = read_map(path)[1]["WHASH"]
    assert new_hash != first_hash and new_hash == weights_hash(weights[weights > 0])


class Crash(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing retries or cleans up."""


def test_crash_mid_stage_then_rerun_gives_identical_maps(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    deltas = {i: rng.normal(0, 0.5, 12 * 4**2) for i in range(45, 70)}
    for name in ("reference", "crashed"):
        for i, delta in deltas.items():
            write_sheet(tmp_path / name, i, delta)
    reference = KappaPipeline(make_config(tmp_path / "reference", (1.0, 1.2))).execute()
    assert reference.tasks_done == 12

    original, calls = kappa_steps.MapRangeReader.read_into, []

    def crash_after_five_tasks(*args, **kwargs):  # a task reads each sheet's range once (one block)
        calls.append(args)
        if len(calls) > 5 * len(deltas):
            raise Crash()
        return original(*args, **kwargs)

    monkeypatch.setattr(kappa_steps.MapRangeReader, "read_into", crash_after_five_tasks)
    with pytest.raises(Crash):
        KappaPipeline(make_config(tmp_path / "crashed", (1.0, 1.2))).execute()
    assert not list((tmp_path / "crashed" / "kappa").glob("*.fits"))
    monkeypatch.setattr(kappa_steps.MapRangeReader, "read_into", original)

    resumed = KappaPipeline(make_config(tmp_path / "crashed", (1.0, 1.2))).execute()
    assert resumed.tasks_skipped == 5 and resumed.tasks_done == 7
    for zs in (1.0, 1.2):
        name = f"kappa_zs{zs}_s7.fits"
        resumed_bytes = (tmp_path / "crashed" / "kappa" / name).read_bytes()
        assert resumed_bytes == (tmp_path / "reference" / "kappa" / name).read_bytes()


# ---------------------------------------------------------------------------------------------
# C_ell validation

def power_law_cl(lmax):
    ell = np.arange(lmax + 1)
    return 1e-7 * (ell + 5.0) ** -1.2


def test_binned_cl_comparison_on_synfast_maps():
    nside = 32
    lmax = 3 * nside - 1
    edges = validation_ell_edges(nside)
    assert edges[0] == 10 and edges[-1] == 2 * nside + 1 and np.all(np.diff(edges) > 0)
    truth = power_law_cl(lmax) * pixel_window(nside, lmax) ** 2
    np.random.seed(5)
    ratios = []
    for _ in range(40):
        ring = hp.synfast(truth, nside, lmax=lmax)
        result = compare_binned_cl(measured_cl(hp.reorder(ring, r2n=True), edges[-1] - 1), truth, edges)
        ratios.append(result["ratio"])
    ratios = np.array(ratios)
    sigma = np.array(result["sigma_ratio"])
    # Gaussian full-sky errors: the scatter over realisations is the predicted one (40 draws: +-25%)
    np.testing.assert_allclose(ratios.std(axis=0, ddof=1) / sigma, 1.0, atol=0.35)
    assert np.all(np.abs(ratios.mean(axis=0) - 1.0) < 4 * sigma / np.sqrt(40))
    assert result["dof"] == edges.size - 1 and result["chi2"] < 4 * result["dof"]
    # the same map without the NEST conversion (RING pixels read as NEST) is white noise
    scrambled = compare_binned_cl(measured_cl(ring, edges[-1] - 1), truth, edges)
    assert scrambled["chi2"] > 10 * scrambled["dof"]


def write_usmesh_header(path, nc, sigma8, box_size=500.0, omega_m=0.309, h=0.6774):
    """A usmesh BigFile with only what the validation reads (Header attrs; HEALPIX columns exist)."""
    with bigfile.File(str(path), create=True) as handle:
        handle.create("Header")
        param_file = f"{{\n\tbox = {box_size},\n\tsigma8 = {sigma8},\n}}\x00"  # FastPM: NUL-ended <S1
        handle["Header"].attrs["ParamFile"] = np.frombuffer(param_file.encode("ascii"), dtype="S1")
        for key, value in {"OmegaM": omega_m, "HubbleParam": h, "BoxSize": box_size, "NC": nc}.items():
            handle["Header"].attrs[key] = [value]
        handle.create("HEALPIX")
        handle.create_from_array("HEALPIX/ID", np.zeros(1, "i8"))
        handle.create_from_array("HEALPIX/Mass", np.zeros(1, "f4"))


def test_validation_of_gaussian_shell_fields_with_shot_noise(tmp_path):
    """Each sheet a Gaussian field with its own Limber spectrum plus white noise of variance 1/nbar:
    the validation must find the map's C_ell = sum W^2 C^i W_pix^2 + shot noise, with the P(k) of the
    usmesh Header (sigma8 from its ParamFile, 20% above the default)."""
    nside, nc, box, sigma8 = 32, 32, 500.0, 0.98
    lmax, npix = 3 * nside - 1, 12 * nside**2
    sheets = np.arange(50, 100)
    a_far, a_near = 0.01 * sheets, 0.01 * (sheets + 1)

    def pk(k, z):
        return linear_power_spectrum(k, z, omega_m=0.309, h=0.6774, sigma8=sigma8)

    shell_cl = limber_cl_shells(np.arange(lmax + 1), COSMO, a_far, a_near, pk)
    chi_far, chi_near, _ = shell_distances_mpc(COSMO, a_far, a_near)
    volume = 4 * np.pi * ((chi_far * COSMO.h) ** 3 - (chi_near * COSMO.h) ** 3) / (3 * npix)
    nbar = (nc / box) ** 3 * volume
    np.random.seed(7)
    rng = np.random.default_rng(7)
    window2 = pixel_window(nside, lmax) ** 2  # synfast(pixwin=True) would download the table
    for i, cl, n in zip(sheets, shell_cl, nbar):
        field = hp.reorder(hp.synfast(cl * window2, nside, lmax=lmax), r2n=True)
        write_sheet(tmp_path, i, field + rng.normal(0.0, 1.0 / np.sqrt(n), npix), MOCK=True)
    write_usmesh_header(tmp_path / "usmesh", nc, sigma8, box)
    config = make_config(tmp_path, (1.0,), data_dir=str(tmp_path / "usmesh"))
    result = KappaPipeline(config).execute()  # validation is on because the sheets say MOCK = True
    assert result.success and str(tmp_path / "kappa" / "validation.json") in result.outputs
    report = json.loads((tmp_path / "kappa" / "validation.json").read_text())
    assert report["status"] == "ok" and report["power_spectrum"]["sigma8"] == sigma8
    check = report["maps"]["1.0"]
    assert check["chi2"] < 3 * check["dof"]
    ratio, sigma = np.array(check["ratio"]), np.array(check["sigma_ratio"])
    assert np.all(np.abs(ratio - 1) < 4 * sigma)
    # the shot noise is a large part of the high-ell prediction, so the check is sensitive to it
    assert check["cl_shot_noise"] > 0.3 * check["cl_predicted"][-1]
    assert fits.getheader(tmp_path / "kappa" / "kappa_zs1.0_s7.fits", 1)["MOCK"] is True


def test_validation_switch_and_skip_without_usmesh(tmp_path):
    mock, plain = tmp_path / "mock", tmp_path / "plain"
    simple_sheets(mock, nside=8, MOCK=True)
    simple_sheets(plain, nside=8)
    assert KappaPipeline(make_config(mock), validate_cl=False).execute().success
    assert not (mock / "kappa" / "validation.json").exists()
    assert KappaPipeline(make_config(plain)).execute().success  # not a mock: off by default
    assert not (plain / "kappa" / "validation.json").exists()
    # on (MOCK = True), but no usmesh Header to take the P(k) from: recorded as skipped, stage succeeds
    result = KappaPipeline(make_config(mock, pipeline={"resume": "restart"})).execute()
    assert result.success
    report = json.loads((mock / "kappa" / "validation.json").read_text())
    assert report["status"] == "skipped" and "data_dir" in report["reason"]
    # asked for explicitly on up-to-date maps of a non-mock
    write_usmesh_header(tmp_path / "usmesh", nc=32, sigma8=0.8159)
    forced = KappaPipeline(make_config(plain, data_dir=str(tmp_path / "usmesh")), validate_cl=True).execute()
    assert forced.tasks_done == 0
    assert json.loads((plain / "kappa" / "validation.json").read_text())["status"] == "ok"
