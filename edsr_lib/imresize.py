"""MATLAB `imresize(img, scale, 'bicubic')` in numpy, to float64 round-off.

What makes it MATLAB's and not PIL's or OpenCV's: the cubic kernel with a = -0.5, the kernel stretched by 1/scale
when shrinking (antialiasing), symmetric (mirror) boundary handling, output size ceil(size * scale), and no
rounding of the result. SR benchmarks make their LR images this way, so PSNR is only comparable with it.
"""

import math

import numpy as np

from .errors import KitError


def _cubic(x):
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


def _contributions(in_len, out_len, scale, antialias=True):
    """(indices, weights), each out_len x taps: output i = sum_k weights[i, k] * input[indices[i, k]]."""
    kernel_width = 4.0
    if scale < 1 and antialias:
        kernel = lambda x: scale * _cubic(scale * x)  # noqa: E731
        kernel_width /= scale
    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    weights = kernel(u[:, None] - indices)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)
    return indices[:, keep], weights[:, keep]


def _resize_axis(img, axis, out_len, scale, antialias):
    indices, weights = _contributions(img.shape[axis], out_len, scale, antialias)
    moved = np.moveaxis(img, axis, 0)
    gathered = moved[indices]  # out_len x taps x rest
    out = np.einsum("ok,ok...->o...", weights, gathered)
    return np.moveaxis(out, 0, axis)


def output_size(size, scale):
    # The tiny tolerance keeps e.g. 99 * (1/3) = 33.000000000000004 from becoming 34.
    return int(math.ceil(size * scale - 1e-9))


def imresize(img: np.ndarray, scale: float, antialias: bool = True) -> np.ndarray:
    """Resize an HxW or HxWxC array by `scale` like MATLAB's imresize(..., 'bicubic'); float64 out, unrounded."""
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise KitError(f"imresize expects HxW or HxWxC, got shape {img.shape}")
    if not scale > 0:
        raise KitError(f"imresize scale must be positive, got {scale}")
    out = img.astype(np.float64)
    # MATLAB resizes the dimension with the smaller scale first; both scales are equal here, so rows first.
    for axis in (0, 1):
        out = _resize_axis(out, axis, output_size(img.shape[axis], scale), scale, antialias)
    return out
