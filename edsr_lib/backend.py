"""MindSpore, imported after the process environment it reads when it loads: the only module that imports
MindSpore at module level. Every other kit module takes MindSpore from here (`from .backend import ms, nn, ops`),
so no import order can load it before the environment is set (tests/test_runtime.py checks the rule).

The environment variables the kit sets, and why (a value the user already exported wins):
- MS_DEV_HOST_BLOCKING_RUN, CPU runs only: without it the host thread busy-waits for every op launched from Python
  and takes one of two cores from the kernels (op by op much slower: docs/benchmarks.md). On Ascend and GPU the
  host must keep queueing work while the device runs, so it must not be set there. MindSpore reads it at the first
  op launched, not at import (set after `import mindspore` and before the first op it applies), so
  runtime.setup_device sets or clears it once the device is chosen; the guess here only covers ops a caller runs
  before choosing a device.
- ONEDNN_MAX_CPU_ISA, read when MindSpore loads, only where the kit's convolution is not built (or not built yet, in
  which case the process that builds it runs it capped; later ones find it built): on AVX-512 CPUs MindSpore's stock
  Conv2d pushes oneDNN into its reference loops (orders of magnitude slower); capping the ISA at AVX2 restores its
  JIT kernels. The kit's kernel lets oneDNN pick its layouts, so it needs no cap and keeps AVX-512. No effect on
  Ascend. Exported MINDIR files always run MindSpore's stock Conv2d: where this process keeps AVX-512,
  export.ExportedModel runs them in a child process started with STOCK_CONV_ENVIRONMENT.
"""

import functools
import os
import sys
import warnings

from .kernels import build as native  # imports no MindSpore

# The kit's own CPU convolution as the cache holds it: built, known not to build (why), or not tried yet.
# Nothing is built here: `python -m edsr_lib.kernels build`, or the first CPU convolution (fast_conv_library).
_CACHED_LIBRARY, _CACHED_REASON = native.find_library()

HOST_BLOCKING = {"MS_DEV_HOST_BLOCKING_RUN": "1"}
STOCK_CONV_ENVIRONMENT = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
_USER_ENVIRONMENT = {k for k in (*HOST_BLOCKING, *STOCK_CONV_ENVIRONMENT) if k in os.environ}


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


def kit_environment():
    """The variables (above) this process gets before MindSpore loads."""
    environment = dict(HOST_BLOCKING) if _expects_cpu() else {}
    if _CACHED_LIBRARY is None:
        environment.update(STOCK_CONV_ENVIRONMENT)
    return environment


def set_host_blocking(on_cpu):
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
        "`python -m edsr_lib.kernels build` does it ahead)",
        file=sys.stderr,
    )
    return native.build()


def _apply_environment():
    missing = {k: v for k, v in kit_environment().items() if k not in os.environ}
    too_late = {k: v for k, v in missing.items() if k in STOCK_CONV_ENVIRONMENT}  # read at load, not at first op
    if too_late and "mindspore" in sys.modules:
        warnings.warn(
            "mindspore was imported before edsr_lib, so these settings cannot apply: "
            + ", ".join(f"{k}={v}" for k, v in too_late.items())
            + ". Import edsr_lib's modules first (CPU runs may be much slower).",
            stacklevel=4,
        )
    for key, value in missing.items():
        os.environ[key] = value


_apply_environment()

import mindspore as ms  # noqa: E402  (must follow _apply_environment)
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops  # noqa: E402

__all__ = ["Parameter", "ParameterTuple", "Tensor", "ms", "nn", "ops"]
