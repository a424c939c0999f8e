"""Steps of the convergence stage: delta sheets -> Born-approximation kappa maps (SCIENCE.md §3).

    KappaInputsStep      rank 0 reads every sheet header once, checks them, computes the Born weights
                         of all (source, sheet) pairs, the seed and the output names; broadcasts a KappaPlan
    BornSumStep          tasks = fixed NESTED pixel ranges; a task reads its range of every weighted
                         sheet once, accumulates all source redshifts in the same pass and writes the
                         range straight into the maps' partial files (``*.fits.inprogress``)
    WriteKappaMapsStep   rank 0 renames the complete partial files into place
    KappaValidationStep  optional: measured C_ell of each map (masked to the footprint) against a Limber
                         prediction

Decomposition and checkpoints (DESIGN.md §5-6): a task is one range of ``pixels_per_task`` consecutive
NESTED pixels (a whole NESTED sub-tree) through *all* sheets; its result, the float32 kappa of every
source over the range, goes straight to its place in the maps' partial files (``pwrite``; rank 0 made
the files at their final size, every pixel 0), and the task's checkpoint is a ledger record of the
CRC-32 of those bytes: a resumed run keeps the partial files and redoes the tasks whose bytes do not
match. So every kappa byte is written once, by the rank that computed it, and nothing is read back
except on resume. The range size depends only on nside, so task ids are stable across restarts on any
rank count and a rank holds one range at a time (its memory does not grow with the map). Every pixel
is summed in float64 over the sheets and cast to float32 once, so the maps are the same bytes whatever
the number of ranks or tasks.

Partial sky: when ``mass_sheets/footprint.fits`` (written by the preprocess stage) says the light cone
covers only part of the sky, kappa is set to 0 outside it (not UNSEEN: the patch projector's cubic
spline would spread the -1.6e30 sentinel into patches next to the edge), the map header carries FSKY
and FOOTPRNT = 'footprint.fits', and a copy of the footprint map is written next to the maps
(``kappa/footprint.fits``); :func:`map_footprint` reads it back. Without a footprint file the sheets are
taken as full sky (FSKY = 1).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import healpy as hp
import numpy as np
from threadpoolctl import threadpool_limits

from lensing_ssc import __version__
from lensing_ssc.core.cosmology import check_against_header, make_cosmology
from lensing_ssc.core.errors import ConfigError, InputError, ResourceError
from lensing_ssc.io.atomic import (atomic_output, commit, ensure_free_disk, guarded_write, inprogress_path,
                                   write_json_atomic)
from lensing_ssc.io.healpix_maps import (MapLayout, MapRangeReader, MapRangeWriter, allocate_nested_map,
                                        read_header, read_header_and_layout, read_nested_map)
from lensing_ssc.io.prefetch import has_spare_core, prefetched
from lensing_ssc.io.usmesh import UsmeshCatalog, UsmeshError
from lensing_ssc.parallel import root_then_bcast
from lensing_ssc.processing.resources import check_memory_estimate
from lensing_ssc.processing.checkpoint import CheckpointStore, TaskRecord
from lensing_ssc.processing.runner import StageRunner, Task
from lensing_ssc.processing.steps.base import BaseStep
from lensing_ssc.processing.steps.preprocessing_steps import FOOTPRINT_FILE
from lensing_ssc.science.born import born_weight_table, born_weights, weights_hash
from lensing_ssc.science.limber import limber_cl_kappa, pixel_window, shot_noise_cl
from lensing_ssc.science.linear_power import linear_power_spectrum, tabulated_power_spectrum
from lensing_ssc.science.shells import pixel_volume, shell_geometry

log = logging.getLogger("lensing_ssc.kappa")

STAGE = "kappa"
SHEETS_SUBDIR = "mass_sheets"
KAPPA_SUBDIR = "kappa"
VALIDATION_FILE = "validation.json"
SHEET_NAME = re.compile(r"^delta-sheet-(\d+)\.fits$")
# Pixels per task: 2**20 keeps a task's float64 accumulators at 8 MB per source (~70 MB for 5 sources
# with the read buffers) and gives 768 tasks at nside 8192. A power of 4, so a task is a NESTED sub-tree
# and divides every map with nside >= 1024; smaller maps use one base pixel (nside^2 pixels) per task.
MAX_PIXELS_PER_TASK = 2**20
# Pixels per sheet read: a power of 2, so it divides every task range. Each read fills one row of a
# matrix of the used sheets' stored values (n_sheets x 2^15 x 4 B: 7.5 MB for 60 float32 sheets), read
# by a thread while the matrix before is summed. Measured on 60 sheets at nside 512 with 2^11-pixel
# products (read + convert + sum, full sky, page cache warm): 2^15 0.17 s, 2^16 0.17 s, 2^17 0.19-0.20 s.
BORN_READ_PIXELS = 2**15
# Pixels per Born product (a power of 2 dividing BORN_READ_PIXELS): a block's float64 deltas (60 sheets
# x 2^11 x 8 B: 1 MB) stay in the core's L2 cache between the conversion and the product. Measured as
# above with 2^15-pixel reads: 2^10 0.17-0.19 s, 2^11 0.17 s, 2^12 0.21 s (and 0.41 s for the earlier
# 2^14-pixel blocks read sheet by sheet).
BORN_BLOCK_PIXELS = 2**11
# A delta at or below this is healpy's UNSEEN sentinel (-1.6375e30), also after a float32 round trip
# (healpy's mask_bad tolerance, rtol 1e-5); NaN compares False, so "lowest > UNSEEN_OR_BELOW" is
# also a NaN check.
UNSEEN_OR_BELOW = hp.UNSEEN * (1 - 1e-5)
# Read matrices in memory at once: the one being summed, one waiting, one being read (prefetch depth 1).
READ_BUFFERS = 3
# Validation binning: Limber through thin shells is good for ell >~ 10; the pixel window and anafast
# are reliable up to ell ~ 2 nside.
VALIDATION_ELL_MIN = 10
VALIDATION_NBINS = 8
# The validation's one-number figure: the mean of C_meas/C_pred over this ell <= ell <= nside (Limber
# and the linear P(k) of a mock hold there; it must lie within 10% of 1 for a mock at nside >= 128).
VALIDATION_MEAN_ELL_MIN = 30
# The validation runs by itself for real (non-mock) sheets when the usmesh names a linear P(k) table
# that is found, up to this nside (anafast to 2 nside: seconds at 1024, minutes and GBs at 8192).
AUTO_VALIDATION_MAX_NSIDE = 1024


# ---------------------------------------------------------------------------------------------
# The plan: everything rank 0 learns from the inputs, broadcast to every rank.

@dataclass(frozen=True)
class SheetInfo:
    """One delta sheet: its index, file, scale-factor edges (a_far < a_near), file identity, where its
    pixels lie in the file and the simulation box side [Mpc/h] (header BOXSIZE; None when absent)."""

    index: int
    path: str
    a_far: float
    a_near: float
    size: int
    mtime_ns: int
    layout: MapLayout
    box_size: Optional[float] = None


@dataclass
class KappaPlan:
    """The sheets (ascending index), the weights (n_sources, n_sheets) and the outputs of the stage."""

    sheets: Tuple[SheetInfo, ...]
    nside: int
    seed: int
    source_redshifts: Tuple[float, ...]
    weights: np.ndarray
    outputs: Tuple[str, ...]
    mock: bool
    up_to_date: bool = False
    footprint: Optional[str] = None  # mass_sheets/footprint.fits when the sheets cover part of the sky
    fsky: float = 1.0

    def footprint_identity(self) -> Optional[List[int]]:
        """[size, mtime_ns] of the footprint file, or None for full-sky sheets."""
        if self.footprint is None:
            return None
        stat = Path(self.footprint).stat()
        return [int(stat.st_size), int(stat.st_mtime_ns)]

    @property
    def npix(self) -> int:
        return 12 * self.nside**2

    @property
    def pixels_per_task(self) -> int:
        return min(self.nside**2, MAX_PIXELS_PER_TASK)

    def tasks(self) -> List[Task]:
        """Equal pixel ranges ``[start, stop)`` in NESTED order; task id = range number."""
        size = self.pixels_per_task
        return [Task(t, 1.0, (t * size, (t + 1) * size)) for t in range(self.npix // size)]

    def input_identity(self) -> Dict[str, object]:
        """What the checkpoints depend on besides the science config (JSON-safe)."""
        return {"nside": self.nside, "seed": self.seed, "pixels_per_task": self.pixels_per_task,
                "sheets": [[s.index, s.a_far, s.a_near, s.size, s.mtime_ns] for s in self.sheets],
                "footprint": self.footprint_identity()}

    def partial_paths(self) -> List[Path]:
        """The maps being filled by the Born sums: ``kappa_zs{zs}_s{seed}.fits.inprogress``."""
        return [inprogress_path(path) for path in self.outputs]

    def used(self, k: int) -> np.ndarray:
        """Positions (into ``sheets``) of the sheets with non-zero weight for source ``k``."""
        return np.flatnonzero(self.weights[k])

    def header_cards(self, k: int, config) -> List[Tuple[str, object, str]]:
        """FITS cards of the map of source ``k``, ending with the weight of every summed sheet
        (:func:`weight_card_key`); ``is_current`` compares the first five."""
        used = self.used(k)
        cards = [
            ("ZS", self.source_redshifts[k], "source redshift"),
            ("SEED", self.seed, "simulation seed"),
            ("SHEETS", format_index_ranges([self.sheets[i].index for i in used]),
             "delta sheets summed (non-zero weight)"),
            ("NSHEETS", int(used.size), "number of sheets summed"),
            ("WHASH", weights_hash(self.weights[k, used]), ""),  # sha256 of the float64 weights of SHEETS
            ("H0", float(config.cosmology.H0), "km/s/Mpc, cosmology of the weights"),
            ("OM0", float(config.cosmology.Om0), "matter density of the weights"),
            ("CREATOR", f"lensing_ssc {__version__}", "Born approximation, SCIENCE.md 3.1"),
        ]
        box_sizes = {sheet.box_size for sheet in self.sheets}
        if len(box_sizes) == 1 and None not in box_sizes:
            cards.append(("BOXSIZE", box_sizes.pop(), "[Mpc/h] simulation box side (replication flags)"))
        cards.append(("FSKY", self.fsky, "observed sky fraction; kappa = 0 outside"))
        if self.footprint is not None:
            cards.append(("FOOTPRNT", FOOTPRINT_FILE, "observed-sky map (same dir), 1 = observed"))
        if self.mock:
            cards.append(("MOCK", True, "made from a mock light cone"))
        cards.extend((weight_card_key(self.sheets[i].index), float(self.weights[k, i]),
                      f"Born weight of delta-sheet-{self.sheets[i].index:02d}") for i in used)
        return cards


def weight_card_key(sheet_index: int) -> str:
    """FITS key of a sheet's Born weight in a kappa map header: ``W`` and the index, at least three digits
    (``W050``; FITS keys have at most 8 characters)."""
    return f"W{sheet_index:03d}"


def format_index_ranges(indices: Sequence[int]) -> str:
    """Ascending sheet indices as compact ranges: [28, 29, 30, 40] -> '28-30,40' ('' if empty)."""
    parts: List[str] = []
    values = sorted(int(i) for i in indices)
    start = 0
    for end in range(len(values)):
        if end + 1 == len(values) or values[end + 1] != values[end] + 1:
            first, last = values[start], values[end]
            parts.append(str(first) if first == last else f"{first}-{last}")
            start = end + 1
    return ",".join(parts)


def kappa_map_path(output_dir, zs: float, seed: int) -> Path:
    """``{output_dir}/kappa/kappa_zs{zs}_s{seed}.fits`` with zs formatted by ``str(float)``."""
    return Path(output_dir) / KAPPA_SUBDIR / f"kappa_zs{float(zs)}_s{int(seed)}.fits"


def _header_float(path: Path, header: Dict[str, object], key: str) -> float:
    if key not in header:
        raise InputError(f"{path}: header has no {key}; expected the scale factor of the shell edge "
                         "(written by the preprocess stage)")
    try:
        value = float(header[key])
    except (TypeError, ValueError):
        raise InputError(f"{path}: header {key} = {header[key]!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{path}: header {key} = {value} is not finite")
    return value


def _header_int(path: Path, header: Dict[str, object], key: str) -> int:
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{path}: header {key} = {value!r} is not an integer")
    return int(value)


def discover_sheets(directory) -> Tuple[List[SheetInfo], int, List[Optional[int]], bool]:
    """Read and check the headers of ``directory/delta-sheet-NN.fits``.

    Returns ``(sheets sorted by index, nside, SEED of each sheet or None, any MOCK)``. Raises InputError
    naming the directory, file and header key for a missing or empty directory, a non-NESTED map,
    missing or bad A_FAR/A_NEAR, mixed NSIDE, or a SHEET that contradicts the file name.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: mass-sheet directory not found; expected the delta-sheet-NN.fits "
                         "files of the preprocess stage (run `lensing-ssc preprocess CONFIG` first)")
    found = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := SHEET_NAME.match(p.name)))
    if not found:
        raise InputError(f"{directory}: no delta-sheet-NN.fits files; expected the mass sheets of the "
                         "preprocess stage")
    sheets: List[SheetInfo] = []
    seeds: List[Optional[int]] = []
    mock = False
    first_nside: Optional[Tuple[int, Path]] = None
    for index, path in found:
        if sheets and sheets[-1].index == index:
            raise InputError(f"{path}: sheet index {index} also used by {sheets[-1].path}")
        header, layout = read_header_and_layout(path)  # checks ORDERING = NESTED, NSIDE and the table
        nside = int(header["NSIDE"])
        if first_nside is None:
            first_nside = (nside, path)
        elif nside != first_nside[0]:
            raise InputError(f"{path}: header NSIDE = {nside} differs from NSIDE = {first_nside[0]} of "
                             f"{first_nside[1]}; all mass sheets must have one nside")
        if "SHEET" in header and _header_int(path, header, "SHEET") != index:
            raise InputError(f"{path}: header SHEET = {header['SHEET']} contradicts the file name (sheet {index})")
        a_far, a_near = _header_float(path, header, "A_FAR"), _header_float(path, header, "A_NEAR")
        if not 0.0 < a_far < a_near <= 1.0:
            raise InputError(f"{path}: header A_FAR = {a_far}, A_NEAR = {a_near}; expected "
                             "0 < A_FAR < A_NEAR <= 1 (scale factors of the far and near shell edges)")
        seeds.append(_header_int(path, header, "SEED") if "SEED" in header else None)
        mock = mock or bool(header.get("MOCK", False))
        if sheets and not math.isclose(sheets[-1].a_near, a_far, rel_tol=1e-9, abs_tol=1e-12):
            raise InputError(f"{path}: A_FAR = {a_far} does not continue the previous sheet "
                             f"{sheets[-1].path} (A_NEAR = {sheets[-1].a_near}); a sheet between them is "
                             "missing — rerun the preprocess stage")
        stat = path.stat()
        box_size = _header_float(path, header, "BOXSIZE") if "BOXSIZE" in header else None
        sheets.append(SheetInfo(index, str(path), a_far, a_near, int(stat.st_size), int(stat.st_mtime_ns),
                                layout, box_size))
    return sheets, first_nside[0], seeds, mock


def resolve_seed(config_seed: Optional[int], sheet_seeds: Sequence[Optional[int]], directory) -> int:
    """The seed of the output names: config ``seed``, else the sheets' SEED header (must agree)."""
    known = sorted({s for s in sheet_seeds if s is not None})
    if config_seed is not None:
        if known and known != [config_seed]:
            log.warning("config seed %d differs from the mass sheets' SEED header %s; using the config",
                        config_seed, known)
        return int(config_seed)
    if len(known) > 1:
        raise InputError(f"{directory}: the mass sheets disagree on header SEED ({known}); set `seed:` in "
                         "the config to choose one")
    if not known:
        raise InputError(f"no simulation seed for the kappa file names: set `seed:` in the config or write "
                         f"header key SEED in the mass sheets of {directory}")
    return known[0]


def is_current(path: Path, expected_cards, newest_input_ns: int) -> bool:
    """True if ``path`` exists, is newer than every sheet and its ZS/SEED/SHEETS/NSHEETS/WHASH match."""
    try:
        if path.stat().st_mtime_ns < newest_input_ns:
            return False
        header = read_header(path)
    except (OSError, InputError):
        return False
    return cards_match(header, expected_cards[:5])


def cards_match(header: Dict[str, object], cards) -> bool:
    """True if ``header`` has every card (key, value, comment) of ``cards`` with that value (floats to
    1e-12 relative: the FITS text of a float need not give back the last bit)."""
    for key, value, _ in cards:
        if key not in header:
            return False
        found = header[key]
        if isinstance(value, float):
            if not isinstance(found, (int, float)) or not math.isclose(found, value, rel_tol=1e-12):
                return False
        elif str(found).strip() != str(value):
            return False
    return True


def sheets_footprint(directory, sheets: Sequence[SheetInfo], nside: int) -> Tuple[Optional[str], float]:
    """(path of ``directory/footprint.fits``, FSKY) for sheets covering part of the sky, (None, 1.0) for a
    full-sky footprint or none at all (sheets of an older version or made by hand: taken as full sky).

    InputError when the footprint has another NSIDE, another input (INPUTID) than the sheets, or no
    observed pixel.
    """
    path = Path(directory) / FOOTPRINT_FILE
    if not path.is_file():
        log.info("kappa: no %s in %s; the sheets are taken as full sky", FOOTPRINT_FILE, directory)
        return None, 1.0
    header = read_header(path)
    if int(header["NSIDE"]) != nside:
        raise InputError(f"{path}: header NSIDE = {header['NSIDE']} differs from the sheets' NSIDE = {nside}; "
                         "rerun the preprocess stage")
    sheet_input = read_header(sheets[0].path).get("INPUTID")
    if "INPUTID" in header and sheet_input is not None and str(header["INPUTID"]) != str(sheet_input):
        raise InputError(f"{path}: header INPUTID = {header['INPUTID']} but the sheets were made from input "
                         f"{sheet_input}; rerun the preprocess stage")
    fsky = _header_float(path, header, "FSKY")
    if not 0.0 < fsky <= 1.0:
        raise InputError(f"{path}: header FSKY = {fsky}: no pixel lies wholly inside the light cone at nside "
                         f"{nside}, so there is no sky to make kappa on (expected 0 < FSKY <= 1)")
    return (None, 1.0) if fsky == 1.0 else (str(path), fsky)


def kappa_footprint_path(output_dir) -> Path:
    """``{output_dir}/kappa/footprint.fits``: the copy of the sheets' footprint next to partial-sky maps."""
    return Path(output_dir) / KAPPA_SUBDIR / FOOTPRINT_FILE


def map_footprint(path) -> Optional[np.ndarray]:
    """Observed pixels of a kappa map, bool NESTED (12 nside^2,), or None when it covers the full sky.

    A map with header FSKY < 1 names its footprint file in FOOTPRNT (same directory; 1 = observed).
    Maps without FSKY (older versions, other codes) are full sky. InputError naming the file for a
    missing footprint file or an NSIDE mismatch.
    """
    path = Path(path)
    header = read_header(path)
    fsky = float(header.get("FSKY", 1.0))
    if fsky >= 1.0:
        return None
    if "FOOTPRNT" not in header:
        raise InputError(f"{path}: header FSKY = {fsky} but no FOOTPRNT card naming its footprint map")
    footprint_path = path.parent / str(header["FOOTPRNT"]).strip()
    if not footprint_path.is_file():
        raise InputError(f"{footprint_path}: footprint map of {path.name} (header FOOTPRNT) not found; "
                         "rerun the kappa stage")
    values, footprint_header = read_nested_map(footprint_path, dtype=np.float32)
    if int(footprint_header["NSIDE"]) != int(header["NSIDE"]):
        raise InputError(f"{footprint_path}: NSIDE = {footprint_header['NSIDE']} differs from NSIDE = "
                         f"{header['NSIDE']} of {path.name}")
    return values > 0


def build_plan(config) -> KappaPlan:
    """Rank 0: sheets, weights, seed, outputs, and whether the outputs are already up to date."""
    directory = Path(config.output_dir) / SHEETS_SUBDIR
    sheets, nside, sheet_seeds, mock = discover_sheets(directory)
    footprint, fsky = sheets_footprint(directory, sheets, nside)
    seed = resolve_seed(config.seed, sheet_seeds, directory)
    source_redshifts = tuple(float(zs) for zs in config.kappa.source_redshifts)
    cosmo = make_cosmology(config.cosmology.H0, config.cosmology.Om0)
    a_far = np.array([s.a_far for s in sheets])
    a_near = np.array([s.a_near for s in sheets])
    weights = born_weight_table(cosmo, a_far, a_near, source_redshifts)
    check_source_reach(source_redshifts, 1.0 / a_far.min() - 1.0, f"the mass sheets in {directory}")
    for k, zs in enumerate(source_redshifts):
        if not np.any(weights[k]):
            raise ConfigError([f"kappa.source_redshifts: zs = {zs} has no mass sheet in front of it (the "
                               f"nearest sheet of {directory} ends at z = {1.0 / a_near.max() - 1.0:.4g})"])
        log.info("kappa: zs = %s: %d sheets, sum of weights %.6g", zs, np.count_nonzero(weights[k]),
                 weights[k].sum())
    outputs = tuple(str(kappa_map_path(config.output_dir, zs, seed)) for zs in source_redshifts)
    plan = KappaPlan(tuple(sheets), nside, seed, source_redshifts, weights, outputs, mock,
                     footprint=footprint, fsky=fsky)
    if footprint is not None:
        log.info("kappa: the sheets cover fsky = %.4g (%s); kappa is 0 outside", fsky, footprint)
    newest = max([s.mtime_ns for s in sheets] + ([Path(footprint).stat().st_mtime_ns] if footprint else []))
    plan.up_to_date = config.pipeline.resume != "restart" and all(
        is_current(Path(path), plan.header_cards(k, config), newest) for k, path in enumerate(outputs)) and (
        footprint is None or kappa_footprint_path(config.output_dir).is_file())
    if not plan.up_to_date:
        _check_resources(config, plan)
    return plan


def check_source_reach(source_redshifts: Sequence[float], z_reach: float, sheets: str) -> None:
    """ConfigError naming ``kappa.source_redshifts`` for every source beyond ``z_reach``, the far edge of
    the farthest shell of ``sheets`` (words naming them, for the message: "the mass sheets in DIR"): its
    Born sum would miss the lensing by the matter between that edge and the source. A source at the edge
    (to 1e-9) is fine."""
    problems = [f"kappa.source_redshifts: zs = {zs} lies beyond {sheets} (the farthest sheet ends at z = "
                f"{z_reach:.4g}): its map would miss the lensing by the matter between z = {z_reach:.4g} and {zs}"
                for zs in source_redshifts if zs > z_reach * (1 + 1e-9)]
    if problems:
        raise ConfigError(problems)


def estimate_memory_mb(nside: int, n_sources: int, n_sheets: int) -> float:
    """Peak MiB per rank of the dominant arrays of a task: its float64 sums of every source (8 B per
    pixel and source), the footprint range (float32 and its mask, 5 B), every source's range as written
    (big-endian float32 in a buffer each map's writer keeps, 4 B per pixel and source), READ_BUFFERS
    matrices of every used sheet's read range as stored (float32 sheets; float64 ones take twice that)
    and one float64 block of deltas."""
    pixels = min(nside**2, MAX_PIXELS_PER_TASK)  # KappaPlan.pixels_per_task
    read = min(BORN_READ_PIXELS, pixels)
    sheet_bytes = n_sheets * (4 * READ_BUFFERS * read + 8 * min(BORN_BLOCK_PIXELS, read))
    return (pixels * (12 * n_sources + 5) + sheet_bytes) / 2**20


def _check_resources(config, plan: KappaPlan) -> None:
    nsources = len(plan.source_redshifts)
    check_memory_estimate(estimate_memory_mb(plan.nside, nsources, len(plan.sheets)), config.memory_limit_mb,
                          f"kappa at nside {plan.nside} ({len(plan.sheets)} sheets, {nsources} sources)")
    map_bytes = nsources * plan.npix * 4  # float32, all sources
    ensure_free_disk(Path(config.output_dir) / KAPPA_SUBDIR, map_bytes, "the kappa maps")


# ---------------------------------------------------------------------------------------------
# The Born sum over a pixel range.

class BornSums:
    """The Born sums of one rank over NESTED pixel ranges, one range at a time (:meth:`sum_range`).

    The used sheets (those with a non-zero weight) and the footprint stay open and the buffers are kept
    from range to range: reopening 60 sheets and faulting in fresh buffers for every task cost about a
    third of the stage at nside 512. Use as a context manager.

    A range is read in pieces of ``BORN_READ_PIXELS``: the piece of every used sheet goes by ``pread``,
    unconverted, into one row of a matrix of the sheets' stored type (n_used_sheets, piece), by a reader
    thread when a spare core is there (:func:`prefetched`), while the main thread sums the piece before.
    Given the ``ranges`` it will be asked for, in order (a rank's tasks), it reads ahead across them: the
    next range's first piece is read while the last of this one is summed and its kappa written, and the
    kernel is asked (:meth:`will_need`) for the next range's pixels when a range starts. A range asked
    for out of that order is read on its own.

    A piece is summed in blocks of ``BORN_BLOCK_PIXELS``: the block is converted to float64 (a matrix
    that stays in the core's cache) and kappa = weights @ deltas is one BLAS product (run it with BLAS on
    one thread per rank, as :class:`BornSumStep` does, or OpenBLAS's threads fight the other ranks). The
    rounding of a product depends on its shape and the CPU's BLAS kernel, never on where the block lies,
    and every task range is a whole number of equal blocks: so the maps are the same bytes for any number
    of ranks or tasks on one type of CPU (the sum over sheets is float64 either way). With a
    ``footprint`` map (path; 1 = observed), kappa is set to 0 in the unobserved pixels.

    Bad deltas are found through the product, which is 12x smaller than the deltas for 60 sheets and 5
    sources: a NaN or infinite delta makes kappa NaN or infinite, and an UNSEEN one moves the kappa of
    the source that weights its sheet most by at least ``|UNSEEN| x`` that weight (weights are >= 0 and a
    used sheet has one > 0). Only a piece whose kappa lies outside :func:`bad_delta_bound` is searched
    sheet by sheet, which raises InputError naming the sheet for non-finite or UNSEEN values.
    """

    def __init__(self, sheets: Sequence[SheetInfo], weights: np.ndarray, footprint: Optional[str] = None,
                 ranges: Sequence[Tuple[int, int]] = ()):
        used = [i for i in range(len(sheets)) if np.any(weights[:, i])]
        self.sheets = [sheets[i] for i in used]
        self.weights = np.ascontiguousarray(weights[:, used], dtype=np.float64)
        self.bound = bad_delta_bound(self.weights)
        self._stack = contextlib.ExitStack()
        self._readers = [self._stack.enter_context(MapRangeReader(sheet.layout)) for sheet in self.sheets]
        self._footprint = (None if footprint is None else
                           self._stack.enter_context(MapRangeReader(read_header_and_layout(footprint)[1])))
        stored_types = {np.dtype(sheet.layout.dtype) for sheet in self.sheets}
        # The sheets' own type, read without conversion; float64 when they differ (e.g. >f4 and >f8).
        self._stored_type = stored_types.pop() if len(stored_types) == 1 else np.dtype(np.float64)
        self._pieces: List[np.ndarray] = []  # READ_BUFFERS matrices (n_used_sheets, piece), made when needed
        self._deltas = np.empty((len(used), BORN_BLOCK_PIXELS))
        self._total = np.empty((self.weights.shape[0], 0))
        self._ranges = [(int(first), int(last)) for first, last in ranges]
        self._stream: Optional[Iterator[Tuple[int, np.ndarray]]] = None  # pieces read ahead ...
        self._upcoming: List[Tuple[int, int]] = []  # ... of these ranges, in order
        if self._ranges:
            self.will_need(*self._ranges[0])

    def __enter__(self) -> "BornSums":
        return self

    def __exit__(self, *exc_info) -> None:
        self._close_stream()
        self._stack.close()

    def _close_stream(self) -> None:
        """Stop reading ahead (the reader thread, if any, is joined)."""
        if self._stream is not None:
            self._stream.close()
        self._stream, self._upcoming = None, []

    def _pieces_of(self, start: int, stop: int) -> Iterator[Tuple[int, np.ndarray]]:
        """The pieces of [start, stop) (:func:`_sheet_pieces`): from the read-ahead stream when [start, stop)
        is the range it reads next; otherwise a new stream from this range on, over the later ones of
        ``ranges`` when it is one of them."""
        if not self._upcoming or self._upcoming[0] != (start, stop):
            self._close_stream()
            later = ([(start, stop)] if (start, stop) not in self._ranges else
                     self._ranges[self._ranges.index((start, stop)):])
            width = min(BORN_READ_PIXELS, max(last - first for first, last in later))
            if not self._pieces or self._pieces[0].shape[1] < width:  # no stream holds them now
                self._pieces = [np.empty((len(self.sheets), width), dtype=self._stored_type)
                                for _ in range(READ_BUFFERS)]
            pieces = _sheet_pieces(self._readers, self._pieces, later)
            self._stream = prefetched(pieces, depth=1) if has_spare_core() else pieces
            self._upcoming = list(later)  # popped below; the generator keeps its own list
        self._upcoming.pop(0)
        if self._upcoming:
            self.will_need(*self._upcoming[0])
        return itertools.islice(self._stream, -(-(stop - start) // BORN_READ_PIXELS))

    def will_need(self, start: int, stop: int) -> None:
        """Have the kernel read NESTED pixels [start, stop) of every used sheet (and the footprint) into
        the page cache in the background, e.g. the next task's range while this one is summed: from a
        disk (cold cache) the reads of a task then overlap the sums of the one before."""
        for reader in self._readers + ([self._footprint] if self._footprint is not None else []):
            reader.will_need(start, stop)

    def sum_range(self, start: int, stop: int) -> np.ndarray:
        """kappa of every source over NESTED pixels [start, stop): float64 (n_sources, stop - start), a
        view of a buffer that the next call overwrites."""
        if self._total.shape[1] < stop - start:
            self._total = np.empty((self.weights.shape[0], stop - start))
        total = self._total[:, :stop - start]
        try:
            with np.errstate(invalid="ignore"):  # 0 x inf of a bad delta: reported below
                self._sum_pieces(self._pieces_of(start, stop), start, total)
        except BaseException:
            self._close_stream()  # a retried or next range starts afresh
            raise
        if self._footprint is not None:
            observed = np.empty(stop - start, dtype=np.float32)
            self._footprint.read_into(start, stop, observed)
            total[:, observed == 0] = 0.0
        return total

    def _sum_pieces(self, pieces: Iterable[Tuple[int, np.ndarray]], start: int, total: np.ndarray) -> None:
        """kappa of the ``pieces`` (first pixel, stored deltas) into ``total`` (its column 0 is ``start``)."""
        for first, stored in pieces:
            kappa = total[:, first - start:first - start + stored.shape[1]]
            for offset in range(0, stored.shape[1], BORN_BLOCK_PIXELS):
                block = stored[:, offset:offset + BORN_BLOCK_PIXELS]
                deltas = self._deltas[:, :block.shape[1]]
                np.copyto(deltas, block)
                np.matmul(self.weights, deltas, out=kappa[:, offset:offset + block.shape[1]])
            if not (-self.bound < kappa.min() and kappa.max() < self.bound):  # NaN fails both
                _check_deltas(self.sheets, stored.astype(np.float64), first)


def born_sum_range(sheets: Sequence[SheetInfo], weights: np.ndarray, start: int, stop: int,
                   footprint: Optional[str] = None) -> np.ndarray:
    """kappa of every source over NESTED pixels [start, stop): float64 array (n_sources, stop - start);
    one range of :class:`BornSums` (see there)."""
    with BornSums(sheets, weights, footprint) as sums:
        return sums.sum_range(start, stop)


def bad_delta_bound(weights: np.ndarray) -> float:
    """Half the smallest kappa shift one UNSEEN delta can cause: ``|UNSEEN|/2 x min over sheets of the
    sheet's largest weight`` (``weights``: (n_sources, n_sheets), >= 0, each column with a weight > 0).

    Good deltas (>= -1 and, for simulated matter, far below 1e12) keep |kappa| many orders of magnitude
    below it for any weight above ~1e-17, the smallest a float64 lensing kernel gives short of the
    source, so kappa beyond it is the sign to look at the deltas."""
    return 0.5 * abs(hp.UNSEEN) * float(np.abs(weights).max(axis=0).min())


def _sheet_pieces(readers: Sequence[MapRangeReader], buffers: Sequence[np.ndarray],
                  ranges: Sequence[Tuple[int, int]]) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(first pixel, stored)`` per piece of ``BORN_READ_PIXELS`` pixels of each range [start, stop)
    in turn: stored (n_readers, pixels in piece), each reader's values in the buffers' type, a view of one
    of ``buffers`` (matrices of at least that shape, used in turn: a consumer reading at most
    ``len(buffers) - 2`` pieces ahead through ``prefetched`` never sees one overwritten)."""
    pieces = ((first, min(first + BORN_READ_PIXELS, stop)) for start, stop in ranges
              for first in range(start, stop, BORN_READ_PIXELS))
    for number, (first, last) in enumerate(pieces):
        stored = buffers[number % len(buffers)][:, :last - first]
        for reader, row in zip(readers, stored):
            reader.read_into(first, last, row)
        yield first, stored


def _check_deltas(sheets: Sequence[SheetInfo], deltas: np.ndarray, first: int) -> None:
    """InputError naming the first sheet of ``deltas`` (one row per sheet, pixels from ``first``) that
    holds a non-finite or UNSEEN value; nothing when there is none."""
    bad = ~np.isfinite(deltas) | (deltas <= UNSEEN_OR_BELOW)
    if not bad.any():
        return
    row = int(np.argmax(bad.any(axis=1)))
    raise InputError(f"{sheets[row].path}: {np.count_nonzero(bad[row])} non-finite or UNSEEN pixel(s) in "
                     f"NESTED pixels [{first}, {first + deltas.shape[1]}), first at "
                     f"{first + int(np.argmax(bad[row]))}; expected a full-sky overdensity map")


# ---------------------------------------------------------------------------------------------
# Validation: measured C_ell against the Limber prediction through the same shells.

def measured_cl(nested_map: np.ndarray, lmax: int, observed: Optional[np.ndarray] = None) -> np.ndarray:
    """C_ell (ell = 0..lmax) of a NESTED map: healpy anafast after the one NEST->RING reorder.

    ``observed`` (bool NESTED, same shape): the map's footprint. The map minus its mean over the
    footprint is set to 0 outside it and the pseudo-C_ell divided by fsky = mean(observed), the usual
    fsky correction: unbiased for ell well above the mask's scale (~180 deg / footprint size) but
    mode-coupled below it. None: the full-sky C_ell.
    """
    values = np.asarray(nested_map, dtype=np.float64)
    if observed is None:
        return hp.anafast(hp.reorder(values, n2r=True), lmax=int(lmax))
    observed = np.asarray(observed, dtype=bool)
    if observed.shape != values.shape or not observed.any():
        raise ValueError(f"observed must be a non-empty boolean map of shape {values.shape}, got shape "
                         f"{observed.shape} with {int(np.count_nonzero(observed))} observed pixels")
    masked = np.where(observed, values - values[observed].mean(), 0.0)
    return hp.anafast(hp.reorder(masked, n2r=True), lmax=int(lmax)) / observed.mean()


def validation_ell_edges(nside: int, ell_min: int = VALIDATION_ELL_MIN,
                         nbins: int = VALIDATION_NBINS) -> np.ndarray:
    """Integer log-spaced bin edges from ell_min to 2 nside (bins [e_j, e_j+1)); fewer when crowded."""
    ell_max = 2 * int(nside)
    if ell_max <= ell_min:
        return np.array([], dtype=np.int64)
    return np.unique(np.round(np.geomspace(ell_min, ell_max + 1, nbins + 1)).astype(np.int64))


def compare_binned_cl(measured: np.ndarray, predicted: np.ndarray, edges: np.ndarray,
                      fsky: float = 1.0) -> Dict[str, object]:
    """Bin C_ell (index = ell) with weights 2 ell + 1 and compare; Gaussian errors on a sky fraction fsky.

    For a Gaussian field Var(C^_ell) = 2 C_ell^2 / ((2 ell + 1) fsky), so a bin b has
    sigma_b^2 = 2 sum (2l+1) C_l^2 / (sum (2l+1))^2 / fsky around the predicted C_ell. Returns per-bin lists
    (``ell`` mode-weighted mean, ``cl_measured``, ``cl_predicted``, ``ratio``, ``sigma_ratio``) and
    ``chi2`` with ``dof`` = number of bins.
    """
    rows = {name: [] for name in ("ell", "cl_measured", "cl_predicted", "ratio", "sigma_ratio")}
    chi2 = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        ell = np.arange(lo, hi)
        modes = 2.0 * ell + 1.0
        meas = float(np.sum(modes * measured[ell]) / modes.sum())
        pred = float(np.sum(modes * predicted[ell]) / modes.sum())
        sigma = float(np.sqrt(2.0 * np.sum(modes * predicted[ell] ** 2) / fsky) / modes.sum())
        rows["ell"].append(float(np.sum(modes * ell) / modes.sum()))
        rows["cl_measured"].append(meas)
        rows["cl_predicted"].append(pred)
        rows["ratio"].append(meas / pred)
        rows["sigma_ratio"].append(sigma / pred)
        chi2 += ((meas - pred) / sigma) ** 2
    return {"ell_edges": [int(e) for e in edges], **rows, "chi2": chi2, "dof": int(max(len(edges) - 1, 0))}


def mean_cl_ratio(measured: np.ndarray, predicted: np.ndarray, ell_min: int, ell_max: int) -> Optional[float]:
    """Mean over ell_min <= ell <= ell_max of measured / predicted C_ell (arrays indexed by ell; each ell
    counts once, as "averaged over 30 <= ell <= nside" in the validation's acceptance figure), or None
    when the range holds no ell of both arrays."""
    ell = np.arange(int(ell_min), min(int(ell_max), measured.size - 1, predicted.size - 1) + 1)
    if ell.size == 0:
        return None
    return float(np.mean(measured[ell] / predicted[ell]))


def predicted_kappa_cl(lmax: int, cosmo, a_far, a_near, zs: float, pk_of_k_z, nside: int,
                       mean_particles_per_pixel=None) -> Tuple[np.ndarray, float]:
    """Prediction for a NESTED kappa map of the Born sum: (W_ell^2 C^Limber_ell for ell = 0..lmax, shot noise).

    Limber through the same shells and weights as the map (``science.limber``), times the squared HEALPix
    pixel window of ``nside``; the white shot noise (``shot_noise_cl``, not windowed) for Poisson shells
    with ``mean_particles_per_pixel`` (one per sheet), 0 when None.
    """
    ell = np.arange(int(lmax) + 1)
    signal = limber_cl_kappa(ell, cosmo, a_far, a_near, zs, pk_of_k_z) * pixel_window(nside, lmax) ** 2
    shot = 0.0
    if mean_particles_per_pixel is not None:
        shot = shot_noise_cl(born_weights(cosmo, a_far, a_near, zs), mean_particles_per_pixel, 12 * nside**2)
    return signal, shot


def linear_power_table(catalog: UsmeshCatalog) -> Optional[Path]:
    """The linear P(k) file FastPM read (ParamFile ``read_powerspectrum``), or None when not found.

    FastPM opens it relative to the directory it ran in, which the usmesh does not record: a relative
    name is looked for in the usmesh directory, its parent (the run directory when ``lc_write_usmesh``
    is a plain name) and its grandparent, in that order.
    """
    name = catalog.paramfile_value("read_powerspectrum")
    if not name:
        return None
    usmesh = Path(catalog.path).resolve()
    candidates = [Path(name)] if Path(name).is_absolute() else [d / name for d in (usmesh, *usmesh.parents[:2])]
    return next((path for path in candidates if path.is_file()), None)


def _usmesh_power_model(config, cosmo) -> Tuple[Optional[Dict[str, object]], str]:
    """The simulation's P(k) model and particle density from its usmesh Header, or (None, reason).

    ``omega_m``, ``h`` from the Header attrs OmegaM, HubbleParam; ``box_size``, ``nc`` for the Poisson
    shot noise; ``pk_table``: the linear P(k) file of the run (:func:`linear_power_table`) when found,
    else the Eisenstein-Hu model; ``sigma8`` from the ParamFile when > 0 (FastPM's ``sigma8 = 0`` means
    "the table as it is"; for the Eisenstein-Hu model the default of ``linear_power_spectrum``).
    """
    if not config.data_dir:
        return None, "data_dir is not set, so there is no usmesh Header for the simulation's cosmology"
    try:
        catalog = UsmeshCatalog(config.data_dir)
        model = {"omega_m": catalog.omega_m, "h": catalog.hubble_param,
                 "box_size": catalog.box_size, "nc": catalog.nc}
    except (UsmeshError, OSError, ValueError) as exc:
        return None, f"cannot read the usmesh Header of data_dir: {exc}"
    sigma8 = catalog.paramfile_number("sigma8")
    if sigma8 is not None and sigma8 > 0:
        model["sigma8"] = sigma8
    table = linear_power_table(catalog)
    if table is not None:
        model["pk_table"] = str(table)
    for warning in check_against_header(cosmo, model["omega_m"], model["h"]):
        log.warning("kappa validation: %s", warning)
    return model, ""


def _power_function(model: Dict[str, object]):
    """(pk(k, z) [(Mpc/h)^3], description) of a power model from :func:`_usmesh_power_model`."""
    if "pk_table" in model:
        try:
            k_table, p_table = np.loadtxt(model["pk_table"], unpack=True, usecols=(0, 1))
            pk = tabulated_power_spectrum(k_table, p_table, model["omega_m"], model.get("sigma8"))
        except ValueError as exc:
            raise InputError(f"{model['pk_table']}: not a linear P(k) table with columns k [h/Mpc], "
                             f"P [(Mpc/h)^3] ({exc})") from None
        return pk, (f"table {model['pk_table']} (ParamFile read_powerspectrum) at z = 0, linear growth"
                    + ("" if "sigma8" not in model else ", rescaled to sigma8"))
    power_args = {key: model[key] for key in ("omega_m", "h", "sigma8") if key in model}

    def pk(k, z):
        return linear_power_spectrum(k, z, **power_args)

    return pk, "linear_power_spectrum (Eisenstein-Hu no-wiggle, linear growth)"


def validate_maps(config, plan: KappaPlan) -> Dict[str, object]:
    """Rank 0: compare each map's C_ell (masked to the footprint, fsky-corrected) with Limber (linear P(k)
    of the simulation) + shot noise."""
    cosmo = make_cosmology(config.cosmology.H0, config.cosmology.Om0)
    report: Dict[str, object] = {"nside": plan.nside, "status": "skipped",
                                 "cosmology": {"H0": cosmo.H0.value, "Om0": float(cosmo.Om0)}}
    edges = validation_ell_edges(plan.nside)
    model, reason = _usmesh_power_model(config, cosmo) if edges.size >= 2 else (
        None, f"nside {plan.nside} is too small for ell >= {VALIDATION_ELL_MIN}")
    if model is None:
        report["reason"] = reason
        log.warning("kappa validation skipped: %s", reason)
        return report
    pk, description = _power_function(model)
    recorded = ("omega_m", "h", "sigma8", "pk_table")
    report["power_spectrum"] = {"model": description, **{key: model[key] for key in recorded if key in model}}
    observed = None
    if plan.footprint is not None:
        values, _ = read_nested_map(plan.footprint, dtype=np.float32)
        observed = values > 0
    report["fsky"] = plan.fsky
    report["estimator"] = ("anafast of the full-sky map" if observed is None else
                           "anafast of (map - footprint mean) x footprint, divided by fsky (pseudo-C_ell)")
    a_far = np.array([s.a_far for s in plan.sheets])
    a_near = np.array([s.a_near for s in plan.sheets])
    geometry = shell_geometry(cosmo, a_far, a_near)
    nbar = (model["nc"] / model["box_size"]) ** 3 * pixel_volume(geometry["chi_far"], geometry["chi_near"],
                                                                 plan.npix)
    lmax = int(edges[-1]) - 1
    maps = {}
    for zs, path in zip(plan.source_redshifts, plan.outputs):
        values, _ = read_nested_map(path)
        signal, shot = predicted_kappa_cl(lmax, cosmo, a_far, a_near, zs, pk, plan.nside, nbar)
        measured, predicted = measured_cl(values, lmax, observed), signal + shot
        result = compare_binned_cl(measured, predicted, edges, plan.fsky)
        mean_ratio = mean_cl_ratio(measured, predicted, VALIDATION_MEAN_ELL_MIN, plan.nside)
        maps[str(zs)] = {"file": path, "cl_shot_noise": shot, **result, "mean_ratio": mean_ratio,
                         "mean_ratio_ell": [VALIDATION_MEAN_ELL_MIN, plan.nside]}
        mean_text = "" if mean_ratio is None else (
            f"; mean C_meas/C_pred over {VALIDATION_MEAN_ELL_MIN} <= ell <= {plan.nside}: {mean_ratio:.3f}")
        lines = [f"kappa validation zs = {zs}: chi2/dof = {result['chi2']:.1f}/{result['dof']} "
                 f"(shot noise {shot:.3g}){mean_text}",
                 f"{'ell':>8} {'C_meas':>11} {'C_pred':>11} {'ratio':>7} {'+-':>6}"]
        lines += [f"{e:8.1f} {m:11.4e} {p:11.4e} {r:7.3f} {s:6.3f}" for e, m, p, r, s in
                  zip(result["ell"], result["cl_measured"], result["cl_predicted"], result["ratio"],
                      result["sigma_ratio"])]
        log.info("\n".join(lines))
    report.update(status="ok", maps=maps)
    return report


# ---------------------------------------------------------------------------------------------
# Steps.

class KappaInputsStep(BaseStep):
    """Rank 0 checks the sheets and computes the plan; every rank receives it (collective)."""

    retryable = False

    def __init__(self, config, comm):
        super().__init__(config)
        self.comm = comm

    def execute(self, input_data):
        plan = root_then_bcast(self.comm, lambda: build_plan(self.config))
        if plan.up_to_date and self.comm.is_root:
            log.info("kappa: all %d maps are up to date (header weights hash matches); skipping the stage "
                     "(use --restart to recompute)", len(plan.outputs))
            # A kill between the last rename and the clean-up leaves ledgers behind, and a run killed
            # after an earlier complete one leaves partial maps: drop both.
            CheckpointStore(self.config.checkpoint_root, STAGE, self.comm.rank).clear()
            for path in plan.partial_paths():
                path.unlink(missing_ok=True)
        return {"plan": plan}


class BornSumStep(BaseStep):
    """Runs the pixel-range tasks on all ranks (collective): each task writes its kappa of every source
    straight into the maps' partial files (``kappa_zs{zs}_s{seed}.fits.inprogress``, made by rank 0 with
    every pixel 0) and checkpoints a CRC-32 of the bytes it wrote; on resume, tasks whose bytes no
    longer match are redone."""

    retryable = False

    def validate_input(self, input_data) -> bool:
        return isinstance(input_data, dict) and isinstance(input_data.get("plan"), KappaPlan)

    def execute(self, input_data):
        plan: KappaPlan = input_data["plan"]
        if plan.up_to_date:
            return input_data
        runner = StageRunner(self.config, STAGE)
        layouts = root_then_bcast(runner.comm, lambda: prepare_partial_maps(self.config, plan, runner.store))
        writers: List[MapRangeWriter] = []
        sums: List[BornSums] = []

        @contextlib.contextmanager
        def open_files(mine):
            with contextlib.ExitStack() as stack:
                writers.extend(stack.enter_context(MapRangeWriter(layout)) for layout in layouts)
                if mine:
                    sums.append(stack.enter_context(BornSums(plan.sheets, plan.weights, plan.footprint,
                                                             [task.payload for task in mine])))
                yield
                for writer in writers:
                    writer.sync()  # on disk before rank 0 renames the files

        def process(task: Task) -> TaskRecord:
            start, stop = task.payload
            kappa = sums[0].sum_range(start, stop)
            checksum = 0
            for writer, values, path in zip(writers, kappa, plan.outputs):
                with guarded_write(path, None):  # a full disk: one line naming the map, not retried
                    checksum = zlib.crc32(writer.write(start, values), checksum)
            return TaskRecord({"crc32": checksum})

        tasks = plan.tasks()

        def verify(key: str, record) -> bool:
            start, stop = tasks[int(key)].payload
            return record.get("crc32") == partial_maps_crc32(layouts, start, stop)

        try:
            with threadpool_limits(limits=1, user_api="blas"):  # one rank per core (docs/clusters.md)
                self.reports.append(runner.run(tasks, process, plan.input_identity(), open_files, verify))
        except (InputError, ResourceError):
            # Bad sheets or a full disk: the partial maps cannot be finished as they are, so they go
            # (by the rank that found it; a stopped or killed run keeps them to resume).
            for path in plan.partial_paths():
                path.unlink(missing_ok=True)
            raise
        return {**input_data, "runner": runner}


def prepare_partial_maps(config, plan: KappaPlan, store: CheckpointStore) -> List[MapLayout]:
    """Rank 0, before the Born sums: the layouts of the maps' partial files. Those of an interrupted run
    are kept when every one is there, whole, with this plan's headers; otherwise all are made afresh
    (every pixel 0, :func:`allocate_nested_map`) and the ledgers of the old ones dropped."""
    cards = [plan.header_cards(k, config) for k in range(len(plan.outputs))]
    if config.pipeline.resume != "restart":
        try:
            found = [read_header_and_layout(path) for path in plan.partial_paths()]
        except (OSError, InputError):
            found = None
        if found is not None and all(cards_match(header, expected) and _file_is_whole(layout)
                                     for (header, layout), expected in zip(found, cards)):
            return [layout for _, layout in found]
        if config.pipeline.resume == "resume" and store.manifest_path.exists():
            log.warning("kappa: the partial maps of the interrupted run are missing or changed; its "
                        "checkpointed tasks are redone")
            store.clear()
    layouts = []
    for partial, path, expected in zip(plan.partial_paths(), plan.outputs, cards):
        with guarded_write(path, partial):
            layouts.append(allocate_nested_map(partial, plan.nside, expected, dtype=np.float32))
    return layouts


def _file_is_whole(layout: MapLayout) -> bool:
    """True if the file holds all the map's data bytes."""
    return os.path.getsize(layout.path) >= layout.data_offset + layout.npix * np.dtype(layout.dtype).itemsize


def partial_maps_crc32(layouts: Sequence[MapLayout], start: int, stop: int) -> int:
    """CRC-32 of the stored bytes of pixels [start, stop) of every map in turn (what a task wrote)."""
    checksum = 0
    for layout in layouts:
        stored = np.empty(stop - start, dtype=layout.dtype)
        with MapRangeReader(layout) as reader:
            reader.read_into(start, stop, stored)
        checksum = zlib.crc32(stored.tobytes(), checksum)
    return checksum


class WriteKappaMapsStep(BaseStep):
    """Rank 0 renames the filled partial maps into place (fsync, rename, directory fsync) once every
    rank has written and synced its ranges, copies the footprint next to partial-sky maps, then drops
    the checkpoints."""

    retryable = False

    def execute(self, input_data):
        plan: KappaPlan = input_data["plan"]
        if not plan.up_to_date:
            runner: StageRunner = input_data["runner"]

            def commit_all():
                copy = kappa_footprint_path(self.config.output_dir)
                if plan.footprint is not None:
                    with atomic_output(copy) as temporary:
                        shutil.copyfile(plan.footprint, temporary)
                elif copy.is_file():  # left by an earlier partial-sky run: these maps are full sky
                    copy.unlink()
                for partial, path in zip(plan.partial_paths(), plan.outputs):
                    commit(partial, path)
                log.info("kappa: wrote %s", ", ".join(plan.outputs))
                runner.store.clear()  # every map is complete: the ledgers are no longer needed

            root_then_bcast(runner.comm, commit_all)
        self.outputs.extend(plan.outputs)
        if plan.footprint is not None:
            self.outputs.append(str(kappa_footprint_path(self.config.output_dir)))
        return input_data

    def validate_output(self, output_data) -> bool:
        return all(os.path.isfile(path) for path in output_data["plan"].outputs)


def auto_validation(config, plan: KappaPlan) -> bool:
    """Whether the automatic C_ell check runs: MOCK sheets, or real sheets of nside <=
    AUTO_VALIDATION_MAX_NSIDE whose usmesh (``data_dir``) names a linear P(k) file that is found."""
    if plan.mock:
        return True
    if plan.nside > AUTO_VALIDATION_MAX_NSIDE or not config.data_dir:
        return False
    try:
        return linear_power_table(UsmeshCatalog(config.data_dir)) is not None
    except (UsmeshError, OSError, ValueError):
        return False


class KappaValidationStep(BaseStep):
    """Optional C_ell check of the maps; on for MOCK sheets, for real sheets with their linear P(k) file
    (:func:`auto_validation`), or when forced.

    ``enabled``: None = automatic (:func:`auto_validation`; not redone for up-to-date maps that already
    have a report), True = always, False = never. Writes ``{output_dir}/kappa/validation.json`` (status
    ``ok`` with the per-map bins and chi2, or ``skipped`` with the reason) and logs a table. It is a
    diagnostic: a missing usmesh Header or a too small nside is recorded, not raised.
    """

    retryable = False

    def __init__(self, config, comm, enabled: Optional[bool] = None):
        super().__init__(config)
        self.comm = comm
        self.enabled = enabled

    def execute(self, input_data):
        plan: KappaPlan = input_data["plan"]
        path = Path(self.config.output_dir) / KAPPA_SUBDIR / VALIDATION_FILE
        automatic = auto_validation(self.config, plan) if self.enabled is None and self.comm.is_root else None
        enabled = self.comm.bcast(automatic) if self.enabled is None else self.enabled  # one answer for all
        done_before = self.comm.bcast(path.is_file() if self.comm.is_root else None)
        if not enabled or (self.enabled is None and plan.up_to_date and done_before):
            return input_data  # off, or automatic and already done for these maps

        def run():
            report = validate_maps(self.config, plan)
            write_json_atomic(path, report)
            return report

        report = root_then_bcast(self.comm, run)
        self.outputs.append(str(path))
        return {**input_data, "validation": report}
