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

# CANN versions MindSpore 2.10's installation check accepts (mindspore/run_check/_check_version.py, AscendEnvChecker).
ACCEPTED_CANN_VERSIONS = ("8.2", "8.3", "8.5", "9.0", "9.1")


def cann_home(environ=None):
    """Where CANN is installed ($ASCEND_HOME_PATH, which CANN's set_env.sh exports, else /usr/local/Ascend), or None."""
    environ = os.environ if environ is None else environ
    if environ.get("ASCEND_HOME_PATH"):
        return environ["ASCEND_HOME_PATH"]
    return "/usr/local/Ascend" if os.path.isdir("/usr/local/Ascend") else None


def _expects_cpu():
    """The device guess before MindSpore loads: $DEVICE_TARGET, else CPU unless CANN or an NVIDIA driver is there."""
    chosen = os.environ.get("DEVICE_TARGET", "")
    if chosen:
        return chosen.lower() == "cpu"
    return cann_home() is None and not os.path.isdir("/proc/driver/nvidia")


# - MS_DEV_HOST_BLOCKING_RUN, CPU runs only: without it the host thread busy-waits for every op launched from Python
#   and takes one of two cores from the kernels (op by op about 2x slower; the earlier multi-graph training step
#   1.08x; the one-graph step and graph inference unchanged: docs/benchmarks.md). On Ascend and GPU the host must
#   keep queueing work while the device runs, so it must not be set there. MindSpore reads it at the first op
#   launched, not at import (measured: set after `import mindspore` and before the first op it applies, set after
#   the first op it does not), so setup_device sets or clears it once the device is chosen; the guess at import
#   only covers ops a caller runs before choosing a device.
# - ONEDNN_MAX_CPU_ISA, read when MindSpore loads, only where the kit's convolution is not built (or not built yet,
#   in which case the process that builds it runs it capped; later ones find it built): on AVX-512 CPUs MindSpore's
#   stock Conv2d pushes oneDNN into its reference loops (100x slower); capping the ISA at AVX2 restores JIT kernels
#   (~2x PyTorch). The kit's kernel lets oneDNN pick its layouts, so it needs no cap and keeps AVX-512. No effect on
#   Ascend. Exported MINDIR files always run MindSpore's stock Conv2d: where this process keeps AVX-512,
#   ExportedModel runs them in a child process started with STOCK_CONV_ENVIRONMENT (`stock_conv_needs_own_process`).
# A value the user already exported wins.
HOST_BLOCKING = {"MS_DEV_HOST_BLOCKING_RUN": "1"}
STOCK_CONV_ENVIRONMENT = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
_USER_ENVIRONMENT = {k for k in (*HOST_BLOCKING, *STOCK_CONV_ENVIRONMENT) if k in os.environ}
KIT_ENVIRONMENT = dict(HOST_BLOCKING) if _expects_cpu() else {}
if _CACHED_LIBRARY is None:
    KIT_ENVIRONMENT.update(STOCK_CONV_ENVIRONMENT)


def _set_host_blocking(on_cpu):
    """MS_DEV_HOST_BLOCKING_RUN for the chosen device (see above), unless the user exported it."""
    for key, value in HOST_BLOCKING.items():
        if key in _USER_ENVIRONMENT:
            continue
        if on_cpu:
            os.environ[key] = value
        else:
            os.environ.pop(key, None)


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
    too_late = {k: v for k, v in missing.items() if k in STOCK_CONV_ENVIRONMENT}  # read at load, not at first op
    if too_late and "mindspore" in sys.modules:
        warnings.warn(
            "mindspore was imported before edsr_lib, so these settings cannot apply: "
            + ", ".join(f"{k}={v}" for k, v in too_late.items())
            + ". Import edsr_lib first (CPU runs may be much slower).",
            stacklevel=3,
        )
    for key, value in missing.items():
        os.environ[key] = value


apply_environment()

import mindspore as ms  # noqa: E402  (must follow apply_environment)

from .errors import KitError  # noqa: E402

DEVICE_TARGETS = ("Ascend", "GPU", "CPU")
# What MindSpore 2.10's GPU plugin needs (its wheel's lib/plugin/libmindspore_gpu.so.11.1 and .11.6, readelf -d).
GPU_REQUIREMENTS = (
    "CUDA 11.1 or 11.6 with cuDNN 8 on the library path, and CUDA_HOME pointing to a toolkit whose bin/nvcc "
    "reports 11.x (MindSpore picks its plugin from it)"
)


def resolve_device(device_target=None, environ=None):
    """The device to run on: the explicit choice, else $DEVICE_TARGET, else Ascend where CANN is installed, else
    CPU. Whether that device's MindSpore plugin works is `require_backend`'s question."""
    environ = os.environ if environ is None else environ
    choice = device_target or environ.get("DEVICE_TARGET") or ("Ascend" if cann_home(environ) else "CPU")
    for name in DEVICE_TARGETS:
        if choice.lower() == name.lower():
            return name
    raise KitError(f"unknown device_target {choice!r}; choose one of {', '.join(DEVICE_TARGETS)}")


def _plugin_status(target):
    """(loaded, MindSpore's plugin-loading error text): MindSpore tries every plugin when it is imported."""
    from mindspore._c_expression import MSContext

    context = MSContext.get_instance()
    return bool(context.is_pkg_support_device(target)), context.load_plugin_error().strip()


def require_backend(target, plugin_status=_plugin_status, environ=None):
    """Refuse in one line to go on when the chosen accelerator's MindSpore plugin did not load (wrong CANN or CUDA,
    set_env.sh not sourced, a wheel for another platform): never a silent CPU run of a job meant for a device."""
    if target == "CPU":
        return
    loaded, error = plugin_status(target)
    if loaded:
        return
    reason = "; ".join(line.strip() for line in error.splitlines() if line.strip()) or "no error text"
    if target == "Ascend":
        home = cann_home(environ)
        raise KitError(
            f"Ascend chosen{f' (CANN found at {home})' if home else ''} but MindSpore's Ascend plugin did not load: "
            f"{reason}. MindSpore 2.10 accepts CANN {', '.join(ACCEPTED_CANN_VERSIONS)}; source CANN's set_env.sh "
            "first, or choose CPU explicitly (--device_target CPU or DEVICE_TARGET=CPU)"
        )
    raise KitError(
        f"GPU chosen but MindSpore's GPU plugin did not load: {reason}. MindSpore 2.10 needs {GPU_REQUIREMENTS}"
    )


_configured = {}


def setup_device(device_target=None):
    """Point MindSpore at the device (device id from $DEVICE_ID) once per process, in PyNative mode (MindSpore's
    default: the kit compiles its own graphs with ms.jit); returns the device name."""
    target = resolve_device(device_target)
    if _configured:
        if _configured["target"] != target:
            raise KitError(f"this process already runs on {_configured['target']}; cannot switch to {target}")
        return target
    require_backend(target)
    _set_host_blocking(target == "CPU")  # before the first op, which is when MindSpore reads it
    device_id = int(os.environ.get("DEVICE_ID", "0"))
    if target == "CPU":
        ms.set_device("CPU")
    else:
        ms.set_device(target, device_id)
    _configured["target"] = target
    return target


# ---- precision: what float32 work runs in, chip by chip -------------------------------------------------------
# Ascend's precision modes and what they do to convolutions (MindSpore's op_precision.precision_mode documentation;
# CANN's precision_mode text). Atlas training cards (910A, "classic" in MindSpore's SoC traits) have a float16-only
# Cube unit: convolutions run in float16 whatever the mode, and their chip default is allow_fp32_to_fp16. Atlas A2
# and later (910B, ...) default to must_keep_origin_dtype with HF32 convolutions (float32's exponent range, a
# shorter mantissa: conv_allow_hf32 is on by default, op_precision.py), and compute float32 when HF32 is switched off.
FLOAT32_PRECISION_MODES = ("must_keep_origin_dtype", "force_fp32")  # with HF32 off: float32 convolutions on A2
BFLOAT16_PRECISION_MODES = ("allow_fp32_to_bf16", "allow_mix_precision_bf16")
CHIP_DEFAULT_MODE = {"910A": "allow_fp32_to_fp16", "A2": "must_keep_origin_dtype"}
# The kit's own fixed scale for float16 convolutions under O0 (the MindSpore ModelZoo EDSR uses none under O0, and
# 1000 only with its float16 O2/O3 default). L1 gradients are about 1e-6 to 2e-5 per element (1/N of the batch's
# pixels), inside float16's subnormal range (normal from 6.1e-5): scaled by 1024 they sit at 1e-3 to 2e-2, far from
# overflow. A power of two is exact, so unscaling restores the float32 gradient bit for bit.
FLOAT16_CONV_LOSS_SCALE = 1024.0
DYNAMIC_SCALE_START, DYNAMIC_SCALE_WINDOW = 2.0**16, 1000


def ascend_chip():
    """'910A' (Atlas training series, MindSpore's "classic" SoC line) or 'A2' (910B and later), with the SoC name
    MindSpore reports; read after the device is set, with the test MindSpore's own amp.py uses."""
    from mindspore._c_expression import MSContext

    context = MSContext.get_instance()
    classic = bool(context.ascend_soc_supports_feature("amp_loss_scale_train_classic_target"))
    return ("910A" if classic else "A2"), str(context.get_ascend_soc_version())


def precision_plan(device, chip=None, precision_mode="", amp_level="O0", loss_scale=0.0):
    """What the convolutions compute in and which loss scale that needs: a dict for run.json, or a KitError for a
    combination the chip cannot do. `chip`: ascend_chip()'s family on Ascend. `loss_scale`: the option (0 = the
    kit chooses). Pure: the decision table, tested without hardware."""
    plan = {"device": device, "chip": chip if device == "Ascend" else None, "precision_mode": None}
    if device == "Ascend":
        if chip == "910A" and precision_mode in FLOAT32_PRECISION_MODES + BFLOAT16_PRECISION_MODES:
            raise KitError(
                f"precision_mode {precision_mode} on an Atlas training card (910A): its Cube unit computes "
                "convolutions in float16 only, so they cannot run in float32 or bfloat16 there; train with the chip's "
                "default (float16 convolutions under a fixed loss scale of 1024) or amp_level O1-O3, or use an Atlas "
                "A2 card (910B) for float32 convolutions"
            )
        mode = precision_mode or CHIP_DEFAULT_MODE[chip]
        plan["precision_mode"] = mode
        if chip == "910A":
            convs = "float16 (910A Cube unit)"
        elif mode in FLOAT32_PRECISION_MODES:
            convs = "float32" if precision_mode else "HF32 (chip default; float32 with precision_mode " + mode + ")"
        elif mode in BFLOAT16_PRECISION_MODES:
            convs = "bfloat16"
        else:
            convs = "float16"
    elif device == "GPU":
        convs = "TF32 on Ampere and newer (MindSpore's conv_allow_tf32 default), float32 before"
    else:
        convs = "float32"
    if amp_level != "O0":
        convs = f"float16 (amp_level {amp_level})"
    plan["convolutions"] = convs
    if loss_scale > 0:
        plan["loss_scale"], plan["loss_scale_reason"] = float(loss_scale), "the loss_scale option"
    elif amp_level != "O0":
        plan["loss_scale"] = "dynamic"
        plan["loss_scale_reason"] = (
            f"amp_level {amp_level}: float16 activations; from {DYNAMIC_SCALE_START:g}, halved on overflow, "
            f"doubled after {DYNAMIC_SCALE_WINDOW} good steps"
        )
    elif convs.startswith("float16"):
        plan["loss_scale"] = FLOAT16_CONV_LOSS_SCALE
        plan["loss_scale_reason"] = (
            "O0 with float16 convolutions: L1 gradients (1e-6 to 2e-5) would be float16 subnormals; x1024 lifts them"
        )
    else:
        plan["loss_scale"] = 1.0
        plan["loss_scale_reason"] = f"O0 with {convs.split(' (')[0]} convolutions: float32's exponent range, no scale"
    return plan


def configure_precision(device, precision_mode="", deterministic=False, amp_level="O0", loss_scale=0.0):
    """Set what the device computes float32 work in, and whether runs repeat bit for bit; returns the record
    run.json keeps under "precision" (`precision_plan`'s, with the mode read back from MindSpore on Ascend).

    must_keep_origin_dtype and force_fp32 also switch HF32 convolutions and matmuls off on A2, so O0 really is
    float32 there. CPU: deterministic always (the kit's kernels and MindSpore's CPU ops are), which is what makes
    resume bit-exact."""
    if device != "Ascend" and precision_mode:
        raise KitError(f"precision_mode {precision_mode!r} is a CANN setting: it applies on Ascend only, not {device}")
    chip = soc = None
    if device == "Ascend":
        chip, soc = ascend_chip()
    record = precision_plan(device, chip, precision_mode, amp_level, loss_scale)
    if device == "Ascend":
        from mindspore._c_expression import AscendOpPrecisionConf
        from mindspore.device_context.ascend import op_precision

        if precision_mode:
            op_precision.precision_mode(precision_mode)
            if precision_mode in FLOAT32_PRECISION_MODES:
                op_precision.conv_allow_hf32(False)
                op_precision.matmul_allow_hf32(False)
        in_force = AscendOpPrecisionConf.get_instance().precision_mode()
        record["soc"] = soc
        record["precision_mode"] = in_force or f"{record['precision_mode']} (chip default)"
    record["deterministic"] = bool(deterministic or device == "CPU")
    if record["deterministic"] and not _configured.get("deterministic"):
        ms.set_deterministic(True)  # once per process, and before init() so collectives are deterministic too
        _configured["deterministic"] = True
    record["deterministic"] = bool(_configured.get("deterministic"))
    return record


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
