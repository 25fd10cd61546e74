"""Interactive views: controls drive the pictures (checked without a browser by setting widget values)."""

import io

import numpy as np
import pytest
from PIL import Image

from edsr_lib import widgets
from edsr_lib.errors import KitError
from edsr_lib.data import SampleImages
from edsr_lib.degradations import bicubic_lr, modcrop
from edsr_lib.figures import before_after, crop_box, labelled_wipe, wipe_zoom
from edsr_lib.metrics import protocol_for
from edsr_lib.model import Architecture, build_model


class _Handle:
    """Stands in for IPython's DisplayHandle: records what each picture was replaced with."""

    def __init__(self):
        self.shown = []

    def update(self, image):
        self.shown.append(image.data)


def _png(data):
    return np.asarray(Image.open(io.BytesIO(data)))


def test_wipe_is_lossless_zoomed_and_labelled(rng):
    before = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    after = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    shown = before_after(before, after, 7)
    assert np.array_equal(shown[:, :7], before[:, :7]) and (shown[:, 7] == 255).all()
    assert np.array_equal(shown[:, 8:], after[:, 8:])
    box = (2, 3, 16)
    wipe = labelled_wipe(before, after, 0.5, box, zoom=2, labels=("L", "R"))
    assert wipe.shape == (32, 32, 3)
    crop_a, crop_b = before[2:18, 3:19], after[2:18, 3:19]
    # below the labels: every 2x2 block is one source pixel, left of the divider `before`, right of it `after`
    assert np.array_equal(wipe[24:, :16], np.repeat(np.repeat(crop_a, 2, 0), 2, 1)[24:, :16])
    assert np.array_equal(wipe[24:, 17:], np.repeat(np.repeat(crop_b, 2, 0), 2, 1)[24:, 17:])
    assert (wipe[24:, 16] == 255).all()


def _explorer(size=32):
    model = build_model(Architecture(scale=2, n_resblocks=1, n_feats=4))
    model.set_train(False)
    dataset = SampleImages(2, "test")
    comparison = widgets.Comparison(dataset, {"EDSR": model}, protocol_for("sample", 2))
    explorer = widgets.ComparisonExplorer(comparison, size)
    explorer._handles = (_Handle(), _Handle())
    return comparison, explorer, dataset


def test_explorer_defaults_to_the_main_model_against_bicubic_and_follows_its_controls():
    comparison, explorer, dataset = _explorer()
    assert explorer.methods.value == ("bicubic", "EDSR") and (explorer.left.value, explorer.right.value) == (
        "bicubic",
        "EDSR",
    )
    hr, images, scores = comparison.outputs(0)
    assert set(images) == {"bicubic", "EDSR"} and set(scores) == {"bicubic", "EDSR"}
    figure_handle, wipe_handle = explorer._handles
    explorer.image.value = 2
    explorer.x.value, explorer.crop.value = 0.1, 48
    assert len(figure_handle.shown) == 3 and len(wipe_handle.shown) == 3
    _, images, _ = comparison.outputs(2)
    box = crop_box(images["EDSR"].shape, explorer._center(images["EDSR"].shape), 48)
    expected = labelled_wipe(images["bicubic"], images["EDSR"], 0.5, box, wipe_zoom(48), ("bicubic", "EDSR"))
    assert np.array_equal(_png(wipe_handle.shown[-1]), expected)
    explorer.split.value = 0.2  # moving the wipe redraws only the wipe
    assert len(figure_handle.shown) == 3 and len(wipe_handle.shown) == 4
    assert not np.array_equal(_png(wipe_handle.shown[-1]), expected)
    assert comparison._outputs.cache_info().currsize == 2  # image 0 and image 2 computed once each
    assert "shown in" in explorer.status.value


def test_an_uploaded_photo_is_compared_as_hr_or_used_as_lr(tmp_path, rng):
    comparison, explorer, dataset = _explorer()
    explorer.upload_dir = tmp_path / "uploads"
    photo = rng.integers(0, 256, (21, 30, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    explorer.add_photo("mine.png", buffer.getvalue())
    assert explorer.image.value == len(dataset) and (tmp_path / "uploads" / "mine.png").is_file()
    hr, images, scores = comparison.outputs(explorer.image.value)
    assert np.array_equal(hr, modcrop(photo, 2)) and set(scores) == {"bicubic", "EDSR"}
    assert np.array_equal(comparison.pair(explorer.image.value)[0], bicubic_lr(photo, 2))
    explorer.add_photo("mine_lr.png", buffer.getvalue(), as_lr=True)
    hr, images, scores = comparison.outputs(explorer.image.value)
    assert hr is None and not scores and images["EDSR"].shape == (42, 60, 3)
    with pytest.raises(KitError, match="broken.png: not an image"):
        explorer.add_photo("broken.png", b"not an image")
    assert not (tmp_path / "uploads" / "broken.png").exists()
    explorer._on_upload({"new": ({"name": "broken.png", "content": memoryview(b"junk")},)})  # as FileUpload sends it
    assert "not an image" in explorer.status.value and explorer.image.value == len(dataset) + 1


def test_checkpoints_found_under_outputs_are_offered_and_loaded_only_when_chosen(tmp_path, rng):
    from edsr_lib.notebook_helpers import find_checkpoints
    from edsr_lib.weights import save_checkpoint
    from reference import random_published_weights

    arch = Architecture(scale=2, n_resblocks=1, n_feats=4)
    for name in ("run/ckpt/best.ckpt", "run/ckpt/latest.ckpt", "x3/best.ckpt"):
        save_checkpoint(
            tmp_path / name,
            Architecture(scale=3 if "x3" in name else 2, n_resblocks=1, n_feats=4),
            random_published_weights(rng, 3 if "x3" in name else 2, 1, 4),
        )
    (tmp_path / "run" / "ckpt" / ".best.ckpt.123.tmp.ckpt").write_bytes(b"partial")
    found = find_checkpoints(tmp_path, exclude=[tmp_path / "run" / "ckpt" / "latest.ckpt"])
    assert list(found) == ["run/ckpt/best", "x3/best"]
    model = build_model(arch)
    model.set_train(False)
    comparison = widgets.Comparison(SampleImages(2, "test"), {"EDSR": model, **found}, protocol_for("sample", 2))
    assert isinstance(comparison.methods["run/ckpt/best"], type(tmp_path))  # listed, not loaded
    _, images, scores = comparison.outputs(0, ["bicubic", "run/ckpt/best"])
    assert set(scores) == {"bicubic", "run/ckpt/best"} and images["run/ckpt/best"].shape == images["bicubic"].shape
    explorer = widgets.ComparisonExplorer(comparison, 32)
    explorer._handles = (_Handle(), _Handle())
    explorer.methods.value = ("bicubic", "x3/best")
    assert "an x3 model" in explorer.status.value  # a clear message in the view, not a traceback


def test_lpips_joins_the_scores_and_the_panel_titles(tmp_path, rng, monkeypatch):
    """With an LPIPS given, each score is (PSNR, SSIM, LPIPS) on the protocol's RGB border crop, and the
    comparison figure's titles show it; without, the titles show PSNR/SSIM only."""
    from edsr_lib.lpips import LPIPS, cached
    from edsr_lib.metrics import crop_border
    from edsr_lib.pretrained import Registry
    from reference import LPIPS_ALEX, LPIPS_ALEX_STAGES, lpips_forward, random_lpips_weights, write_pt_zip

    trunk, head = random_lpips_weights(rng, LPIPS_ALEX, LPIPS_ALEX_STAGES)
    write_pt_zip(tmp_path / "trunk.pth", trunk)
    write_pt_zip(tmp_path / "head.pth", head)
    dataset = SampleImages(2, "test")
    protocol = protocol_for("sample", 2)
    lpips = LPIPS("alex", tmp_path / "trunk.pth", tmp_path / "head.pth")
    comparison = widgets.Comparison(dataset, {}, protocol, lpips=lpips)
    hr, images, scores = comparison.outputs(0)
    b = protocol.border
    expected = lpips_forward(
        trunk, head, LPIPS_ALEX, LPIPS_ALEX_STAGES, crop_border(images["bicubic"], b), hr[b:-b, b:-b]
    )
    assert len(scores["bicubic"]) == 3 and scores["bicubic"][2] == pytest.approx(expected, abs=1e-5)
    titles = [ax.get_title() for ax in comparison.figure(0).axes]
    assert any(f"LPIPS {expected:.3f}" in t for t in titles)
    plain = widgets.Comparison(dataset, {}, protocol).figure(0)
    assert not any("LPIPS" in ax.get_title() for ax in plain.axes)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torchvision's cache holds no trunk either
    assert cached("alex", Registry(cache_dir=tmp_path / "empty"))[0] is None  # not cached: no LPIPS, and a note
    assert "edsr weights fetch lpips_alex" in cached("alex", Registry(cache_dir=tmp_path / "empty"))[1]
