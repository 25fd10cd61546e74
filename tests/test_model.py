import numpy as np
import pytest

from edsr_lib import Architecture, build_model, count_parameters
from edsr_lib.errors import KitError
from edsr_lib.model import load_state, upsampling_factors
from reference import assert_same_pixels, published_forward, random_published_weights

# Published parameter counts (EDSR paper / EDSR-PyTorch), in millions.
PUBLISHED_MILLIONS = {
    ("baseline", 2): 1.37,
    ("baseline", 3): 1.55,
    ("baseline", 4): 1.52,
    ("paper", 2): 40.73,
    ("paper", 3): 43.68,
    ("paper", 4): 43.09,
}


@pytest.mark.parametrize("preset,scale", sorted(PUBLISHED_MILLIONS))
def test_parameter_counts_match_published(preset, scale):
    model = build_model(Architecture.from_preset(preset, scale))
    assert round(count_parameters(model) / 1e6, 2) == PUBLISHED_MILLIONS[(preset, scale)]


def test_parameter_names_mirror_published_keys():
    model = build_model(Architecture.from_preset("baseline", 4))
    names = [p.name for p in model.get_parameters()]
    expected = ["sub_mean.weight", "sub_mean.bias", "head.0.weight", "head.0.bias"]
    for i in range(16):
        expected += [f"body.{i}.body.{j}.{t}" for j in (0, 2) for t in ("weight", "bias")]
    expected += [
        "body.16.weight",
        "body.16.bias",
        "tail.0.0.weight",
        "tail.0.0.bias",
        "tail.0.2.weight",
        "tail.0.2.bias",
        "tail.1.weight",
        "tail.1.bias",
        "add_mean.weight",
        "add_mean.bias",
    ]
    assert names == expected


def test_scales_products_of_two_and_three():
    assert upsampling_factors(6) == [2, 3]
    assert upsampling_factors(8) == [2, 2, 2]


@pytest.mark.parametrize(
    "bad, message", [(5, "scale 5 is not supported"), (7, "scale 7 is not"), (1, "scale 1 is not"), (0, "positive")]
)
def test_other_scales_are_refused_with_the_reason(bad, message):
    with pytest.raises(KitError, match=message):
        upsampling_factors(bad)


@pytest.mark.parametrize(
    "scale,blocks,feats,res_scale", [(2, 16, 64, 1.0), (3, 3, 32, 1.0), (4, 2, 24, 1.0), (2, 2, 256, 0.1)]
)
def test_forward_matches_numpy_reference(rng, scale, blocks, feats, res_scale):
    weights = random_published_weights(rng, scale, blocks, feats)
    model = build_model(Architecture(scale=scale, n_resblocks=blocks, n_feats=feats, res_scale=res_scale))
    load_state(model, weights)
    image = rng.integers(0, 256, (9, 11, 3)).astype(np.float32)
    ours = model(__import__("mindspore").Tensor(image.transpose(2, 0, 1)[None].copy())).asnumpy()[0].transpose(1, 2, 0)
    ref = published_forward(weights, image, res_scale)
    assert ours.shape == (9 * scale, 11 * scale, 3)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-3 * max(1.0, np.abs(ref).max() / 255))
    assert_same_pixels(np.round(np.clip(ours, 0, 255)).astype(np.uint8), ref)


def test_wrong_architecture_names_mismatching_tensors(rng):
    weights = random_published_weights(rng, 2, 2, 16)
    model = build_model(Architecture(scale=3, n_resblocks=2, n_feats=16))
    with pytest.raises(KitError, match=r"tail\.0\.0\.weight \(checkpoint \(64, 16, 3, 3\), model \(144, 16, 3, 3\)\)"):
        load_state(model, weights)
    deeper = build_model(Architecture(scale=2, n_resblocks=3, n_feats=16))
    with pytest.raises(KitError, match=r"missing from checkpoint: .*body\.2\.body\.0\.bias"):
        load_state(deeper, weights)


def test_finetune_skips_only_tail(rng):
    weights = random_published_weights(rng, 2, 2, 16)
    model = build_model(Architecture(scale=4, n_resblocks=2, n_feats=16))
    before_tail2 = model.tail[0][2].weight.asnumpy().copy()
    skipped = load_state(model, weights, skip_mismatched_tail=True)
    assert skipped == ["tail.0.2.bias", "tail.0.2.weight"]
    np.testing.assert_array_equal(model.head[0].weight.asnumpy(), weights["head.0.weight"])
    np.testing.assert_array_equal(model.tail[0][0].weight.asnumpy(), weights["tail.0.0.weight"])
    np.testing.assert_array_equal(model.tail[0][2].weight.asnumpy(), before_tail2)


def test_weights_loaded_after_the_graph_compiled_are_used(rng):
    """forward_array compiles a graph at its first call; loading other weights afterwards must change its output."""
    model = build_model(Architecture(scale=2, n_resblocks=2, n_feats=16))
    first, second = (random_published_weights(rng, 2, 2, 16) for _ in range(2))
    image = rng.integers(0, 256, (9, 11, 3)).astype(np.float32)
    for weights in (first, second, first):
        load_state(model, weights)
        ours = model.forward_array(image.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
        assert_same_pixels(np.round(np.clip(ours, 0, 255)).astype(np.uint8), published_forward(weights, image, 1.0))
