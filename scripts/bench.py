"""Measure the kit's speed on this machine and print ratios against references measured in the same run.

    .venv/bin/python scripts/bench.py                 # imresize, data pipeline, inference, training step
    .venv/bin/python scripts/bench.py --memory        # + peak memory of tiled paper-x4 inference (slow)
    .venv/bin/python scripts/bench.py --quick         # fewer sizes

Network timings compare the kit's CPU convolution ("fast") with MindSpore's stock Conv2d ("stock"), and with PyTorch
running the same network on the same CPU when torch is importable (pip install -e '.[bench]'). MindSpore is timed
first and PyTorch last, so PyTorch's OpenMP threads cannot steal cycles from the MindSpore runs.
"""
import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
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
    """One Adam step as the Trainer runs it: loss and gradients in a dynamic-shape graph, then the optimizer."""
    import mindspore as ms
    from mindspore import nn

    from edsr_lib.trainer import GradientGraph

    model = build_model(Architecture.from_preset("baseline", 2), conv_kernel=kernel)
    optimizer = nn.Adam(model.trainable_params(), learning_rate=1e-4)
    loss_fn = nn.L1Loss()

    def loss_of(lr, hr):
        return loss_fn(model(lr), hr)

    grad = ms.jit(GradientGraph(ms.value_and_grad(loss_of, None, optimizer.parameters), 3))
    rng = np.random.default_rng(0)
    lr = ms.Tensor(rng.uniform(0, 255, (batch, 3, lr_size, lr_size)).astype(np.float32))
    hr = ms.Tensor(rng.uniform(0, 255, (batch, 3, 2 * lr_size, 2 * lr_size)).astype(np.float32))

    def step():
        loss, grads = grad(lr, hr)
        optimizer(grads)
        loss.asnumpy()

    return best_of(step, repeat=steps)


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def ms_new_sizes(sizes):
    """Baseline x2 on a series of sizes never seen before: time per call and resident memory growth. One dynamic
    graph serves them all (a graph per size cost ~60 MB each and was never freed)."""
    model = build_model(Architecture.from_preset("baseline", 2))
    model.set_train(False)
    t = time.perf_counter()
    model.forward_array(np.zeros((1, 3, 40, 40), np.float32))
    compile_s = time.perf_counter() - t
    before, times = rss_mb(), []
    for h, w in sizes:
        x = np.random.default_rng(h * w).uniform(0, 255, (1, 3, h, w)).astype(np.float32)
        t = time.perf_counter()
        model.forward_array(x)
        times.append(time.perf_counter() - t)
    return compile_s, sum(times), (rss_mb() - before) / len(sizes)


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


def torch_times(cases, new_sizes, train):
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
    net = torch_edsr("baseline", 2).eval()
    total = 0.0
    for h, w in new_sizes:
        x = torch.from_numpy(np.random.default_rng(h * w).uniform(0, 255, (1, 3, h, w)).astype(np.float32))
        t = time.perf_counter()
        with torch.no_grad():
            net(x)
        total += time.perf_counter() - t
    times["new sizes"] = total
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
    new_sizes = [tuple(int(v) for v in hw) for hw in np.random.default_rng(1).integers(40, 120, (12, 2))]
    ms_times = ms_inference_times(cases)
    compile_s, ms_new, growth = ms_new_sizes(new_sizes)
    train = {k: ms_train_step_time(k) for k in ("stock", "fast") if k == "stock" or FAST_CONV_LIBRARY}
    try:
        import torch  # noqa: F401

        pt = torch_times(cases, new_sizes, train=True)
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
    line = (f"baseline x2 on {len(new_sizes)} new sizes (40-119 px): {ms_new * 1000:.0f} ms in all after a "
            f"{compile_s:.1f} s first compile, RSS +{growth:.2f} MB per new size")
    if "new sizes" in pt:
        line += f"; torch {pt['new sizes'] * 1000:.0f} ms, ratio {ms_new / pt['new sizes']:.2f}x"
    print(line)
    line = "train step baseline x2, batch 16, LR 48: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in train.items())
    if "train" in pt:
        line += f", torch {pt['train'] * 1000:.0f} ms"
        if "fast" in train:
            line += f"; fast/torch {train['fast'] / pt['train']:.2f}x"
    print(line)


# Tiled inference of the paper x4 model on a quarter of a DIV2K image (output 1020x680), 128-pixel tiles.
MEMORY_CASE = ("paper", 4, (170, 255), 128)


class TorchNetwork:
    """PyTorch's network behind the interface `forward_tiled` expects, so both engines tile identically."""

    def __init__(self, preset, scale):
        self.net = torch_edsr(preset, scale).eval()
        self.arch = Architecture.from_preset(preset, scale)

    def forward_array(self, x):
        import torch

        with torch.no_grad():
            return self.net(torch.from_numpy(x)).numpy()


def memory_worker(engine):
    """Run MEMORY_CASE in this (fresh) process and print one JSON line: seconds, peak RSS and RSS after set-up."""
    preset, scale, (h, w), tile = MEMORY_CASE
    if engine == "torch":
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        model = TorchNetwork(preset, scale)
    else:
        setup_device("CPU")
        model = build_model(Architecture.from_preset(preset, scale))  # the kit's default, as load_model gives
        model.set_train(False)
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, h, w)).astype(np.float32)
    start_mb = rss_mb()
    t = time.perf_counter()
    forward_tiled(model, x, tile=tile)
    seconds = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "start_mb": start_mb}))


def bench_memory():
    """Each engine in its own process, so each peak is its own."""
    preset, scale, (h, w), tile = MEMORY_CASE
    results = {}
    for engine in ("mindspore", "torch"):
        if engine == "torch" and importlib.util.find_spec("torch") is None:
            continue
        done = subprocess.run([sys.executable, __file__, "--memory-worker", engine], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"memory worker ({engine}) failed: {done.stderr.strip().splitlines()[-1:]}")
        results[engine] = json.loads(done.stdout.strip().splitlines()[-1])
    for engine, r in results.items():
        print(f"tiled {preset} x{scale}, {w}x{h} -> {w * scale}x{h * scale}, tile {tile}, {engine}: "
              f"{r['seconds']:.0f} s, peak RSS {r['peak_mb']:.0f} MB ({r['peak_mb'] - r['start_mb']:+.0f} MB over "
              f"the {r['start_mb']:.0f} MB after set-up)")
    if len(results) == 2:
        ms_r, pt_r = results["mindspore"], results["torch"]
        print(f"  mindspore/torch: time {ms_r['seconds'] / pt_r['seconds']:.2f}x, peak RSS "
              f"{ms_r['peak_mb'] / pt_r['peak_mb']:.2f}x, growth "
              f"{(ms_r['peak_mb'] - ms_r['start_mb']) / (pt_r['peak_mb'] - pt_r['start_mb']):.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-worker", choices=("mindspore", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker)
        raise SystemExit(0)
    with tempfile.TemporaryDirectory() as tmp:
        bench_imresize()
        bench_pipeline(tmp)
    bench_networks(args.quick)
    if args.memory:
        bench_memory()
