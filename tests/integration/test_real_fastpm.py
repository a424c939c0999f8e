"""The whole chain on REAL FastPM light cones (FastPM 15b6c4fd; tests/data/README.md, docs/real_fastpm.md).

In every run: the reduced real cone10 copy ``tests/data/fastpm_cone10_chain`` (all HEALPIX rows, the
particles of z < 0.5) - particle route == HEALPIX route cell by cell, the footprint of the 10-deg cone,
masked kappa and its C_ell check against Limber with the run's own P(k) file, patch placement inside the
footprint (and why it is needed), the masked Mollweide view. With ``../shared/data/fastpm_lightcone_small``
present: the full files - all 57,726 cone10 cells, the fullsky mass budget (228,605,797 crossings), and
the shipped configs on 1 and 2 MPI ranks (fullsky kappa, cone10 analysis at 5 deg) giving the same outputs.
"""
import json
from pathlib import Path

import bigfile
import healpy as hp
import numpy as np
import pytest
import yaml

from conftest import REPO, TEST_DATA, run_cli
import lensing_ssc.plots as plots
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.cosmology import make_cosmology
from lensing_ssc.core.errors import ConfigError, InputError
from lensing_ssc.io.healpix_maps import read_header, read_nested_map
from lensing_ssc.io.results import read_results
from lensing_ssc.io.usmesh import UsmeshCatalog
from lensing_ssc.processing.pipeline import AnalysisPipeline, KappaPipeline, PreprocessingPipeline
from lensing_ssc.processing.steps.analysis_steps import PATCH_MARGIN_PIXELS
from lensing_ssc.processing.steps.kappa_steps import linear_power_table, map_footprint, measured_cl
from lensing_ssc.science.born import born_weights
from lensing_ssc.science.footprint import patches_inside_footprint
from lensing_ssc.science.linear_power import linear_growth_factor, tabulated_power_spectrum, top_hat_sigma
from lensing_ssc.science.patches import gnomonic_patch

FIXTURE = TEST_DATA / "fastpm_cone10_chain" / "usmesh"
SHARED = REPO.parent / "shared" / "data" / "fastpm_lightcone_small"
needs_shared = pytest.mark.skipif(not (SHARED / "README.txt").is_file(),
                                  reason=f"real FastPM files not found at {SHARED}")
NSIDE_CONE = 256
CONE_HALF_ANGLE_DEG = 5.0  # lc_fov = 10 around +z
PARTICLE_MASS = 4388.1394944  # 1e10 Msun/h, attr M0 of block 1/
OMEGA_M = 0.3089  # of the run (Header OmegaM)
FULLSKY_CROSSINGS = 228_605_797  # README.txt: light-cone crossings of the fullsky run
FIXTURE_ANALYSIS = {"patch_size_deg": 5.0, "xsize": 32, "statistics": ["power_spectrum"], "ngal": [0],
                    "lmin": 100.0, "lmax": 500.0, "nbin": 3, "smoothing_lengths": [20.0]}


def preprocess(usmesh, output_dir, **preprocessing):
    config = ProcessingConfig(data_dir=str(usmesh), output_dir=str(output_dir), pipeline={"memory_monitoring": False},
                              preprocessing={"sheet_range": [0, 100], "chunk_size": 200_000, **preprocessing},
                              cosmology={"Om0": OMEGA_M})
    assert PreprocessingPipeline(config).execute().success
    return Path(output_dir) / "mass_sheets"


def sheet_counts(sheet_dir):
    """{slice: particles per NESTED pixel} recovered from the written sheets: (delta + 1) rhobar V_pix / M0."""
    counts = {}
    for path in sorted(Path(sheet_dir).glob("delta-sheet-*.fits")):
        delta, header = read_nested_map(path)
        volume = 4 * np.pi * (header["CHI_FAR"] ** 3 - header["CHI_NEAR"] ** 3) / (3 * delta.size)
        counts[int(header["SHEET"])] = (delta + 1.0) * header["RHOBAR"] * volume / PARTICLE_MASS
    return counts


def healpix_row_counts(usmesh, first_slice=0):
    """{slice: particles per NESTED pixel} straight from the HEALPIX rows (ID, Mass) read with bigfile."""
    f = bigfile.File(str(usmesh))
    npix = int(f["HEALPIX"].attrs["healpix.npix"][0])
    ids, mass = f["HEALPIX/ID"][:], f["HEALPIX/Mass"][:].astype(np.float64)
    slices = ids // npix
    counts = {}
    for i in np.unique(slices[slices >= first_slice]):
        rows = slices == i
        counts[int(i)] = np.bincount(ids[rows] % npix, weights=mass[rows], minlength=npix) / PARTICLE_MASS
    return counts, int(np.count_nonzero(slices >= first_slice))


def differing_cells(first, second):
    """(cells with a particle in either, cells whose whole-particle counts differ)."""
    assert sorted(first) == sorted(second)
    cells = differ = 0
    for i in first:
        a, b = np.round(first[i]), np.round(second[i])
        np.testing.assert_allclose(first[i], a, atol=1e-3)  # whole particles (float32 rounding only)
        cells += np.count_nonzero((a > 0) | (b > 0))
        differ += np.count_nonzero(a != b)
    return cells, differ


def cone_pixels_wholly_inside(nside, half_angle_deg):
    """NESTED pixels of nside whose whole area is within half_angle_deg of +z (32 points per boundary)."""
    candidates = hp.query_disc(nside, [0.0, 0.0, 1.0], np.radians(half_angle_deg), inclusive=True, nest=True)
    corners = hp.boundaries(nside, candidates, step=8, nest=True)
    return np.sort(candidates[np.all(corners[:, 2, :] >= np.cos(np.radians(half_angle_deg)), axis=1)])


# ---------------------------------------------------------------------------------------------
# Every run: the reduced real copy of cone10.

@pytest.fixture(scope="module")
def cone_chain(tmp_path_factory):
    """Preprocess (HEALPIX route, every sheet) and kappa (zs = 0.5) of the reduced cone10, on 1 rank."""
    output = tmp_path_factory.mktemp("cone10_fixture")
    preprocess(FIXTURE, output)
    config = ProcessingConfig(data_dir=str(FIXTURE), output_dir=str(output), pipeline={"memory_monitoring": False},
                              kappa={"source_redshifts": [0.5]}, cosmology={"Om0": OMEGA_M})
    assert KappaPipeline(config).execute().success
    return output


def test_fixture_particle_route_reproduces_the_healpix_rows_exactly(cone_chain, tmp_path):
    """Particles of slices 67-98 -> sheets at nside 256: the same whole-particle count in every cell as
    FastPM's own HEALPIX rows (float32 slice rule; a float64 one moves a particle at Aemit = 0.69)."""
    particles = preprocess(FIXTURE, tmp_path, dataset="particles", nside_out=NSIDE_CONE, sheet_range=[67, 100])
    rows, nrows = healpix_row_counts(FIXTURE, first_slice=67)
    cells, differ = differing_cells(sheet_counts(particles), rows)
    assert (cells, differ) == (nrows, 0) and nrows == 16_679
    healpix = {i: c for i, c in sheet_counts(cone_chain / "mass_sheets").items() if i >= 67}
    assert differing_cells(healpix, rows) == (nrows, 0)


def test_fixture_footprint_is_the_cone(cone_chain):
    """Pixels reached by any slice = every pixel the cone touches; observed = those wholly inside it."""
    sheets = cone_chain / "mass_sheets"
    footprint, header = read_nested_map(sheets / "footprint.fits")
    expected = cone_pixels_wholly_inside(NSIDE_CONE, CONE_HALF_ANGLE_DEG)
    np.testing.assert_array_equal(np.flatnonzero(footprint), expected)
    assert expected.size == 1404 and header["NOBSERVD"] == 1404 and header["LC_FOV"] == 10.0
    assert header["FSKY"] == pytest.approx(1404 / hp.nside2npix(NSIDE_CONE), rel=1e-12)
    reached = np.zeros(hp.nside2npix(NSIDE_CONE), dtype=bool)
    f = bigfile.File(str(FIXTURE))
    reached[f["HEALPIX/ID"][:] % hp.nside2npix(NSIDE_CONE)] = True
    assert header["NREACHED"] == np.count_nonzero(reached) == 1624
    qc = json.loads((sheets / "qc.json").read_text())
    assert qc["footprint"]["observed_pixels"] == 1404 and qc["footprint"]["holes_filled"] == 0
    assert qc["footprint"]["cone_fsky"] == pytest.approx((1 - np.cos(np.radians(5))) / 2)
    assert read_header(sheets / "delta-sheet-70.fits")["FOOTPRNT"] == "footprint.fits"
    assert json.loads((sheets / "manifest.json").read_text())["footprint"]["observed_pixels"] == 1404


@pytest.mark.parametrize("nranks", [2, 3])
def test_fixture_footprint_and_sheets_on_more_ranks_are_the_same_files(cone_chain, tmp_path, nranks):
    """The partial-sky QC shares its neighbour look-ups between the ranks (packed bits OR-ed by an
    allreduce): the footprint file, the qc.json footprint record and the sheets equal the 1-rank ones."""
    config = tmp_path / "preprocess.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(FIXTURE), "output_dir": str(tmp_path), "pipeline": {"memory_monitoring": False},
        "preprocessing": {"sheet_range": [0, 100], "chunk_size": 200_000}, "cosmology": {"Om0": OMEGA_M}}))
    result = run_cli(["preprocess", str(config)], nranks=nranks, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ours, reference = tmp_path / "mass_sheets", cone_chain / "mass_sheets"
    names = sorted(path.name for path in reference.glob("*.fits"))
    assert "footprint.fits" in names and len(names) > 30
    assert names == sorted(path.name for path in ours.glob("*.fits"))
    for name in names:
        assert (ours / name).read_bytes() == (reference / name).read_bytes(), name
    footprints = [json.loads((directory / "qc.json").read_text())["footprint"] for directory in (ours, reference)]
    assert footprints[0] == footprints[1] and footprints[0]["observed_pixels"] == 1404


def test_fixture_kappa_is_zero_outside_and_masked_validation_agrees_with_limber(cone_chain):
    path = cone_chain / "kappa" / "kappa_zs0.5_s100.fits"
    kappa, header = read_nested_map(path)
    observed = map_footprint(path)
    sheet_footprint, _ = read_nested_map(cone_chain / "mass_sheets" / "footprint.fits")
    np.testing.assert_array_equal(observed, sheet_footprint > 0)
    assert header["FSKY"] == pytest.approx(1404 / hp.nside2npix(NSIDE_CONE)) and header["FOOTPRNT"] == "footprint.fits"
    assert np.all(kappa[~observed] == 0.0)
    # inside: the Born sum of the whole sheets (float64 in ascending sheet order, as the stage sums)
    sheets = sorted((cone_chain / "mass_sheets").glob("delta-sheet-*.fits"))
    a_far = np.array([read_header(p)["A_FAR"] for p in sheets])
    a_near = np.array([read_header(p)["A_NEAR"] for p in sheets])
    weights = born_weights(make_cosmology(67.74, OMEGA_M), a_far, a_near, 0.5)
    total = np.zeros(kappa.size)
    for path, weight in zip(sheets, weights):
        if weight:
            total += weight * read_nested_map(path)[0]
    np.testing.assert_array_equal(kappa[observed], total.astype(np.float32)[observed])
    # why the mask: -sum(W) where no particle ever arrived, too little mass in the pixels cut by the cone edge
    empty = np.isclose(total, -weights.sum(), rtol=1e-6, atol=0.0)
    edge = ~empty & ~observed
    assert not np.any(empty & observed) and np.count_nonzero(edge) > 100
    assert total[edge].mean() < total[observed].mean() - 5 * total[observed].std() / np.sqrt(np.count_nonzero(edge))
    report = json.loads((cone_chain / "kappa" / "validation.json").read_text())
    assert report["status"] == "ok" and report["fsky"] == header["FSKY"]  # automatic: powerspec.txt found
    assert "powerspec.txt" in report["power_spectrum"]["model"] and "sigma8" not in report["power_spectrum"]
    bins = report["maps"]["0.5"]
    for ell, ratio, sigma in zip(bins["ell"], bins["ratio"], bins["sigma_ratio"]):
        if ell > 100:  # above the mode coupling of a 10-deg mask
            assert abs(ratio - 1.0) < 3 * sigma, (ell, ratio, sigma)


def test_the_runs_linear_power_table():
    """The P(k) file the validation finds through the ParamFile: sigma8 = 0.815897 as the data's README
    says, table values at its nodes, growth D(z)^2, zero outside, and a rescale to another sigma8."""
    path = linear_power_table(UsmeshCatalog(str(FIXTURE)))
    assert path == FIXTURE.parent / "powerspec.txt"
    k, p = np.loadtxt(path, unpack=True)
    assert top_hat_sigma(k, p, 8.0) == pytest.approx(0.815897, abs=2e-4)
    pk = tabulated_power_spectrum(k, p, omega_m=OMEGA_M)
    np.testing.assert_allclose(pk(k[::50], 0.0), p[::50], rtol=1e-12)
    growth = linear_growth_factor(0.5, OMEGA_M) ** 2
    np.testing.assert_allclose(pk(k[::50], 1.0), growth * p[::50], rtol=1e-12)
    assert np.all(pk(np.array([k[0] / 2, k[-1] * 2]), 0.0) == 0.0)
    doubled = tabulated_power_spectrum(k, p, omega_m=OMEGA_M, sigma8=2 * top_hat_sigma(k, p, 8.0))
    np.testing.assert_allclose(doubled(k[::50], 0.0), 4 * p[::50], rtol=1e-10)


def test_masked_estimator_recovers_the_full_sky_spectrum():
    """The validation's estimator on a Gaussian map of known C_ell cut to a 20-deg cap (fsky 0.03):
    anafast of the masked map / fsky is within a few Gaussian sigmas of the input above ell ~ 50."""
    nside, lmax = 64, 127
    ell = np.arange(lmax + 1)
    cl = np.zeros(lmax + 1)
    cl[2:] = 1e-8 * (ell[2:] / 50.0) ** -1.0
    np.random.seed(3)
    nested = hp.reorder(hp.synfast(cl, nside, lmax=lmax), r2n=True)
    observed = np.zeros(nested.size, dtype=bool)
    observed[hp.query_disc(nside, [0.0, 0.0, 1.0], np.radians(20.0), nest=True)] = True
    measured = measured_cl(nested, lmax, observed)
    band = (ell >= 50) & (ell <= 120)
    fsky = observed.mean()
    ratio = measured[band].sum() / cl[band].sum()
    sigma = np.sqrt(2.0 / ((2 * ell[band] + 1).sum() * fsky))
    assert abs(ratio - 1.0) < 4 * sigma
    # a full footprint is the full-sky estimator (but for the removed mean, ell = 0; the input has no dipole)
    np.testing.assert_allclose(measured_cl(nested, lmax, np.ones_like(observed))[2:], measured_cl(nested, lmax)[2:],
                               rtol=1e-10)


def test_fixture_analysis_places_only_patches_inside_the_footprint_and_plots_mask(cone_chain, tmp_path, monkeypatch):
    def config(**analysis):
        return ProcessingConfig(output_dir=str(cone_chain), pipeline={"memory_monitoring": False, "resume": "restart"},
                                analysis={**FIXTURE_ANALYSIS, **analysis})

    centers = [[0.0, 0.0], [0.3, 90.0]]
    assert AnalysisPipeline(config(centers=centers)).execute().success
    results = read_results(cone_chain / "stats" / "stats_zs0.5_s100_oa5.h5")
    np.testing.assert_allclose(results["patches/centers"], np.radians(centers))
    assert np.all(np.isfinite(results["power_spectra/ngal_0/cl"]))
    # the Mollweide view masks the unobserved sky and takes its colour range from the observed pixels
    shown, original = {}, plots.hp.mollview

    def mollview(values, **kwargs):
        shown.update(values=values.copy(), **kwargs)
        return original(values, **kwargs)

    monkeypatch.setattr(plots.hp, "mollview", mollview)
    kappa_path = cone_chain / "kappa" / "kappa_zs0.5_s100.fits"
    png = plots.plot_kappa_map(plots.load_results(cone_chain / "stats" / "stats_zs0.5_s100_oa5.h5"), kappa_path, tmp_path)
    assert png.is_file()
    observed, kappa = map_footprint(kappa_path), read_nested_map(kappa_path)[0]
    assert np.all(shown["values"][~observed] == hp.UNSEEN)
    assert (shown["min"], shown["max"]) == pytest.approx(tuple(np.percentile(kappa[observed], [0.5, 99.5])), rel=1e-5)
    with pytest.raises(ConfigError, match=r"analysis.centers: 1 of 2 patches.*\[2, 0\]"):
        AnalysisPipeline(config(centers=[[0.0, 0.0], [2.0, 0.0]])).execute()
    with pytest.raises(InputError, match="none of the 1075 Fibonacci patches"):  # pole cut: none near +z
        AnalysisPipeline(config()).execute()


def test_accepted_patches_do_not_depend_on_the_unobserved_sky(cone_chain):
    """Why the placement rule: a patch accepted at the fixture's 5 deg / 32 pixels changes by less than
    1e-6 of the kappa rms whatever the map holds outside the footprint (here 1.0, ~150 rms):
    the projector's cubic spline (its prefilter decays by 0.27 per pixel) and nearest-pixel sampling
    reach no unobserved pixel within the margin. A patch past the limit changes at the percent level."""
    path = cone_chain / "kappa" / "kappa_zs0.5_s100.fits"
    kappa, _ = read_nested_map(path)
    observed = map_footprint(path)
    side, xsize = FIXTURE_ANALYSIS["patch_size_deg"], FIXTURE_ANALYSIS["xsize"]
    theta = np.radians(np.arange(0.0, 1.6, 0.1))
    accepted = patches_inside_footprint(observed, theta, np.zeros_like(theta), side, PATCH_MARGIN_PIXELS * side / xsize)
    assert accepted[:5].all() and not accepted[-1]
    zero_outside = hp.reorder(kappa, n2r=True)
    junk_outside = hp.reorder(np.where(observed, kappa, 1.0), n2r=True)
    change = np.array([np.abs(gnomonic_patch(zero_outside, t, 0.0, side, xsize)
                              - gnomonic_patch(junk_outside, t, 0.0, side, xsize)).max() for t in theta])
    assert change[accepted].max() < 1e-6 * kappa[observed].std()
    assert change[-1] > 1e-2


# ---------------------------------------------------------------------------------------------
# With the full files: the numbers and the shipped configs on 1 and 2 ranks.

def shipped_config(name, output_dir):
    """configs/{name}.yaml with data_dir pointing at SHARED and output_dir at output_dir."""
    config = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    run = name.split("_", 1)[1]
    config.update(data_dir=str(SHARED / run / "usmesh"), output_dir=str(output_dir))
    config.setdefault("pipeline", {})["memory_monitoring"] = False
    path = Path(output_dir) / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def shipped_runs(tmp_path_factory):
    """The shipped configs through the CLI on 1 rank (fullsky to kappa, cone10 to analyze)."""
    if not (SHARED / "README.txt").is_file():
        pytest.skip(f"real FastPM files not found at {SHARED}")
    root = tmp_path_factory.mktemp("shipped")
    runs = {}
    for name, stages in (("fastpm_fullsky", "preprocess,kappa"), ("fastpm_cone10", "preprocess,kappa,analyze")):
        config = shipped_config(name, root / name / "ranks1")
        result = run_cli(["run", str(config), "--stages", stages], timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = (config.parent, stages)
    return runs


@needs_shared
def test_full_cone10_particle_route_reproduces_all_57726_cells(shipped_runs, tmp_path):
    particles = preprocess(SHARED / "cone10" / "usmesh", tmp_path, dataset="particles", nside_out=NSIDE_CONE)
    healpix = sheet_counts(shipped_runs["fastpm_cone10"][0] / "mass_sheets")
    rows, nrows = healpix_row_counts(SHARED / "cone10" / "usmesh")
    assert nrows == 57_726
    assert differing_cells(sheet_counts(particles), rows) == (57_726, 0)
    assert differing_cells(healpix, rows) == (57_726, 0)


@needs_shared
def test_full_fullsky_sheets_hold_their_rows_and_count_every_crossing(shipped_runs):
    sheets = shipped_runs["fastpm_fullsky"][0] / "mass_sheets"
    f = bigfile.File(str(SHARED / "fullsky" / "usmesh"))
    ids, mass = f["HEALPIX/ID"][:], f["HEALPIX/Mass"][:].astype(np.float64)
    row_mass = np.bincount(ids // 12288, weights=mass, minlength=100)  # duplicated IDs of slices 44/50/59 add up
    total = 0.0
    for path in sorted(sheets.glob("delta-sheet-*.fits")):
        delta, header = read_nested_map(path)
        volume = 4 * np.pi * (header["CHI_FAR"] ** 3 - header["CHI_NEAR"] ** 3) / 3
        stored = np.sum(delta + 1.0) * header["RHOBAR"] * volume / delta.size
        assert header["MASS"] == pytest.approx(row_mass[header["SHEET"]], rel=1e-9)
        assert stored == pytest.approx(row_mass[header["SHEET"]], rel=1e-6)
        total += header["MASS"]
    assert total / PARTICLE_MASS == pytest.approx(FULLSKY_CROSSINGS, rel=1e-5)
    footprint, header = read_nested_map(sheets / "footprint.fits")
    assert footprint.all() and header["FSKY"] == 1.0


@needs_shared
def test_full_two_ranks_give_the_same_kappa_and_cone10_statistics(shipped_runs):
    for name, (ranks1, stages) in shipped_runs.items():
        config = shipped_config(name, ranks1.parent / "ranks2")
        result = run_cli(["run", str(config), "--stages", stages], nranks=2, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        for zs in (0.5, 1.0):
            one, _ = read_nested_map(ranks1 / "kappa" / f"kappa_zs{zs}_s100.fits", dtype=np.float32)
            two, _ = read_nested_map(config.parent / "kappa" / f"kappa_zs{zs}_s100.fits", dtype=np.float32)
            np.testing.assert_array_equal(one, two)
            if name == "fastpm_cone10":
                files = [d / "stats" / f"stats_zs{zs}_s100_oa5.h5" for d in (ranks1, config.parent)]
                first, second = (read_results(p) for p in files)
                assert sorted(first) == sorted(second) and first["patches/centers"].shape == (5, 2)
                for key in first:
                    np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    validation = json.loads((shipped_runs["fastpm_fullsky"][0] / "kappa" / "validation.json").read_text())
    assert validation["status"] == "ok" and validation["fsky"] == 1.0
