"""Figures of one ensemble file ``ensemble_zs{zs}_oa{S}.h5`` (the ensemble stage's output).

``plot_ensemble`` writes, into ``output_dir``, PNGs named ``{ensemble file stem}_{figure}.png``:

``variance_ratio``  variance ratio first/second family per bin of every statistic (noiseless, else the
                    lowest noise level), with bootstrap error bars over simulations
``correlation``     correlation matrices of the families side by side, for the data vector of that noise
                    level at the smallest smoothing scale (SCIENCE.md §6.6 order)
``cov_ratio``       element-wise covariance ratio first/second of the same data vector

The layout, colours and captions follow :mod:`lensing_ssc.plots`, whose helpers are used here.
When the file has a ``/theory`` group (``ensemble.theory``, pyccl installed), the power-spectrum panel
also shows the halo-model SSC prediction of the variance ratio (``/theory/predicted_ratio``).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import h5py
import matplotlib.pyplot as plt
import numpy as np

from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

from lensing_ssc.plots import STYLE, _caption, _colours, _log_ticks, _new_figure, _noise_label, _save

log = logging.getLogger("lensing_ssc.plots")

#: Statistic name (last part of the dataset path) -> (label, x axis: "ell" or "nu").
STATISTICS = {
    "cl": (r"$C_\ell$", "ell"), "squeezed": (r"$B_{sq}$", "ell"), "isosceles": (r"$B_{iso}$", "ell"),
    "equilateral": (r"$B_{eq}$", "ell"), "pdf": ("PDF", "nu"), "peaks": ("peaks", "nu"),
    "minima": ("minima", "nu"), "v0": ("$V_0$", "nu"), "v1": ("$V_1$", "nu"), "v2": ("$V_2$", "nu"),
}
SIGMAS = {"sigma/0": r"$\sigma_0$ (rms of smoothed $\kappa$)", "sigma/1": r"$\sigma_1$ (gradient rms of $\nu$)"}
CORRELATION_FLOOR = 0.05  # |corr| of the second family below which a covariance ratio is not shown


def _statistic(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _scale(path: str) -> Optional[str]:
    match = re.search(r"/sl_([^/]+)/", path)
    return match[1] if match else None


def _block_label(path: str) -> str:
    label = STATISTICS[_statistic(path)][0]
    scale = _scale(path)
    return label if scale is None else f"{label} {scale}′"


class EnsembleFile:
    """An ensemble file opened for plotting: families, ratio group, binning and dataset access."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"ensemble_path: {self.path} is not a file; expected an ensemble_zs*_oa*.h5 file")
        self.handle = h5py.File(self.path, "r")
        attrs = self.handle.attrs
        self.families = [str(f) for f in attrs["families"]]
        self.zs = float(attrs["zs"])
        self.ratio = f"ratios/{self.families[0]}_over_{self.families[1]}" if len(self.families) > 1 else None

    def close(self):
        self.handle.close()

    def parameter(self, name: str) -> Optional[np.ndarray]:
        key = f"metadata/parameters/{name}"
        return np.asarray(self.handle[key][()], dtype=np.float64) if key in self.handle else None

    def family(self, name: str) -> h5py.Group:
        return self.handle[f"families/{name}"]

    def paths(self) -> List[str]:
        """Per-patch dataset paths summarised in the file (those with a ``mean``)."""
        found = []
        self.family(self.families[0]).visititems(
            lambda name, item: found.append(name.rsplit("/", 1)[0])
            if isinstance(item, h5py.Dataset) and name.endswith("/mean") and not name.startswith("data_vector") else None)
        return sorted(found)

    def noise_level(self) -> Optional[str]:
        """``ngal_0`` if present, else the lowest ``ngal_N`` group."""
        levels = {m[1] for p in self.paths() if (m := re.search(r"(ngal_(\d+))", p))}
        return min(levels, key=lambda g: int(g.split("_")[1])) if levels else None

    def describe(self) -> str:
        parts = []
        for name in self.families:
            attrs = self.family(name).attrs
            parts.append(f"{name}: {attrs['n_simulations']} simulations, {attrs['n_patches_used']} patches")
        return "; ".join(parts)

    def exclusions(self) -> str:
        """The exclusions applied, e.g. ``excluded: patch 132 of every simulation; 3 outliers (5σ)``."""
        attrs = self.handle.attrs
        listed = [int(i) for i in attrs["exclude_patches"]]
        flagged = sum(int(self.family(n).attrs["n_excluded_flagged"]) for n in self.families)
        outliers = sum(int(self.family(n).attrs["n_excluded_outlier"]) for n in self.families)
        parts = [f"patch{'es' if len(listed) > 1 else ''} {', '.join(map(str, listed))} of every simulation"] \
            if listed else []
        if attrs["exclude_flagged"]:
            parts.append(f"{flagged} replication-flagged")
        if not np.isnan(float(attrs["outlier_sigma"])):
            parts.append(f"{outliers} outliers ({float(attrs['outlier_sigma']):g}σ)")
        return "excluded: " + ("; ".join(parts) if parts else "none")

    def title(self, what: str) -> str:
        return f"{what} — $z_s$ = {self.zs}"

    def theory(self, path: str) -> Optional[h5py.Group]:
        """The ``/theory`` group when it predicts the variance ratio of dataset ``path``, else None."""
        group = self.handle.get("theory")
        return group if group is not None and group.attrs["path"] == path else None


# ---------------------------------------------------------------------------------------------
# (1) Variance ratio per statistic.

def _ratio_panels(ensemble: EnsembleFile, level: str) -> List[Tuple[str, List[str]]]:
    """(statistic, its dataset paths at ``level``) in SCIENCE.md §6.6 order, then sigma0, sigma1."""
    paths = sorted((p for p in ensemble.paths() if f"/{level}/" in p), key=lambda p: float(_scale(p) or 0))
    panels = [(name, [p for p in paths if _statistic(p) == name and not p.endswith(tuple(SIGMAS))])
              for name in STATISTICS]
    panels += [(sigma, [p for p in paths if p.endswith(sigma)]) for sigma in SIGMAS]
    return [(name, found) for name, found in panels if found]


def ratio_limits(values: Sequence[np.ndarray], errors: Sequence[Optional[np.ndarray]]) -> Tuple[float, float]:
    """y range of a ratio panel: the finite ratios and 1, padded by the median error bar (at least
    0.05, at most the spread of the ratios), so one huge bootstrap error (a bin almost always
    empty, such as the PDF below nu = -3) does not flatten the others; such bars are cut."""
    y = np.concatenate([np.ravel(v) for v in values] + [[1.0]])
    y = y[np.isfinite(y)]
    e = np.concatenate([np.ravel(v) for v in errors if v is not None] or [np.zeros(0)])
    e = e[np.isfinite(e)]
    spread = y.max() - y.min()
    pad = max(0.05, min(float(np.median(e)) if e.size else 0.0, max(spread, 0.05)), 0.1 * spread)
    return float(y.min() - pad), float(y.max() + pad)


def _log_ell_axis(axis, ell: np.ndarray) -> None:
    axis.set_xscale("log")
    axis.xaxis.set_major_locator(FixedLocator(_log_ticks(ell.min(), ell.max())))
    axis.xaxis.set_major_formatter(ScalarFormatter())
    axis.xaxis.set_minor_formatter(NullFormatter())


def plot_variance_ratio(ensemble: EnsembleFile, output_dir: Path) -> Optional[Path]:
    """One panel per statistic: variance ratio per bin with bootstrap error bars; one colour per
    smoothing scale for the smoothed-map statistics; sigma0/sigma1 against the smoothing scale."""
    level = ensemble.noise_level()
    if ensemble.ratio is None or level is None:
        log.info("plots: %s: no variance-ratio figure (fewer than two families)", ensemble.path.name)
        return None
    ratios = ensemble.handle[ensemble.ratio]
    panels = _ratio_panels(ensemble, level)
    ell, nu = ensemble.parameter("ell"), ensemble.parameter("nu")
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = _new_figure(nrows, ncols, (3.7, 3.0))
    scales = sorted({s for _, paths in panels for p in paths if (s := _scale(p)) is not None}, key=float)
    colours = dict(zip(scales, _colours(len(scales))))
    legend_drawn, theory_drawn = False, False
    for axis, (name, paths) in zip(axes.flat, panels):
        shown, bars = [], []
        if name in SIGMAS:
            x = np.array([float(_scale(p)) for p in paths])
            y = np.concatenate([ratios[f"{p}/variance_ratio"][()] for p in paths])
            err = np.concatenate([ratios[f"{p}/variance_ratio_err"][()] for p in paths]) \
                if f"{paths[0]}/variance_ratio_err" in ratios else None
            axis.errorbar(x, y, yerr=err, fmt="o", ms=4, capsize=3, color="k")
            shown.append(y)
            bars.append(err)
            axis.set_xlabel("smoothing scale [arcmin]")
            axis.set_title(SIGMAS[name], fontsize=10)
        else:
            label, kind = STATISTICS[name]
            for path in paths:
                x = ell if kind == "ell" else nu
                y = ratios[f"{path}/variance_ratio"][()]
                err = ratios[f"{path}/variance_ratio_err"][()] if f"{path}/variance_ratio_err" in ratios else None
                scale = _scale(path)
                axis.errorbar(x if x is not None else np.arange(y.size), y, yerr=err, fmt="o-", ms=3.5, lw=1.1,
                              capsize=2.5, color="k" if scale is None else colours[scale],
                              label=None if scale is None else rf"$\sigma_s$ = {scale}′")
                shown.append(y)
                bars.append(err)
                theory = ensemble.theory(path)
                if theory is not None:
                    predicted = theory["predicted_ratio"][()]
                    box = float(theory.attrs["second_family_box_mpc_h"])
                    missing = "all super-sample modes" if np.isnan(box) else f"modes k < 2π/{box:g} Mpc/h"
                    axis.plot(theory["ell"][()], predicted, color="C3", lw=1.4,
                              label=f"halo-model SSC ({ensemble.families[1]} lacks {missing})")
                    axis.legend(fontsize=7, loc="best")
                    shown.append(predicted)
                    theory_drawn = True
            if kind == "ell" and ell is not None:
                _log_ell_axis(axis, ell)
                axis.set_xlabel(r"multipole $\ell$")
            else:
                axis.set_xlabel(r"$\nu$ (bin centre)")
            axis.set_title(label)
            if len(paths) > 1 and not legend_drawn:  # one legend of the smoothing scales is enough
                axis.legend(fontsize=7, loc="best")
                legend_drawn = True
        axis.axhline(1.0, color="0.5", lw=0.8, ls="--")
        axis.set_ylim(*ratio_limits(shown, bars))
        axis.grid(True, alpha=0.25)
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    for axis in axes[:, 0]:
        axis.set_ylabel(f"Var {ensemble.families[0]} / Var {ensemble.families[1]}")
    fig.suptitle(ensemble.title(f"variance ratio {ensemble.families[0]}/{ensemble.families[1]}, "
                                f"{_noise_label(int(level.split('_')[1]))}"))
    theory_note = (" Red line: 1 + Var_SSC(missing modes)/Var measured, halo model (pyccl), cosmology and approximations "
                   "in /theory.") if theory_drawn else ""
    _caption(fig, f"{ensemble.describe()}. Bars: bootstrap std over simulations (cut at the panel edge when much larger than the others). "
             f"{ensemble.exclusions()}.{theory_note}")
    return _save(fig, ensemble.path.stem, output_dir, "variance_ratio")


# ---------------------------------------------------------------------------------------------
# (2), (3) Correlation matrices and covariance ratio of the data vector.

def data_vector_selection(paths: Sequence[str], offsets: np.ndarray, level: str) -> Tuple[np.ndarray, List[str], np.ndarray]:
    """Indices into the full data vector of the blocks at noise level ``level`` (spectra and the
    smallest smoothing scale), their labels and the block bounds within the selection."""
    scales = sorted({s for p in paths if f"/{level}/" in p and (s := _scale(p)) is not None}, key=float)
    keep = [i for i, p in enumerate(paths) if f"/{level}/" in p and _scale(p) in (None, scales[0] if scales else None)]
    index = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in keep]) if keep else np.array([], int)
    sizes = [offsets[i + 1] - offsets[i] for i in keep]
    return index, [_block_label(paths[i]) for i in keep], np.concatenate([[0], np.cumsum(sizes)])


def _matrix_axis(axis, matrix, bounds, labels, title, **imshow):
    image = axis.imshow(matrix, interpolation="nearest", **imshow)
    for edge in bounds[1:-1] - 0.5:
        axis.axhline(edge, color="k", lw=0.5)
        axis.axvline(edge, color="k", lw=0.5)
    centres = 0.5 * (bounds[:-1] + bounds[1:]) - 0.5
    axis.set_xticks(centres, labels, rotation=90)
    axis.set_yticks(centres, labels)
    axis.tick_params(length=0)
    axis.set_title(title)
    return image


def _vector_parts(ensemble: EnsembleFile):
    level = ensemble.noise_level()
    group = ensemble.family(ensemble.families[0])
    if level is None or "data_vector" not in group:
        return None
    paths = [p.decode() if isinstance(p, bytes) else str(p) for p in group["data_vector/paths"][()]]
    index, labels, bounds = data_vector_selection(paths, group["data_vector/offsets"][()], level)
    return (level, index, labels, bounds) if index.size else None


def plot_correlation(ensemble: EnsembleFile, output_dir: Path) -> Optional[Path]:
    """Correlation matrices of the (up to two) families side by side."""
    parts = _vector_parts(ensemble)
    if parts is None:
        log.info("plots: %s: no correlation figure (no data vector)", ensemble.path.name)
        return None
    level, index, labels, bounds = parts
    shown = ensemble.families[:2]
    fig, axes = _new_figure(1, len(shown), (6.2, 5.6))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.8")
    for axis, name in zip(axes[0], shown):
        matrix = ensemble.family(name)["data_vector/corr"][()][np.ix_(index, index)]
        image = _matrix_axis(axis, matrix, bounds, labels, name, cmap=cmap, vmin=-1, vmax=1)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="correlation coefficient")
    fig.suptitle(ensemble.title(f"correlation of the data vector, {_noise_label(int(level.split('_')[1]))}"))
    _caption(fig, f"{ensemble.describe()}. Blocks in SCIENCE.md §6.6 order, each in increasing ℓ or ν. "
             f"{ensemble.exclusions()}.")
    return _save(fig, ensemble.path.stem, output_dir, "correlation")


def plot_covariance_ratio(ensemble: EnsembleFile, output_dir: Path) -> Optional[Path]:
    """Element-wise covariance ratio first/second family; grey where the second family's
    |correlation| < CORRELATION_FLOOR (ratio of near-zero covariances) or its covariance is 0."""
    parts = _vector_parts(ensemble)
    if parts is None or ensemble.ratio is None:
        log.info("plots: %s: no covariance-ratio figure (no data vector or fewer than two families)",
                 ensemble.path.name)
        return None
    level, index, labels, bounds = parts
    first, second = (ensemble.family(n)["data_vector"] for n in ensemble.families[:2])
    cov_a = first["cov"][()][np.ix_(index, index)]
    cov_b = second["cov"][()][np.ix_(index, index)]
    corr_b = second["corr"][()][np.ix_(index, index)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.ma.masked_where((np.abs(corr_b) < CORRELATION_FLOOR) | (cov_b == 0), cov_a / cov_b)
    fig, axes = _new_figure(1, 1, (8.0, 6.8))
    cmap = plt.get_cmap("PuOr_r").with_extremes(bad="0.8")
    image = _matrix_axis(axes[0, 0], ratio, bounds, labels,
                         ensemble.title(f"covariance ratio {ensemble.families[0]}/{ensemble.families[1]}, "
                                        f"{_noise_label(int(level.split('_')[1]))}"),
                         cmap=cmap, vmin=0.5, vmax=1.5)
    fig.colorbar(image, ax=axes[0, 0], shrink=0.8, label=f"Cov {ensemble.families[0]} / Cov {ensemble.families[1]}")
    _caption(fig, f"{ensemble.describe()}. Grey: |corr| < {CORRELATION_FLOOR} in {ensemble.families[1]} "
             f"(ratio undefined). Colour range clipped to 0.5–1.5. {ensemble.exclusions()}.")
    return _save(fig, ensemble.path.stem, output_dir, "cov_ratio")


def plot_ensemble(ensemble_path, output_dir) -> List[Path]:
    """Write the figures of one ensemble file into ``output_dir`` (created); returns the PNG paths.
    Figures whose inputs are absent (one family, no data vector) are skipped and logged."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ensemble = EnsembleFile(ensemble_path)
    written: List[Optional[Path]] = []
    open_before = set(plt.get_fignums())
    try:
        with plt.rc_context(STYLE), plt.ioff():
            for figure in (plot_variance_ratio, plot_correlation, plot_covariance_ratio):
                written.append(figure(ensemble, output_dir))
    finally:
        ensemble.close()
        for number in set(plt.get_fignums()) - open_before:
            plt.close(number)
    return [path for path in written if path is not None]


__all__ = ["plot_ensemble", "EnsembleFile", "data_vector_selection", "ratio_limits"]
