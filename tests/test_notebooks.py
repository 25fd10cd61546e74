"""The notebooks: committed clean and thin, and executed with papermill end to end on tiny parameters."""

import json
import os
import subprocess
import sys

import nbformat
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # papermill runs: tens of seconds each
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TINY_TRAIN = {
    "n_resblocks": 2,
    "n_feats": 8,
    "patch_size": 24,
    "test_every": 3,
    "epochs": 2,
    "batch_size": 2,
    "lr": 1e-3,
}
MAX_CELL_LINES = 25


def _p(params):
    return [x for k, v in params.items() for x in ("-p", k, str(v))]


def _papermill(notebook, out, cwd, params=None, timeout=900):
    """A notebook run headlessly, as papermill's command line runs it, in the working folder `cwd`."""
    command = [sys.executable, "-m", "papermill", str(notebook), str(out), "--cwd", str(cwd), *_p(params or {})]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def _launch(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "edsr_lib.launch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )


def _errors(path):
    nb = nbformat.read(path, as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]


def test_there_are_the_five_notebooks_and_the_exercises():
    assert [p.name for p in NOTEBOOKS] == [
        "01_data_exploration.ipynb",
        "02_train.ipynb",
        "03_evaluate.ipynb",
        "04_visual_comparison.ipynb",
        "05_export_inference.ipynb",
    ]
    assert (ROOT / "notebooks" / "exercises" / "exercises.ipynb").is_file()
    assert (ROOT / "notebooks" / "exercises" / "solutions.py").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean_and_thin(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and "papermill" in nb.cells[0].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), (
        "strip outputs: python scripts/strip_notebooks.py"
    )
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for line in tagged[0].source.splitlines():  # typed defaults: `name: type = value  # comment`
        if line.strip() and not line.lstrip().startswith("#"):
            assert ": " in line.split("=")[0], line
    for cell in code:
        # the parameters cell is a list of the ModelZoo EDSR's option names, one per line, so it may be longer
        assert cell is tagged[0] or len(cell.source.splitlines()) <= MAX_CELL_LINES, cell.source[:80]
        for line in cell.source.splitlines():
            assert not line.lstrip().startswith(("def ", "class ", "lambda", "async def ")), line


def test_the_exercises_notebook_is_committed_clean_and_its_only_functions_are_the_stubs():
    nb = nbformat.read(ROOT / "notebooks" / "exercises" / "exercises.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and "papermill" in nb.cells[0].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs"
    assert len([c for c in code if "parameters" in c.metadata.get("tags", [])]) == 1
    stubs = []
    for cell in code:
        assert len(cell.source.splitlines()) <= MAX_CELL_LINES, cell.source[:80]
        lines = cell.source.splitlines()
        if lines and lines[0].startswith("def "):  # an exercise: the signature and a stub body, nothing else
            assert lines[1:] == ["    raise NotImplementedError"], cell.source
            stubs.append(lines[0].split("(")[0][4:])
        else:
            assert not any(line.lstrip().startswith(("def ", "class ", "lambda")) for line in lines), cell.source
    assert stubs == ["pixel_shuffle", "cubic", "psnr_y", "receptive_radius"]


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
    for figure in (
        "train/curves.png",
        "evaluate/gains_sample-test.png",
        "compare/comparison.png",
        "compare/error_maps.png",
        "compare/before_after.png",
        "ckpt/curves.png",
    ):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG", figure
    # every figure is also in the executed notebook (headless runs still show them)
    nb = nbformat.read(out / "04_visual_comparison.ipynb", as_version=4)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3


def test_data_exploration_notebook(tmp_path):
    out = tmp_path / "explore"
    nb_out = tmp_path / "01.ipynb"
    notebook = ROOT / "notebooks" / "01_data_exploration.ipynb"
    proc = _papermill(notebook, nb_out, tmp_path, {"output_dir": out, "scale": 3}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _errors(nb_out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 5 and metrics["scale"] == 3 and len(metrics["rgb_mean"]) == 3
    for figure in (
        "pairs_x2.png",
        "pairs_x3.png",
        "pairs_x4.png",
        "augmentations.png",
        "bicubic_error.png",
        "pixel_stats.png",
    ):
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
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run_eval.sh"), str(tmp_path), str(out / "ckpt" / "best.ckpt"), str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
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
    params = {"checkpoint": out / "ckpt" / "best.ckpt", "onnx_input_size": "40,40", "output_dir": tmp_path / "export"}
    result = _papermill(ROOT / "notebooks" / "05_export_inference.ipynb", nb_out, tmp_path, params, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "export" / "metrics.json").read_text())
    assert [c["format"] for c in metrics["checks"]] == ["MINDIR", "ONNX"]
    assert all(c["max abs difference to the checkpoint"] < 1e-2 for c in metrics["checks"])
    assert all(d <= 1 for d in metrics["max_pixel_difference"].values())
    assert (tmp_path / "export" / "edsr.mindir").is_file() and (tmp_path / "export" / "edsr.onnx.json").is_file()


def _text_outputs(path):
    nb = nbformat.read(path, as_version=4)
    texts = []
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        for output in cell.outputs:
            texts.append(output.get("text", ""))
            texts += [str(v) for k, v in output.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(texts)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """02 -> 03 -> 04 -> 05 in one working folder, as a class runs them: 02 tiny, the others with their defaults."""
    work = tmp_path_factory.mktemp("chain")
    runs = {"02": _papermill(ROOT / "notebooks" / "02_train.ipynb", work / "02.ipynb", work, TINY_TRAIN)}
    for name in ("03_evaluate", "04_visual_comparison", "05_export_inference"):
        runs[name[:2]] = _papermill(ROOT / "notebooks" / f"{name}.ipynb", work / f"{name[:2]}.ipynb", work)
    return work, runs


def test_notebooks_chain_with_their_defaults(chain):
    pytest.importorskip("onnxruntime")
    work, runs = chain
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.stderr[-3000:])
        assert "nan" not in _text_outputs(work / f"{name}.ipynb").lower(), name
        nb = nbformat.read(work / f"{name}.ipynb", as_version=4)
        stderr = [
            o.text
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.outputs
            if o.output_type == "stream" and o.name == "stderr"
        ]
        assert not [t for t in stderr if "deprecated" in t or "WARNING" in t], (name, stderr)  # no red noise
        echoes = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "execute_result"]
        assert not echoes, (name, echoes)  # no `Out[..]: PosixPath(...)`
    trained = work / "outputs" / "02_train" / "ckpt" / "best.ckpt"
    evaluation = json.loads((work / "outputs" / "03_evaluate" / "metrics.json").read_text())
    assert evaluation["checkpoint"] == str(trained.relative_to(work)) and evaluation["psnr"] is not None
    assert len(list((work / "outputs" / "03_evaluate" / "images").rglob("*.png"))) == 3  # SR images saved
    import zipfile

    with zipfile.ZipFile(work / "outputs" / "03_evaluate.zip") as archive:  # the results in one download
        names = archive.namelist()
    assert "03_evaluate/metrics.json" in names and sum(n.endswith("_SR.png") for n in names) == 3
    comparison = json.loads((work / "outputs" / "04_visual_comparison" / "metrics.json").read_text())
    assert set(comparison["scores"]) == {"bicubic", "EDSR"}
    assert (work / "outputs" / "04_visual_comparison" / "figure.pdf").read_bytes()[:5] == b"%PDF-"  # paper figure
    assert "trained by 02_train.ipynb" in _text_outputs(work / "05.ipynb")


def test_without_a_checkpoint_the_notebooks_say_how_to_get_one(tmp_path):
    run = _papermill(ROOT / "notebooks" / "03_evaluate.ipynb", tmp_path / "03.ipynb", tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    text = _text_outputs(tmp_path / "03.ipynb")
    assert "run it first" in text and "02_train.ipynb" in text and "nan" not in text.lower()


def test_saved_notebooks_keep_their_final_state_in_html(chain):
    work, runs = chain
    for name in ("02", "04"):
        assert runs[name].returncode == 0, runs[name].stderr[-3000:]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "jupyter",
                "nbconvert",
                "--to",
                "html",
                str(work / f"{name}.ipynb"),
                "--output-dir",
                str(work / "html"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        html = (work / "html" / f"{name}.html").read_text()
        assert "0%|" not in html and "VBox(children=" not in html and "Error displaying widget" not in html
    html_02 = (work / "html" / "02.html").read_text()
    total = TINY_TRAIN["epochs"] * TINY_TRAIN["test_every"]
    assert f"{total}/{total} it" in html_02  # the run's bar, finished
    nb = nbformat.read(work / "04.ipynb", as_version=4)
    explorer = next(c for c in nb.cells if "comparison_explorer(" in c.source).outputs
    assert any("interactive controls" in o.get("data", {}).get("text/plain", "") for o in explorer)
    assert sum("image/png" in o.get("data", {}) for o in explorer) == 2  # its last comparison and wipe


def test_exercises_report_pass_with_the_solutions_and_todo_or_fail_otherwise(tmp_path):
    folder = ROOT / "notebooks" / "exercises"
    run = _papermill(
        folder / "exercises.ipynb", tmp_path / "solved.ipynb", folder, {"solutions": folder / "solutions.py"}
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "all 4 exercises passed" in _text_outputs(tmp_path / "solved.ipynb")
    run = _papermill(folder / "exercises.ipynb", tmp_path / "stubs.ipynb", folder)
    text = _text_outputs(tmp_path / "stubs.ipynb")
    assert run.returncode == 0 and "0 of 4 exercises passed" in text and text.count("not implemented yet") == 4
    wrong = (folder / "solutions.py").read_text().replace("transpose(0, 3, 1, 4, 2)", "transpose(0, 3, 2, 4, 1)")
    (tmp_path / "wrong.py").write_text(wrong.replace("return 1 + 2 * n_resblocks", "return 2 * n_resblocks"))
    run = _papermill(folder / "exercises.ipynb", tmp_path / "wrong.ipynb", folder, {"solutions": tmp_path / "wrong.py"})
    text = _text_outputs(tmp_path / "wrong.ipynb")
    assert "2 of 4 exercises passed" in text and "FAIL  1. PixelShuffle order: values in the wrong places" in text
    assert "FAIL  4." in text


def test_evaluation_and_comparison_notebooks_take_an_mdsr_at_their_scale(tmp_path, rng):
    from reference import random_mdsr_weights, write_pt_zip

    write_pt_zip(tmp_path / "mdsr.pt", random_mdsr_weights(rng, 1, 8))
    for name in ("03_evaluate", "04_visual_comparison"):
        params = {"checkpoint": str(tmp_path / "mdsr.pt"), "scale": 3, "interactive": False}
        if name == "03_evaluate":
            params.pop("interactive")
        run = _papermill(ROOT / "notebooks" / f"{name}.ipynb", tmp_path / f"{name}.ipynb", tmp_path, params)
        assert run.returncode == 0, run.stderr[-3000:]
    evaluation = json.loads((tmp_path / "outputs" / "03_evaluate" / "metrics.json").read_text())
    assert evaluation["scale"] == 3 and evaluation["psnr"] is not None and evaluation["all"][0]["edsr"]["scale"] == 3


def test_evaluation_notebook_reports_niqe_when_asked(tmp_path):
    params = {"metrics": "psnr,niqe", "conventions": False, "save_images": False, "progress": "none"}
    run = _papermill(ROOT / "notebooks" / "03_evaluate.ipynb", tmp_path / "03.ipynb", tmp_path, params)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "outputs" / "03_evaluate" / "metrics.json").read_text())
    assert "NIQE bicubic / EDSR (lower)" in _text_outputs(tmp_path / "03.ipynb")
    cli = subprocess.run(
        [sys.executable, "-m", "edsr_lib.cli", "eval", "--bicubic", "--scale", "2", "--data_test", "sample",
         "--metrics", "niqe", "--json", str(tmp_path / "cli.json")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert summary["niqe_bicubic"] == json.loads((tmp_path / "cli.json").read_text())["niqe"]
