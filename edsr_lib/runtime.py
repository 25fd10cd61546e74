"""Process set-up and device selection: the only place the kit sets environment variables or picks a device.

Import this module before MindSpore (``edsr_lib/__init__.py`` does), so the settings apply to the first op.
"""

import contextlib
import functools
import logging
import os
import sys
import warnings

from . import native  # imports no MindSpore

# The kit's own CPU convolution (conv.py) as the cache holds it: built, known not to build (why), or not tried yet.
# Import builds nothing: `python -m edsr_lib.native build`, or the first CPU convolution (fast_conv_library).
_CACHED_LIBRARY, _CACHED_REASON = native.find_library()


def _expects_cpu():
    """The device decision before MindSpore loads: $DEVICE_TARGET, else whether CANN is installed."""
    chosen = os.environ.get("DEVICE_TARGET", "")
    if chosen:
        return chosen.lower() == "cpu"
    return not (os.environ.get("ASCEND_HOME_PATH") or os.path.isdir("/usr/local/Ascend"))


# Read by MindSpore/oneDNN when they load, so they must be set before `import mindspore`:
# - MS_DEV_HOST_BLOCKING_RUN, CPU runs only: without it the host thread busy-waits for every op launched from Python
#   and takes one of two cores from the kernels (op by op about 2x slower; the earlier multi-graph training step
#   1.08x; the one-graph step and graph inference unchanged: docs/benchmarks.md). On Ascend the host must keep
#   queueing work while the device runs, so it is left alone there.
# - ONEDNN_MAX_CPU_ISA, only where the kit's convolution is not built (or not built yet, in which case the process
#   that builds it runs it capped; later ones find it built): on AVX-512 CPUs MindSpore's stock Conv2d
#   pushes oneDNN into its reference loops (100x slower); capping the ISA at AVX2 restores JIT kernels (~2x PyTorch).
#   The kit's kernel lets oneDNN pick its layouts, so it needs no cap and keeps AVX-512. No effect on Ascend.
#   Exported MINDIR files always run MindSpore's stock Conv2d: where this process keeps AVX-512, ExportedModel runs
#   them in a child process started with STOCK_CONV_ENVIRONMENT (`stock_conv_needs_own_process`).
# A value the user already exported wins.
STOCK_CONV_ENVIRONMENT = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
KIT_ENVIRONMENT = {"MS_DEV_HOST_BLOCKING_RUN": "1"} if _expects_cpu() else {}
if _CACHED_LIBRARY is None:
    KIT_ENVIRONMENT.update(STOCK_CONV_ENVIRONMENT)


@functools.lru_cache(maxsize=1)
def fast_conv_library():
    """(library, None), or (None, why not): the kit's CPU convolution, built now when no build was tried yet on
    this machine (once; later processes find it in the cache)."""
    if _CACHED_LIBRARY is not None or _CACHED_REASON is not None:
        return _CACHED_LIBRARY, _CACHED_REASON
    print(
        "building the kit's CPU convolution once for this machine (about a minute; "
        "`python -m edsr_lib.native build` does it ahead)",
        file=sys.stderr,
    )
    return native.build()


def stock_conv_needs_own_process():
    """True when MindSpore's stock CPU Conv2d would fall into oneDNN's reference loops in this process (an AVX-512
    CPU and no ISA cap, which the kit's own kernel prefers): ~100x slower than in a process with the cap."""
    return (
        current_device() == "CPU" and "ONEDNN_MAX_CPU_ISA" not in os.environ and " avx512f" in native.cpu_description()
    )


def apply_environment():
    missing = {k: v for k, v in KIT_ENVIRONMENT.items() if k not in os.environ}
    if missing and "mindspore" in sys.modules:
        warnings.warn(
            "mindspore was imported before edsr_lib, so these settings cannot apply: "
            + ", ".join(f"{k}={v}" for k, v in missing.items())
            + ". Import edsr_lib first (CPU runs may be much slower).",
            stacklevel=3,
        )
    for key, value in missing.items():
        os.environ[key] = value


apply_environment()

import mindspore as ms  # noqa: E402  (must follow apply_environment)

from .errors import KitError  # noqa: E402

DEVICE_TARGETS = ("Ascend", "GPU", "CPU")


def _ascend_installed():
    # Asking MindSpore's hal on a machine without CANN prints plugin-loading warnings; check for CANN first.
    if not (os.environ.get("ASCEND_HOME_PATH") or os.path.isdir("/usr/local/Ascend")):
        return False
    try:
        return bool(ms.hal.is_available("Ascend"))
    except Exception:  # a broken CANN install means: not usable
        return False


def resolve_device(device_target=None):
    """The device to run on: the explicit choice, else $DEVICE_TARGET, else Ascend when present, else CPU."""
    choice = device_target or os.environ.get("DEVICE_TARGET") or ("Ascend" if _ascend_installed() else "CPU")
    for name in DEVICE_TARGETS:
        if choice.lower() == name.lower():
            return name
    raise KitError(f"unknown device_target {choice!r}; choose one of {', '.join(DEVICE_TARGETS)}")


_configured = {}


def setup_device(device_target=None, mode="pynative"):
    """Point MindSpore at the device (device id from $DEVICE_ID) once per process; returns the device name."""
    target = resolve_device(device_target)
    if _configured:
        if _configured["target"] != target:
            raise KitError(f"this process already runs on {_configured['target']}; cannot switch to {target}")
        return target
    device_id = int(os.environ.get("DEVICE_ID", "0"))
    ms.set_context(mode=ms.PYNATIVE_MODE if mode == "pynative" else ms.GRAPH_MODE)
    if target == "CPU":
        ms.set_device("CPU")
    else:
        ms.set_device(target, device_id)
    _configured["target"] = target
    return target


def configure_precision(device, precision_mode="", deterministic=False):
    """What the device computes float32 work in, and whether runs repeat bit for bit; returns a record for run.json.

    Ascend: CANN's precision mode is the chip's default unless `precision_mode` names one; Atlas training cards (910A)
    default to allow_fp32_to_fp16, i.e. float32 convolutions run in float16, which is why O0 keeps a loss scale
    there (trainer.make_loss_scaler). must_keep_origin_dtype also turns off HF32 convolutions and
    matmuls, so O0 really is float32. CPU: deterministic always (the kit's kernels and MindSpore's CPU ops are), which
    is what makes resume bit-exact."""
    record = {"device": device, "deterministic": bool(deterministic or device == "CPU")}
    if device == "Ascend":
        from mindspore.device_context.ascend import op_precision

        if precision_mode:
            op_precision.precision_mode(precision_mode)
            if precision_mode in FLOAT32_PRECISION_MODES:
                op_precision.conv_allow_hf32(False)
                op_precision.matmul_allow_hf32(False)
        record["precision_mode"] = (
            precision_mode or "chip default (910A: allow_fp32_to_fp16; A2: must_keep_origin_dtype)"
        )
        record["float32_convolutions"] = precision_mode in FLOAT32_PRECISION_MODES
    elif precision_mode:
        raise KitError(f"precision_mode {precision_mode!r} is a CANN setting: it applies on Ascend only, not {device}")
    if record["deterministic"] and not _configured.get("deterministic"):
        ms.set_deterministic(True)  # once per process, and before init() so collectives are deterministic too
        _configured["deterministic"] = True
    record["deterministic"] = bool(_configured.get("deterministic"))
    return record


# Precision modes in which float32 convolutions stay float32 (with HF32 switched off by configure_precision).
FLOAT32_PRECISION_MODES = ("must_keep_origin_dtype",)


def current_device():
    return _configured.get("target") or setup_device()


@contextlib.contextmanager
def mindspore_log_silenced():
    """Hold back MindSpore's own log lines for a call whose failure the kit reports itself in one line, or whose
    warnings are about MindSpore's internals rather than the user's work (e.g. `nn.Adam` constructing the deprecated
    FusedSparseAdam, ONNX export's deprecation notice)."""
    from mindspore import log as ms_log

    logger = ms_log._get_logger()  # MindSpore's own logger (no public handle)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)  # "Failed to save" is logged as CRITICAL just before it raises
    try:
        yield
    finally:
        logger.setLevel(level)


def setup_summary():
    """What a notebook's first cell prints: versions, the device, and which convolution runs on the CPU."""
    device = current_device()
    if device != "CPU":
        conv = f"MindSpore's {device} convolution"
    elif fast_conv_library()[0] is not None:
        conv = f"the kit's oneDNN kernel ({fast_conv_library()[0].name})"
    else:
        conv = f"MindSpore's Conv2d ({fast_conv_library()[1]})"
    from .records import versions

    return {**versions(), "device": device, "CPU cores": os.cpu_count(), "convolution": conv}


def launched_distributed():
    """True when msrun (MS_ROLE) or an HCCL rank table with several ranks started this process."""
    if os.environ.get("MS_ROLE"):
        return True
    return bool(os.environ.get("RANK_TABLE_FILE")) and int(os.environ.get("RANK_SIZE", "1")) > 1


def init_distributed(device_target=None):
    """Join the data-parallel group when launched for it; returns (rank, world_size), (0, 1) otherwise.

    `init()` picks HCCL on Ascend, NCCL on GPU and mccl on CPU. Gradients are averaged over ranks.
    """
    setup_device(device_target)
    if not launched_distributed():
        return 0, 1
    if "world" not in _configured:
        from mindspore.communication import get_group_size, get_rank, init

        init()
        ms.set_auto_parallel_context(
            parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=get_group_size()
        )
        _configured["world"] = (get_rank(), get_group_size())
    return _configured["world"]
