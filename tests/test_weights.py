"""Published .pt (both formats) and ModelZoo .ckpt conversion against independent numpy references."""

import numpy as np
import pytest
import mindspore as ms

from edsr_lib import load_model, read_checkpoint, upscale
from edsr_lib.errors import KitError
from edsr_lib.torch_pickle import load_torch_state_dict
from conftest import run_cli
from reference import (
    dihedral_transforms,
    assert_same_pixels,
    modelzoo_forward,
    published_forward,
    random_published_weights,
    write_malicious_pt,
    write_pt_legacy,
    write_pt_zip,
)

WRITERS = {"legacy": write_pt_legacy, "zip": write_pt_zip}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_torch_reader_round_trip(tmp_path, rng, fmt):
    state = random_published_weights(rng, 2, 1, 8)
    path = tmp_path / "m.pt"
    WRITERS[fmt](path, state)
    loaded = load_torch_state_dict(path)
    assert list(loaded) == list(state)
    for k in state:
        np.testing.assert_array_equal(loaded[k], state[k])


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("scale,blocks,feats", [(2, 16, 64), (3, 16, 64), (4, 16, 64), (2, 2, 256)])
def test_converted_pt_reproduces_reference(tmp_path, rng, fmt, scale, blocks, feats):
    weights = random_published_weights(rng, scale, blocks, feats)
    src, dst = tmp_path / f"edsr_x{scale}.pt", tmp_path / "kit.ckpt"
    WRITERS[fmt](src, weights)
    result = run_cli("convert", src, dst) if (fmt, scale, feats) == ("legacy", 2, 64) else None
    if result is not None:
        assert result.returncode == 0, result.stderr
    else:
        from edsr_lib import convert

        convert(src, dst)
    arch, _, _ = read_checkpoint(dst)
    assert (arch.scale, arch.n_resblocks, arch.n_feats) == (scale, blocks, feats)
    assert arch.res_scale == (0.1 if feats == 256 else 1.0)
    model = load_model(dst)
    image = rng.integers(0, 256, (10, 8, 3), dtype=np.uint8)
    assert_same_pixels(upscale(model, image), published_forward(weights, image, arch.res_scale))


def test_self_ensemble_matches_reference(tmp_path, rng):
    weights = random_published_weights(rng, 2, 2, 16)
    write_pt_zip(tmp_path / "m.pt", weights)
    model = load_model(tmp_path / "m.pt")
    image = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    transforms = dihedral_transforms()
    outputs = [inv(published_forward(weights, fwd(image), 1.0)) for fwd, inv in transforms]
    reference = np.mean(outputs, axis=0)
    assert_same_pixels(upscale(model, image, self_ensemble=True), reference)
    single = published_forward(weights, image, 1.0)
    assert np.abs(reference - single).max() > 0.5  # the ensemble really is different from one pass


def test_load_model_into_an_existing_network(tmp_path, rng):
    """Reusing one network (and its compiled graph) for several checkpoints gives each checkpoint's output."""
    paths, weights = [], []
    for i in range(2):
        weights.append(random_published_weights(rng, 2, 2, 16))
        paths.append(tmp_path / f"m{i}.pt")
        write_pt_zip(paths[-1], weights[-1])
    image = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    model = load_model(paths[0])
    assert_same_pixels(upscale(model, image), published_forward(weights[0], image, 1.0))
    assert load_model(paths[1], into=model) is model
    assert_same_pixels(upscale(model, image), published_forward(weights[1], image, 1.0))
    write_pt_zip(tmp_path / "x3.pt", random_published_weights(rng, 3, 2, 16))
    with pytest.raises(KitError, match="x3.pt: architecture .* differs"):
        load_model(tmp_path / "x3.pt", into=model)


def _random_modelzoo(rng, scale, blocks, feats):
    def conv(o, i):
        b = 1.0 / np.sqrt(i * 9)
        return rng.uniform(-b, b, (o, i, 3, 3)).astype(np.float32), rng.uniform(-b, b, o).astype(np.float32)

    z = {}
    z["head.0.weight"], z["head.0.bias"] = conv(feats, 3)
    z["head.0.weight"] *= 100  # inputs are on the 0-1 scale there
    for i in range(blocks):
        z[f"body.{i}.conv1.weight"], z[f"body.{i}.conv1.bias"] = conv(feats, feats)
        z[f"body.{i}.conv2.weight"], z[f"body.{i}.conv2.bias"] = conv(feats, feats)
    z[f"body.{blocks}.weight"], z[f"body.{blocks}.bias"] = conv(feats, feats)
    factors = [3] if scale == 3 else [2] * (scale // 2)
    for k, r in enumerate(factors):
        z[f"tail.0.up.{2 * k}.weight"], z[f"tail.0.up.{2 * k}.bias"] = conv(r * r * feats, feats)
    z["tail.1.weight"], z["tail.1.bias"] = conv(3, feats)
    z["tail.1.weight"] /= 50
    return z


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_modelzoo_checkpoint_converts_exactly(tmp_path, rng, scale):
    zoo = _random_modelzoo(rng, scale, 3, 16)
    extras = {
        "norm.weight": np.ones((1, 3, 1, 1), np.float32),
        "de_norm.weight": np.ones((1, 3, 1, 1), np.float32),
        "moment1.head.0.weight": np.zeros_like(zoo["head.0.weight"]),
        "global_step": np.array([5], np.int32),
    }
    ms.save_checkpoint(
        [{"name": k, "data": ms.Tensor(v)} for k, v in {**zoo, **extras}.items()], str(tmp_path / "zoo.ckpt")
    )
    result = run_cli("convert", tmp_path / "zoo.ckpt", tmp_path / "kit.ckpt", "--res-scale", "0.1")
    assert result.returncode == 0, result.stderr
    model = load_model(tmp_path / "kit.ckpt")
    assert model.arch.scale == scale and model.arch.res_scale == 0.1
    image = rng.integers(0, 256, (8, 7, 3), dtype=np.uint8)
    reference = modelzoo_forward({k: v.astype(np.float64) for k, v in zoo.items()}, image, 0.1, 3)
    assert np.abs(reference - 127).max() > 20  # weights chosen so the output is not flat
    assert_same_pixels(upscale(model, image), reference)


@pytest.mark.parametrize("legacy", [True, False])
def test_pickle_that_runs_code_is_refused(tmp_path, legacy):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pt"
    write_malicious_pt(src, marker, legacy)
    with pytest.raises(KitError, match="posix.system|os.system|nt.system"):
        load_torch_state_dict(src)
    result = run_cli("convert", src, tmp_path / "out.ckpt")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "refused" in result.stderr and str(src) in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "out.ckpt").exists()


@pytest.mark.slow
def test_bad_checkpoint_files_give_one_line_errors(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02garbage")
    for src in ("missing.pt", "junk.ckpt", "junk.pt"):
        result = run_cli("convert", tmp_path / src, tmp_path / "out.ckpt")
        assert result.returncode != 0
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert src in result.stderr
    assert not (tmp_path / "out.ckpt").exists()


def test_torch_cross_check_when_installed(tmp_path, rng):
    """If PyTorch is installed, files written by torch.save itself load identically (both formats)."""
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(v) for k, v in random_published_weights(rng, 2, 1, 8).items()}
    for zip_format in (True, False):
        path = tmp_path / f"t{zip_format}.pt"
        torch.save(state, path, _use_new_zipfile_serialization=zip_format)
        loaded = load_torch_state_dict(path)
        for k, v in state.items():
            np.testing.assert_array_equal(loaded[k], v.numpy())
