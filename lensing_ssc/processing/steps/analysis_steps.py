"""The analysis stage's five steps: kappa map loading, validation, patch extraction (task planning),
statistical analysis (the per-patch tasks on all ranks), result aggregation and output writing.

The seed's step names are kept: ``DataLoadingStep`` (kappa map loading), ``ValidationStep``,
``PatchingStep`` (patch centres, flags and the task list) and ``StatisticsStep`` (extraction and
statistics of every patch, checkpointed per batch of ``batch_size`` patches). Each step passes a dict
to the next.

Memory model (DESIGN.md §5): the patches are cut from the full-sky map in RING order (float64, one
NEST -> RING conversion per read), one map in memory at a time. With ``pipeline.node_shared_maps``
(default) the map is held once per node: before a map's tasks, one rank per node reads it into an MPI-3
shared-memory window that the node's ranks read (parallel/shared.py), and frees it after them; nodes
whose ranks have no task left for the map skip the read. Otherwise every rank with tasks reads its own
copy on first use: one float64 map per rank (0.4 GiB at nside 2048, 1.5 GiB at 4096, 6 GiB at 8192).
Either way the reading rank briefly holds the NESTED map as read as well (float32: half a map more).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import h5py
import healpy as hp
import numpy as np

from lensing_ssc import __version__
from lensing_ssc.core.cosmology import comoving_distance_mpch, make_cosmology
from lensing_ssc.core.errors import ConfigError, InputError
from lensing_ssc.io.geometry_cache import GeometryCache
from lensing_ssc.io.healpix_maps import read_header, read_nested_map
from lensing_ssc.io.results import write_rows_file
from lensing_ssc.parallel import get_comm, node_shared_array, root_then_bcast, split_by_cost
from lensing_ssc.plugins import get_plugin
from lensing_ssc.processing.checkpoint import CheckpointStore
from lensing_ssc.processing.retry import call_with_retries
from lensing_ssc.processing.runner import StageRunner, Task
from lensing_ssc.processing.steps.base import BaseStep
from lensing_ssc.processing.steps.kappa_steps import map_footprint
from lensing_ssc.science.covariance import hartlap_factor
from lensing_ssc.science.fibonacci import patch_centers
from lensing_ssc.science.footprint import patches_inside_footprint
from lensing_ssc.science.noise import noise_generator
from lensing_ssc.science.patch_analysis import (BUILTIN_STATISTICS, PatchAnalysisSettings, analyse_patch,
                                                summarise_rows)
from lensing_ssc.science.patches import project_patch, replication_flags

log = logging.getLogger("lensing_ssc.analysis")

KAPPA_NAME = re.compile(r"kappa_zs(?P<zs>\d+(?:\.\d+)?)_s(?P<seed>\d+)\.fits$")
STAGE = "analyze"
# Patch placement on a partial sky: the diamond of a patch, grown by this many patch pixels on every
# side, must lie inside the observed footprint. The patch's edge pixels are cubic-spline interpolated
# (scipy.ndimage.rotate) from gnomonic-image pixels up to 2 pixels beyond the diamond; one more covers
# the nearest-pixel sampling of the map.
PATCH_MARGIN_PIXELS = 3


@dataclass(frozen=True)
class KappaMapInput:
    """One full-sky kappa map to analyse: path, source redshift, simulation seed, nside, file size."""

    path: str
    zs: float
    seed: int
    nside: int
    nbytes: int
    box_size: Optional[float] = None

    @property
    def stats_name(self) -> str:
        return f"stats_zs{self.zs}_s{self.seed}"


def settings_from_config(config) -> PatchAnalysisSettings:
    analysis = config.analysis
    builtin = tuple(name for name in analysis.statistics if name in BUILTIN_STATISTICS)
    return PatchAnalysisSettings(
        patch_size_deg=analysis.patch_size_deg, xsize=analysis.xsize, ngal_list=tuple(analysis.ngal),
        epsilon=analysis.epsilon, smoothing_arcmin=tuple(analysis.smoothing_lengths), lmin=analysis.lmin,
        lmax=analysis.lmax, nbin=analysis.nbin, nu_range=tuple(analysis.nu_bins), statistics=builtin)


def plugin_names(config) -> List[str]:
    return [name for name in config.analysis.statistics if name not in BUILTIN_STATISTICS]


def stats_path(config, kappa_map: KappaMapInput) -> Path:
    side = config.analysis.patch_size_deg
    side_text = str(int(side)) if float(side).is_integer() else str(side)
    return Path(config.output_dir) / "stats" / f"{kappa_map.stats_name}_oa{side_text}.h5"


def map_stage(config, kappa_map: KappaMapInput) -> str:
    """Checkpoint namespace of one map's analysis: ``analyze/{stats file stem}``."""
    return f"{STAGE}/{stats_path(config, kappa_map).stem}"


def noise_base_seed(noise_seed: int, simulation_seed: int) -> int:
    """One 32-bit base seed from ``analysis.noise_seed`` and the simulation seed (both recorded)."""
    return int(np.random.SeedSequence([noise_seed, simulation_seed]).generate_state(1)[0])


def _describe_map(path: Path) -> KappaMapInput:
    match = KAPPA_NAME.search(path.name)
    if not match:
        raise InputError(f"{path}: expected a file name kappa_zs{{zs}}_s{{seed}}.fits")
    header = read_header(path)
    box_size = header.get("BOXSIZE")
    return KappaMapInput(path=str(path), zs=float(match["zs"]), seed=int(match["seed"]),
                         nside=int(header["NSIDE"]), nbytes=path.stat().st_size,
                         box_size=float(box_size) if box_size is not None else None)


class DataLoadingStep(BaseStep):
    """Kappa map loading: finds the maps and reads their headers (rank 0, broadcast).

    Input: None (maps in ``{output_dir}/kappa``, else in ``data_dir``), a directory, a FITS path
    or a list of paths. Output: ``{"maps": [KappaMapInput, ...]}`` sorted by (zs, seed). Pixel data
    are read later, by the rank that analyses the map.
    """

    retryable = False

    def _candidates(self, input_data) -> List[Path]:
        if input_data is None:
            kappa_dir = Path(self.config.output_dir) / "kappa"
            directories = [kappa_dir] + ([Path(self.config.data_dir)] if self.config.data_dir else [])
            for directory in directories:
                found = sorted(directory.glob("kappa_zs*_s*.fits"))
                if found:
                    return found
            raise InputError(f"no kappa maps kappa_zs{{zs}}_s{{seed}}.fits in "
                             f"{' or '.join(str(d) for d in directories)}")
        if isinstance(input_data, (str, Path)):
            path = Path(input_data)
            if path.is_dir():
                found = sorted(path.glob("kappa_zs*_s*.fits"))
                if not found:
                    raise InputError(f"{path}: no kappa maps kappa_zs{{zs}}_s{{seed}}.fits in this directory")
                return found
            return [path]
        return [Path(p) for p in input_data]

    def execute(self, input_data):
        def load():
            paths = self._candidates(input_data)
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise InputError(f"{missing[0]}: kappa map not found")
            return sorted((_describe_map(p) for p in paths), key=lambda m: (m.zs, m.seed))
        return {"maps": root_then_bcast(get_comm(), load)}


class ValidationStep(BaseStep):
    """Checks the inputs before any work: one nside for all maps, NESTED headers, finite pixels
    (``preprocessing.validation_level: strict`` reads every map once on rank 0)."""

    retryable = False

    def validate_input(self, data) -> bool:
        return isinstance(data, dict) and bool(data.get("maps"))

    def execute(self, data):
        def check():
            nsides = {m.nside for m in data["maps"]}
            if len(nsides) > 1:
                raise InputError(f"kappa maps have different NSIDE values {sorted(nsides)}; expected one")
            if self.config.preprocessing.validation_level == "strict":
                for kappa_map in data["maps"]:
                    values, _ = read_nested_map(kappa_map.path, dtype=None)  # the file's dtype: 2.3x less memory
                    if not np.all(np.isfinite(values)):
                        raise InputError(f"{kappa_map.path}: map has {np.count_nonzero(~np.isfinite(values))} "
                                         "non-finite pixels; expected finite kappa everywhere")
            return True
        root_then_bcast(get_comm(), check)
        return data


class PatchingStep(BaseStep):
    """Patch extraction plan: centres (Fibonacci or ``analysis.centers``), replication flags and the
    task list of each map — one task per ``batch_size`` patches. Maps whose results file exists with
    the same science config are skipped.

    Partial-sky maps (header FSKY < 1, see ``kappa_steps.map_footprint``): only patches whose whole
    area, plus a margin of PATCH_MARGIN_PIXELS patch pixels, lies inside the observed footprint of every
    map are placed; Fibonacci centres outside are dropped (InputError if none is left), explicit
    ``analysis.centers`` outside are a ConfigError."""

    retryable = False

    def validate_input(self, data) -> bool:
        return isinstance(data, dict) and bool(data.get("maps"))

    def execute(self, data):
        config = self.config
        side = config.analysis.patch_size_deg
        theta, phi = root_then_bcast(get_comm(), lambda: _centers(config, data["maps"]))
        cosmology = make_cosmology(config.cosmology.H0, config.cosmology.Om0)
        flags = {}
        for kappa_map in data["maps"]:
            if kappa_map.box_size is None:
                flags[kappa_map.path] = np.zeros(theta.size, dtype=bool)
            else:
                chi_max = float(comoving_distance_mpch(cosmology, kappa_map.zs))
                flags[kappa_map.path] = replication_flags(theta, phi, side, kappa_map.box_size, chi_max)
        todo = [m for m in data["maps"] if not self._already_done(m)]
        skipped = [m for m in data["maps"] if m not in todo]
        if skipped and get_comm().is_root:
            log.info("analyze: %d map(s) already analysed with this config; skipping them", len(skipped))
            for kappa_map in skipped:  # checkpoints left by a kill between the write and the clean-up
                CheckpointStore(config.checkpoint_root, map_stage(config, kappa_map), 0).clear()
        batch = config.batch_size
        tasks = [Task(task_id=index, cost=min(first + batch, theta.size) - first,
                      payload=(first, min(first + batch, theta.size)))
                 for index, first in enumerate(range(0, theta.size, batch))]
        self.outputs.extend(str(stats_path(config, m)) for m in skipped)
        return {**data, "todo": todo, "theta": theta, "phi": phi, "flags": flags, "tasks": tasks}

    def _already_done(self, kappa_map: KappaMapInput) -> bool:
        path = stats_path(self.config, kappa_map)
        if self.config.pipeline.resume == "restart" or not path.is_file():
            return False
        try:
            with h5py.File(path, "r") as handle:
                return handle.attrs.get("config_hash") == self.config.science_hash()
        except OSError:
            return False


def common_footprint(maps) -> Optional[np.ndarray]:
    """The pixels observed in every map (bool NESTED), or None when all maps cover the full sky."""
    observed = None
    for footprint in (map_footprint(m.path) for m in maps):
        if footprint is not None:
            observed = footprint if observed is None else observed & footprint
    return observed


def _centers(config, maps):
    """Patch centres (theta, phi) [rad]: ``analysis.centers`` ([theta, phi] in deg) or the Fibonacci ones,
    kept to the footprint the maps share (class PatchingStep)."""
    side = config.analysis.patch_size_deg
    explicit = bool(config.analysis.centers)
    if explicit:
        centers_deg = np.asarray(config.analysis.centers, dtype=np.float64)
        theta, phi = np.radians(centers_deg[:, 0]), np.radians(centers_deg[:, 1])
    else:
        try:
            theta, phi = patch_centers(side)
        except ValueError as exc:
            raise ConfigError([f"analysis.patch_size_deg: no Fibonacci patches for {side} deg ({exc})"],
                              config.source) from None
        if theta.size == 0:
            raise ConfigError([f"analysis.patch_size_deg: the pole cut leaves no valid patch for {side} deg"],
                              config.source)
    observed = common_footprint(maps)
    if observed is None:
        return theta, phi
    margin_deg = PATCH_MARGIN_PIXELS * side / config.analysis.xsize
    inside = patches_inside_footprint(observed, theta, phi, side, margin_deg)
    fsky = float(np.mean(observed))
    if explicit and not inside.all():
        outside = ", ".join(f"[{t:g}, {p:g}]" for t, p in centers_deg[~inside][:5])
        raise ConfigError([f"analysis.centers: {np.count_nonzero(~inside)} of {inside.size} patches of "
                           f"{side:g} deg (+ {margin_deg:.3g} deg margin) reach outside the observed footprint "
                           f"of the maps (fsky {fsky:.4g}): {outside}"], config.source)
    if not inside.any():
        raise InputError(f"none of the {inside.size} Fibonacci patches of {side:g} deg lies inside the observed "
                         f"footprint of the maps (fsky {fsky:.4g}); give centres inside it in analysis.centers "
                         "([theta, phi] in deg) or use smaller patches")
    if not explicit:
        log.info("analyze: %d of %d Fibonacci patches of %g deg lie inside the observed footprint (fsky %.4g)",
                 np.count_nonzero(inside), inside.size, side, fsky)
    return theta[inside], phi[inside]


def read_ring_map_into(path: str, out: np.ndarray) -> None:
    """Read a NESTED map file into ``out`` (shape (12 nside^2,)) in RING order: the one NEST -> RING
    conversion (Decision 2), the gather of ``healpy.reorder`` done in slices straight into ``out``.

    The file is read at its own dtype (float32 for the maps lensing_ssc writes) and converted exactly by
    the gather: at nside 1024 the read then peaks at 144 MiB instead of 336 MiB as float64."""
    nested, _ = read_nested_map(path, dtype=None)
    if out.shape != nested.shape:
        raise InputError(f"{path}: {nested.size} pixels, expected {out.size} (its NSIDE when the run started)")
    nside = hp.npix2nside(nested.size)
    step = max(nested.size // 24, 1)  # index arrays of 1/24 map, as healpy.reorder
    for start in range(0, nested.size, step):
        ring_pixels = np.arange(start, min(start + step, nested.size))
        out[ring_pixels] = nested[hp.ring2nest(nside, ring_pixels)]


class _RingMaps:
    """The RING-ordered map the tasks of a rank read: one map in memory at a time.

    Per node (``pipeline.node_shared_maps``): :meth:`held_for` loads a map collectively before its tasks,
    into node-shared memory filled by one rank per node (only on nodes where some rank has tasks), and
    frees it after them. Per rank: :meth:`get` reads the map on its first use by a task of this rank.
    """

    def __init__(self, config):
        self.config = config
        self.path = None
        self.ring = None

    def get(self, kappa_map: KappaMapInput) -> np.ndarray:
        if kappa_map.path != self.path:
            self.path, self.ring = None, None  # the previous map is released before the next is read
            ring = np.empty(hp.nside2npix(kappa_map.nside))
            read_ring_map_into(kappa_map.path, ring)  # a task: retried by the runner
            self.path, self.ring = kappa_map.path, ring
        return self.ring

    @contextlib.contextmanager
    def held_for(self, kappa_map: KappaMapInput, mine):
        """Around one map's tasks (``StageRunner.run``'s ``around_tasks``; collective when node-shared)."""
        if not self.config.pipeline.node_shared_maps:
            yield
            return
        config = self.config
        self.path, self.ring = None, None

        def fill(out):
            call_with_retries(lambda: read_ring_map_into(kappa_map.path, out), config.max_retries,
                              config.pipeline.retry_backoff_s, what=f"reading {kappa_map.path}")

        what = f"{kappa_map.path} (pipeline.node_shared_maps: false reads one copy per rank instead)"
        with node_shared_array(get_comm(), (hp.nside2npix(kappa_map.nside),), np.float64, fill,
                               needed=bool(mine), what=what) as held:
            self.path, self.ring = kappa_map.path, held.array
            try:
                yield
            finally:
                self.path, self.ring = None, None  # unmapped when the block ends


class StatisticsStep(BaseStep):
    """Statistical analysis of every patch, on all ranks, resumable per task (batch of patches).

    Maps are analysed one after the other, each with its own checkpoint namespace
    (``checkpoints/analyze/{stats name}``), so adding maps or finishing some never invalidates the
    checkpoints of the others. Each task result holds, per results-file dataset path, the rows of
    its patches (float64).
    """

    retryable = False

    def validate_input(self, data) -> bool:
        return isinstance(data, dict) and "tasks" in data

    def execute(self, data):
        config = self.config
        settings = settings_from_config(config)
        plugins = {name: get_plugin(name)() for name in plugin_names(config)}
        ring_maps = _RingMaps(config)
        # pipeline.cache_dir: the projection geometry of each patch is computed once and reused for every
        # map, redshift and simulation of the same nside (io/geometry_cache.py); off when unset.
        geometry = GeometryCache(config.pipeline.cache_dir, compress=True)  # 9x smaller, read 1.4-2x slower
        side, xsize = settings.patch_size_deg, settings.xsize
        runners = []
        for kappa_map in data["todo"]:
            base_seed = noise_base_seed(config.analysis.noise_seed, kappa_map.seed)

            def process(task: Task, kappa_map=kappa_map, base_seed=base_seed) -> Dict[str, np.ndarray]:
                ring = ring_maps.get(kappa_map)
                rows: Dict[str, List[np.ndarray]] = {}
                for patch_index in range(*task.payload):
                    indices = geometry.patch_pixel_indices(kappa_map.nside, data["theta"][patch_index],
                                                           data["phi"][patch_index], side, xsize)
                    patch = project_patch(ring, indices, xsize).astype(np.float64)

                    def rng(ngal, patch_index=patch_index):
                        return noise_generator(base_seed, kappa_map.zs, patch_index, ngal, "shape_noise")

                    values = analyse_patch(patch, settings, rng)
                    for name, plugin in plugins.items():
                        produced = plugin.process(patch, config)
                        values.update({f"plugins/{name}/{key}": np.asarray(v, dtype=np.float64)
                                       for key, v in produced.items()})
                    for path, value in values.items():
                        rows.setdefault(path, []).append(np.asarray(value, dtype=np.float64))
                return {path: np.stack(blocks) for path, blocks in rows.items()}

            runner = StageRunner(config, map_stage(config, kappa_map))
            identity = {"map": Path(kappa_map.path).name, "bytes": kappa_map.nbytes,
                        "npatch": int(data["theta"].size)}
            self.reports.append(runner.run(data["tasks"], process, identity,
                                           functools.partial(ring_maps.held_for, kappa_map)))
            runners.append(runner)
        return {**data, "runners": runners}


class ResultAggregationStep(BaseStep):
    """Result aggregation: for each map, every rank collects the rows of a contiguous patch range from
    the task checkpoints (whoever computed them, in this run or an earlier one)."""

    retryable = False

    def validate_input(self, data) -> bool:
        return isinstance(data, dict) and "runners" in data

    def execute(self, data):
        comm, tasks = get_comm(), data["tasks"]
        start, stop = split_by_cost([t.cost for t in tasks], comm.size)[comm.rank]
        mine = tasks[start:stop]
        per_map = []
        for runner in data["runners"]:
            blocks = [runner.load(t) for t in mine]
            rows = {path: np.concatenate([b[path] for b in blocks]) for path in blocks[0]} if blocks else {}
            # Every rank needs every dataset's per-patch shape to create the file collectively.
            shapes = {path: value.shape[1:] for path, value in runner.load(tasks[0]).items()}
            per_map.append({"first_row": mine[0].payload[0] if mine else 0, "rows": rows, "row_shapes": shapes})
        return {**data, "aggregated": per_map}


class OutputWritingStep(BaseStep):
    """Output writing: one ``stats_zs{zs}_s{seed}_oa{S}.h5`` per map, written by all ranks (parallel
    HDF5; by rank 0 alone when ``pipeline.parallel_io`` is false), with the original layout, provenance,
    patch centres and flags, and ``/summary``; then the map's task checkpoints are removed."""

    retryable = False

    def validate_input(self, data) -> bool:
        return isinstance(data, dict) and "aggregated" in data

    def execute(self, data):
        config, comm = self.config, get_comm()
        settings = settings_from_config(config)
        npatch = int(data["theta"].size)
        for kappa_map, aggregated, runner in zip(data["todo"], data["aggregated"], data["runners"]):
            flags = data["flags"][kappa_map.path]
            row_shapes = {path: ((npatch,) + tuple(shape), "f4") for path, shape in aggregated["row_shapes"].items()}
            my_rows = {path: block.astype(np.float32) for path, block in aggregated["rows"].items()}
            exclude = config.analysis.exclude_flagged_patches
            path = write_rows_file(
                stats_path(config, kappa_map), self._static(settings, data, flags), row_shapes,
                aggregated["first_row"], my_rows, self._attrs(settings, kappa_map, npatch, comm.size),
                comm, finish=lambda handle, rows=list(row_shapes), flags=flags: _write_summary(
                    handle, rows, ~flags if exclude else np.ones_like(flags)),
                parallel_io=config.pipeline.parallel_io)
            self.outputs.append(str(path))
            if comm.is_root:  # the results file is complete: its task checkpoints are no longer needed
                runner.store.clear()
        return data

    @staticmethod
    def _static(settings: PatchAnalysisSettings, data, flags) -> Dict[str, np.ndarray]:
        def as_int_if_whole(values):
            values = np.asarray(values, dtype=np.float64)
            return values.astype(np.int64) if np.all(values == np.round(values)) else values
        return {
            "metadata/parameters/ngal_list": np.asarray(settings.ngal_list, dtype=np.int64),
            "metadata/parameters/sl_list": as_int_if_whole(settings.smoothing_arcmin),
            "metadata/parameters/bins": settings.nu_edges,
            "metadata/parameters/nu": 0.5 * (settings.nu_edges[1:] + settings.nu_edges[:-1]),
            "metadata/parameters/l_edges": settings.l_edges,
            "metadata/parameters/ell": settings.ell,
            "patches/centers": np.column_stack([data["theta"], data["phi"]]),
            "patches/replication_flag": np.asarray(flags, dtype=bool),
        }

    def _attrs(self, settings: PatchAnalysisSettings, kappa_map: KappaMapInput, npatch: int, nranks: int):
        config = self.config
        side = settings.patch_size_deg
        return {
            "/": {
                "package": "lensing_ssc", "package_version": __version__, "config_hash": config.science_hash(),
                "input_file": Path(kappa_map.path).name, "input_bytes": kappa_map.nbytes,
                "nside": kappa_map.nside, "ordering": "NESTED", "zs": kappa_map.zs,
                "simulation_seed": kappa_map.seed, "noise_seed": config.analysis.noise_seed,
                "noise_base_seed": noise_base_seed(config.analysis.noise_seed, kappa_map.seed),
                "noise_model": "one white-noise draw per (patch, ngal), shared by all statistics",
                "cosmology_H0": config.cosmology.H0, "cosmology_Om0": config.cosmology.Om0,
                "n_patches": npatch, "n_ranks": nranks,
                "statistics": ",".join(config.analysis.statistics),
                "box_size": kappa_map.box_size if kappa_map.box_size is not None else np.nan,
            },
            "metadata/parameters": {
                "creation_date": str(np.datetime64("now")),
                "patch_size_deg": int(side) if float(side).is_integer() else float(side),
                "xsize": settings.xsize, "pixarea_arcmin2": settings.pixarea_arcmin2,
                "lmin": int(settings.lmin) if float(settings.lmin).is_integer() else settings.lmin,
                "lmax": int(settings.lmax) if float(settings.lmax).is_integer() else settings.lmax,
                "nbin": settings.nbin, "epsilon": settings.epsilon,
            },
        }


def _write_summary(handle: h5py.File, row_paths: List[str], include: np.ndarray) -> None:
    """``/summary/{path}/{mean,std,cov,corr}`` over the included patches, for every per-patch dataset,
    with the Hartlap factor of that block as an attribute of ``/summary/{path}``."""
    summary = handle.require_group("summary")
    used = int(np.count_nonzero(include))
    summary.attrs["n_patches_used"] = used
    summary.attrs["excluded_patches"] = np.flatnonzero(~include).astype(np.int64)
    for path in row_paths:
        if used < 2:
            break
        for key, value in summarise_rows(handle[path][...], include).items():
            summary.create_dataset(f"{path}/{key}", data=value)
        # Hartlap et al. (2007): multiply the inverse covariance by (n - p - 2)/(n - 1); NaN when n <= p + 2.
        nbins = int(np.prod(handle[path].shape[1:]))
        summary[path].attrs["hartlap_factor"] = hartlap_factor(used, nbins) if used > nbins + 2 else np.nan


__all__ = ["DataLoadingStep", "ValidationStep", "PatchingStep", "StatisticsStep", "ResultAggregationStep",
           "OutputWritingStep", "KappaMapInput"]
