"""Exporting a checkpoint for deployment (MINDIR, ONNX, AIR) and running exported models.

An exported model takes float32 NCHW RGB on the 0-255 scale and returns the unclamped 0-255 output, whatever
`rgb_range` the checkpoint was trained with. Next to each export, `<file>.json` records the architecture and the
input size, so `edsr upscale --model` can tile exactly and verify without the checkpoint.
"""

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .backend import ms, nn
from .errors import KitError
from .files import check_output_file, write_json
from .inference import forward_tiled, forward_windows
from .model import Architecture, check_size
from .runtime import STOCK_CONV_ENVIRONMENT, current_device, mindspore_log_silenced, stock_conv_needs_own_process
from .loading import checkpoint_path, load_model

FORMATS = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}


class ZeroTo255(nn.Cell):
    """The network with 0-255 input and output, for models trained on another rgb_range."""

    def __init__(self, network):
        super().__init__()
        self.network, self.factor = network, float(network.arch.rgb_range) / 255.0

    def construct(self, x):
        if self.factor == 1.0:
            return self.network(x)
        return self.network(x * self.factor) / self.factor


def sidecar_path(path):
    return Path(str(path) + ".json")


# Fixed export sizes in LR pixels: a larger input is tiled by ExportedModel anyway, so nothing needs more.
MAX_EXPORT_SIDE, MAX_EXPORT_BATCH = 4096, 64


def check_export_shape(input_size, batch_size, where="export"):
    """Refuse sizes no deployment uses before MindSpore compiles them (0 0 left analyze_fail.ir files behind)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_EXPORT_BATCH:
        raise KitError(f"{where}: batch_size must be an integer from 1 to {MAX_EXPORT_BATCH}, got {batch_size!r}")
    if input_size is None:
        return
    if (
        not isinstance(input_size, (list, tuple))
        or len(input_size) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_EXPORT_SIDE for v in input_size)
    ):
        raise KitError(
            f"{where}: input size must be two integers H W from 1 to {MAX_EXPORT_SIDE} (LR pixels), got {input_size!r}"
        )


def export_model(
    checkpoint: str | os.PathLike,
    file_format: str,
    output: str | os.PathLike,
    input_size: tuple[int, int] | None = None,
    batch_size: int = 1,
    res_scale: float | None = None,
    scale: int | None = None,
    default_scale: int | None = None,
    ema: bool = True,
) -> tuple[Path, dict]:
    """Write `output` in `file_format`; returns (path, metadata). ONNX needs `input_size` (H, W) in LR pixels.
    An MDSR is exported at one of its scales (`scale`, else `default_scale`; `export_all_scales` writes each).
    `ema`: export a training checkpoint's EMA weights when it has them (as `load_model`)."""
    file_format = file_format.upper()
    if file_format not in FORMATS:
        raise KitError(f"unknown export format {file_format!r}; choose MINDIR, ONNX or AIR")
    if file_format == "AIR" and not input_size:
        raise KitError(
            "AIR export needs --input-size H W: ATC, which turns an AIR into an Ascend 310/310P model, expects fixed "
            "shapes (MINDIR keeps H and W dynamic)"
        )
    if file_format == "AIR" and current_device() != "Ascend":
        raise KitError(
            "AIR export needs the Ascend backend (CANN), and this machine runs on "
            f"{current_device()}; export MINDIR here: Ascend 310/310P run it through MindSpore Lite "
            "(its converter_lite, --fmk=MINDIR), while ATC reads AIR only"
        )
    if file_format == "ONNX" and not input_size:
        raise KitError(
            "ONNX export needs --input-size H W: MindSpore cannot export ONNX with dynamic height and "
            "width (MINDIR can)"
        )
    check_export_shape(input_size, batch_size)
    output = Path(output)
    if output.suffix.lower() != FORMATS[file_format]:
        raise KitError(f"{output}: a {file_format} file name must end in {FORMATS[file_format]}")
    source = [(checkpoint, "the checkpoint being exported")] if Path(checkpoint).exists() else []
    check_output_file(output, "--output", source)
    check_output_file(sidecar_path(output), "--output's record", source)
    # MindSpore's own Conv2d: an export must not reference the kit's CPU kernel library
    model = load_model(
        checkpoint, res_scale=res_scale, conv_kernel="stock", scale=scale, default_scale=default_scale, ema=ema
    )
    net = ZeroTo255(model)
    arch = model.arch
    if input_size:
        height, width = (int(v) for v in input_size)
        example = ms.Tensor(np.zeros((batch_size, arch.n_colors, height, width), np.float32))
    else:
        example = ms.Tensor(shape=[batch_size, arch.n_colors, None, None], dtype=ms.float32)
    output.parent.mkdir(parents=True, exist_ok=True)
    # MindSpore picks the file name itself (it appends the extension): export into a scratch folder beside the
    # target, then rename, so a failed export leaves nothing half-written.
    scratch = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        if file_format == "ONNX":  # MindSpore 2.10 marks ms.export(file_format="ONNX") for removal
            ms.onnx.export(net, example, file_name=str(scratch / "model.onnx"), input_names=["x"])
        else:
            with mindspore_log_silenced():  # AIR: 2.10's deprecation notice (docs/deployment.md)
                ms.export(net, example, file_name=str(scratch / "model"), file_format=file_format)
        produced = next(scratch.glob("model*"), None)
        if produced is None:
            raise KitError(f"{output}: MindSpore wrote no {file_format} file")
        os.replace(produced, output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    meta = {
        "format": file_format,
        "architecture": arch.to_dict(),
        "batch_size": batch_size,
        "input_size": list(input_size) if input_size else None,
        "input": "float32 NCHW RGB, 0-255",
        "output": "float32 NCHW RGB, 0-255, unclamped",
        "checkpoint": str(checkpoint),
    }
    write_json(sidecar_path(output), meta)
    return output, meta


def export_all_scales(
    checkpoint: str | os.PathLike, file_format: str, output: str | os.PathLike, scale: int | None = None, **kwargs
) -> list[tuple[Path, dict]]:
    """[(path, metadata)]: `output` itself for an EDSR or a chosen `scale`; for an MDSR without `scale`, one file
    per scale beside it (`model.mindir` -> `model_x2.mindir`, `model_x3.mindir`, ...)."""
    from .weights import read_checkpoint

    arch, _, _ = read_checkpoint(checkpoint_path(checkpoint))
    if not arch.is_multiscale or scale is not None:
        return [export_model(checkpoint, file_format, output, scale=scale, **kwargs)]
    output = Path(output)
    return [
        export_model(checkpoint, file_format, output.with_name(f"{output.stem}_x{s}{output.suffix}"), scale=s, **kwargs)
        for s in arch.scales
    ]


class ExportedModel:
    """An exported MINDIR (MindSpore) or ONNX (onnxruntime) model with the inference interface of a checkpoint:
    `arch`, and `forward_array(x)` on float32 NCHW 0-255 arrays, tiled to a fixed input size when it has one."""

    def __init__(self, path, engine="auto"):
        self.path = Path(path)
        if not self.path.is_file():
            raise KitError(f"{self.path}: no such exported model")
        meta_path = sidecar_path(self.path)
        if not meta_path.is_file():
            raise KitError(
                f"{meta_path}: missing; it is written by `edsr export` next to the model and records its "
                "architecture and input size"
            )
        try:
            if meta_path.stat().st_size > 64 * 1024:
                raise ValueError("larger than 64 KB, which no record the kit writes is")
            meta = json.loads(meta_path.read_text())
            self.arch = Architecture.from_dict({**meta["architecture"], "rgb_range": 255.0})
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, KitError) as exc:
            raise KitError(f"{meta_path}: unreadable export record ({str(exc).splitlines()[0][:200]})") from None
        self.input_size = tuple(meta["input_size"]) if meta.get("input_size") else None
        self.batch_size = meta.get("batch_size", 1)
        check_export_shape(list(self.input_size) if self.input_size else None, self.batch_size, str(meta_path))
        check_size(self.arch)
        suffix = self.path.suffix.lower()
        self.engine = mindir_engine(engine) if suffix == ".mindir" else "onnxruntime"
        if self.engine == "lite":
            self._infer = load_mindir_lite(self.path)
        elif suffix == ".mindir" and stock_conv_needs_own_process():
            self._infer = MindirProcess(self.path)
        elif suffix == ".mindir":
            self._infer = load_mindir(self.path)
        elif suffix == ".onnx":
            try:
                import onnxruntime
            except ImportError:
                raise KitError("running ONNX models needs onnxruntime: pip install -e '.[onnx]'") from None
            try:
                session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types for bad files
                raise KitError(f"{self.path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
            declared = session.get_inputs()[0]
            if self.input_size and list(declared.shape[2:]) != list(self.input_size):
                raise KitError(
                    f"{meta_path}: records input size {list(self.input_size)} but {self.path.name} takes "
                    f"{declared.shape[2:]}; the record does not belong to this model"
                )
            name = declared.name
            self._infer = lambda x: session.run(None, {name: x})[0]
        else:
            raise KitError(f"{self.path}: exported models must be .mindir or .onnx")

    def _batched(self, x):
        """Run with the exported batch size (a static export wants exactly that many images)."""
        if self.input_size is None or self.batch_size == x.shape[0]:
            return self._checked(x, np.asarray(self._infer(np.ascontiguousarray(x, np.float32))))
        outputs = []
        for image in x:
            padded = np.repeat(image[None], self.batch_size, axis=0)
            outputs.append(np.asarray(self._infer(np.ascontiguousarray(padded, np.float32)))[:1])
        return self._checked(x, np.concatenate(outputs))

    def _checked(self, x, y):
        """The model must do what its record says: an output `scale` times the input, in RGB."""
        expected = (x.shape[0], self.arch.n_colors, x.shape[2] * self.arch.scale, x.shape[3] * self.arch.scale)
        if tuple(y.shape) != expected:
            raise KitError(
                f"{sidecar_path(self.path)}: records an x{self.arch.scale} model, but {self.path.name} turned "
                f"{list(x.shape)} into {list(y.shape)}; the record does not belong to this model"
            )
        return y

    def forward_array(self, x):
        if self.input_size is None:
            return self._batched(x)
        (fixed_h, fixed_w), (_, _, height, width) = self.input_size, x.shape
        if height < fixed_h or width < fixed_w:
            # Smaller than the exported size: pad by edge replication and crop. Pixels near the padded edges differ
            # slightly from a whole-image run; a dynamic MINDIR export has no such limit.
            pad = ((0, 0), (0, 0), (0, max(0, fixed_h - height)), (0, max(0, fixed_w - width)))
            x_padded = np.pad(x, pad, mode="edge")
            return self.forward_array(x_padded)[:, :, : height * self.arch.scale, : width * self.arch.scale]
        margin = self.arch.receptive_radius
        if min(fixed_h, fixed_w) <= 2 * margin and (height > fixed_h or width > fixed_w):
            margin = min(fixed_h, fixed_w) // 4
            warnings.warn(
                f"{self.path}: exported size {fixed_h}x{fixed_w} is too small for exact tiling (needs more "
                f"than {2 * self.arch.receptive_radius} px); tiles will show faint seams",
                stacklevel=2,
            )
        return forward_windows(self._batched, x, self.arch.scale, self.arch.n_colors, self.input_size, margin)


MINDIR_ENGINES = ("auto", "mindspore", "lite")


def mindir_engine(choice="auto"):
    """Which runtime runs a MINDIR: MindSpore Lite (`mindspore_lite`, the runtime of Ascend 310/310P inference hosts;
    `auto` picks it when it is installed) or MindSpore itself."""
    import importlib.util

    if choice not in MINDIR_ENGINES:
        raise KitError(f"engine must be one of {', '.join(MINDIR_ENGINES)}, got {choice!r}")
    installed = importlib.util.find_spec("mindspore_lite") is not None
    if choice == "lite" and not installed:
        raise KitError(
            "engine lite needs MindSpore Lite (the mindspore_lite package of your CANN/MindSpore Lite install)"
        )
    return "lite" if choice == "lite" or (choice == "auto" and installed) else "mindspore"


def load_mindir_lite(path):
    """A MINDIR as a function of float32 NCHW arrays, run by MindSpore Lite's Python API (Context, Model,
    build_from_file, resize, predict): on the Ascend device $DEVICE_ID where CANN is installed, else on the CPU."""
    import mindspore_lite as mslite

    from .runtime import cann_home

    context = mslite.Context()
    context.target = ["ascend"] if cann_home() else ["cpu"]
    if cann_home():
        context.ascend.device_id = int(os.environ.get("DEVICE_ID", "0"))
    model = mslite.Model()
    try:
        model.build_from_file(str(path), mslite.ModelType.MINDIR, context)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise KitError(
            f"{path}: MindSpore Lite cannot load it ({str(exc).splitlines()[0] if str(exc) else exc})"
        ) from None

    def infer(x):
        inputs = model.get_inputs()
        if list(inputs[0].shape) != list(x.shape):  # a dynamic H and W export: fix this call's shape
            model.resize(inputs, [list(x.shape)])
        inputs[0].set_data_from_numpy(np.ascontiguousarray(x, np.float32))
        return model.predict(inputs)[0].get_data_to_numpy()

    return infer


def load_mindir(path):
    """A MINDIR file as a function of float32 NCHW arrays, run in this process."""
    try:
        graph = nn.GraphCell(ms.load(str(path)))
    except (RuntimeError, ValueError) as exc:
        raise KitError(f"{path}: not a loadable MINDIR file ({str(exc).splitlines()[0]})") from None
    return lambda x: graph(ms.Tensor(x)).asnumpy()


def _send(stream, header, array=None):
    payload = json.dumps({**header, **({"shape": list(array.shape)} if array is not None else {})}).encode()
    stream.write(len(payload).to_bytes(8, "little") + payload)
    if array is not None:
        stream.write(np.ascontiguousarray(array, np.float32).tobytes())
    stream.flush()


def _receive(stream):
    size = stream.read(8)
    if len(size) < 8:
        return None, None
    header = json.loads(stream.read(int.from_bytes(size, "little")))
    if "shape" not in header:
        return header, None
    count = int(np.prod(header["shape"])) * 4
    return header, np.frombuffer(stream.read(count), np.float32).reshape(header["shape"])


def _die_with_parent():
    """In the child before it runs: the kernel sends it SIGTERM when its parent dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG), so a killed `edsr upscale` leaves no MINDIR process computing."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


class MindirProcess:
    """A MINDIR run by MindSpore in a child process whose oneDNN is capped at AVX2 (runtime.STOCK_CONV_ENVIRONMENT):
    its stock Conv2d then runs JIT kernels instead of reference loops, far faster, while this process keeps
    AVX-512 for the kit's own kernel. Arrays go through a pipe, which costs milliseconds per call."""

    def __init__(self, path):
        import subprocess
        import sys

        self.path = Path(path)
        self._child = subprocess.Popen(
            [sys.executable, "-m", "edsr_lib.export", str(self.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, **STOCK_CONV_ENVIRONMENT},
            preexec_fn=_die_with_parent,
        )
        self._call({"load": True})

    def _call(self, header, array=None):
        try:
            _send(self._child.stdin, header, array)
            reply, result = _receive(self._child.stdout)
        except (BrokenPipeError, ValueError):
            reply, result = None, None
        if reply is None:
            raise KitError(f"{self.path}: the MINDIR process ended (exit code {self._child.poll()})")
        if "error" in reply:
            raise KitError(reply["error"])
        return result

    def __call__(self, x):
        return self._call({}, x)

    def __del__(self):
        import subprocess

        child = getattr(self, "_child", None)
        if child is not None and child.poll() is None:
            child.stdin.close()  # the child ends at the end of its input
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def _serve_mindir(path):
    """The child side of MindirProcess: load once, then answer arrays until the parent closes the pipe."""
    import sys

    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything MindSpore prints must not enter the pipe
    requests = sys.stdin.buffer
    try:
        infer = load_mindir(path)
    except KitError as exc:
        _send(replies, {"error": str(exc)})
        return 2
    while True:
        try:
            header, array = _receive(requests)
        except (OSError, ValueError):  # the parent is gone mid-message
            return 0
        if header is None:
            return 0
        if array is None:
            _send(replies, {"ready": True})
            continue
        try:
            result = np.asarray(infer(array), np.float32)
        except Exception as exc:  # reported to the parent, which raises it as one line
            result = {"error": f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        header, array = (result, None) if isinstance(result, dict) else ({}, result)
        try:
            _send(replies, header, array)
        except BrokenPipeError:  # the parent ended: nobody to answer
            return 0


def load_exported(path: str | os.PathLike, engine: str = "auto") -> "ExportedModel":
    return ExportedModel(path, engine)


def verify_export(checkpoint, exported_path, input_size=None, seed=0, ema=True):
    """Max |exported - checkpoint| on a random 0-255 input (the export's size, else 40x52 LR pixels)."""
    exported = ExportedModel(exported_path)
    model = load_model(checkpoint, scale=exported.arch.scale, ema=ema)
    height, width = input_size or exported.input_size or (40, 52)
    x = np.random.default_rng(seed).uniform(0, 255, (1, model.arch.n_colors, height, width)).astype(np.float32)
    expected = forward_tiled(model, x * np.float32(model.arch.rgb_range / 255.0)) / np.float32(
        model.arch.rgb_range / 255.0
    )
    got = exported.forward_array(x)
    if got.shape != expected.shape:
        raise KitError(f"{exported_path}: output shape {got.shape} differs from the checkpoint's {expected.shape}")
    return float(np.abs(got - expected).max()), float(np.abs(expected).max())


if __name__ == "__main__":
    import sys

    from .runtime import setup_device

    setup_device("CPU")
    sys.exit(_serve_mindir(sys.argv[1]))
