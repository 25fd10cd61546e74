"""upscale / edsr upscale: tiling equality, odd image modes, 16-bit, and user-error behaviour."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from edsr_lib.errors import KitError
from edsr_lib import Architecture, build_model, read_image, save_checkpoint, upscale
from edsr_lib.inference import forward_tiled
from edsr_lib.model import load_state
from conftest import run_cli
from reference import published_forward, quantise, random_published_weights


@pytest.fixture(scope="module")
def baseline_ckpt(tmp_path_factory):
    rng = np.random.default_rng(7)
    weights = random_published_weights(rng, 2, 16, 64)
    arch = Architecture.from_preset("baseline", 2)
    path = tmp_path_factory.mktemp("ckpt") / "baseline_x2.ckpt"
    save_checkpoint(path, arch, weights)
    return path, weights


def _png16(path, array):
    """Hand-written 16-bit RGB PNG encoder (independent of Pillow and pypng)."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_tiled_equals_whole_image_for_tiny_tiles(rng):
    arch = Architecture(scale=4, n_resblocks=2, n_feats=8)
    model = build_model(arch)
    load_state(model, random_published_weights(rng, 4, 2, 8))
    x = rng.uniform(0, 255, (1, 3, 23, 19)).astype(np.float32)
    whole = forward_tiled(model, x)
    for tile in (3, 7, 10):
        np.testing.assert_allclose(forward_tiled(model, x, tile), whole, atol=1e-3, rtol=0)


@pytest.mark.slow
def test_cli_tile_48_gives_same_image_as_whole(tmp_path, baseline_ckpt, rng):
    ckpt, weights = baseline_ckpt
    image = rng.integers(0, 256, (61, 110, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    whole = run_cli("upscale", "--ckpt", ckpt, tmp_path / "in.png", tmp_path / "whole.png")
    tiled = run_cli("upscale", "--ckpt", ckpt, "--tile", "48", tmp_path / "in.png", tmp_path / "tiled.png")
    assert whole.returncode == 0 and tiled.returncode == 0, whole.stderr + tiled.stderr
    a, b = np.asarray(Image.open(tmp_path / "whole.png")), np.asarray(Image.open(tmp_path / "tiled.png"))
    assert a.shape == (122, 220, 3)
    np.testing.assert_array_equal(a, b)


def test_published_quadrant_chop_would_differ(baseline_ckpt, rng):
    """Sanity check that exact tiling matters: a tile with too little overlap (EDSR-PyTorch's 10 px) changes pixels."""
    ckpt, weights = baseline_ckpt
    from edsr_lib import load_model

    model = load_model(ckpt)
    x = rng.uniform(0, 255, (1, 3, 20, 80)).astype(np.float32)
    left = model(__import__("mindspore").Tensor(x[:, :, :, :60].copy())).asnumpy()  # cut at LR column 60
    whole = forward_tiled(model, x)
    assert model.arch.receptive_radius < 50
    assert np.abs(left[:, :, :, :20] - whole[:, :, :, :20]).max() < 1e-3  # 50 LR px from the cut: same
    assert np.abs(left[:, :, :, 100:110] - whole[:, :, :, 100:110]).max() > 0.1  # 10 px (the published shave): not


def test_grey_palette_rgba_inputs(tmp_path, rng):
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    grey = rgb[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    arr, note = read_image(tmp_path / "grey.png")
    assert arr.shape == (6, 5, 3) and note == "greyscale converted to RGB"
    assert (arr == grey[:, :, None]).all()

    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(tmp_path / "pal.png")
    arr, _ = read_image(tmp_path / "pal.png")
    np.testing.assert_array_equal(arr, np.asarray(pal.convert("RGB")))

    alpha = np.full((6, 5), 255, np.uint8)
    alpha[0, 0], alpha[1, 1] = 0, 128
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    white, note = read_image(tmp_path / "rgba.png")
    assert note == "transparent pixels composited on white"
    assert (white[0, 0] == 255).all()
    expected = np.round(rgb[1, 1].astype(float) * 128 / 255 + 255 * (1 - 128 / 255))
    np.testing.assert_array_equal(white[1, 1], expected)
    np.testing.assert_array_equal(white[2:], rgb[2:])
    dropped, note = read_image(tmp_path / "rgba.png", alpha="drop")
    assert note == "alpha channel dropped"
    np.testing.assert_array_equal(dropped, rgb)


def test_16bit_png_read_full_precision_and_written_16bit(tmp_path, baseline_ckpt, rng):
    ckpt, weights = baseline_ckpt
    image16 = rng.integers(0, 65536, (9, 8, 3)).astype(np.uint16)
    _png16(tmp_path / "in16.png", image16)
    arr, _ = read_image(tmp_path / "in16.png")
    assert arr.dtype == np.uint16
    np.testing.assert_array_equal(arr, image16)

    result = run_cli("upscale", "--ckpt", ckpt, tmp_path / "in16.png", tmp_path / "out16.png")
    assert result.returncode == 0, result.stderr
    out, _ = read_image(tmp_path / "out16.png")
    assert out.dtype == np.uint16 and out.shape == (18, 16, 3)
    reference = published_forward(weights, image16.astype(np.float64) / 257.0, 1.0) * 257.0
    assert np.abs(out.astype(np.float64) - np.clip(reference, 0, 65535)).max() <= 1.0
    assert len(np.unique(out % 257)) > 10  # not just an 8-bit result scaled up


@pytest.mark.slow
def test_bad_inputs_one_line_error_no_output(tmp_path, baseline_ckpt, rng):
    ckpt, _ = baseline_ckpt
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "good.png")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("hello, not an image")
    for name in ("missing.png", "truncated.png", "text.png"):
        out = tmp_path / f"out_{name}"
        result = run_cli("upscale", "--ckpt", ckpt, tmp_path / name, out)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and "Traceback" not in result.stderr, result.stderr
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary leftovers


def test_folder_mode_processes_good_files_and_reports_bad(tmp_path, baseline_ckpt, rng):
    ckpt, weights = baseline_ckpt
    src = tmp_path / "in"
    src.mkdir()
    images = {f"img{i}.png": rng.integers(0, 256, (7 + i, 6, 3), dtype=np.uint8) for i in range(3)}
    for name, im in images.items():
        Image.fromarray(im).save(src / name)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    result = run_cli("upscale", "--ckpt", ckpt, src, tmp_path / "out")
    assert result.returncode != 0 and "broken.png" in result.stderr
    for name, im in images.items():
        got = np.asarray(Image.open(tmp_path / "out" / name))
        assert (np.abs(got.astype(int) - quantise(published_forward(weights, im, 1.0))) <= 1).all()
    assert not (tmp_path / "out" / "broken.png").exists()


def test_upscale_rejects_wrong_array():
    model = build_model(Architecture(scale=2, n_resblocks=1, n_feats=4))
    with pytest.raises(KitError, match="HxWx3"):
        upscale(model, np.zeros((4, 4), np.uint8))
    with pytest.raises(KitError, match="HxWx3"):
        upscale(model, np.zeros((4, 4, 3), np.float32))


@pytest.mark.slow
def test_folder_of_one_image_and_outputs_that_would_overwrite(tmp_path, baseline_ckpt, rng):
    ckpt, weights = baseline_ckpt
    src = tmp_path / "one"
    src.mkdir()
    image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(image).save(src / "only.png")
    result = run_cli("upscale", "--ckpt", ckpt, src, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    got = np.asarray(Image.open(tmp_path / "out" / "only.png"))
    assert (np.abs(got.astype(int) - quantise(published_forward(weights, image, 1.0))) <= 1).all()
    before = (src / "only.png").read_bytes()
    result = run_cli("upscale", "--ckpt", ckpt, src / "only.png", src / "only.png")
    assert result.returncode == 2 and "overwrite an input" in result.stderr, result.stderr
    assert (src / "only.png").read_bytes() == before
    jpegs = tmp_path / "jpegs"  # a.jpg -> a.png collides with no input, yet the folder is the input's
    jpegs.mkdir()
    Image.fromarray(image).save(jpegs / "a.jpg")
    for folder in (src, jpegs):
        result = run_cli("upscale", "--ckpt", ckpt, folder, folder)
        assert result.returncode == 2 and "the output folder is the input folder" in result.stderr, result.stderr
    assert sorted(p.name for p in jpegs.iterdir()) == ["a.jpg"]
    Image.fromarray(image).save(src / "only.jpg")  # only.jpg and only.png would both become out2/only.png
    result = run_cli("upscale", "--ckpt", ckpt, src, tmp_path / "out2")
    assert result.returncode == 2 and "both" in result.stderr and not (tmp_path / "out2").exists()
