"""The EDSR network (Lim et al., CVPR-W 2017) exactly as published in EDSR-PyTorch.

Parameter names mirror the published state-dict keys (`head.0.weight`, `body.3.body.2.bias`, `tail.0.0.weight`,
...), so a published checkpoint maps one to one. Input and output are float NCHW on the [0, rgb_range] scale.
"""

import math
from dataclasses import asdict, dataclass

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .conv import FastConv2d, make_conv
from .errors import KitError

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)

PRESETS = {
    "baseline": dict(n_resblocks=16, n_feats=64, res_scale=1.0),
    "paper": dict(n_resblocks=32, n_feats=256, res_scale=0.1),
}


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint must record to rebuild its network."""

    scale: int = 2
    n_resblocks: int = 16
    n_feats: int = 64
    res_scale: float = 1.0
    rgb_range: float = 255.0
    n_colors: int = 3

    def __post_init__(self):
        upsampling_factors(self.scale)  # validates
        counts = (self.n_resblocks, self.n_feats, self.n_colors)
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in counts):
            raise KitError(f"invalid architecture {self}: blocks, features and colours must be integers")
        reals = (self.res_scale, self.rgb_range)
        if any(
            isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) or v <= 0
            for v in reals
        ):
            raise KitError(f"invalid architecture {self}: res_scale and rgb_range must be finite and positive")
        if self.n_resblocks < 0 or self.n_feats < 1 or self.n_colors < 1:
            raise KitError(f"invalid architecture {self}")

    @classmethod
    def from_preset(cls, preset, scale, **overrides):
        if preset not in PRESETS:
            raise KitError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return cls(scale=scale, **{**PRESETS[preset], **overrides})

    @classmethod
    def from_dict(cls, values):
        return cls(**{k: values[k] for k in asdict(cls()) if k in values})

    def to_dict(self):
        return asdict(self)

    @property
    def receptive_radius(self):
        """LR pixels beyond which an input pixel cannot change an output pixel (used by exact tiling)."""
        stages = len(upsampling_factors(self.scale))
        # head + 2 per block + body end + first upsampler conv at LR resolution; each later conv (other
        # upsampler convs, tail.1) reaches less than one LR pixel.
        return 2 * self.n_resblocks + 3 + stages


# Far above the published networks (paper: 32 blocks, 256 features; MDSR: 80 blocks) and small enough that a
# network a hostile or mistyped file asks for cannot take the machine's memory; allow_large_model lifts them.
MAX_RESBLOCKS, MAX_FEATS, MAX_SCALE = 256, 1024, 16


def check_size(arch, allow_large_model=False):
    """Refuse a network beyond the documented bounds before building it (unless allow_large_model)."""
    if arch.scale > MAX_SCALE:
        raise KitError(f"scale {arch.scale} is above the supported {MAX_SCALE}")
    if not allow_large_model and (arch.n_resblocks > MAX_RESBLOCKS or arch.n_feats > MAX_FEATS):
        raise KitError(
            f"a network of {arch.n_resblocks} blocks and {arch.n_feats} features is beyond the limits "
            f"({MAX_RESBLOCKS} blocks, {MAX_FEATS} features); pass allow_large_model to build it anyway"
        )
    return arch


def upsampling_factors(scale):
    """Pixel-shuffle factors for `scale`: powers of 2 use x2 stages, powers of 3 use x3 stages (as published)."""
    if not isinstance(scale, (int, np.integer)) or scale < 1:
        raise KitError(f"scale must be a positive integer, got {scale!r}")
    factors, rest = [], int(scale)
    for f in (2, 3):
        while rest % f == 0:
            factors.append(f)
            rest //= f
    if rest != 1 or not factors:
        raise KitError(f"scale {scale} is not supported: use 2, 3, 4 or another product of 2s and 3s")
    return factors


def mean_shift_values(rgb_range, sign, n_colors=3):
    """(weight, bias) of the frozen MeanShift: identity 1x1 conv, bias sign * rgb_range * DIV2K mean (std 1)."""
    mean = np.array(DIV2K_RGB_MEAN if n_colors == 3 else [np.mean(DIV2K_RGB_MEAN)] * n_colors, np.float32)
    eye = np.eye(n_colors, dtype=np.float32).reshape(n_colors, n_colors, 1, 1)
    return eye, np.float32(sign * rgb_range) * mean


class MeanShift(nn.Cell):
    """Frozen 1x1 convolution adding or subtracting rgb_range * DIV2K mean (std 1), as in EDSR-PyTorch."""

    def __init__(self, rgb_range, sign, n_colors=3):
        super().__init__()
        weight, bias = mean_shift_values(rgb_range, sign, n_colors)
        self.weight = Parameter(Tensor(weight), name="weight", requires_grad=False)
        self.bias = Parameter(Tensor(bias), name="bias", requires_grad=False)

    def construct(self, x):
        # Always float32: under mixed precision the tail hands over float16, and graph-mode O2 casts parameters.
        return ops.conv2d(x.astype(ms.float32), self.weight.astype(ms.float32), self.bias.astype(ms.float32))


class ResBlock(nn.Cell):
    """conv -> ReLU -> conv, scaled by res_scale, plus the input; no batch norm, no ReLU after the sum."""

    def __init__(self, n_feats, res_scale, conv_kernel="auto"):
        super().__init__()
        self.body = nn.SequentialCell(
            [
                make_conv(n_feats, n_feats, kernel=conv_kernel),
                nn.ReLU(),
                make_conv(n_feats, n_feats, kernel=conv_kernel),
            ]
        )
        self.res_scale = float(res_scale)
        # The kit's CPU convolution runs the block as two ops (conv+ReLU, conv*res_scale+x) instead of five.
        self.fused = isinstance(self.body[0], FastConv2d) and isinstance(self.body[2], FastConv2d)
        self.res_scale_tensor = Tensor([self.res_scale], ms.float32)

    def construct(self, x):
        if self.fused:
            return self.body[2].residual(self.body[0].relu(x), x, self.res_scale_tensor)
        res = self.body(x)
        if self.res_scale != 1.0:
            res = res * self.res_scale
        return res + x


def _upsampler(scale, n_feats, conv_kernel):
    layers = []
    for factor in upsampling_factors(scale):
        layers += [make_conv(n_feats, factor * factor * n_feats, kernel=conv_kernel), nn.PixelShuffle(factor)]
    return nn.SequentialCell(layers)


class EDSR(nn.Cell):
    """sub_mean -> head -> body (+ head output) -> tail -> add_mean."""

    def __init__(self, arch: Architecture, conv_kernel="auto"):
        super().__init__()
        self.arch = arch
        k = conv_kernel
        self.sub_mean = MeanShift(arch.rgb_range, -1, arch.n_colors)
        self.head = nn.SequentialCell([make_conv(arch.n_colors, arch.n_feats, kernel=k)])
        blocks = [ResBlock(arch.n_feats, arch.res_scale, k) for _ in range(arch.n_resblocks)]
        self.body = nn.SequentialCell(blocks + [make_conv(arch.n_feats, arch.n_feats, kernel=k)])
        self.tail = nn.SequentialCell(
            [_upsampler(arch.scale, arch.n_feats, k), make_conv(arch.n_feats, arch.n_colors, kernel=k)]
        )
        self.add_mean = MeanShift(arch.rgb_range, +1, arch.n_colors)
        self._graph = None

    def construct(self, x):
        x = self.head(self.sub_mean(x))
        res = self.body(x) + x
        return self.add_mean(self.tail(res))

    def forward_array(self, x_nchw):
        """Output for a float32 NCHW numpy batch, as numpy (no gradient), through one graph for every size."""
        if self._graph is None:
            self._graph = compile_dynamic(self, self.arch.n_colors)
        return self._graph(Tensor(np.ascontiguousarray(x_nchw, dtype=np.float32))).asnumpy()


def compile_dynamic(function, n_colors, n_inputs=1):
    """`function` (a network, or a function of image batches) as one MindSpore graph whose inputs are declared
    [any batch, n_colors, any height, any width]: compiled at the first call, reused for every later size.

    Graphs compiled per size are never freed by MindSpore 2.10 (+60 MB each), and op by op the kit's CPU convolution
    competes with MindSpore's spinning runtime threads (docs/benchmarks.md). `MS_JIT=0` in the environment
    (MindSpore's own switch) runs it op by op, for debugging.
    """
    return ms.jit(_DynamicShapeGraph(function, n_colors, n_inputs))


class _DynamicShapeGraph(nn.Cell):
    def __init__(self, function, n_colors, n_inputs):
        super().__init__(auto_prefix=False)
        self.function = function
        self.set_inputs(*[Tensor(shape=[None, n_colors, None, None], dtype=ms.float32)] * n_inputs)

    def construct(self, *images):
        return self.function(*images)


def build_model(arch: Architecture, conv_kernel: str = "auto", allow_large_model: bool = False) -> "EDSR":
    """conv_kernel: auto (the kit's fast convolution on CPU, MindSpore's Conv2d elsewhere), fast or stock.
    Networks beyond `check_size`'s limits need allow_large_model."""
    return EDSR(check_size(arch, allow_large_model), conv_kernel)


def count_parameters(model, trainable_only=True):
    params = model.trainable_params() if trainable_only else model.get_parameters()
    return int(sum(math.prod(p.shape) for p in params))


def state_dict(model):
    """Parameter name -> float32 numpy array, in the model's order."""
    return {p.name: p.asnumpy() for p in model.get_parameters()}


def load_state(model, weights, skip_mismatched_tail=False):
    """Copy `weights` (name -> array) into `model`; every mismatch is named in the error.

    With `skip_mismatched_tail`, `tail.*` tensors whose shapes differ are left at their initial values, as the
    published recipe does when fine-tuning x3/x4 from x2. Returns the names that were skipped.
    """
    params = {p.name: p for p in model.get_parameters()}
    missing = [name for name in params if name not in weights]
    unexpected = [name for name in weights if name not in params]
    wrong_shape, skipped = [], []
    for name in params.keys() & weights.keys():
        expected, got = tuple(params[name].shape), tuple(np.shape(weights[name]))
        if expected != got:
            if skip_mismatched_tail and name.startswith("tail."):
                skipped.append(name)
            else:
                wrong_shape.append(f"{name} (checkpoint {got}, model {expected})")
    if skip_mismatched_tail:
        skipped += [n for n in missing if n.startswith("tail.")]
        unexpected = [n for n in unexpected if not n.startswith("tail.")]
        missing = [n for n in missing if not n.startswith("tail.")]
    problems = []
    if wrong_shape:
        problems.append("shape mismatch: " + ", ".join(sorted(wrong_shape)))
    if missing:
        problems.append("missing from checkpoint: " + ", ".join(sorted(missing)))
    if unexpected:
        problems.append("not in model: " + ", ".join(sorted(unexpected)))
    if problems:
        raise KitError(f"checkpoint does not fit EDSR {model.arch.to_dict()}: " + "; ".join(problems))
    for name, param in params.items():
        if name not in skipped:
            # In place: a graph compiled earlier (forward_array, the training step) keeps reading the tensor it was
            # compiled with, so set_data() would leave it running the old weights.
            ops.assign(param, Tensor(np.ascontiguousarray(weights[name], dtype=np.float32)))
    return sorted(skipped)
