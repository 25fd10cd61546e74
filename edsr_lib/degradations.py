"""How LR images are made from HR: the degradation protocols of the SR literature, each as its authors define it.

- `bicubic` (BI): MATLAB `imresize(HR, 1/s, 'bicubic')`, rounded. EDSR, and every BI table.
- `bd`: the BD *test* protocol of RDN and RCAN (`Prepare_TestData_HR_LR.m`, `imresize_BD` in yulunzhang/RDN):
  `fspecial('gaussian', k, 1.6)` with k = 7 at x3, ceil(3 sigma) * 2 + 1 at other odd scales and
  ceil(3 sigma) * 2 + 2 at even ones; `imfilter(HR, kernel, 'replicate')` on uint8 (the result is rounded to uint8),
  then `imresize(.., 1/s, 'nearest')` (odd scales; it keeps pixel (s-1)/2 of every s) or the pixel s/2 - 1 of
  every s (even scales, the script's slicing).
- `bd-bicubic`: the same blur followed by MATLAB bicubic, as RDN's *training* script (`Prepare_TrainData_HR_LR_BD.m`)
  makes its LR. Papers' BD tables are tested on `bd`.
- `dn`: MATLAB bicubic, plus Gaussian noise of sigma 30 (on 0-255) in single precision, then `uint8()`, which
  rounds and saturates (`imresize_DN`). The noise is seeded per image (seed, image name), so an evaluation repeats.
- `realistic`: a second-order degradation in the style of Real-ESRGAN (Wang et al. 2021): blur, random resize,
  noise and JPEG, twice, then the resize to the LR size. Gaussian kernels only (isotropic or anisotropic); Real-ESRGAN's
  generalised and plateau kernels and its sinc filter are left out. Every draw comes from a generator the caller
  seeds with (seed, sample index), so resume and data-parallel shards see the same LR.

Every function takes and returns HxWx3 uint8 arrays; the HR is mod-cropped to a multiple of the scale first.
"""

import io
import math
import zlib
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image
from scipy import ndimage

from .errors import KitError
from .imresize import imresize
from .metrics import quantize

DEGRADATIONS = ("bicubic", "bd", "bd-bicubic", "dn", "realistic")
BD_SIGMA = 1.6  # RDN/RCAN's BD blur
DN_SIGMA = 30.0  # RDN's DN noise level on 0-255


def modcrop(img, scale):
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def matlab_uint8(x):
    """MATLAB's uint8() of a real array: round half away from zero, then saturate to 0..255."""
    x = np.asarray(x)
    return np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), 0, 255).astype(np.uint8)


def fspecial_gaussian(size, sigma):
    """MATLAB `fspecial('gaussian', size, sigma)`: a size x size kernel centred between pixels when size is even."""
    half = (size - 1) / 2.0
    x = np.arange(size) - half
    h = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2.0 * sigma * sigma))
    h[h < np.finfo(np.float64).eps * h.max()] = 0
    return h / h.sum()


def bd_kernel_size(scale, sigma=BD_SIGMA):
    """RDN's rule: 7 at x3 with sigma 1.6; otherwise ceil(3 sigma) * 2 + 1 (odd scales) or + 2 (even scales)."""
    if scale == 3 and sigma == BD_SIGMA:
        return 7
    return int(math.ceil(sigma * 3)) * 2 + (1 if scale % 2 else 2)


def imfilter_replicate(img, kernel):
    """MATLAB `imfilter(img, kernel, 'replicate')` on uint8: correlation, the kernel's centre at
    floor((size + 1) / 2) (1-based), edges replicated, the result rounded back to uint8."""
    k = kernel.shape[0]
    before = (k - 1) // 2  # MATLAB's centre, 0-based
    after = k - 1 - before
    padded = np.pad(np.asarray(img, np.float64), ((before, after), (before, after), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    out = np.zeros((h, w, img.shape[2]), np.float64)
    for dy in range(k):
        for dx in range(k):
            if kernel[dy, dx]:
                out += kernel[dy, dx] * padded[dy : dy + h, dx : dx + w]
    return matlab_uint8(out)


def bicubic_lr(hr, scale):
    """The BI benchmark LR: round(clip(imresize(HR, 1/scale))) of the mod-cropped HR."""
    return quantize(imresize(modcrop(hr, scale), 1 / scale))


def _bicubic_uint8(img, scale):
    return matlab_uint8(imresize(img, 1 / scale))


def bd(hr, scale, sigma=BD_SIGMA):
    """RDN/RCAN's BD test LR: Gaussian blur (replicate edges, uint8) then nearest-neighbour subsampling."""
    hr = modcrop(hr, scale)
    blurred = imfilter_replicate(hr, fspecial_gaussian(bd_kernel_size(scale, sigma), sigma))
    start = (scale - 1) // 2 if scale % 2 else scale // 2 - 1
    return np.ascontiguousarray(blurred[start::scale, start::scale])


def bd_bicubic(hr, scale, sigma=BD_SIGMA):
    """RDN's BD training LR: the same Gaussian blur, then MATLAB bicubic."""
    hr = modcrop(hr, scale)
    return _bicubic_uint8(imfilter_replicate(hr, fspecial_gaussian(bd_kernel_size(scale, sigma), sigma)), scale)


def image_noise_seed(seed, name):
    """The seed of one image's noise: the run's seed and the image's name (stable across folders and ranges)."""
    return [int(seed), zlib.crc32(str(name).encode())]


def dn(hr, scale, rng, sigma=DN_SIGMA):
    """RDN's DN LR: MATLAB bicubic to uint8, plus single-precision Gaussian noise, then MATLAB's uint8()."""
    down = _bicubic_uint8(modcrop(hr, scale), scale).astype(np.float32)
    noise = (sigma * rng.standard_normal(down.shape)).astype(np.float32)
    return matlab_uint8(down + noise)


def _range(text, name, low, high):
    """'0.2-3' -> (0.2, 3.0), checked to lie in [low, high]."""
    try:
        a, b = (float(v) for v in str(text).split("-"))
    except ValueError:
        raise KitError(f"{name} must look like 'LOW-HIGH', e.g. 1-30, got {text!r}") from None
    if not (low <= a <= b <= high):
        raise KitError(f"{name} {text!r}: need {low} <= LOW <= HIGH <= {high}")
    return a, b


@dataclass(frozen=True)
class RealisticRanges:
    """The random ranges of the realistic degradation (Real-ESRGAN's defaults). Stage 2 has the `2` fields.

    Fixed choices, as in Real-ESRGAN: kernel sizes 7, 9, ..., 21; isotropic kernels 65% of the time (Real-ESRGAN's
    0.45 vs 0.25 for its two Gaussian kinds); resize up/down/keep with p = 0.2/0.7/0.1 (stage 2: 0.3/0.4/0.3) with
    area, bilinear or bicubic interpolation; Gaussian noise half the time, otherwise Poisson, grey noise 40% of the
    time; the second blur 80% of the time; the final resize and JPEG in either order.
    """

    blur_sigma: str = "0.2-3"
    blur_sigma2: str = "0.2-1.5"
    resize: str = "0.15-1.5"
    resize2: str = "0.3-1.2"
    noise: str = "1-30"
    noise2: str = "1-25"
    poisson: str = "0.05-3"
    poisson2: str = "0.05-2.5"
    jpeg: str = "30-95"
    jpeg2: str = "30-95"

    LIMITS = {"blur_sigma": (0.01, 20), "resize": (0.05, 4), "noise": (0, 255), "poisson": (0, 10), "jpeg": (1, 100)}

    def __post_init__(self):
        for f in fields(self):
            self.bounds(f.name)  # validates

    def bounds(self, name):
        low, high = self.LIMITS[name.rstrip("2")]
        return _range(getattr(self, name), f"realistic_{name}", low, high)

    @classmethod
    def from_options(cls, opts):
        return cls(**{f.name: getattr(opts, f"realistic_{f.name}") for f in fields(cls)})


KERNEL_SIZES = tuple(range(7, 22, 2))
RESIZE_MODES = {
    "area": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def gaussian_kernel(size, sigma_x, sigma_y, angle):
    """A size x size Gaussian, anisotropic when sigma_x != sigma_y, its long axis rotated by `angle` radians."""
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, -s], [s, c]])
    inverse = np.linalg.inv(rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T)
    ax = np.arange(size) - (size - 1) / 2.0
    grid = np.stack(np.meshgrid(ax, ax, indexing="xy"), -1)
    kernel = np.exp(-0.5 * np.einsum("...i,ij,...j->...", grid, inverse, grid))
    return kernel / kernel.sum()


class _Trace:
    """Records every random draw (name, value) so tests can check them against their ranges."""

    def __init__(self, sink):
        self.sink = sink

    def __call__(self, name, value):
        if self.sink is not None:
            self.sink.append((name, value))
        return value


def _blur(img, rng, sigma_range, trace, stage):
    size = trace(f"kernel_size{stage}", int(rng.choice(KERNEL_SIZES)))
    if rng.random() < 0.65:
        sigma = trace(f"sigma{stage}", float(rng.uniform(*sigma_range)))
        kernel = gaussian_kernel(size, sigma, sigma, 0.0)
    else:
        sx = trace(f"sigma{stage}", float(rng.uniform(*sigma_range)))
        sy = trace(f"sigma{stage}", float(rng.uniform(*sigma_range)))
        kernel = gaussian_kernel(size, sx, sy, float(rng.uniform(-math.pi, math.pi)))
    return np.stack([ndimage.correlate(img[..., c], kernel, mode="reflect") for c in range(img.shape[2])], -1)


def _resize_to(img, height, width, mode):
    channels = [Image.fromarray(np.ascontiguousarray(img[..., c], np.float32), mode="F") for c in range(img.shape[2])]
    return np.stack([np.asarray(ch.resize((width, height), RESIZE_MODES[mode])) for ch in channels], -1)


def _random_resize(img, rng, scale_range, probabilities, trace, stage):
    kind = rng.choice(("up", "down", "keep"), p=probabilities)
    factor = {"up": rng.uniform(1, scale_range[1]), "down": rng.uniform(scale_range[0], 1), "keep": 1.0}[kind]
    factor = trace(f"resize{stage}", float(factor))
    mode = str(rng.choice(tuple(RESIZE_MODES)))
    h, w = img.shape[:2]
    return _resize_to(img, max(1, round(h * factor)), max(1, round(w * factor)), mode)


def _add_noise(img, rng, sigma_range, poisson_range, trace, stage):
    grey = rng.random() < 0.4
    shape = img.shape[:2] + (1,) if grey else img.shape
    if rng.random() < 0.5:
        sigma = trace(f"noise{stage}", float(rng.uniform(*sigma_range)))
        noise = rng.standard_normal(shape) * (sigma / 255.0)
    else:
        scale = trace(f"poisson{stage}", float(rng.uniform(*poisson_range)))
        source = img.mean(axis=2, keepdims=True) if grey else img
        levels = 2 ** math.ceil(math.log2(max(len(np.unique(np.round(source * 255))), 2)))
        noise = (rng.poisson(np.clip(source, 0, 1) * levels) / levels - source) * scale
    return np.clip(img + noise, 0, 1)


def _jpeg(img, rng, quality_range, trace, stage):
    quality = trace(f"jpeg{stage}", int(rng.integers(int(quality_range[0]), int(quality_range[1]) + 1)))
    buffer = io.BytesIO()
    Image.fromarray(matlab_uint8(img * 255.0)).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), np.float32) / 255.0


def realistic(hr, scale, rng, ranges=RealisticRanges(), trace=None):
    """A second-order Real-ESRGAN-style LR of `hr` (uint8) at 1/scale, every draw from `rng`. `trace`, a list,
    receives (name, value) for every drawn parameter."""
    hr = modcrop(hr, scale)
    record = _Trace(trace)
    img = np.asarray(hr, np.float32) / 255.0
    img = _blur(img, rng, ranges.bounds("blur_sigma"), record, "")
    img = _random_resize(img, rng, ranges.bounds("resize"), (0.2, 0.7, 0.1), record, "")
    img = _add_noise(img, rng, ranges.bounds("noise"), ranges.bounds("poisson"), record, "")
    img = _jpeg(img, rng, ranges.bounds("jpeg"), record, "")
    if rng.random() < 0.8:
        img = _blur(img, rng, ranges.bounds("blur_sigma2"), record, "2")
    img = _random_resize(img, rng, ranges.bounds("resize2"), (0.3, 0.4, 0.3), record, "2")
    img = _add_noise(img, rng, ranges.bounds("noise2"), ranges.bounds("poisson2"), record, "2")
    size = (hr.shape[0] // scale, hr.shape[1] // scale)
    final_mode = str(rng.choice(tuple(RESIZE_MODES)))
    if rng.random() < 0.5:
        img = _jpeg(np.clip(_resize_to(img, *size, final_mode), 0, 1), rng, ranges.bounds("jpeg2"), record, "2")
    else:
        img = _resize_to(_jpeg(img, rng, ranges.bounds("jpeg2"), record, "2"), *size, final_mode)
    return matlab_uint8(np.clip(img, 0, 1) * 255.0)


@dataclass(frozen=True)
class Degradation:
    """One degradation protocol with its seed: what a dataset uses to make LR from HR."""

    kind: str = "bicubic"
    seed: int = 0
    ranges: RealisticRanges = RealisticRanges()

    def __post_init__(self):
        if self.kind not in DEGRADATIONS:
            raise KitError(f"degradation {self.kind!r} is not known; choose one of {', '.join(DEGRADATIONS)}")

    @classmethod
    def from_options(cls, opts):
        return cls(opts.degradation, opts.seed, RealisticRanges.from_options(opts))

    @property
    def per_sample(self):
        """Whether training draws a new LR for every sample (realistic) rather than one per image."""
        return self.kind == "realistic"

    def cache_kind(self, scale):
        """The key of this LR in the image cache (the bicubic key is the one earlier versions wrote)."""
        if self.kind == "bicubic":
            return f"lrx{scale}"
        if self.kind in ("bd", "bd-bicubic"):
            return f"lr-{self.kind}-x{scale}"
        ranges = zlib.crc32(repr(self.ranges).encode()) if self.kind == "realistic" else 0
        return f"lr-{self.kind}-{self.seed}-{ranges:08x}-x{scale}"

    def image_lr(self, hr, scale, name):
        """The LR of one whole image (evaluation, and training for every kind but realistic)."""
        hr = np.asarray(hr)
        if self.kind == "bicubic":
            return bicubic_lr(hr, scale)
        if self.kind == "bd":
            return bd(hr, scale)
        if self.kind == "bd-bicubic":
            return bd_bicubic(hr, scale)
        rng = np.random.default_rng(image_noise_seed(self.seed, name))
        if self.kind == "dn":
            return dn(hr, scale, rng)
        return realistic(hr, scale, rng, self.ranges)

    def sample_lr(self, hr_patch, scale, index):
        """A training sample's LR made from its HR patch, a pure function of (seed, sample index)."""
        return realistic(hr_patch, scale, np.random.default_rng([self.seed, int(index), 7]), self.ranges)
