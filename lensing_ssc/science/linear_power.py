"""Linear matter power spectrum and linear growth factor for flat LCDM.

Eisenstein & Hu (1998, ApJ 496, 605) "no-wiggle" transfer function (their eqs. 26-31, no baryon
acoustic oscillations), primordial slope n_s, normalised to sigma8 at z = 0 with a real-space top-hat
of radius 8 Mpc/h, scaled to redshift z with the linear growth factor of flat LCDM (no radiation,
w = -1).

This is hand-written on purpose: the pipeline's allowed dependencies (numpy, scipy, astropy, healpy)
contain no Boltzmann code or fitting-function transfer function.

Units: wavenumbers k in h/Mpc, P(k) in (Mpc/h)^3, radii in Mpc/h.
"""
import numpy as np
from scipy.integrate import simpson
from scipy.special import hyp2f1

# CMB temperature used only inside the EH98 fitting formula (theta_2.7 = T_cmb / 2.7 K).
_T_CMB_K = 2.7255
_SIGMA8_RADIUS_MPC_H = 8.0
# log-k grid of the sigma_R integral [h/Mpc]; the top-hat integrand is negligible outside it.
_LN_K_INTEGRATION = np.linspace(np.log(1e-5), np.log(1e3), 8193)


def _check_cosmology(omega_m, h, omega_b):
    if not 0.0 < omega_m <= 1.0:
        raise ValueError(f"omega_m must be in (0, 1], got {omega_m}")
    if not h > 0.0:
        raise ValueError(f"h must be > 0, got {h}")
    if not 0.0 <= omega_b < omega_m:
        raise ValueError(f"omega_b must be in [0, omega_m), got {omega_b}")


def eisenstein_hu_no_wiggle_transfer(k_hmpc, omega_m=0.309, h=0.6774, omega_b=0.049):
    """EH98 zero-baryon-oscillation transfer function T(k) (dimensionless, T -> 1 as k -> 0).

    k_hmpc: wavenumbers [h/Mpc], any shape. Returns an array of the same shape.
    """
    _check_cosmology(omega_m, h, omega_b)
    k = np.asarray(k_hmpc, dtype=np.float64)
    theta = _T_CMB_K / 2.7
    om_h2 = omega_m * h * h
    ob_h2 = omega_b * h * h
    f_baryon = omega_b / omega_m
    # sound horizon fit [Mpc], EH98 eq. 26
    sound_horizon = 44.5 * np.log(9.83 / om_h2) / np.sqrt(1.0 + 10.0 * ob_h2 ** 0.75)
    # EH98 eq. 31
    alpha_gamma = (1.0 - 0.328 * np.log(431.0 * om_h2) * f_baryon
                   + 0.38 * np.log(22.3 * om_h2) * f_baryon ** 2)
    # EH98 eq. 30 (k s with k in 1/Mpc)
    gamma_eff = omega_m * h * (alpha_gamma + (1.0 - alpha_gamma)
                               / (1.0 + (0.43 * k * h * sound_horizon) ** 4))
    # EH98 eq. 28 with k in h/Mpc
    q = k * theta ** 2 / gamma_eff
    l0 = np.log(2.0 * np.e + 1.8 * q)
    c0 = 14.2 + 731.0 / (1.0 + 62.5 * q)
    return l0 / (l0 + c0 * q * q)


def linear_growth_factor(a, omega_m=0.309):
    """Linear growth factor D(a)/D(a=1) of flat LCDM (w = -1, no radiation), any shape of a.

    Uses the exact growing-mode solution D(a) ∝ a 2F1(1/3, 1; 11/6; -a^3 Omega_L/Omega_m), which equals
    the Heath (1977) integral D ∝ H(a) ∫_0^a da' / (a' H(a'))^3 for this cosmology.
    """
    if not 0.0 < omega_m <= 1.0:
        raise ValueError(f"omega_m must be in (0, 1], got {omega_m}")
    a = np.asarray(a, dtype=np.float64)
    if np.any(a <= 0.0):
        raise ValueError("a (scale factor) must be > 0")
    ratio = (1.0 - omega_m) / omega_m

    def unnormalised(x):
        return x * hyp2f1(1.0 / 3.0, 1.0, 11.0 / 6.0, -ratio * x ** 3)

    return unnormalised(a) / unnormalised(1.0)


def linear_growth_rate(a, omega_m=0.309):
    """Logarithmic growth rate f = dln D / dln a of flat LCDM (w = -1, no radiation), any shape of a.

    Exact derivative of the hypergeometric solution used by :func:`linear_growth_factor`:
    f = 1 - (6/11) x 2F1(4/3, 2; 17/6; -x) / 2F1(1/3, 1; 11/6; -x), x = a^3 Omega_L / Omega_m.
    """
    if not 0.0 < omega_m <= 1.0:
        raise ValueError(f"omega_m must be in (0, 1], got {omega_m}")
    a = np.asarray(a, dtype=np.float64)
    if np.any(a <= 0.0):
        raise ValueError("a (scale factor) must be > 0")
    x = (1.0 - omega_m) / omega_m * a ** 3
    return 1.0 - 6.0 / 11.0 * x * hyp2f1(4.0 / 3.0, 2.0, 17.0 / 6.0, -x) / hyp2f1(1.0 / 3.0, 1.0, 11.0 / 6.0, -x)


def top_hat_sigma(k_hmpc, power, radius_mpc_h):
    """RMS of the density field smoothed with a real-space top-hat of radius_mpc_h [Mpc/h].

    k_hmpc [h/Mpc] must be a log-spaced increasing 1-d grid and power [(Mpc/h)^3] P(k) on it;
    sigma^2 = (1/2pi^2) ∫ dk k^2 P(k) W(kR)^2, W(x) = 3 (sin x - x cos x)/x^3, integrated in ln k with
    Simpson's rule.
    """
    k = np.asarray(k_hmpc, dtype=np.float64)
    x = k * radius_mpc_h
    window = 3.0 * (np.sin(x) - x * np.cos(x)) / x ** 3
    integrand = k ** 3 * np.asarray(power, dtype=np.float64) * window ** 2 / (2.0 * np.pi ** 2)
    return float(np.sqrt(simpson(integrand, x=np.log(k))))


def linear_power_spectrum(k_hmpc, z, omega_m=0.309, h=0.6774, omega_b=0.049, n_s=0.9667,
                          sigma8=0.8159):
    """Linear matter power spectrum P(k, z) [(Mpc/h)^3] at wavenumbers k_hmpc [h/Mpc] (any shape).

    P(k, z) = A k^n_s T_EH98nw(k)^2 [D(z)/D(0)]^2 with A fixed so that sigma(R = 8 Mpc/h, z = 0) = sigma8.
    z is a scalar redshift >= 0. Non-positive k give P = 0.
    """
    if sigma8 <= 0.0:
        raise ValueError(f"sigma8 must be > 0, got {sigma8}")
    if np.ndim(z) != 0 or z < 0.0:
        raise ValueError(f"z must be a scalar redshift >= 0, got {z}")

    def shape(k):
        return k ** n_s * eisenstein_hu_no_wiggle_transfer(k, omega_m, h, omega_b) ** 2

    k_grid = np.exp(_LN_K_INTEGRATION)
    amplitude = (sigma8 / top_hat_sigma(k_grid, shape(k_grid), _SIGMA8_RADIUS_MPC_H)) ** 2
    growth = linear_growth_factor(1.0 / (1.0 + z), omega_m)
    k = np.asarray(k_hmpc, dtype=np.float64)
    positive = k > 0.0
    power = np.zeros_like(k)
    power[positive] = amplitude * growth ** 2 * shape(k[positive])
    return power


def tabulated_power_spectrum(k_table, p_table, omega_m=0.309, sigma8=None):
    """P(k, z) [(Mpc/h)^3] from a linear P(k) table at z = 0, e.g. the file FastPM reads
    (``read_powerspectrum``; columns k [h/Mpc], P [(Mpc/h)^3]).

    ``k_table``: 1-D strictly increasing k > 0 [h/Mpc]; ``p_table``: P(k) > 0, same shape. Between the
    table points P is interpolated linearly in (ln k, ln P); outside [k_table[0], k_table[-1]] it is 0.
    ``sigma8`` > 0 rescales the table to that sigma(R = 8 Mpc/h) as FastPM does when its ``sigma8``
    is set (None or <= 0: the table as it is, FastPM's ``sigma8 = 0``). Returns ``pk(k, z)`` with ``k``
    any shape [h/Mpc] and ``z`` a scalar redshift >= 0, scaled by the linear growth [D(z)/D(0)]^2.
    """
    k_table = np.asarray(k_table, dtype=np.float64)
    p_table = np.asarray(p_table, dtype=np.float64)
    if k_table.ndim != 1 or k_table.size < 2 or p_table.shape != k_table.shape:
        raise ValueError(f"k_table and p_table must be 1-D of the same length >= 2, got {k_table.shape} and "
                         f"{p_table.shape}")
    if not (np.all(k_table > 0) and np.all(np.diff(k_table) > 0) and np.all(p_table > 0)):
        raise ValueError("k_table must be strictly increasing and > 0 [h/Mpc], p_table > 0 [(Mpc/h)^3]")
    if sigma8 is not None and sigma8 > 0:
        p_table = p_table * (sigma8 / top_hat_sigma(k_table, p_table, _SIGMA8_RADIUS_MPC_H)) ** 2
    ln_k, ln_p = np.log(k_table), np.log(p_table)

    def pk(k_hmpc, z):
        if np.ndim(z) != 0 or z < 0.0:
            raise ValueError(f"z must be a scalar redshift >= 0, got {z}")
        k = np.asarray(k_hmpc, dtype=np.float64)
        inside = (k >= k_table[0]) & (k <= k_table[-1])
        power = np.zeros_like(k)
        power[inside] = np.exp(np.interp(np.log(k[inside]), ln_k, ln_p))
        return power * linear_growth_factor(1.0 / (1.0 + z), omega_m) ** 2

    return pk
