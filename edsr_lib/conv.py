"""The network's convolution layer, kept in one swappable place.

Every 3x3 convolution in the model is made by `make_conv`. On CPU it is a oneDNN kernel of our own
(`csrc/onednn_conv.cpp`, built by `native.py`) with its own backward pass, run inside MindSpore graphs with dynamic
shapes (`model.EDSR.forward_array`, `trainer.GradientGraph`): within 1.1x of PyTorch on the same CPU, where
MindSpore's stock CPU Conv2d is 1.5-2x slower (docs/benchmarks.md). On Ascend and GPU, in exports, and wherever that
kernel cannot be built, it is the stock `nn.Conv2d`.
Parameters are always named, shaped and initialised as `nn.Conv2d` (`weight` [out, in, k, k], `bias`), so
checkpoints are interchangeable whatever kernel runs.
"""
import functools
import warnings

from mindspore import nn, ops
from mindspore.ops import CustomRegOp, DataType

from .errors import KitError
from .runtime import FAST_CONV_LIBRARY, FAST_CONV_UNAVAILABLE, current_device

CONV_KERNELS = ("auto", "fast", "stock")


def _registration(name, inputs, outputs):
    """CPU float32 registration. Naming the op this way is what lets MindSpore find the C++ `<func>InferShape`
    functions, which dynamic-shape graphs need (a Python out_shape cannot be re-run once shapes are known)."""
    info = CustomRegOp(name)
    for index, input_name in enumerate(inputs):
        info = info.input(index, input_name)
    for index, output_name in enumerate(outputs):
        info = info.output(index, output_name)
    return info.dtype_format(*[DataType.F32_Default] * (len(inputs) + len(outputs))).target("CPU").get_op_info()


class _FastKernels:
    """The three AOT entry points as MindSpore Custom ops; the forward op carries the backward as its bprop.
    out_shape=None: output shapes come from the library's C++ infer functions."""

    def __init__(self, library):
        self.backward_data = ops.Custom(
            f"{library}:ConvBackwardData", out_shape=None, out_dtype=lambda dy, w: dy, func_type="aot",
            reg_info=_registration("edsr_conv_backward_data", ["dy", "w"], ["dx"]))
        self.backward_weights = ops.Custom(
            f"{library}:ConvBackwardWeights", out_shape=None, out_dtype=lambda x, dy, w: (x, x), func_type="aot",
            reg_info=_registration("edsr_conv_backward_weights", ["x", "dy", "w"], ["dw", "db"]))

        def bprop(x, w, b, out, dout):
            dw, db = self.backward_weights(x, dout, w)
            return self.backward_data(dout, w), dw, db

        self.forward = ops.Custom(
            f"{library}:ConvForward", out_shape=None, out_dtype=lambda x, w, b: x, func_type="aot", bprop=bprop,
            reg_info=_registration("edsr_conv_forward", ["x", "w", "b"], ["y"]))


@functools.lru_cache(maxsize=1)
def _fast_kernels():
    return _FastKernels(FAST_CONV_LIBRARY)


@functools.lru_cache(maxsize=1)
def _warn_fallback_once():
    warnings.warn(f"fast CPU convolution unavailable ({FAST_CONV_UNAVAILABLE}); using MindSpore's Conv2d (slower "
                  "training on CPU)", stacklevel=4)


class FastConv2d(nn.Cell):
    """Stride 1, same padding, odd square kernel, float32, with bias, on the kit's oneDNN kernel."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias  # nn.Conv2d's own parameters: same names and init
        self.conv2d = _fast_kernels().forward

    def construct(self, x):
        return self.conv2d(x, self.weight, self.bias)


def make_conv(in_channels, out_channels, kernel_size=3, kernel="auto"):
    """Stride 1, 'same' zero padding, with bias: the only convolution EDSR uses.

    kernel: auto (the fast CPU kernel on CPU when available, else stock), fast (require it), stock (nn.Conv2d).
    """
    if kernel not in CONV_KERNELS:
        raise KitError(f"conv kernel must be one of {', '.join(CONV_KERNELS)}, got {kernel!r}")
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, pad_mode="pad", padding=kernel_size // 2,
                     has_bias=True)
    if kernel == "stock" or (kernel == "auto" and current_device() != "CPU"):
        return conv
    if FAST_CONV_LIBRARY is None:
        if kernel == "fast":
            raise KitError(f"the fast CPU convolution is unavailable: {FAST_CONV_UNAVAILABLE}")
        _warn_fallback_once()
        return conv
    return FastConv2d(conv)
