"""Interactive views: controls drive the pictures (checked without a browser by setting widget values)."""
import io

import numpy as np
from PIL import Image

from edsr_lib import widgets
from edsr_lib.data import SampleImages
from edsr_lib.figures import before_after
from edsr_lib.metrics import protocol_for
from edsr_lib.model import Architecture, build_model


def test_before_after_wipe_is_lossless_and_follows_the_slider(rng):
    before = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    after = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    view = widgets.before_after_viewer(before, after)
    slider, image = view.children
    for split in (0, 7, 30):
        slider.value = split
        shown = np.asarray(Image.open(io.BytesIO(image.value)))
        assert np.array_equal(shown, before_after(before, after, split))
    # left of the split is `before`, right of it `after`, the divider column white
    shown = before_after(before, after, 7)
    assert np.array_equal(shown[:, :7], before[:, :7]) and (shown[:, 7] == 255).all()
    assert np.array_equal(shown[:, 8:], after[:, 8:])


def test_comparison_explorer_redraws_for_each_image_and_crop():
    model = build_model(Architecture(scale=2, n_resblocks=1, n_feats=4))
    model.set_train(False)
    dataset = SampleImages(2, "test")
    comparison = widgets.Comparison(dataset, {"EDSR": model}, protocol_for("sample", 2))
    explorer = widgets.comparison_explorer(comparison, size=32)
    (image, crop), (_, x) = explorer.children[0].children, explorer.children[1].children
    hr, images, scores = comparison.outputs(0)
    assert set(images) == {"bicubic", "EDSR"} and set(scores) == {"bicubic", "EDSR"}
    image.value = 2
    x.value, crop.value = 0.1, 48
    assert comparison.outputs.cache_info().currsize == 2  # image 0 and image 2 computed once each
    assert comparison.outputs(2)[0].shape == np.asarray(dataset.hr(2)).shape
