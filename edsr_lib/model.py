"""The EDSR and MDSR networks (Lim et al., CVPR-W 2017) exactly as published in EDSR-PyTorch.

Parameter names mirror the published state-dict keys (`head.0.weight`, `body.3.body.2.bias`, `tail.0.0.weight`,
MDSR's `pre_process.1.0.body.2.weight`, `upsample.2.2.bias`, ...), so a published checkpoint maps one to one.
Input and output are float NCHW on the [0, rgb_range] scale.
"""

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from .backend import Parameter, Tensor, ms, nn, ops
from .kernels.conv import FastConv2d, make_conv
from .errors import KitError

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)

PRESETS: dict[str, dict] = {
    "baseline": dict(n_resblocks=16, n_feats=64, res_scale=1.0),
    "paper": dict(n_resblocks=32, n_feats=256, res_scale=0.1),
    "mdsr_baseline": dict(model="MDSR", n_resblocks=16, n_feats=64, res_scale=1.0),
    "mdsr": dict(model="MDSR", n_resblocks=80, n_feats=64, res_scale=1.0),
}
MODELS = ("EDSR", "MDSR")
# The published MDSR's scales, in the order of its pre_process/upsample branches.
MDSR_SCALES = (2, 3, 4)


def parse_scales(scale):
    """2, "2" or "2+3+4" (EDSR-PyTorch's syntax for several scales) -> a tuple of positive ints."""
    if isinstance(scale, (tuple, list)):
        parts = list(scale)
    else:
        parts = str(scale).replace(" ", "").split("+")
    try:
        values = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise KitError(f"scale must be a positive integer or several joined by '+' (2+3+4), got {scale!r}") from None
    for value in values:
        upsampling_factors(value)  # validates
    if not values or len(set(values)) != len(values):
        raise KitError(f"scale {scale!r}: give each scale once, e.g. 2+3+4")
    return values


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint must record to rebuild its network.

    An MDSR holds one branch per entry of `scales`; its `scale` is the one it upsamples by when used as a
    single-scale network (`MDSR.at_scale`), the first of `scales` by default. An EDSR has `scales` = (scale,).
    """

    scale: int = 2
    n_resblocks: int = 16
    n_feats: int = 64
    res_scale: float = 1.0
    rgb_range: float = 255.0
    n_colors: int = 3
    model: str = "EDSR"
    scales: tuple = ()

    def __post_init__(self):
        upsampling_factors(self.scale)  # validates
        model = str(self.model).upper()
        if model not in MODELS:
            raise KitError(f"model {self.model!r} is not supported; choose one of {', '.join(MODELS)}")
        object.__setattr__(self, "model", model)
        scales = parse_scales(self.scales) if self.scales else (int(self.scale),)
        if model == "EDSR" and scales != (self.scale,):
            raise KitError(f"an EDSR has one scale (x{self.scale}); several scales ({self.scales}) need MDSR")
        if self.scale not in scales:
            raise KitError(f"scale {self.scale} is not one of the network's scales {scales}")
        object.__setattr__(self, "scales", scales)
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
    def from_preset(cls, preset, scale=None, **overrides):
        """A published configuration: baseline or paper (EDSR, one `scale`), mdsr_baseline or mdsr (scales 2, 3
        and 4 unless `scale` says otherwise, e.g. "2+3+4")."""
        if preset not in PRESETS:
            raise KitError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
        values = {**PRESETS[preset], **overrides}
        if values.get("model", "EDSR") == "MDSR":
            scales = parse_scales(scale) if scale is not None else MDSR_SCALES
            return cls(scale=scales[0], scales=scales, **values)
        return cls(scale=2 if scale is None else scale, **values)

    @classmethod
    def from_dict(cls, values):
        """The inverse of to_dict; a record without `model` (kit checkpoints before MDSR) is an EDSR."""
        return cls(**{k: values[k] for k in asdict(cls()) if k in values})

    def to_dict(self):
        values = asdict(self)
        values["scales"] = list(self.scales)
        return values

    @property
    def is_multiscale(self):
        return self.model == "MDSR"

    @property
    def name(self):
        """'EDSR x2' or 'MDSR x2+3+4': how logs, titles and file names call the network."""
        return f"{self.model} x{'+'.join(map(str, self.scales))}"

    def at_scale(self, scale):
        """The same network used at one of its scales (an EDSR at its own scale only)."""
        if scale not in self.scales:
            raise KitError(f"{self.name} has no x{scale} branch")
        return replace(self, scale=int(scale))

    @property
    def receptive_radius(self):
        """LR pixels beyond which an input pixel cannot change an output pixel (used by exact tiling)."""
        stages = len(upsampling_factors(self.scale))
        # head + 2 per block + body end + first upsampler conv at LR resolution; each later conv (other
        # upsampler convs, tail.1) reaches less than one LR pixel. MDSR adds two 5x5 ResBlocks (2 pixels per conv).
        return 2 * self.n_resblocks + 3 + stages + (8 if self.is_multiscale else 0)


# Far above the published networks (paper: 32 blocks, 256 features; MDSR: 80 blocks) and small enough that a
# network a hostile or mistyped file asks for cannot take the machine's memory; allow_large_model lifts them.
MAX_RESBLOCKS, MAX_FEATS, MAX_SCALE = 256, 1024, 16


def check_size(arch, allow_large_model=False):
    """Refuse a network beyond the documented bounds before building it (unless allow_large_model)."""
    if max(arch.scales) > MAX_SCALE:
        raise KitError(f"scale {max(arch.scales)} is above the supported {MAX_SCALE}")
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
    """Frozen 1x1 convolution (EDSR-PyTorch's layer and parameter names) adding or subtracting rgb_range * DIV2K mean
    (std 1)."""

    def __init__(self, rgb_range, sign, n_colors=3):
        super().__init__()
        weight, bias = mean_shift_values(rgb_range, sign, n_colors)
        self.weight = Parameter(Tensor(weight), name="weight", requires_grad=False)
        self.bias = Parameter(Tensor(bias), name="bias", requires_grad=False)
        self.n_colors, self.eye = n_colors, Tensor(np.eye(n_colors, dtype=np.float32))

    def construct(self, x):
        # Always float32: under mixed precision the tail hands over float16, and graph-mode O2 casts parameters.
        # Elementwise (x times the weight's diagonal, plus the bias) rather than the 1x1 convolution it stands for:
        # on 910A every convolution runs on the float16 Cube unit, which would round 0-255 pixels to 1/8 of a level.
        # The weight is the identity (std 1; the kit writes it itself for converted files), so both are exact.
        n = self.n_colors
        scale = (self.weight.astype(ms.float32).reshape(n, n) * self.eye).sum(1).reshape(1, n, 1, 1)  # the diagonal
        return x.astype(ms.float32) * scale + self.bias.astype(ms.float32).reshape(1, n, 1, 1)


class ResBlock(nn.Cell):
    """conv -> ReLU -> conv, scaled by res_scale, plus the input; no batch norm, no ReLU after the sum."""

    def __init__(self, n_feats, res_scale, conv_kernel="auto", kernel_size=3):
        super().__init__()
        self.body = nn.SequentialCell(
            [
                make_conv(n_feats, n_feats, kernel_size, kernel=conv_kernel),
                nn.ReLU(),
                make_conv(n_feats, n_feats, kernel_size, kernel=conv_kernel),
            ]
        )
        self.res_scale = float(res_scale)
        # The kit's CPU convolution runs the block as two ops (conv+ReLU, conv*res_scale+x) instead of five in
        # training, and as one op in inference.
        self.fused = isinstance(self.body[0], FastConv2d) and isinstance(self.body[2], FastConv2d)
        self.res_scale_tensor = Tensor([self.res_scale], ms.float32)

    def construct(self, x):
        if self.fused and not self.training:
            first, second = self.body[0], self.body[2]
            return first.block(x, first.weight, first.bias, second.weight, second.bias, self.res_scale_tensor)
        if self.fused:
            return self.body[2].residual(self.body[0].relu(x), x, self.res_scale_tensor)
        res = self.body(x)
        if self.res_scale != 1.0:
            res = res * self.res_scale
        return res + x


class Upsampler(nn.SequentialCell):
    """[conv, PixelShuffle] per factor (the published `tail.0` layout). In inference, on the kit's Winograd kernel,
    each pair is one op that writes the conv's output already shuffled, so the unshuffled tensor (the largest of the
    network, r^2 n_feats channels) is never stored."""

    def __init__(self, scale, n_feats, conv_kernel):
        layers = []
        for factor in upsampling_factors(scale):
            layers += [make_conv(n_feats, factor * factor * n_feats, kernel=conv_kernel), nn.PixelShuffle(factor)]
        super().__init__(layers)
        self.factors = tuple(upsampling_factors(scale))
        fused = [
            layers[2 * i].shuffled(f) if isinstance(layers[2 * i], FastConv2d) else None
            for i, f in enumerate(self.factors)
        ]
        self.convs = tuple(layers[0::2])
        self.fused_ops = tuple(fused) if None not in fused else ()

    def construct(self, x):
        if self.fused_ops and not self.training:
            for op, conv in zip(self.fused_ops, self.convs):
                x = op(x, conv.weight, conv.bias)
            return x
        return super().construct(x)


def _upsampler(scale, n_feats, conv_kernel):
    return Upsampler(scale, n_feats, conv_kernel)


class EDSR(nn.Cell):
    """sub_mean -> head -> body (+ head output) -> tail -> add_mean."""

    def __init__(self, arch: Architecture, conv_kernel="auto"):
        super().__init__()
        self.arch = arch
        k = conv_kernel
        self.sub_mean = MeanShift(arch.rgb_range, -1, arch.n_colors)
        self.head = nn.SequentialCell([make_conv(arch.n_colors, arch.n_feats, kernel=k)])
        self.body = _body(arch, k)
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

    def at_scale(self, scale):
        """The network for `scale`: itself (an EDSR has one scale)."""
        self.arch.at_scale(scale)  # refuses another scale
        return self


def _body(arch, conv_kernel):
    blocks = [ResBlock(arch.n_feats, arch.res_scale, conv_kernel) for _ in range(arch.n_resblocks)]
    return nn.SequentialCell(blocks + [make_conv(arch.n_feats, arch.n_feats, kernel=conv_kernel)])


class MDSR(nn.Cell):
    """sub_mean -> head -> pre_process[s] -> body (+ its input) -> upsample[s] -> tail -> add_mean, with one
    pre_process and upsample branch per scale; call it as `network(x, scale_index)`, or use `at_scale(s)`, which
    behaves as a single-scale EDSR (inference, tiling, evaluation, export) and shares the weights."""

    def __init__(self, arch: Architecture, conv_kernel="auto"):
        super().__init__()
        self.arch = arch
        k, feats = conv_kernel, arch.n_feats
        self.sub_mean = MeanShift(arch.rgb_range, -1, arch.n_colors)
        self.head = nn.SequentialCell([make_conv(arch.n_colors, feats, kernel=k)])
        self.pre_process = nn.CellList(
            [
                nn.SequentialCell([ResBlock(feats, 1.0, k, kernel_size=5), ResBlock(feats, 1.0, k, kernel_size=5)])
                for _ in arch.scales
            ]
        )
        self.body = _body(arch, k)
        self.upsample = nn.CellList([_upsampler(s, feats, k) for s in arch.scales])
        self.tail = nn.SequentialCell([make_conv(feats, arch.n_colors, kernel=k)])
        self.add_mean = MeanShift(arch.rgb_range, +1, arch.n_colors)
        self._views: dict = {}

    def construct(self, x, scale_index=0):
        x = self.pre_process[scale_index](self.head(self.sub_mean(x)))
        res = self.body(x) + x
        return self.add_mean(self.tail(self.upsample[scale_index](res)))

    def at_scale(self, scale):
        """The network at one of its scales (kept, so its compiled graph is reused)."""
        if scale not in self._views:
            self._views[scale] = MDSRAtScale(self, scale)
        return self._views[scale]


class MDSRAtScale(nn.Cell):
    """An MDSR used at one scale, with an EDSR's interface (`arch.scale`, `forward_array`); same parameters."""

    def __init__(self, network, scale):
        super().__init__(auto_prefix=False)  # the parameters keep the published names
        self.network, self.arch = network, network.arch.at_scale(scale)
        self.scale_index = network.arch.scales.index(scale)
        self._graph = None

    def construct(self, x):
        return self.network(x, self.scale_index)

    forward_array = EDSR.forward_array

    def at_scale(self, scale):
        return self.network.at_scale(scale)


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


def build_model(arch: Architecture, conv_kernel: str = "auto", allow_large_model: bool = False) -> "EDSR | MDSR":
    """The EDSR or MDSR `arch` describes. conv_kernel: auto (the kit's fast convolution on CPU, MindSpore's Conv2d
    elsewhere), fast, direct, winograd (`conv.make_conv`) or stock. Networks beyond `check_size`'s limits need
    allow_large_model."""
    network = MDSR if arch.is_multiscale else EDSR
    return network(check_size(arch, allow_large_model), conv_kernel)


def count_parameters(model: nn.Cell, trainable_only: bool = True) -> int:
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
        raise KitError(f"checkpoint does not fit {model.arch.model} {model.arch.to_dict()}: " + "; ".join(problems))
    for name, param in params.items():
        if name not in skipped:
            # In place: a graph compiled earlier (forward_array, the training step) keeps reading the tensor it was
            # compiled with, so set_data() would leave it running the old weights.
            ops.assign(param, Tensor(np.ascontiguousarray(weights[name], dtype=np.float32)))
    return sorted(skipped)
