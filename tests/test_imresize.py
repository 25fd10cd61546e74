import numpy as np
import pytest

from edsr_lib import imresize
from conftest import TEST_DATA


@pytest.fixture(scope="module")
def matlab():
    return np.load(TEST_DATA / "imresize_matlab_reference.npz")


@pytest.mark.parametrize("name", ["ramp_9x8", "random_16x15x3"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matches_matlab(matlab, name, scale):
    img = matlab[name]
    np.testing.assert_allclose(imresize(img, 1 / scale), matlab[f"{name}__x1_{scale}"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(imresize(img, scale), matlab[f"{name}__x{scale}"], atol=1e-6, rtol=0)


def test_2d_input_and_constant_image():
    flat = np.full((7, 5), 0.3)
    out = imresize(flat, 1 / 3)
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out, 0.3, atol=1e-14)  # weights sum to one
    assert imresize(flat, 2).shape == (14, 10)


def test_output_size_is_ceil_and_float_not_rounded():
    img = np.random.default_rng(0).uniform(0, 255, (99, 101, 3))
    out = imresize(img, 1 / 3)
    assert out.shape == (33, 34, 3) and out.dtype == np.float64
    assert np.any(out != np.round(out))


def test_hand_computed_upscale_weights():
    # x2 enlarge: output pixel 1 sits at (1-based) input coordinate 0.75; taps at input positions -1, 0, 1, 2
    # (distances 1.75, 0.75, 0.25, 1.25); symmetric padding maps position 0 -> 1 and -1 -> 2.
    def cubic(x):
        x = abs(x)
        return 1.5 * x**3 - 2.5 * x**2 + 1 if x <= 1 else (-0.5 * x**3 + 2.5 * x**2 - 4 * x + 2 if x <= 2 else 0)

    v = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    w = [cubic(d) for d in (1.75, 0.75, 0.25, 1.25)]
    expected = (w[0] * v[1] + w[1] * v[0] + w[2] * v[0] + w[3] * v[1]) / sum(w)
    assert imresize(v[:, None], 2)[0, 0] == pytest.approx(expected, abs=1e-12)
