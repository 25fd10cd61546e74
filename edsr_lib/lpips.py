"""LPIPS v0.1 (Zhang et al., CVPR 2018) as the reference `lpips` package computes it, in MindSpore (no torch).

distance = sum over five feature stages of the spatial mean of w_l . (f0_l - f1_l)^2, where f_l are a trunk's
ReLU features (torchvision's ImageNet AlexNet or VGG16) normalised to unit length over channels, and w_l the
package's learned 1x1 linear heads. Inputs are RGB scaled to [-1, 1] (the package's `im2tensor`), then shifted and
scaled by its ScalingLayer. Lower is more similar; d(x, x) = 0.

Large images are scored in tiles whose crops overlap by more than the trunk's receptive field, aligned to its
total stride, so every feature position is computed exactly as on the whole image (tests check tiled = whole) and
memory stays bounded by the tile size.
"""

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import ms, nn, ops
from .errors import KitError

# The package's ScalingLayer constants (ImageNet statistics in its [-1, 1] input range).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # lpips.normalize_tensor's

HEADS_DIR = Path(__file__).resolve().parent / "assets" / "lpips"  # BSD-2-Clause, see assets/NOTICE


@dataclass(frozen=True)
class Trunk:
    """One LPIPS trunk: torchvision's `features` layers in order, each ("conv", out_channels, kernel, stride, pad),
    ("relu",) or ("pool", kernel, stride); `taps`: the layer indices whose outputs are the five stages (lpips'
    slice ends). `weights`: its registry name; `heads`: (bundled file, SHA-256); `tile`: crop core side."""

    name: str
    layers: tuple
    taps: tuple
    weights: str
    heads: tuple
    tile: int

    def stage_channels(self):
        channels, out = [], 3
        for index, layer in enumerate(self.layers):
            out = layer[1] if layer[0] == "conv" else out
            if index in self.taps:
                channels.append(out)
        return channels

    def map_size(self, length):
        """Side of each stage's feature map for an input side of `length` (floor division, as torch)."""
        sizes = []
        for index, layer in enumerate(self.layers):
            if layer[0] == "conv":
                length = (length + 2 * layer[4] - layer[2]) // layer[3] + 1
            elif layer[0] == "pool":
                length = (length - layer[1]) // layer[2] + 1
            if index in self.taps:
                sizes.append(length)
        return sizes

    def strides(self):
        """Each stage's stride in input pixels."""
        strides, stride = [], 1
        for index, layer in enumerate(self.layers):
            if layer[0] in ("conv", "pool"):
                stride *= layer[3] if layer[0] == "conv" else layer[2]
            if index in self.taps:
                strides.append(stride)
        return strides


def _vgg16_layers():
    layers = []
    for block, (channels, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        if block:
            layers.append(("pool", 2, 2))
        for _ in range(convs):
            layers += [("conv", channels, 3, 1, 1), ("relu",)]
    return tuple(layers)


TRUNKS = {
    "alex": Trunk(
        "alex",
        (
            ("conv", 64, 11, 4, 2),
            ("relu",),
            ("pool", 3, 2),
            ("conv", 192, 5, 1, 2),
            ("relu",),
            ("pool", 3, 2),
            ("conv", 384, 3, 1, 1),
            ("relu",),
            ("conv", 256, 3, 1, 1),
            ("relu",),
            ("conv", 256, 3, 1, 1),
            ("relu",),
        ),  # fmt: skip
        (1, 4, 7, 9, 11),
        "lpips_alex",
        ("alex_v0.1.pth", "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"),
        1024,
    ),
    "vgg": Trunk(
        "vgg",
        _vgg16_layers(),
        (3, 8, 15, 22, 29),
        "lpips_vgg",
        ("vgg_v0.1.pth", "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"),
        512,
    ),
}
# Alignment and overlap of tiles: both trunks' deepest stride is 16, and their last stages see 163 (AlexNet) and
# 212 (VGG16) input pixels, so 128 pixels on each side of a tile's core hold every position's whole field.
TILE_ALIGN = 16
TILE_HALO = 128


def tiles(height, width, core, halo=TILE_HALO):
    """(y0, y1, x0, x1) of each tile's core (a partition of the image) and (cy0, cy1, cx0, cx1) of the crop that
    is run for it: the core grown by `halo`, clipped to the image, all starts multiples of TILE_ALIGN."""
    if core % TILE_ALIGN or halo % TILE_ALIGN:
        raise ValueError(f"tile core and halo must be multiples of {TILE_ALIGN}")

    def spans(length):
        ends = list(range(core, length, core))
        if ends and length - ends[-1] < core // 2:
            ends.pop()  # a thin last strip joins the one before it, so no crop is too small for the trunk
        cores = zip([0, *ends], [*ends, length], strict=True)
        return [(s, e, max(0, s - halo), min(length, e + halo)) for s, e in cores]

    return [
        ((y0, y1, x0, x1), (cy0, cy1, cx0, cx1))
        for y0, y1, cy0, cy1 in spans(height)
        for x0, x1, cx0, cx1 in spans(width)
    ]


SPACE_TO_DEPTH = 4  # AlexNet's first layer (11x11, stride 4) runs as a 3x3 stride-1 convolution, see _first_layer


def space_to_depth_input(x, pad, block=SPACE_TO_DEPTH, kernel=11):
    """C x H x W -> C*block^2 x (h+2) x (w+2) for a kernel x kernel, stride-`block` convolution with padding `pad`
    whose output is h x w: the padded input cut to the rows and columns that convolution reads, plus zeros to whole
    blocks; channel c*block^2 + dy*block + dx holds the pixels at offset (dy, dx) in each block. A 'same' 3x3
    convolution of it with `space_to_depth_weights`, less its one-pixel border, equals the strided convolution."""
    channels = x.shape[0]
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    h, w = ((n - kernel) // block + 1 for n in x.shape[1:])
    rows, cols = block * (h + 2), block * (w + 2)  # rows read: block*(h-1)+kernel; then zeros to whole blocks
    used = x[:, : block * (h - 1) + kernel, : block * (w - 1) + kernel]
    x = np.zeros((channels, rows, cols), np.float32)
    x[:, : used.shape[1], : used.shape[2]] = used
    x = x.reshape(channels, h + 2, block, w + 2, block).transpose(0, 2, 4, 1, 3)
    return x.reshape(channels * block * block, h + 2, w + 2)


def space_to_depth_weights(weight, block=SPACE_TO_DEPTH):
    """O x C x k x k (k <= 3*block) -> O x C*block^2 x 3 x 3, matching `space_to_depth_input`'s channel order."""
    out, channels, k, _ = weight.shape
    padded = np.zeros((out, channels, 3 * block, 3 * block), np.float32)
    padded[:, :, :k, :k] = weight
    padded = padded.reshape(out, channels, 3, block, 3, block).transpose(0, 1, 3, 5, 2, 4)
    return padded.reshape(out, channels * block * block, 3, 3)


class _StageDistances(nn.Cell):
    """A batch of two prepared crops [a, b] -> the five stages' distance maps, each h_l x w_l. Stride-1 layers run
    the kit's convolution (`conv.make_conv`: its CPU kernel, MindSpore's Conv2d on Ascend and GPU); AlexNet's
    strided first layer runs as a 3x3 one on the space-to-depth input (exact, and the kernel then applies)."""

    def __init__(self, trunk, trunk_weights, head_weights, conv_kernel="auto"):
        super().__init__()
        from .kernels.conv import make_conv

        self.trunk = trunk
        convs, cin = [], 3
        for index, layer in enumerate(trunk.layers):
            if layer[0] != "conv":
                continue
            weight = _array(trunk_weights, f"features.{index}.weight", (layer[1], cin, layer[2], layer[2]))
            bias = _array(trunk_weights, f"features.{index}.bias", (layer[1],))
            if layer[3] != 1:
                weight = space_to_depth_weights(weight, layer[3])
            conv = make_conv(weight.shape[1], layer[1], weight.shape[2], kernel=conv_kernel)
            conv.weight.set_data(ms.Tensor(weight))
            conv.bias.set_data(ms.Tensor(bias))
            convs.append(conv)
            cin = layer[1]
        self.convs = nn.CellList(convs)
        self.heads = [
            ms.Tensor(_array(head_weights, f"lin{i}.model.1.weight", (1, c, 1, 1))[0])
            for i, c in enumerate(trunk.stage_channels())
        ]
        self.strided_first = trunk.layers[0][3] != 1

    def construct(self, x):
        stages = []
        conv_index = 0
        for index, layer in enumerate(self.trunk.layers):
            if layer[0] == "conv":
                x = self.convs[conv_index](x)
                if conv_index == 0 and self.strided_first:
                    x = x[:, :, 1:-1, 1:-1]
                conv_index += 1
            elif layer[0] == "relu":
                x = ops.relu(x)
            else:
                x = ops.max_pool2d(x, layer[1], layer[2])
            if index in self.trunk.taps:
                stages.append(x / (ops.sqrt((x * x).sum(axis=1, keepdims=True)) + EPS))
        return tuple((((f[0] - f[1]) ** 2) * head).sum(axis=0) for f, head in zip(stages, self.heads))


def _array(weights, key, shape):
    if key not in weights:
        raise KitError(f"LPIPS weights: no {key} (not a torchvision/lpips file of this trunk)")
    value = np.asarray(weights[key], np.float32)
    if value.shape != shape:
        raise KitError(f"LPIPS weights: {key} has shape {value.shape}, expected {shape}")
    return value


def _trunk(net):
    if net not in TRUNKS:
        raise KitError(f"LPIPS trunk {net!r}: choose from {', '.join(TRUNKS)}")
    return TRUNKS[net]


def _bundled_heads(trunk):
    file, digest = trunk.heads
    path = HEADS_DIR / file
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        raise KitError(f"{path}: the bundled LPIPS heads are missing or changed; reinstall edsr_lib")
    return path


class LPIPS:
    """LPIPS v0.1 with the `net` trunk ('alex', the package's default, or 'vgg').

    `trunk_weights`/`head_weights`: paths to a torchvision `.pth` and an lpips head `.pth` (read with the kit's
    torch-free reader); the heads default to those shipped with the kit, and `load` fetches the registry's trunk.
    `tile`: the crop core side for large images (default: the trunk's)."""

    def __init__(self, net, trunk_weights, head_weights=None, tile=None, conv_kernel="auto"):
        from .torch_pickle import load_torch_state_dict

        self.trunk = _trunk(net)
        head_weights = head_weights or _bundled_heads(self.trunk)
        # op by op: as fast as one dynamic-shape graph here, and its intermediates are freed as it goes
        self.network = _StageDistances(
            self.trunk, load_torch_state_dict(trunk_weights), load_torch_state_dict(head_weights), conv_kernel
        )
        self.tile = tile or self.trunk.tile
        self.halo = TILE_HALO

    @classmethod
    def load(cls, net="alex", registry=None, mirrors=(), offline=False, progress=True, log=print):
        """LPIPS with the registry's trunk for `net`: from the kit's (or torchvision's) cache, else downloaded and
        hash-checked; offline and not cached, one line saying which file to place where."""
        from .pretrained import Registry

        registry = registry or Registry()
        trunk = registry.fetch(_trunk(net).weights, mirrors, offline, progress, log)
        return cls(net, trunk)

    def stages(self, image0, image1):
        """The five stages' mean distances (their sum is the LPIPS distance) of two HxWx3 RGB images on 0-255."""
        a, b = (np.asarray(image, np.float32) for image in (image0, image1))
        if a.shape != b.shape or a.ndim != 3 or a.shape[2] != 3:
            raise KitError(f"LPIPS needs two RGB images of one size, got {a.shape} and {b.shape}")
        height, width = a.shape[:2]
        sizes = list(zip(self.trunk.map_size(height), self.trunk.map_size(width), strict=True))
        if min(min(s) for s in sizes) < 1:
            raise KitError(f"image {height}x{width} is too small for LPIPS {self.trunk.name}")
        strides = self.trunk.strides()
        sums = np.zeros(len(sizes))
        first = self.trunk.layers[0]
        shift, scale = np.array(SHIFT, np.float32), np.array(SCALE, np.float32)
        for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in tiles(height, width, self.tile, self.halo):
            # the package's im2tensor ([-1, 1]) and ScalingLayer, before any padding (torch pads the scaled input)
            crops = [((img[cy0:cy1, cx0:cx1] / 127.5 - 1 - shift) / scale).transpose(2, 0, 1) for img in (a, b)]
            if first[3] != 1:
                crops = [space_to_depth_input(c, first[4], first[3], first[2]) for c in crops]
            maps = [m.asnumpy() for m in self.network(ms.Tensor(np.stack(crops).astype(np.float32)))]
            for stage, (m, s, (h, w)) in enumerate(zip(maps, strides, sizes, strict=True)):
                # this tile's share of the stage's positions, in the crop's coordinates
                r0, r1 = y0 // s, (y1 // s if y1 < height else h)
                c0, c1 = x0 // s, (x1 // s if x1 < width else w)
                sums[stage] += m[r0 - cy0 // s : r1 - cy0 // s, c0 - cx0 // s : c1 - cx0 // s].sum(dtype=np.float64)
        return [float(total / (h * w)) for total, (h, w) in zip(sums, sizes, strict=True)]

    def __call__(self, image0, image1):
        """The LPIPS distance of two HxWx3 RGB images on 0-255 (uint8 or float)."""
        return float(sum(self.stages(image0, image1)))


# LPIPS metric names (`metrics.METRICS`) -> trunk
METRIC_TRUNKS = {"lpips": "alex", "lpips_vgg": "vgg"}


def for_metrics(
    metrics: Sequence[str],
    registry=None,
    mirrors: Sequence[str] = (),
    offline: bool = False,
    log: Callable[[str], object] = print,
) -> dict:
    """metric name -> LPIPS for the LPIPS metrics among `metrics` (an empty dict when none is asked)."""
    return {
        name: LPIPS.load(METRIC_TRUNKS[name], registry, mirrors, offline, log=log)
        for name in metrics
        if name in METRIC_TRUNKS
    }


def cached(net: str = "alex", registry=None) -> tuple["LPIPS | None", str]:
    """(LPIPS, note) when `net`'s trunk is already cached (nothing is downloaded), else (None, a note saying how
    to get it): for notebooks, which show LPIPS when they can and say why not otherwise."""
    try:
        return LPIPS.load(net, registry, offline=True, log=lambda message: None), f"LPIPS ({net}) shown"
    except KitError:
        name = TRUNKS[net].weights
        return None, f"LPIPS not shown: its ImageNet trunk is not cached (run `edsr weights fetch {name}` once)"
