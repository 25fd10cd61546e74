"""Measure the kit's speed on this machine and print ratios against references measured in the same run.

    .venv/bin/python scripts/bench.py                 # imresize, data pipeline, inference, training step
    .venv/bin/python scripts/bench.py --memory        # + tiled paper-x4 inference on a 2040x1356 output (slow)
    .venv/bin/python scripts/bench.py --quick         # fewer sizes

Network timings compare the kit's CPU convolution ("fast") with MindSpore's stock Conv2d ("stock"), and with PyTorch
running the same network on the same CPU when torch is importable (pip install -e '.[bench]'). MindSpore is timed
first and PyTorch last, so PyTorch's OpenMP threads cannot steal cycles from the MindSpore runs.
"""
import argparse
import os
import resource
import tempfile
import time

import numpy as np

import edsr_lib  # noqa: F401  (environment before MindSpore)
from edsr_lib import Architecture, build_model
from edsr_lib.data import ArrayCache, SampleImages
from edsr_lib.imresize import imresize
from edsr_lib.inference import forward_tiled
from edsr_lib.pipeline import PatchSource
from edsr_lib.runtime import FAST_CONV_LIBRARY, setup_device


def best_of(fn, repeat=3):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_imresize():
    img = np.random.default_rng(0).uniform(0, 255, (1356, 2040, 3))
    t = best_of(lambda: imresize(img, 0.5))
    print(f"imresize 2040x1356x3 -> x1/2: {t * 1000:.0f} ms = {img.shape[0] * img.shape[1] / t / 1e6:.1f} MP/s (input)")


def bench_pipeline(tmp):
    ds = SampleImages(2, "train", cache=ArrayCache(tmp))
    src = PatchSource(ds, 96, length=10**6, seed=0)
    src[0]  # fill the cache
    n = 2000
    t = time.perf_counter()
    for i in range(n):
        src[i]
    per_s = n / (time.perf_counter() - t)
    need = 16 / 0.05075
    print(f"data pipeline (x2, 96px HR patches, augment): {per_s:.0f} patches/s per worker; an Ascend 910 step "
          f"(50.75 ms, batch 16) needs {need:.0f}/s -> {per_s / need:.1f}x headroom per worker")


def _mindspore_models(preset, scale):
    models = {}
    for kernel in ("stock", "fast"):  # stock first: nothing of the fast path running before it
        if kernel == "fast" and FAST_CONV_LIBRARY is None:
            continue
        model = build_model(Architecture.from_preset(preset, scale), conv_kernel=kernel)
        model.set_train(False)
        models[kernel] = model
    return models


def ms_inference_times(cases):
    times = {}
    for preset, scale, size in cases:
        x = np.random.default_rng(0).uniform(0, 255, (1, 3, size, size)).astype(np.float32)
        for kernel, model in _mindspore_models(preset, scale).items():
            times[(preset, scale, size, kernel)] = best_of(lambda: forward_tiled(model, x), repeat=2)
    return times


def ms_train_step_time(kernel, batch=16, lr_size=48, steps=3):
    import mindspore as ms
    from mindspore import nn

    model = build_model(Architecture.from_preset("baseline", 2), conv_kernel=kernel)
    optimizer = nn.Adam(model.trainable_params(), learning_rate=1e-4)
    loss_fn = nn.L1Loss()
    grad = ms.value_and_grad(lambda lr, hr: loss_fn(model(lr), hr), None, optimizer.parameters)
    rng = np.random.default_rng(0)
    lr = ms.Tensor(rng.uniform(0, 255, (batch, 3, lr_size, lr_size)).astype(np.float32))
    hr = ms.Tensor(rng.uniform(0, 255, (batch, 3, 2 * lr_size, 2 * lr_size)).astype(np.float32))

    def step():
        loss, grads = grad(lr, hr)
        optimizer(grads)
        loss.asnumpy()

    return best_of(step, repeat=steps)


# ---- PyTorch reference: the same network ---------------------------------------------------------------------

def torch_edsr(preset, scale):
    import torch
    from torch import nn

    spec = {"baseline": (16, 64, 1.0), "paper": (32, 256, 0.1)}[preset]
    n_blocks, feats, res_scale = spec

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(feats, feats, 3, padding=1), nn.ReLU(True),
                                      nn.Conv2d(feats, feats, 3, padding=1))

        def forward(self, x):
            return self.body(x) * res_scale + x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(3, feats, 3, padding=1)
            self.body = nn.Sequential(*[Block() for _ in range(n_blocks)], nn.Conv2d(feats, feats, 3, padding=1))
            ups = []
            for factor in ([2] * {2: 1, 4: 2}.get(scale, 0) or [3]):
                ups += [nn.Conv2d(feats, factor * factor * feats, 3, padding=1), nn.PixelShuffle(factor)]
            self.tail = nn.Sequential(*ups, nn.Conv2d(feats, 3, 3, padding=1))
            self.register_buffer("mean", torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1) * 255)

        def forward(self, x):
            x = self.head(x - self.mean)
            return self.tail(self.body(x) + x) + self.mean

    return Net()


def torch_times(cases, train):
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    times = {}
    for preset, scale, size in cases:
        net = torch_edsr(preset, scale).eval()
        x = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (1, 3, size, size)).astype(np.float32))

        def run():
            with torch.no_grad():
                net(x)

        times[(preset, scale, size, "torch")] = best_of(run, repeat=2)
    if train:
        net = torch_edsr("baseline", 2).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        rng = np.random.default_rng(0)
        lr = torch.from_numpy(rng.uniform(0, 255, (16, 3, 48, 48)).astype(np.float32))
        hr = torch.from_numpy(rng.uniform(0, 255, (16, 3, 96, 96)).astype(np.float32))

        def step():
            opt.zero_grad()
            loss = torch.nn.functional.l1_loss(net(lr), hr)
            loss.backward()
            opt.step()

        times["train"] = best_of(step, repeat=3)
    return times


def bench_networks(quick):
    setup_device("CPU")
    cases = [("baseline", 2, 48), ("baseline", 2, 96)] + ([] if quick else [("baseline", 2, 192), ("baseline", 4, 96),
                                                                            ("paper", 2, 48)])
    ms_times = ms_inference_times(cases)
    train = {k: ms_train_step_time(k) for k in ("stock", "fast") if k == "stock" or FAST_CONV_LIBRARY}
    try:
        import torch  # noqa: F401

        pt = torch_times(cases, train=True)
    except ImportError:
        pt = {}
        print("(torch not installed: ratios against stock MindSpore only; pip install -e '.[bench]')")
    print(f"{'inference':<28}{'fast':>10}{'stock':>10}{'torch':>10}{'fast/torch':>12}{'stock/fast':>12}")
    for preset, scale, size in cases:
        fast = ms_times.get((preset, scale, size, "fast"))
        stock = ms_times[(preset, scale, size, "stock")]
        torch_t = pt.get((preset, scale, size, "torch"))
        cells = [f"{v * 1000:>8.0f}ms" if v else f"{'-':>10}" for v in (fast, stock, torch_t)]
        ratio = f"{fast / torch_t:>11.2f}x" if fast and torch_t else f"{'-':>12}"
        speedup = f"{stock / fast:>11.2f}x" if fast else f"{'-':>12}"
        print(f"{f'{preset} x{scale} {size}x{size}':<28}" + "".join(cells) + ratio + speedup)
    line = "train step baseline x2, batch 16, LR 48: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in train.items())
    if "train" in pt:
        line += f", torch {pt['train'] * 1000:.0f} ms"
        if "fast" in train:
            line += f"; fast/torch {train['fast'] / pt['train']:.2f}x"
    print(line)


def bench_memory():
    setup_device("CPU")
    model = build_model(Architecture.from_preset("paper", 4), conv_kernel="stock")  # what load_model gives
    model.set_train(False)
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 339, 510)).astype(np.float32)
    t = time.perf_counter()
    out = forward_tiled(model, x, tile=256)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"paper x4, 510x339 -> {out.shape[3]}x{out.shape[2]}, tile 256: {time.perf_counter() - t:.0f} s, "
          f"peak RSS {peak:.1f} GB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_imresize()
        bench_pipeline(tmp)
    bench_networks(args.quick)
    if args.memory:
        bench_memory()
