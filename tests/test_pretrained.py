"""Published weights by name against a local HTTP server (no real network): mirrors in order, resume, hash
prefix verification with nothing kept on a mismatch, `--ckpt NAME` end to end, the user's own names, mirrors."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from edsr_lib import cli
from edsr_lib.errors import KitError
from edsr_lib.model import Architecture
from edsr_lib.pretrained import OFFICIAL_BASE, Published, Registry, mirrors_from
from conftest import run_cli
from reference import assert_same_pixels, published_forward, random_published_weights, write_pt_zip


@pytest.fixture
def published(tmp_path, rng):
    """A random-weight .pt whose name carries its real SHA-256 prefix, as a published file's does."""
    weights = random_published_weights(rng, 2, 1, 8)
    write_pt_zip(tmp_path / "tiny.pt", weights)
    body = (tmp_path / "tiny.pt").read_bytes()
    entry = Published(
        "tiny_x2", f"tiny_x2-{hashlib.sha256(body).hexdigest()[:8]}.pt", Architecture(n_resblocks=1, n_feats=8)
    )
    return entry, body, weights


def _registry(tmp_path, entry, base):
    return Registry([entry], cache_dir=tmp_path / "cache", official=f"{base}/official/")


def test_mirrors_are_tried_in_order_and_each_failure_reported(tmp_path, server, published):
    base, handler = server
    entry, body, _ = published
    handler.files[f"/second/{entry.file}"] = body
    assert mirrors_from(["a/", "b"], {"EDSR_WEIGHTS_MIRROR": "c, d"}) == ["a/", "b/", "c/", "d/", OFFICIAL_BASE]
    registry, lines = _registry(tmp_path, entry, base), []
    path = registry.fetch("tiny_x2", [f"{base}/first", f"{base}/second"], progress=False, log=lines.append)
    assert path == tmp_path / "cache" / "tiny_x2.ckpt" and path.is_file()
    assert len(lines) == 2 and "/first/" in lines[0] and "HTTP 404" in lines[0] and "tiny_x2.ckpt" in lines[1]
    assert registry.status(entry) == "converted"
    assert hashlib.sha256((tmp_path / "cache" / entry.file).read_bytes()).digest() == hashlib.sha256(body).digest()


def test_a_dropped_download_resumes(tmp_path, server, published):
    base, handler = server
    entry, body, _ = published
    handler.files[f"/m/{entry.file}"] = body
    handler.drop_after = len(body) // 10  # every connection breaks after a tenth: 4 attempts are not enough
    registry = _registry(tmp_path, entry, base)
    with pytest.raises(KitError, match="no mirror served it"):
        registry.fetch("tiny_x2", [f"{base}/m"], progress=False, log=lambda m: None)
    part = tmp_path / "cache" / f"{entry.file}.part"
    assert 0 < part.stat().st_size < len(body)
    handler.drop_after = None
    assert registry.fetch("tiny_x2", [f"{base}/m"], progress=False, log=lambda m: None).is_file()
    assert (tmp_path / "cache" / entry.file).read_bytes() == body


def test_a_file_whose_hash_does_not_match_is_refused_and_nothing_kept(tmp_path, server, published):
    base, handler = server
    entry, body, _ = published
    handler.files[f"/bad/{entry.file}"] = body[:-1] + bytes([body[-1] ^ 1])
    registry = _registry(tmp_path, entry, base)
    lines = []
    with pytest.raises(KitError, match="no mirror served it"):
        registry.fetch("tiny_x2", [f"{base}/bad"], progress=False, log=lines.append)
    assert any(f"does not start with {entry.hash_prefix}" in line for line in lines)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == []


def test_offline_says_which_file_to_place_where(tmp_path, published):
    entry, body, _ = published
    registry = _registry(tmp_path, entry, "http://127.0.0.1:9")
    with pytest.raises(KitError) as error:
        registry.fetch("tiny_x2", offline=True)
    target = tmp_path / "cache" / entry.file
    assert f"place it at {target}" in str(error.value) and entry.file in str(error.value)
    target.parent.mkdir(parents=True)
    target.write_bytes(body)  # placed by hand: used offline, verified, converted
    assert registry.fetch("tiny_x2", offline=True, log=lambda m: None).is_file()


def test_ckpt_name_end_to_end_in_the_cli(tmp_path, server, published, rng, capsys):
    base, handler = server
    entry, body, weights = published
    handler.files[f"/lab/{entry.file}"] = body
    image = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    registry = _registry(tmp_path, entry, base)
    argv = [
        "upscale",
        "--ckpt",
        "tiny_x2",
        "--mirror",
        f"{base}/lab",
        str(tmp_path / "in.png"),
        str(tmp_path / "out.png"),
    ]
    assert cli.main(argv, registry=registry) == 0, capsys.readouterr().err
    assert_same_pixels(np.asarray(Image.open(tmp_path / "out.png")), published_forward(weights, image, 1.0))
    handler.files.clear()  # cached now: no server needed
    assert cli.main([*argv[:3], str(tmp_path / "in.png"), str(tmp_path / "again.png")], registry=registry) == 0


def test_own_names_and_listing(tmp_path, monkeypatch, published):
    from edsr_lib.loading import load_model
    from edsr_lib.weights import convert, read_checkpoint

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    convert(tmp_path / "tiny.pt", tmp_path / "mine.ckpt")
    result = run_cli("weights", "add", "my_x2", tmp_path / "mine.ckpt")
    assert result.returncode == 0, result.stderr
    assert load_model("my_x2").arch.scale == 2  # a name wherever a checkpoint path goes
    with pytest.raises(KitError, match="my_x2: no such checkpoint file"):
        read_checkpoint("my_x2")  # the file-format reader takes files: names are resolved at the edges
    listing = run_cli("weights", "list")
    assert listing.returncode == 0
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:-1]}
    assert len(rows) == 11 and "my_x2" in rows and "EDSR x2, 1 blocks, 8 features" in rows["my_x2"]
    assert "alexnet-owt-7be5be79.pth" in rows["lpips_alex"] and "LPIPS trunk" in rows["lpips_vgg"]
    assert "edsr_baseline_x2-1bc95232.pt" in rows["edsr_baseline_x2"] and rows["mdsr"].rstrip().endswith("-")
    assert "MDSR x2+3+4, 80 blocks, 64 features (7.95 M parameters)" in rows["mdsr"]
    unknown = run_cli("upscale", "--ckpt", "no_such_name", tmp_path / "in.png", tmp_path / "o.png")
    assert unknown.returncode == 2 and "no such checkpoint file or weights name" in unknown.stderr
    assert run_cli("weights", "remove", "my_x2").returncode == 0
    with pytest.raises(KitError, match="no such checkpoint file or weights name"):
        load_model("my_x2")


def test_a_written_mirror_serves_another_machine(tmp_path, server, published):
    base, handler = server
    entry, body, _ = published
    handler.files[f"/official/{entry.file}"] = body
    first = _registry(tmp_path, entry, base)
    folder = first.write_mirror(tmp_path / "mirror", progress=False, log=lambda m: None)
    sums = (folder / "SHA256SUMS").read_text()
    assert sums == f"{hashlib.sha256(body).hexdigest()}  {entry.file}\n"  # the format `sha256sum -c` reads
    handler.files = {f"/lab/{p.name}": p.read_bytes() for p in folder.iterdir()}
    other = Registry([entry], cache_dir=tmp_path / "other", official=f"{base}/gone/")
    assert other.fetch("tiny_x2", [f"{base}/lab"], progress=False, log=lambda m: None).is_file()


def test_the_file_format_layer_does_not_reach_the_registry():
    """weights.py reads and writes files; the registry (which downloads) calls it, never the reverse."""
    import ast

    import edsr_lib.weights

    with open(edsr_lib.weights.__file__) as source:
        tree = ast.parse(source.read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"pretrained", "download", "loading"}, imported
