"""Datasets on generated and real layouts, the bicubic baseline protocol and edsr eval."""

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from edsr_lib.data import (
    ArrayCache,
    BenchmarkDataset,
    DIV2K,
    HRFolder,
    SampleImages,
    open_dataset,
    parse_data_range,
)
from edsr_lib.degradations import bicubic_lr
from edsr_lib.errors import KitError
from edsr_lib.imresize import imresize
from edsr_lib.metrics import Protocol, psnr
from conftest import benchmark_folder, run_cli


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_sample_images_offline(tmp_path):
    train = SampleImages(2, "train", cache=ArrayCache(tmp_path))
    test = SampleImages(2, "test", cache=ArrayCache(tmp_path))
    assert len(train) == 5 and len(test) == 3 and not set(train.names) & set(test.names)
    lr, hr = test.pair(1)  # camera.png is greyscale: becomes 3 equal channels
    assert hr.shape == (512, 512, 3) and lr.shape == (256, 256, 3)
    assert (hr[..., 0] == hr[..., 2]).all()


def test_hr_folder_lr_is_matlab_bicubic_and_cached(tmp_path, rng):
    img = rng.integers(0, 256, (31, 26, 3), dtype=np.uint8)
    _save(tmp_path / "imgs" / "a.png", img)
    cache = ArrayCache(tmp_path / "cache")
    ds = HRFolder(tmp_path / "imgs", 3, cache=cache)
    lr, hr = ds.pair(0)
    np.testing.assert_array_equal(hr, img[:30, :24])
    np.testing.assert_array_equal(lr, np.round(np.clip(imresize(img[:30, :24], 1 / 3), 0, 255)).astype(np.uint8))
    assert isinstance(hr, np.memmap) or isinstance(hr.base, np.memmap)
    n_cached = len(list((tmp_path / "cache").glob("*.npy")))
    assert n_cached == 2
    # A changed source file is noticed: new content, new cache entry.
    time.sleep(0.01)
    _save(tmp_path / "imgs" / "a.png", 255 - img)
    os.utime(tmp_path / "imgs" / "a.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    _, hr2 = HRFolder(tmp_path / "imgs", 3, cache=cache).pair(0)
    np.testing.assert_array_equal(hr2, 255 - img[:30, :24])


def test_benchmark_layout_with_lr_files(tmp_path, rng):
    root = tmp_path / "benchmark" / "Set5"
    hr = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    _save(root / "HR" / "baby.png", hr)
    _save(root / "LR_bicubic" / "X2" / "babyx2.png", bicubic_lr(hr, 2))
    ds = open_dataset("Set5", 2, dir_data=tmp_path, cache=ArrayCache(tmp_path / "c"))
    assert isinstance(ds, BenchmarkDataset) and ds.names == ["baby"]
    lr, hr2 = ds.pair(0)
    assert lr.shape == (12, 10, 3) and hr2.shape == (24, 20, 3)
    # x3 has no LR folder: made from HR (mod-cropped) with MATLAB bicubic
    lr3, hr3 = open_dataset("Set5", 3, dir_data=tmp_path, cache=ArrayCache(tmp_path / "c")).pair(0)
    assert lr3.shape == (8, 6, 3) and hr3.shape == (24, 18, 3)


def test_div2k_layout_and_ranges(tmp_path, rng):
    root = tmp_path / "DIV2K"
    for i, split in ((1, "train"), (2, "train"), (801, "valid")):
        hr = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
        _save(root / f"DIV2K_{split}_HR" / f"{i:04d}.png", hr)
        _save(root / f"DIV2K_{split}_LR_bicubic" / "X2" / f"{i:04d}x2.png", bicubic_lr(hr, 2))
    assert parse_data_range("1-800/801-810") == ((1, 800), (801, 810))
    train = open_dataset(
        "DIV2K", 2, dir_data=tmp_path, split="train", data_range="1-2/801-801", cache=ArrayCache(tmp_path / "c")
    )
    test = open_dataset(
        "DIV2K", 2, dir_data=tmp_path, split="test", data_range="1-2/801-801", cache=ArrayCache(tmp_path / "c")
    )
    assert isinstance(train, DIV2K) and train.names == ["0001", "0002"] and test.names == ["0801"]
    assert test.pair(0)[0].shape == (8, 6, 3)
    _save(root / "DIV2K_train_HR" / "0003.png", rng.integers(0, 256, (16, 12, 3), dtype=np.uint8))  # no LR
    with pytest.raises(KitError, match="0003x2.png: LR image missing"):
        open_dataset("DIV2K", 2, dir_data=tmp_path, split="train", data_range="1-3")
    with pytest.warns(UserWarning, match="0003"):
        ds = open_dataset("DIV2K", 2, dir_data=tmp_path, split="train", data_range="1-3", on_error="skip")
    assert len(ds) == 2
    with pytest.raises(KitError, match="data_range"):
        parse_data_range("800-1")
    with pytest.raises(KitError, match=r"0004\.png: HR image missing"):
        open_dataset("DIV2K", 2, dir_data=tmp_path, split="train", data_range="4-4")


def test_bad_layouts_name_the_file(tmp_path, rng):
    root = tmp_path / "benchmark" / "Set14"
    _save(root / "HR" / "a.png", rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))
    _save(root / "LR_bicubic" / "X2" / "ax2.png", rng.integers(0, 256, (11, 10, 3), dtype=np.uint8))
    with pytest.raises(KitError, match=r"ax2\.png: LR size 10x11 does not match HR .*a\.png \(20x24\)"):
        open_dataset("Set14", 2, dir_data=tmp_path)
    _save(tmp_path / "small" / "tiny.png", rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
    with pytest.raises(KitError, match=r"tiny\.png: too small"):
        HRFolder(tmp_path / "small", 2, min_lr_size=24)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.png").write_text("nope")
    with pytest.raises(KitError, match=r"x\.png: not a readable image"):
        HRFolder(tmp_path / "junk", 2)
    with pytest.raises(KitError, match="not a known name"):
        open_dataset("NoSuchSet", 2, dir_data=tmp_path)


@pytest.mark.slow
def test_bicubic_baseline_on_the_benchmarks(tmp_path):
    """Set5 (committed in tests/data) always; Set14 too where ../shared holds it (too large to commit)."""
    for dataset in ("Set5", "Set14"):
        folder = benchmark_folder(dataset)
        if folder is not None:
            _check_bicubic_baseline(tmp_path / dataset, folder, dataset)
    assert benchmark_folder("Set5") is not None


def _check_bicubic_baseline(tmp_path, folder, dataset):
    tmp_path.mkdir()
    out = tmp_path / "r.json"
    result = run_cli("eval", "--bicubic", "--hr-dir", folder, "--scale", 2, "--json", out)
    assert result.returncode == 0, result.stderr
    payload = json.loads(out.read_text())
    assert set(payload) >= {"psnr", "ssim", "per_image"}
    assert len(payload["per_image"]) == len(os.listdir(folder))
    assert np.mean([r["psnr"] for r in payload["per_image"]]) == pytest.approx(payload["psnr"])
    # The papers quote 33.66 / 30.24 from MATLAB on their copies of the images.
    expected = {"Set5": 33.66, "Set14": 30.24}[dataset]
    assert abs(payload["psnr"] - expected) < 0.15
    # Independent recomputation of one image's PSNR.
    name = payload["per_image"][0]["name"]
    hr = np.asarray(Image.open(folder / f"{name}.png").convert("RGB"))
    hr = hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2]
    lr = np.round(np.clip(imresize(hr, 0.5), 0, 255))
    sr = np.round(np.clip(imresize(lr, 2), 0, 255)).astype(np.uint8)
    assert psnr(sr, hr, Protocol("y", 2)) == pytest.approx(payload["per_image"][0]["psnr"], abs=1e-9)


def test_eval_user_errors(tmp_path):
    result = run_cli("eval", "--bicubic", "--hr-dir", tmp_path / "nope", "--scale", 2)
    assert result.returncode != 0 and "nope" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("eval", "--hr-dir", tmp_path, "--scale", 2)
    assert result.returncode != 0 and "--bicubic, --ckpt CK or --model FILE" in result.stderr
