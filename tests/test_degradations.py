"""Degradation protocols: BD and DN against MATLAB references written in the tests, the realistic pipeline's
ranges and reproducibility, and the option flowing to datasets, training patches and `edsr eval`."""

import json
import subprocess
import sys
import zlib

import numpy as np
import pytest

from edsr_lib.data import BenchmarkDataset, HRFolder, SampleImages
from edsr_lib.degradations import (
    KERNEL_SIZES,
    Degradation,
    RealisticRanges,
    bd,
    bd_bicubic,
    dn,
    fspecial_gaussian,
    realistic,
)
from edsr_lib.errors import KitError
from edsr_lib.images import read_image, write_image
from edsr_lib.options import Options
from edsr_lib.pipeline import PatchSource
from conftest import TEST_DATA, run_cli
from reference import (
    matlab_fspecial_gaussian,
    matlab_imfilter_replicate,
    matlab_imresize_down,
    matlab_nearest_down,
    matlab_uint8,
)


def _photo(name="butterfly"):
    image, _ = read_image(TEST_DATA / "Set5" / f"{name}.png")
    return image


def _within_one_level(actual, expected, equal_share=0.995):
    difference = np.abs(actual.astype(int) - expected.astype(int))
    assert actual.shape == expected.shape
    assert difference.max() <= 1 and (difference == 0).mean() >= equal_share, (difference.max(), difference.mean())


def _modcrop(img, s):
    return img[: img.shape[0] // s * s, : img.shape[1] // s * s]


def test_the_test_reference_imresize_is_matlab_s():
    data = np.load(TEST_DATA / "imresize_matlab_reference.npz")
    for name in ("random_16x15x3", "ramp_9x8"):
        for s in (2, 3, 4):
            np.testing.assert_allclose(matlab_imresize_down(data[name], s), data[f"{name}__x1_{s}"], atol=1e-9)


@pytest.mark.parametrize("size", [7, 11, 12])
def test_fspecial_gaussian_is_matlab_s(size):
    np.testing.assert_allclose(fspecial_gaussian(size, 1.6), matlab_fspecial_gaussian(size, 1.6), atol=1e-15)


@pytest.mark.parametrize("scale,kernel_size", [(2, 12), (3, 7), (4, 12)])
def test_bd_equals_rdn_s_matlab_protocol(scale, kernel_size, rng):
    """RDN/RCAN's imresize_BD: the kernel size rule, replicate-padded uint8 blur, then each scale's subsampling."""
    for hr in (_photo(), rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)):
        cropped = _modcrop(hr, scale)
        blurred = matlab_imfilter_replicate(cropped, matlab_fspecial_gaussian(kernel_size, 1.6))
        if scale % 2:
            expected = matlab_nearest_down(blurred, scale)
        else:  # the script's blur_HR(scale/2:scale:end-scale/2, ...), 1-based
            expected = blurred[scale // 2 - 1 : cropped.shape[0] - scale // 2 : scale][
                :, scale // 2 - 1 : cropped.shape[1] - scale // 2 : scale
            ]
        _within_one_level(bd(hr, scale), expected)


def test_bd_bicubic_is_the_training_script_s_blur_then_bicubic():
    hr = _modcrop(_photo("bird"), 3)
    blurred = matlab_imfilter_replicate(hr, matlab_fspecial_gaussian(7, 1.6))
    _within_one_level(bd_bicubic(hr, 3), matlab_uint8(matlab_imresize_down(blurred, 3)))


def test_dn_is_bicubic_plus_sigma_30_noise_in_single_precision_then_uint8():
    hr = _modcrop(_photo("baby"), 3)
    seed = [5, zlib.crc32(b"baby")]  # the documented rule: the run's seed and the image's name
    down = matlab_uint8(matlab_imresize_down(hr, 3)).astype(np.float32)
    noise = np.float32(30.0) * np.random.default_rng(seed).standard_normal(down.shape).astype(np.float32)
    expected = matlab_uint8((down + noise).astype(np.float64))
    _within_one_level(Degradation("dn", 5).image_lr(hr, 3, "baby"), expected)
    _within_one_level(dn(hr, 3, np.random.default_rng(seed)), expected)
    saturated = (expected == 0).mean() + (expected == 255).mean()
    assert saturated > 0.01  # sigma 30 saturates: uint8() clips instead of wrapping


def test_dn_noise_is_seeded_per_image(tmp_path):
    folder = tmp_path / "hr"
    for name in ("a", "b"):
        write_image(folder / f"{name}.png", _photo("head"))
    first = HRFolder(folder, 2, degradation=Degradation("dn", 1), cache=None)
    again = HRFolder(folder, 2, degradation=Degradation("dn", 1))
    other_seed = HRFolder(folder, 2, degradation=Degradation("dn", 2))
    assert np.array_equal(first.pair(0)[0], again.pair(0)[0])  # an evaluation repeats
    assert not np.array_equal(first.pair(0)[0], first.pair(1)[0])  # same pixels, other name: other noise
    assert not np.array_equal(first.pair(0)[0], other_seed.pair(0)[0])


def _draws(trace, name):
    return [v for k, v in trace if k == name]


def test_realistic_draws_fall_in_their_ranges():
    hr = _photo()
    ranges = RealisticRanges()
    trace = []
    for index in range(40):
        lr = realistic(hr[:96, :96], 4, np.random.default_rng([3, index]), ranges, trace=trace)
        assert lr.shape == (24, 24, 3) and lr.dtype == np.uint8
    for stage in ("", "2"):
        assert set(_draws(trace, f"kernel_size{stage}")) <= set(KERNEL_SIZES)
        for name in ("sigma", "noise", "poisson", "jpeg"):
            values = _draws(trace, f"{name}{stage}")
            bound = ranges.bounds({"sigma": "blur_sigma"}.get(name, name) + stage)
            assert values and all(bound[0] <= v <= bound[1] for v in values), (name, stage)
        low, high = ranges.bounds(f"resize{stage}")
        assert all(low <= v <= high for v in _draws(trace, f"resize{stage}"))
    assert len(set(_draws(trace, "kernel_size"))) >= 5  # the sizes really vary
    fixed = RealisticRanges(jpeg="55-55", jpeg2="70-70", noise="4-4", noise2="4-4")
    trace = []
    realistic(hr[:64, :64], 2, np.random.default_rng(0), fixed, trace=trace)
    assert _draws(trace, "jpeg") == [55] and _draws(trace, "jpeg2") == [70]


def test_realistic_lr_is_a_pure_function_of_seed_and_index_across_processes(tmp_path):
    hr = _photo()[:64, :64]
    np.save(tmp_path / "hr.npy", hr)
    code = (
        "import numpy as np; from edsr_lib.degradations import Degradation;"
        f"np.save(r'{tmp_path / 'lr.npy'}', Degradation('realistic', 9).sample_lr(np.load(r'{tmp_path / 'hr.npy'}'),"
        " 2, 123))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    here = Degradation("realistic", 9).sample_lr(hr, 2, 123)
    assert np.array_equal(np.load(tmp_path / "lr.npy"), here)
    assert not np.array_equal(here, Degradation("realistic", 9).sample_lr(hr, 2, 124))


def test_realistic_training_patches_are_new_per_sample_and_repeat_per_index():
    dataset = SampleImages(2, "train", degradation=Degradation("realistic", 4))
    source = PatchSource(dataset, 48, length=10, seed=4)
    lr, hr = source.sample(3)
    assert lr.shape == (24, 24, 3) and hr.shape == (48, 48, 3)
    assert all(np.array_equal(a, b) for a, b in zip(source.sample(3), (lr, hr)))
    bicubic = PatchSource(SampleImages(2, "train"), 48, length=10, seed=4).sample(3)
    assert np.array_equal(bicubic[1], hr)  # the same crop as a bicubic run: only the LR changes
    assert not np.array_equal(bicubic[0], lr)


def test_degradations_replace_the_bicubic_lr_files_of_a_benchmark(tmp_path):
    root = tmp_path / "Set5"
    hr = _photo("woman")
    write_image(root / "HR" / "woman.png", hr)
    write_image(root / "LR_bicubic" / "X2" / "womanx2.png", np.zeros((hr.shape[0] // 2, hr.shape[1] // 2, 3), np.uint8))
    assert not BenchmarkDataset(root, "Set5", 2).pair(0)[0].any()  # bicubic reads the file
    assert np.array_equal(BenchmarkDataset(root, "Set5", 2, degradation=Degradation("bd")).pair(0)[0], bd(hr, 2))


def test_degradation_options_are_checked():
    assert Options(degradation="BD").degradation_model() == Degradation("bd", 1)
    for bad, message in (
        (dict(degradation="jpeg"), "degradation 'jpeg' is not known"),
        (dict(realistic_jpeg="95-30"), "realistic_jpeg"),
        (dict(realistic_noise="lots"), "LOW-HIGH"),
    ):
        with pytest.raises(KitError, match=message):
            Options(**bad)


def test_eval_bicubic_under_each_protocol(tmp_path):
    """Blur and noise each cost the bicubic baseline PSNR; BD (nearest subsampling) and DN are each what RDN's
    tables call them."""
    folder = tmp_path / "hr"
    write_image(folder / "butterfly.png", _photo())
    scores = {}
    for kind in ("bicubic", "bd", "dn"):
        out = tmp_path / f"{kind}.json"
        result = run_cli("eval", "--bicubic", "--scale", 3, "--hr_dir", folder, "--degradation", kind, "--json", out)
        assert result.returncode == 0, result.stderr
        assert f"{kind} LR" in result.stdout
        scores[kind] = json.loads(out.read_text())["psnr"]
    assert scores["dn"] < scores["bd"] < scores["bicubic"], scores
    bad = run_cli("eval", "--bicubic", "--scale", 3, "--hr_dir", folder, "--degradation", "blurry")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and "Traceback" not in bad.stderr
