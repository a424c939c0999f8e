"""Tests of lensing_ssc.science.shells: §2.1 geometry table, §2.3 overdensity conservation."""
import healpy as hp
import numpy as np
import pytest
from astropy import units as u

from lensing_ssc.core.cosmology import make_cosmology
from lensing_ssc.science.shells import (
    mean_matter_density,
    overdensity,
    pixel_volume,
    sheet_filename,
    shell_edges_from_aemit,
    shell_geometry,
)

EDGES = np.linspace(0.0, 1.0, 101)  # FastPM aemitIndex.edges for nslices = 100
H = 0.6774

# SCIENCE.md §2.1: sheet -> (z_far, z_near, chi_far [Mpc], chi_near [Mpc], dchi [Mpc])
GEOMETRY_TABLE = {
    28: (2.571, 2.448, 6055.7, 5910.3, 145.4),
    50: (1.000, 0.961, 3396.0, 3297.3, 98.7),
    66: (0.515, 0.493, 1996.3, 1920.4, 75.8),
    80: (0.250, 0.235, 1040.1, 979.8, 60.3),
    99: (0.010, 0.000, 44.6, 0.0, 44.6),
}


@pytest.fixture(scope="module")
def cosmo():
    return make_cosmology()


def test_edges_from_aemit_index():
    assert shell_edges_from_aemit(EDGES, 28) == (0.28, 0.29)
    a_far, a_near = shell_edges_from_aemit(EDGES, np.arange(28, 100))
    np.testing.assert_allclose(a_far, 0.01 * np.arange(28, 100), atol=1e-15)
    np.testing.assert_allclose(a_near, 0.01 * np.arange(29, 101), atol=1e-15)
    # non-uniform edges are used as given, not replaced by 0.01 i
    assert shell_edges_from_aemit([0.1, 0.3, 0.35, 1.0], 1) == (0.3, 0.35)


@pytest.mark.parametrize("bad_index", [-1, 100, 2.0])
def test_edges_bad_index_raises(bad_index):
    with pytest.raises(ValueError, match="sheet_index"):
        shell_edges_from_aemit(EDGES, bad_index)


def test_edges_must_increase():
    with pytest.raises(ValueError, match="edges"):
        shell_edges_from_aemit([0.0, 0.5, 0.4, 1.0], 0)


@pytest.mark.parametrize("sheet", sorted(GEOMETRY_TABLE))
def test_geometry_matches_science_table(cosmo, sheet):
    z_far, z_near, chi_far, chi_near, dchi = GEOMETRY_TABLE[sheet]
    g = shell_geometry(cosmo, *shell_edges_from_aemit(EDGES, sheet))
    assert g["z_far"] == pytest.approx(z_far, abs=5e-4)
    assert g["z_near"] == pytest.approx(z_near, abs=5e-4)
    # shell_geometry returns Mpc/h; the table is in Mpc
    assert g["chi_far"] / H == pytest.approx(chi_far, abs=0.05)
    assert g["chi_near"] / H == pytest.approx(chi_near, abs=0.05)
    assert (g["chi_far"] - g["chi_near"]) / H == pytest.approx(dchi, abs=0.1)


def test_geometry_arrays_and_volume_telescopes(cosmo):
    # Contiguous shells 28..99 fill the sphere of radius chi(a=0.28): their volumes must add up to it.
    g = shell_geometry(cosmo, 0.01 * np.arange(28, 100), 0.01 * np.arange(29, 101))
    assert g["chi_far"].shape == (72,)
    assert np.all(g["chi_far"] > g["chi_near"])
    sphere = 4.0 / 3.0 * np.pi * (cosmo.comoving_distance(1 / 0.28 - 1).to_value(u.Mpc) * H) ** 3
    assert g["volume"].sum() == pytest.approx(sphere, rel=1e-12)
    npix = 12 * 16**2
    np.testing.assert_allclose(pixel_volume(g["chi_far"], g["chi_near"], npix) * npix, g["volume"], rtol=1e-14)


def test_geometry_rejects_bad_edges(cosmo):
    with pytest.raises(ValueError, match="a_far < a_near"):
        shell_geometry(cosmo, 0.5, 0.4)
    with pytest.raises(ValueError, match="a_far < a_near"):
        shell_geometry(cosmo, 0.0, 0.01)
    with pytest.raises(ValueError, match="same shape"):
        shell_geometry(cosmo, [0.3, 0.4], [0.5])


def test_mean_matter_density():
    assert mean_matter_density(2.0, 8, 4.0) == pytest.approx(16.0)
    # A FastPM particle mass set from Om0 gives rhobar = Om0 rho_crit: rho_crit = 27.7536627 in
    # 1e10 Msun/h / (Mpc/h)^3 (independent of h).
    om, nc, box = 0.3089, 1024, 625.0
    rho_crit = make_cosmology().critical_density0.to_value(u.Msun / u.Mpc**3) / 1e10 / H**2
    assert rho_crit == pytest.approx(27.7536627, rel=1e-6)
    particle_mass = om * rho_crit * (box / nc) ** 3
    assert mean_matter_density(particle_mass, nc, box) == pytest.approx(om * rho_crit, rel=1e-14)
    with pytest.raises(ValueError, match="box_size"):
        mean_matter_density(1.0, 8, 0.0)


def test_uniform_mass_gives_zero_overdensity():
    npix, chi_far, chi_near, rhobar = 12 * 8**2, 2300.0, 2200.0, 8.6
    v_pix = 4.0 * np.pi * (chi_far**3 - chi_near**3) / 3.0 / npix
    delta = overdensity(np.full(npix, rhobar * v_pix, dtype=np.float32), npix, chi_far, chi_near, rhobar)
    assert delta.dtype == np.float64 and delta.shape == (npix,)
    np.testing.assert_allclose(delta, 0.0, atol=1e-6)  # float32 input mass: 6e-8 relative rounding
    delta64 = overdensity(np.full(npix, rhobar * v_pix), npix, chi_far, chi_near, rhobar)
    np.testing.assert_allclose(delta64, 0.0, atol=1e-13)


def test_overdensity_conserves_mass_of_random_particles():
    rng = np.random.default_rng(1)
    nside, chi_far, chi_near, rhobar = 8, 1040.1 * H, 979.8 * H, 8.57
    npix = hp.nside2npix(nside)
    n_particles = 50_000
    ipix = rng.integers(0, npix, n_particles)
    masses = rng.uniform(0.5, 1.5, n_particles) * 1e4
    mass_map = np.bincount(ipix, weights=masses, minlength=npix)
    delta = overdensity(mass_map, npix, chi_far, chi_near, rhobar)
    shell_volume = 4.0 * np.pi * (chi_far**3 - chi_near**3) / 3.0
    assert delta.mean() == pytest.approx(masses.sum() / (shell_volume * rhobar) - 1.0, rel=1e-12, abs=1e-12)


def test_poisson_particles_at_mean_density_have_zero_mean_and_poisson_variance(cosmo):
    # Particles of mass m at number density n = rhobar/m thrown uniformly in the shell's volume:
    # delta must have mean ~0 (within Poisson error 1/sqrt(N)) and variance 1/nbar_pix.
    rng = np.random.default_rng(7)
    nside = 8
    npix = hp.nside2npix(nside)
    g = shell_geometry(cosmo, 0.80, 0.81)
    rhobar, nbar_pix = 8.57, 100.0
    n_expected = nbar_pix * npix
    m_particle = g["volume"] * rhobar / n_expected
    count = rng.poisson(n_expected)
    # uniform in volume: radius^3 uniform, direction isotropic
    radius = np.cbrt(rng.uniform(g["chi_near"] ** 3, g["chi_far"] ** 3, count))
    direction = rng.normal(size=(count, 3))
    positions = direction / np.linalg.norm(direction, axis=1)[:, None] * radius[:, None]
    ipix = hp.vec2pix(nside, *positions.T, nest=True)
    mass_map = np.bincount(ipix, minlength=npix) * m_particle
    delta = overdensity(mass_map, npix, g["chi_far"], g["chi_near"], rhobar)
    assert abs(delta.mean()) < 5.0 / np.sqrt(n_expected)
    assert delta.var() == pytest.approx(1.0 / nbar_pix, rel=0.15)


def test_overdensity_bad_inputs():
    with pytest.raises(ValueError, match="mass_map"):
        overdensity(np.ones(10), 12, 2.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="rhobar"):
        overdensity(np.ones(12), 12, 2.0, 1.0, -1.0)
    with pytest.raises(ValueError, match="chi_far_mpch"):
        overdensity(np.ones(12), 12, 1.0, 2.0, 1.0)


def test_sheet_filename():
    assert sheet_filename(5, 100) == "delta-sheet-05.fits"
    assert sheet_filename(28, 100) == "delta-sheet-28.fits"
    assert sheet_filename(99, 100) == "delta-sheet-99.fits"
    assert sheet_filename(7, 1000) == "delta-sheet-007.fits"
    assert sheet_filename(999, 1000) == "delta-sheet-999.fits"
    with pytest.raises(ValueError, match="index"):
        sheet_filename(100, 100)
    with pytest.raises(ValueError, match="nslices"):
        sheet_filename(1, 0)
