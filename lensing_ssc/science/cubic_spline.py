"""Cubic B-spline interpolation of a 2-D image: the same bits as scipy.ndimage, about twice as fast.

``CubicSpline2D(image)`` holds the coefficients ``scipy.ndimage.spline_filter(image, order=3,
mode="constant")`` and evaluates them like ``scipy.ndimage.map_coordinates(coefficients, coordinates,
order=3, mode="constant", prefilter=False)`` at points whose 4 x 4 spline support lies inside the image
(:func:`inside`). It repeats scipy's float64 operations in scipy's order (``scipy/ndimage/src/
ni_splines.c``: the filter gain, the mirror-boundary initialisation of the causal and anti-causal
recursions with the pole sqrt(3) - 2, the spline weights; ``ni_interpolation.c``: the 16 terms
``value * row weight * column weight`` summed row offset by row offset), so the results are
bit-identical (tests/science/test_cubic_spline.py compares them with scipy for random images).

Deliberately not scipy itself: the patch projection of every map spent ~0.11 s per 1550^2 image in
these two calls, most of it in scipy's generic N-d loops (each column copied to a buffer and filtered
alone; boundary and dtype dispatch at every output point). Here the filter along axis 0 advances
whole rows at once, the filter along axis 1 runs on the transposed image, which is kept transposed
for the evaluation, and the evaluation is one compiled loop (numba, compiled once per machine and
cached next to this file; no threads: one rank per core). Float64 throughout, as in scipy.
"""
import math

import numpy as np
from numba import njit

# sqrt(3) - 2, the pole of the cubic B-spline filter, as scipy's ni_splines.c writes it.
_POLE = -0.267949192431122706472553658494127633
# The filter's gain, as scipy's _apply_filter_gain computes it for the one pole (same float64 operations).
_GAIN = 1.0 * ((1.0 - _POLE) * (1.0 - 1.0 / _POLE))


@njit(cache=True)
def _filter_columns(values, with_gain):
    """In place: scipy's ``apply_filter`` (order 3, mirror initialisation) along axis 0 of every column,
    all columns advanced together row by row (on each element the operations of scipy's per-line
    loop, in its order). ``with_gain`` False: the gain was applied already."""
    n, m = values.shape
    z = _POLE
    if with_gain:
        for i in range(n):
            for j in range(m):
                values[i, j] *= _GAIN
    # causal initialisation (_init_causal_mirror)
    z_n_1 = math.pow(z, float(n - 1))  # libm pow of a double, as C's pow(z, n - 1); not numba's integer power
    for j in range(m):
        values[0, j] = values[0, j] + z_n_1 * values[n - 1, j]
    z_i = z
    for i in range(1, n - 1):
        for j in range(m):
            values[0, j] += z_i * (values[i, j] + z_n_1 * values[n - 1 - i, j])
        z_i *= z
    denominator = 1 - z_n_1 * z_n_1
    for j in range(m):
        values[0, j] /= denominator
    for i in range(1, n):
        for j in range(m):
            values[i, j] += z * values[i - 1, j]
    # anti-causal initialisation (_init_anticausal_mirror) and recursion
    for j in range(m):
        values[n - 1, j] = (z * values[n - 2, j] + values[n - 1, j]) * z / (z * z - 1)
    for i in range(n - 2, -1, -1):
        for j in range(m):
            values[i, j] = z * (values[i + 1, j] - values[i, j])


@njit(cache=True)
def _gather_with_gain(values, indices, out):
    """out = float64(values[indices]) x the filter gain (scipy: the float64 image, then the gain of
    the first filter pass; one rounding either way). False if an index is outside ``values``."""
    n, m = indices.shape
    size = values.size
    for i in range(n):
        for j in range(m):
            index = indices[i, j]
            if index < 0 or index >= size:
                return False
            out[i, j] = np.float64(values[index]) * _GAIN
    return True


@njit(cache=True)
def _weights(coordinate):
    """scipy's ``get_spline_interpolation_weights`` for order 3: the 4 weights at ``coordinate``."""
    x = coordinate - math.floor(coordinate)
    y = x
    z = 1.0 - x
    w1 = (y * y * (y - 2.0) * 3.0 + 4.0) / 6.0
    w2 = (z * z * (z - 2.0) * 3.0 + 4.0) / 6.0
    w0 = z * z * z / 6.0
    w3 = 1.0
    w3 -= w0
    w3 -= w1
    w3 -= w2
    return w0, w1, w2, w3


@njit(cache=True)
def _evaluate(transposed, rows, columns, out):
    """scipy's ``NI_GeometricTransform`` for order 3 at interior points, on coefficients stored
    transposed (``transposed[column, row]``): out[k] at (rows[k], columns[k])."""
    for k in range(rows.size):
        row_weights = _weights(rows[k])
        column_weights = _weights(columns[k])
        first_row = int(math.floor(rows[k])) - 1
        first_column = int(math.floor(columns[k])) - 1
        total = 0.0
        for a in range(4):
            for b in range(4):
                total += transposed[first_column + b, first_row + a] * row_weights[a] * column_weights[b]
        out[k] = total


def inside(shape, rows: np.ndarray, columns: np.ndarray) -> bool:
    """True if every point (rows, columns) [pixels] has its 4 x 4 cubic-spline support inside an image
    of ``shape``, where scipy needs no boundary handling."""
    if np.size(rows) == 0:
        return True
    first_rows, first_columns = np.floor(rows) - 1, np.floor(columns) - 1
    return bool(min(first_rows.min(), first_columns.min()) >= 0 and first_rows.max() + 3 < shape[0]
                and first_columns.max() + 3 < shape[1])


class CubicSpline2D:
    """Cubic B-spline coefficients of a 2-D image (``spline_filter(image, order=3, mode="constant")``,
    bit for bit), evaluated by calling it at interior points."""

    def __init__(self, image: np.ndarray):
        """``image``: 2-D, at least 2 pixels per axis, any real type (converted to float64)."""
        image = np.asarray(image)
        if image.ndim != 2 or min(image.shape) < 2:
            raise ValueError(f"image must be 2-D with at least 2 pixels per axis, got shape {image.shape}")
        scaled = np.array(image, dtype=np.float64)
        self._finish(scaled, with_gain=True)

    @classmethod
    def of_samples(cls, values: np.ndarray, indices: np.ndarray, workspace=None) -> "CubicSpline2D":
        """The spline of the image ``values[indices]`` (``values`` 1-D, ``indices`` 2-D integer), sampled
        and scaled in one pass. ValueError if an index is outside ``values``.

        ``workspace``: None, or two C-ordered float64 arrays of ``indices.shape[::-1]`` and
        ``indices.shape`` that the spline fills and keeps instead of allocating its own (a caller
        making many splines of one shape saves ~40 MB of fresh pages per 1550^2 image); the spline is
        valid until they are used again."""
        indices = np.ascontiguousarray(indices)
        if indices.ndim != 2 or min(indices.shape) < 2:
            raise ValueError(f"indices must be 2-D with at least 2 pixels per axis, got shape {indices.shape}")
        if workspace is None:
            transposed, scaled = None, np.empty(indices.shape)
        else:
            transposed, scaled = workspace
            for array, shape in ((transposed, indices.shape[::-1]), (scaled, indices.shape)):
                if not (isinstance(array, np.ndarray) and array.shape == shape and array.dtype == np.float64
                        and array.flags.c_contiguous and array.flags.writeable):
                    raise ValueError(f"workspace must be two writeable C-ordered float64 arrays of shapes "
                                     f"{indices.shape[::-1]} and {indices.shape}")
        if not _gather_with_gain(np.ascontiguousarray(values), indices, scaled):
            raise ValueError(f"indices must index an array of {np.size(values)} values")
        spline = cls.__new__(cls)
        spline._finish(scaled, with_gain=False, transposed=transposed)
        return spline

    def _finish(self, scaled: np.ndarray, with_gain: bool, transposed=None) -> None:
        """Filter ``scaled`` (float64, C order, owned) along axis 0, then along axis 1 as the columns of
        its transpose (copied into ``transposed`` when given), which is kept."""
        self.shape = scaled.shape
        _filter_columns(scaled, with_gain)
        if transposed is None:
            transposed = np.empty(scaled.shape[::-1])
        np.copyto(transposed, scaled.T)
        self._transposed = transposed
        _filter_columns(self._transposed, True)

    @property
    def coefficients(self) -> np.ndarray:
        """The coefficients, float64 of the image's shape (a view)."""
        return self._transposed.T

    def __call__(self, rows: np.ndarray, columns: np.ndarray, checked: bool = False,
                 dtype=np.float64) -> np.ndarray:
        """Values at the points (rows, columns) [pixels] (same shapes): an array of that shape, bit-identical
        to ``map_coordinates(coefficients, [rows, columns], order=3, mode="constant", prefilter=False)``
        cast to ``dtype`` (float64 or float32: each float64 value rounded once, as ``astype``).
        Every point must be :func:`inside` the image (ValueError otherwise; ``checked=True``: the caller
        checked these points already, e.g. once for points shared by many images)."""
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        columns = np.ascontiguousarray(columns, dtype=np.float64)
        if rows.shape != columns.shape:
            raise ValueError(f"rows and columns must have one shape, got {rows.shape} and {columns.shape}")
        if not checked and not inside(self.shape, rows, columns):
            raise ValueError(f"points reach the border of the {self.shape} image, where scipy's boundary "
                             "handling applies; use scipy.ndimage.map_coordinates there")
        if np.dtype(dtype) not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ValueError(f"dtype must be float64 or float32, got {np.dtype(dtype)}")
        out = np.empty(rows.shape, dtype=dtype)
        _evaluate(self._transposed, rows.reshape(-1), columns.reshape(-1), out.reshape(-1))
        return out
