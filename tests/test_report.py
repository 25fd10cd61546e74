"""`edsr compare`: the report's scores are `edsr eval`'s, its files deterministic and replaced atomically, the paper
figure's crops are the outputs' pixels; in Chromium (when installed) the report works from file:// with no console
error: sorting, the image page's synchronised zoom and the wipe."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edsr_lib import cli
from edsr_lib.figures import crop_box, paper_figure
from edsr_lib.model import Architecture, build_model, state_dict
from edsr_lib.weights import save_checkpoint
from conftest import TEST_DATA

CHROMIUM = Path("/usr/lib/chromium/chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report of bicubic and a random x2 model on Set5, and `edsr eval --json` of both."""
    work = tmp_path_factory.mktemp("report")
    arch = Architecture(scale=2, n_resblocks=1, n_feats=8)
    save_checkpoint(work / "tiny.ckpt", arch, state_dict(build_model(arch)))
    argv = ["compare", "--hr-dir", str(TEST_DATA / "Set5"), "--scale", "2", "--method", "bicubic"]
    argv += ["--method", str(work / "tiny.ckpt"), "--out", str(work / "rep"), "--figure", "baby", "--crop", "90,100,48"]
    assert cli.main(argv) == 0
    evals = {}
    for name, method in (("bicubic", ["--bicubic", "--scale", "2"]), ("tiny", ["--ckpt", str(work / "tiny.ckpt")])):
        out = work / f"{name}.json"
        assert cli.main(["eval", *method, "--hr-dir", str(TEST_DATA / "Set5"), "--json", str(out)]) == 0
        evals[name] = json.loads(out.read_text())
    return work, argv, evals


def _digests(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_scores_are_edsr_evals_and_the_best_is_marked(report):
    work, _, evals = report
    summary = json.loads((work / "rep" / "report.json").read_text())
    assert summary["methods"] == ["bicubic", "tiny"] and summary["protocol"] == evals["bicubic"]["protocol"]
    for label in ("bicubic", "tiny"):
        expected = {r["name"]: (r["psnr"], r["ssim"]) for r in evals[label]["per_image"]}
        got = {r["name"]: (r["scores"][label]["psnr"], r["scores"][label]["ssim"]) for r in summary["images"]}
        assert got == expected
        assert summary["means"][label]["psnr"] == pytest.approx(evals[label]["psnr"], abs=1e-12)
    index = (work / "rep" / "index.html").read_text()
    assert index.count('class="best"') == 2 * len(summary["images"])  # one per image and metric (2 methods)
    assert "http" not in index.replace("http-equiv", "")  # nothing fetched from the network


def test_the_same_inputs_give_the_same_files_and_foreign_folders_are_refused(report, tmp_path, capsys):
    work, argv, _ = report
    before = _digests(work / "rep")
    # a killed run's half-built report (its process gone) is removed; a running one's (a live pid) is left alone
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = work / f".rep.partial-{host}-{int(dead.stdout)}"
    running = work / f".rep.partial-{host}-{os.getppid()}"
    for folder in (killed, running):
        (folder / "images").mkdir(parents=True)
    assert cli.main(argv) == 0
    assert _digests(work / "rep") == before and not killed.exists() and running.is_dir()
    shutil.rmtree(running)
    assert not list(work.glob(".rep.partial-*"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    bad = [*argv[: argv.index("--out")], "--out", str(tmp_path / "mine")]
    assert cli.main(bad) == 2
    assert "holds files the kit did not write" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"


def test_the_paper_figure_shows_the_outputs_pixels(report):
    work, _, _ = report
    assert (work / "rep" / "figure_baby.pdf").read_bytes()[:5] == b"%PDF-"
    summary = json.loads((work / "rep" / "report.json").read_text())
    row = next(r for r in summary["images"] if r["name"] == "baby")
    outputs = {label: np.asarray(Image.open(work / "rep" / "images" / f)) for label, f in row["files"].items()}
    box = crop_box(outputs["HR"].shape, (90 + 24, 100 + 24), 48)
    figure, crops = paper_figure(outputs["HR"], outputs, box, row["scores"])
    assert box == (90, 100, 48) and len(figure.axes) == 1 + len(outputs)
    for label, crop in crops.items():
        assert np.array_equal(crop, outputs[label][90:138, 100:148])
    labels = [ax.get_xlabel() for ax in figure.axes[1:]]
    assert (
        labels[0] == "HR"
        and labels[1].startswith("bicubic\n")
        and f"{row['scores']['bicubic']['psnr']:.2f}" in labels[1]
    )
    shown = [ax.images[0].get_array() for ax in figure.axes[1:]]
    assert all(np.array_equal(np.asarray(s), crops[label]) for s, label in zip(shown, crops, strict=True))


@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (.ci/run installs it as root)")
def test_the_report_in_chromium(report):
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    work, _, evals = report
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((work / "rep" / "index.html").as_uri())
        rows = page.locator("#scores tbody tr")
        assert rows.count() == len(evals["bicubic"]["per_image"])
        first_psnr = {r["name"]: r["psnr"] for r in evals["bicubic"]["per_image"]}
        for i in range(rows.count()):
            name = rows.nth(i).locator("td").first.inner_text()
            assert float(rows.nth(i).locator("td").nth(1).get_attribute("data-value")) == first_psnr[name]
        page.locator("#scores th").nth(1).click()  # sort by bicubic PSNR, ascending
        values = [float(v) for v in page.locator("#scores tbody tr td:nth-child(2)").evaluate_all(
            "cells => cells.map(c => c.dataset.value)")]  # fmt: skip
        assert values == sorted(values)
        page.locator("#scores tbody a", has_text="baby").click()
        page.wait_for_selector(".panel img")
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        transforms = page.locator(".panel img").evaluate_all("imgs => imgs.map(i => i.style.transform)")
        page.locator("#zoom-in").click()
        zoomed = page.locator(".panel img").evaluate_all("imgs => imgs.map(i => i.style.transform)")
        assert len(set(zoomed)) == 1 and zoomed != transforms and "scale(2)" in zoomed[0]  # every panel moved
        assert page.evaluate("window.viewState.zoom") == 2
        wipe = page.locator(".wipe")
        box = wipe.bounding_box()
        page.select_option("#wipe-before", "HR")
        page.select_option("#wipe-after", "tiny")
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        spot = {"x": box["width"] * 0.3, "y": box["height"] * 0.5}
        left = np.asarray(Image.open(__import__("io").BytesIO(wipe.screenshot())))
        page.mouse.click(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.5)  # the divider to 10%
        right = np.asarray(Image.open(__import__("io").BytesIO(wipe.screenshot())))
        y, x = int(spot["y"]), int(spot["x"])
        assert page.locator("#wipe-position").input_value() == "10"
        assert not np.array_equal(left[y - 5 : y + 5, x - 5 : x + 5], right[y - 5 : y + 5, x - 5 : x + 5])
        page.keyboard.press("ArrowRight")
        assert page.locator("#wipe-position").input_value() == "15"
        browser.close()
    assert errors == []


@pytest.mark.slow
def test_an_exported_model_compares_as_its_checkpoint(report):
    """`--method LABEL=model.onnx`: the exported file (fixed 32x32 input, tiled) scores as the checkpoint it came
    from, image by image."""
    pytest.importorskip("onnxruntime")
    work, argv, _ = report
    onnx = work / "tiny.onnx"
    assert cli.main(["export", "--ckpt", str(work / "tiny.ckpt"), "--format", "ONNX", "--output", str(onnx),
                     "--input-size", "32", "32"]) == 0  # fmt: skip
    out = work / "with_onnx"
    base = argv[: argv.index("--out")]
    assert cli.main([*base, "--method", f"exported={onnx}", "--out", str(out)]) == 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["methods"] == ["bicubic", "tiny", "exported"]
    for row in summary["images"]:
        assert row["scores"]["exported"]["psnr"] == pytest.approx(row["scores"]["tiny"]["psnr"], abs=0.01)


def test_method_labels():
    from edsr_lib.cli.compare import _method_label

    assert _method_label("EDSR=runs/x2/best.ckpt") == ("EDSR", "runs/x2/best.ckpt")
    assert _method_label("runs/lr=1e-4/best.ckpt") == ("best", "runs/lr=1e-4/best.ckpt")
    assert _method_label("edsr_x2") == ("edsr_x2", "edsr_x2") and _method_label("bicubic") == ("bicubic", "bicubic")
    assert _method_label("m.onnx") == ("m", "m.onnx")


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (.ci/run installs it as root)")
def test_notebook_04_as_a_voila_app(tmp_path):
    """`voila notebooks/04_visual_comparison.ipynb` on 127.0.0.1: no code shown, the explorer's controls come before
    the static figures, and dragging its crop slider redraws both its pictures."""
    pytest.importorskip("voila", reason="voila is in the lab and test extras")
    pytest.importorskip("playwright")
    import shutil
    import socket
    import subprocess
    import sys
    import time

    from playwright.sync_api import sync_playwright

    from conftest import ROOT, drag_crop_slider

    shutil.copy(ROOT / "notebooks" / "04_visual_comparison.ipynb", tmp_path / "04.ipynb")
    arch = Architecture(scale=2, n_resblocks=1, n_feats=8)  # where notebook 04 looks for notebook 02's model
    save_checkpoint(tmp_path / "outputs" / "02_train" / "ckpt" / "best.ckpt", arch, state_dict(build_model(arch)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "voila.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "voila", "04.ipynb", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1"],
        cwd=tmp_path,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:  # a connection, not a page: each page request runs the notebook in a new kernel
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError((tmp_path / "voila.log").read_text()[-3000:]) from None
                time.sleep(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", timeout=300_000)
            page.wait_for_selector(".widget-image", timeout=300_000)
            assert page.locator("text=Error displaying widget").count() == 0
            assert "from edsr_lib" not in page.inner_text("body")  # no code shown
            page.wait_for_selector("img:not(.widget-image)", timeout=300_000)  # the static figures, once run
            controls_first = page.evaluate(
                "() => { const slider = document.querySelector('.widget-slider');"
                " const figure = document.querySelector('img:not(.widget-image)');"
                " return !!(slider.compareDocumentPosition(figure) & Node.DOCUMENT_POSITION_FOLLOWING); }"
            )
            assert controls_first, "the explorer's controls come before the static figures"

            def pictures():
                return page.locator(".widget-image").evaluate_all("imgs => imgs.map(i => i.src)")

            before = pictures()
            assert len(before) == 2, "the explorer shows its comparison and its wipe"
            after = drag_crop_slider(page, pictures, before)
            assert after[0] != before[0] and after[1] != before[1], "the crop slider redraws both pictures"
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_no_output_inside_an_input_and_no_two_methods_with_one_label(report, tmp_path, capsys):
    work, _, _ = report
    hr = tmp_path / "hr"
    import shutil

    shutil.copytree(TEST_DATA / "Set5", hr)
    base = ["compare", "--hr-dir", str(hr), "--scale", "2", "--method", "bicubic"]
    assert cli.main([*base, "--out", str(tmp_path / "f"), "--figure", "baby", "--crop", "0,0,0"]) == 2
    assert "--crop 0,0,0: give Y,X,SIZE" in capsys.readouterr().err and not (tmp_path / "f").exists()
    assert cli.main([*base, "--out", str(hr / "report")]) == 2
    assert "the images compared" in capsys.readouterr().err and not (hr / "report").exists()
    (tmp_path / "b").mkdir()
    shutil.copy(work / "tiny.ckpt", tmp_path / "b" / "tiny.ckpt")
    two = [*base, "--method", str(work / "tiny.ckpt"), "--method", str(tmp_path / "b" / "tiny.ckpt")]
    assert cli.main([*two, "--out", str(tmp_path / "out")]) == 2
    assert "both labelled tiny; name one with LABEL=" in capsys.readouterr().err
    assert cli.main([*base, "--method", str(work / "tiny.ckpt"), "--method", f"second={tmp_path / 'b' / 'tiny.ckpt'}",
                     "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "out" / "report.json").read_text())["methods"] == ["bicubic", "tiny", "second"]
