import numpy as np
import pytest
from skimage.metrics import structural_similarity

from edsr_lib.metrics import Protocol, protocol_for, psnr, quantize, rgb_to_y, ssim


def test_rgb_to_y_hand_values():
    assert rgb_to_y(np.array([0, 0, 0])) == pytest.approx(16.0)
    assert rgb_to_y(np.array([255, 255, 255])) == pytest.approx(16 + 65.481 + 128.553 + 24.966)
    assert rgb_to_y(np.array([10, 0, 0])) == pytest.approx(16 + 654.81 / 255)


def test_quantize_rounds_and_clamps():
    np.testing.assert_array_equal(
        quantize(np.array([-3.0, 0.49, 0.5, 1.5, 254.6, 300.0])), [0, 0, 0, 2, 255, 255]
    )  # numpy rounds half to even, as torch.round does


def test_psnr_hand_computed(rng):
    hr = rng.integers(20, 230, (20, 22, 3)).astype(np.uint8)
    sr = hr.copy()
    sr[5, 5, :] += 3  # one pixel off by 3 in every channel, inside the cropped region
    # RGB, border 2: 16 x 18 x 3 values, 3 of them off by 3.
    mse = 3 * 9 / (16 * 18 * 3)
    assert psnr(sr, hr, Protocol("rgb", 2)) == pytest.approx(10 * np.log10(255**2 / mse))
    dy = (65.481 + 128.553 + 24.966) * 3 / 255
    assert psnr(sr, hr, Protocol("y", 2)) == pytest.approx(10 * np.log10(255**2 / (dy**2 / (16 * 18))))
    sr[0, 0, :] = 0  # in the border: ignored
    assert psnr(sr, hr, Protocol("y", 2)) == pytest.approx(10 * np.log10(255**2 / (dy**2 / (16 * 18))))


def test_edsr_pytorch_y_formula_gives_same_psnr(rng):
    """EDSR-PyTorch computes Y on the difference with (65.738, 129.057, 25.064)/256: the same weights."""
    hr = rng.integers(0, 256, (30, 30, 3)).astype(np.float64)
    sr = np.clip(hr + rng.normal(0, 5, hr.shape), 0, 255).round()
    diff = (sr - hr) / 255 @ np.array([65.738, 129.057, 25.064]) / 256
    theirs = -10 * np.log10(np.mean(diff[3:-3, 3:-3] ** 2))
    assert psnr(sr.astype(np.uint8), hr.astype(np.uint8), Protocol("y", 3)) == pytest.approx(theirs, abs=2e-3)


@pytest.mark.parametrize("channel", ["y", "rgb"])
def test_ssim_matches_scikit_image(rng, channel):
    hr = rng.integers(0, 256, (40, 37, 3)).astype(np.uint8)
    sr = np.clip(hr + rng.normal(0, 12, hr.shape), 0, 255).round().astype(np.uint8)
    protocol = Protocol(channel, 3)
    a, b = (rgb_to_y(sr), rgb_to_y(hr)) if channel == "y" else (sr.astype(float), hr.astype(float))
    a, b = a[3:-3, 3:-3], b[3:-3, 3:-3]
    reference = structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=None if channel == "y" else 2,
    )
    # scikit-image averages over the valid region too (it crops (win_size-1)//2 pixels), so the values agree.
    assert ssim(sr, hr, protocol) == pytest.approx(reference, abs=1e-6)
    assert ssim(hr, hr, protocol) == pytest.approx(1.0)


def test_protocol_per_dataset():
    assert protocol_for("Set5", 4) == Protocol("y", 4)
    assert protocol_for("DIV2K", 2) == Protocol("rgb", 8)
    assert protocol_for("DIV2K", 2, override="y") == Protocol("y", 2)
    assert protocol_for("/my/photos", 3) == Protocol("y", 3)
