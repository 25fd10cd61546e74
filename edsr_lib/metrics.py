"""PSNR and SSIM exactly as SR papers compute them.

Protocol: quantise the output first (clamp, round), then
- benchmarks (Set5, Set14, B100, Urban100, Manga109): Y channel of ITU-R BT.601
  (Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, float, unrounded), `scale` pixels cropped from each border;
- DIV2K validation as EDSR-PyTorch reports it: RGB, border scale + 6.
SSIM is Wang et al.'s MATLAB `ssim_index`: 11x11 Gaussian window (sigma 1.5), 'valid' filtering,
C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, on the same channel and crop.
"""

from dataclasses import dataclass

import numpy as np

from .errors import KitError

BENCHMARKS = ("Set5", "Set14", "B100", "Urban100", "Manga109")


@dataclass(frozen=True)
class Protocol:
    channel: str  # "y" or "rgb"
    border: int

    def describe(self):
        return f"{'Y' if self.channel == 'y' else 'RGB'}, border {self.border}"


def protocol_for(dataset, scale, override=None):
    """The papers' rule per dataset: DIV2K -> RGB with border scale+6; everything else -> Y with border scale.

    `override` ("y" or "rgb") forces a channel, keeping that channel's usual border.
    """
    channel = override or ("rgb" if str(dataset).upper().startswith("DIV2K") else "y")
    if channel not in ("y", "rgb"):
        raise KitError(f"metric channel must be 'y' or 'rgb', got {override!r}")
    return Protocol(channel, scale + 6 if channel == "rgb" else scale)


def quantize(img, rgb_range=255.0):
    """Model output on [0, rgb_range] -> uint8 the way the papers do it: clamp, then round (never truncate)."""
    return np.round(np.clip(np.asarray(img, np.float64) * (255.0 / rgb_range), 0, 255)).astype(np.uint8)


def rgb_to_y(img):
    img = np.asarray(img, np.float64)
    return 16.0 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255.0


def _prepare(sr, hr, protocol):
    sr, hr = np.asarray(sr), np.asarray(hr)
    if sr.shape != hr.shape:
        raise KitError(f"SR {sr.shape} and HR {hr.shape} images differ in size")
    if protocol.channel == "y":
        sr, hr = rgb_to_y(sr), rgb_to_y(hr)
    else:
        sr, hr = sr.astype(np.float64), hr.astype(np.float64)
    b = protocol.border
    if b:
        if min(sr.shape[:2]) <= 2 * b:
            raise KitError(f"image {sr.shape[:2]} too small for a {b}-pixel border crop")
        sr, hr = sr[b:-b, b:-b], hr[b:-b, b:-b]
    return sr, hr


def psnr(sr, hr, protocol):
    """PSNR in dB between two uint8 RGB images (already quantised) under `protocol`."""
    sr, hr = _prepare(sr, hr, protocol)
    mse = np.mean((sr - hr) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _gaussian_window(size=11, sigma=1.5):
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()  # the 2-D window is the outer product, so it is normalised too


def _filter_valid(img, g):
    """2-D 'valid' correlation with the separable window outer(g, g)."""
    rows = np.lib.stride_tricks.sliding_window_view(img, len(g), axis=0) @ g
    return np.lib.stride_tricks.sliding_window_view(rows, len(g), axis=1) @ g


def _ssim_single(a, b):
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = _gaussian_window()
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(sr, hr, protocol):
    """SSIM (Wang et al., MATLAB version) under `protocol`; RGB is the mean over channels."""
    sr, hr = _prepare(sr, hr, protocol)
    if min(sr.shape[:2]) < 11:
        raise KitError(f"image {sr.shape[:2]} after border crop is smaller than the 11x11 SSIM window")
    if sr.ndim == 2:
        return _ssim_single(sr, hr)
    return float(np.mean([_ssim_single(sr[..., c], hr[..., c]) for c in range(sr.shape[2])]))
