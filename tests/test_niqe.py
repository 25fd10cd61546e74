"""NIQE against MATLAB's own value (Set14's baboon) and against a second implementation written here, sharing no
code with `edsr_lib.metrics` (only the kit's imresize, which tests/test_imresize.py checks against MATLAB)."""

import math

import numpy as np
import pytest
from PIL import Image

from conftest import TEST_DATA
from edsr_lib.errors import KitError
from edsr_lib.imresize import imresize
from edsr_lib.metrics import NIQE_PRISTINE, niqe

# MATLAB R2021a's niqe on Set14's baboon as BasicSR's test image (cropped to 480x492; NIQE reads whole 96x96 blocks,
# so only its first 480x480 pixels, which tests/data/baboon_480x480.png holds), quoted in BasicSR's niqe.py.
MATLAB_BABOON = 5.72957338


def _independent_niqe(rgb, border=0):
    """NIQE written from the paper and MATLAB's conventions, a different code path for every step, in double
    precision (compared with the kit's float64 mode: single-precision rounding depends on summation order, and the
    shape search's 0.001 grid turns a last-bit difference into a grid step)."""
    p = np.load(NIQE_PRISTINE)
    rgb = rgb.astype(np.float64)
    y = 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0
    y = np.where(y - np.floor(y) >= 0.5, np.ceil(y), np.floor(y))  # MATLAB's round (halves away from zero)
    if border:
        y = y[border:-border, border:-border]
    nb_h, nb_w = y.shape[0] // 96, y.shape[1] // 96
    image = y[: nb_h * 96, : nb_w * 96]
    w = p["gaussian_window"]
    shapes = np.arange(0.2, 10.001, 0.001)
    lg = np.vectorize(math.lgamma)
    ratio = np.exp(2 * lg(2 / shapes) - lg(1 / shapes) - lg(3 / shapes))

    def smooth(a):  # correlation with edge replication; the window is symmetric, so it equals convolution
        padded = np.pad(a, 3, mode="edge")
        out = np.zeros(a.shape, np.float64)
        for dy in range(7):
            for dx in range(7):
                out += w[dy, dx] * padded[dy : dy + a.shape[0], dx : dx + a.shape[1]]
        return out

    def aggd(x):
        x = x.ravel().astype(np.float64)
        sl, sr = math.sqrt((x[x < 0] ** 2).mean()), math.sqrt((x[x > 0] ** 2).mean())
        g = sl / sr
        r = (np.abs(x).mean() ** 2) / (x**2).mean()
        rn = r * (g**3 + 1) * (g + 1) / ((g**2 + 1) ** 2)
        a = shapes[np.argmin((ratio - rn) ** 2)]
        k = math.exp(0.5 * (math.lgamma(1 / a) - math.lgamma(3 / a)))
        return a, sl * k, sr * k

    def neighbour(b, dy, dx):  # circular shift, spelled out
        b = np.concatenate([b[-dy:], b[:-dy]], axis=0) if dy else b
        return np.concatenate([b[:, -dx:], b[:, :-dx]], axis=1) if dx else b

    feats = []
    for scale in (1, 2):
        mu = smooth(image)
        sd = np.sqrt(np.abs(smooth(image * image) - mu * mu))
        norm = (image - mu) / (sd + 1)
        s = 96 // scale
        rows = []
        for bx in range(nb_w):
            for by in range(nb_h):
                blk = norm[by * s : (by + 1) * s, bx * s : (bx + 1) * s].astype(np.float64)
                a, lo, hi = aggd(blk)
                f = [a, (lo + hi) / 2]
                for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
                    a, lo, hi = aggd(blk * neighbour(blk, dy, dx))
                    f += [a, (hi - lo) * math.exp(math.lgamma(2 / a) - math.lgamma(1 / a)), lo, hi]
                rows.append(f)
        feats.append(np.array(rows))
        image = imresize(image, 0.5)
    f = np.hstack(feats)
    mu_d = f.mean(axis=0)
    cov_d = np.cov(f.T)
    d = p["mu_pris_param"][0] - mu_d
    return math.sqrt(d @ np.linalg.pinv(0.5 * (p["cov_pris_param"] + cov_d)) @ d)


def _read(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_niqe_matches_matlab_on_baboon():
    baboon = _read(TEST_DATA / "baboon_480x480.png")
    assert niqe(baboon) == pytest.approx(MATLAB_BABOON, abs=1e-5)


@pytest.mark.parametrize("name", ["baby", "bird", "butterfly", "head", "woman"])
def test_niqe_matches_an_independent_implementation_on_set5(name):
    image = _read(TEST_DATA / "Set5" / f"{name}.png")
    assert niqe(image, border=2, precision=np.float64) == pytest.approx(_independent_niqe(image, border=2), abs=1e-6)


def test_niqe_properties(rng):
    from scipy import ndimage

    baby = _read(TEST_DATA / "Set5" / "baby.png")
    blurred = np.stack([ndimage.gaussian_filter(baby[..., c].astype(float), 3) for c in range(3)], -1)
    blurred = np.round(blurred).astype(np.uint8)
    assert niqe(blurred) > niqe(baby) + 1  # a smooth image is far from natural statistics
    noise = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    assert niqe(noise, precision=np.float64) == pytest.approx(_independent_niqe(noise), abs=1e-6)
    # pixels outside the whole 96x96 blocks do not count: changing them changes nothing
    changed = baby.copy()
    changed[480:, :] = 0
    changed[:, 480:] = 255
    assert niqe(changed) == niqe(baby)
    with pytest.raises(KitError, match="too small for NIQE"):
        niqe(baby[:100, :150])


def test_eval_reports_niqe_of_the_images_it_writes(tmp_path):
    import json

    from conftest import run_cli

    out = tmp_path / "sr"
    done = run_cli(
        "eval", "--bicubic", "--scale", 2, "--hr-dir", TEST_DATA / "Set5", "--metrics", "psnr,niqe",
        "--save-images", out, "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["lower_is_better"] == ["niqe"] and "ssim" not in result and "NIQE (lower)" in done.stdout
    for row in result["per_image"]:
        assert row["niqe"] == niqe(_read(out / f"{row['name']}_x2_SR.png"), border=2)
    assert result["niqe"] == pytest.approx(np.mean([r["niqe"] for r in result["per_image"]]), abs=1e-12)
    bad = run_cli("eval", "--bicubic", "--scale", 2, "--hr-dir", TEST_DATA / "Set5", "--metrics", "psnr,nique")
    assert bad.returncode == 2 and "choose from psnr, ssim, lpips" in bad.stderr and "Traceback" not in bad.stderr
