"""The ensemble stage's optional SSC theory for the power spectrum (``ensemble.theory``; needs pyccl, the
``lensing_ssc[theory]`` extra): the variance ratio first/second family that the halo-model SSC
predicts (:mod:`lensing_ssc.science.ssc_theory`), written under ``/theory`` of the ensemble file::

    /theory                       attrs: path (the measured dataset compared), first, second, model,
                                  approximations, cosmology, zs, patch_size_deg, fsky, box, units
    /theory/ell                   (n,) bin centres
    /theory/cl                    (n,) model C_l (dimensionless, not l(l+1)C_l/2pi)
    /theory/ssc_variance          (n,) Var_SSC of C_l from every super-sample mode
    /theory/ssc_variance_missing  (n,) the part from the modes the second family lacks
    /theory/measured_variance     (n,) Var of C_l of the second family (pooled patches)
    /theory/predicted_ratio       (n,) 1 + ssc_variance_missing / measured_variance
    /theory/a, sigma2_b, sigma2_b_missing   (m,) scale factors and sigma_B^2 [Mpc] (all, missing modes)

The comparison uses the power spectrum of the lowest noise level (``ngal_0`` when present), the one the
variance-ratio figure shows. Rank 0 only; each reason for not computing it is logged in one line.
"""
from __future__ import annotations

import logging
import re
from typing import Dict, List, Optional

import numpy as np

log = logging.getLogger("lensing_ssc.ensemble")

POWER_SPECTRUM = re.compile(r"^power_spectra/ngal_(\d+)/cl$")


def theory_path(paths: List[str]) -> Optional[str]:
    """The power-spectrum dataset of the lowest noise level among ``paths``, None without one."""
    found = [(int(m[1]), p) for p in paths if (m := POWER_SPECTRUM.match(p))]
    return min(found)[1] if found else None


def compute_theory(config, group, pooled: dict) -> Optional[Dict[str, object]]:
    """``{"arrays": {name: array}, "attrs": {...}}`` for ``/theory`` of one group, or None (logged why)."""
    where = f"ensemble: {group.name}: no SSC theory"
    if not config.ensemble.theory:
        log.info("%s (ensemble.theory: false)", where)
        return None
    families = list(group.families)
    path = theory_path(group.paths)
    ell = group.families[families[0]][0].parameters.get("ell")
    if len(families) < 2 or path is None or ell is None:
        log.info("%s (needs two families, a power spectrum power_spectra/ngal_N/cl and metadata/parameters/ell)",
                 where)
        return None
    try:
        from lensing_ssc.science.ssc_theory import predict_power_spectrum_ssc, predicted_variance_ratio
        ell = np.asarray(ell, dtype=np.float64)
        prediction = predict_power_spectrum_ssc(config.cosmology.H0, config.cosmology.Om0, group.zs, ell,
                                                group.patch_size_deg, config.ensemble.theory_box_mpc_h)
    except ImportError as exc:
        log.warning("%s: %s", where, exc)
        return None
    # The stored spectrum is l(l+1)C_l/2pi at the bin centres: back to C_l for the variance.
    to_cl = (2 * np.pi / (ell * (ell + 1))) ** 2
    measured = np.diag(np.atleast_2d(pooled["families"][families[1]][path]["cov"])) * to_cl
    ratio = predicted_variance_ratio(prediction.ssc_variance_missing, measured)
    log.info("ensemble: %s: SSC theory for %s: predicted variance ratio %s", group.name, path,
             np.array2string(ratio, precision=3))
    arrays = {"ell": prediction.ell, "cl": prediction.cl, "ssc_variance": prediction.ssc_variance,
              "ssc_variance_missing": prediction.ssc_variance_missing, "measured_variance": measured,
              "predicted_ratio": ratio, "a": prediction.a, "sigma2_b": prediction.sigma2_b,
              "sigma2_b_missing": prediction.sigma2_b_missing}
    attrs = {**prediction.attrs, "path": path, "first": families[0], "second": families[1],
             "predicted_ratio": "1 + ssc_variance_missing / measured_variance: Var(first)/Var(second) if the "
                                "families differ only by the super-sample modes the second lacks"}
    return {"arrays": arrays, "attrs": attrs}


def write_theory(handle, theory: Dict[str, object]) -> None:
    """Write ``/theory`` (layout in the module docstring) into the open HDF5 file ``handle``."""
    group = handle.create_group("theory")
    group.attrs.update(theory["attrs"])
    for name, values in theory["arrays"].items():
        group.create_dataset(name, data=values)


__all__ = ["compute_theory", "write_theory", "theory_path"]
