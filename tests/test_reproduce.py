"""`edsr reproduce` end to end against a local mirror (no real network): random-weight files whose names carry
their real hash prefixes, tiny benchmark folders, and an injected table of "published" numbers."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from conftest import TEST_DATA
from edsr_lib import cli
from edsr_lib.errors import KitError
from edsr_lib.evaluation import published_result, reproduce
from edsr_lib.model import Architecture
from edsr_lib.pretrained import Published, Registry
from reference import random_published_weights, write_pt_zip


@pytest.fixture
def setup(tmp_path, server):
    base, handler = server
    weights = random_published_weights(np.random.default_rng(7), 2, 1, 8)
    write_pt_zip(tmp_path / "m.pt", weights)
    body = (tmp_path / "m.pt").read_bytes()
    entry = Published(
        "tiny_x2", f"tiny_x2-{hashlib.sha256(body).hexdigest()[:8]}.pt", Architecture(n_resblocks=1, n_feats=8)
    )
    handler.files[f"/mirror/{entry.file}"] = body
    data = tmp_path / "data"
    for name, images in (("Set5", ("bird", "head")), ("Set14", ("woman",))):
        folder = data / "benchmark" / name / "HR"
        folder.mkdir(parents=True)
        for image in images:
            shutil.copy(TEST_DATA / "Set5" / f"{image}.png", folder / f"{image}.png")
    registry = Registry([entry], cache_dir=tmp_path / "cache", official=f"{base}/official/")
    return registry, data, f"{base}/mirror", handler


def test_reproduce_compares_with_the_table_and_resumes(tmp_path, setup, monkeypatch):
    registry, data, mirror, handler = setup
    # what `edsr eval` says for the same weights: the "published" Set5 figure; Set14's is deliberately 1 dB off
    ckpt = registry.fetch("tiny_x2", [mirror], progress=False, log=lambda m: None)
    expected = {}
    for name in ("Set5", "Set14"):
        out = tmp_path / f"{name}.json"
        assert (
            cli.main(["eval", "--ckpt", str(ckpt), "--data_test", name, "--dir_data", str(data), "--json", str(out)])
            == 0
        )
        expected[name] = json.loads(out.read_text())["psnr"]
    table = {
        ("Set5", 2): (expected["Set5"] + 0.004, 0.9, "test table A"),
        ("Set14", 2): (expected["Set14"] + 1, None, "B"),
    }
    report = reproduce(
        ["tiny_x2"], ["Set5", "Set14"], data, tmp_path / "out", registry, [mirror],
        published=lambda model, dataset, scale: table.get((dataset, scale)), progress=False, log=lambda m: None,
    )  # fmt: skip
    rows = {r["set"]: r for r in report["rows"]}
    assert rows["Set5"]["psnr"] == pytest.approx(expected["Set5"], abs=1e-9) and rows["Set5"]["verdict"] == "pass"
    assert rows["Set14"]["verdict"] == "fail" and rows["Set14"]["difference"] == pytest.approx(-1, abs=1e-9)
    markdown = (tmp_path / "out" / "reproduce.md").read_text()
    assert "| tiny_x2 | Set5 | x2 |" in markdown and "| fail | B |" in markdown and "test table A" in markdown
    # resumable: computed cells are reused, nothing is evaluated or downloaded again
    import edsr_lib.evaluation as evaluation

    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: pytest.fail("evaluated again"))
    again = reproduce(
        ["tiny_x2"], ["Set5", "Set14"], data, tmp_path / "out", registry, [mirror],
        published=lambda model, dataset, scale: table.get((dataset, scale)), progress=False, log=lambda m: None,
    )  # fmt: skip
    assert again["rows"] == report["rows"]


def test_reproduce_from_the_command_line(tmp_path, setup, capsys):
    registry, data, mirror, _ = setup
    argv = ["reproduce", "--models", "tiny_x2", "--sets", "Set5", "--dir_data", str(data), "--out", str(tmp_path / "o")]
    assert cli.main([*argv, "--mirror", mirror], registry=registry) == 0  # no published figure: nothing fails
    printed = capsys.readouterr().out
    assert "no published figure" in printed and (tmp_path / "o" / "reproduce.json").is_file()
    assert cli.main(["reproduce", "--models", "nope", "--out", str(tmp_path / "p")], registry=registry) == 2
    assert "nope: no such weights" in capsys.readouterr().err and not (tmp_path / "p").exists()
    with pytest.raises(KitError, match="benchmark Urban100 not found"):
        reproduce(["tiny_x2"], ["Urban100"], data, tmp_path / "q", registry, [mirror], offline=True, progress=False)


def test_the_published_table_names_its_sources():
    assert published_result("edsr_x2", "Set5", 2) == (38.11, 0.9601, "Lim et al. 2017, Table 3")
    assert published_result("edsr_x4", "Urban100", 4)[0] == 26.64
    assert published_result("edsr_baseline_x3", "DIV2K", 3) == (30.92, None, "EDSR-PyTorch README (DIV2K 801-900, RGB)")
    assert published_result("edsr_baseline_x2", "Set5", 2) is None  # no benchmark figure published for it
    assert published_result("mdsr", "Set5", 2) is None
