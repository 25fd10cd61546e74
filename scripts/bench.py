"""Measure the kit's speed on this machine and print ratios against a reference in the same run.

    .venv/bin/python scripts/bench.py                 # imresize, data pipeline, inference
    .venv/bin/python scripts/bench.py --memory        # + tiled paper-x4 inference on a 2040x1356 output (slow)

Inference is compared with PyTorch running the same network on the same CPU when torch is importable
(pip install -e .[bench]); otherwise only absolute times are printed.
"""
import argparse
import resource
import time

import numpy as np

import edsr_lib  # noqa: F401  (environment before MindSpore)
from edsr_lib import Architecture, build_model
from edsr_lib.data import SampleImages, ArrayCache
from edsr_lib.imresize import imresize
from edsr_lib.inference import forward_tiled
from edsr_lib.pipeline import PatchSource
from edsr_lib.runtime import setup_device


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


def bench_inference(size=96):
    setup_device("CPU")
    model = build_model(Architecture.from_preset("baseline", 2))
    model.set_train(False)
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, size, size)).astype(np.float32)
    t_ms = best_of(lambda: forward_tiled(model, x))
    line = f"baseline x2 forward {size}x{size}: MindSpore {t_ms * 1000:.0f} ms"
    try:
        import torch
    except ImportError:
        print(line + " (install torch for a PyTorch ratio)")
        return
    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    convs = [torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(35)]
    xt = torch.from_numpy(np.random.rand(1, 64, size, size).astype(np.float32))

    def run_torch():
        with torch.no_grad():
            y = xt
            for c in convs:
                y = c(y)

    t_pt = best_of(run_torch)
    print(line + f", PyTorch (same conv stack) {t_pt * 1000:.0f} ms, ratio {t_ms / t_pt:.2f}x")


def bench_memory():
    setup_device("CPU")
    model = build_model(Architecture.from_preset("paper", 4))
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
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        bench_imresize()
        bench_pipeline(tmp)
        bench_inference()
        if args.memory:
            bench_memory()
