import pytest

from edsr_lib.errors import KitError
from edsr_lib.options import Options


def test_multistep_schedule_several_milestones():
    opts = Options(lr=1e-4, decay="2-4", gamma=0.5)
    assert [opts.learning_rate(e) for e in range(6)] == [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 2.5e-5]


def test_presets_and_validation():
    paper = Options.for_preset("paper", scale=4, patch_size=192)
    assert (paper.n_resblocks, paper.n_feats, paper.res_scale) == (32, 256, 0.1)
    assert paper.architecture().scale == 4
    with pytest.raises(KitError, match="unknown option"):
        Options.from_dict({"scale": 2, "lr_typo": 1})


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(decay="400-200"), "decay epochs must be positive and increasing"),
        (dict(decay="x"), "decay must be positive epochs"),
        (dict(patch_size=97), "patch_size 97 must be a multiple of scale"),
        (dict(amp_level="O9"), "amp_level must be O0"),
        (dict(epochs=0), "epochs must be at least 1"),
    ],
)
def test_bad_options_are_refused_with_their_reason(bad, message):
    with pytest.raises(KitError, match=message):
        Options(**bad)


def test_patch_size_defaults_to_the_recipe_and_namespace_picks_options():
    assert (
        Options(scale=2).patch_size == 96 and Options(scale=3).patch_size == 144 and Options(scale=4).patch_size == 192
    )
    opts = Options.from_namespace({"scale": 4, "epochs": 3, "output_dir": "x", "device_target": "", "np": object()})
    assert (opts.scale, opts.epochs, opts.patch_size, opts.device_target) == (4, 3, 192, None)


@pytest.mark.parametrize(
    "name,value",
    [
        ("scale", 0),
        ("scale", 5),
        ("patch_size", 0),
        ("num_workers", -1),
        ("seed", -1),
        ("n_colors", 1),
        ("lr", float("nan")),
        ("lr", -1.0),
        ("lr", 0.0),
        ("gamma", float("inf")),
        ("res_scale", float("nan")),
        ("batch_size", 0),
        ("momentum", 1.0),
        ("loss_scale", -2.0),
        ("n_feats", 65536),
        ("n_resblocks", 10**7),
        ("epochs", 1.5),
        ("lr", "fast"),
    ],
)
def test_every_numeric_option_is_checked_before_work_starts(name, value):
    with pytest.raises(KitError, match=name if name not in ("n_feats", "n_resblocks") else "beyond the limits"):
        Options(**{name: value})


def test_large_networks_need_an_explicit_override():
    from edsr_lib.model import MAX_FEATS

    assert Options(n_feats=MAX_FEATS + 1, allow_large_model=True).n_feats == MAX_FEATS + 1
