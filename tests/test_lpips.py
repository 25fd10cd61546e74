"""LPIPS v0.1 against an independent numpy forward written from the `lpips` package's and torchvision's definitions
(tests/reference.py), on random weights written in exactly their files' layouts and both torch formats; against
`lpips.LPIPS` itself when torch and lpips are installed; its properties; exact tiling; the weights by name; and
`edsr eval --metrics ...,lpips`."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from edsr_lib import cli
from edsr_lib.errors import KitError
from edsr_lib.evaluation import bicubic_upscale
from edsr_lib.lpips import HEADS_DIR, LPIPS, TILE_ALIGN, TILE_HALO, TRUNKS, tiles
from edsr_lib.pretrained import Published, Registry
from reference import (
    LPIPS_ALEX,
    LPIPS_ALEX_STAGES,
    LPIPS_VGG,
    LPIPS_VGG_STAGES,
    lpips_forward,
    matlab_imresize_down,
    random_lpips_weights,
    write_pt_legacy,
    write_pt_zip,
)

NETS = {"alex": (LPIPS_ALEX, LPIPS_ALEX_STAGES), "vgg": (LPIPS_VGG, LPIPS_VGG_STAGES)}


def _weights(tmp_path, rng, net, trunk_format="legacy", head_format="zip"):
    """Random trunk and heads as files (torchvision's and lpips' key names), and the arrays written."""
    trunk, head = random_lpips_weights(rng, *NETS[net])
    writers = {"legacy": write_pt_legacy, "zip": write_pt_zip}
    trunk_path, head_path = tmp_path / f"{net}_trunk.pth", tmp_path / f"{net}_head.pth"
    writers[trunk_format](trunk_path, trunk)
    writers[head_format](head_path, head)
    return trunk_path, head_path, trunk, head


def _pair(rng, height, width, noise=25):
    a = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
    b = np.clip(a + rng.normal(0, noise, a.shape), 0, 255).astype(np.uint8)
    return a, b


@pytest.mark.parametrize(
    "net, trunk_format, head_format, size",
    [("alex", "legacy", "zip", (67, 90)), ("alex", "zip", "legacy", (64, 64)), ("vgg", "legacy", "zip", (45, 38))],
)
def test_equals_an_independent_forward_on_both_torch_formats(tmp_path, rng, net, trunk_format, head_format, size):
    trunk_path, head_path, trunk, head = _weights(tmp_path, rng, net, trunk_format, head_format)
    metric = LPIPS(net, trunk_path, head_path)
    for noise in (5, 40):
        a, b = _pair(rng, *size, noise)
        expected = lpips_forward(trunk, head, *NETS[net], a, b)
        assert metric(a, b) == pytest.approx(expected, abs=1e-5, rel=1e-5)


def test_identity_symmetry_and_order(tmp_path, rng):
    trunk_path, head_path, _, _ = _weights(tmp_path, rng, "alex")
    metric = LPIPS("alex", trunk_path, head_path)
    a, b = _pair(rng, 70, 80, 10)
    _, c = _pair(rng, 70, 80, 60)
    c = np.clip(a.astype(int) + (c.astype(int) - a) * 3, 0, 255).astype(np.uint8)
    assert metric(a, a) == 0.0
    assert metric(a, b) == pytest.approx(metric(b, a), rel=1e-6)
    assert 0 < metric(a, b) < metric(a, c)  # more noise, further apart


@pytest.mark.parametrize("net, size, tile", [("alex", (300, 260), 64), ("vgg", (320, 64), 160)])
def test_tiling_is_exact(tmp_path, rng, net, size, tile):
    """Tiles whose crops reach TILE_HALO beyond their core give the whole image's value; a halo shorter than the
    trunk's field does not (so this test can tell)."""
    trunk_path, head_path, _, _ = _weights(tmp_path, rng, net)
    a, b = _pair(rng, *size)
    whole = LPIPS(net, trunk_path, head_path, tile=1024)(a, b)
    tiled = LPIPS(net, trunk_path, head_path, tile=tile)
    assert len(tiles(*size, tile)) > 1
    assert tiled(a, b) == pytest.approx(whole, rel=1e-6)
    tiled.halo = TILE_ALIGN
    assert abs(tiled(a, b) - whole) > 1e-5 * whole


def test_tiles_partition_the_image_with_bounded_crops():
    height, width, core = 1356, 2040, 512
    covered = np.zeros((height, width), np.int32)
    for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in tiles(height, width, core):
        covered[y0:y1, x0:x1] += 1
        assert cy0 % TILE_ALIGN == 0 and cx0 % TILE_ALIGN == 0
        assert cy0 <= y0 and cx0 <= x0 and cy1 >= y1 and cx1 >= x1
        assert cy1 - cy0 <= core + 2 * TILE_HALO and cx1 - cx0 <= core + 2 * TILE_HALO
    assert (covered == 1).all()


def test_a_div2k_size_pair_runs_in_bounded_memory(tmp_path, rng):
    """AlexNet LPIPS of a 2040x1356 pair in a fresh process: peak memory under 2 GB (MindSpore itself ~0.6 GB)."""
    trunk_path, head_path, _, _ = _weights(tmp_path, rng, "alex")
    script = f"""
import resource, numpy as np
from edsr_lib import setup_device
from edsr_lib.lpips import LPIPS
setup_device("CPU")
rng = np.random.default_rng(0)
a = rng.integers(0, 256, (1356, 2040, 3)).astype(np.uint8)
b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
value = LPIPS("alex", {str(trunk_path)!r}, {str(head_path)!r})(a, b)
print(value, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    value, peak_mb = done.stdout.split()
    assert 0 < float(value) < 1 and int(peak_mb) < 2048


def test_the_shipped_heads_are_the_lpips_packages(tmp_path, rng):
    """The bundled v0.1 heads: the lpips 0.1.4 files (SHA-256 pinned), non-negative as the package trains them,
    with the channel counts of each trunk's stages, next to their BSD-2 licence."""
    assert "Redistribution and use in source and binary forms" in (HEADS_DIR / "LICENSE").read_text()
    from edsr_lib.torch_pickle import load_torch_state_dict

    for net, trunk in TRUNKS.items():
        file, digest = trunk.heads
        assert hashlib.sha256((HEADS_DIR / file).read_bytes()).hexdigest() == digest
        heads = load_torch_state_dict(HEADS_DIR / file)
        shapes = [heads[f"lin{i}.model.1.weight"].shape for i in range(5)]
        assert shapes == [(1, c, 1, 1) for c in trunk.stage_channels()]
        assert all((h >= 0).all() for h in heads.values())
    trunk_path, _, _, _ = _weights(tmp_path, rng, "alex")
    a, b = _pair(rng, 64, 64)
    assert LPIPS("alex", trunk_path)(a, b) > 0  # the shipped heads by default


def test_wrong_files_are_one_line(tmp_path, rng):
    trunk_path, head_path, _, _ = _weights(tmp_path, rng, "alex")
    with pytest.raises(KitError, match="features.0.weight"):
        LPIPS("vgg", trunk_path, head_path)  # an AlexNet file given as VGG
    with pytest.raises(KitError, match="trunk 'squeeze'"):
        LPIPS("squeeze", trunk_path)
    metric = LPIPS("alex", trunk_path, head_path)
    with pytest.raises(KitError, match="too small"):
        metric(*_pair(rng, 20, 20))
    with pytest.raises(KitError, match="one size"):
        metric(np.zeros((64, 64, 3)), np.zeros((64, 65, 3)))


def test_against_the_lpips_package(tmp_path, rng):
    """The reference implementation itself, loaded with the same random weights (torch and lpips installed)."""
    torch = pytest.importorskip("torch")
    lpips_package = pytest.importorskip("lpips")
    for net in ("alex", "vgg"):
        trunk_path, head_path, trunk, head = _weights(tmp_path, rng, net)
        reference = lpips_package.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False).eval()
        features = {k.replace("features.", ""): torch.tensor(v, dtype=torch.float32) for k, v in trunk.items()}
        for slice_ in [getattr(reference.net, f"slice{i}") for i in range(1, 6)]:
            for name, layer in slice_.named_children():
                if hasattr(layer, "weight"):
                    layer.weight.data, layer.bias.data = features[f"{name}.weight"], features[f"{name}.bias"]
        for i in range(5):
            reference.lins[i].model[1].weight.data = torch.tensor(head[f"lin{i}.model.1.weight"], dtype=torch.float32)
        a, b = _pair(rng, 64, 72)
        to_tensor = lambda x: torch.tensor(x.transpose(2, 0, 1)[None] / 127.5 - 1, dtype=torch.float32)  # noqa: E731
        expected = float(reference(to_tensor(a), to_tensor(b)))
        assert LPIPS(net, trunk_path, head_path)(a, b) == pytest.approx(expected, abs=1e-5)


# ---- the trunks by name ----------------------------------------------------------------------------------------


def _trunk_entry(tmp_path, rng, server_base=None):
    """The AlexNet trunk entry with a random file whose name carries its real hash prefix (as torchvision's)."""
    trunk_path, _, trunk, head = _weights(tmp_path, rng, "alex")
    body = trunk_path.read_bytes()
    name = f"alexnet-owt-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    entry = Published("lpips_alex", name, None, server_base, len(body), "LPIPS trunk: AlexNet (test)")
    return entry, body, trunk, head


def test_the_trunk_is_fetched_by_name_checked_and_listed(tmp_path, rng, server, monkeypatch):
    base, handler = server
    entry, body, _, _ = _trunk_entry(tmp_path, rng, f"{base}/torchvision/")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    registry = Registry([entry], cache_dir=tmp_path / "cache", official=f"{base}/edsr/")
    with pytest.raises(KitError, match=f"place it at {tmp_path / 'cache' / entry.file}"):
        LPIPS.load("alex", registry, offline=True)
    handler.files[f"/torchvision/{entry.file}"] = body[:-1] + bytes([body[-1] ^ 1])  # a corrupted download
    with pytest.raises(KitError, match="no mirror served it"):
        LPIPS.load("alex", registry, progress=False, log=lambda m: None)
    handler.files[f"/torchvision/{entry.file}"] = body
    assert registry.status(entry) == "-"
    LPIPS.load("alex", registry, progress=False, log=lambda m: None)
    assert (tmp_path / "cache" / entry.file).read_bytes() == body and registry.status(entry) == "downloaded"
    assert registry.models() == [] and [r[0] for r in registry.rows()] == ["lpips_alex"]
    with pytest.raises(KitError, match="not an SR model"):
        registry.resolve("lpips_alex")


def test_a_trunk_in_torchvisions_cache_is_used_in_place_and_never_deleted(tmp_path, rng, monkeypatch):
    entry, body, _, _ = _trunk_entry(tmp_path, rng)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    registry = Registry([entry], cache_dir=tmp_path / "cache")
    (hub / entry.file).write_bytes(body[:-1] + bytes([body[-1] ^ 1]))
    lines = []
    with pytest.raises(KitError, match="offline"):
        registry.fetch("lpips_alex", offline=True, log=lines.append)
    assert "does not have the published hash" in lines[0] and (hub / entry.file).is_file()
    (hub / entry.file).write_bytes(body)
    assert registry.fetch("lpips_alex", offline=True) == hub / entry.file
    assert not (tmp_path / "cache" / entry.file).exists()


def test_the_real_entries_name_torchvisions_files():
    registry = Registry()
    entries = {name: registry.entry(name) for name in ("lpips_alex", "lpips_vgg")}
    assert entries["lpips_alex"].file == "alexnet-owt-7be5be79.pth" and entries["lpips_alex"].hash_prefix == "7be5be79"
    assert entries["lpips_vgg"].file == "vgg16-397923af.pth"
    assert all(e.official == "https://download.pytorch.org/models/" for e in entries.values())
    assert "lpips_alex" not in registry.models() and "edsr_x2" in registry.models()


# ---- edsr eval --metrics ----------------------------------------------------------------------------------------


def test_eval_reports_lpips_next_to_psnr_and_niqe(tmp_path, rng, server, monkeypatch, capsys):
    base, handler = server
    entry, body, trunk, head = _trunk_entry(tmp_path, rng, f"{base}/tv/")
    handler.files[f"/tv/{entry.file}"] = body
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    registry = Registry([entry], cache_dir=tmp_path / "cache")
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (200, 208, 3)).astype(np.uint8)).save(hr_dir / f"im{i}.png")
    argv = ["eval", "--bicubic", "--scale", "2", "--hr-dir", str(hr_dir), "--metrics", "psnr,lpips,niqe"]
    offline = [*argv, "--offline", "--json", str(tmp_path / "r.json")]
    assert cli.main(offline, registry=registry) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and entry.file in error[0] and "place it at" in error[0]
    assert not (tmp_path / "r.json").exists()

    assert cli.main([*argv, "--json", str(tmp_path / "r.json")], registry=registry) == 0
    out = capsys.readouterr().out
    assert "LPIPS (lower)" in out and "NIQE (lower)" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["lower_is_better"] == ["lpips", "niqe"]
    # independently: the bicubic output (MATLAB's imresize written in the tests for LR) against HR, RGB, border 2,
    # with the random trunk served and the lpips heads the kit ships
    from edsr_lib.torch_pickle import load_torch_state_dict

    head = load_torch_state_dict(HEADS_DIR / TRUNKS["alex"].heads[0])
    for row, i in zip(result["per_image"], range(2), strict=True):
        hr = np.asarray(Image.open(hr_dir / f"im{i}.png"))
        sr = bicubic_upscale(np.round(np.clip(matlab_imresize_down(hr, 2), 0, 255)).astype(np.uint8), 2)
        expected = lpips_forward(trunk, head, LPIPS_ALEX, LPIPS_ALEX_STAGES, sr[2:-2, 2:-2], hr[2:-2, 2:-2])
        assert row["lpips"] == pytest.approx(expected, abs=1e-5)
    assert result["lpips"] == pytest.approx(np.mean([r["lpips"] for r in result["per_image"]]))
