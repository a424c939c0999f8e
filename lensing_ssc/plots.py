"""Figures of one statistics file ``stats_zs{zs}_s{seed}_oa{S}.h5`` (DESIGN.md §1, ``plots/*.png``).

``plot_results`` writes, into ``output_dir``, PNGs named ``{stats file stem}_{figure}.png``:

``kappa_map``       Mollweide view of the full-sky kappa map with the patch footprints (if a map is given)
``power_spectrum``  ell(ell+1)C_ell/2pi per noise level, patch-to-patch and error-of-the-mean bars, and
                    the full-sky Limber prediction of the kappa stage's ``validation.json`` where given
``pdf``             PDF of the smoothed S/N map nu, per smoothing scale, noiseless and one noisy case
                    (the galaxy density closest to 30 arcmin^-2)
``peaks_minima``    peak and minimum distributions, same layout
``minkowski``       Minkowski functionals V0, V1, V2, same layout
``correlation``     correlation matrix of the per-patch data vector (noiseless statistics)

It reads files of the original code (SCIENCE.md §7: no root attributes, no ``/patches``, no
``/summary``) and ours (provenance attributes ``zs``, ``simulation_seed``, ``/patches``, ``/summary``).
Everything is computed from the per-patch rows, ignoring non-finite values; patches listed in
``/summary`` attribute ``excluded_patches`` are left out so the figures agree with the summary. A figure
whose statistics are absent from the file is skipped with a log message.
"""
from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import h5py
import healpy as hp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, LogFormatterSciNotation, LogLocator, NullFormatter, ScalarFormatter

from lensing_ssc.io.healpix_maps import read_nested_map
from lensing_ssc.io.results import read_results
from lensing_ssc.processing.steps.kappa_steps import map_footprint
from lensing_ssc.science.fibonacci import patch_centers, patch_footprint_vertices
from lensing_ssc.science.patch_analysis import scale_key

log = logging.getLogger("lensing_ssc.plots")

DPI = 110
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
         "ytick.labelsize": 10, "legend.fontsize": 9, "figure.titlesize": 13}
STATS_NAME = re.compile(r"stats_zs(?P<zs>\d+(?:\.\d+)?)_s(?P<seed>\d+)")
CAPTION_HEIGHT = 0.5  # inch at the bottom of each figure for the caption
#: The noisy case of the nu-space figures: the galaxy density closest to a Stage-IV survey's.
NOISY_NGAL_TARGET = 30.0

#: The nu-space figures: file name, what is plotted, and per panel row (dataset under
#: ``smoothed_statistics/ngal_N/sl_S/``, y-axis label with units).
SMOOTHED_FIGURES = (
    ("pdf", "PDF of the smoothed S/N map", (("pdf", r"PDF $p(\nu)$ [per unit $\nu$]"),)),
    ("peaks_minima", "peak and minimum distributions",
     (("peaks", "peak fraction [per unit $\\nu$]"), ("minima", "minimum fraction [per unit $\\nu$]"))),
    ("minkowski", "Minkowski functionals",
     (("minkowski/v0", r"$V_0$ (area fraction)"), ("minkowski/v1", r"$V_1$ [pixel$^{-1}$]"),
      ("minkowski/v2", r"$V_2$ [pixel$^{-2}$]"))),
)
#: Blocks of the correlation-matrix data vector: dataset name -> short label.
SPECTRA_BLOCKS = (("power_spectra", "cl", r"$C_\ell$"), ("bispectra", "equilateral", r"$B_{eq}$"),
                  ("bispectra", "isosceles", r"$B_{iso}$"), ("bispectra", "squeezed", r"$B_{sq}$"))
SMOOTHED_BLOCKS = (("pdf", "PDF"), ("peaks", "peaks"), ("minima", "minima"), ("minkowski/v0", "$V_0$"),
                   ("minkowski/v1", "$V_1$"), ("minkowski/v2", "$V_2$"))


# ---------------------------------------------------------------------------------------------
# Reading a results file.

@dataclass(frozen=True)
class ResultsFile:
    """A statistics file loaded for plotting.

    ``data``: dataset path -> array (``read_results``); ``zs``, ``seed``: from the root attributes,
    else from the file name (None if neither has them); ``used``: bool (n_patches,), the patches
    not excluded in ``/summary``; ``patch_size_deg``: patch side [deg] (None if not recorded).
    """

    path: Path
    data: Dict[str, np.ndarray]
    zs: Optional[float]
    seed: Optional[int]
    patch_size_deg: Optional[float]
    used: np.ndarray

    @property
    def stem(self) -> str:
        return self.path.stem

    def parameter(self, name: str) -> Optional[np.ndarray]:
        """``/metadata/parameters/{name}`` as float64, or None."""
        value = self.data.get(f"metadata/parameters/{name}")
        return None if value is None else np.asarray(value, dtype=np.float64)

    def rows(self, dataset: str) -> Optional[np.ndarray]:
        """Per-patch rows (n_used, nbin) float64 of the used patches, or None if the dataset is absent."""
        value = self.data.get(dataset)
        if value is None:
            return None
        value = np.asarray(value, dtype=np.float64)
        return value.reshape(value.shape[0], -1)[self.used]

    def ngal_values(self, group: str) -> List[int]:
        """Galaxy densities [arcmin^-2] with data under ``{group}/ngal_N``, in ``ngal_list`` order."""
        found = {int(m.group(1)) for name in self.data if (m := re.match(rf"{group}/ngal_(\d+)/", name))}
        listed = self.parameter("ngal_list")
        order = [int(n) for n in listed] if listed is not None else []
        return [n for n in order if n in found] + sorted(found - set(order))

    def smoothing_scales(self, ngal: int) -> List[str]:
        """Smoothing keys (``'2'``, ``'2.5'``; arcmin) with data for ``ngal``, in ``sl_list`` order."""
        found = _scales_present(self.data, ngal)
        listed = self.parameter("sl_list")
        order = [scale_key(s) for s in listed] if listed is not None else []
        return [s for s in order if s in found] + sorted(found - set(order), key=float)

    def title(self, statistic: str) -> str:
        zs = "?" if self.zs is None else str(self.zs)  # as in the file names: 1.0, 0.5
        seed = "?" if self.seed is None else str(self.seed)
        return f"{statistic} — $z_s$ = {zs}, seed {seed}"

    def patch_note(self) -> str:
        total = self.used.size
        used = int(np.count_nonzero(self.used))
        side = "" if self.patch_size_deg is None else f" of {self.patch_size_deg:g}°×{self.patch_size_deg:g}°"
        return f"{used} patches{side}" + ("" if used == total else f" ({total - used} excluded as in /summary)")


def _scales_present(data: Dict[str, np.ndarray], ngal: int) -> set:
    """Smoothing keys ``S`` of the groups ``smoothed_statistics/ngal_{ngal}/sl_S`` in ``data``."""
    prefix = f"smoothed_statistics/ngal_{ngal}/sl_"
    return {name[len(prefix):].split("/")[0] for name in data if name.startswith(prefix)}


def _n_patches(data: Dict[str, np.ndarray]) -> int:
    groups = ("power_spectra/", "bispectra/", "smoothed_statistics/", "patches/")
    sizes = {np.shape(v)[0] for k, v in data.items() if k.startswith(groups) and np.ndim(v) >= 1}
    if len(sizes) > 1:
        raise ValueError(f"stats_path: per-patch datasets have different numbers of rows {sorted(sizes)}")
    return sizes.pop() if sizes else 0


def _checked_path(stats_path) -> Path:
    path = Path(stats_path)
    if not path.is_file():
        raise ValueError(f"stats_path: {path} is not a file; expected a stats_zs*_s*_oa*.h5 results file")
    return path


def results_identity(stats_path) -> Tuple[Optional[float], Optional[int]]:
    """(zs, simulation seed) of a statistics file: root attributes ``zs`` and ``simulation_seed``
    (lensing_ssc), else the file name ``stats_zs{zs}_s{seed}...`` (original files); None if unknown."""
    path = _checked_path(stats_path)
    with h5py.File(path, "r") as handle:
        zs, seed = handle.attrs.get("zs"), handle.attrs.get("simulation_seed")
    match = STATS_NAME.search(path.name)
    if zs is None and match:
        zs = match["zs"]
    if seed is None and match:
        seed = match["seed"]
    return None if zs is None else float(zs), None if seed is None else int(seed)


def load_results(stats_path) -> ResultsFile:
    """Read a statistics file of the original code or of lensing_ssc for plotting."""
    path = _checked_path(stats_path)
    data = read_results(path)
    with h5py.File(path, "r") as handle:
        side = handle["metadata/parameters"].attrs.get("patch_size_deg") if "metadata/parameters" in handle else None
        excluded = handle["summary"].attrs.get("excluded_patches", []) if "summary" in handle else []
    zs, seed = results_identity(path)
    used = np.ones(_n_patches(data), dtype=bool)
    used[np.asarray(excluded, dtype=np.int64)] = False
    return ResultsFile(path=path, data=data, zs=zs, seed=seed,
                       patch_size_deg=None if side is None else float(side), used=used)


# ---------------------------------------------------------------------------------------------
# Shared helpers.

@dataclass(frozen=True)
class PatchSummary:
    """Per-bin mean, std (ddof 1, patch to patch), error of the mean std/sqrt(n) and n over finite rows."""

    mean: np.ndarray
    std: np.ndarray
    sem: np.ndarray
    count: np.ndarray


def summarise_patches(rows: np.ndarray) -> PatchSummary:
    """NaN-aware summary over patches of ``rows`` (n_patches, nbin); all-NaN bins give NaN."""
    rows = np.asarray(rows, dtype=np.float64)
    count = np.count_nonzero(np.isfinite(rows), axis=0)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins and single-patch bins
        mean = np.nanmean(rows, axis=0)
        std = np.nanstd(rows, axis=0, ddof=1)
        sem = std / np.sqrt(count)
    return PatchSummary(mean, std, sem, count)


def _noise_label(ngal: int) -> str:
    return "noiseless" if ngal == 0 else rf"$n_\mathrm{{gal}}$ = {ngal} arcmin$^{{-2}}$"


def _colours(n: int) -> np.ndarray:
    """``n`` ordered colours (first dark, last light), for a sequence such as noise levels or scales."""
    return plt.cm.viridis(np.linspace(0.0, 0.85, max(n, 1)))


def _new_figure(nrows: int, ncols: int, panel_size: Tuple[float, float], **kwargs):
    """Figure of nrows x ncols panels of ``panel_size`` [inch] (constrained layout), with a strip of
    CAPTION_HEIGHT inches at the bottom kept free for ``_caption``."""
    height = panel_size[1] * nrows + CAPTION_HEIGHT
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, height), squeeze=False,
                             layout="constrained", **kwargs)
    fig.get_layout_engine().set(rect=(0.0, CAPTION_HEIGHT / height, 1.0, 1.0 - CAPTION_HEIGHT / height))
    return fig, axes


def _caption(fig, text: str) -> None:
    """A note (up to two lines) in the strip at the bottom of the figure."""
    fig.text(0.5, 0.5 * CAPTION_HEIGHT / fig.get_figheight(), text, ha="center", va="center", fontsize=9,
             wrap=True)


def _save(fig, stem: str, output_dir: Path, name: str) -> Path:
    """Save ``{output_dir}/{stem}_{name}.png`` and close the figure (also on failure)."""
    path = output_dir / f"{stem}_{name}.png"
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    log.info("plots: wrote %s", path)
    return path


def _skip(results: ResultsFile, figure: str, reason: str) -> None:
    log.info("plots: %s: no %s figure (%s)", results.path.name, figure, reason)


def _log_ticks(lo: float, hi: float) -> List[float]:
    """1-2-3-5 ticks inside [lo, hi], for a log axis that spans less than two decades."""
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    ticks = [m * 10.0**d for d in decades for m in (1, 2, 3, 5)]
    return [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]


# ---------------------------------------------------------------------------------------------
# (1) The kappa map with the patch footprints.

def footprint_outline(theta_c: float, phi_c: float, patch_size_deg: float,
                      points_per_edge: int = 16) -> Tuple[np.ndarray, np.ndarray]:
    """Closed outline (theta, phi) [rad] of a patch footprint, its 4 edges sampled along great circles.

    Returns two arrays of shape (4 * points_per_edge + 1,).
    """
    vertices = patch_footprint_vertices(theta_c, phi_c, patch_size_deg)
    corners = np.vstack([vertices, vertices[:1]])
    t = np.linspace(0.0, 1.0, points_per_edge, endpoint=False)[:, None]
    edges = [(1 - t) * a + t * b for a, b in zip(corners[:-1], corners[1:])]  # chords; normalised below
    line = np.vstack(edges + [corners[-1:]])
    return hp.vec2ang(line / np.linalg.norm(line, axis=1, keepdims=True))


def _patch_geometry(results: ResultsFile) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
    """Centres (P, 2) [rad], flags (P,) or None, and a note; the Fibonacci centres for original files."""
    side = results.patch_size_deg
    if side is None:
        return None, None, "patch size not recorded"
    centers = results.data.get("patches/centers")
    flags = results.data.get("patches/replication_flag")
    if centers is not None:
        return np.asarray(centers, dtype=np.float64), None if flags is None else np.asarray(flags, bool), ""
    theta, phi = patch_centers(side)
    if theta.size != results.used.size:
        return None, None, (f"no /patches/centers and the {theta.size} Fibonacci centres of {side:g}° do not "
                            f"match the {results.used.size} patch rows")
    return np.column_stack([theta, phi]), None, "Centres: Fibonacci lattice (no /patches in the file)"


def plot_kappa_map(results: ResultsFile, kappa_map_path, output_dir: Path) -> Path:
    """Mollweide view of the NESTED kappa map, colour range its 0.5-99.5 percentiles, with the patch
    footprints (replication-flagged patches in red). The sky outside the map's observed footprint
    (partial-sky light cones, ``kappa_steps.map_footprint``) is masked (grey) and left out of the range."""
    values, header = read_nested_map(kappa_map_path, dtype=np.float32)
    observed = map_footprint(kappa_map_path)
    if observed is not None:
        values[~observed] = hp.UNSEEN
    if results.zs is not None and "ZS" in header and not np.isclose(float(header["ZS"]), results.zs):
        log.warning("plots: %s has ZS = %s but %s is for zs = %s", kappa_map_path, header["ZS"],
                    results.path.name, results.zs)
    lo, hi = np.nanpercentile(values if observed is None else values[observed], [0.5, 99.5])
    fig = plt.figure(figsize=(10, 6.6))
    side = "" if results.patch_size_deg is None else f" and {results.patch_size_deg:g}° patch footprints"
    margins = (0.01, CAPTION_HEIGHT / fig.get_figheight(), 0.01, 0.02)  # left, bottom, right, top
    hp.mollview(values, nest=True, sub=(1, 1, 1), margins=margins, title=results.title(f"convergence map{side}"),
                unit=r"$\kappa$ (dimensionless)", min=lo, max=hi, cmap="magma", format="%.3g",
                fontsize={"title": 13, "cbar_label": 11, "cbar_tick_label": 10})
    del values
    axis = next(a for a in fig.axes if isinstance(a, hp.projaxes.SphericalProjAxes))
    centers, flags, note = _patch_geometry(results)
    handles = []
    if centers is not None:
        flags = np.zeros(len(centers), dtype=bool) if flags is None else flags
        for index in np.argsort(flags, kind="stable"):  # flagged outlines last, on top
            (theta_c, phi_c), flagged = centers[index], flags[index]
            theta, phi = footprint_outline(theta_c, phi_c, results.patch_size_deg)
            axis.projplot(theta, phi, color="red" if flagged else "cyan", lw=1.4 if flagged else 0.6)
        handles.append(Line2D([], [], color="cyan", lw=1, label=f"patch footprints ({len(centers)})"))
        if flags.any():
            handles.append(Line2D([], [], color="red", lw=1.5,
                                  label=f"near a box-replication plane ({int(flags.sum())})"))
        axis.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, -0.02), fontsize=9, framealpha=0.9)
    nside = header.get("NSIDE", "?")
    masked = "" if observed is None else f" Grey: outside the light cone (observed fsky {np.mean(observed):.3g})."
    _caption(fig, f"{Path(kappa_map_path).name}: NSIDE {nside}, NESTED; colour range = 0.5–99.5 percentiles."
             + (f" {note}." if note else "") + masked)
    return _save(fig, results.stem, output_dir, "kappa_map")


# ---------------------------------------------------------------------------------------------
# (2) The power spectrum.

def limber_overlay(validation: dict, zs: Optional[float],
                   l_edges: np.ndarray) -> Tuple[Optional[Dict[str, np.ndarray]], str]:
    """The kappa validation's bins for source redshift ``zs`` whose ell lies in [l_edges[0], l_edges[-1]].

    ``validation``: the content of ``kappa/validation.json``. Returns ({``ell``, ``predicted``,
    ``measured``}: arrays of ell and ell(ell+1)C_ell/2pi, or None, reason why not).
    """
    if validation.get("status") != "ok":
        return None, f"validation status {validation.get('status')!r} ({validation.get('reason', 'no reason')})"
    if zs is None:
        return None, "the source redshift of the stats file is unknown"
    entry = next((v for k, v in validation.get("maps", {}).items() if np.isclose(float(k), zs)), None)
    if entry is None:
        return None, f"no map with zs = {zs:g} in the validation"
    ell = np.asarray(entry["ell"], dtype=np.float64)
    keep = (ell >= l_edges[0]) & (ell <= l_edges[-1])
    if not keep.any():
        return None, (f"its ell range {ell.min():.0f}-{ell.max():.0f} does not overlap the patch range "
                      f"{l_edges[0]:.0f}-{l_edges[-1]:.0f}")
    factor = ell[keep] * (ell[keep] + 1) / (2 * np.pi)
    return {"ell": ell[keep], "predicted": factor * np.asarray(entry["cl_predicted"])[keep],
            "measured": factor * np.asarray(entry["cl_measured"])[keep]}, ""


def _label_log_axes(axis, x_range: Tuple[float, float]) -> None:
    """Readable log-log axes: x ticks at 1-2-3-5 x 10^k inside ``x_range``, y labels at 1-2-5 x 10^k."""
    lo, hi = x_range
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlim(lo * 0.95, hi * 1.05)
    axis.xaxis.set_major_locator(FixedLocator(_log_ticks(lo, hi)))
    axis.xaxis.set_major_formatter(ScalarFormatter())
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    # label 2x and 5x too, unless the axis spans more than 3 decades
    axis.yaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(3, 3)))
    axis.yaxis.set_minor_formatter(NullFormatter())


def plot_power_spectrum(results: ResultsFile, output_dir: Path, validation: Optional[dict] = None) -> Optional[Path]:
    """Mean ell(ell+1)C_ell/2pi per noise level with patch-to-patch (thin) and error-of-the-mean (thick) bars."""
    ell, l_edges = results.parameter("ell"), results.parameter("l_edges")
    levels = []
    for ngal in results.ngal_values("power_spectra") if ell is not None else []:
        summary = summarise_patches(results.rows(f"power_spectra/ngal_{ngal}/cl"))
        drawable = np.isfinite(summary.mean) & (summary.mean > 0)  # log axes
        if drawable.any():
            levels.append((ngal, summary, drawable))
    if not levels:
        _skip(results, "power-spectrum", "no power_spectra with finite positive values, or no ell bins")
        return None
    fig, axes = _new_figure(1, 1, (10.5, 5.6))
    axis = axes[0, 0]
    dodge = np.exp(0.012 * (np.arange(len(levels)) - (len(levels) - 1) / 2))  # separate the bars in log ell
    for (ngal, summary, keep), factor, colour in zip(levels, dodge, _colours(len(levels))):
        x, y = ell[keep] * factor, summary.mean[keep]
        axis.errorbar(x, y, yerr=summary.std[keep], fmt="o-", ms=4, lw=1.2, capsize=3, elinewidth=0.8,
                      color=colour, label=_noise_label(ngal))
        axis.errorbar(x, y, yerr=summary.sem[keep], fmt="none", elinewidth=4, alpha=0.45, color=colour)
    if validation is not None and l_edges is not None:
        overlay, reason = limber_overlay(validation, results.zs, l_edges)
        if overlay is None:
            log.info("plots: %s: no Limber overlay: %s", results.path.name, reason)
        else:
            axis.plot(overlay["ell"], overlay["predicted"], "k--", marker="s", ms=7, mfc="none", lw=1.2,
                      label="full-sky Limber (linear P(k))\n× pixel window$^2$ + shot noise")
            axis.plot(overlay["ell"], overlay["measured"], "kx", ms=8, mew=1.5, label="full-sky anafast of the map")
    _label_log_axes(axis, (l_edges[0], l_edges[-1]) if l_edges is not None else (ell.min(), ell.max()))
    axis.set_xlabel(r"multipole $\ell$")
    axis.set_ylabel(r"$\ell(\ell+1)C_\ell/2\pi$ (dimensionless)")
    axis.set_title(results.title(r"convergence power spectrum $\ell(\ell+1)C_\ell/2\pi$"))
    axis.grid(True, which="both", alpha=0.25)
    axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    _caption(fig, f"Mean over {results.patch_note()} (flat-sky estimator on the unsmoothed patches, with shape noise for n_gal > 0). "
             "Thin bars with caps: patch-to-patch std; thick bars: error of the mean (std/√N).")
    return _save(fig, results.stem, output_dir, "power_spectrum")


# ---------------------------------------------------------------------------------------------
# (3)-(5) Statistics of the smoothed S/N maps against nu.

def _noise_cases(results: ResultsFile) -> List[int]:
    """Noiseless (if present) and the noisy density closest to NOISY_NGAL_TARGET."""
    present = results.ngal_values("smoothed_statistics")
    noisy = [n for n in present if n > 0]
    cases = [0] if 0 in present else []
    if noisy:
        cases.append(min(noisy, key=lambda n: abs(n - NOISY_NGAL_TARGET)))
    return cases


def plot_smoothed_statistic(results: ResultsFile, output_dir: Path, name: str, what: str,
                            panels: Sequence[Tuple[str, str]]) -> Optional[Path]:
    """One row per dataset of ``panels`` (name under ``sl_S/``, y label), one column per noise case,
    one colour per smoothing scale: the mean over patches with a ±1 std (patch-to-patch) band."""
    nu = results.parameter("nu")
    cases = _noise_cases(results)
    rows = [(dataset, label) for dataset, label in panels
            if any(f"smoothed_statistics/ngal_{n}/sl_{s}/{dataset}" in results.data
                   for n in cases for s in results.smoothing_scales(n))]
    if not rows or nu is None:
        wanted = " or ".join(dataset for dataset, _ in panels)
        _skip(results, name, f"statistics not computed (no {wanted} under smoothed_statistics)" if nu is not None
              else "no /metadata/parameters/nu")
        return None
    fig, axes = _new_figure(len(rows), len(cases), (5.4, 3.5), sharex=True, sharey="row")
    scales = sorted({s for n in cases for s in results.smoothing_scales(n)}, key=float)
    colours = dict(zip(scales, _colours(len(scales))))
    for column, ngal in enumerate(cases):
        for row, (dataset, label) in enumerate(rows):
            axis = axes[row, column]
            for scale in results.smoothing_scales(ngal):
                values = results.rows(f"smoothed_statistics/ngal_{ngal}/sl_{scale}/{dataset}")
                if values is None:
                    continue
                summary = summarise_patches(values)
                axis.plot(nu, summary.mean, "o-", ms=3.5, lw=1.3, color=colours[scale],
                          label=rf"$\sigma_s$ = {scale}′")
                axis.fill_between(nu, summary.mean - summary.std, summary.mean + summary.std,
                                  color=colours[scale], alpha=0.15, lw=0)
            axis.grid(True, alpha=0.25)
            axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3), useMathText=True)
            if row == 0:
                axis.set_title(_noise_label(ngal))
            if column == 0:
                axis.set_ylabel(label)
            if row == len(rows) - 1:
                axis.set_xlabel(r"$\nu$ = smoothed $\kappa$ / $\sigma_0$ (bin centre)")
        axes[0, column].legend(loc="best", title="Gaussian smoothing", title_fontsize=9)
    fig.suptitle(results.title(what))
    _caption(fig, f"Mean over {results.patch_note()}; bands: ±1 patch-to-patch std.")
    return _save(fig, results.stem, output_dir, name)


# ---------------------------------------------------------------------------------------------
# (6) Correlation matrix of the data vector.

def data_vector_blocks(data: Dict[str, np.ndarray], ngal: int = 0,
                       smoothing_scales: Optional[Sequence[str]] = None) -> List[Tuple[str, str]]:
    """(label, dataset path) of the data-vector blocks present in ``data`` for noise level ``ngal``.

    Order: C_ell, bispectra (equilateral, isosceles, squeezed), then per smoothing scale (keys such as
    ``'2'`` [arcmin]; default: all scales present, ascending) pdf, peaks, minima, V0, V1, V2.
    """
    blocks = [(label, f"{group}/ngal_{ngal}/{name}") for group, name, label in SPECTRA_BLOCKS]
    if smoothing_scales is None:
        smoothing_scales = sorted(_scales_present(data, ngal), key=float)
    for scale in smoothing_scales:
        blocks += [(f"{label} {scale}′", f"smoothed_statistics/ngal_{ngal}/sl_{scale}/{name}")
                   for name, label in SMOOTHED_BLOCKS]
    return [(label, path) for label, path in blocks if path in data]


def assemble_data_vector(data: Dict[str, np.ndarray], blocks: Sequence[Tuple[str, str]],
                         used: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-patch data vectors: the blocks' rows side by side, float64 (n_patches, total bins).

    ``used``: optional bool (n_patches,) selecting patches.
    """
    if not blocks:
        raise ValueError("blocks: expected at least one (label, dataset path)")
    columns = [np.asarray(data[path], dtype=np.float64).reshape(len(data[path]), -1) for _, path in blocks]
    rows = np.hstack(columns)
    return rows if used is None else rows[np.asarray(used, dtype=bool)]


def correlation_matrix(rows: np.ndarray) -> Tuple[np.ndarray, int]:
    """Correlation of the bins (columns) of ``rows`` (n_patches, n_bins) over patches; (matrix, patches used).

    ``np.corrcoef`` over the patches whose row is finite in every bin that is finite somewhere; bins
    with no finite value or zero variance get NaN correlations.
    """
    rows = np.asarray(rows, dtype=np.float64)
    live = np.any(np.isfinite(rows), axis=0)
    complete = np.all(np.isfinite(rows[:, live]), axis=1)
    if complete.sum() < 2:
        raise ValueError(f"rows: need at least 2 patches with finite values, got {int(complete.sum())}")
    matrix = np.full((rows.shape[1], rows.shape[1]), np.nan)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        matrix[np.ix_(live, live)] = np.corrcoef(rows[np.ix_(complete, live)], rowvar=False)
    return matrix, int(complete.sum())


def _correlation_subset(results: ResultsFile) -> Tuple[int, List[str]]:
    """Noiseless (else the smallest n_gal present) statistics at the smallest and largest smoothing scale:
    four scales of six nu statistics would make 24 blocks too narrow to label."""
    present = results.ngal_values("power_spectra") + results.ngal_values("bispectra") \
        + results.ngal_values("smoothed_statistics")
    ngal = 0 if 0 in present or not present else min(present)
    scales = sorted(results.smoothing_scales(ngal), key=float)
    return ngal, scales if len(scales) <= 2 else [scales[0], scales[-1]]


def plot_correlation(results: ResultsFile, output_dir: Path) -> Optional[Path]:
    """Correlation matrix of the concatenated per-patch data vector, with block labels."""
    ngal, scales = _correlation_subset(results)
    blocks = data_vector_blocks(results.data, ngal, scales)
    if not blocks:
        _skip(results, "correlation", "no per-patch statistics")
        return None
    try:
        matrix, n_used = correlation_matrix(assemble_data_vector(results.data, blocks, results.used))
    except ValueError as exc:
        _skip(results, "correlation", str(exc))
        return None
    sizes = [np.asarray(results.data[path]).reshape(len(results.data[path]), -1).shape[1] for _, path in blocks]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    fig, axes = _new_figure(1, 1, (9.0, 8.4))
    axis = axes[0, 0]
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.8")
    image = axis.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    for edge in bounds[1:-1] - 0.5:
        axis.axhline(edge, color="k", lw=0.5)
        axis.axvline(edge, color="k", lw=0.5)
    centres = 0.5 * (bounds[:-1] + bounds[1:]) - 0.5
    labels = [label for label, _ in blocks]
    axis.set_xticks(centres, labels, rotation=90)
    axis.set_yticks(centres, labels)
    axis.tick_params(length=0)
    fig.colorbar(image, ax=axis, shrink=0.8, label="correlation coefficient")
    scale_text = ", ".join(f"{s}′" for s in scales) if scales else "none"
    axis.set_title(results.title("correlation matrix of the data vector") + "\n"
                   + f"{_noise_label(ngal)}; spectra + smoothed statistics at $\\sigma_s$ = {scale_text}",
                   fontsize=12)
    _caption(fig, f"From the per-patch rows of {n_used} patches ({matrix.shape[0]} bins; each block in "
             "increasing ℓ or ν). Grey: bins with no finite value or no variance.")
    return _save(fig, results.stem, output_dir, "correlation")


# ---------------------------------------------------------------------------------------------
# Entry points.

def _read_validation(validation_json) -> Optional[dict]:
    if validation_json is None:
        return None
    path = Path(validation_json)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"validation_json: cannot read {path} as the kappa stage's validation.json ({exc})") from None


def plot_results(stats_path, output_dir, kappa_map_path=None, validation_json=None) -> List[Path]:
    """Write the figures of one statistics file into ``output_dir`` (created); returns the PNG paths.

    ``kappa_map_path``: the full-sky NESTED kappa map the file was computed from (adds the Mollweide
    figure); ``validation_json``: the kappa stage's ``validation.json`` (adds its full-sky Limber
    prediction to the power spectrum where the ell ranges overlap). Figures whose statistics are
    absent are skipped and logged.
    """
    results = load_results(stats_path)
    if kappa_map_path is not None and not Path(kappa_map_path).is_file():
        raise ValueError(f"kappa_map_path: {kappa_map_path} is not a file; expected a kappa_zs*_s*.fits map")
    validation = _read_validation(validation_json)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written: List[Optional[Path]] = []
    open_before = set(plt.get_fignums())
    try:
        with plt.rc_context(STYLE), plt.ioff():
            if kappa_map_path is not None:
                written.append(plot_kappa_map(results, kappa_map_path, output_dir))
            written.append(plot_power_spectrum(results, output_dir, validation))
            for name, what, panels in SMOOTHED_FIGURES:
                written.append(plot_smoothed_statistic(results, output_dir, name, what, panels))
            written.append(plot_correlation(results, output_dir))
    finally:  # a figure left by an error must not pile up in a long-running process
        for number in set(plt.get_fignums()) - open_before:
            plt.close(number)
    return [path for path in written if path is not None]


def plot_stats_files(stats_paths, output_dir, kappa_dir=None, validation_json=None) -> List[Path]:
    """``plot_results`` for each statistics file, with its map ``kappa_zs{zs}_s{seed}.fits`` from
    ``kappa_dir`` when that file exists. ``validation_json`` defaults to ``kappa_dir/validation.json``
    when present."""
    if kappa_dir is not None and validation_json is None and (Path(kappa_dir) / "validation.json").is_file():
        validation_json = Path(kappa_dir) / "validation.json"
    written: List[Path] = []
    for stats_path in stats_paths:
        kappa_map = None
        if kappa_dir is not None:
            zs, seed = results_identity(stats_path)
            if zs is not None and seed is not None:
                candidate = Path(kappa_dir) / f"kappa_zs{zs}_s{seed}.fits"
                kappa_map = candidate if candidate.is_file() else None
            if kappa_map is None:
                log.info("plots: %s: no kappa map in %s; skipping the Mollweide view", Path(stats_path).name,
                         kappa_dir)
        written += plot_results(stats_path, output_dir, kappa_map, validation_json)
    return written


__all__ = ["plot_results", "plot_stats_files", "load_results", "summarise_patches", "limber_overlay",
           "data_vector_blocks", "assemble_data_vector", "correlation_matrix", "footprint_outline"]
