"""All statistics of one flat convergence patch, for every noise level and smoothing scale.

This is the per-patch science of the analysis stage (SCIENCE.md §5–6), as a pure function: a
(xsize, xsize) kappa patch in, a flat dict ``{results-file dataset path: 1-d array}`` out, with the
paths of the original results layout (SCIENCE.md §7), e.g. ``power_spectra/ngal_0/cl`` or
``smoothed_statistics/ngal_7/sl_2/minkowski/v1``.

Per noise level there is one noise draw, shared by every statistic of that level (the original drew
independent fields for the spectra and for each smoothing scale; sharing one, as a real survey has
one noise realisation, lets the smoothing reuse a single forward FFT per noise level — PERFORMANCE.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Sequence, Tuple

import numpy as np

from lensing_ssc.science.noise import noise_sigma_per_pixel, shape_noise
from lensing_ssc.science.smoothing import sigma_pixels
from lensing_ssc.science.statistics.binning import ell_centers, ell_edges, nu_edges
from lensing_ssc.science.statistics.bispectrum import (NAMED_CONFIGURATIONS, bispectrum_from_fft,
                                                       dimensionless_bispectrum)
from lensing_ssc.science.statistics.power_spectrum import dimensionless_cl, patch_rfft2, power_spectrum_from_fft
from lensing_ssc.science.statistics.smoothed import smoothed_statistics

#: Statistic names accepted in ``analysis.statistics`` and the smoothed-statistic groups they need.
BUILTIN_STATISTICS = {
    "power_spectrum": None,
    "bispectrum": None,
    "pdf": "pdf",
    "peak_counts": "peaks",
    "minima": "minima",
    "minkowski": "minkowski",
}


def scale_key(value: float) -> str:
    """``2.0 -> '2'``, ``2.5 -> '2.5'``: the original's group names use integers."""
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class PatchAnalysisSettings:
    """Binning, noise and smoothing of the per-patch statistics.

    patch_size_deg: patch side [deg]; xsize: pixels per side; ngal_list: galaxy densities
    [1/arcmin^2] (0 = noiseless); epsilon: shape-noise dispersion; smoothing_arcmin: Gaussian sigmas
    [arcmin]; lmin, lmax, nbin: multipole binning; nu_range: (nu_min, nu_max, nbins) thresholds;
    statistics: names from BUILTIN_STATISTICS.
    """

    patch_size_deg: float = 10.0
    xsize: int = 2048
    ngal_list: Tuple[int, ...] = (0, 7, 15, 30, 50)
    epsilon: float = 0.26
    smoothing_arcmin: Tuple[float, ...] = (2.0, 5.0, 8.0, 10.0)
    lmin: float = 300.0
    lmax: float = 3000.0
    nbin: int = 8
    nu_range: Tuple[float, float, int] = (-4.0, 4.0, 8)
    statistics: Tuple[str, ...] = tuple(BUILTIN_STATISTICS)

    def __post_init__(self):
        unknown = [name for name in self.statistics if name not in BUILTIN_STATISTICS]
        if unknown:
            raise ValueError(f"statistics: unknown built-in statistic(s) {unknown}; "
                             f"expected some of {sorted(BUILTIN_STATISTICS)}")

    @property
    def pixarea_arcmin2(self) -> float:
        return (self.patch_size_deg * 60.0 / self.xsize) ** 2

    @property
    def l_edges(self) -> np.ndarray:
        return ell_edges(self.lmin, self.lmax, self.nbin)

    @property
    def ell(self) -> np.ndarray:
        return ell_centers(self.l_edges)

    @property
    def nu_edges(self) -> np.ndarray:
        low, high, count = self.nu_range
        return nu_edges(low, high, int(count))

    @property
    def smoothed_groups(self) -> Tuple[str, ...]:
        return tuple(BUILTIN_STATISTICS[name] for name in self.statistics if BUILTIN_STATISTICS[name])

    def output_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Dataset path -> per-patch shape ((nbin,) or () for sigma0/sigma1), in the §7 layout."""
        shapes: Dict[str, Tuple[int, ...]] = {}
        n_nu = int(self.nu_range[2])
        for ngal in self.ngal_list:
            if "power_spectrum" in self.statistics:
                shapes[f"power_spectra/ngal_{ngal}/cl"] = (self.nbin,)
            if "bispectrum" in self.statistics:
                for name in NAMED_CONFIGURATIONS:
                    shapes[f"bispectra/ngal_{ngal}/{name}"] = (self.nbin,)
            if not self.smoothed_groups:
                continue
            for sl in self.smoothing_arcmin:
                base = f"smoothed_statistics/ngal_{ngal}/sl_{scale_key(sl)}"
                for group in self.smoothed_groups:
                    if group == "minkowski":
                        shapes.update({f"{base}/minkowski/v{i}": (n_nu,) for i in range(3)})
                    else:
                        shapes[f"{base}/{group}"] = (n_nu,)
                shapes[f"{base}/sigma/0"] = ()
                shapes[f"{base}/sigma/1"] = ()
        return shapes


def analyse_patch(kappa_patch: np.ndarray, settings: PatchAnalysisSettings,
                  noise_rng: Callable[[int], np.random.Generator]) -> Dict[str, np.ndarray]:
    """Every configured statistic of one (xsize, xsize) kappa patch.

    ``noise_rng(ngal)`` returns the generator of this patch's noise at density ``ngal`` (seeded by
    the caller from simulation seed, zs and patch index). Returns dataset path -> float64 value of
    the shape given by ``settings.output_shapes()``.
    """
    kappa = np.asarray(kappa_patch, dtype=np.float64)
    if kappa.shape != (settings.xsize, settings.xsize):
        raise ValueError(f"kappa_patch: expected shape ({settings.xsize}, {settings.xsize}), got {kappa.shape}")
    if not np.all(np.isfinite(kappa)):
        raise ValueError("kappa_patch: contains non-finite values")
    sigma_px = [sigma_pixels(sl, settings.patch_size_deg, settings.xsize) for sl in settings.smoothing_arcmin]
    ell, l_edges, nu = settings.ell, settings.l_edges, settings.nu_edges
    out: Dict[str, np.ndarray] = {}
    for ngal in settings.ngal_list:
        sigma_noise = noise_sigma_per_pixel(ngal, settings.epsilon, settings.pixarea_arcmin2)
        noisy = kappa + shape_noise(kappa.shape, sigma_noise, noise_rng(ngal)) if sigma_noise > 0 else kappa
        if "power_spectrum" in settings.statistics or "bispectrum" in settings.statistics:
            fourier = patch_rfft2(noisy)
            if "power_spectrum" in settings.statistics:
                power = power_spectrum_from_fft(fourier, settings.xsize, settings.patch_size_deg, l_edges)
                out[f"power_spectra/ngal_{ngal}/cl"] = dimensionless_cl(power, ell)
            if "bispectrum" in settings.statistics:
                for name, (configuration, ratio) in NAMED_CONFIGURATIONS.items():
                    raw = bispectrum_from_fft(fourier, settings.xsize, settings.patch_size_deg, l_edges,
                                              configuration, ratio)
                    out[f"bispectra/ngal_{ngal}/{name}"] = dimensionless_bispectrum(raw, ell)
        if not settings.smoothed_groups:
            continue
        per_scale = smoothed_statistics(noisy, sigma_px, nu, which=settings.smoothed_groups)
        for sl, values in zip(settings.smoothing_arcmin, per_scale):
            base = f"smoothed_statistics/ngal_{ngal}/sl_{scale_key(sl)}"
            for group in settings.smoothed_groups:
                if group == "minkowski":
                    for i in range(3):
                        out[f"{base}/minkowski/v{i}"] = np.asarray(values[f"v{i}"])
                else:
                    out[f"{base}/{group}"] = np.asarray(values[group])
            out[f"{base}/sigma/0"] = np.asarray(values["sigma0"])
            out[f"{base}/sigma/1"] = np.asarray(values["sigma1"])
    return out


def summarise_rows(rows: np.ndarray, include: Sequence[bool] = None) -> Dict[str, np.ndarray]:
    """Mean, std (ddof 1), covariance and correlation over patches of a (npatch, nbin) block.

    ``include`` (npatch,) selects the patches used (e.g. not replication-flagged). Bins with zero
    variance get correlation 0 off the diagonal and 1 on it.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim == 1:
        rows = rows[:, None]
    if include is not None:
        rows = rows[np.asarray(include, dtype=bool)]
    if rows.shape[0] < 2:
        raise ValueError(f"rows: need at least 2 patches for a covariance, got {rows.shape[0]}")
    covariance = np.atleast_2d(np.cov(rows, rowvar=False))
    std = np.sqrt(np.diag(covariance))
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = covariance / np.outer(std, std)
    correlation[~np.isfinite(correlation)] = 0.0
    np.fill_diagonal(correlation, 1.0)
    return {"mean": rows.mean(axis=0), "std": std, "cov": covariance, "corr": correlation}
