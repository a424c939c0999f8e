"""Tests of lensing_ssc.science.cubic_spline: the same bits as scipy.ndimage's cubic B-spline
(``spline_filter(order=3, mode="constant")`` and ``map_coordinates(order=3, mode="constant",
prefilter=False)``) at points whose 4 x 4 support lies inside the image, and the 45-deg rotated crop
of project_patch against the original scipy.ndimage.rotate route."""
import healpy as hp
import numpy as np
import pytest
from scipy import ndimage

from lensing_ssc.science.cubic_spline import CubicSpline2D, inside
from lensing_ssc.science.patches import (
    _rotated_crop_points,
    gnomonic_image_size,
    patch_pixel_indices,
    project_patch,
)

SHAPES = [(2, 2), (3, 7), (4, 4), (5, 6), (24, 24), (31, 200), (257, 129)]
INTERIOR_SHAPES = [shape for shape in SHAPES if min(shape) >= 4]  # an interior point needs 4 pixels


def assert_same_bits(actual, expected):
    """Same dtype, shape and bits (-0.0 differs from 0.0; NaN payloads count)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    unsigned = np.dtype(f"u{expected.dtype.itemsize}")
    np.testing.assert_array_equal(actual.view(unsigned), expected.view(unsigned))


def scipy_coefficients(image):
    return ndimage.spline_filter(image, order=3, mode="constant")


def scipy_values(coefficients, rows, columns):
    return ndimage.map_coordinates(coefficients, np.stack([rows, columns]), order=3, mode="constant",
                                   prefilter=False)


def wide_range_image(shape, seed):
    """Random signs and magnitudes from 1e-30 to 1e30."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * 10.0 ** rng.uniform(-30, 30, shape)


def interior_points(shape, seed, count=300):
    """(rows, columns) [pixels]: random interior points, exact integers, and the extreme allowed
    positions 1.0 and nextafter(n - 2, 0) on each axis (corners included)."""
    rng = np.random.default_rng(seed)
    axes = []
    for n in shape:
        low, high = 1.0, np.nextafter(float(n - 2), 0.0)  # floor(x) - 1 >= 0 and floor(x) + 2 <= n - 1
        random = rng.uniform(low, n - 2, count)
        integers = rng.integers(1, n - 2, count).astype(np.float64)  # 1 .. n - 3
        extremes = np.array([low, high, low, high, low, high, float(n - 3)])
        axes.append((random, integers, extremes))
    (r_random, r_int, r_ext), (c_random, c_int, c_ext) = axes
    rows = np.concatenate([r_random, r_int, r_random, r_int, r_ext, r_ext])
    columns = np.concatenate([c_random, c_int, c_int, c_random, c_ext, c_ext[::-1]])
    assert inside(shape, rows, columns)
    return rows, columns


@pytest.mark.parametrize("shape", SHAPES)
def test_coefficients_equal_scipy_spline_filter(shape):
    image = wide_range_image(shape, seed=shape[0] * 1000 + shape[1])
    coefficients = CubicSpline2D(image).coefficients
    assert coefficients.dtype == np.float64 and coefficients.shape == shape
    assert_same_bits(coefficients, scipy_coefficients(image))


@pytest.mark.parametrize("shape", [(3, 7), (24, 24), (31, 200)])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32, np.uint8])
def test_coefficients_of_other_input_types(shape, dtype):
    """scipy converts to float64 first; so must the spline (int inputs, float32 inputs)."""
    rng = np.random.default_rng(3)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        image = rng.integers(max(info.min, -10**6), min(info.max, 10**6), shape, endpoint=True).astype(dtype)
    else:
        image = (rng.standard_normal(shape) * 1e3).astype(dtype)
    assert_same_bits(CubicSpline2D(image).coefficients, scipy_coefficients(image))


def test_signed_zeros_and_exact_zeros():
    """Images of only +0.0 / -0.0, and zeros mixed with values: the signs of zero results agree."""
    rng = np.random.default_rng(11)
    zeros = rng.choice(np.array([0.0, -0.0]), size=(17, 23))
    assert np.signbit(zeros).any() and not np.signbit(zeros).all()
    mixed = wide_range_image((17, 23), seed=12)
    mixed[rng.random(mixed.shape) < 0.5] = 0.0
    mixed[rng.random(mixed.shape) < 0.3] = -0.0
    rows, columns = interior_points(zeros.shape, seed=13)
    for image in (zeros, -np.zeros((17, 23)), np.zeros((5, 4)), mixed):
        expected = scipy_coefficients(image)
        spline = CubicSpline2D(image)
        assert_same_bits(spline.coefficients, expected)
        if image.shape == zeros.shape:
            assert_same_bits(spline(rows, columns), scipy_values(expected, rows, columns))


@pytest.mark.parametrize("n", [4, 5, 6, 10, 50, 100, 300])
def test_mirror_initialisation_with_only_the_far_edge_nonzero(n):
    """Zeros except the last row and column: the first coefficients of the causal pass are then
    made of the ``pow(z, n - 1) * c[n - 1]`` terms alone, so they show whether pow(z, n - 1) has
    scipy's (C libm) bits; the difference then propagates into the interior values."""
    rng = np.random.default_rng(n)
    image = np.zeros((n, n + 3))
    image[-1] = rng.standard_normal(n + 3)
    image[:, -1] += rng.standard_normal(n)
    expected = scipy_coefficients(image)
    spline = CubicSpline2D(image)
    assert_same_bits(spline.coefficients, expected)
    rows, columns = interior_points(image.shape, seed=n + 1)
    assert_same_bits(spline(rows, columns), scipy_values(expected, rows, columns))


@pytest.mark.parametrize("shape", INTERIOR_SHAPES)
def test_values_equal_scipy_map_coordinates(shape):
    image = wide_range_image(shape, seed=shape[0] + 7 * shape[1])
    coefficients = scipy_coefficients(image)
    spline = CubicSpline2D(image)
    rows, columns = interior_points(shape, seed=shape[1])
    expected = scipy_values(coefficients, rows, columns)
    values = spline(rows, columns)
    assert_same_bits(values, expected)
    assert_same_bits(spline(rows, columns, dtype=np.float32), expected.astype(np.float32))
    # 2-D coordinate arrays keep their shape; float32 coordinates are used as their float64 values
    grid_rows, grid_columns = rows[:300].reshape(20, 15), columns[:300].reshape(20, 15)
    assert_same_bits(spline(grid_rows, grid_columns), expected[:300].reshape(20, 15))
    rows32, columns32 = rows.astype(np.float32), columns.astype(np.float32)
    keep = (np.floor(rows32) <= shape[0] - 3) & (np.floor(columns32) <= shape[1] - 3)  # rounding up
    rows32, columns32 = rows32[keep], columns32[keep]
    assert_same_bits(spline(rows32, columns32),
                     scipy_values(coefficients, rows32.astype(np.float64), columns32.astype(np.float64)))


def test_values_at_integer_points_reproduce_the_image_approximately():
    """Sanity check independent of scipy: the spline interpolates, so at pixel centres it returns
    the image (to rounding), and its float32 output is the float64 result rounded once."""
    image = np.random.default_rng(5).standard_normal((40, 30))
    rows, columns = np.meshgrid(np.arange(1.0, 38.0), np.arange(1.0, 28.0), indexing="ij")
    spline = CubicSpline2D(image)
    values = spline(rows, columns)
    np.testing.assert_allclose(values, image[1:38, 1:28], rtol=0, atol=1e-12)
    assert_same_bits(spline(rows, columns, dtype=np.float32), values.astype(np.float32))


@pytest.mark.parametrize("row, column", [
    (np.nextafter(1.0, 0.0), 5.0),  # support starts at row -1
    (0.0, 5.0),
    (-3.5, 5.0),
    (14.0, 5.0),                    # floor(14) + 2 = 16 = n: past the last row (n = 16)
    (15.9, 5.0),
    (5.0, np.nextafter(1.0, 0.0)),
    (5.0, 18.0),                    # m = 20
    (5.0, 25.0),
    (np.nan, 5.0),
    (5.0, np.nan),
    (np.inf, 5.0),
    (5.0, -np.inf),
])
def test_points_at_the_border_raise(row, column):
    spline = CubicSpline2D(np.random.default_rng(1).standard_normal((16, 20)))
    rows, columns = interior_points((16, 20), seed=2)
    spline(rows, columns)  # the interior points alone are accepted
    rows, columns = np.append(rows, row), np.append(columns, column)  # one bad point among many
    assert not inside((16, 20), rows, columns)
    with pytest.raises(ValueError, match="border"):
        spline(rows, columns)
    with pytest.raises(ValueError, match="border"):
        spline(rows[-1:], columns[-1:], dtype=np.float32)


def test_checked_skips_the_check_and_gives_the_same_values():
    image = wide_range_image((24, 31), seed=21)
    spline = CubicSpline2D(image)
    rows, columns = interior_points(image.shape, seed=22)
    expected = scipy_values(scipy_coefficients(image), rows, columns)
    assert_same_bits(spline(rows, columns, checked=True), expected)
    assert_same_bits(spline(rows, columns, checked=True, dtype=np.float32), expected.astype(np.float32))


def test_bad_arguments_raise_value_error():
    spline = CubicSpline2D(np.ones((10, 12)))
    with pytest.raises(ValueError, match="shape"):
        spline(np.full(5, 3.0), np.full(6, 3.0))
    with pytest.raises(ValueError, match="shape"):
        spline(np.full((2, 3), 3.0), np.full((3, 2), 3.0))
    with pytest.raises(ValueError, match="shape"):
        spline(np.full((2, 3), 3.0), np.full((3, 2), 3.0), checked=True)
    with pytest.raises(ValueError, match="dtype"):
        spline(np.full(3, 3.0), np.full(3, 3.0), dtype=np.int32)
    for bad_image in (np.ones(10), np.ones((1, 10)), np.ones((10, 1)), np.ones((3, 3, 3))):
        with pytest.raises(ValueError, match="image"):
            CubicSpline2D(bad_image)


@pytest.mark.parametrize("value_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_of_samples_equals_the_spline_of_the_sampled_image(value_dtype, index_dtype):
    rng = np.random.default_rng(31)
    values = (rng.standard_normal(1000) * 10.0 ** rng.uniform(-20, 20, 1000)).astype(value_dtype)
    values[:50] = -0.0
    indices = rng.integers(0, values.size, (29, 43)).astype(index_dtype)
    indices[0, 0], indices[-1, -1] = 0, values.size - 1  # both ends of the range are accepted
    sampled = CubicSpline2D.of_samples(values, indices)
    direct = CubicSpline2D(values[indices])
    assert_same_bits(sampled.coefficients, direct.coefficients)
    assert_same_bits(sampled.coefficients, scipy_coefficients(values[indices]))
    rows, columns = interior_points(indices.shape, seed=32)
    assert_same_bits(sampled(rows, columns), direct(rows, columns))
    assert_same_bits(sampled(rows, columns, dtype=np.float32), direct(rows, columns, dtype=np.float32))


@pytest.mark.parametrize("bad_index", [-1, -1000, 1000, 5000, np.iinfo(np.int32).max])
def test_of_samples_rejects_indices_outside_the_values(bad_index):
    values = np.arange(1000, dtype=np.float32)
    for index_dtype in (np.int32, np.int64):
        indices = np.random.default_rng(4).integers(0, values.size, (8, 9)).astype(index_dtype)
        indices[5, 7] = bad_index
        with pytest.raises(ValueError, match="indices"):
            CubicSpline2D.of_samples(values, indices)
        with pytest.raises(ValueError, match="indices"):
            CubicSpline2D.of_samples(values, indices, (np.empty((9, 8)), np.empty((8, 9))))


def test_of_samples_rejects_indices_that_are_not_an_image():
    values = np.arange(100.0)
    for bad in (np.arange(10), np.zeros((1, 10), dtype=np.int64), np.zeros((10, 1), dtype=np.int64)):
        with pytest.raises(ValueError, match="indices"):
            CubicSpline2D.of_samples(values, bad)


def test_of_samples_fills_and_reuses_the_workspace():
    """The spline lives in the workspace (no copy); a second image built in the same workspace is
    that image's spline (nothing left over from the first, nor from the workspace's garbage)."""
    rng = np.random.default_rng(41)
    shape = (23, 37)  # not square: the two workspace arrays have transposed shapes
    first_values = rng.standard_normal(500)
    second_values = (rng.standard_normal(700) * 1e8).astype(np.float32)
    indices = rng.integers(0, 500, shape)
    workspace = (np.full(shape[::-1], np.nan), np.full(shape, np.nan))
    rows, columns = interior_points(shape, seed=42)

    first = CubicSpline2D.of_samples(first_values, indices, workspace)
    assert np.shares_memory(first.coefficients, workspace[0])
    expected_first = scipy_coefficients(first_values[indices])
    assert_same_bits(first.coefficients, expected_first)
    assert_same_bits(first(rows, columns), scipy_values(expected_first, rows, columns))

    second = CubicSpline2D.of_samples(second_values, indices, workspace)
    assert np.shares_memory(second.coefficients, workspace[0])
    expected_second = scipy_coefficients(second_values[indices])
    assert_same_bits(second.coefficients, expected_second)
    assert_same_bits(second(rows, columns), scipy_values(expected_second, rows, columns))
    assert_same_bits(second(rows, columns, dtype=np.float32),
                     CubicSpline2D(second_values[indices])(rows, columns, dtype=np.float32))

    # and back to the first map: its own spline again
    again = CubicSpline2D.of_samples(first_values, indices, workspace)
    assert_same_bits(again.coefficients, expected_first)


@pytest.mark.parametrize("xsize", [20, 33, 64, 100])
def test_project_patch_equals_rotate_and_crop(xsize):
    """project_patch (spline route) against the original: rotate the float64 gnomonic image by 45 deg
    (cubic, mode 'constant') and crop the central xsize square; two maps alternately, since
    project_patch reuses one workspace between calls."""
    assert _rotated_crop_points(xsize)[2], "these sizes must take the CubicSpline2D route"
    nside = 64
    rng = np.random.default_rng(xsize)
    maps = [rng.standard_normal(hp.nside2npix(nside)).astype(np.float32),
            rng.standard_normal(hp.nside2npix(nside)) * 1e-3 + 5.0]
    image_size = gnomonic_image_size(xsize)
    start = image_size // 2 - xsize // 2
    for theta, phi in [(1.0, 4.5), (2.3, 0.3)]:
        indices = patch_pixel_indices(nside, theta, phi, 10.0, xsize)
        expected = []
        for ring_map in maps:
            image = ring_map[indices].astype(np.float64)
            rotated = ndimage.rotate(image, 45, reshape=False)
            expected.append(rotated[start:start + xsize, start:start + xsize].astype(np.float32))
        assert not np.array_equal(expected[0], expected[1])
        for k in [0, 1, 0, 1, 1, 0]:
            patch = project_patch(maps[k], indices, xsize)
            assert_same_bits(patch, expected[k])
