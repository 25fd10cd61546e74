"""Independent references for the tests: a numpy EDSR forward (published and ModelZoo flavours) and writers for
PyTorch's two `.pt` formats. Written from the published descriptions, sharing no code with edsr_lib."""

import io
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

MEAN = np.array([0.4488, 0.4371, 0.4040])


def conv3x3(x, w, b):
    """x: CxHxW, w: OxCxkxk (k odd) -> OxHxW with zero padding k // 2 (float64)."""
    c, h, wd = x.shape
    k = w.shape[-1]
    p = k // 2
    xp = np.zeros((c, h + 2 * p, wd + 2 * p))
    xp[:, p : p + h, p : p + wd] = x
    cols = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))  # C x H x W x k x k
    return np.einsum("chwij,ocij->ohw", cols, w, optimize=True) + b[:, None, None]


def pixel_shuffle(x, r):
    """torch order: out[c, h*r+i, w*r+j] = in[c*r*r + i*r + j, h, w]."""
    c, h, w = x.shape
    return x.reshape(c // (r * r), r, r, h, w).transpose(0, 3, 1, 4, 2).reshape(c // (r * r), h * r, w * r)


def depth_to_space(x, r):
    """TensorFlow order: out[c, h*r+i, w*r+j] = in[(i*r + j)*C + c, h, w]."""
    c, h, w = x.shape
    return x.reshape(r, r, c // (r * r), h, w).transpose(2, 3, 0, 4, 1).reshape(c // (r * r), h * r, w * r)


def _random_conv(rng, o, i, k=3):
    """PyTorch's default initialisation bounds: weight and bias uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / np.sqrt(i * k * k)
    return rng.uniform(-bound, bound, (o, i, k, k)), rng.uniform(-bound, bound, o)


def _mean_shifts_and_head(w, rng, n_feats, n_colors):
    eye = np.eye(3).reshape(3, 3, 1, 1)
    w["sub_mean.weight"], w["sub_mean.bias"] = eye, -255 * MEAN
    w["add_mean.weight"], w["add_mean.bias"] = eye, 255 * MEAN
    w["head.0.weight"], w["head.0.bias"] = _random_conv(rng, n_feats, n_colors)


def _random_body(w, rng, n_resblocks, n_feats):
    for i in range(n_resblocks):
        for j in (0, 2):
            w[f"body.{i}.body.{j}.weight"], w[f"body.{i}.body.{j}.bias"] = _random_conv(rng, n_feats, n_feats)
    w[f"body.{n_resblocks}.weight"], w[f"body.{n_resblocks}.bias"] = _random_conv(rng, n_feats, n_feats)


def _random_upsampler(w, rng, prefix, scale, n_feats):
    factors = [3] if scale == 3 else [2] * {2: 1, 4: 2}[scale]
    for k, r in enumerate(factors):
        w[f"{prefix}{2 * k}.weight"], w[f"{prefix}{2 * k}.bias"] = _random_conv(rng, r * r * n_feats, n_feats)


def random_published_weights(rng, scale, n_resblocks, n_feats, n_colors=3):
    w = OrderedDict()
    _mean_shifts_and_head(w, rng, n_feats, n_colors)
    _random_body(w, rng, n_resblocks, n_feats)
    _random_upsampler(w, rng, "tail.0.", scale, n_feats)
    w["tail.1.weight"], w["tail.1.bias"] = _random_conv(rng, n_colors, n_feats)
    return OrderedDict((k, v.astype(np.float32)) for k, v in w.items())


def published_forward(w, image, res_scale):
    """EDSR-PyTorch forward on one HxWx3 image on the 0-255 scale, float64, returns HxWx3 float."""
    x = image.astype(np.float64).transpose(2, 0, 1) - 255 * MEAN[:, None, None]
    x = conv3x3(x, w["head.0.weight"].astype(np.float64), w["head.0.bias"].astype(np.float64))
    n_blocks = len({k.split(".")[1] for k in w if ".body." in k})
    res = x
    for i in range(n_blocks):
        t = conv3x3(res, w[f"body.{i}.body.0.weight"], w[f"body.{i}.body.0.bias"])
        t = conv3x3(np.maximum(t, 0), w[f"body.{i}.body.2.weight"], w[f"body.{i}.body.2.bias"])
        res = res + res_scale * t
    res = conv3x3(res, w[f"body.{n_blocks}.weight"], w[f"body.{n_blocks}.bias"]) + x
    k = 0
    while f"tail.0.{k}.weight" in w:
        out = conv3x3(res, w[f"tail.0.{k}.weight"], w[f"tail.0.{k}.bias"])
        r = int(round(np.sqrt(out.shape[0] / res.shape[0])))
        res = pixel_shuffle(out, r)
        k += 2
    y = conv3x3(res, w["tail.1.weight"], w["tail.1.bias"]) + 255 * MEAN[:, None, None]
    return y.transpose(1, 2, 0)


def random_mdsr_weights(rng, n_resblocks, n_feats, scales=(2, 3, 4), n_colors=3):
    """An MDSR state dict in EDSR-PyTorch's `src/model/mdsr.py` layout, random weights."""
    w = OrderedDict()
    _mean_shifts_and_head(w, rng, n_feats, n_colors)
    for i in range(len(scales)):
        for block in (0, 1):
            for j in (0, 2):
                key = f"pre_process.{i}.{block}.body.{j}"
                w[key + ".weight"], w[key + ".bias"] = _random_conv(rng, n_feats, n_feats, 5)
    _random_body(w, rng, n_resblocks, n_feats)
    for i, scale in enumerate(scales):
        _random_upsampler(w, rng, f"upsample.{i}.", scale, n_feats)
    w["tail.0.weight"], w["tail.0.bias"] = _random_conv(rng, n_colors, n_feats)
    return OrderedDict((k, v.astype(np.float32)) for k, v in w.items())


def mdsr_forward(w, image, branch):
    """EDSR-PyTorch's MDSR forward with pre_process/upsample branch `branch`, float64, HxWx3 -> HxWx3."""
    x = image.astype(np.float64).transpose(2, 0, 1) - 255 * MEAN[:, None, None]
    x = conv3x3(x, w["head.0.weight"], w["head.0.bias"])
    for block in (0, 1):
        key = f"pre_process.{branch}.{block}.body."
        t = np.maximum(conv3x3(x, w[key + "0.weight"], w[key + "0.bias"]), 0)
        x = x + conv3x3(t, w[key + "2.weight"], w[key + "2.bias"])
    n_blocks = len({k.split(".")[1] for k in w if k.startswith("body.") and ".body." in k})
    res = x
    for i in range(n_blocks):
        t = conv3x3(res, w[f"body.{i}.body.0.weight"], w[f"body.{i}.body.0.bias"])
        res = res + conv3x3(np.maximum(t, 0), w[f"body.{i}.body.2.weight"], w[f"body.{i}.body.2.bias"])
    res = conv3x3(res, w[f"body.{n_blocks}.weight"], w[f"body.{n_blocks}.bias"]) + x
    k = 0
    while f"upsample.{branch}.{k}.weight" in w:
        out = conv3x3(res, w[f"upsample.{branch}.{k}.weight"], w[f"upsample.{branch}.{k}.bias"])
        res = pixel_shuffle(out, int(round(np.sqrt(out.shape[0] / res.shape[0]))))
        k += 2
    y = conv3x3(res, w["tail.0.weight"], w["tail.0.bias"]) + 255 * MEAN[:, None, None]
    return y.transpose(1, 2, 0)


def modelzoo_forward(zoo, image, res_scale, n_blocks):
    """The MindSpore ModelZoo EDSR forward: x/255 - mean, DCR DepthToSpace, (y + mean) * 255."""
    x = image.astype(np.float64).transpose(2, 0, 1) / 255.0 - MEAN[:, None, None]
    x = conv3x3(x, zoo["head.0.weight"], zoo["head.0.bias"])
    res = x
    for i in range(n_blocks):
        t = conv3x3(res, zoo[f"body.{i}.conv1.weight"], zoo[f"body.{i}.conv1.bias"])
        t = conv3x3(np.maximum(t, 0), zoo[f"body.{i}.conv2.weight"], zoo[f"body.{i}.conv2.bias"])
        res = res + res_scale * t
    res = conv3x3(res, zoo[f"body.{n_blocks}.weight"], zoo[f"body.{n_blocks}.bias"]) + x
    k = 0
    while f"tail.0.up.{k}.weight" in zoo:
        out = conv3x3(res, zoo[f"tail.0.up.{k}.weight"], zoo[f"tail.0.up.{k}.bias"])
        r = int(round(np.sqrt(out.shape[0] / res.shape[0])))
        res = depth_to_space(out, r)
        k += 2
    y = conv3x3(res, zoo["tail.1.weight"], zoo["tail.1.bias"])
    return ((y + MEAN[:, None, None]) * 255.0).transpose(1, 2, 0)


def dihedral_transforms():
    """The 8 dihedral transforms of an HxWxC array with their inverses, written independently of the kit."""
    return [
        (
            lambda a, k=k, t=t: np.rot90(a.transpose(1, 0, 2) if t else a, k),
            lambda a, k=k, t=t: (lambda b: b.transpose(1, 0, 2) if t else b)(np.rot90(a, -k)),
        )
        for t in (False, True)
        for k in range(4)
    ]


def quantise(y):
    return np.round(np.clip(y, 0, 255)).astype(np.uint8)


def assert_same_pixels(actual_uint8, reference_float, tie=1e-2):
    """Equal after clamp+round, except where the float reference sits within `tie` of a rounding boundary."""
    expected = quantise(reference_float)
    near_tie = np.abs(np.clip(reference_float, 0, 255) % 1 - 0.5) < tie
    differ = (actual_uint8 != expected) & ~near_tie
    assert not differ.any(), f"{differ.sum()} pixels differ (max {np.abs(actual_uint8.astype(int) - expected).max()})"


# ---- .pt writers: a fake `torch` module in sys.modules so pickle can name torch's globals ----------------------


@contextmanager
def _fake_torch():
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*a):
        raise AssertionError("never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage_cls = type("FloatStorage", (), {"__module__": "torch"})
    torch.FloatStorage = storage_cls
    torch._utils = utils
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        yield torch, utils
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Tensor:
    def __init__(self, key, array, offset=0, size=None, stride=None):
        self.key, self.array, self.offset = key, array, offset
        self.size = array.shape if size is None else size
        self.stride = tuple(s // 4 for s in array.strides) if stride is None else stride


def _pickle_state(state, persistent_id, layouts=None):
    """`layouts`: name -> (storage key, offset, size, stride) to write tensors with any layout (hostile files)."""
    with _fake_torch() as (torch, utils):
        tensors = OrderedDict(
            (k, _Tensor(str(i), np.ascontiguousarray(v, np.float32))) for i, (k, v) in enumerate(state.items())
        )
        storages = {t.key: t for t in tensors.values()}
        for name, (key, offset, size, stride) in (layouts or {}).items():
            tensors[name] = _Tensor(key, storages[key].array, offset, size, stride)

        class P(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, _Tensor) and getattr(obj, "_as_storage", False):
                    return persistent_id(torch, obj)
                return None

            def reducer_override(self, obj):
                if isinstance(obj, _Tensor) and not getattr(obj, "_as_storage", False):
                    storage = storages[obj.key]
                    storage._as_storage = True
                    return utils._rebuild_tensor_v2, (storage, obj.offset, obj.size, obj.stride, False, OrderedDict())
                return NotImplemented

        buf = io.BytesIO()
        P(buf, protocol=2).dump(tensors)
        return buf.getvalue(), list(storages.values())


def write_pt_zip(path, state, layouts=None, data_pkl=None):
    data, storages = _pickle_state(
        state, lambda torch, t: ("storage", torch.FloatStorage, t.key, "cpu", t.array.size), layouts
    )
    name = "archive"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", data if data_pkl is None else data_pkl)
        z.writestr(f"{name}/byteorder", "little")
        for t in storages:
            z.writestr(f"{name}/data/{t.key}", t.array.astype("<f4").tobytes())
        z.writestr(f"{name}/version", "3\n")


def write_pt_legacy(path, state, layouts=None):
    data, storages = _pickle_state(
        state, lambda torch, t: ("storage", torch.FloatStorage, t.key, "cpu", t.array.size, None), layouts
    )
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump(
            {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4, "long": 8}}, f, protocol=2
        )
        f.write(data)
        pickle.dump([t.key for t in storages], f, protocol=2)
        for t in storages:
            f.write(struct.pack("<q", t.array.size))
            f.write(t.array.astype("<f4").tobytes())


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def write_malicious_pt(path, marker, legacy):
    payload = pickle.dumps(OrderedDict(evil=_RunsCode(marker)), protocol=2)
    if legacy:
        with open(path, "wb") as f:
            pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
            pickle.dump(1001, f, protocol=2)
            pickle.dump({"little_endian": True}, f, protocol=2)
            f.write(payload)
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", payload)
            z.writestr("archive/version", "3\n")


# ---- MATLAB image functions for the degradation protocols (BD, DN), written from MATLAB's documentation ----------


def matlab_uint8(x):
    """uint8(x): round half away from zero, saturate."""
    return np.clip(np.where(x >= 0, np.floor(x + 0.5), np.ceil(x - 0.5)), 0, 255).astype(np.uint8)


def matlab_fspecial_gaussian(size, sigma):
    """fspecial('gaussian', size, sigma) as the outer product of scipy's Gaussian window, normalised to sum 1."""
    from scipy.signal.windows import gaussian

    window = gaussian(size, sigma)
    kernel = np.outer(window, window)
    return kernel / kernel.sum()


def matlab_imfilter_replicate(img_uint8, kernel):
    """imfilter(img, kernel, 'replicate') on uint8: correlation centred at floor((k + 1) / 2), 1-based, so an
    even-sized kernel reaches one pixel further after the centre than before it (scipy's origin -1)."""
    from scipy import ndimage

    origin = -1 if kernel.shape[0] % 2 == 0 else 0
    channels = [
        ndimage.correlate(img_uint8[..., c].astype(np.float64), kernel, mode="nearest", origin=origin)
        for c in range(img_uint8.shape[2])
    ]
    return matlab_uint8(np.stack(channels, -1))


def _matlab_cubic(x):
    x = abs(x)
    if x <= 1:
        return 1.5 * x**3 - 2.5 * x**2 + 1
    if x <= 2:
        return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
    return 0.0


def matlab_imresize_down(img, factor):
    """imresize(img, 1/factor, 'bicubic') for an integer factor, one output pixel at a time: the antialiasing cubic
    kernel stretched by `factor`, symmetric edges, rows then columns; float64, unrounded."""

    def along(a, axis):
        a = np.moveaxis(a.astype(np.float64), axis, 0)
        n = a.shape[0]
        out = []
        for i in range(1, int(np.ceil(n / factor)) + 1):
            centre = i * factor + 0.5 * (1 - factor)  # 1-based input coordinate of output pixel i
            taps = range(int(np.floor(centre - 2 * factor)), int(np.ceil(centre + 2 * factor)) + 1)
            weights = np.array([_matlab_cubic((centre - j) / factor) / factor for j in taps])
            rows = []
            for j in taps:
                k = j - 1
                while not 0 <= k < n:  # symmetric: ... 1 0 | 0 1 2 ... n-1 | n-1 n-2 ...
                    k = -k - 1 if k < 0 else 2 * n - 1 - k
                rows.append(a[k])
            out.append(np.tensordot(weights / weights.sum(), np.stack(rows), axes=1))
        return np.moveaxis(np.stack(out), 0, axis)

    return along(along(img, 0), 1)


def matlab_nearest_down(img, factor):
    """imresize(img, 1/factor, 'nearest'): output pixel i (1-based) takes input round(i * factor + (1 - factor) / 2)."""
    h, w = img.shape[:2]
    rows = [int(np.floor(i * factor + 0.5 * (1 - factor) + 0.5)) - 1 for i in range(1, h // factor + 1)]
    cols = [int(np.floor(i * factor + 0.5 * (1 - factor) + 0.5)) - 1 for i in range(1, w // factor + 1)]
    return img[np.ix_(rows, cols)]


# ---- LPIPS v0.1, written from the `lpips` package's and torchvision's definitions (numpy, float64) --------------

LPIPS_ALEX = [  # torchvision alexnet().features: (index, kind, out, kernel, stride, pad); stages after 1, 4, 7, 9, 11
    (0, "conv", 64, 11, 4, 2), (1, "relu"), (2, "pool", 3, 2), (3, "conv", 192, 5, 1, 2), (4, "relu"),
    (5, "pool", 3, 2), (6, "conv", 384, 3, 1, 1), (7, "relu"), (8, "conv", 256, 3, 1, 1), (9, "relu"),
    (10, "conv", 256, 3, 1, 1), (11, "relu"),
]  # fmt: skip
LPIPS_ALEX_STAGES = (1, 4, 7, 9, 11)
LPIPS_VGG = [  # torchvision vgg16().features, configuration D; stages after relu1_2, 2_2, 3_3, 4_3, 5_3
    (0, "conv", 64, 3, 1, 1), (1, "relu"), (2, "conv", 64, 3, 1, 1), (3, "relu"), (4, "pool", 2, 2),
    (5, "conv", 128, 3, 1, 1), (6, "relu"), (7, "conv", 128, 3, 1, 1), (8, "relu"), (9, "pool", 2, 2),
    (10, "conv", 256, 3, 1, 1), (11, "relu"), (12, "conv", 256, 3, 1, 1), (13, "relu"), (14, "conv", 256, 3, 1, 1),
    (15, "relu"), (16, "pool", 2, 2), (17, "conv", 512, 3, 1, 1), (18, "relu"), (19, "conv", 512, 3, 1, 1),
    (20, "relu"), (21, "conv", 512, 3, 1, 1), (22, "relu"), (23, "pool", 2, 2), (24, "conv", 512, 3, 1, 1),
    (25, "relu"), (26, "conv", 512, 3, 1, 1), (27, "relu"), (28, "conv", 512, 3, 1, 1), (29, "relu"),
]  # fmt: skip
LPIPS_VGG_STAGES = (3, 8, 15, 22, 29)


def random_lpips_weights(rng, layers, stages):
    """(trunk state dict as torchvision names it, head state dict as lpips names it), random, He-scaled so the
    features neither vanish nor explode, with ImageNet classifier entries too (torchvision's file has them)."""
    trunk, head, cin, channels = OrderedDict(), OrderedDict(), 3, []
    for layer in layers:
        if layer[1] == "conv":
            out, k = layer[2], layer[3]
            trunk[f"features.{layer[0]}.weight"] = rng.normal(0, np.sqrt(2 / (cin * k * k)), (out, cin, k, k))
            trunk[f"features.{layer[0]}.bias"] = rng.normal(0, 0.1, out)
            cin = out
        if layer[0] in stages:
            channels.append(cin)
    trunk["classifier.1.weight"] = rng.normal(0, 0.01, (10, 16))
    for i, c in enumerate(channels):
        head[f"lin{i}.model.1.weight"] = np.abs(rng.normal(0, 1, (1, c, 1, 1)))
    return trunk, head


def _conv_nchw(x, w, b, stride, pad):
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    out_c, in_c, k, _ = w.shape
    h = (x.shape[1] - k) // stride + 1
    wd = (x.shape[2] - k) // stride + 1
    cols = np.empty((in_c, k, k, h, wd))
    for dy in range(k):
        for dx in range(k):
            cols[:, dy, dx] = x[:, dy : dy + stride * (h - 1) + 1 : stride, dx : dx + stride * (wd - 1) + 1 : stride]
    return np.tensordot(w, cols, axes=([1, 2, 3], [0, 1, 2])) + b[:, None, None]


def _max_pool(x, k, stride):
    h = (x.shape[1] - k) // stride + 1
    w = (x.shape[2] - k) // stride + 1
    out = np.full((x.shape[0], h, w), -np.inf)
    for dy in range(k):
        for dx in range(k):
            window = x[:, dy : dy + stride * (h - 1) + 1 : stride, dx : dx + stride * (w - 1) + 1 : stride]
            out = np.maximum(out, window)
    return out


def lpips_forward(trunk, head, layers, stages, image0, image1):
    """LPIPS v0.1 distance of two HxWx3 RGB images on 0-255, as lpips.LPIPS(net, version='0.1') computes it."""
    shift = np.array([-0.030, -0.088, -0.188])[:, None, None]
    scale = np.array([0.458, 0.448, 0.450])[:, None, None]

    def features(image):
        x = (np.asarray(image, np.float64).transpose(2, 0, 1) / (255 / 2) - 1 - shift) / scale
        out = []
        for layer in layers:
            if layer[1] == "conv":
                w, b = trunk[f"features.{layer[0]}.weight"], trunk[f"features.{layer[0]}.bias"]
                x = _conv_nchw(x, w, b, layer[4], layer[5])
            elif layer[1] == "relu":
                x = np.maximum(x, 0)
            else:
                x = _max_pool(x, layer[2], layer[3])
            if layer[0] in stages:
                out.append(x / (np.sqrt((x**2).sum(axis=0, keepdims=True)) + 1e-10))
        return out

    total = 0.0
    for i, (f0, f1) in enumerate(zip(features(image0), features(image1), strict=True)):
        weighted = np.tensordot(head[f"lin{i}.model.1.weight"][0, :, 0, 0], (f0 - f1) ** 2, axes=(0, 0))
        total += weighted.mean()
    return total
