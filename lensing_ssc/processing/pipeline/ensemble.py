"""EnsemblePipeline: results files of simulation families -> pooled covariances and the family ratios
that measure super-sample covariance (SCIENCE.md §6.6, §10, §11.5; DESIGN.md §4).

Input: ``ensemble.families`` (family name -> globs of ``stats_zs{zs}_s{seed}_oa{S}.h5`` files, of the
original code or ours). Files are grouped by (zs, patch side); each group gives
``{output_dir}/ensemble/ensemble_zs{zs}_oa{S}.h5``::

    /metadata/parameters/{ell, l_edges, bins, nu, ...}     binning, copied from the inputs
    /families/{name}                                        attrs: files, seeds, patch counts, exclusions
    /families/{name}/exclusion                              int8 (n_sims, n_patches): 0 used, 1 listed in
                                                            ensemble.exclude_patches, 2 replication flag,
                                                            3 outlier
    /families/{name}/{path}/{mean,std,cov,corr}             per results dataset, e.g. power_spectra/ngal_0/cl;
                                                            group attrs n_patches, hartlap_factor
    /families/{name}/data_vector/{mean,std,cov,corr,paths,offsets}   the full data vector (SCIENCE.md §6.6 order)
    /ratios/{first}_over_{second}/{path}/{mean_ratio, variance_ratio, variance_ratio_err, cov_ratio, cov_ratio_err}
    /theory/...                                             with ensemble.theory: the halo-model SSC prediction
                                                            of the power-spectrum variance ratio (ensemble_theory)

Ratios are for the first two families in config order; errors are bootstrap standard deviations over
simulations (``ensemble.bootstrap`` resamples; absent when 0). Plots go to ``{output_dir}/plots``.

MPI: rank 0 finds and checks the files; the dataset paths of a group are split over the ranks by
cost; every rank reads and summarises its paths; the outlier masks are OR-ed over ranks; rank 0
gathers the summaries (and the data-vector columns), writes the file atomically and draws the plots.
Each path's numbers depend only on that path's rows, and the bootstrap of every path uses the same
seeded draws, so the output is the same for any number of ranks.
"""
from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import h5py
import numpy as np

from lensing_ssc import __version__
from lensing_ssc.core.errors import ConfigError, InputError
from lensing_ssc.io.atomic import atomic_output
from lensing_ssc.parallel import Comm, get_comm, mark_collective, root_then_bcast, split_by_cost
from lensing_ssc.processing.pipeline.base_pipeline import BasePipeline
from lensing_ssc.processing.pipeline.ensemble_theory import compute_theory, write_theory
from lensing_ssc.processing.steps.base import BaseStep
from lensing_ssc.science.covariance import (bootstrap_covariance_ratio, bootstrap_error, covariance_ratio,
                                            data_vector_paths, hartlap_factor, outlier_rows, pooled_summary)

log = logging.getLogger("lensing_ssc.ensemble")

#: Seed of the bootstrap draws (recorded in the output): every path uses the same resamples.
BOOTSTRAP_SEED = 0
#: Groups of a results file that hold per-patch rows (first axis = patch index).
PER_PATCH_GROUPS = ("power_spectra/", "bispectra/", "smoothed_statistics/", "plugins/")
#: metadata/parameters datasets that define the binning; they must agree across the files of a group.
BINNING = ("l_edges", "bins")
USED, LISTED, FLAGGED, OUTLIER = 0, 1, 2, 3
EXCLUSION_CODES = "0 used, 1 listed in ensemble.exclude_patches, 2 replication-flagged, 3 outlier"
OA_NAME = re.compile(r"_oa(?P<oa>\d+(?:\.\d+)?)")


def side_text(side: float) -> str:
    """Patch side [deg] as in the file names: ``10.0 -> '10'``, ``7.5 -> '7.5'``."""
    return str(int(side)) if float(side).is_integer() else str(side)


@dataclass(frozen=True)
class ResultsFileInfo:
    """One input results file: path, source redshift, simulation seed, patch side [deg], number of
    patches, per-patch dataset path -> per-patch shape, replication flags (n_patches,) bool or None,
    and the ``metadata/parameters`` datasets."""

    path: str
    zs: float
    seed: int
    patch_size_deg: float
    n_patches: int
    shapes: Dict[str, Tuple[int, ...]]
    flags: Optional[np.ndarray]
    parameters: Dict[str, np.ndarray]


@dataclass(frozen=True)
class EnsembleGroup:
    """The files of one (zs, patch side) per family (config order; files sorted by seed) and the
    per-patch dataset paths they share (sorted)."""

    zs: float
    patch_size_deg: float
    families: Dict[str, List[ResultsFileInfo]]
    paths: List[str]

    @property
    def name(self) -> str:
        return f"ensemble_zs{self.zs}_oa{side_text(self.patch_size_deg)}"

    def n_patches(self, family: str) -> int:
        return self.families[family][0].n_patches


def ensemble_path(config, group: EnsembleGroup) -> Path:
    """``{output_dir}/ensemble/ensemble_zs{zs}_oa{S}.h5``."""
    return Path(config.output_dir) / "ensemble" / f"{group.name}.h5"


def ratio_name(families: List[str]) -> Optional[str]:
    """``{first}_over_{second}`` for the first two families, None with fewer than two."""
    return f"{families[0]}_over_{families[1]}" if len(families) > 1 else None


# ---------------------------------------------------------------------------------------------
# Finding and describing the input files (rank 0).

def _describe_file(path: Path) -> ResultsFileInfo:
    from lensing_ssc.plots import results_identity  # zs and seed: root attrs, else the file name
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: cannot open as an HDF5 results file ({exc})") from None
    with handle:
        shapes: Dict[str, Tuple[int, ...]] = {}
        handle.visititems(lambda name, item: shapes.__setitem__(name, item.shape)
                          if isinstance(item, h5py.Dataset) and name.startswith(PER_PATCH_GROUPS) else None)
        parameters = {name: item[()] for name, item in handle["metadata/parameters"].items()} \
            if "metadata/parameters" in handle else {}
        side = handle["metadata/parameters"].attrs.get("patch_size_deg") if "metadata/parameters" in handle else None
        flags = handle["patches/replication_flag"][()].astype(bool) if "patches/replication_flag" in handle else None
    if not shapes:
        raise InputError(f"{path}: no per-patch statistics (expected datasets under "
                         f"{', '.join(g.rstrip('/') for g in PER_PATCH_GROUPS)})")
    counts = {shape[0] if shape else 0 for shape in shapes.values()}
    if len(counts) > 1:
        raise InputError(f"{path}: per-patch datasets have different numbers of patches {sorted(counts)}")
    zs, seed = results_identity(path)
    if side is None and OA_NAME.search(path.name):
        side = OA_NAME.search(path.name)["oa"]
    if zs is None or seed is None or side is None:
        raise InputError(f"{path}: cannot tell the source redshift, simulation seed or patch size (expected root "
                         "attrs zs/simulation_seed or a name stats_zs{zs}_s{seed}_oa{S}.h5)")
    n_patches = counts.pop()
    if flags is not None and flags.shape != (n_patches,):
        raise InputError(f"{path}: patches/replication_flag has shape {flags.shape}; expected ({n_patches},)")
    return ResultsFileInfo(path=str(path), zs=zs, seed=seed, patch_size_deg=float(side), n_patches=n_patches,
                           shapes={name: tuple(shape[1:]) for name, shape in shapes.items()}, flags=flags,
                           parameters=parameters)


def _family_files(name: str, patterns: List[str]) -> List[Path]:
    found: Dict[str, Path] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise InputError(f"ensemble.families.{name}: glob {pattern!r} matches no file "
                             f"(relative globs are taken from {os.getcwd()})")
        for match in matches:
            found.setdefault(os.path.realpath(match), Path(match))
    return list(found.values())


def _check_group(zs: float, side: float, families: Dict[str, List[ResultsFileInfo]]) -> EnsembleGroup:
    """One group's files must agree: datasets, per-patch shapes, binning, patch count per family,
    distinct seeds per family."""
    where = f"zs = {zs}, oa{side_text(side)}"
    reference = next(iter(families.values()))[0]
    for family, files in families.items():
        seeds = [f.seed for f in files]
        duplicated = sorted({s for s in seeds if seeds.count(s) > 1})
        if duplicated:
            paths = [f.path for f in files if f.seed == duplicated[0]]
            raise InputError(f"ensemble.families.{family}: simulation seed {duplicated[0]} appears in several "
                             f"files ({', '.join(paths)}) for {where}")
        for info in files:
            missing = sorted(set(reference.shapes) - set(info.shapes))
            extra = sorted(set(info.shapes) - set(reference.shapes))
            if missing or extra:
                what = f"lacks dataset {missing[0]}" if missing else f"has dataset {extra[0]}"
                raise InputError(f"{info.path}: {what} that {reference.path} "
                                 f"{'has' if missing else 'lacks'}; expected the same statistics in every file")
            for path, shape in info.shapes.items():
                if shape != reference.shapes[path]:
                    raise InputError(f"{info.path}: dataset {path} has per-patch shape {shape} but {reference.path} "
                                     f"has {reference.shapes[path]}; expected the same binning in every file")
            for key in BINNING:
                mine, theirs = info.parameters.get(key), reference.parameters.get(key)
                if (mine is None) != (theirs is None) or (
                        mine is not None and (np.shape(mine) != np.shape(theirs) or not np.allclose(mine, theirs))):
                    raise InputError(f"{info.path}: metadata/parameters/{key} differs from {reference.path}; "
                                     "expected the same binning in every file")
            if info.n_patches != files[0].n_patches:
                raise InputError(f"{info.path}: {info.n_patches} patches but {files[0].path} has "
                                 f"{files[0].n_patches}; expected one patch count per family ({family})")
    return EnsembleGroup(zs=zs, patch_size_deg=side, paths=sorted(reference.shapes),
                         families={f: sorted(files, key=lambda i: i.seed) for f, files in families.items()})


def find_groups(config) -> List[EnsembleGroup]:
    """Every (zs, patch side) group of the configured families, checked (InputError on bad input)."""
    described: Dict[str, List[ResultsFileInfo]] = {
        name: [_describe_file(path) for path in _family_files(name, patterns)]
        for name, patterns in config.ensemble.families.items()}
    keys = sorted({(info.zs, info.patch_size_deg) for files in described.values() for info in files})
    groups = []
    for zs, side in keys:
        members = {name: [i for i in files if (i.zs, i.patch_size_deg) == (zs, side)]
                   for name, files in described.items()}
        empty = [name for name, files in members.items() if not files]
        if empty:
            others = ", ".join(f"{n} has {len(f)}" for n, f in members.items() if f)
            raise InputError(f"ensemble.families.{empty[0]}: no results file for zs = {zs}, oa{side_text(side)} "
                             f"({others}); expected every family to cover the same redshifts and patch sizes")
        groups.append(_check_group(zs, side, members))
    too_large = [i for i in config.ensemble.exclude_patches
                 if any(i >= group.n_patches(f) for group in groups for f in group.families)]
    if too_large:
        smallest = min(group.n_patches(f) for group in groups for f in group.families)
        raise ConfigError([f"ensemble.exclude_patches: patch index {too_large[0]} is out of range; the inputs have "
                           f"{smallest} patches"], config.source)
    return groups


class EnsembleInputStep(BaseStep):
    """Rank 0 resolves the globs, describes every file and checks that the files of each (zs, patch
    side) agree; every rank gets ``{"groups": [EnsembleGroup, ...]}``."""

    retryable = False

    def __init__(self, config, comm: Optional[Comm] = None):
        super().__init__(config)
        self.comm = comm or get_comm()

    def execute(self, input_data):
        groups = root_then_bcast(self.comm, lambda: find_groups(self.config))
        if self.comm.is_root:
            for group in groups:
                log.info("ensemble: %s: %s; %d statistics", group.name,
                         ", ".join(f"{n} {len(f)} simulations" for n, f in group.families.items()), len(group.paths))
        return {"groups": groups}

    def validate_output(self, output_data) -> bool:
        return bool(output_data["groups"])


# ---------------------------------------------------------------------------------------------
# Pooling (all ranks).

def _agree(comm: Comm, work: Callable[[], object]):
    """Run ``work`` on every rank; if it raises an InputError on any rank, all raise the first one
    (lowest rank) together, so a bad input ends the job cleanly with exit code 2."""
    try:
        outcome, message = work(), None
    except InputError as exc:
        outcome, message = None, str(exc)
    messages = [m for m in comm.allgather(message) if m is not None]
    if messages:
        raise mark_collective(InputError(messages[0]))
    return outcome


def _read_rows(files: List[ResultsFileInfo], paths: List[str]) -> Dict[str, List[np.ndarray]]:
    """path -> per simulation (n_patches, n_bins) float64, rows checked finite."""
    rows: Dict[str, List[np.ndarray]] = {path: [] for path in paths}
    for info in files:
        with h5py.File(info.path, "r") as handle:
            for path in paths:
                values = np.asarray(handle[path][()], dtype=np.float64).reshape(info.n_patches, -1)
                if not np.all(np.isfinite(values)):
                    bad = np.flatnonzero(~np.all(np.isfinite(values), axis=1))
                    raise InputError(f"{info.path}: dataset {path} has non-finite values in patch(es) "
                                     f"{bad[:5].tolist()}; expected finite statistics")
                rows[path].append(values)
    return rows


def _base_exclusion(config, files: List[ResultsFileInfo]) -> np.ndarray:
    """(n_sims, n_patches) int8 codes from ensemble.exclude_patches and the replication flags."""
    codes = np.zeros((len(files), files[0].n_patches), dtype=np.int8)
    if config.ensemble.exclude_flagged:
        for row, info in zip(codes, files):
            if info.flags is not None:
                row[info.flags] = FLAGGED
    codes[:, np.asarray(config.ensemble.exclude_patches, dtype=np.int64)] = LISTED
    return codes


def _used_groups(rows: List[np.ndarray], codes: np.ndarray) -> List[np.ndarray]:
    return [block[code == USED] for block, code in zip(rows, codes)]


def _family_outliers(groups: List[np.ndarray], codes: np.ndarray, n_sigma: float) -> np.ndarray:
    """(n_sims, n_patches) bool: used patches beyond ``n_sigma`` in some bin of these pooled rows."""
    flagged = np.zeros(codes.shape, dtype=bool)
    flagged[codes == USED] = outlier_rows(np.concatenate(groups), n_sigma)
    return flagged


def _summary(family: str, groups: List[np.ndarray], where: str) -> Dict[str, np.ndarray]:
    used = sum(len(g) for g in groups)
    if used < 2:
        raise InputError(f"ensemble.families.{family}: only {used} patch(es) left for {where} after the "
                         "exclusions; expected at least 2")
    return pooled_summary(groups)


def _hartlap(n_patches: int, n_bins: int) -> float:
    return hartlap_factor(n_patches, n_bins) if n_patches > n_bins + 2 else float("nan")


def _path_ratio(first: List[np.ndarray], second: List[np.ndarray], summaries, bootstrap: int):
    a, b = summaries
    out = {"mean_ratio": covariance_ratio(a["mean"], b["mean"]), "cov_ratio": covariance_ratio(a["cov"], b["cov"])}
    out["variance_ratio"] = np.diag(out["cov_ratio"]).copy()
    if bootstrap:
        # A fresh generator with one seed per path: the same resamples for every path and rank count.
        replicates = bootstrap_covariance_ratio(first, second, bootstrap, np.random.default_rng(BOOTSTRAP_SEED))
        out["cov_ratio_err"] = bootstrap_error(replicates)
        out["variance_ratio_err"] = np.diag(out["cov_ratio_err"]).copy()
    return out


def pool_group(config, group: EnsembleGroup, comm: Comm) -> Optional[dict]:
    """Summaries of one group (collective). Returns on rank 0 ``{"families": {name: {path: summary,
    "data_vector": summary, "exclusion": codes}}, "ratios": {path: ratios}}``; None elsewhere."""
    families = list(group.families)
    costs = [sum(len(f) for f in group.families.values()) * int(np.prod(group.families[families[0]][0].shapes[p]))
             for p in group.paths]
    start, stop = split_by_cost(costs, comm.size)[comm.rank]
    mine = group.paths[start:stop]
    rows = _agree(comm, lambda: {f: _read_rows(files, mine) for f, files in group.families.items()})
    codes = {f: _base_exclusion(config, files) for f, files in group.families.items()}
    sigma = config.ensemble.outlier_sigma
    if sigma is not None:
        for family in families:
            local = np.zeros(codes[family].shape, dtype=bool)
            for path in mine:
                groups = _used_groups(rows[family][path], codes[family])
                if sum(len(g) for g in groups) >= 2:
                    local |= _family_outliers(groups, codes[family], sigma)
            codes[family][np.logical_or.reduce(comm.allgather(local))] = OUTLIER

    def summarise():
        summaries, ratios, columns = {f: {} for f in families}, {}, {f: {} for f in families}
        vector = set(data_vector_paths(group.paths))
        for path in mine:
            used = {f: _used_groups(rows[f][path], codes[f]) for f in families}
            for family in families:
                summaries[family][path] = _summary(family, used[family], f"{group.name} {path}")
                if path in vector:
                    columns[family][path] = np.concatenate(used[family])
            if len(families) > 1:
                pair = (summaries[families[0]][path], summaries[families[1]][path])
                ratios[path] = _path_ratio(used[families[0]], used[families[1]], pair, config.ensemble.bootstrap)
        return summaries, ratios, columns

    gathered = comm.gather(_agree(comm, summarise))
    if not comm.is_root:
        return None
    out = {"families": {f: {"exclusion": codes[f]} for f in families}, "ratios": {}}
    columns = {f: {} for f in families}
    for summaries, ratios, cols in gathered:
        out["ratios"].update(ratios)
        for family in families:
            out["families"][family].update(summaries[family])
            columns[family].update(cols[family])
    order = data_vector_paths(group.paths)
    for family in families:
        if order:
            blocks = [columns[family][p] for p in order]
            summary = pooled_summary([np.hstack(blocks)])
            summary["paths"] = np.array(order, dtype=h5py.string_dtype())
            summary["offsets"] = np.concatenate([[0], np.cumsum([b.shape[1] for b in blocks])]).astype(np.int64)
            out["families"][family]["data_vector"] = summary
    return out


class EnsembleStatisticsStep(BaseStep):
    """Pools the patches of every simulation of each family, per (zs, patch side) group and per
    results dataset, on all ranks (dataset paths split by cost); applies the exclusions; computes the
    family ratios with bootstrap errors. Output adds ``"pooled"`` (rank 0: one dict per group)."""

    retryable = False

    def __init__(self, config, comm: Optional[Comm] = None):
        super().__init__(config)
        self.comm = comm or get_comm()

    def validate_input(self, data) -> bool:
        return isinstance(data, dict) and bool(data.get("groups"))

    def execute(self, data):
        return {**data, "pooled": [pool_group(self.config, group, self.comm) for group in data["groups"]]}


# ---------------------------------------------------------------------------------------------
# Writing and plotting (rank 0).

def _family_attrs(files: List[ResultsFileInfo], codes: np.ndarray) -> Dict[str, object]:
    return {
        "files": np.array([f.path for f in files], dtype=h5py.string_dtype()),
        "simulation_seeds": np.array([f.seed for f in files], dtype=np.int64),
        "n_simulations": len(files),
        "n_patches_per_simulation": files[0].n_patches,
        "n_patches_used": int(np.count_nonzero(codes == USED)),
        "n_excluded_listed": int(np.count_nonzero(codes == LISTED)),
        "n_excluded_flagged": int(np.count_nonzero(codes == FLAGGED)),
        "n_excluded_outlier": int(np.count_nonzero(codes == OUTLIER)),
    }


def write_ensemble_file(config, group: EnsembleGroup, pooled: dict, theory: Optional[dict] = None) -> Path:
    """Rank 0: the ensemble HDF5 of one group (layout in the module docstring), written atomically;
    ``theory``: the ``/theory`` group of :func:`ensemble_theory.compute_theory` (None: none)."""
    families = list(group.families)
    ensemble = config.ensemble
    final = ensemble_path(config, group)
    with atomic_output(final) as temporary, h5py.File(temporary, "w") as handle:
        handle.attrs.update({
            "package": "lensing_ssc", "package_version": __version__, "zs": group.zs,
            "patch_size_deg": group.patch_size_deg,
            "families": np.array(families, dtype=h5py.string_dtype()),
            "exclude_patches": np.asarray(ensemble.exclude_patches, dtype=np.int64),
            "exclude_flagged": ensemble.exclude_flagged,
            "outlier_sigma": np.nan if ensemble.outlier_sigma is None else ensemble.outlier_sigma,
            "outlier_rule": "a patch is dropped from every statistic of its family when any bin of any statistic "
                            "is at |x - mean| >= outlier_sigma * std (family pooled, one pass)",
            "bootstrap": ensemble.bootstrap, "bootstrap_seed": BOOTSTRAP_SEED,
            "bootstrap_method": "simulations resampled with replacement per family; std (ddof 1) of the ratios",
            "ddof": 1,
        })
        for name, value in group.families[families[0]][0].parameters.items():
            handle.create_dataset(f"metadata/parameters/{name}", data=value)
        for family in families:
            root = handle.create_group(f"families/{family}")
            codes = pooled["families"][family]["exclusion"]
            root.attrs.update(_family_attrs(group.families[family], codes))
            root.create_dataset("exclusion", data=codes).attrs["codes"] = EXCLUSION_CODES
            for path, summary in pooled["families"][family].items():
                if path == "exclusion":
                    continue
                target = root.create_group(path)
                for key, value in summary.items():
                    target.create_dataset(key, data=value)
                n_used = int(np.count_nonzero(codes == USED))
                target.attrs.update({"n_patches": n_used, "hartlap_factor": _hartlap(n_used, len(summary["mean"]))})
        name = ratio_name(families)
        if name:
            ratios = handle.create_group(f"ratios/{name}")
            ratios.attrs.update({"first": families[0], "second": families[1]})
            for path, values in pooled["ratios"].items():
                for key, value in values.items():
                    ratios.create_dataset(f"{path}/{key}", data=value)
        if theory is not None:
            write_theory(handle, theory)
    return final


class EnsembleWritingStep(BaseStep):
    """Rank 0 writes ``{output_dir}/ensemble/ensemble_zs{zs}_oa{S}.h5`` per group (atomic rename), with
    the SSC theory when ``ensemble.theory`` asks for it."""

    retryable = False

    def __init__(self, config, comm: Optional[Comm] = None):
        super().__init__(config)
        self.comm = comm or get_comm()

    def validate_input(self, data) -> bool:
        return isinstance(data, dict) and "pooled" in data

    def execute(self, data):
        paths = []
        for group, pooled in zip(data["groups"], data["pooled"]):
            path = ensemble_path(self.config, group)
            if self.comm.is_root:
                write_ensemble_file(self.config, group, pooled, compute_theory(self.config, group, pooled))
                log.info("ensemble: wrote %s", path)
            paths.append(str(path))
        self.comm.barrier()
        self.outputs.extend(paths)
        return {**data, "ensemble_files": paths}


class EnsemblePlottingStep(BaseStep):
    """Rank 0 draws the figures of every ensemble file into ``{output_dir}/plots``."""

    retryable = False

    def __init__(self, config, comm: Optional[Comm] = None):
        super().__init__(config)
        self.comm = comm or get_comm()

    def validate_input(self, data) -> bool:
        return isinstance(data, dict) and "ensemble_files" in data

    def execute(self, data):
        from lensing_ssc.ensemble_plots import plot_ensemble
        written: List[str] = []
        if self.comm.is_root:
            for path in data["ensemble_files"]:
                written += [str(p) for p in plot_ensemble(path, Path(self.config.output_dir) / "plots")]
        self.outputs.extend(self.comm.bcast(written))
        return data


class EnsemblePipeline(BasePipeline):
    """Pools results files of simulation families (``ensemble`` config section) into covariances and
    family ratios: input discovery and checks, pooling, writing, plots."""

    def _validate_config(self) -> None:
        super()._validate_config()
        families = self.config.ensemble.families
        problems = []
        if not families:
            problems.append("ensemble.families: expected a mapping family name -> list of results-file globs; "
                            "the ensemble stage needs at least one family")
        for name in families or {}:
            if not name or "/" in name or name in (".", ".."):
                problems.append(f"ensemble.families: family name {name!r} is not usable as an HDF5 group name")
        if problems:
            raise ConfigError(problems, self.config.source)

    def _create_steps(self):
        return [EnsembleInputStep(self.config, self.comm), EnsembleStatisticsStep(self.config, self.comm),
                EnsembleWritingStep(self.config, self.comm), EnsemblePlottingStep(self.config, self.comm)]


__all__ = ["EnsemblePipeline", "EnsembleInputStep", "EnsembleStatisticsStep", "EnsembleWritingStep",
           "EnsemblePlottingStep", "EnsembleGroup", "ResultsFileInfo", "find_groups", "ensemble_path",
           "write_ensemble_file", "pool_group"]
