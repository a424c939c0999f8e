"""Mock FastPM "usmesh" light cone with a known linear P(k), written with the exact FastPM layout.

Content
-------
1. A z = 0 density field 1 + delta on an nc^3 periodic grid of side box_size [Mpc/h] (FFT of white
   noise): "gaussian" (delta with the linear P(k) of :mod:`lensing_ssc.science.linear_power`, 1 + delta
   clipped at 0) or "lognormal" (exp of a Gaussian whose P(k) is chosen so that delta has the linear
   P(k): ln(1 + xi) transform of the correlation function on the grid). Both renormalised to mean 1.
2. Particles: a Poisson sample of the box with particles_per_cell * max(1 + delta, 1) particles per
   cell on average, at uniform random positions in their cell. The box is replicated around the
   observer (like FastPM's lc_usmesh_tiles); each replica particle gets its comoving distance chi
   [Mpc/h] and emission scale factor a(chi) (flat LCDM, astropy), is kept if chi < chi(z_max), and is
   then thinned with probability (1 + D(a) delta) / max(1 + delta, 1), D(a) = D(a)/D(1): the kept
   particles are a Poisson sample of rho_bar (1 + D(a_emit) delta) - linear growth along the light
   cone, per particle.
3. HEALPIX rows are painted from those particles exactly as FastPM does: per light-cone event and per
   (slice, NEST pixel) the summed mass, slice = int(float32(Aemit) * float32(nslices)),
   ipix = vec2pix_nest(float64(float32 Position) - observer). The particle route of the reader
   therefore reproduces the HEALPIX rows exactly (with_particles=True writes block ``1/``).

The light cone is split into ``nevents`` "events" (a ranges whose boundaries fall inside slices), so a
straddling slice appears as two runs of rows with the same IDs and every block has 1 + nevents files,
as FastPM writes. Velocities and Rmom are zero (no peculiar velocities in the mock). As in FastPM, every
replica holds the same particles (here thinned independently), so the field and its Poisson sample repeat
with the box period.

Shot noise: the kappa power of a mock is the linear Limber signal plus Poisson shot noise
C_N = int dchi q(chi)^2 / (chi^2 n_bar), n_bar = (NC / box_size)^3. With mock_config_defaults()
(n_bar = 2.6e-4 (h/Mpc)^3, nside 128) the full-sky Born kappa at zs = 1.0 measured C_ell within 6% of
S + N at ell = 50-150 (+20% at ell = 20: few modes), with N = 1.1e-8 equal to the signal at ell ~ 70
(zs = 1.5: at ell ~ 100). Cost and memory
grow with n_bar: about 2e-7 s per light-cone particle on this machine.
Units: Mpc/h for lengths, 1e10 Msun/h for masses.
"""
import os
import shutil

import bigfile
import healpy as hp
import numpy as np
from astropy.cosmology import FlatLambdaCDM

from lensing_ssc import __version__
from lensing_ssc.science.linear_power import (linear_growth_factor, linear_growth_rate,
                                              linear_power_spectrum)

# FastPM's critical density 3 H0^2 / (8 pi G) in 1e10 Msun/h / (Mpc/h)^3 (M0 = 27.7455 Omega_m (L/NC)^3).
RHO_CRIT_FASTPM = 27.7455
FIELDS = ("lognormal", "gaussian")
# particles per bincount batch when painting HEALPIX rows (bounds the temporary memory)
_PAINT_BATCH = 4_000_000
# points of the chi -> (a, D) lookup table
_TABLE_POINTS = 8192


def mock_config_defaults():
    """Defaults of the demo mock (config section ``mock:``), chosen to run in a few seconds.

    nside 128 / box 500 Mpc/h / nc 64 (7.8 Mpc/h cells, k_Nyquist = 0.40 h/Mpc, enough for ell <~ 3 nside
    at the lensing kernel peak chi ~ 1100 Mpc/h) / z_max 1.5 (source planes up to zs = 1.5, 13^3 box
    replicas). particles_per_cell 0.125 (= 32^3 particles per box, M0 = 3.3e14 Msun/h, 3.1e7 particles in
    the light cone) keeps the run to ~5-7 s; its shot noise equals the lensing signal at ell ~ 70-100
    (module docstring): raise particles_per_cell (1 -> 8x the particles and time) for cleaner maps.
    """
    return {"nside": 128, "box_size": 500.0, "nc": 64, "z_max": 1.5, "nslices": 100, "seed": 100,
            "field": "lognormal", "particles_per_cell": 0.125, "nevents": 2}


def density_grid(nc, box_size, field, rng, omega_m=0.309, h=0.6774, sigma8=0.8159):
    """z = 0 density 1 + delta on an (nc, nc, nc) periodic grid of side box_size [Mpc/h]; float64, mean 1, >= 0.

    field "gaussian": delta Gaussian with the linear P(k), clipped at delta = -1 (this lowers the
    large-scale power by ~P(delta > -1)^2 (Price's theorem): use it only where sigma_cell << 1);
    field "lognormal": 1 + delta = exp(g) with g Gaussian of power FFT[ln(1 + xi)], xi the correlation
    function of the linear P(k) on the grid, so that delta has the linear P(k) (up to P_g < 0 clipping).
    rng: numpy Generator.
    """
    if field not in FIELDS:
        raise ValueError(f"field must be one of {FIELDS}, got {field!r}")
    shape = (nc, nc, nc)
    cell = box_size / nc
    kx = 2.0 * np.pi * np.fft.fftfreq(nc, d=cell)
    kz = 2.0 * np.pi * np.fft.rfftfreq(nc, d=cell)
    kmag = np.sqrt(kx[:, None, None] ** 2 + kx[None, :, None] ** 2 + kz[None, None, :] ** 2)
    power = linear_power_spectrum(kmag, 0.0, omega_m=omega_m, h=h, sigma8=sigma8)
    if field == "lognormal":
        xi = np.fft.irfftn(power, s=shape, axes=(0, 1, 2)) * nc ** 3 / box_size ** 3
        power = np.fft.rfftn(np.log1p(xi)).real * cell ** 3
        power = np.clip(power, 0.0, None)
        power[0, 0, 0] = 0.0
    # white noise of unit variance per cell has P = cell^3
    modes = np.fft.rfftn(rng.standard_normal(shape)) * np.sqrt(power / cell ** 3)
    gaussian = np.fft.irfftn(modes, s=shape, axes=(0, 1, 2))
    density = np.exp(gaussian) if field == "lognormal" else np.clip(1.0 + gaussian, 0.0, None)
    return density / density.mean()


class _DistanceTable:
    """chi [Mpc/h] -> (a, D(a)/D(1)) on a uniform chi grid (flat LCDM, no radiation, astropy distances).

    Linear interpolation is done by hand on the uniform grid: np.interp's binary search is ~3x slower on
    the ~1e7 unsorted distances of a mock.
    """

    def __init__(self, z_max, omega_m, h):
        cosmology = FlatLambdaCDM(H0=100.0 * h, Om0=omega_m, Tcmb0=0.0)
        self.chi_max = float(cosmology.comoving_distance(z_max).value) * h
        z_fine = np.linspace(0.0, z_max, 4 * _TABLE_POINTS)
        chi_fine = cosmology.comoving_distance(z_fine).value * h
        self.chi = np.linspace(0.0, self.chi_max, _TABLE_POINTS)
        self.a = 1.0 / (1.0 + np.interp(self.chi, chi_fine, z_fine))
        self.growth = linear_growth_factor(self.a, omega_m)
        self._step = self.chi[1] - self.chi[0]

    def lookup(self, chi):
        """(a, D) at distances chi [Mpc/h] (0 <= chi <= chi_max)."""
        position = chi / self._step
        index = np.minimum(position.astype(np.int64), _TABLE_POINTS - 2)
        weight = position - index
        a = self.a[index] * (1.0 - weight) + self.a[index + 1] * weight
        growth = self.growth[index] * (1.0 - weight) + self.growth[index + 1] * weight
        return a, growth


def _sample_box(density, box_size, particles_per_cell, rng):
    """Poisson particles of intensity particles_per_cell * max(density, 1) per cell, uniform in cells.

    Returns positions (n, 3) float64 in [0, box_size) [Mpc/h] and the cell density of each particle (n,).
    """
    nc = density.shape[0]
    envelope = np.maximum(density, 1.0).ravel()
    counts = rng.poisson(particles_per_cell * envelope)
    cells = np.repeat(np.arange(envelope.size), counts)
    ijk = np.stack(np.unravel_index(cells, density.shape), axis=1)
    positions = (ijk + rng.random(ijk.shape)) * (box_size / nc)
    return positions, density.ravel()[cells]


def _replica_shifts(box_size, observer, chi_max):
    """Shifts [Mpc/h] (m, 3) of the box replicas whose cube intersects the ball |x - observer| < chi_max."""
    lo = np.floor((observer - chi_max) / box_size).astype(int)
    hi = np.floor((observer + chi_max) / box_size).astype(int)
    grids = np.meshgrid(*[np.arange(l, h + 1) for l, h in zip(lo, hi)], indexing="ij")
    shifts = np.stack([g.ravel() for g in grids], axis=1) * box_size
    nearest = np.clip(observer, shifts, shifts + box_size)
    return shifts[np.linalg.norm(nearest - observer, axis=1) < chi_max]


def _light_cone_particles(positions, cell_density, box_size, observer, table, rng):
    """Yield, per box replica, the kept particles: (position float32 (n, 3) [Mpc/h], Aemit float32 (n,),
    source index int64 (n,)). Positions are absolute (replica shift included), Aemit = a(|x - observer|)."""
    chi_max2 = table.chi_max ** 2
    envelope = np.maximum(cell_density, 1.0)
    delta = cell_density - 1.0
    for shift in _replica_shifts(box_size, observer, table.chi_max):
        relative = positions + (shift - observer)
        chi2 = np.einsum("ij,ij->i", relative, relative)
        candidates = np.flatnonzero(chi2 < chi_max2)
        a, growth = table.lookup(np.sqrt(chi2[candidates]))
        keep = rng.random(candidates.size) * envelope[candidates] < 1.0 + growth * delta[candidates]
        source = candidates[keep]
        yield (positions[source] + shift).astype(np.float32), a[keep].astype(np.float32), source


def _event_boundaries(a_min, nslices, nevents):
    """Scale factors splitting the light cone into nevents events, each in the middle of a slice."""
    raw = a_min + (1.0 - a_min) * np.arange(1, nevents) / nevents
    slices = np.floor(raw * nslices)
    if np.unique(slices).size != nevents - 1 or np.any(slices <= np.floor(a_min * nslices)):
        raise ValueError(f"nevents={nevents} is too large for {nslices} slices between a={a_min:.3f} and 1")
    return (slices + 0.5) / nslices


class _Painter:
    """Accumulates particle counts per (event segment, NEST pixel), as FastPM's per-event HEALPIX rows.

    Segment j <-> (slice, event): event boundaries lie inside slices, so a boundary slice has two segments
    and segment = slice - slice_min + event.
    """

    def __init__(self, nside, nslices, slice_min, event_bounds):
        self.npix = hp.nside2npix(nside)
        self.nside = nside
        self.nslices = nslices
        self.slice_min = slice_min
        self.event_bounds = event_bounds
        self.nsegments = nslices - slice_min + event_bounds.size
        self.counts = np.zeros(self.nsegments * self.npix, dtype=np.int32)
        self._pending = []
        self._npending = 0

    def slices_of(self, aemit):
        """FastPM slice rule in float32; (n,) int64."""
        return (aemit * np.float32(self.nslices)).astype(np.int64)

    def events_of(self, aemit):
        return np.searchsorted(self.event_bounds, aemit.astype(np.float64), side="right")

    def add(self, relative, aemit):
        """relative: (n, 3) float64 positions - observer [Mpc/h]; aemit float32 (n,)."""
        ipix = hp.vec2pix(self.nside, relative[:, 0], relative[:, 1], relative[:, 2], nest=True)
        segment = self.slices_of(aemit) - self.slice_min + self.events_of(aemit)
        self._pending.append(segment * self.npix + ipix)
        self._npending += ipix.size
        if self._npending >= _PAINT_BATCH:
            self.flush()

    def flush(self):
        if not self._pending:
            return
        keys = np.concatenate(self._pending)
        self._pending, self._npending = [], 0
        lo = keys.min()
        self.counts[lo:keys.max() + 1] += np.bincount(keys - lo)

    def rows(self, particle_mass):
        """HEALPIX rows sorted by (event, slice, pixel): ID (i8), Aemit (f4), Mass (f4), slice id (i8),
        and the row index where each event starts (nevents + 1 bounds)."""
        self.flush()
        segment_slice, event_first_segment = [], []
        lo = self.slice_min
        for bound in np.append(self.event_bounds, np.inf):
            hi = self.nslices - 1 if np.isinf(bound) else int(np.floor(bound * self.nslices))
            event_first_segment.append(len(segment_slice))
            segment_slice.extend(range(lo, hi + 1))
            lo = hi
        ids = np.flatnonzero(self.counts)
        mass = (self.counts[ids].astype(np.float64) * particle_mass).astype(np.float32)
        segment = ids // self.npix
        event_bounds = np.append(np.searchsorted(segment, event_first_segment), ids.size)
        # ids = segment * npix + ipix  ->  slice * npix + ipix
        ids += (np.asarray(segment_slice, dtype=np.int64) - np.arange(len(segment_slice)))[segment] * self.npix
        del segment
        slices = ids // self.npix
        aemit = ((slices + 0.5) / self.nslices).astype(np.float32)
        return ids, aemit, mass, slices, event_bounds


def _aemit_index(slices, nslices):
    """FastPM aemitIndex attrs for rows with the given slice ids (rows sorted by slice)."""
    size = np.bincount(slices + 1, minlength=nslices + 2).astype(np.int64)
    return {"aemitIndex.edges": np.linspace(0.0, 1.0, nslices + 1),
            "aemitIndex.offset": np.concatenate([[0], np.cumsum(size)]).astype(np.int64),
            "aemitIndex.size": size}


def _string_attr(text, terminate):
    """FastPM stores strings as <S1 arrays (NUL-terminated for healpix.scheme and ParamFile)."""
    return np.frombuffer(text.encode("ascii") + (b"\x00" if terminate else b""), dtype="S1")


def _unused_fastpm_attrs(scale_factor):
    """Per-block attrs FastPM writes but no reader uses (kept for a faithful layout)."""
    return {"a.v": np.array([scale_factor]), "a.x": np.array([scale_factor]),
            "q.scale": np.zeros(3), "q.shift": np.zeros(3),
            "q.size": np.zeros(1, dtype=np.int64), "q.strides": np.zeros(3, dtype=np.int64)}


def _header_attrs(params, particle_nc, particle_mass, a_start):
    omega_m, h = params["Omega_m"], params["h"]
    hubble_e = np.sqrt(omega_m / a_start ** 3 + 1.0 - omega_m)
    param_file = "{\n" + "".join(f"\t{key} = {value!r},\n" for key, value in sorted(params.items())) + "}"
    return {
        "BoxSize": np.array([params["boxsize"]]), "NC": np.array([particle_nc], dtype=np.int64),
        "MassTable": np.array([0.0, particle_mass, 0.0, 0.0, 0.0, 0.0]),
        "TotNumPart": np.array([0, particle_nc ** 3, 0, 0, 0, 0], dtype=np.int64),
        "OmegaM": np.array([omega_m]), "Omega0": np.array([omega_m]), "Omega_cdm": np.array([omega_m]),
        "OmegaLambda": np.array([1.0 - omega_m]), "HubbleParam": np.array([h]),
        "ParticleFraction": np.array([1.0]),
        "ScalingFactor": np.array([a_start]), "Time": np.array([a_start]),
        "GrowthFactor": np.array([float(linear_growth_factor(a_start, omega_m))]),
        "GrowthRate": np.array([float(linear_growth_rate(a_start, omega_m))]),
        "HubbleE": np.array([hubble_e]), "RSDFactor": np.array([1.0 / (a_start ** 2 * 100.0 * hubble_e)]),
        "UnitLength_in_cm": np.array([3.085678e24]), "UnitMass_in_g": np.array([1.989e43]),
        "UnitVelocity_in_cm_per_s": np.array([1e5]),
        "UsePeculiarVelocity": np.array([0], dtype=np.int32),
        "LibFastPMVersion": _string_attr(f"lensing_ssc-mock-{__version__}", terminate=False),
        "ParamFile": _string_attr(param_file, terminate=True),
        "seed": np.array([params["random_seed"]], dtype=np.int64),
    }


def _write_block(out, name, attrs, columns, event_bounds):
    """One FastPM block: attrs-only group block, then per column one file per event (after 000000);
    event_bounds: row index where each event starts, plus the row count."""
    group = out.create(name, dtype=np.dtype(("i8", (0,))), size=0, Nfile=0)
    for key, value in attrs.items():
        group.attrs[key] = value
    group.close()
    for column, data in columns.items():
        block = out.create(f"{name}/{column}", dtype=np.dtype((data.dtype, data.shape[1:])), size=0, Nfile=1)
        for lo, hi in zip(event_bounds[:-1], event_bounds[1:]):
            if hi > lo:
                block.append(np.ascontiguousarray(data[lo:hi]), Nfile=1)
        block.close()


def _check_arguments(nside, box_size, nc, z_max, nslices, seed, field, observer, particles_per_cell, nevents):
    if not hp.isnsideok(nside, nest=True):
        raise ValueError(f"nside must be a power of two, got {nside!r}")
    if not box_size > 0:
        raise ValueError(f"box_size must be > 0 [Mpc/h], got {box_size!r}")
    if int(nc) != nc or nc < 2:
        raise ValueError(f"nc must be an integer >= 2, got {nc!r}")
    if not z_max > 0:
        raise ValueError(f"z_max must be > 0, got {z_max!r}")
    if int(nslices) != nslices or nslices < 1:
        raise ValueError(f"nslices must be a positive integer, got {nslices!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if field not in FIELDS:
        raise ValueError(f"field must be one of {FIELDS}, got {field!r}")
    if observer.shape != (3,) or not np.all(np.isfinite(observer)):
        raise ValueError(f"observer must be 3 finite numbers [Mpc/h], got {observer!r}")
    if int(nevents) != nevents or nevents < 1:
        raise ValueError(f"nevents must be a positive integer, got {nevents!r}")
    particle_nc = nc * np.cbrt(particles_per_cell) if particles_per_cell > 0 else 0.0
    if particles_per_cell <= 0 or abs(particle_nc - round(particle_nc)) > 1e-9 * particle_nc:
        raise ValueError("particles_per_cell must be > 0 and nc * particles_per_cell^(1/3) an integer "
                         f"(the Header NC), got {particles_per_cell!r} with nc={nc}")
    return int(round(particle_nc))


def write_mock_lightcone(path, nside=64, box_size=500.0, nc=64, z_max=1.5, nslices=100, seed=100,
                         field="lognormal", with_particles=False, omega_m=0.309, h=0.6774, sigma8=0.8159,
                         observer=(0.0, 0.0, 0.0), particles_per_cell=0.125, nevents=2, overwrite=False):
    """Write a mock FastPM usmesh BigFile directory at path; returns a summary dict.

    nside: HEALPix nside of the HEALPIX rows; box_size [Mpc/h] and nc: box and density-grid size;
    z_max: light-cone depth (particles with chi < chi(z_max)); nslices: scale-factor slices in [0, 1];
    seed: random seed (also written as Header attr 'seed' and 'random_seed = N' in ParamFile);
    field: "lognormal" or "gaussian"; with_particles: also write block ``1/`` (Position, Velocity = 0,
    ID = source particle index, Aemit); omega_m, h, sigma8: flat LCDM; observer [Mpc/h]: observer
    position in box coordinates (Position is written in box coordinates, as FastPM);
    particles_per_cell: mean particles per grid cell (Header NC = nc * particles_per_cell^(1/3) must be an
    integer); nevents: light-cone events (files per block after the empty 000000); overwrite: replace an
    existing usmesh directory at path.

    Summary keys: path, n_particles, particle_mass [1e10 Msun/h], nrows (HEALPIX), chi_max [Mpc/h], nc
    (Header NC), nside.
    """
    observer = np.asarray(observer, dtype=np.float64)
    particle_nc = _check_arguments(nside, box_size, nc, z_max, nslices, seed, field, observer,
                                   particles_per_cell, nevents)
    path = os.fspath(path)
    if os.path.exists(path):
        if not overwrite:
            raise ValueError(f"path {path!r} exists; pass overwrite=True to replace it")
        if not os.path.isdir(os.path.join(path, "Header")):
            raise ValueError(f"path {path!r} exists and is not a usmesh directory; refusing to replace it")
    nc, nslices, seed = int(nc), int(nslices), int(seed)
    field_seed, sample_seed = np.random.SeedSequence(seed).spawn(2)
    density = density_grid(nc, box_size, field, np.random.default_rng(field_seed), omega_m, h, sigma8)
    rng = np.random.default_rng(sample_seed)
    positions, cell_density = _sample_box(density, box_size, particles_per_cell, rng)
    del density

    table = _DistanceTable(z_max, omega_m, h)
    a_start = float(table.a[-1])
    painter = _Painter(nside, nslices, int(np.float32(a_start) * np.float32(nslices)),
                       _event_boundaries(a_start, nslices, nevents))
    particle_mass = RHO_CRIT_FASTPM * omega_m * (box_size / particle_nc) ** 3
    kept = []
    n_particles = 0
    for absolute, aemit, source in _light_cone_particles(positions, cell_density, box_size, observer,
                                                        table, rng):
        in_range = painter.slices_of(aemit) < nslices  # Aemit rounds to 1.0 within ~1e-4 Mpc/h of the observer
        absolute, aemit, source = absolute[in_range], aemit[in_range], source[in_range]
        painter.add(absolute.astype(np.float64) - observer, aemit)
        n_particles += aemit.size
        if with_particles:
            kept.append((absolute, aemit, source))
    ids, row_aemit, mass, row_slice, row_event_bounds = painter.rows(particle_mass)

    params = {"boxsize": float(box_size), "nc": particle_nc, "density_grid_nc": nc, "Omega_m": omega_m,
              "h": h, "sigma8": sigma8, "random_seed": seed, "field": field, "lc_amin": a_start,
              "lc_amax": 1.0, "lc_usmesh_healpix_nside": nside, "lc_usmesh_nslices": nslices,
              "particles_per_cell": particles_per_cell, "observer": [float(v) for v in observer]}
    tmp = path + ".inprogress"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    out = bigfile.File(tmp, create=True)
    header = out.create("Header", dtype=np.dtype(("i8", (0,))), size=0, Nfile=1)
    for key, value in _header_attrs(params, particle_nc, particle_mass, a_start).items():
        header.attrs[key] = value
    header.close()
    healpix_attrs = {"M0": np.array([0.0]), "healpix.npix": np.array([painter.npix], dtype=np.int64),
                     "healpix.nside": np.array([nside], dtype=np.int64),
                     "healpix.nslices": np.array([nslices], dtype=np.int64),
                     # FastPM labels its NEST pixel ids "RING"; reproduced on purpose (SCIENCE.md Decision 2)
                     "healpix.scheme": _string_attr("RING", terminate=True),
                     **_aemit_index(row_slice, nslices), **_unused_fastpm_attrs(0.0)}
    _write_block(out, "HEALPIX", healpix_attrs,
                 {"ID": ids, "Aemit": row_aemit, "Mass": mass, "Rmom": np.zeros(ids.size, np.float32)},
                 row_event_bounds)
    if with_particles:
        _write_particles(out, kept, painter, particle_mass, a_start)
    out.close()
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
    return {"path": path, "n_particles": n_particles, "particle_mass": particle_mass, "nrows": int(ids.size),
            "chi_max": table.chi_max, "nc": particle_nc, "nside": nside}


def _write_particles(out, kept, painter, particle_mass, a_start):
    """Block ``1/``: light-cone particles sorted by Aemit, one file per event."""
    position = np.concatenate([k[0] for k in kept]) if kept else np.zeros((0, 3), np.float32)
    aemit = np.concatenate([k[1] for k in kept]) if kept else np.zeros(0, np.float32)
    source = np.concatenate([k[2] for k in kept]) if kept else np.zeros(0, np.int64)
    order = np.argsort(aemit, kind="stable")
    position, aemit, source = position[order], aemit[order], source[order]
    attrs = {"M0": np.array([particle_mass]), **_aemit_index(painter.slices_of(aemit), painter.nslices),
             **_unused_fastpm_attrs(a_start)}
    _write_block(out, "1", attrs,
                 {"Position": position, "Velocity": np.zeros_like(position), "ID": source.astype(np.int64),
                  "Aemit": aemit},
                 np.concatenate([[0], np.searchsorted(aemit, painter.event_bounds), [aemit.size]]))
