"""Measure the kit's speed on this machine and print ratios against references measured in the same run.

    .venv/bin/python scripts/bench.py                 # imresize, data pipeline, inference, training step, layers
    .venv/bin/python scripts/bench.py --quick         # fewer sizes, and one round instead of two
    .venv/bin/python scripts/bench.py --memory        # + tiled paper-x4 inference: time and peak memory (slow);
                                                      #   with it, one run measures every one of TARGETS
    .venv/bin/python scripts/bench.py --memory-full --engines kit,torch   # the same at 2040x1356, tile 256 (slower)
    .venv/bin/python scripts/bench.py --train         # training steps only: one graph, multi-graph, host spinning
    .venv/bin/python scripts/bench.py --export        # one image: checkpoint, MINDIR (in process, child), ONNX
    .venv/bin/python scripts/bench.py --kernel-memory # the CPU kernel's resident memory over 232 input shapes
    .venv/bin/python scripts/bench.py --layers        # one 3x3 conv per layer type: direct, both Winograds, PyTorch

Network timings compare three engines running the same network on the same CPU: the kit ("kit": MindSpore graphs
with dynamic shapes and the kit's CPU convolution, what `load_model` and the Trainer use), MindSpore's stock Conv2d in
the same graphs with ONEDNN_MAX_CPU_ISA=AVX2 ("stock"), and PyTorch when torch is importable
(pip install -e '.[bench]'). Each engine runs in a
fresh process of its own, one after the other, so no engine's idle threads take cycles from another's.
Times are the best of several runs after a warm-up (the first run compiles), over two rounds of all engines.
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

import edsr_lib.backend  # noqa: F401  (environment before MindSpore)
from edsr_lib import Architecture, build_model
from edsr_lib.model import compile_dynamic, load_state, state_dict
from edsr_lib.data import SAMPLE_TEST, ArrayCache, SampleImages, sample_folder
from edsr_lib.images import read_image
from edsr_lib.imresize import imresize
from edsr_lib.inference import forward_tiled, upscale_float
from edsr_lib.metrics import quantize
from edsr_lib.pipeline import PatchSource
from edsr_lib.kernels.build import aot_call
from edsr_lib.runtime import fast_conv_library, setup_device

# kit: what load_model and the Trainer use (conv_algorithm auto); kit-direct / kit-winograd: one algorithm for
# every 3x3 layer; stock: MindSpore's Conv2d; torch: PyTorch.
ENGINES = ("kit", "kit-direct", "kit-winograd", "stock", "torch")
KIT_KERNELS = {"kit": "auto", "kit-direct": "direct", "kit-winograd": "winograd"}
FULL_CASES = [
    ("baseline", 2, 48),
    ("baseline", 2, 96),
    ("baseline", 2, 192),
    ("baseline", 4, 96),
    ("paper", 2, 48),
    ("paper", 2, 96),
]
QUICK_CASES = FULL_CASES[:2]


def new_sizes(count):
    """Sizes the networks have not seen: a graph per size would recompile (and, in MindSpore 2.10, keep ~60 MB) each
    time; one dynamic-shape graph serves them all."""
    return [tuple(int(v) for v in hw) for hw in np.random.default_rng(1).integers(40, 120, (count, 2))]


TRAIN_BATCH, TRAIN_LR_SIZE = 16, 48
# Tiled inference of the paper x4 model on a quarter of a DIV2K image (output 1020x680), 128-pixel tiles; and
# (--memory-full) on a whole DIV2K-sized image (output 2040x1356), 256-pixel tiles.
MEMORY_CASES = {"quarter": ("paper", 4, (170, 255), 128), "full": ("paper", 4, (339, 510), 256)}


def best_of(fn, repeat=3):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def random_array(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


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
    print(
        f"data pipeline (x2, 96px HR patches, augment): {per_s:.0f} patches/s per worker; an Ascend 910 step "
        f"(50.75 ms, batch 16) needs {need:.0f}/s -> {per_s / need:.1f}x headroom per worker"
    )


# ---- the engines ---------------------------------------------------------------------------------------------


class MindSporeEngine:
    def __init__(self, kernel):
        setup_device("CPU")
        self.kernel = KIT_KERNELS.get(kernel, "stock")

    def network(self, preset, scale):
        model = build_model(Architecture.from_preset(preset, scale), conv_kernel=self.kernel)
        model.set_train(False)
        return model  # has forward_array and arch, as forward_tiled expects

    def train_step(self):
        """One Adam step as the Trainer runs it: loss and gradients in a dynamic-shape graph, then the optimizer."""
        import mindspore as ms
        from mindspore import nn

        model = build_model(Architecture.from_preset("baseline", 2), conv_kernel=self.kernel)
        model.set_train(True)
        optimizer = nn.Adam(model.trainable_params(), learning_rate=1e-4)
        loss = nn.WithLossCell(model, nn.L1Loss())
        grad = compile_dynamic(ms.value_and_grad(loss, None, optimizer.parameters), 3, n_inputs=2)
        lr = ms.Tensor(random_array((TRAIN_BATCH, 3, TRAIN_LR_SIZE, TRAIN_LR_SIZE)))
        hr = ms.Tensor(random_array((TRAIN_BATCH, 3, 2 * TRAIN_LR_SIZE, 2 * TRAIN_LR_SIZE), seed=1))

        def step():
            loss, grads = grad(lr, hr)
            optimizer(grads)
            loss.asnumpy()

        return step

    def train_step_one_graph(self):
        """One Adam step as the Trainer runs it now: training_step.TrainStep (forward, gradients, overflow check,
        update, loss-scale adjustment) as one static graph; the loss is read every step here, the Trainer less."""
        import mindspore as ms
        from mindspore import nn

        from edsr_lib.training_step import TrainStep

        model = build_model(Architecture.from_preset("baseline", 2), conv_kernel=self.kernel)
        model.set_train(True)  # as the Trainer does: the train-mode graph (no recomputed block intermediates)
        optimizer = nn.Adam(model.trainable_params(), learning_rate=ms.Tensor(1e-4, ms.float32))
        graph = ms.jit(TrainStep(model, nn.L1Loss(), optimizer, ms.amp.StaticLossScaler(1.0)))
        lr = ms.Tensor(random_array((TRAIN_BATCH, 3, TRAIN_LR_SIZE, TRAIN_LR_SIZE)))
        hr = ms.Tensor(random_array((TRAIN_BATCH, 3, 2 * TRAIN_LR_SIZE, 2 * TRAIN_LR_SIZE), seed=1))
        return lambda: graph(lr, hr)[0].asnumpy()


def torch_edsr(preset, scale):
    """The published network in plain PyTorch (EDSR-PyTorch's structure and parameter layout)."""
    import torch
    from torch import nn

    n_blocks, feats, res_scale = {"baseline": (16, 64, 1.0), "paper": (32, 256, 0.1)}[preset]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(feats, feats, 3, padding=1), nn.ReLU(True), nn.Conv2d(feats, feats, 3, padding=1)
            )

        def forward(self, x):
            return self.body(x) * res_scale + x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(3, feats, 3, padding=1)
            self.body = nn.Sequential(*[Block() for _ in range(n_blocks)], nn.Conv2d(feats, feats, 3, padding=1))
            ups = []
            for factor in [2] * {2: 1, 4: 2}.get(scale, 0) or [3]:
                ups += [nn.Conv2d(feats, factor * factor * feats, 3, padding=1), nn.PixelShuffle(factor)]
            self.tail = nn.Sequential(*ups, nn.Conv2d(feats, 3, 3, padding=1))
            self.register_buffer("mean", torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1) * 255)

        def forward(self, x):
            x = self.head(x - self.mean)
            return self.tail(self.body(x) + x) + self.mean

    return Net()


class TorchNetwork:
    """PyTorch's network behind the interface `forward_tiled` expects, so both frameworks tile identically."""

    def __init__(self, preset, scale):
        self.net = torch_edsr(preset, scale).eval()
        self.arch = Architecture.from_preset(preset, scale)

    def forward_array(self, x):
        import torch

        with torch.no_grad():
            return self.net(torch.from_numpy(x)).numpy()


class TorchEngine:
    def __init__(self):
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))

    def network(self, preset, scale):
        return TorchNetwork(preset, scale)

    def train_step(self):
        import torch

        net = torch_edsr("baseline", 2).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        lr = torch.from_numpy(random_array((TRAIN_BATCH, 3, TRAIN_LR_SIZE, TRAIN_LR_SIZE)))
        hr = torch.from_numpy(random_array((TRAIN_BATCH, 3, 2 * TRAIN_LR_SIZE, 2 * TRAIN_LR_SIZE), seed=1))

        def step():
            opt.zero_grad()
            loss = torch.nn.functional.l1_loss(net(lr), hr)
            loss.backward()
            opt.step()

        return step


def make_engine(name):
    return TorchEngine() if name == "torch" else MindSporeEngine(name)


def engine_worker(name, cases, sizes, train_only=False):
    """Everything timed for one engine, in this (fresh) process; prints one JSON line."""
    engine = make_engine(name)
    result = {"inference": {}}
    if not isinstance(engine, TorchEngine):
        result["train_step_one_graph"] = best_of(engine.train_step_one_graph(), repeat=3)
    result["train_step"] = best_of(engine.train_step(), repeat=3)
    if train_only:
        print(json.dumps(result))
        return
    for preset, scale, size in cases:
        network = engine.network(preset, scale)
        x = random_array((1, 3, size, size))
        result["inference"][f"{preset} x{scale} {size}x{size}"] = best_of(lambda: network.forward_array(x), repeat=5)
    network = engine.network("baseline", 2)
    t = time.perf_counter()
    network.forward_array(random_array((1, 3, 40, 40)))
    result["first_call"] = time.perf_counter() - t
    before, t = rss_mb(), time.perf_counter()
    for h, w in sizes:
        network.forward_array(random_array((1, 3, h, w), seed=h * w))
    result["new_sizes"] = time.perf_counter() - t
    result["new_size_rss_mb"] = (rss_mb() - before) / len(sizes)
    print(json.dumps(result))


def memory_worker(name, case):
    """MEMORY_CASES[case] in this (fresh) process; prints one JSON line: seconds, peak RSS and RSS after set-up."""
    preset, scale, (h, w), tile = MEMORY_CASES[case]
    network = make_engine(name).network(preset, scale)
    x = random_array((1, 3, h, w))
    start_mb = rss_mb()
    t = time.perf_counter()
    forward_tiled(network, x, tile=tile)
    seconds = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "start_mb": start_mb}))


def available_engines():
    engines = ["kit", "kit-direct", "stock", "torch"]
    if fast_conv_library()[0] is None:
        print(f"(the kit's CPU convolution is unavailable: {fast_conv_library()[1]}; 'kit' runs stock Conv2d)")
    if importlib.util.find_spec("torch") is None:
        engines.remove("torch")
        print("(torch not installed: ratios against stock MindSpore only; pip install -e '.[bench]')")
    return engines


def run_worker(mode, engine, *args):
    env = dict(os.environ)
    if engine == "kit-spinning":  # the kit without MS_DEV_HOST_BLOCKING_RUN: the host thread busy-waits per op
        engine, env["MS_DEV_HOST_BLOCKING_RUN"] = "kit", "0"
    if engine == "stock":  # stock Conv2d with the documented mitigation (on AVX-512 it is ~100x slower without)
        env.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    done = subprocess.run([sys.executable, __file__, mode, engine, *args], capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"bench worker {mode} {engine} failed: {last}")
    return json.loads(lines[-1])


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def fastest(a, b):
    """Elementwise minimum of two worker results (times; memory growth too, as the least disturbed round)."""
    if isinstance(a, dict):
        return {key: fastest(a[key], b[key]) for key in a}
    return min(a, b)


def _train_row(label, key, results, engines, kit, ref):
    cells = "".join(f"{results[n][key] * 1000:>8.0f}ms" if key in results[n] else f"{'-':>10}" for n in engines)
    print(f"{label:<26}{cells}{ratio(kit[key], ref['train_step']):>13}")


def bench_training(rounds):
    """Training steps only: the one-graph step, the previous multi-graph step, and the kit without
    MS_DEV_HOST_BLOCKING_RUN, against PyTorch (or stock MindSpore)."""
    engines = available_engines() + ["kit-spinning"]  # the last column: the kit with the host thread spinning
    results = {}
    for _ in range(rounds):
        for name in engines:
            result = run_worker("--engine-worker", name, "--train-only")
            results[name] = fastest(results[name], result) if name in results else result
    reference = "torch" if "torch" in results else "stock"
    kit, ref = results["kit"], results[reference]
    print(
        f"{f'training (best of {3 * rounds})':<26}"
        + "".join(f"{name:>10}" for name in engines[:-1])
        + f"{'spinning':>10}"
        + f"{'kit/' + reference:>13}"
    )
    _train_row("one-graph step b16 LR48", "train_step_one_graph", results, engines, kit, ref)
    _train_row("multi-graph step (before)", "train_step", results, engines, kit, ref)
    print(
        f"kit one-graph without MS_DEV_HOST_BLOCKING_RUN: "
        f"{ratio(results['kit-spinning']['train_step_one_graph'], kit['train_step_one_graph'])} of the kit with it"
    )


def bench_networks(quick, rounds, sizes):
    engines = available_engines()
    results = {}
    for _ in range(rounds):  # engines alternate, so slow spells of a shared machine do not hit one engine only
        for name in engines:
            result = run_worker("--engine-worker", name, "--new-sizes", str(sizes), *(["--quick"] if quick else []))
            results[name] = fastest(results[name], result) if name in results else result
    reference = "torch" if "torch" in results else "stock"
    kit, ref = results["kit"], results[reference]
    print(
        f"{f'inference (best of {5 * rounds})':<26}"
        + "".join(f"{name:>10}" for name in engines)
        + f"{'kit/' + reference:>13}"
    )
    for case in kit["inference"]:
        cells = "".join(f"{results[name]['inference'][case] * 1000:>8.0f}ms" for name in engines)
        print(f"{case:<26}{cells}{ratio(kit['inference'][case], ref['inference'][case]):>13}")
    cells = "".join(f"{results[n]['new_sizes'] * 1000:>8.0f}ms" for n in engines)
    print(f"{f'{sizes} new sizes 40-119 px':<26}{cells}{ratio(kit['new_sizes'], ref['new_sizes']):>13}")
    _train_row("one-graph step b16 LR48", "train_step_one_graph", results, engines, kit, ref)
    _train_row("multi-graph step (before)", "train_step", results, engines, kit, ref)
    print(
        "first call (graph compile), baseline x2: "
        + ", ".join(f"{n} {results[n]['first_call']:.2f} s" for n in engines)
    )
    print(
        "resident memory per new input size: "
        + ", ".join(f"{n} {results[n]['new_size_rss_mb']:+.2f} MB" for n in engines)
    )
    return results


def bench_memory(case="quarter", engines=None):
    preset, scale, (h, w), tile = MEMORY_CASES[case]
    unknown = set(engines or ()) - set(ENGINES)
    if unknown or (engines and "kit" not in engines):
        raise SystemExit(f"--engines: a comma-separated list including kit, from {', '.join(ENGINES)}")
    names = [name for name in available_engines() if not engines or name in engines]
    results = {name: run_worker("--memory-worker", name, "--memory-case", case) for name in names}
    for name, r in results.items():
        print(
            f"tiled {preset} x{scale}, {w}x{h} -> {w * scale}x{h * scale}, tile {tile}, {name}: "
            f"{r['seconds']:.0f} s, peak RSS {r['peak_mb']:.0f} MB ({r['peak_mb'] - r['start_mb']:+.0f} MB over "
            f"the {r['start_mb']:.0f} MB after set-up)"
        )
    reference = "torch" if "torch" in results else "stock"
    kit, ref = results["kit"], results[reference]
    print(
        f"  kit/{reference}: time {ratio(kit['seconds'], ref['seconds'])}, peak RSS "
        f"{ratio(kit['peak_mb'], ref['peak_mb'])}, growth "
        f"{ratio(kit['peak_mb'] - kit['start_mb'], ref['peak_mb'] - ref['start_mb'])}"
    )
    return results


# The CPU speed and memory targets: kit / PyTorch at most this, measured in one run (--memory).
TARGETS = {
    "baseline x2 96x96": 0.75,
    "baseline x2 192x192": 0.75,
    "paper x2 96x96": 0.8,
    "training step (one graph)": 0.9,
    "tiled paper x4 2040x1356 peak RSS": 1.3,
}


def print_targets(networks, full_memory):
    """Each target's measured kit / PyTorch ratio, from this run's results."""
    if "torch" not in networks:
        print("targets: need PyTorch for the reference (pip install -e '.[bench]')")
        return
    kit, torch = networks["kit"], networks["torch"]
    measured = {case: kit["inference"][case] / torch["inference"][case] for case in TARGETS if case in kit["inference"]}
    measured["training step (one graph)"] = kit["train_step_one_graph"] / torch["train_step"]
    if full_memory and "torch" in full_memory:
        measured["tiled paper x4 2040x1356 peak RSS"] = full_memory["kit"]["peak_mb"] / full_memory["torch"]["peak_mb"]
    print("targets (kit / PyTorch, this run):")
    for name, limit in TARGETS.items():
        value = measured.get(name)
        verdict = "not measured" if value is None else ("met" if value <= limit else "MISSED")
        shown = "-" if value is None else f"{value:.2f}x"
        print(f"  {name:<36}{shown:>8}  <= {limit:.2f}x  {verdict}")


def bench_kernel_memory(shapes=232):
    """Resident memory of the kit's kernel library alone (called directly, no MindSpore) over `shapes` new input
    shapes, with oneDNN's own primitive cache on (default, bounded at 1024 entries) and off."""
    for label, extra in (
        ("oneDNN primitive cache on", {}),
        ("oneDNN primitive cache off", {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}),
    ):
        done = subprocess.run([sys.executable, "-m", "edsr_lib.kernels", "probe", str(shapes)], capture_output=True,
                              text=True, env={**os.environ, **extra})  # fmt: skip
        if done.returncode:
            print(f"kernel memory: {done.stderr.strip()}")
            return
        after_32, after_all = map(float, done.stdout.split())
        print(f"kernel memory, {label}: {after_32:.1f} MB after 32 shapes, {after_all:.1f} MB after {shapes} "
              f"({after_all - after_32:+.1f} MB)")  # fmt: skip


LAYER_CASES = [(64, 96), (64, 192), (256, 48), (256, 96)]  # (channels in = out, LR side): EDSR's 3x3 body convs


def sgemm_ceiling():
    """GFLOP/s of a 4096^3 float32 matrix product (numpy's BLAS): what a convolution could reach at best here."""
    a = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
    seconds = best_of(lambda: a @ a, repeat=2)
    return 2 * 4096**3 / seconds / 1e9


def bench_layers():
    """One 3x3 convolution (forward; backward data is the same forward of flipped filters) per layer type: the kit's
    direct kernel and both Winograd variants against PyTorch, with the GFLOP/s each reaches counted as a direct
    convolution's 2 * C * O * 9 * H * W (so Winograd can exceed the sgemm ceiling), and each Winograd variant's largest
    difference from a float64 convolution (numpy), relative to the output's largest value: the numbers
    `layer_algorithm` (edsr_lib/kernels/conv.py) chooses by."""
    import ctypes

    library = fast_conv_library()[0]
    if library is None:
        raise SystemExit(f"the kit's CPU convolution is unavailable: {fast_conv_library()[1]}")
    lib = ctypes.CDLL(str(library))

    def call(name, *arrays):
        status = aot_call(lib, name, *arrays)
        assert status == 0, (name, status)

    torch = None
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
    ceiling = sgemm_ceiling()
    kernels = {"direct": "ConvForward", "F(4x4)": "WinogradConvForward", "F(2x2)": "WinogradF2ConvForward"}
    print(f"sgemm ceiling (numpy, 4096^3 float32): {ceiling:.0f} GFLOP/s")
    print(
        f"{'3x3 conv, batch 1':<20}"
        + "".join(f"{name:>15}" for name in (*kernels, "torch"))
        + f"{'F(4x4)/torch':>13}{'F(2x2)/torch':>13}{'error F(4x4)':>13}{'F(2x2)':>9}{'direct':>9}"
    )
    for attempt, (channels, side) in enumerate([LAYER_CASES[0], *LAYER_CASES]):  # the first: a warm-up, not shown
        x, w = random_array((1, channels, side, side)), random_array((channels, channels, 3, 3)) / 255.0
        b = np.zeros(channels, np.float32)
        outputs = {name: np.empty((1, channels, side, side), np.float32) for name in kernels}
        flops = 2 * channels * channels * 9 * side * side
        times = {
            name: best_of(lambda: call(function, x, w, b, outputs[name]), repeat=5)
            for name, function in kernels.items()
        }
        if torch is not None:
            tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
            with torch.no_grad():
                times["torch"] = best_of(lambda: torch.nn.functional.conv2d(tx, tw, tb, padding=1), repeat=5)
        if attempt == 0:
            continue
        exact = conv3x3_float64(x, w)
        errors = {name: np.abs(out - exact).max() / np.abs(exact).max() for name, out in outputs.items()}
        cells = "".join(
            f"{times[k] * 1e3:>6.2f}ms{flops / times[k] / 1e9:>5.0f}GF" if k in times else f"{'-':>15}"
            for k in (*kernels, "torch")
        )
        print(
            f"{f'{channels}->{channels} at {side}x{side}':<20}{cells}"
            f"{ratio(times['F(4x4)'], times.get('torch')):>13}{ratio(times['F(2x2)'], times.get('torch')):>13}"
            f"{errors['F(4x4)']:>13.1e}{errors['F(2x2)']:>9.1e}{errors['direct']:>9.1e}"
        )
    bench_network_errors()


def bench_network_errors(side=96):
    """Whole networks on a real photo: each Winograd variant against the direct kernel with the same weights (the
    default initialisation), as the float output's largest difference on 0-255 and the share of equal uint8 pixels,
    for one pass and for the self-ensemble."""
    photo = read_image(sample_folder() / SAMPLE_TEST[0])[0][:side, :side]
    print(f"whole networks on {SAMPLE_TEST[0]} ({side}x{side} LR), against direct with the same weights:")
    for preset in ("baseline", "paper"):
        networks = {"direct": build_model(Architecture.from_preset(preset, 2), "direct")}
        for algorithm in ("winograd", "winograd2x2"):
            networks[algorithm] = build_model(Architecture.from_preset(preset, 2), algorithm)
            load_state(networks[algorithm], state_dict(networks["direct"]))
        for ensemble in (False, True):
            outputs = {name: upscale_float(net.set_train(False), photo, self_ensemble=ensemble)
                       for name, net in networks.items()}  # fmt: skip
            pixels = {name: quantize(out).astype(np.int16) for name, out in outputs.items()}
            cells = ", ".join(
                f"{name} max |diff| {np.abs(outputs[name] - outputs['direct']).max():.1e}, "
                f"{(pixels[name] == pixels['direct']).mean():.4%} of uint8 pixels equal "
                f"(others within {np.abs(pixels[name] - pixels['direct']).max():.0f})"
                for name in ("winograd", "winograd2x2")
            )
            print(f"  {preset} x2{' self-ensemble' if ensemble else ''}: {cells}")


def conv3x3_float64(x, w):
    """A 3x3, pad-1 convolution of one image in float64 (numpy, one matrix product per filter tap): the reference
    the kernels' float32 errors are measured against."""
    c, h, wd = x.shape[1:]
    padded = np.pad(x[0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((w.shape[0], h * wd))
    for i in range(3):
        for j in range(3):
            out += w[:, :, i, j].astype(np.float64) @ padded[:, i : i + h, j : j + wd].reshape(c, -1)
    return out.reshape(1, -1, h, wd)


EXPORT_LR = (150, 225)  # LR height, width: notebook 05's sample image


def bench_export(rounds=3):
    """Inference of one image through the checkpoint and its exports: the MINDIR in this process (stock Conv2d
    without the ISA cap: oneDNN's reference loops on AVX-512), in the kit's capped child process (what
    ExportedModel uses on such CPUs), and ONNX (onnxruntime, tiled). Best of `rounds` after one warm-up call."""
    from edsr_lib.export import MindirProcess, export_model, load_exported, load_mindir
    from edsr_lib.model import state_dict
    from edsr_lib.loading import load_model
    from edsr_lib.weights import save_checkpoint

    setup_device("CPU")
    arch = Architecture.from_preset("baseline", 2)
    lr = np.random.default_rng(0).integers(0, 256, (*EXPORT_LR, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(f"{tmp}/m.ckpt", arch, state_dict(build_model(arch)))
        mindir = export_model(ckpt, "MINDIR", f"{tmp}/m.mindir")[0]
        runners = {
            "checkpoint (kit kernel)": load_model(ckpt).forward_array,
            "MINDIR, child process with the AVX2 cap": MindirProcess(mindir),
            "MINDIR, this process (no cap)": load_mindir(mindir),
        }
        if importlib.util.find_spec("onnxruntime"):
            onnx = export_model(ckpt, "ONNX", f"{tmp}/m.onnx", input_size=(96, 96))[0]
            runners["ONNX (onnxruntime, 96x96 tiles)"] = load_exported(onnx).forward_array
        x = np.ascontiguousarray(lr.transpose(2, 0, 1)[None], np.float32)
        times = {}
        for name, run in runners.items():
            tries = 1 if "no cap" in name else rounds  # ~100 s a call on AVX-512 CPUs
            best = []
            for i in range(tries + 1):
                start = time.perf_counter()
                run(x)
                best.append(time.perf_counter() - start)
            times[name] = min(best[1:])
            print(f"{name}: {times[name]:.2f} s (first call {best[0]:.2f} s)")
        reference = times["checkpoint (kit kernel)"]
        for name, seconds in times.items():
            print(f"  {name} / checkpoint: {ratio(seconds, reference)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory", action="store_true")
    parser.add_argument(
        "--memory-full", action="store_true", help="only the tiled paper x4 case at 2040x1356, tile 256"
    )
    parser.add_argument("--memory-case", choices=sorted(MEMORY_CASES), default="quarter", help=argparse.SUPPRESS)
    parser.add_argument("--engines", help="comma-separated engines for --memory-full (default: all)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, help="times each engine is run, alternating (default 2; 1 with --quick)")
    parser.add_argument("--new-sizes", type=int, default=12, help="unseen input sizes to time (default 12)")
    parser.add_argument("--train", action="store_true", help="training steps only (incl. without host blocking)")
    parser.add_argument("--export", action="store_true", help="checkpoint vs MINDIR (in process, child) vs ONNX")
    parser.add_argument("--kernel-memory", action="store_true", help="the kernel's resident memory over new shapes")
    parser.add_argument(
        "--layers",
        action="store_true",
        help="one 3x3 conv per layer type: direct, Winograd F(4x4) and F(2x2), torch, with errors",
    )
    parser.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine-worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_worker:
        engine_worker(
            args.engine_worker,
            QUICK_CASES if args.quick else FULL_CASES,
            new_sizes(args.new_sizes),
            train_only=args.train_only,
        )
    elif args.train:
        bench_training(args.rounds or 2)
    elif args.export:
        bench_export(args.rounds or 3)
    elif args.kernel_memory:
        bench_kernel_memory()
    elif args.layers:
        bench_layers()
    elif args.memory_worker:
        memory_worker(args.memory_worker, args.memory_case)
    elif args.memory_full:
        bench_memory("full", args.engines.split(",") if args.engines else None)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            bench_imresize()
            bench_pipeline(tmp)
        networks = bench_networks(args.quick, args.rounds or (1 if args.quick else 2), args.new_sizes)
        full_memory = None
        if args.memory:
            bench_memory()
            full_memory = bench_memory("full", ["kit", "torch" if "torch" in networks else "stock"])
        # last: it runs PyTorch and MindSpore in this process, which the workers above must not share
        if not args.quick:
            bench_layers()
        print_targets(networks, full_memory)
