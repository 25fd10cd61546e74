"""Solutions to notebooks/exercises/exercises.ipynb; check them with
`papermill exercises.ipynb out.ipynb -p solutions solutions.py`."""

import numpy as np


def pixel_shuffle(x, r):
    # (C*r*r, H, W) -> (C, r, r, H, W) -> (C, H, r, W, r) -> (C, H*r, W*r):
    # channel c*r*r + i*r + j fills the sub-pixel (i, j) of every r x r output block.
    c, h, w = x.shape[0] // (r * r), x.shape[1], x.shape[2]
    return x.reshape(c, r, r, h, w).transpose(0, 3, 1, 4, 2).reshape(c, h * r, w * r)


def cubic(x):
    # Keys' cubic convolution with a = -0.5, as MATLAB's imresize defines it.
    ax = np.abs(x)
    return np.where(
        ax <= 1,
        1.5 * ax**3 - 2.5 * ax**2 + 1,
        np.where(ax <= 2, -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2, 0.0),
    )


def psnr_y(sr, hr, border):
    def luma(img):
        img = img.astype(np.float64)
        return 16 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255

    # [border:-border] would be empty for border 0: slice to the far edge explicitly
    height, width = hr.shape[:2]
    diff = (luma(sr) - luma(hr))[border : height - border, border : width - border]
    return 10 * np.log10(255**2 / np.mean(diff**2))


def receptive_radius(n_resblocks, scale):
    # head conv 1 + two 3x3 convs per residual block + the body's last conv 1 + the first
    # upsampler conv 1 (all at LR resolution); each later conv (a second x2 upsampler stage,
    # the tail conv) is counted as one more LR pixel, a safe bound although it reaches less far.
    stages = 2 if scale == 4 else 1
    return 1 + 2 * n_resblocks + 1 + 1 + stages
