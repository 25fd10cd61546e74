"""The network's convolution layer, kept in one swappable place.

Every 3x3 convolution in the model is made by `make_conv`. On CPU it is a oneDNN kernel of our own
(`src/`, built by `build.py`: Winograd F(4x4, 3x3) or F(2x2, 3x3), or oneDNN's direct
convolution) with its own backward pass, run inside MindSpore graphs with dynamic shapes (`model.compile_dynamic`:
inference and the training step): faster than PyTorch on the same CPU, where MindSpore's stock CPU Conv2d in the
same graphs is several times slower (figures and commands: docs/benchmarks.md). On Ascend and GPU,
in exports, and wherever that kernel cannot be built, it is the stock `nn.Conv2d`.
Parameters are always named, shaped and initialised as `nn.Conv2d` (`weight` [out, in, k, k], `bias`), so
checkpoints are interchangeable whatever kernel runs.
"""

import functools
import warnings


from ..backend import nn, ops
from ..errors import KitError
from ..runtime import current_device, fast_conv_library
from . import ALGORITHMS, CONV_ALGORITHMS
from .build import entry_point

# auto: the kit's CPU kernel on CPU (its algorithm chosen per layer, see `layer_algorithm`), stock elsewhere; fast:
# require the kit's kernel; direct / winograd (F(4x4, 3x3)) / winograd2x2 (F(2x2, 3x3)): the kit's kernel with that
# algorithm for 3x3 layers; stock: nn.Conv2d.
CONV_KERNELS = ("auto", "fast", *ALGORITHMS, "stock")
__all__ = ["CONV_ALGORITHMS", "CONV_KERNELS", "FastConv2d", "make_conv"]


def _registration(name, inputs, outputs):
    """CPU float32 registration. Naming the op this way is what lets MindSpore find the C++ `<func>InferShape`
    functions, which dynamic-shape graphs need (a Python out_shape cannot be re-run once shapes are known)."""
    info = ops.CustomRegOp(name)
    for index, input_name in enumerate(inputs):
        info = info.input(index, input_name)
    for index, output_name in enumerate(outputs):
        info = info.output(index, output_name)
    return info.dtype_format(*[ops.DataType.F32_Default] * (len(inputs) + len(outputs))).target("CPU").get_op_info()


class _FastKernels:
    """The library's entry points as MindSpore Custom ops, each forward op carrying its backward as its bprop.
    out_shape=None: output shapes come from the library's C++ infer functions."""

    def __init__(self, library, algorithm="direct"):
        # Winograd replaces the forward, backward-data and backward-weights convolutions.

        def custom(function, inputs, outputs, out_dtype, bprop=None):
            return ops.Custom(
                f"{library}:{function}",
                out_shape=None,
                out_dtype=out_dtype,
                func_type="aot",
                bprop=bprop,
                reg_info=_registration(f"edsr_{function}", inputs, outputs),
            )

        def named(operation):
            return entry_point(algorithm, operation)

        self.backward_data = custom(named("ConvBackwardData"), ["dy", "w"], ["dx"], lambda dy, w: dy)
        self.backward_weights = custom(
            named("ConvBackwardWeights"), ["x", "dy", "w"], ["dw", "db"], lambda x, dy, w: (x, x)
        )

        def conv_grads(x, w, dy):
            dw, db = self.backward_weights(x, dy, w)
            return self.backward_data(dy, w), dw, db

        self.conv_grads, self.custom, self.algorithm = conv_grads, custom, algorithm
        # MindSpore's own ReLU backward kernel: select(out > 0, ...) is several times slower on CPU and was a large
        # share of a baseline training step (docs/benchmarks.md, "ReluGrad")
        from mindspore.ops.operations._grad_ops import ReluGrad  # no public name; MindSpore is loaded (backend)

        relu_grad = ReluGrad()

        def forward_bprop(x, w, b, out, dout):
            return conv_grads(x, w, dout)

        def relu_bprop(x, w, b, out, dout):
            return conv_grads(x, w, relu_grad(dout, out))

        def residual_bprop(x, w, b, skip, scale, out, dout):
            dx, dw, db = conv_grads(x, w, dout * scale)
            return dx, dw, db, dout, ops.zeros_like(scale)

        def block_bprop(x, w1, b1, w2, b2, scale, out, dout):
            # recomputes the intermediate: the Trainer's train mode runs the block as two ops instead (no recompute)
            mid = self.forward_relu(x, w1, b1)
            dmid, dw2, db2 = conv_grads(mid, w2, dout * scale)
            dx, dw1, db1 = conv_grads(x, w1, relu_grad(dmid, mid))
            return dx + dout, dw1, db1, dw2, db2, ops.zeros_like(scale)

        # A whole residual block in one op, for inference.
        self.block = custom(
            named("ResBlockForward"),
            ["x", "w1", "b1", "w2", "b2", "scale"],
            ["y"],
            lambda x, *rest: x,
            block_bprop,
        )
        self.forward = custom(named("ConvForward"), ["x", "w", "b"], ["y"], lambda x, w, b: x, forward_bprop)
        self.forward_relu = custom(named("ConvReluForward"), ["x", "w", "b"], ["y"], lambda x, w, b: x, relu_bprop)
        self.forward_residual = custom(
            named("ConvResidualForward"),
            ["x", "w", "b", "skip", "scale"],
            ["y"],
            lambda x, w, b, skip, scale: x,
            residual_bprop,
        )

    def shuffled(self, factor):
        """pixel_shuffle(conv(x), factor) as one op (Winograd kernels only), which never stores the conv's output."""

        def bprop(x, w, b, out, dout):
            return self.conv_grads(x, w, ops.pixel_unshuffle(dout, factor))

        return self.custom(
            entry_point(self.algorithm, "ConvShuffleForward"), ["x", "w", "b"], ["y"], lambda x, w, b: x, bprop
        )


@functools.lru_cache(maxsize=len(ALGORITHMS))
def _fast_kernels(algorithm="direct"):
    return _FastKernels(fast_conv_library()[0], algorithm)


def layer_algorithm(kernel, in_channels, out_channels, kernel_size):
    """The algorithm a layer runs on the kit's kernel: the one asked for (Winograd only for 3x3 filters); for auto
    and fast, Winograd F(4x4, 3x3) for 3x3 layers with at least 16 channels in and out (the RGB head and tail would
    pad 3 channels to 16), direct otherwise. F(2x2, 3x3) is never chosen by auto: `bench.py --layers` measures it
    slower than F(4x4, 3x3) on every EDSR layer, and F(4x4)'s error already keeps published outputs within one level
    (docs/benchmarks.md); it is there for users who want about half F(4x4)'s float32 error."""
    if kernel_size != 3 or kernel == "direct":
        return "direct"
    if kernel in ALGORITHMS:
        return kernel
    return "winograd" if min(in_channels, out_channels) >= WINOGRAD_MIN_CHANNELS else "direct"


WINOGRAD_MIN_CHANNELS = 16


@functools.lru_cache(maxsize=1)
def _warn_fallback_once():
    warnings.warn(
        f"fast CPU convolution unavailable ({fast_conv_library()[1]}); using MindSpore's Conv2d (slower "
        "training on CPU)",
        stacklevel=4,
    )


class FastConv2d(nn.Cell):
    """Stride 1, same padding, odd square kernel, float32, with bias, on the kit's oneDNN kernel."""

    def __init__(self, conv: nn.Conv2d, algorithm="direct"):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias  # nn.Conv2d's own parameters: same names and init
        self.algorithm = algorithm
        self.kernels = kernels = _fast_kernels(algorithm)
        self.conv2d, self.conv2d_relu, self.conv2d_residual, self.block = (
            kernels.forward,
            kernels.forward_relu,
            kernels.forward_residual,
            kernels.block,
        )

    @property
    def winograd(self):
        return self.algorithm != "direct"

    def construct(self, x):
        return self.conv2d(x, self.weight, self.bias)

    def shuffled(self, factor):
        """An op computing pixel_shuffle(conv(x), factor) in one call without storing the conv's output (Winograd
        only; the upsampler in inference); None where the kernel has no such form."""
        if not self.winograd or self.weight.shape[0] != factor * factor * self.weight.shape[1]:
            return None
        return self.kernels.shuffled(factor)

    def relu(self, x):
        """relu(conv(x)) in one op."""
        return self.conv2d_relu(x, self.weight, self.bias)

    def residual(self, x, skip, scale):
        """conv(x) * scale + skip in one op; scale is a float32 tensor of one element."""
        return self.conv2d_residual(x, self.weight, self.bias, skip, scale)


def make_conv(in_channels, out_channels, kernel_size=3, kernel="auto"):
    """Stride 1, 'same' zero padding, with bias: the only convolution EDSR uses.

    kernel: auto (the fast CPU kernel on CPU when available, else stock), fast (require it), direct, winograd or
    winograd2x2 (require it, with that algorithm for 3x3 layers), stock (nn.Conv2d).
    """
    if kernel not in CONV_KERNELS:
        raise KitError(f"conv kernel must be one of {', '.join(CONV_KERNELS)}, got {kernel!r}")
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=1, pad_mode="pad", padding=kernel_size // 2, has_bias=True
    )
    if kernel == "stock" or (kernel in ("auto", *ALGORITHMS) and current_device() != "CPU"):
        return conv  # the algorithms are the CPU kernel's; Ascend and GPU run MindSpore's own
    library, reason = fast_conv_library()
    if library is None:
        if kernel != "auto":
            raise KitError(f"the fast CPU convolution is unavailable: {reason}")
        _warn_fallback_once()
        return conv
    return FastConv2d(conv, layer_algorithm(kernel, in_channels, out_channels, kernel_size))
