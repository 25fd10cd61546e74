"""Device selection, precision, the data-parallel group: what this process sets up in MindSpore, once.

The environment MindSpore reads when it loads is set by `backend`, through which this module imports it.
"""

import contextlib
import dataclasses
import logging
import os
import platform
from collections.abc import Mapping

from .kernels import build as native  # imports no MindSpore
from .backend import STOCK_CONV_ENVIRONMENT, cann_home, fast_conv_library, ms, set_host_blocking
from .errors import KitError

# CANN versions MindSpore 2.10's installation check accepts (mindspore/run_check/_check_version.py, AscendEnvChecker).
ACCEPTED_CANN_VERSIONS = ("8.2", "8.3", "8.5", "9.0", "9.1")

__all__ = ["STOCK_CONV_ENVIRONMENT", "cann_home", "fast_conv_library"]  # re-exported: where callers look for them


def stock_conv_needs_own_process():
    """True when MindSpore's stock CPU Conv2d would fall into oneDNN's reference loops in this process (an AVX-512
    CPU and no ISA cap, which the kit's own kernel prefers): far slower than in a process with the cap."""
    return (
        current_device() == "CPU" and "ONEDNN_MAX_CPU_ISA" not in os.environ and " avx512f" in native.cpu_description()
    )


@dataclasses.dataclass
class _ProcessState:
    """What this process has set up in MindSpore, which it can do once: the device, determinism, the group."""

    target: str | None = None
    deterministic: bool = False
    world: tuple | None = None


_process = _ProcessState()


@dataclasses.dataclass(frozen=True)
class LaunchEnvironment:
    """What a launcher told this process through its environment: the one reader of msrun's and the rank table's
    variables (MS_ROLE, RANK_TABLE_FILE, RANK_SIZE, RANK_ID or MS_NODE_ID, DEVICE_ID)."""

    role: str = ""
    rank_table_file: str = ""
    rank_size: int = 1
    rank_id: int = 0
    device_id: int = 0

    @classmethod
    def read(cls, environ=None):
        environ = os.environ if environ is None else environ
        return cls(
            role=environ.get("MS_ROLE", ""),
            rank_table_file=environ.get("RANK_TABLE_FILE", ""),
            rank_size=int(environ.get("RANK_SIZE") or 1),
            rank_id=int(environ.get("RANK_ID") or environ.get("MS_NODE_ID") or 0),
            device_id=int(environ.get("DEVICE_ID") or 0),
        )

    @property
    def distributed(self):
        """True when msrun (MS_ROLE) or an HCCL rank table with several ranks started this process."""
        return bool(self.role) or (bool(self.rank_table_file) and self.rank_size > 1)

    @property
    def scheduler(self):
        """msrun's scheduler process, which only joins the rendezvous."""
        return self.role == "MS_SCHED"


DEVICE_TARGETS = ("Ascend", "GPU", "CPU")
# What MindSpore 2.10's GPU plugin needs (its wheel's lib/plugin/libmindspore_gpu.so.11.1 and .11.6, readelf -d).
GPU_REQUIREMENTS = (
    "CUDA 11.1 or 11.6 with cuDNN 8 on the library path, and CUDA_HOME pointing to a toolkit whose bin/nvcc "
    "reports 11.x (MindSpore picks its plugin from it)"
)


def resolve_device(device_target: str | None = None, environ: Mapping[str, str] | None = None) -> str:
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


def setup_device(device_target: str | None = None) -> str:
    """Point MindSpore at the device (device id from $DEVICE_ID) once per process, in PyNative mode (MindSpore's
    default: the kit compiles its own graphs with ms.jit); returns the device name."""
    target = resolve_device(device_target)
    if _process.target:
        if _process.target != target:
            raise KitError(f"this process already runs on {_process.target}; cannot switch to {target}")
        return target
    require_backend(target)
    set_host_blocking(target == "CPU")  # before the first op, which is when MindSpore reads it
    device_id = LaunchEnvironment.read().device_id
    if target == "CPU":
        ms.set_device("CPU")
    else:
        ms.set_device(target, device_id)
    _process.target = target
    return target


# ---- precision: what float32 work runs in, chip by chip -------------------------------------------------------
# Ascend's precision modes and what they do to convolutions (MindSpore's op_precision.precision_mode documentation;
# CANN's precision_mode text). Atlas training cards (910A, "classic" in MindSpore's SoC traits) have a float16-only
# Cube unit: convolutions run in float16 whatever the mode, and their chip default is allow_fp32_to_fp16. Atlas A2
# and later (910B, ...) default to must_keep_origin_dtype with HF32 convolutions (float32's exponent range, a
# shorter mantissa: conv_allow_hf32 is on by default, op_precision.py), and compute float32 when HF32 is switched off.
# CANN's operator precision modes (mindspore.device_context.ascend.op_precision.precision_mode).
PRECISION_MODES = (
    "force_fp16",
    "allow_fp32_to_fp16",
    "allow_mix_precision",
    "must_keep_origin_dtype",
    "force_fp32",
    "allow_fp32_to_bf16",
    "allow_mix_precision_fp16",
    "allow_mix_precision_bf16",
)
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


def precision_plan(
    device: str, chip: str | None = None, precision_mode: str = "", amp_level: str = "O0", loss_scale: float = 0.0
) -> dict:
    """What the convolutions compute in and which loss scale that needs: a dict for run.json, or a KitError for a
    combination the chip cannot do. `chip`: ascend_chip()'s family on Ascend. `loss_scale`: the option (0 = the
    kit chooses). Pure: the decision table, tested without hardware."""
    plan: dict = {"device": device, "chip": chip if device == "Ascend" else None, "precision_mode": None}
    if device == "Ascend":
        if chip == "910A" and precision_mode in FLOAT32_PRECISION_MODES + BFLOAT16_PRECISION_MODES:
            raise KitError(
                f"precision_mode {precision_mode} on an Atlas training card (910A): its Cube unit computes "
                "convolutions in float16 only, so they cannot run in float32 or bfloat16 there; train with the chip's "
                "default (float16 convolutions under a fixed loss scale of 1024) or amp_level O1-O3, or use an Atlas "
                "A2 card (910B) for float32 convolutions"
            )
        mode = precision_mode or CHIP_DEFAULT_MODE[str(chip)]
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


def configure_precision(
    device: str, precision_mode: str = "", deterministic: bool = False, amp_level: str = "O0", loss_scale: float = 0.0
) -> dict:
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
    if record["deterministic"] and not _process.deterministic:
        ms.set_deterministic(True)  # once per process, and before init() so collectives are deterministic too
        _process.deterministic = True
    record["deterministic"] = _process.deterministic
    return record


def current_device():
    return _process.target or setup_device()


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


def versions():
    """The versions a run record keeps (run.json)."""
    import numpy
    import PIL

    from . import __version__

    return {
        "edsr_lib": __version__,
        "mindspore": ms.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def setup_summary() -> dict:
    """What a notebook's first cell prints: versions, the device, and which convolution runs on the CPU."""
    device = current_device()
    if device != "CPU":
        conv = f"MindSpore's {device} convolution"
    elif fast_conv_library()[0] is not None:
        conv = f"the kit's oneDNN kernel ({fast_conv_library()[0].name})"
    else:
        conv = f"MindSpore's Conv2d ({fast_conv_library()[1]})"
    return {**versions(), "device": device, "CPU cores": os.cpu_count(), "convolution": conv}


def launched_distributed():
    """True when msrun or an HCCL rank table with several ranks started this process (LaunchEnvironment)."""
    return LaunchEnvironment.read().distributed


def init_distributed(device_target: str | None = None) -> tuple[int, int]:
    """Join the data-parallel group when launched for it; returns (rank, world_size), (0, 1) otherwise.

    `init()` picks HCCL on Ascend, NCCL on GPU and mccl on CPU. Gradients are averaged over ranks.
    """
    setup_device(device_target)
    if not launched_distributed():
        return 0, 1
    if _process.world is None:
        from mindspore.communication import get_group_size, get_rank, init

        init()
        ms.set_auto_parallel_context(
            parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=get_group_size()
        )
        _process.world = (get_rank(), get_group_size())
    return _process.world
