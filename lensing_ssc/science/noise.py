"""Galaxy shape noise for flat convergence patches (SCIENCE.md §5.1, Decision 4).

The noise model is white Gaussian noise added per pixel to the unsmoothed kappa patch, with
dispersion ``sigma_pix = epsilon / sqrt(n_gal * A_pix)``.

Unlike the original code (global, unseeded numpy RNG inside forked workers), every noise field is
drawn from its own ``numpy.random.Generator`` whose ``SeedSequence`` is keyed by
(base seed, source redshift, patch index, n_gal, purpose). The same key always yields the same
stream, whatever the number of MPI ranks or restarts; different keys yield independent streams.
"""
import math
import numbers
import zlib

import numpy as np


def noise_sigma_per_pixel(ngal_per_arcmin2: float, epsilon: float, pixarea_arcmin2: float) -> float:
    """Per-pixel shape-noise dispersion of kappa, ``epsilon / sqrt(ngal * A_pix)`` (SCIENCE.md §5.1).

    Parameters
    ----------
    ngal_per_arcmin2 : float
        Galaxy number density [gal / arcmin^2]; 0 means noiseless and returns 0.0.
    epsilon : float
        Intrinsic ellipticity dispersion, used directly as the per-pixel kappa numerator
        (no 1/sqrt(2) factor; 0.26 in the original).
    pixarea_arcmin2 : float
        Pixel area [arcmin^2], e.g. (600/2048)^2 = 0.0858306884765625 for 10 deg / 2048 px.

    Returns
    -------
    float
        sigma_pix (dimensionless kappa).
    """
    ngal = _finite_float(ngal_per_arcmin2, "ngal_per_arcmin2")
    eps = _finite_float(epsilon, "epsilon")
    area = _finite_float(pixarea_arcmin2, "pixarea_arcmin2")
    if ngal < 0:
        raise ValueError(f"ngal_per_arcmin2 must be >= 0, got {ngal_per_arcmin2!r}")
    if eps < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    if area <= 0:
        raise ValueError(f"pixarea_arcmin2 must be > 0, got {pixarea_arcmin2!r}")
    if ngal == 0:
        return 0.0
    return eps / math.sqrt(ngal * area)


def noise_generator(base_seed: int, zs: float, patch_index: int, ngal: int, purpose: str) -> np.random.Generator:
    """Independent, reproducible random generator for one noise field (Decision 4).

    The stream is ``default_rng(SeedSequence(base_seed, spawn_key=(round(zs*1000), patch_index,
    ngal, crc32(purpose))))``: a pure function of its arguments (no global state, no Python
    ``hash()``), so it does not depend on the rank count or on restarts.

    Parameters
    ----------
    base_seed : int
        Non-negative base seed (the simulation seed or ``analysis.noise_seed``).
    zs : float
        Source redshift; keyed to 1e-3 precision as ``round(zs * 1000)``.
    patch_index : int
        Non-negative patch index within the map.
    ngal : int
        Galaxy number density [gal / arcmin^2], integer-valued.
    purpose : str
        Non-empty label of the field's use (e.g. ``"kappa"``, ``"smoothed"``); keyed by its CRC-32.
    """
    seed = _non_negative_int(base_seed, "base_seed")
    z = _finite_float(zs, "zs")
    if z < 0:
        raise ValueError(f"zs must be >= 0, got {zs!r}")
    index = _non_negative_int(patch_index, "patch_index")
    density = _non_negative_int(ngal, "ngal")
    if not isinstance(purpose, str) or not purpose:
        raise ValueError(f"purpose must be a non-empty str, got {purpose!r}")
    spawn_key = (round(z * 1000), index, density, zlib.crc32(purpose.encode("utf-8")))
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=spawn_key))


def shape_noise(shape, sigma_pix: float, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise field of standard deviation ``sigma_pix``.

    Parameters
    ----------
    shape : tuple of int
        Output shape, e.g. (2048, 2048).
    sigma_pix : float
        Per-pixel dispersion (>= 0), from :func:`noise_sigma_per_pixel`.
    rng : numpy.random.Generator
        Stream from :func:`noise_generator`.

    Returns
    -------
    numpy.ndarray
        float64 array of ``shape``; all zeros (and no draw) when ``sigma_pix == 0``.
    """
    sigma = _finite_float(sigma_pix, "sigma_pix")
    if sigma < 0:
        raise ValueError(f"sigma_pix must be >= 0, got {sigma_pix!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if sigma == 0:
        return np.zeros(shape, dtype=np.float64)
    field = rng.standard_normal(shape, dtype=np.float64)
    field *= sigma
    return field


def _finite_float(value, name: str) -> float:
    """``value`` as a finite float, else ValueError naming ``name``."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return result


def _non_negative_int(value, name: str) -> int:
    """``value`` as a non-negative int (integral floats such as 7.0 accepted), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, numbers.Real)):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        result = int(value)
    elif math.isfinite(value) and float(value).is_integer():
        result = int(value)
    else:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if result < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return result
