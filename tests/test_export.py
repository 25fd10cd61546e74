"""edsr export: MINDIR (dynamic and fixed) and ONNX exports of baseline x2/x3/x4 checked against an independent
numpy forward of the published network, run through MindSpore and onnxruntime; AIR refused off Ascend."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from edsr_lib import Architecture, save_checkpoint
from edsr_lib.errors import KitError
from edsr_lib.export import ExportedModel
from edsr_lib.inference import exact_windows
from reference import published_forward, random_published_weights

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow  # exports and runs full baseline networks


@pytest.fixture(scope="module", params=[2, 3, 4])
def exported(request, tmp_path_factory):
    scale = request.param
    rng = np.random.default_rng(scale)
    weights = random_published_weights(rng, scale, 16, 64)
    folder = tmp_path_factory.mktemp(f"x{scale}")
    ckpt = folder / f"baseline_x{scale}.ckpt"
    save_checkpoint(ckpt, Architecture.from_preset("baseline", scale), weights)
    runs = {
        "mindir": run_cli("export", "--ckpt", ckpt, "--format", "MINDIR", "--output", folder / "m.mindir", "--verify"),
        "onnx": run_cli(
            "export",
            "--ckpt",
            ckpt,
            "--format",
            "onnx",
            "--output",
            folder / "m.onnx",
            "--input-size",
            20,
            26,
            "--verify",
        ),
    }
    return scale, weights, folder, ckpt, runs


def test_exports_match_the_published_forward(exported):
    scale, weights, folder, ckpt, runs = exported
    for name, run in runs.items():
        assert run.returncode == 0, run.stderr[-2000:]
        assert "verify: max |exported - checkpoint|" in run.stdout
    image = np.random.default_rng(0).integers(0, 256, (20, 26, 3)).astype(np.float32)
    expected = published_forward(weights, image, 1.0)  # float64 numpy reference, HxWx3
    x = image.transpose(2, 0, 1)[None]
    outputs = {}
    for name in ("m.mindir", "m.onnx"):
        model = ExportedModel(folder / name)
        assert model.arch.scale == scale
        outputs[name] = model.forward_array(x)[0].transpose(1, 2, 0)
        assert outputs[name].shape == (20 * scale, 26 * scale, 3)
        np.testing.assert_allclose(outputs[name], expected, atol=2e-3, err_msg=name)
    # the two runtimes agree to float32 round-off
    assert np.abs(outputs["m.mindir"] - outputs["m.onnx"]).max() < 1e-3
    meta = json.loads((folder / "m.onnx.json").read_text())
    assert meta["input_size"] == [20, 26] and meta["architecture"]["scale"] == scale


def test_dynamic_mindir_takes_any_size(exported):
    scale, weights, folder, *_ = exported
    image = np.random.default_rng(1).integers(0, 256, (13, 17, 3)).astype(np.float32)
    got = ExportedModel(folder / "m.mindir").forward_array(image.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
    np.testing.assert_allclose(got, published_forward(weights, image, 1.0), atol=2e-3)


def test_upscale_with_fixed_size_onnx_tiles_exactly(tmp_path_factory):
    # An 80x80 export is larger than twice the baseline's receptive radius (36), so a 100x130 image is tiled
    # exactly: the same pixels as the checkpoint up to rounding ties.
    rng = np.random.default_rng(11)
    folder = tmp_path_factory.mktemp("tiles")
    weights = random_published_weights(rng, 2, 16, 64)
    save_checkpoint(folder / "m.ckpt", Architecture.from_preset("baseline", 2), weights)
    made = run_cli(
        "export", "--ckpt", folder / "m.ckpt", "--format", "ONNX", "--output", folder / "m.onnx", "--input-size", 80, 80
    )
    assert made.returncode == 0, made.stderr
    Image.fromarray(rng.integers(0, 256, (100, 130, 3), dtype=np.uint8)).save(folder / "in.png")
    a = run_cli("upscale", "--model", folder / "m.onnx", folder / "in.png", folder / "onnx.png")
    b = run_cli("upscale", "--ckpt", folder / "m.ckpt", folder / "in.png", folder / "ckpt.png")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    x, y = (np.asarray(Image.open(folder / n)).astype(int) for n in ("onnx.png", "ckpt.png"))
    assert x.shape == (200, 260, 3) and np.abs(x - y).max() <= 1 and (x == y).mean() > 0.999


def test_window_starts_cover_every_pixel_in_a_valid_centre():
    for length, window, margin in ((100, 80, 36), (257, 64, 10), (64, 64, 30), (65, 64, 30)):
        starts = exact_windows(length, window, margin)
        covered = np.zeros(length, bool)
        for s in starts:
            lo = s if s == 0 else s + margin
            hi = s + window if s + window == length else s + window - margin
            covered[lo:hi] = True
        assert covered.all() and starts[-1] + window == max(length, window) and starts[0] == 0


def test_user_errors(tmp_path, exported):
    _, _, folder, ckpt, _ = exported
    air = run_cli("export", "--ckpt", ckpt, "--format", "AIR", "--output", tmp_path / "m.air")
    assert air.returncode == 2 and "AIR export needs --input-size" in air.stderr and "Traceback" not in air.stderr
    air = run_cli("export", "--ckpt", ckpt, "--format", "AIR", "--output", tmp_path / "m.air", "--input-size", 8, 8)
    assert air.returncode == 2 and "AIR export needs the Ascend backend" in air.stderr
    assert "MindSpore Lite" in air.stderr and "ATC reads AIR only" in air.stderr
    onnx = run_cli("export", "--ckpt", ckpt, "--format", "ONNX", "--output", tmp_path / "m.onnx")
    assert onnx.returncode == 2 and "dynamic" in onnx.stderr
    suffix = run_cli("export", "--ckpt", ckpt, "--format", "MINDIR", "--output", tmp_path / "m.onnx")
    assert suffix.returncode == 2 and "must end in .mindir" in suffix.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written
    (tmp_path / "lonely.onnx").write_bytes((folder / "m.onnx").read_bytes())
    with pytest.raises(KitError, match="lonely.onnx.json: missing"):
        ExportedModel(tmp_path / "lonely.onnx")


def test_mindir_child_process_gives_the_in_process_result_and_fails_in_one_line(tmp_path, rng):
    """On AVX-512 CPUs ExportedModel runs a MINDIR in a child process with oneDNN capped at AVX2 (~100x faster
    there); both ways must give the same numbers, and a failing child must be one clear error."""
    from edsr_lib.export import MindirProcess, export_model, load_mindir

    ckpt = save_checkpoint(
        tmp_path / "m.ckpt", Architecture(scale=2, n_resblocks=1, n_feats=8), random_published_weights(rng, 2, 1, 8)
    )
    mindir = export_model(ckpt, "MINDIR", tmp_path / "m.mindir")[0]
    x = rng.uniform(0, 255, (1, 3, 12, 17)).astype(np.float32)
    child = MindirProcess(mindir)
    np.testing.assert_allclose(child(x), load_mindir(mindir)(x), rtol=0, atol=1e-3)
    assert child(x[:, :, :5, :6]).shape == (1, 3, 10, 12)  # any size, one process
    child._child.kill()
    child._child.wait()
    with pytest.raises(KitError, match="m.mindir: the MINDIR process ended"):
        child(x)
    (tmp_path / "junk.mindir").write_bytes(b"not a graph")
    with pytest.raises(KitError, match="junk.mindir: not a loadable MINDIR file"):
        MindirProcess(tmp_path / "junk.mindir")


# MindSpore Lite is not on PyPI for this machine: a stand-in with the documented Python API (Context.target,
# Context.ascend.device_id, Model.build_from_file, get_inputs, resize, set_data_from_numpy, predict,
# get_data_to_numpy), running the MINDIR through MindSpore, checks how the kit drives it.
FAKE_MINDSPORE_LITE = """
import json, os
from enum import Enum
import numpy as np

CALLS = os.environ["FAKE_LITE_LOG"]


def _log(**entry):
    with open(CALLS, "a") as f:
        f.write(json.dumps(entry) + "\\n")


class ModelType(Enum):
    MINDIR = 0


class _Ascend:
    device_id = None


class Context:
    def __init__(self):
        self.target, self.ascend = [], _Ascend()


class _Tensor:
    def __init__(self, shape):
        self.shape, self.data = list(shape), None

    def set_data_from_numpy(self, array):
        assert list(array.shape) == self.shape and array.dtype == np.float32
        self.data = array

    def get_data_to_numpy(self):
        return self.data


class Model:
    def build_from_file(self, path, model_type, context):
        import mindspore as ms
        assert model_type is ModelType.MINDIR and context.target
        self.graph = ms.nn.GraphCell(ms.load(path))
        self.inputs = [_Tensor([1, 3, -1, -1])]
        _log(target=context.target, device_id=context.ascend.device_id)

    def get_inputs(self):
        return self.inputs

    def resize(self, inputs, shapes):
        inputs[0].shape = list(shapes[0])

    def predict(self, inputs):
        import mindspore as ms
        out = _Tensor([])
        out.data = self.graph(ms.Tensor(inputs[0].data)).asnumpy()
        _log(predict=inputs[0].shape)
        return [out]
"""


def test_run_infer_310_scores_an_exported_mindir_like_its_checkpoint(exported, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT
    from edsr_lib.runtime import STOCK_CONV_ENVIRONMENT

    scale, _, folder, ckpt, runs = exported
    if scale != 2:
        pytest.skip("one scale is enough")
    assert runs["mindir"].returncode == 0
    script = str(ROOT / "scripts" / "run_infer_310.sh")
    env = {**os.environ, "PYTHON": sys.executable}
    reference = run_cli("eval", "--ckpt", ckpt, "--data_test", "sample", "--json", tmp_path / "ckpt.json")
    assert reference.returncode == 0, reference.stderr
    expected = json.loads((tmp_path / "ckpt.json").read_text())
    results = {}
    fake = tmp_path / "fake_lite"
    (fake / "mindspore_lite").mkdir(parents=True)
    (fake / "mindspore_lite" / "__init__.py").write_text(FAKE_MINDSPORE_LITE)
    for engine, extra in (
        ("mindspore", {}),
        # the stand-in runs MindSpore's stock Conv2d in-process: with the oneDNN cap the kit's MINDIR child uses
        ("lite", {"PYTHONPATH": str(fake), "FAKE_LITE_LOG": str(tmp_path / "lite.log"), **STOCK_CONV_ENVIRONMENT}),
    ):
        out = tmp_path / engine
        proc = subprocess.run(
            ["bash", script, folder / "m.mindir", "unused", "sample", "2", "3"],
            env={**env, "OUTPUT_DIR": str(out), **extra},
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[engine] = json.loads((out / "metrics.json").read_text())
        assert results[engine]["engine"] == engine and "mean" in (out / "acc.log").read_text()
    # the same MINDIR through either runtime: the same numbers; against the checkpoint (the kit's own CPU
    # convolution) within float32 rounding of a few pixels
    assert results["lite"]["per_image"] == results["mindspore"]["per_image"]
    assert abs(results["mindspore"]["psnr"] - expected["psnr"]) < 0.01
    calls = [json.loads(line) for line in (tmp_path / "lite.log").read_text().splitlines()]
    assert calls[0] == {"target": ["cpu"], "device_id": None}  # no CANN here: MindSpore Lite on the CPU
    assert len(calls) == 1 + len(results["lite"]["per_image"])  # one predict per image, each at its own size
    wrong = subprocess.run(
        ["bash", script, folder / "m.mindir", "unused", "sample", "4"],
        env={**env, "OUTPUT_DIR": str(tmp_path / "wrong")},
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2 and "an x2 model" in wrong.stderr and not (tmp_path / "wrong" / "acc.log").exists()
