"""Shape noise: SCIENCE.md §5.1 dispersions and the reproducible noise streams of Decision 4."""
import os
import subprocess
import sys

import numpy as np
import pytest

from lensing_ssc.science.noise import noise_generator, noise_sigma_per_pixel, shape_noise

PIXAREA = 0.0858306884765625  # (600 / 2048)^2 arcmin^2, 10 deg / 2048 px


@pytest.mark.parametrize("ngal, expected", [(7, 0.3354), (15, 0.2291), (30, 0.1620), (50, 0.1255)])
def test_sigma_per_pixel_matches_science_md(ngal, expected):
    sigma = noise_sigma_per_pixel(ngal, 0.26, PIXAREA)
    assert abs(sigma - expected) < 5e-5  # SCIENCE.md quotes 4 decimals
    assert sigma == pytest.approx(0.26 / np.sqrt(ngal * PIXAREA), rel=1e-15)


def test_sigma_per_pixel_noiseless_is_zero():
    assert noise_sigma_per_pixel(0, 0.26, PIXAREA) == 0.0


@pytest.mark.parametrize("args", [(-1, 0.26, PIXAREA), (7, -0.1, PIXAREA), (7, 0.26, 0.0),
                                  (float("nan"), 0.26, PIXAREA), (7, 0.26, float("inf")), ("x", 0.26, PIXAREA)])
def test_sigma_per_pixel_rejects_bad_input(args):
    with pytest.raises(ValueError):
        noise_sigma_per_pixel(*args)


def _draw(*key, n=8):
    return noise_generator(*key).standard_normal(n)


def test_same_key_gives_identical_stream():
    key = (100, 1.0, 132, 7, "smoothed")
    assert np.array_equal(_draw(*key), _draw(*key))
    assert np.array_equal(shape_noise((4, 5), 0.3, noise_generator(*key)),
                          shape_noise((4, 5), 0.3, noise_generator(*key)))


@pytest.mark.parametrize("other", [(101, 1.0, 132, 7, "smoothed"), (100, 1.5, 132, 7, "smoothed"),
                                   (100, 1.0, 133, 7, "smoothed"), (100, 1.0, 132, 15, "smoothed"),
                                   (100, 1.0, 132, 7, "kappa")])
def test_each_key_field_changes_the_stream(other):
    assert not np.array_equal(_draw(100, 1.0, 132, 7, "smoothed"), _draw(*other))


def test_zs_is_keyed_to_one_thousandth():
    assert np.array_equal(_draw(1, 1.0, 0, 7, "p"), _draw(1, 1.0000001, 0, 7, "p"))
    assert not np.array_equal(_draw(1, 1.0, 0, 7, "p"), _draw(1, 1.001, 0, 7, "p"))


def test_integral_float_ngal_is_the_same_key():
    assert np.array_equal(_draw(1, 1.0, 0, 7, "p"), _draw(1, 1.0, 0, 7.0, "p"))


def test_stream_does_not_depend_on_python_hash_seed():
    """The purpose label is hashed with CRC-32, not hash(): two interpreters agree."""
    code = ("from lensing_ssc.science.noise import noise_generator;"
            "print(noise_generator(7, 2.0, 3, 30, 'kappa').integers(0, 2**62, 4).tolist())")
    outputs = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outputs.add(done.stdout)
    assert len(outputs) == 1
    assert outputs.pop().strip() == str(noise_generator(7, 2.0, 3, 30, "kappa").integers(0, 2**62, 4).tolist())


@pytest.mark.parametrize("args", [(-1, 1.0, 0, 7, "p"), (1, -0.5, 0, 7, "p"), (1, 1.0, -1, 7, "p"),
                                  (1, 1.0, 0, 7.5, "p"), (1, 1.0, 0, 7, ""), (1, 1.0, 0, 7, 3),
                                  (1, float("nan"), 0, 7, "p"), (1.5, 1.0, 0, 7, "p")])
def test_generator_rejects_bad_keys(args):
    with pytest.raises(ValueError):
        noise_generator(*args)


def test_shape_noise_has_the_requested_dispersion():
    sigma = noise_sigma_per_pixel(7, 0.26, PIXAREA)
    field = shape_noise((1000, 1000), sigma, noise_generator(5, 1.0, 0, 7, "test"))
    assert field.dtype == np.float64 and field.shape == (1000, 1000)
    # std of 1e6 Gaussian draws: relative standard error 1/sqrt(2e6) = 7e-4
    assert field.std() == pytest.approx(sigma, rel=4e-3)
    assert abs(field.mean()) < 5 * sigma / 1000


def test_streams_of_different_keys_are_uncorrelated():
    a = shape_noise(200_000, 1.0, noise_generator(5, 1.0, 0, 7, "kappa"))
    b = shape_noise(200_000, 1.0, noise_generator(5, 1.0, 0, 7, "smoothed"))
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(200_000)


def test_noiseless_shape_noise_is_zero():
    assert not shape_noise((3, 4), 0.0, noise_generator(1, 1.0, 0, 0, "p")).any()


@pytest.mark.parametrize("sigma, rng", [(-0.1, np.random.default_rng(0)), (float("nan"), np.random.default_rng(0)),
                                        (0.1, np.random.RandomState(0))])
def test_shape_noise_rejects_bad_input(sigma, rng):
    with pytest.raises(ValueError):
        shape_noise((2, 2), sigma, rng)
