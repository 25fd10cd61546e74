"""`edsr eval --conventions`: each convention's effect on a generated case where it is known by construction."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from edsr_lib.data import HRFolder
from edsr_lib.evaluation import compare_conventions, make_lr
from edsr_lib.images import write_image
from conftest import TEST_DATA, run_cli

SCALE = 3
Y_GAIN = (65.481 + 128.553 + 24.966) / 255.0  # an equal error e on R, G and B is an error Y_GAIN * e on Y


def _generated(tmp_path, height=61, width=74):
    """One smooth HR image (values 20-235, so no clipping), its size not a multiple of the scale."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = 128 + 60 * np.sin(yy / 7.0) * np.cos(xx / 9.0)
    hr = np.stack([base, base + 20, base - 20], -1).round().astype(np.uint8)
    write_image(tmp_path / "hr" / "smooth.png", hr)
    return HRFolder(tmp_path / "hr", SCALE), hr


def _oracle(hr, band=2, band_error=50.0):
    """An SR 'method' that returns the HR itself plus a known error: +50 in a 2-pixel band at the border (inside
    any crop of `scale` pixels), and inside it -0.3 on three pixels in four and +0.7 on the fourth. Rounding turns
    the interior error into +1 on one pixel in four; truncating into -1 on the other three."""

    def super_resolve(lr):
        h, w = lr.shape[0] * SCALE, lr.shape[1] * SCALE
        base = np.pad(hr.astype(np.float64), ((0, max(0, h - hr.shape[0])), (0, max(0, w - hr.shape[1])), (0, 0)))
        base = base[:h, :w]
        yy, xx = np.mgrid[0:h, 0:w]
        interior = np.where((yy % 2 == 0) & (xx % 2 == 0), 0.7, -0.3)[..., None]
        inside = (yy >= band) & (yy < h - band) & (xx >= band) & (xx < w - band)
        return base + np.where(inside[..., None], interior, band_error)

    return super_resolve


def test_each_convention_moves_psnr_as_constructed(tmp_path):
    dataset, hr = _generated(tmp_path)
    result = compare_conventions(dataset, super_resolve=_oracle(hr), progress=False)
    rows = {r["convention"]: r for r in result["rows"]}
    paper = rows["paper protocol"]
    assert paper["paper"] and paper["channel"] == "y" and paper["border"] == SCALE
    # Interior only (border 3 > the 2-pixel band): rounding leaves an error of 1 on a quarter of the pixels, so
    # MSE 1/4 on RGB and Y_GAIN^2 / 4 on Y.
    expected_rgb = 10 * np.log10(255.0**2 / 0.25)
    assert rows["RGB, border scale"]["psnr"] == pytest.approx(expected_rgb, abs=0.05)
    assert paper["psnr"] == pytest.approx(expected_rgb - 20 * np.log10(Y_GAIN), abs=0.05)
    # Truncating makes that error -1 on the other three quarters: three times the MSE, 10 log10(3) dB lower.
    assert paper["psnr"] - rows["truncated output (MindSpore ModelZoo EDSR)"]["psnr"] == pytest.approx(
        10 * np.log10(3), abs=0.05
    )
    # The border band only counts with border 0, and costs a lot there; scale+6 sees the same interior as scale.
    assert rows["Y, border 0"]["psnr"] < paper["psnr"] - 10
    assert rows["RGB, border 0"]["psnr"] < rows["RGB, border scale"]["psnr"] - 10
    assert rows["Y, border scale+6"]["psnr"] == pytest.approx(paper["psnr"], abs=0.1)
    # The oracle ignores its LR, so how the LR was made, and the mod-crop, change nothing here.
    for label in ("LR made with Pillow bicubic", "LR bicubic without antialiasing (as OpenCV)", "HR not mod-cropped"):
        assert rows[label]["psnr"] == pytest.approx(paper["psnr"], abs=0.1), label
    assert all(r["delta_psnr"] == pytest.approx(r["psnr"] - paper["psnr"]) for r in result["rows"])


def test_the_lr_makers_are_what_they_say(tmp_path):
    _, hr = _generated(tmp_path, 40, 50)
    cropped = hr[:40, :50]
    pillow = np.asarray(Image.fromarray(cropped).resize((25, 20), Image.Resampling.BICUBIC))
    assert np.array_equal(make_lr(hr, 2, "pillow"), pillow)
    # Without antialiasing, a x2 bicubic shrink weighs the 4 nearest pixels of each axis by cubic(1.5), cubic(0.5),
    # cubic(0.5), cubic(1.5) = -1/16, 9/16, 9/16, -1/16 (edges mirrored).
    taps = np.array([-1, 9, 9, -1]) / 16.0
    padded = np.pad(cropped.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="symmetric")
    rows = sum(t * padded[k : k + 40 : 2] for k, t in enumerate(taps))
    both = sum(t * rows[:, k : k + 50 : 2] for k, t in enumerate(taps))
    expected = np.round(np.clip(both, 0, 255)).astype(np.uint8)
    assert np.abs(make_lr(hr, 2, "no-antialias").astype(int) - expected).max() <= 1
    assert make_lr(hr, 3, "matlab", modcrop_first=False).shape == (14, 17, 3)  # ceil(40 / 3), ceil(50 / 3)


def test_cli_conventions_writes_the_table_and_marks_the_paper_protocol(tmp_path):
    out = tmp_path / "conv"
    result = run_cli("eval", "--bicubic", "--scale", 2, "--hr_dir", TEST_DATA / "Set5", "--conventions", out)
    assert result.returncode == 0, result.stderr
    assert "paper protocol *" in result.stdout
    payload = json.loads((out / "conventions.json").read_text())
    rows = {r["convention"]: r for r in payload["rows"]}
    assert rows["paper protocol"]["psnr"] == pytest.approx(33.66, abs=0.05)  # Set5 x2 bicubic, as SR papers print
    assert rows["RGB, border scale"]["psnr"] < rows["paper protocol"]["psnr"] - 1  # Y is kinder than RGB
    assert rows["truncated output (MindSpore ModelZoo EDSR)"]["delta_psnr"] < 0
    with open(out / "conventions.csv") as f:
        assert len(list(csv.DictReader(f))) == len(payload["rows"])
    assert (out / "conventions.png").stat().st_size > 10_000
    bad = run_cli("eval", "--bicubic", "--scale", 2, "--hr_dir", TEST_DATA / "Set5", "--conventions", "--channel", "y")
    assert bad.returncode == 2 and "drop --degradation/--channel" in bad.stderr
