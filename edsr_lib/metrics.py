"""PSNR and SSIM exactly as SR papers compute them, and NIQE as MATLAB's `niqe` does.

Protocol: quantise the output first (clamp, round), then
- benchmarks (Set5, Set14, B100, Urban100, Manga109): Y channel of ITU-R BT.601
  (Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, float, unrounded), `scale` pixels cropped from each border;
- DIV2K validation as EDSR-PyTorch reports it: RGB, border scale + 6.
SSIM is Wang et al.'s MATLAB `ssim_index`: 11x11 Gaussian window (sigma 1.5), 'valid' filtering,
C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, on the same channel and crop.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import KitError

BENCHMARKS = ("Set5", "Set14", "B100", "Urban100", "Manga109")


CHANNELS = ("y", "rgb")  # what PSNR and SSIM are computed on: BT.601 luma (the papers' benchmarks) or RGB (DIV2K)


@dataclass(frozen=True)
class Protocol:
    channel: str  # "y" or "rgb"
    border: int

    def describe(self):
        return f"{'Y' if self.channel == 'y' else 'RGB'}, border {self.border}"


def protocol_for(dataset: str, scale: int, override: str | None = None) -> Protocol:
    """The papers' rule per dataset: DIV2K -> RGB with border scale+6; everything else -> Y with border scale.

    `override` ("y" or "rgb") forces a channel, keeping that channel's usual border.
    """
    channel = override or ("rgb" if str(dataset).upper().startswith("DIV2K") else "y")
    if channel not in CHANNELS:
        raise KitError(f"metric channel must be 'y' or 'rgb', got {override!r}")
    return Protocol(channel, scale + 6 if channel == "rgb" else scale)


def quantize(img: np.ndarray, rgb_range: float = 255.0) -> np.ndarray:
    """Model output on [0, rgb_range] -> uint8 the way the papers do it: clamp, then round (never truncate)."""
    return np.round(np.clip(np.asarray(img, np.float64) * (255.0 / rgb_range), 0, 255)).astype(np.uint8)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
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
    return crop_border(sr, protocol.border), crop_border(hr, protocol.border)


def crop_border(image: np.ndarray, border: int) -> np.ndarray:
    """The image without `border` pixels on each side (what every metric here scores)."""
    image = np.asarray(image)
    if border and min(image.shape[:2]) <= 2 * border:
        raise KitError(f"image {image.shape[:2]} too small for a {border}-pixel border crop")
    return image[border:-border, border:-border] if border else image


def psnr(sr: np.ndarray, hr: np.ndarray, protocol: Protocol) -> float:
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


def ssim(sr: np.ndarray, hr: np.ndarray, protocol: Protocol) -> float:
    """SSIM (Wang et al., MATLAB version) under `protocol`; RGB is the mean over channels."""
    sr, hr = _prepare(sr, hr, protocol)
    if min(sr.shape[:2]) < 11:
        raise KitError(f"image {sr.shape[:2]} after border crop is smaller than the 11x11 SSIM window")
    if sr.ndim == 2:
        return _ssim_single(sr, hr)
    return float(np.mean([_ssim_single(sr[..., c], hr[..., c]) for c in range(sr.shape[2])]))


# Which metrics `evaluate` can report, and the ones where a lower value is better. lpips: LPIPS v0.1 with the
# AlexNet trunk (the `lpips` package's default), lpips_vgg with VGG16 (`edsr_lib.lpips`).
METRICS = ("psnr", "ssim", "lpips", "lpips_vgg", "niqe")
LOWER_IS_BETTER = ("lpips", "lpips_vgg", "niqe")


def parse_metrics(text: str | Iterable[str]) -> tuple[str, ...]:
    """'psnr,ssim,niqe' (or a sequence of names) -> ('psnr', 'ssim', 'niqe'), each known, in the order given."""
    given = text.split(",") if isinstance(text, str) else text
    names = tuple(dict.fromkeys(n.strip().lower() for n in given if n.strip()))
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise KitError(f"metrics {text!r}: choose from {', '.join(METRICS)}")
    return names


# ---- NIQE (Mittal, Soundararajan and Bovik, "Making a 'completely blind' image quality analyzer", 2013) ----------
# No reference image: the distance between a multivariate Gaussian fitted to the image's natural-scene statistics
# and one fitted to pristine photos (the authors' model). Lower is better.
NIQE_BLOCK = 96
# The authors' pristine model (mean and covariance of the 36 features, and their 7x7 Gaussian window), as BasicSR
# ships it (niqe_pris_params.npz, Apache-2.0, from the authors' MATLAB release): assets/NOTICE names both.
NIQE_PRISTINE = Path(__file__).resolve().parent / "assets" / "niqe_pristine_params.npz"
_AGGD_SHAPES = np.arange(0.2, 10.001, 0.001)  # the shape parameters the authors' code searches, in its steps


def _aggd_ratios():
    from scipy.special import gamma

    return gamma(2 / _AGGD_SHAPES) ** 2 / (gamma(1 / _AGGD_SHAPES) * gamma(3 / _AGGD_SHAPES))


def _aggd(values, ratios):
    """(shape, left scale, right scale) of an asymmetric generalised Gaussian fitted by moment matching."""
    from scipy.special import gamma

    values = values.ravel()
    left, right = np.sqrt(np.mean(values[values < 0] ** 2)), np.sqrt(np.mean(values[values > 0] ** 2))
    gamma_hat = left / right
    r_hat = np.mean(np.abs(values)) ** 2 / np.mean(values**2)
    r_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    shape = _AGGD_SHAPES[np.argmin((ratios - r_norm) ** 2)]
    factor = np.sqrt(gamma(1 / shape) / gamma(3 / shape))
    return shape, left * factor, right * factor


def _niqe_features(block, ratios):
    """The 18 features of one block of normalised (MSCN) coefficients: their AGGD's shape and scale, and for each
    of four neighbour products (horizontal, vertical, two diagonals) its AGGD's shape, mean, left and right scale."""
    from scipy.special import gamma

    block = block.astype(np.float64)
    shape, left, right = _aggd(block, ratios)
    features = [shape, (left + right) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        shape, left, right = _aggd(block * np.roll(block, shift, axis=(0, 1)), ratios)
        features += [shape, (right - left) * gamma(2 / shape) / gamma(1 / shape), left, right]
    return features


def niqe(image, border=0, precision=np.float32):
    """NIQE of an RGB (HxWx3, 0-255) or luma (HxW) image as MATLAB's `niqe` computes it, lower is better: the Y
    channel rounded as MATLAB's rgb2ycbcr gives it, `border` pixels cropped, whole 96x96 blocks only, the features at
    full and half size (MATLAB's bicubic imresize), the authors' pristine model. In single precision, as MATLAB: on
    Set14's baboon this gives 5.729576, MATLAB R2021a 5.729573 (BasicSR's figure). `precision` float64 computes
    the filtered images in double instead: the shape search picks from a 0.001 grid, so single-precision rounding
    moves some features by a grid step, and with few blocks the covariance amplifies that (Set5's head: 8.49 single,
    8.79 double). Compare NIQE values only at one precision; MATLAB's and this default are single."""
    from scipy import ndimage

    from .imresize import imresize

    image = np.asarray(image)
    luma = np.floor(rgb_to_y(image) + 0.5) if image.ndim == 3 else image.astype(np.float64)
    if border:
        luma = luma[border:-border, border:-border]
    rows, cols = luma.shape[0] // NIQE_BLOCK, luma.shape[1] // NIQE_BLOCK
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise KitError(
            f"image {luma.shape[1]}x{luma.shape[0]} (after a {border}-pixel border) is too small for NIQE: it needs "
            f"at least two whole {NIQE_BLOCK}x{NIQE_BLOCK} blocks"
        )
    pristine = np.load(NIQE_PRISTINE)
    window, ratios = pristine["gaussian_window"], _aggd_ratios()
    luma = luma[: rows * NIQE_BLOCK, : cols * NIQE_BLOCK].astype(precision)
    per_scale = []
    for size in (NIQE_BLOCK, NIQE_BLOCK // 2):
        mean = ndimage.convolve(luma, window, mode="nearest")
        spread = np.sqrt(np.abs(ndimage.convolve(luma * luma, window, mode="nearest") - mean * mean))
        mscn = (luma - mean) / (spread + 1)
        blocks = [mscn[i * size : (i + 1) * size, j * size : (j + 1) * size] for i in range(rows) for j in range(cols)]
        per_scale.append(np.array([_niqe_features(b, ratios) for b in blocks]))
        luma = imresize(luma, 0.5).astype(precision)
    features = np.concatenate(per_scale, axis=1)
    fitted_mean = np.nanmean(features, axis=0)
    fitted_cov = np.cov(features[~np.isnan(features).any(axis=1)], rowvar=False)
    difference = pristine["mu_pris_param"].ravel() - fitted_mean
    return float(np.sqrt(difference @ np.linalg.pinv((pristine["cov_pris_param"] + fitted_cov) / 2) @ difference))
