"""Steps of the preprocessing stage: FastPM usmesh light cone -> HEALPix overdensity sheets (SCIENCE.md §2).

    DataDiscoveryStep             rank 0 opens and validates the usmesh, picks the non-empty sheets of
                                  ``preprocessing.sheet_range``, the seed and the shell geometry, checks
                                  the cosmology against the header; broadcasts a PreprocessingPlan
    CoordinateTransformationStep  rank 0 fixes and checks the route from rows to NEST pixels
    MassSheetGenerationStep       one task per sheet on all ranks: streamed bincount, overdensity,
                                  ``{output_dir}/mass_sheets/delta-sheet-NN.fits``; checkpointed per sheet
    QualityControlStep            rank 0: mass conservation, finite sheets, mean overdensity -> qc.json;
                                  the light-cone footprint -> ``mass_sheets/footprint.fits``
    ManifestWritingStep           rank 0: manifest.json, then drops the task checkpoints

The coordinate transformation itself (``ID - slice npix`` for the ID range of the slice, or
observer-relative ``Position`` -> unit vector -> ``vec2pix_nest`` with the slice
``int(float32(Aemit) * float32(nslices))``) is done by :meth:`lensing_ssc.io.usmesh.UsmeshCatalog.iter_run_pixels`
and :meth:`~lensing_ssc.io.usmesh.UsmeshCatalog.iter_slice_chunks`, streamed chunk by chunk inside the
mass-sheet tasks; step 2 only chooses it and checks it before any sheet is written.

Memory per rank (one sheet at a time), HEALPIX rows: FastPM writes each light-cone event's rows sorted
by ID, so a slice is one or two sorted runs (:meth:`UsmeshCatalog.sorted_id_runs`), merged one block of
``_MASS_BLOCK`` pixels at a time (:func:`lensing_ssc.science.sorted_runs.merged_mass_blocks`); each block
is converted to float32 delta and written at once, and the cards that need every pixel (MASS, NROWS,
DMEAN, COVERED) are filled in after the pixels. A rank holds the packed reached bits (npix / 8 B), one
block and two chunks of rows per run: ~0.1 GiB + 80 B x chunk_size at nside 8192
(:func:`estimate_memory_mb`). Measured at nside 1024, 2e7 rows: +18 MB above the interpreter for the
whole stage (the whole-map version: +97 MB; the original method +352 MB). Particles (and HEALPIX rows in
no ID order) keep the whole-map route: a float64 mass map (8 B x npix) accumulated chunk by chunk
(:func:`accumulate_sheet_mass`), then handed to the same block loop.

Footprint (partial-sky light cones, FastPM ``lc_fov`` < 360): each sheet task also records which pixels
its slice reached (a packed bit map, npix/8 bytes, in its checkpoint); quality control ORs them and keeps
the pixels whose whole area was inside the light cone (:func:`lensing_ssc.science.footprint.observed_footprint`),
written as ``mass_sheets/footprint.fits`` (NESTED, uint8 1 = observed, 0 = not; header FSKY, NOBSERVD,
NREACHED, NHOLES). The sheets themselves keep delta = -1 where no mass arrived; every sheet names the
footprint file in its header card FOOTPRNT, and the kappa stage masks the unobserved sky with it.

Checkpoints (DESIGN.md §6): task id = sheet index. A task writes its FITS file atomically, then its
npz bookkeeping (mass, rows, mean delta, reached pixels); a rerun skips checkpointed tasks, and a task whose sheet
already exists with matching identity cards (same input, cosmology, sheet, seed) reads that
bookkeeping from the header instead of recomputing (unless ``preprocessing.overwrite`` or --restart).
Sheets depend only on the usmesh rows of their slice: identical bytes for any rank count or chunk size.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from lensing_ssc import __version__
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.cosmology import check_against_header, make_cosmology
from lensing_ssc.core.errors import ConfigError, InputError, ValidationError
from lensing_ssc.io.atomic import ensure_free_disk, write_json_atomic
from lensing_ssc.io.prefetch import has_spare_core, prefetched
from lensing_ssc.io.healpix_maps import read_header, read_nested_map, write_nested_map_blocks
from lensing_ssc.io.usmesh import HEALPIX_DATASET, PARTICLE_DATASET, UsmeshCatalog, UsmeshError
from lensing_ssc.parallel import allreduce_or, get_comm, raise_together, root_then_bcast
from lensing_ssc.processing.resources import check_memory_estimate
from lensing_ssc.processing.runner import StageRunner, Task
from lensing_ssc.processing.steps.base import BaseStep
from lensing_ssc.science.footprint import count_bits, observed_footprint_bits
from lensing_ssc.science.shells import mean_matter_density, pixel_volume, sheet_filename, shell_geometry
from lensing_ssc.science.sorted_runs import merged_mass_blocks

log = logging.getLogger("lensing_ssc.preprocess")

STAGE = "preprocess"
SHEETS_SUBDIR = "mass_sheets"
QC_FILE = "qc.json"
FOOTPRINT_FILE = "footprint.fits"
MANIFEST_FILE = "manifest.json"
# write_mock_lightcone writes Header LibFastPMVersion = "lensing_ssc-mock-<version>"; real FastPM a number.
MOCK_LIBFASTPM_PREFIX = "lensing_ssc-mock"
# Rows read beyond the aemitIndex.offset range of a slice on each side (only rows whose slice id matches
# are kept): absorbs offsets that are off by a few rows, like the original's extra_index = 100.
SLICE_ROW_MARGIN = 1024
# Conservation, two checks against the float64 sum of the Mass of the rows: (1) the float64 binned map
# (header MASS) to CONSERVATION_RTOL; (2) the mass recovered from the stored float32 sheet,
# sum((delta + 1) rhobar V_pix), within its rounding bound: each pixel is off by <= 2**-24 |delta| rhobar
# V_pix and |delta| <= delta + 2, so the sum is off by <= 2**-24 (mean delta + 2) rhobar V_shell. The bound
# is not relative to the mass: masses come in multiples of the particle mass, so in a sparse shell
# (delta ~ -1 everywhere) the rounding errors of equal pixels add up instead of averaging out.
CONSERVATION_RTOL = 1e-9
FLOAT32_ROUNDING = 2.0 ** -24
# Mean delta of a full-sky sheet: warn beyond this many Poisson sigmas (1 / sqrt(expected particles)).
MEAN_DELTA_SIGMAS = 5.0
# A sheet is "full sky" when all 48 nside-2 regions (12 at nside 1) hold mass.
COARSE_NSIDE = 2
# Bytes per row held while a chunk is processed (reader columns, mask, int64 pixels, float64 masses).
BYTES_PER_CHUNK_ROW = 50 + 32 + 26  # + one prefetched chunk (ID and mass) in flight + its rows regrouped
# A later chunk whose pixels span more than this is binned range by range (its rows regrouped by range,
# 26 B per row): the bincount temporary stays 8 B x _BIN_SPAN, not 8 B x npix (a chunk straddling two
# light-cone events, or particles, which come in no pixel order).
_BIN_SPAN = 1 << 22
# np.mean(x, dtype=np.float64) of a float32 array converts it in buffers of np.getbufsize() = 8192 values,
# sums each buffer pairwise and adds the buffer sums in order: Float64Mean sums in the same groups.
_NUMPY_SUM_GROUP = 8192
# Pixels per block of the mass map as it is binned, converted to delta and written: a multiple of
# _NUMPY_SUM_GROUP (the mean of the sheet is summed block by block) and of 8 (the reached bits); 2 MiB of
# float64.
_MASS_BLOCK = 1 << 18
# Pixels per step of the float64 -> float32 overdensity conversion (one scratch buffer, cache-sized).
_OVERDENSITY_BLOCK = 1 << 16
# HEALPIX rows of a slice in at most this many ID-sorted runs (FastPM: one per light-cone event holding the
# slice, 1 or 2) are merged block by block; more runs mean rows in no order: whole-map accumulation.
MAX_SORTED_RUNS = 8
# Bytes per row held per sorted run: the chunk being binned, ID (8 B), Mass (4 B), the float64 weights
# (8 B) and the bincount offsets (8 B), plus the next chunk read ahead (ID and Mass, 12 B).
BYTES_PER_RUN_ROW = 28 + 12
# An existing sheet tells which pixels its slice reached (delta != -1) only while one particle per pixel
# is resolved in float32: delta = M / E - 1 rounds to -1 when M / E < 2**-25, E the expected mass per pixel.
MAX_PARTICLES_PER_PIXEL_EXACT = 2.0 ** 24
# Header cards holding the bookkeeping of a sheet (read back when an existing sheet is reused).
BOOKKEEPING_CARDS = ("MASS", "NROWS", "DMEAN", "COVERED")


# ---------------------------------------------------------------------------------------------
# The plan: what rank 0 learns from the usmesh, broadcast to every rank.

@dataclass(frozen=True)
class SheetPlan:
    """One sheet: index, output file, shell edges (a_far < a_near; z_far > z_near; chi [Mpc/h]), full-sky
    shell volume [(Mpc/h)^3] and the nominal rows of its slice (aemitIndex.offset)."""

    index: int
    path: str
    a_far: float
    a_near: float
    z_far: float
    z_near: float
    chi_far: float
    chi_near: float
    volume: float
    nominal_rows: int


@dataclass
class PreprocessingPlan:
    """Everything the sheet tasks need, picklable (no open files)."""

    usmesh: str
    dataset: str
    nside: int
    nslices: int
    edges: np.ndarray
    sheets: Tuple[SheetPlan, ...]
    seed: Optional[int]
    mock: bool
    box_size: float
    nc: int
    particle_mass: float
    rhobar: float
    observer: Tuple[float, float, float]
    H0: float
    Om0: float
    identity: Dict[str, object]
    route: Dict[str, object] = field(default_factory=dict)
    lc_fov_deg: Optional[float] = None  # FastPM lc_fov from the ParamFile (recorded, not used)
    up_to_date: bool = False  # the manifest records a finished run of this very stage (see is_complete)

    @property
    def npix(self) -> int:
        return 12 * self.nside ** 2

    @property
    def input_id(self) -> str:
        """sha256[:16] of the usmesh content identity (header card INPUTID)."""
        blob = json.dumps(self.identity, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def sheet(self, index: int) -> SheetPlan:
        return next(s for s in self.sheets if s.index == index)

    def open_catalog(self) -> UsmeshCatalog:
        """The usmesh dataset of the plan (each rank opens its own)."""
        return UsmeshCatalog(self.usmesh, dataset=self.dataset,
                             nside_out=self.nside if self.dataset == PARTICLE_DATASET else None,
                             observer=self.observer)

    def identity_cards(self, sheet: SheetPlan) -> List[Tuple[str, object, str]]:
        """The header cards that say what the sheet was made from (compared to reuse a sheet)."""
        cards = [
            ("SHEET", sheet.index, "sheet index: scale factor in [A_FAR, A_NEAR]"),
            ("A_FAR", sheet.a_far, "scale factor of the far shell edge"),
            ("A_NEAR", sheet.a_near, "scale factor of the near shell edge"),
            ("H0", self.H0, "km/s/Mpc, cosmology of the distances"),
            ("OM0", self.Om0, "matter density of the distances"),
            ("DATASET", self.dataset, "usmesh dataset read (HEALPIX or particles)"),
            ("INPUTID", self.input_id, "sha256[:16] of the usmesh identity"),
        ]
        if self.seed is not None:
            cards.append(("SEED", self.seed, "simulation seed"))
        return cards

    def header_cards(self, sheet: SheetPlan, book: Dict[str, object]) -> List[Tuple[str, object, str]]:
        """All header cards of a sheet file; ``book`` is its bookkeeping (mass, rows, mean_delta, full_sky)."""
        cards = self.identity_cards(sheet) + [
            ("Z_FAR", sheet.z_far, "redshift of the far shell edge"),
            ("Z_NEAR", sheet.z_near, "redshift of the near shell edge"),
            ("CHI_FAR", sheet.chi_far, "[Mpc/h] comoving distance of the far edge"),
            ("CHI_NEAR", sheet.chi_near, "[Mpc/h] comoving distance of the near edge"),
            ("MASS", float(book["mass"]), "[1e10 Msun/h] total mass in the sheet"),
            ("NROWS", int(book["rows"]), f"usmesh rows summed ({self.dataset})"),
        ]
        if self.dataset == PARTICLE_DATASET:
            cards.append(("NPART", int(book["rows"]), "particles in the sheet"))
        cards += [
            ("DMEAN", float(book["mean_delta"]), "mean of the stored overdensity"),
            ("COVERED", bool(book["full_sky"]), "mass in every nside-2 region"),
            ("RHOBAR", self.rhobar, "[1e10 Msun/h (Mpc/h)^-3] mean matter density"),
            ("BOXSIZE", self.box_size, "[Mpc/h] simulation box side"),
            ("FOOTPRNT", FOOTPRINT_FILE, "observed-sky map of the light cone (same dir)"),
            ("MOCK", self.mock, "made from a lensing_ssc mock light cone"),
            ("CREATOR", f"lensing_ssc {__version__}", "delta = M/(rhobar V_pix) - 1, SCIENCE.md 2.3"),
        ]
        return cards


def sheets_directory(config: ProcessingConfig) -> Path:
    return Path(config.output_dir) / SHEETS_SUBDIR


def _usmesh_identity(catalog: UsmeshCatalog, seed: Optional[int]) -> Dict[str, object]:
    """Content identity of the usmesh (not its path, so moving it does not invalidate the sheets)."""
    offsets = catalog.offsets
    return {"dataset": catalog.dataset, "nrows": catalog.nrows, "npix": catalog.npix,
            "nslices": catalog.nslices, "offsets_sha256": hashlib.sha256(offsets.tobytes()).hexdigest()[:16],
            "libfastpm": str(catalog.attrs.get("LibFastPMVersion", "")), "seed": seed,
            "box_size": catalog.box_size, "nc": catalog.nc, "particle_mass": catalog.particle_mass}


def open_usmesh(config: ProcessingConfig) -> UsmeshCatalog:
    """Open ``data_dir`` with the configured dataset; InputError naming the path for a bad usmesh."""
    path = config.data_dir
    if not path:
        raise ConfigError(["data_dir: expected the FastPM usmesh directory to preprocess, got nothing"],
                          config.source)
    if not os.path.isdir(path):
        problem = "is not a directory" if os.path.exists(path) else "usmesh directory not found"
        hint = " (mock.enabled is true: run `lensing-ssc mock CONFIG` first)" if config.mock.enabled else ""
        raise InputError(f"{path}: {problem} (data_dir); expected a FastPM usmesh BigFile directory with "
                         f"Header/ and HEALPIX/ or 1/ blocks{hint}")
    prep = config.preprocessing
    try:
        catalog = UsmeshCatalog(path, dataset=prep.dataset, nside_out=prep.nside_out, observer=prep.observer)
    except UsmeshError as exc:
        raise InputError(str(exc)) from None
    problems = catalog.validate()
    if problems:
        raise InputError(f"{path}: usmesh (dataset {prep.dataset}) cannot be preprocessed: " + "; ".join(problems))
    return catalog


def build_plan(config: ProcessingConfig) -> PreprocessingPlan:
    """Rank 0: validate the usmesh, choose the sheets and compute their geometry."""
    catalog = open_usmesh(config)
    path = catalog.path
    cosmo = make_cosmology(config.cosmology.H0, config.cosmology.Om0)
    for warning in check_against_header(cosmo, catalog.omega_m, catalog.hubble_param):
        log.warning("preprocess: %s", warning)
    start, stop = config.preprocessing.sheet_range
    nonempty = catalog.nonempty_slices()
    chosen = [int(i) for i in nonempty if start <= i < stop]
    if not chosen:
        found = f"{nonempty.min()}..{nonempty.max()}" if nonempty.size else "none"
        raise InputError(f"{path}: no non-empty slice in preprocessing.sheet_range [{start}, {stop}) "
                         f"(non-empty slices of the usmesh: {found})")
    edges = catalog.aemit_edges
    index = np.asarray(chosen)
    try:
        geometry = shell_geometry(cosmo, edges[index], edges[index + 1])
    except ValueError as exc:
        raise InputError(f"{path}: slices {chosen} have scale-factor edges outside (0, 1] "
                         f"(attr 'aemitIndex.edges'): {exc}") from None
    rows = catalog.rows_per_slice()
    seed = config.seed if config.seed is not None else catalog.seed
    if seed is None:
        log.warning("preprocess: no simulation seed (config `seed`, usmesh attr 'seed', ParamFile random_seed "
                    "or _s<N> in %s); the sheets get no SEED card and the kappa stage will need `seed:`", path)
    directory = sheets_directory(config)
    sheets = tuple(
        SheetPlan(index=i, path=str(directory / sheet_filename(i, catalog.nslices)),
                  a_far=float(edges[i]), a_near=float(edges[i + 1]),
                  z_far=float(geometry["z_far"][k]), z_near=float(geometry["z_near"][k]),
                  chi_far=float(geometry["chi_far"][k]), chi_near=float(geometry["chi_near"][k]),
                  volume=float(geometry["volume"][k]), nominal_rows=int(rows[i]))
        for k, i in enumerate(chosen))
    mock = str(catalog.attrs.get("LibFastPMVersion", "")).startswith(MOCK_LIBFASTPM_PREFIX)
    plan = PreprocessingPlan(
        usmesh=os.path.abspath(path), dataset=catalog.dataset, nside=catalog.nside, nslices=catalog.nslices,
        edges=edges, sheets=sheets, seed=seed, mock=mock, box_size=catalog.box_size, nc=catalog.nc,
        particle_mass=catalog.particle_mass,
        rhobar=mean_matter_density(catalog.particle_mass, catalog.nc, catalog.box_size),
        observer=tuple(float(v) for v in catalog.observer), H0=float(config.cosmology.H0),
        Om0=float(config.cosmology.Om0), identity=_usmesh_identity(catalog, seed),
        lc_fov_deg=catalog.paramfile_number("lc_fov"))
    return plan


# ---------------------------------------------------------------------------------------------
# The route from rows to NEST pixels, and its check.

def _coarse_mass(catalog: UsmeshCatalog, index: int, nside_coarse: int, chunk_size: int) -> np.ndarray:
    """Mass [1e10 Msun/h] of slice ``index`` on the NEST pixels of ``nside_coarse`` (parent = ipix // 4^k)."""
    factor = (catalog.nside // nside_coarse) ** 2
    total = np.zeros(12 * nside_coarse ** 2)
    for ipix, mass in catalog.iter_slice_chunks(index, chunk_size, margin=SLICE_ROW_MARGIN):
        total += np.bincount(ipix // factor, weights=mass, minlength=total.size)
    return total


def check_particle_route(config: ProcessingConfig, plan: PreprocessingPlan) -> str:
    """Compare the particle route with the HEALPIX block (if any) on the sheet with the fewest rows.

    Both are binned to the coarser of the two nsides (NEST parents), so the check covers the observer,
    the NEST ordering and the float32 slice rule. Returns a description of what was checked; raises
    InputError (validation_level strict) or warns (lenient) on a mismatch.
    """
    sheet = min(plan.sheets, key=lambda s: s.nominal_rows)
    chunk = config.preprocessing.chunk_size
    try:
        healpix = UsmeshCatalog(plan.usmesh, dataset=HEALPIX_DATASET)
        nside = min(healpix.nside, plan.nside)
        from_healpix = _coarse_mass(healpix, sheet.index, nside, chunk)
    except UsmeshError as exc:
        return f"not cross-checked (no usable HEALPIX block: {exc})"
    try:
        from_particles = _coarse_mass(plan.open_catalog(), sheet.index, nside, chunk)
    except UsmeshError as exc:
        raise InputError(str(exc)) from None
    if np.allclose(from_particles, from_healpix, rtol=1e-5, atol=0.0):
        return (f"particles agree with the HEALPIX block on sheet {sheet.index} at nside {nside} "
                f"({np.count_nonzero(from_particles)} pixels with mass)")
    differ = int(np.count_nonzero(~np.isclose(from_particles, from_healpix, rtol=1e-5, atol=0.0)))
    message = (f"{plan.usmesh}: the particle route (block 1/, observer {list(plan.observer)} Mpc/h) and the "
               f"HEALPIX block disagree on sheet {sheet.index}: {differ} of {from_particles.size} nside-{nside} "
               f"pixels differ (mass {from_particles.sum():.6g} vs {from_healpix.sum():.6g}); check "
               "preprocessing.observer (FastPM puts the observer at the origin)")
    if config.preprocessing.validation_level == "strict":
        raise InputError(message)
    log.warning("preprocess: %s", message)
    return "MISMATCH: " + message


def choose_route(config: ProcessingConfig, plan: PreprocessingPlan) -> Dict[str, object]:
    """Rank 0: describe and check the row -> (slice, NEST pixel) route of the plan."""
    nside_out = config.preprocessing.nside_out
    if plan.dataset == HEALPIX_DATASET:
        if nside_out is not None and nside_out != plan.nside:
            raise ConfigError([f"preprocessing.nside_out: the HEALPIX route keeps the nside of the usmesh pixel "
                               f"ids ({plan.nside}), got {nside_out}; remove nside_out or use dataset: particles"],
                              config.source)
        return {"dataset": plan.dataset, "nside": plan.nside,
                "transformation": "slice = ID // npix, NEST pixel = ID % npix (FastPM ids are NEST)",
                "check": "none needed (pixel ids come from FastPM)"}
    check = ("skipped (validation_level none)" if config.preprocessing.validation_level == "none"
             else check_particle_route(config, plan))
    return {"dataset": plan.dataset, "nside": plan.nside, "observer_mpch": list(plan.observer),
            "transformation": "slice = int(float32(Aemit) * float32(nslices)); NEST pixel = "
                              "vec2pix_nest(nside_out, Position - observer)",
            "check": check}


# ---------------------------------------------------------------------------------------------
# One sheet.

@dataclass
class RowTally:
    """Rows kept for a sheet and the float64 sum of their Mass [1e10 Msun/h], complete once the sheet's last
    mass block is out."""

    rows: int = 0
    row_mass: float = 0.0


def sheet_mass_blocks(catalog: UsmeshCatalog, index: int, chunk_size: int, tally: RowTally) -> Iterator[np.ndarray]:
    """The float64 mass map of slice ``index`` [1e10 Msun/h] as consecutive NEST pixel blocks of
    ``_MASS_BLOCK`` pixels (the last one shorter); ``tally`` counts the rows as they are binned.

    HEALPIX rows in at most ``MAX_SORTED_RUNS`` ID-sorted runs (FastPM's layout): the runs are merged block
    by block (:func:`lensing_ssc.science.sorted_runs.merged_mass_blocks`), so a rank holds one block and the
    chunk of rows being binned per run (plus the next one read ahead when a core is spare), never a
    full-sky map. Particles (no pixel order) and HEALPIX rows in no ID order: the whole map is accumulated
    first (:func:`accumulate_sheet_mass`) and handed out block by block.
    """
    if catalog.dataset == HEALPIX_DATASET:
        runs = catalog.sorted_id_runs(index, chunk_size, margin=SLICE_ROW_MARGIN, max_runs=MAX_SORTED_RUNS)
        if runs is not None:
            def counted(pieces):
                for ipix, mass in pieces:
                    tally.rows += ipix.size
                    tally.row_mass += float(mass.sum(dtype=np.float64))
                    yield ipix, mass
            with contextlib.ExitStack() as stack:
                pieces = [catalog.iter_run_pixels(index, run, chunk_size) for run in runs]
                if has_spare_core():  # each run's next chunk is read while the current one is binned
                    pieces = [stack.enter_context(contextlib.closing(prefetched(run, depth=1))) for run in pieces]
                yield from merged_mass_blocks([counted(run) for run in pieces], catalog.npix, _MASS_BLOCK)
            return
        log.warning("preprocess: %s: the HEALPIX rows of slice %d are not in ID order (more than %d sorted runs); "
                    "binning them into a whole float64 map (8 B per pixel)", catalog.path, index, MAX_SORTED_RUNS)
    mass, tally.rows, tally.row_mass = accumulate_sheet_mass(catalog, index, chunk_size)
    for start in range(0, mass.size, _MASS_BLOCK):
        yield mass[start:start + _MASS_BLOCK]


def accumulate_sheet_mass(catalog: UsmeshCatalog, index: int, chunk_size: int) -> Tuple[np.ndarray, int, float]:
    """Stream the rows of slice ``index`` in chunks; return (mass per NEST pixel float64 (npix,)
    [1e10 Msun/h], rows kept, float64 sum of the rows' masses). The route for rows in no pixel order.

    HEALPIX rows: ``np.bincount`` of each chunk's pixels weighted by Mass, summed in float64 (duplicated
    ids, a slice split across light-cone events, add up). The first chunk's full-sky bincount becomes
    the accumulator (no zero map plus a full-sky addition); later chunks add a bincount over their pixel
    span only. Particles: integer counts per pixel times the particle mass at the end, so the map is
    exact and independent of the chunking (repeated float additions of one mass would round
    differently per chunk).
    """
    weighted = catalog.dataset == HEALPIX_DATASET
    totals = None
    rows, row_mass = 0, 0.0
    chunks = catalog.iter_slice_chunks(index, chunk_size, margin=SLICE_ROW_MARGIN)
    if has_spare_core():
        chunks = prefetched(chunks, depth=1)  # read + pixelise chunk k+1 while chunk k is binned
    for ipix, mass in chunks:
        weights = mass if weighted else None
        if totals is None:
            totals = np.bincount(ipix, weights=weights, minlength=catalog.npix)
        else:
            add_chunk(totals, ipix, weights)
        rows += ipix.size
        row_mass += float(mass.sum())
    if totals is None:
        totals = np.zeros(catalog.npix, dtype=np.float64 if weighted else np.int64)
    if not weighted:  # counts x particle mass, in place (the int64 map becomes the float64 one)
        counts, totals = totals, totals.view(np.float64)
        for start in range(0, counts.size, _OVERDENSITY_BLOCK):
            np.multiply(counts[start:start + _OVERDENSITY_BLOCK], catalog.particle_mass,
                        out=totals[start:start + _OVERDENSITY_BLOCK])
    return totals, rows, row_mass


def add_chunk(totals: np.ndarray, ipix: np.ndarray, weights: Optional[np.ndarray]) -> None:
    """``totals += np.bincount(ipix, weights, minlength=totals.size)`` with a temporary of at most
    ``_BIN_SPAN`` pixels: the rows are binned over the span of their pixels, or, for a wider span,
    regrouped by pixel range (a stable sort, so every pixel sums its rows in their order: same bits).
    ``totals``: (npix,) float64 (weighted) or int64 (counts); ``ipix``: int64 (n,) NEST pixels."""
    lo, hi = int(ipix.min()), int(ipix.max()) + 1
    if hi - lo <= _BIN_SPAN:
        totals[lo:hi] += np.bincount(ipix - lo, weights=weights, minlength=hi - lo)
        return
    key = ((ipix - lo) // _BIN_SPAN).astype(np.uint16)  # < 2^16 ranges up to nside 2^17
    order = np.argsort(key, kind="stable")
    ipix = ipix[order]
    weights = weights[order] if weights is not None else None
    bounds = np.concatenate([[0], np.cumsum(np.bincount(key, minlength=(hi - lo - 1) // _BIN_SPAN + 1))])
    del key, order
    for k, (first, last) in enumerate(zip(bounds[:-1], bounds[1:])):
        if first == last:
            continue
        start = lo + k * _BIN_SPAN
        stop = min(start + _BIN_SPAN, hi)
        totals[start:stop] += np.bincount(ipix[first:last] - start,
                                          weights=None if weights is None else weights[first:last],
                                          minlength=stop - start)


@functools.lru_cache(maxsize=16)
def _pixel_mass(chi_far: float, chi_near: float, npix: int, rhobar: float) -> float:
    """Mean mass of one pixel of the shell, V_pix rhobar [1e10 Msun/h]: computed once per sheet, not per
    block (it was 0.39 s of a 7.7 s run at nside 1024, 40 sheets)."""
    return float(pixel_volume(chi_far, chi_near, npix) * rhobar)


def overdensity_float32(mass: np.ndarray, chi_far: float, chi_near: float, rhobar: float,
                        npix: Optional[int] = None) -> np.ndarray:
    """float32 delta = M / (V_pix rhobar) - 1 of a float64 mass array [1e10 Msun/h]: the whole (npix,) map, or a
    block of a map of ``npix`` pixels (default ``mass.size``); same shape as ``mass``.

    The same float64 operations as :func:`lensing_ssc.science.shells.overdensity` (so the same bits), done
    in cache-sized pixel steps through one scratch buffer: no second float64 array, and ~4x faster than
    whole-array temporaries. chi [Mpc/h], rhobar [1e10 Msun/h / (Mpc/h)^3].
    """
    expected = _pixel_mass(chi_far, chi_near, mass.size if npix is None else int(npix), rhobar)
    out = np.empty(mass.size, dtype=np.float32)
    scratch = np.empty(min(_OVERDENSITY_BLOCK, out.size))
    for offset in range(0, out.size, _OVERDENSITY_BLOCK):
        step = scratch[:min(_OVERDENSITY_BLOCK, out.size - offset)]
        np.divide(mass[offset:offset + step.size], expected, out=step)
        step -= 1.0
        out[offset:offset + step.size] = step
    return out


class Float64Mean:
    """``np.mean(x, dtype=np.float64)`` of a float32 array ``x`` given block by block, with the same bits:
    each group of ``_NUMPY_SUM_GROUP`` values is summed pairwise in float64 and the group sums are added
    in order, as numpy's buffered reduction does. Every block but the last must hold a multiple of
    ``_NUMPY_SUM_GROUP`` values (ValueError otherwise). The value depends only on ``x``, not on how it
    was produced (rank count, chunking). ``total`` is the running float64 sum.
    """

    def __init__(self):
        self.total, self.seen, self._ragged = 0.0, 0, False

    def add(self, block: np.ndarray) -> None:
        if block.size and self._ragged:
            raise ValueError(f"Float64Mean: the blocks before this one hold {self.seen} values, not a multiple "
                             f"of {_NUMPY_SUM_GROUP}; only the last block may end off a group")
        values = block.astype(np.float64)
        whole = values.size - values.size % _NUMPY_SUM_GROUP
        for group_sum in values[:whole].reshape(-1, _NUMPY_SUM_GROUP).sum(axis=1):
            self.total += group_sum
        if whole < values.size:
            self.total += values[whole:].sum()
            self._ragged = True
        self.seen += values.size

    def value(self, count: int) -> float:
        if self.seen != count:
            raise ValueError(f"Float64Mean: the blocks hold {self.seen} values; expected {count}")
        return float(self.total / count)


def coarse_regions(npix: int) -> int:
    """Number of NEST regions at nside 2 (48; the 12 base pixels for an nside-1 map)."""
    return 12 * COARSE_NSIDE ** 2 if npix >= 12 * COARSE_NSIDE ** 2 else 12


def add_region_mass(regions: np.ndarray, mass: np.ndarray, start: int, npix: int) -> None:
    """Add the pixels ``[start, start + mass.size)`` of a (npix,) float64 mass map to its coarse NEST region
    sums ``regions`` (float64, (:func:`coarse_regions`,)): the block is cut at the region boundaries."""
    region_size = npix // regions.size
    position = start
    while position < start + mass.size:
        region = position // region_size
        end = min(start + mass.size, (region + 1) * region_size)
        regions[region] += mass[position - start:end - start].sum()
        position = end


def _close(found, expected) -> bool:
    if isinstance(expected, bool) or isinstance(found, bool):
        return found is expected or found == expected
    if isinstance(expected, float):
        return isinstance(found, (int, float)) and math.isclose(found, expected, rel_tol=1e-12, abs_tol=1e-15)
    return str(found).strip() == str(expected)


def existing_bookkeeping(plan: PreprocessingPlan, sheet: SheetPlan) -> Optional[Dict[str, np.ndarray]]:
    """Bookkeeping of an existing sheet file made from the same input and settings, else None."""
    path = Path(sheet.path)
    if not path.is_file():
        return None
    try:
        header = read_header(path)
    except InputError as exc:
        log.warning("preprocess: %s; recomputing it", exc)
        return None
    expected = {key: value for key, value, _ in plan.identity_cards(sheet)}
    expected.setdefault("SEED", None)
    current = int(header["NSIDE"]) == plan.nside and all(
        (header.get(key) is None) if value is None else (key in header and _close(header[key], value))
        for key, value in expected.items()) and all(key in header for key in BOOKKEEPING_CARDS)
    if not current:
        log.warning("preprocess: %s exists but was made from another input or config (header cards %s); "
                    "recomputing it", path, ", ".join(expected))
        return None
    reached = reached_from_sheet(plan, sheet)
    if reached is None:
        log.warning("preprocess: %s exists but its empty pixels cannot be told from float32 delta (more than "
                    "%.3g particles per pixel expected); recomputing it", path, MAX_PARTICLES_PER_PIXEL_EXACT)
        return None
    mass = float(header["MASS"])
    return _bookkeeping(mass, mass, int(header["NROWS"]), float(header["DMEAN"]), bool(header["COVERED"]),
                        reached, reused=True)


def reached_from_sheet(plan: PreprocessingPlan, sheet: SheetPlan) -> Optional[np.ndarray]:
    """Packed bits (np.packbits, npix/8 uint8) of the pixels of a written sheet that hold mass (delta != -1),
    or None when the shell expects so many particles per pixel that float32 delta cannot show one."""
    if plan.rhobar * sheet.volume / plan.npix / plan.particle_mass >= MAX_PARTICLES_PER_PIXEL_EXACT:
        return None
    delta, _ = read_nested_map(sheet.path, dtype=np.float32)
    return np.packbits(delta != np.float32(-1.0))


def _bookkeeping(mass, row_mass, rows, mean_delta, is_full_sky, reached, reused=False) -> Dict[str, np.ndarray]:
    """The npz record of a sheet task: 0-d arrays for the map total and rows' Mass sum [1e10 Msun/h], rows
    kept, mean of the stored delta, full-sky coverage and whether an existing file was reused; ``reached``:
    the pixels holding mass as packed bits (uint8, npix/8; popped by quality control, see QualityControlStep)."""
    return {"mass": np.float64(mass), "row_mass": np.float64(row_mass), "rows": np.int64(rows),
            "mean_delta": np.float64(mean_delta), "full_sky": np.bool_(is_full_sky), "reused": np.bool_(reused),
            "reached": np.asarray(reached, dtype=np.uint8)}


# Header cards known only once every pixel is written (filled in by write_nested_map_blocks' late_cards).
LATE_CARDS = ("MASS", "NROWS", "NPART", "DMEAN", "COVERED")


def make_sheet(plan: PreprocessingPlan, catalog: UsmeshCatalog, sheet: SheetPlan,
               chunk_size: int) -> Dict[str, np.ndarray]:
    """Compute and write one delta sheet (NESTED float32 FITS, atomically); return its bookkeeping.

    One pass over the mass blocks of :func:`sheet_mass_blocks`: each is summed into its coarse regions,
    marked in the reached bits, converted to float32 delta, added to the mean and written. The cards that
    depend on every pixel (``LATE_CARDS``) are filled in after the pixels; a non-finite pixel fails the
    sheet after its last block, and no file is left.
    """
    npix = plan.npix
    tally = RowTally()
    regions = np.zeros(coarse_regions(npix))
    reached = np.empty((npix + 7) // 8, dtype=np.uint8)
    mean = Float64Mean()

    def delta_blocks():
        start, bad = 0, 0
        try:
            for mass in sheet_mass_blocks(catalog, sheet.index, chunk_size, tally):
                add_region_mass(regions, mass, start, npix)
                bits = np.packbits(mass > 0.0)
                reached[start // 8:start // 8 + bits.size] = bits
                delta = overdensity_float32(mass, sheet.chi_far, sheet.chi_near, plan.rhobar, npix)
                mean.add(delta)
                if not math.isfinite(mean.total):  # a non-finite mass, or a float32 overflow of a finite one
                    bad += int(np.count_nonzero(~np.isfinite(delta)))
                start += mass.size
                yield delta
        except UsmeshError as exc:
            raise InputError(str(exc)) from None
        if bad:
            raise InputError(f"{plan.usmesh}: sheet {sheet.index} has {bad} non-finite pixels (non-finite Mass "
                             "in the usmesh rows?); refusing to write it")

    def bookkeeping():
        return _bookkeeping(float(regions.sum()), tally.row_mass, tally.rows, mean.value(npix),
                            bool(np.all(regions > 0)), reached)

    placeholder = _bookkeeping(0.0, 0.0, 0, 0.0, False, reached)
    write_nested_map_blocks(sheet.path, delta_blocks(), plan.nside, plan.header_cards(sheet, placeholder),
                            dtype=np.float32,
                            late_cards=lambda: [card for card in plan.header_cards(sheet, bookkeeping())
                                                if card[0] in LATE_CARDS])
    return bookkeeping()


def estimate_memory_mb(npix: int, chunk_size: int, dataset: str = HEALPIX_DATASET) -> float:
    """Peak per rank above the interpreter [MiB] while a sheet is made.

    HEALPIX rows (FastPM's ID-sorted runs, :func:`sheet_mass_blocks`): the reached bits (npix / 8 B), one
    mass block with its float32 delta, big-endian copy and mask (~32 B x ``_MASS_BLOCK``), and a chunk
    of rows in each of two runs (a slice straddles at most two light-cone events;
    ``BYTES_PER_RUN_ROW`` x chunk_size each). Particles: the float64 mass map (8 B x npix), its reached
    bits, one chunk of rows (``BYTES_PER_CHUNK_ROW`` x chunk_size) and a bincount of at most ``_BIN_SPAN``
    pixels. (HEALPIX rows in no ID order fall back to the particle figure; a warning says so.)"""
    if dataset == HEALPIX_DATASET:
        return (npix / 8 + 32 * min(npix, _MASS_BLOCK) + 2 * BYTES_PER_RUN_ROW * chunk_size) / 2 ** 20
    return (npix * (8 + 1 / 8) + 8 * min(npix, _BIN_SPAN) + chunk_size * BYTES_PER_CHUNK_ROW) / 2 ** 20


# ---------------------------------------------------------------------------------------------
# Quality control and manifest.

def quality_control(config: ProcessingConfig, plan: PreprocessingPlan,
                    books: Dict[int, Dict[str, np.ndarray]]) -> Dict[str, object]:
    """Rank 0: conservation, finiteness, mean delta and row checks of the sheets -> qc report dict.

    ``failures`` (status "failed"): a sheet file missing, mass not conserved, a non-finite mean delta
    (a sheet is never written with non-finite pixels; this catches a reused file that has them);
    ``warnings``: full-sky sheets whose mean delta is beyond MEAN_DELTA_SIGMAS Poisson sigmas, rows that
    differ from the aemitIndex.offset counts. The caller decides whether a failure is fatal.
    """
    level = config.preprocessing.validation_level
    report: Dict[str, object] = {"validation_level": level, "status": "skipped", "sheets": []}
    if level == "none":
        return report
    failures: List[str] = []
    warnings: List[str] = []
    off_mean: List[str] = []
    checks = {"files_present": True, "conservation": True, "finite": True, "mean_delta_within_poisson": True}
    rows_total = nominal_total = 0
    row_mass_total = sheet_mass_total = 0.0
    for sheet in plan.sheets:
        book = books[sheet.index]
        if not Path(sheet.path).is_file():
            checks["files_present"] = False
            failures.append(f"{sheet.path}: sheet file missing after the stage (deleted during the run?); "
                            "rerun with --restart")
        mean_delta = float(book["mean_delta"])
        mass_from_sheet = (1.0 + mean_delta) * plan.rhobar * sheet.volume  # sum of (delta + 1) rhobar V_pix
        row_mass = float(book["row_mass"])
        relative = abs(mass_from_sheet - row_mass) / max(row_mass, np.finfo(float).tiny)
        binned_relative = abs(float(book["mass"]) - row_mass) / max(row_mass, np.finfo(float).tiny)
        storage_bound = (FLOAT32_ROUNDING * (abs(mean_delta) + 2.0) * plan.rhobar * sheet.volume
                         + CONSERVATION_RTOL * row_mass)
        sigma = 1.0 / math.sqrt(plan.rhobar * sheet.volume / plan.particle_mass)  # 1/sqrt(expected particles)
        entry = {"sheet": sheet.index, "rows": int(book["rows"]), "nominal_rows": sheet.nominal_rows,
                 "row_mass": row_mass, "mass_from_sheet": mass_from_sheet, "conservation_rel_error": relative,
                 "mean_delta": mean_delta, "poisson_sigma": sigma, "full_sky": bool(book["full_sky"]),
                 "reused": bool(book["reused"])}
        report["sheets"].append(entry)
        if binned_relative > CONSERVATION_RTOL:
            checks["conservation"] = False
            failures.append(f"sheet {sheet.index}: binned mass {float(book['mass']):.12g} differs from the rows' "
                            f"Mass {row_mass:.12g} by {binned_relative:.2e} (> {CONSERVATION_RTOL:g} relative)")
        elif abs(mass_from_sheet - row_mass) > storage_bound:
            checks["conservation"] = False
            failures.append(f"sheet {sheet.index}: mass in the stored sheet {mass_from_sheet:.10g} differs from "
                            f"the rows' Mass {row_mass:.10g} by more than float32 rounding allows "
                            f"({abs(mass_from_sheet - row_mass):.3g} > {storage_bound:.3g})")
        if not math.isfinite(mean_delta):
            checks["finite"] = False
            failures.append(f"{sheet.path}: non-finite pixels (mean delta {mean_delta})")
        if entry["full_sky"] and abs(mean_delta) > MEAN_DELTA_SIGMAS * sigma:
            checks["mean_delta_within_poisson"] = False
            off_mean.append(f"{sheet.index} ({mean_delta:+.3g}, {mean_delta / sigma:+.0f} sigma)")
        rows_total += entry["rows"]
        nominal_total += sheet.nominal_rows
        row_mass_total += row_mass
        sheet_mass_total += mass_from_sheet
    if off_mean:
        warnings.append(f"{len(off_mean)} full-sky sheet(s) have a mean delta beyond {MEAN_DELTA_SIGMAS:g} Poisson "
                        "sigmas of 0 (large-scale structure in a thin shell, a shell cut by the light-cone edge, "
                        "or a wrong mass/box/cosmology): " + ", ".join(off_mean))
    checks["rows_match_offsets"] = rows_total == nominal_total
    if not checks["rows_match_offsets"]:
        warnings.append(f"{rows_total} rows summed but aemitIndex.offset lists {nominal_total} for these sheets "
                        "(rows outside their slice's offset range, absorbed by the read margin)")
    total_relative = abs(sheet_mass_total - row_mass_total) / max(row_mass_total, np.finfo(float).tiny)
    report["totals"] = {"rows": rows_total, "nominal_rows": nominal_total, "row_mass": row_mass_total,
                        "mass_from_sheets": sheet_mass_total, "conservation_rel_error": total_relative,
                        "conservation_rtol": CONSERVATION_RTOL}
    report["checks"] = checks
    report["failures"], report["warnings"] = failures, warnings
    report["status"] = "failed" if failures else ("warnings" if warnings else "ok")
    for warning in warnings:
        log.warning("preprocess QC: %s", warning)
    return report


def footprint_report(plan: PreprocessingPlan, reached: np.ndarray, share: Tuple[int, int] = (0, 1),
                     combine=lambda bits: bits) -> Tuple[np.ndarray, Dict[str, object], List[str]]:
    """The observed footprint of the sheets from the pixels they reached (packed bits of the NESTED map,
    uint8 (npix / 8,), as ``np.packbits``); ``share`` and ``combine`` split the work between ranks, as
    :func:`lensing_ssc.science.footprint.observed_footprint_bits` describes.

    Returns ``(observed packed bits, summary for qc.json and the manifest, warnings)``. The summary
    records the pixels reached, the isolated holes counted as observed, the observed pixels and sky
    fraction, and FastPM's ``lc_fov`` [deg] with the sky fraction of such a cone, when the ParamFile has it.
    """
    observed, holes = observed_footprint_bits(reached, plan.npix, share, combine)
    count = count_bits(observed)
    summary: Dict[str, object] = {
        "file": FOOTPRINT_FILE, "nside": plan.nside, "ordering": "NESTED",
        "rule": "pixels reached by any sheet (isolated empty pixels filled), minus those with an unreached "
                "neighbour (cut by the light-cone edge)",
        "reached_pixels": count_bits(reached), "holes_filled": holes, "observed_pixels": count,
        "fsky": count / plan.npix, "lc_fov_deg": plan.lc_fov_deg}
    if plan.lc_fov_deg is not None and 0.0 < plan.lc_fov_deg < 360.0:
        summary["cone_fsky"] = (1.0 - math.cos(math.radians(plan.lc_fov_deg / 2.0))) / 2.0
    warnings = []
    if count == 0:
        warnings.append(f"no pixel of nside {plan.nside} lies wholly inside the light cone "
                        f"({summary['reached_pixels']} reached, all on its edge): the footprint is empty and the "
                        "kappa stage will refuse these sheets")
    if holes:
        warnings.append(f"{holes} isolated empty pixel(s) inside the light cone counted as observed (the shells "
                        f"are sparse at nside {plan.nside})")
    return observed, summary, warnings


def write_footprint(path: Path, plan: PreprocessingPlan, observed: np.ndarray, summary: Dict[str, object]) -> None:
    """``footprint.fits``: uint8 NESTED map (1 observed, 0 not) with the summary as header cards, streamed
    from the packed bits ``observed`` (uint8 (npix / 8,)) block by block."""
    cards = [("FSKY", summary["fsky"], "observed fraction of the sky"),
             ("NOBSERVD", summary["observed_pixels"], "observed pixels (value 1)"),
             ("NREACHED", summary["reached_pixels"], "pixels any sheet put mass into"),
             ("NHOLES", summary["holes_filled"], "isolated empty pixels counted as observed"),
             ("NSHEETS", len(plan.sheets), "sheets whose pixels were combined"),
             ("INPUTID", plan.input_id, "sha256[:16] of the usmesh identity")]
    if plan.lc_fov_deg is not None:
        cards.append(("LC_FOV", plan.lc_fov_deg, "[deg] FastPM lc_fov of the ParamFile"))
    cards.append(("CREATOR", f"lensing_ssc {__version__}", "reached pixels minus the light-cone edge"))
    blocks = (np.unpackbits(observed[start // 8:(start + _MASS_BLOCK) // 8],
                            count=min(_MASS_BLOCK, plan.npix - start)) for start in range(0, plan.npix, _MASS_BLOCK))
    write_nested_map_blocks(path, blocks, plan.nside, cards, dtype=np.uint8)


def manifest(config: ProcessingConfig, plan: PreprocessingPlan, books: Dict[int, Dict[str, np.ndarray]],
             qc_status: str, nranks: int, footprint: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """The stage's record: sheets, edges, seed, nside, cosmology, version, input identity and footprint."""
    return {
        "stage": STAGE, "package": "lensing_ssc", "package_version": __version__,
        "config_hash": config.science_hash(),
        "input": {"usmesh": plan.usmesh, "input_id": plan.input_id, **plan.identity},
        "route": plan.route, "seed": plan.seed, "mock": plan.mock, "nside": plan.nside, "npix": plan.npix,
        "ordering": "NESTED", "dtype": "float32", "nslices": plan.nslices,
        "edges": [float(e) for e in plan.edges],
        "cosmology": {"H0": plan.H0, "Om0": plan.Om0, "Tcmb0": 0.0, "model": "FlatLambdaCDM"},
        "box_size_mpch": plan.box_size, "nc": plan.nc, "particle_mass_1e10msunh": plan.particle_mass,
        "rhobar_1e10msunh_per_mpch3": plan.rhobar,
        "chunk_size": config.preprocessing.chunk_size, "row_margin": SLICE_ROW_MARGIN, "n_ranks": nranks,
        "qc": {"file": QC_FILE, "status": qc_status}, "footprint": footprint,
        "files": {Path(name).name: file_identity(name) for name in _stage_files(config, plan)},
        "sheets": [{"index": s.index, "file": Path(s.path).name, "a_far": s.a_far, "a_near": s.a_near,
                    "z_far": s.z_far, "z_near": s.z_near, "chi_far_mpch": s.chi_far, "chi_near_mpch": s.chi_near,
                    "mass": float(books[s.index]["mass"]), "rows": int(books[s.index]["rows"]),
                    "mean_delta": float(books[s.index]["mean_delta"])} for s in plan.sheets],
    }


# ---------------------------------------------------------------------------------------------
# Steps.

def _stage_files(config: ProcessingConfig, plan: PreprocessingPlan) -> List[Path]:
    """The files a finished run leaves besides the manifest: the sheets, qc.json and footprint.fits."""
    directory = sheets_directory(config)
    return [Path(s.path) for s in plan.sheets] + [directory / QC_FILE, directory / FOOTPRINT_FILE]


def file_identity(path) -> List[int]:
    """[size in bytes, mtime in ns] of a file, as recorded in the manifest."""
    stat = Path(path).stat()
    return [int(stat.st_size), int(stat.st_mtime_ns)]


def is_complete(config: ProcessingConfig, plan: PreprocessingPlan) -> bool:
    """True when ``manifest.json`` records a finished run of this very stage: same package version,
    science config, usmesh and sheets, and every file it lists unchanged since (size and mtime).

    Then the stage has nothing to do; without this check a requeued job that had moved on to a later
    stage would read every sheet back (to recover the pixels it reached) before finding that out.
    ``preprocessing.overwrite`` or ``--restart`` always recompute.
    """
    if config.preprocessing.overwrite or config.pipeline.resume == "restart":
        return False
    path = sheets_directory(config) / MANIFEST_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    expected_input = json.loads(json.dumps({"usmesh": plan.usmesh, "input_id": plan.input_id, **plan.identity},
                                           sort_keys=True, default=str))
    expected_files = {p.name for p in _stage_files(config, plan)}
    files = record.get("files") if isinstance(record, dict) else None
    if (not isinstance(files, dict) or set(files) != expected_files
            or record.get("package_version") != __version__ or record.get("config_hash") != config.science_hash()
            or record.get("input") != expected_input or record.get("nside") != plan.nside
            or [s.get("index") for s in record.get("sheets", [])] != [s.index for s in plan.sheets]):
        return False
    try:
        return all(file_identity(path.parent / name) == identity for name, identity in files.items())
    except OSError:
        return False


class DataDiscoveryStep(BaseStep):
    """Data discovery and validation: rank 0 builds the PreprocessingPlan and checks whether the stage is
    already complete (:func:`is_complete`); every rank receives the plan."""

    retryable = False

    def execute(self, input_data):
        def discover():
            plan = build_plan(self.config)
            sheets = plan.sheets
            log.info("preprocess: %s (%s, nside %d): %d sheets %d..%d, %d rows, seed %s%s", self.config.data_dir,
                     plan.dataset, plan.nside, len(sheets), sheets[0].index, sheets[-1].index,
                     sum(s.nominal_rows for s in sheets), plan.seed, " (mock)" if plan.mock else "")
            plan.up_to_date = is_complete(self.config, plan)
            if plan.up_to_date:
                log.info("preprocess: all %d sheets are up to date (%s matches the config, the usmesh and the "
                         "files); skipping the stage (use --restart to recompute)", len(plan.sheets), MANIFEST_FILE)
            return plan
        return {"plan": root_then_bcast(get_comm(), discover)}


class CoordinateTransformationStep(BaseStep):
    """Chooses and checks the row -> (slice, NEST pixel) route; the transformation itself is streamed
    in the chunk loop of the sheet tasks (:meth:`UsmeshCatalog.iter_slice_chunks`)."""

    retryable = False

    def validate_input(self, data) -> bool:
        return isinstance(data, dict) and isinstance(data.get("plan"), PreprocessingPlan)

    def execute(self, data):
        plan: PreprocessingPlan = data["plan"]
        if plan.up_to_date:
            return data
        plan.route = root_then_bcast(get_comm(), lambda: choose_route(self.config, plan))
        if get_comm().is_root:
            log.info("preprocess: route %s; check: %s", plan.route["transformation"], plan.route["check"])
        return data


class MassSheetGenerationStep(BaseStep):
    """One task per sheet on all ranks (balanced by rows): stream, bincount, overdensity, FITS."""

    retryable = False

    def validate_input(self, data) -> bool:
        return isinstance(data, dict) and isinstance(data.get("plan"), PreprocessingPlan)

    def execute(self, data):
        config, comm = self.config, get_comm()
        plan: PreprocessingPlan = data["plan"]
        if plan.up_to_date:
            return {**data, "runner": None, "tasks": []}
        chunk_size = config.preprocessing.chunk_size
        reuse = not config.preprocessing.overwrite and config.pipeline.resume != "restart"

        def check_resources():
            check_memory_estimate(estimate_memory_mb(plan.npix, chunk_size, plan.dataset), config.memory_limit_mb,
                                  f"preprocess at nside {plan.nside} with chunk_size {chunk_size}")
            ensure_free_disk(sheets_directory(config), len(plan.sheets) * (plan.npix * 4 + 16384),
                             "the delta sheets")

        root_then_bcast(comm, check_resources)
        runner = StageRunner(config, STAGE)
        opened: List[UsmeshCatalog] = []

        def process(task: Task) -> Dict[str, np.ndarray]:
            sheet = plan.sheet(task.task_id)
            if reuse:
                book = existing_bookkeeping(plan, sheet)
                if book is not None:
                    return book
            if not opened:
                opened.append(plan.open_catalog())
            return make_sheet(plan, opened[0], sheet, chunk_size)

        # cost: the rows, plus the per-sheet pixel work (overdensity and FITS write ~ npix rows of bincount)
        tasks = [Task(task_id=s.index, cost=float(s.nominal_rows + plan.npix)) for s in plan.sheets]
        self.reports.append(runner.run(tasks, process, plan.identity))
        return {**data, "runner": runner, "tasks": tasks}


class QualityControlStep(BaseStep):
    """Quality control from the task bookkeeping (collective): every rank loads its share of it, the
    pixels the sheets reached are OR-ed over the ranks (packed bits), the footprint's neighbour look-ups
    are shared out (``share``/``combine`` of :func:`footprint_report`), and rank 0 checks the scalar
    bookkeeping and writes ``mass_sheets/footprint.fits`` (the reached pixels minus the light-cone edge)
    and ``mass_sheets/qc.json`` atomically."""

    retryable = False

    def validate_input(self, data) -> bool:
        return isinstance(data, dict) and "runner" in data

    def execute(self, data):
        config, plan, runner = self.config, data["plan"], data["runner"]
        path = sheets_directory(config) / QC_FILE
        self.outputs.extend([str(path), str(path.parent / FOOTPRINT_FILE)])
        if plan.up_to_date:
            return {**data, "books": None, "qc_status": None, "footprint": None}

        comm = get_comm()
        # Every rank loads the bookkeeping of its share of the sheets; the pixels they reached are OR-ed
        # over the ranks, which then share the footprint's neighbour look-ups (science/footprint.py).
        books, reached, failure = {}, np.zeros((plan.npix + 7) // 8, dtype=np.uint8), None
        try:
            for task in data["tasks"][comm.rank::comm.size]:
                book = dict(runner.load(task))
                packed = book.pop("reached", None)
                if packed is None:  # a checkpoint of an older version: read the sheet file
                    packed = reached_from_sheet(plan, plan.sheet(task.task_id))
                if packed is None or packed.shape != reached.shape:
                    raise ValidationError(f"{plan.sheet(task.task_id).path}: no record of the pixels it reached; "
                                          "rerun the stage with --restart")
                reached |= packed
                books[task.task_id] = book
        except Exception as exc:  # raised on every rank below
            failure = exc
        raise_together(comm, failure)
        allreduce_or(reached, comm)
        observed, footprint, footprint_warnings = footprint_report(
            plan, reached, share=(comm.rank, comm.size), combine=lambda bits: allreduce_or(bits, comm))
        shares = comm.gather(books)

        def run():
            books = {task_id: book for share in shares for task_id, book in share.items()}
            report = quality_control(config, plan, books)
            write_footprint(path.parent / FOOTPRINT_FILE, plan, observed, footprint)
            report["footprint"] = footprint
            if footprint_warnings:
                report["warnings"] = report.get("warnings", []) + footprint_warnings
                report["status"] = "warnings" if report["status"] == "ok" else report["status"]
                for warning in footprint_warnings:
                    log.warning("preprocess QC: %s", warning)
            log.info("preprocess: footprint %s: %d observed pixels of %d (fsky %.4g)", FOOTPRINT_FILE,
                     footprint["observed_pixels"], plan.npix, footprint["fsky"])
            write_json_atomic(path, report)
            if report["status"] == "failed":
                message = f"{path}: preprocessing quality control failed: " + "; ".join(report["failures"])
                if config.preprocessing.validation_level == "strict":
                    raise ValidationError(message)
                log.warning("preprocess QC: %s", message)
            log.info("preprocess QC: %s (%d sheets, total mass conserved to %.1e)", report["status"],
                     len(plan.sheets), report.get("totals", {}).get("conservation_rel_error", float("nan")))
            return books, report["status"], footprint

        books, status, footprint = root_then_bcast(comm, run)
        return {**data, "books": books, "qc_status": status, "footprint": footprint}


class ManifestWritingStep(BaseStep):
    """Output writing: ``mass_sheets/manifest.json`` (atomic) on rank 0, then the task checkpoints go."""

    retryable = False

    def validate_input(self, data) -> bool:
        return isinstance(data, dict) and "books" in data

    def execute(self, data):
        config, comm, plan = self.config, get_comm(), data["plan"]
        path = sheets_directory(config) / MANIFEST_FILE
        self.outputs.extend([s.path for s in plan.sheets] + [str(path)])
        if plan.up_to_date:
            return data

        def write():
            write_json_atomic(path, manifest(config, plan, data["books"], data["qc_status"], comm.size,
                                             data.get("footprint")))
            names = {Path(s.path).name for s in plan.sheets}
            others = sorted(p.name for p in path.parent.glob("delta-sheet-*.fits") if p.name not in names)
            if others:
                log.warning("preprocess: %s also holds sheets outside this run (%s); the kappa stage reads "
                            "every delta-sheet file there", path.parent, ", ".join(others))
            data["runner"].store.clear()  # every sheet is written: the bookkeeping lives in the manifest
            log.info("preprocess: wrote %d sheets and %s", len(plan.sheets), path)

        root_then_bcast(comm, write)
        return data

    def validate_output(self, data) -> bool:
        return all(os.path.isfile(s.path) for s in data["plan"].sheets)


__all__ = ["DataDiscoveryStep", "CoordinateTransformationStep", "MassSheetGenerationStep", "QualityControlStep",
           "ManifestWritingStep", "PreprocessingPlan", "SheetPlan"]
