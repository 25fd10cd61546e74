"""The kit's CPU convolution (kernels/src via kernels/conv.py): agreement with MindSpore's Conv2d forward and
backward, identical training losses, interchangeable parameters, the build cache and the fallback."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn, ops

from edsr_lib.kernels import build as native
from edsr_lib.kernels.conv import FastConv2d, make_conv
from edsr_lib.model import Architecture, build_model, compile_dynamic
from edsr_lib.runtime import fast_conv_library

FAST_CONV_LIBRARY, FAST_CONV_UNAVAILABLE = fast_conv_library()

needs_fast = pytest.mark.skipif(FAST_CONV_LIBRARY is None, reason=f"fast conv unavailable: {FAST_CONV_UNAVAILABLE}")


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


@needs_fast
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.slow
def test_forward_and_backward_match_nn_conv2d_on_random_shapes(seed):
    rng = np.random.default_rng(seed)
    n, c, o = int(rng.integers(1, 4)), int(rng.choice([1, 3, 8, 64])), int(rng.choice([3, 16, 64, 256]))
    h, w, k = int(rng.integers(5, 40)), int(rng.integers(5, 40)), int(rng.choice([1, 3, 5]))
    ms.set_seed(seed)
    fast = make_conv(c, o, k, kernel="direct")
    assert isinstance(fast, FastConv2d) and not fast.winograd
    x = ms.Tensor(rng.standard_normal((n, c, h, w)).astype(np.float32))
    dy = ms.Tensor(rng.standard_normal((n, o, h, w)).astype(np.float32))

    def stock(x, weight, bias):  # MindSpore's own convolution with the same parameters
        return ops.conv2d(x, weight, bias, pad_mode="pad", padding=k // 2)

    def fast_fn(x, weight, bias):
        return fast.conv2d(x, weight, bias)

    assert _rel(stock(x, fast.weight, fast.bias).asnumpy(), fast(x).asnumpy()) <= 1e-5
    grads = [
        ms.grad(lambda *a, f=f: (f(*a) * dy).sum(), grad_position=(0, 1, 2))(x, fast.weight, fast.bias)
        for f in (stock, fast_fn)
    ]
    for name, ref, got in zip(("dx", "dw", "db"), *grads):
        assert _rel(ref.asnumpy(), got.asnumpy()) <= 1e-5, name


@needs_fast
@pytest.mark.parametrize("seed", range(3))
def test_fused_block_forms_match_stock_ops(seed):
    """conv+ReLU and conv*scale+skip (the residual block's two fused ops) against MindSpore's own ops, both ways."""
    rng = np.random.default_rng(100 + seed)
    n, c, o = int(rng.integers(1, 3)), int(rng.choice([3, 16, 64])), int(rng.choice([16, 64]))
    h, w = int(rng.integers(5, 30)), int(rng.integers(5, 30))
    scale = ms.Tensor([float(rng.choice([1.0, 0.1]))], ms.float32)
    ms.set_seed(seed)
    fast = make_conv(c, o, 3, kernel="direct")
    x = ms.Tensor(rng.standard_normal((n, c, h, w)).astype(np.float32))
    skip = ms.Tensor(rng.standard_normal((n, o, h, w)).astype(np.float32))
    dy = ms.Tensor(rng.standard_normal((n, o, h, w)).astype(np.float32))

    def conv(x, weight, bias):
        return ops.conv2d(x, weight, bias, pad_mode="pad", padding=1)

    cases = {
        "relu": (lambda x, wt, b, s: ops.relu(conv(x, wt, b)), lambda x, wt, b, s: fast.conv2d_relu(x, wt, b)),
        "residual": (
            lambda x, wt, b, s: conv(x, wt, b) * scale + s,
            lambda x, wt, b, s: fast.conv2d_residual(x, wt, b, s, scale),
        ),
    }
    for form, (reference, fused) in cases.items():
        args = (x, fast.weight, fast.bias, skip)
        assert _rel(reference(*args).asnumpy(), fused(*args).asnumpy()) <= 1e-5, form
        grads = [
            ms.grad(lambda *a, f=f: (f(*a) * dy).sum(), grad_position=(0, 1, 2, 3))(*args) for f in (reference, fused)
        ]
        for name, ref, got in zip(("dx", "dw", "db", "dskip"), *grads):
            if form == "relu" and name == "dskip":
                continue  # not an input of conv+ReLU
            assert _rel(ref.asnumpy(), got.asnumpy()) <= 1e-5, (form, name)


@needs_fast
def test_same_parameters_and_same_losses_over_adam_steps():
    arch = Architecture(scale=2, n_resblocks=2, n_feats=16)
    ms.set_seed(7)
    stock = build_model(arch, "stock")
    ms.set_seed(7)
    fast = build_model(arch, "direct")
    names = [(p.name, p.shape) for p in stock.get_parameters()]
    assert names == [(p.name, p.shape) for p in fast.get_parameters()]
    assert all(np.array_equal(a.asnumpy(), b.asnumpy()) for a, b in zip(stock.get_parameters(), fast.get_parameters()))
    rng = np.random.default_rng(0)
    ms.set_seed(7)
    fast_graph = build_model(arch, "direct")
    # Two patch sizes, alternating: the trainer's dynamic-shape graph must serve both.
    batches = [
        (
            ms.Tensor(rng.uniform(0, 255, (4, 3, s, t)).astype(np.float32)),
            ms.Tensor(rng.uniform(0, 255, (4, 3, 2 * s, 2 * t)).astype(np.float32)),
        )
        for s, t in ((12, 12), (10, 14))
    ]
    losses = {}
    for name, model in (("stock", stock), ("fast", fast), ("fast, graph", fast_graph)):
        opt = nn.Adam(model.trainable_params(), learning_rate=1e-3)
        grad = ms.value_and_grad(nn.WithLossCell(model, nn.L1Loss()), None, opt.parameters)
        if name == "fast, graph":
            grad = compile_dynamic(grad, 3, n_inputs=2)
        losses[name] = []
        for step in range(6):
            loss, grads = grad(*batches[step % 2])
            opt(grads)
            losses[name].append(float(loss.asnumpy()))
    np.testing.assert_allclose(losses["fast"], losses["stock"], rtol=1e-5)
    np.testing.assert_allclose(losses["fast, graph"], losses["stock"], rtol=1e-5)
    assert losses["fast"][-1] < losses["fast"][0]


# Winograd against the direct kernel. F(4x4, 3x3)'s transforms add and subtract multiples of up to 8 of the tile
# values, so its float32 error is larger than direct's: measured up to about 1e-5 of the output's largest value on
# these shapes (docs/benchmarks.md), checked here at 5e-5. F(2x2, 3x3)'s use only +-1 and 1/2 (about half F(4x4)'s
# error against float64): checked at 5e-6.
WINOGRAD_TOLERANCE = {"winograd": 5e-5, "winograd2x2": 5e-6}


@needs_fast
@pytest.mark.parametrize("algorithm", ["winograd", "winograd2x2"])
@pytest.mark.parametrize("seed", range(4))
def test_winograd_forward_fused_forms_and_backward_match_direct(seed, algorithm):
    rng = np.random.default_rng(200 + seed)
    tolerance = WINOGRAD_TOLERANCE[algorithm]
    n, c, o = int(rng.integers(1, 3)), int(rng.choice([16, 24, 64, 256])), int(rng.choice([16, 40, 64, 256]))
    h, w = int(rng.integers(3, 30)), int(rng.integers(3, 30))  # mostly not multiples of the 4x4 output tile
    ms.set_seed(seed)
    wino = make_conv(c, o, 3, kernel=algorithm)
    direct = FastConv2d(wino, "direct")  # the same parameters on the direct kernel
    assert wino.algorithm == algorithm and wino.winograd and not direct.winograd
    x = ms.Tensor(rng.standard_normal((n, c, h, w)).astype(np.float32))
    skip = ms.Tensor(rng.standard_normal((n, o, h, w)).astype(np.float32))
    dy = ms.Tensor(rng.standard_normal((n, o, h, w)).astype(np.float32))
    scale = ms.Tensor([0.1], ms.float32)
    forms = {
        "plain": lambda f: lambda x, wt, b, s: f.conv2d(x, wt, b),
        "relu": lambda f: lambda x, wt, b, s: f.conv2d_relu(x, wt, b),
        "residual": lambda f: lambda x, wt, b, s: f.conv2d_residual(x, wt, b, s, scale),
    }
    args = (x, wino.weight, wino.bias, skip)
    for form, make in forms.items():
        expected, got = make(direct)(*args).asnumpy(), make(wino)(*args).asnumpy()
        assert _rel(expected, got) <= tolerance, form
        grads = [
            ms.grad(lambda *a, f=make(k): (f(*a) * dy).sum(), grad_position=(0, 1, 2))(*args) for k in (direct, wino)
        ]
        for name, expected, got in zip(("dx", "dw", "db"), *grads):
            assert _rel(expected.asnumpy(), got.asnumpy()) <= tolerance, (form, name)


@needs_fast
@pytest.mark.parametrize("algorithm", ["winograd", "winograd2x2"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_the_fused_upsampler_equals_conv_then_pixel_shuffle(scale, algorithm):
    """In inference the Winograd upsampler writes each conv's output already pixel-shuffled (one op per stage);
    in training it runs conv and PixelShuffle. Both, and their gradients, agree."""
    from edsr_lib.model import Upsampler

    rng = np.random.default_rng(scale)
    ms.set_seed(scale)
    up = Upsampler(scale, 16, algorithm)
    assert len(up.fused_ops) == (2 if scale == 4 else 1)
    assert Upsampler(scale, 16, "direct").fused_ops == ()
    x = ms.Tensor(rng.standard_normal((2, 16, 7, 9)).astype(np.float32))
    dy = ms.Tensor(rng.standard_normal((2, 16, 7 * scale, 9 * scale)).astype(np.float32))
    outputs, grads = {}, {}
    for training in (False, True):
        up.set_train(training)
        outputs[training] = up(x).asnumpy()
        grads[training] = ms.grad(lambda x: (up(x) * dy).sum())(x).asnumpy()
    assert outputs[False].shape == (2, 16, 7 * scale, 9 * scale)
    assert _rel(outputs[True], outputs[False]) <= WINOGRAD_TOLERANCE[algorithm]
    assert _rel(grads[True], grads[False]) <= WINOGRAD_TOLERANCE[algorithm]


def test_the_algorithm_is_chosen_per_layer():
    if FAST_CONV_LIBRARY is None:
        pytest.skip(f"fast conv unavailable: {FAST_CONV_UNAVAILABLE}")
    assert make_conv(64, 64, 3, kernel="auto").winograd
    assert not make_conv(3, 64, 3, kernel="auto").winograd  # the RGB head: 3 channels would be padded to 16
    assert not make_conv(64, 3, 3, kernel="fast").winograd  # the tail
    assert not make_conv(64, 64, 5, kernel="winograd").winograd  # F(4x4, 3x3) is for 3x3 filters only
    assert not make_conv(64, 64, 3, kernel="direct").winograd
    assert make_conv(3, 64, 3, kernel="winograd").winograd  # asked for explicitly
    assert make_conv(64, 64, 3, kernel="auto").algorithm == "winograd"  # F(4x4, 3x3): faster on every EDSR layer
    assert make_conv(64, 64, 3, kernel="winograd2x2").algorithm == "winograd2x2"
    assert make_conv(64, 64, 5, kernel="winograd2x2").algorithm == "direct"


@needs_fast
def test_winograd_training_losses_match_direct_over_20_adam_steps():
    arch = Architecture(scale=2, n_resblocks=2, n_feats=32)
    rng = np.random.default_rng(3)
    batches = [
        (
            ms.Tensor(rng.uniform(0, 255, (4, 3, 13, 11)).astype(np.float32)),
            ms.Tensor(rng.uniform(0, 255, (4, 3, 26, 22)).astype(np.float32)),
        )
        for _ in range(4)
    ]
    losses = {}
    for algorithm in ("direct", "winograd", "winograd2x2"):
        ms.set_seed(11)
        model = build_model(arch, algorithm)
        used = {c.algorithm for _, c in model.cells_and_names() if isinstance(c, FastConv2d)}
        assert used == {algorithm}  # asked for explicitly: every 3x3 layer
        opt = nn.Adam(model.trainable_params(), learning_rate=1e-3)
        step = compile_dynamic(ms.value_and_grad(nn.WithLossCell(model, nn.L1Loss()), None, opt.parameters), 3, 2)
        losses[algorithm] = []
        for i in range(20):
            loss, grads = step(*batches[i % 4])
            opt(grads)
            losses[algorithm].append(float(loss.asnumpy()))
    np.testing.assert_allclose(losses["winograd"], losses["direct"], rtol=1e-4)
    np.testing.assert_allclose(losses["winograd2x2"], losses["direct"], rtol=1e-4)
    assert losses["winograd"][-1] < losses["winograd"][0]


@needs_fast
def test_the_library_exports_every_entry_point_the_python_side_names():
    import ctypes

    library = ctypes.CDLL(str(FAST_CONV_LIBRARY))
    missing = [name for name in native.entry_points() if not hasattr(library, name)]
    assert not missing and len(native.entry_points()) == 40, missing  # 3 algorithms x 7 ops (2 Winograd-only) x 2
    with pytest.raises(KeyError):
        native.entry_point("direct", "ConvShuffleForward")


def _disassembly_uses_zmm(library):
    text = subprocess.run(["objdump", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    return "%zmm" in text


@needs_fast
@pytest.mark.slow
def test_both_code_paths_compile_without_warnings_and_the_portable_one_passes_the_conv_tests(tmp_path):
    """Each machine builds one of the kernel's two paths (-march=native picks AVX-512 intrinsics or the portable
    loops). Here both compile with -Wall -Wextra -Werror, and this file's quick tests run against the portable one."""
    native_build = tmp_path / "native.so"
    portable = tmp_path / "portable.so"
    assert native.compile_library(native_build, extra_flags=("-Werror",)) == ""
    assert native.compile_library(portable, extra_flags=(*native.PORTABLE_FLAGS, "-Werror")) == ""
    if shutil.which("objdump"):
        assert not _disassembly_uses_zmm(portable)
        assert _disassembly_uses_zmm(native_build) == (" avx512f" in native.cpu_description())
    run_against = (
        "import sys, pathlib, pytest\n"
        "import edsr_lib.backend as backend\n"
        "backend._CACHED_LIBRARY, backend._CACHED_REASON = pathlib.Path(sys.argv[1]), None\n"
        "sys.exit(pytest.main(['-q', '-x', '-p', 'no:cacheprovider', '-m', 'not slow', sys.argv[2]]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", run_against, str(portable), __file__],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


@needs_fast
@pytest.mark.slow
def test_library_is_built_once_and_keyed_by_source(tmp_path, monkeypatch):
    assert FAST_CONV_LIBRARY.parent.name == native.build_key()
    mtime = FAST_CONV_LIBRARY.stat().st_mtime_ns
    assert native.find_library() == (FAST_CONV_LIBRARY, None) == native.build()
    assert FAST_CONV_LIBRARY.stat().st_mtime_ns == mtime  # cached, not rebuilt
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native.find_library() == (None, None)  # an empty cache: nothing built, nothing tried
    headers = native._onednn_include()
    if headers is not None and str(headers).startswith(str(FAST_CONV_LIBRARY.parents[2])):  # the cached download
        (tmp_path / "edsr_lib" / "onednn-headers").mkdir(parents=True)
        shutil.copytree(headers.parent, native._headers_cache().parent)  # no second download in the test
    built, reason = native.build()
    assert reason is None and built.is_file() and str(built).startswith(str(tmp_path))
    assert native.find_library() == (built, None)


@pytest.mark.slow
def test_import_builds_nothing_and_a_failed_build_is_remembered(tmp_path):
    """Importing the kit with an empty cache runs no compiler and downloads nothing; `native build` fails once with
    its reason, which later imports report without retrying, until `build --force`."""
    fake = tmp_path / "fake-g++"
    calls = tmp_path / "calls"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho 'fatal: no compiler here' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "CXX": str(fake),
        "PIP_INDEX_URL": "http://127.0.0.1:9/",
        "PIP_NO_INDEX": "1",
    }
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    probe = "import edsr_lib.backend as b; print(b._CACHED_LIBRARY, '|', b._CACHED_REASON)"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert imported.stdout.strip() == "None | None" and not calls.exists()
    assert not (tmp_path / "cache" / "edsr_lib" / "onednn-headers").exists()  # no download attempted
    headers = native._onednn_include()
    if headers is not None:  # let the build reach the compiler without a network
        shutil.copytree(
            headers.parent,
            tmp_path / "cache" / "edsr_lib" / "onednn-headers" / native.HEADERS_REQUIREMENT.split("==")[1],
        )
    build = [sys.executable, "-m", "edsr_lib.kernels", "build"]
    first = subprocess.run(build, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 1 and "was not built" in first.stderr and "Traceback" not in first.stderr
    reason = "fatal: no compiler here" if headers is not None else "oneDNN headers unavailable"
    assert reason in first.stderr
    again = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert reason in again.stdout and "remembered" in again.stdout
    tries = calls.read_text().count("\n") if calls.exists() else 0
    assert subprocess.run(build, capture_output=True, text=True, env=env, timeout=300).returncode == 1
    assert (calls.read_text().count("\n") if calls.exists() else 0) == tries  # remembered: not retried
    subprocess.run([*build, "--force"], capture_output=True, text=True, env=env, timeout=300)
    assert headers is None or calls.read_text().count("\n") == tries + 1  # --force retries


def test_fallback_without_compiler_warns_once_and_matches():
    code = """
import json, warnings, numpy as np
warnings.simplefilter("default")
import edsr_lib, mindspore as ms, os
from edsr_lib.runtime import setup_device, fast_conv_library
FAST_CONV_LIBRARY, FAST_CONV_UNAVAILABLE = fast_conv_library()
setup_device("CPU")
from edsr_lib.model import Architecture, build_model, compile_dynamic
ms.set_seed(11)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("default")
    model = build_model(Architecture(scale=2, n_resblocks=2, n_feats=8))
x = np.random.default_rng(0).uniform(0, 255, (1, 3, 10, 12)).astype(np.float32)
kinds = sorted({type(c).__name__ for _, c in model.cells_and_names()})
print(json.dumps({"library": str(FAST_CONV_LIBRARY), "reason": FAST_CONV_UNAVAILABLE,
                  "isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "warnings": [str(w.message) for w in caught],
                  "kinds": kinds,
                  "out": model(ms.Tensor(x)).asnumpy().ravel()[:50].tolist()}))
"""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**env, "CXX": "/nonexistent/c++"}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["library"] == "None" and "no C++ compiler" in info["reason"] and info["isa"] == "AVX2"
    assert len(info["warnings"]) == 1 and "fast CPU convolution unavailable" in info["warnings"][0]
    assert "Conv2d" in info["kinds"] and "FastConv2d" not in info["kinds"]
    if FAST_CONV_LIBRARY is not None:  # the fast path computes the same network
        ms.set_seed(11)
        model = build_model(Architecture(scale=2, n_resblocks=2, n_feats=8), "fast")
        x = np.random.default_rng(0).uniform(0, 255, (1, 3, 10, 12)).astype(np.float32)
        ours = model(ms.Tensor(x)).asnumpy().ravel()[:50]
        assert _rel(np.array(info["out"]), ours) <= 1e-5


@needs_fast
def test_evicted_plans_free_their_memory():
    """200 shapes beyond the 32 plans the kernel keeps: resident memory stays flat. oneDNN's own primitive cache
    (bounded, 1024 entries) is switched off here so that only the kit's objects are counted; before plans owned their
    oneDNN objects, this grew by ~17 MB."""
    env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}
    probe = [sys.executable, "-m", "edsr_lib.kernels", "probe", "232"]  # calls the kernel directly, no MindSpore
    done = subprocess.run(probe, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after_32, after_232 = map(float, done.stdout.split())
    assert after_232 - after_32 < 5, (after_32, after_232)


@needs_fast
@pytest.mark.parametrize("algorithm", ["direct", "winograd", "winograd2x2"])
def test_an_empty_input_gives_an_empty_output_and_zero_gradients(algorithm):
    """A 0-row batch (LPIPS' last tiles, a cropped-away image) returns at once; the Winograd kernels once hung."""
    script = f"""
import numpy as np, mindspore as ms
from mindspore import ops
from edsr_lib import setup_device
setup_device("CPU")
from edsr_lib.kernels.conv import make_conv
conv = make_conv(16, 32, 3, kernel={algorithm!r})
x = ms.Tensor(np.zeros((2, 16, 0, 7), np.float32))
print(conv(x).shape)
grads = ops.grad(lambda x: conv(x).sum(), grad_position=None, weights=conv.trainable_params())(x)
print(max(float(abs(g.asnumpy()).max()) for g in grads))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["(2, 32, 0, 7)", "0.0"]
