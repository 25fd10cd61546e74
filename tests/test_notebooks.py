"""The notebooks: committed clean and thin, and executed with papermill end to end on tiny parameters."""
import json
import os
import subprocess
import sys

import nbformat
import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TINY_TRAIN = {"n_resblocks": 2, "n_feats": 8, "patch_size": 24, "test_every": 3, "epochs": 2, "batch_size": 2,
              "lr": 1e-3}
MAX_CELL_LINES = 25


def _p(params):
    return [x for k, v in params.items() for x in ("-p", k, str(v))]


def _launch(*args, env=None):
    return subprocess.run([sys.executable, "-m", "edsr_lib.launch", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, **(env or {})})


def _errors(path):
    nb = nbformat.read(path, as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]


def test_there_are_the_four_notebooks():
    names = [p.name for p in NOTEBOOKS]
    for expected in ("01_data_exploration.ipynb", "02_train.ipynb", "03_evaluate.ipynb", "04_visual_comparison.ipynb",
                     "05_export_inference.ipynb"):
        assert expected in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean_and_thin(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and "papermill" in nb.cells[0].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs: python scripts/strip_notebooks.py"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for line in tagged[0].source.splitlines():  # typed defaults: `name: type = value  # comment`
        if line.strip() and not line.lstrip().startswith("#"):
            assert ": " in line.split("=")[0], line
    for cell in code:
        # the parameters cell is a list of the seed's option names, one per line, so it may be longer
        assert cell is tagged[0] or len(cell.source.splitlines()) <= MAX_CELL_LINES, cell.source[:80]
        for line in cell.source.splitlines():
            assert not line.lstrip().startswith(("def ", "class ", "lambda", "async def ")), line


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    out = tmp_path_factory.mktemp("standalone")
    proc = _launch("standalone", "sample", "--output-dir", out, *_p(TINY_TRAIN))
    return out, proc


def test_standalone_run_executes_train_evaluate_compare(standalone):
    out, proc = standalone
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"psnr", "psnr_bicubic", "ssim", "ssim_bicubic"} <= set(metrics)
    assert metrics["dataset"] == "sample-test" and len(metrics["per_image"]) == 3
    assert f"EDSR {metrics['psnr']:.3f} dB, bicubic {metrics['psnr_bicubic']:.3f} dB" in proc.stdout
    for name in ("02_train.ipynb", "03_evaluate.ipynb", "04_visual_comparison.ipynb"):
        assert (out / name).is_file() and not _errors(out / name)
    for figure in ("train/curves.png", "evaluate/gains_sample-test.png", "compare/comparison.png",
                   "compare/error_maps.png", "compare/before_after.png", "ckpt/curves.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG", figure
    # every figure is also in the executed notebook (headless runs still show them)
    nb = nbformat.read(out / "04_visual_comparison.ipynb", as_version=4)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3


def test_data_exploration_notebook(tmp_path):
    out = tmp_path / "explore"
    nb_out = tmp_path / "01.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "01_data_exploration.ipynb"),
                           str(nb_out), "-p", "output_dir", str(out), "-p", "scale", "3"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _errors(nb_out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 5 and metrics["scale"] == 3 and len(metrics["rgb_mean"]) == 3
    for figure in ("pairs_x2.png", "pairs_x3.png", "pairs_x4.png", "augmentations.png", "bicubic_error.png",
                   "pixel_stats.png"):
        assert (out / figure).is_file()


def test_run_eval_script_on_a_folder(standalone, tmp_path):
    out, proc = standalone
    assert proc.returncode == 0
    from edsr_lib.data import SAMPLE_TEST, sample_folder

    folder = tmp_path / "mine"
    folder.mkdir()
    for name in SAMPLE_TEST[:2]:
        (folder / name).write_bytes((sample_folder() / name).read_bytes())
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path / "eval"), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "run_eval.sh"), str(tmp_path), str(out / "ckpt" / "best.ckpt"),
                             str(folder)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["dataset"] == "mine" and len(metrics["per_image"]) == 2
    assert (tmp_path / "eval" / "03_evaluate.ipynb").is_file()


def test_failing_notebook_names_the_cell(tmp_path):
    result = _launch("eval", tmp_path, tmp_path / "missing.ckpt", "sample", "--output-dir", tmp_path / "eval")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "03_evaluate.ipynb: cell" in result.stderr and "missing.ckpt" in result.stderr


def test_export_notebook_verifies_both_formats(standalone, tmp_path):
    pytest.importorskip("onnxruntime")
    out, proc = standalone
    assert proc.returncode == 0
    nb_out = tmp_path / "05.ipynb"
    result = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "05_export_inference.ipynb"),
                             str(nb_out), "-p", "checkpoint", str(out / "ckpt" / "best.ckpt"), "-p", "onnx_input_size",
                             "40,40", "-p", "output_dir", str(tmp_path / "export")], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "export" / "metrics.json").read_text())
    assert [c["format"] for c in metrics["checks"]] == ["MINDIR", "ONNX"]
    assert all(c["max |exported - checkpoint|"] < 1e-2 for c in metrics["checks"])
    assert all(d <= 1 for d in metrics["max_pixel_difference"].values())
    assert (tmp_path / "export" / "edsr.mindir").is_file() and (tmp_path / "export" / "edsr.onnx.json").is_file()
