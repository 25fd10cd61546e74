"""Checks for the exercises in notebooks/exercises: each compares a student's function with the kit's own
implementation (or MindSpore's) on several inputs and prints one clear pass/fail line."""

import importlib.util
from pathlib import Path

import numpy as np

from .errors import KitError

EXERCISES = {
    "pixel_shuffle": "1. PixelShuffle order",
    "cubic": "2. MATLAB's bicubic kernel",
    "psnr_y": "3. PSNR on Y with a border",
    "receptive_radius": "4. The receptive field, for exact tiling",
}


def load_solutions(path):
    """The functions of a solutions file, by exercise name."""
    spec = importlib.util.spec_from_file_location("exercise_solutions", Path(path))
    if spec is None or not Path(path).is_file():
        raise KitError(f"{path}: no such solutions file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: getattr(module, name) for name in EXERCISES}


def _run(name, attempt):
    """(passed, message) of one check: `attempt` raises AssertionError with what differed."""
    title = EXERCISES[name]
    try:
        detail = attempt()
    except NotImplementedError:
        return False, f"TODO  {title}: not implemented yet"
    except AssertionError as exc:
        return False, f"FAIL  {title}: {exc}"
    except Exception as exc:  # a student's code may raise anything; say what, do not stop the notebook
        return False, f"FAIL  {title}: raised {type(exc).__name__}: {exc}"
    return True, f"PASS  {title}" + (f" ({detail})" if detail else "")


def _report(name, attempt):
    passed, message = _run(name, attempt)
    print(message)
    return passed


def check_pixel_shuffle(pixel_shuffle):
    """pixel_shuffle(x, r): (C*r*r, H, W) -> (C, H*r, W*r), as MindSpore's nn.PixelShuffle (the upsampler's)."""
    from .backend import ms, nn

    def attempt():
        rng = np.random.default_rng(0)
        for channels, r, h, w in ((1, 2, 2, 3), (3, 2, 4, 5), (2, 3, 3, 2)):
            x = rng.standard_normal((channels * r * r, h, w)).astype(np.float32)
            expected = nn.PixelShuffle(r)(ms.Tensor(x[None])).asnumpy()[0]
            got = np.asarray(pixel_shuffle(x, r))
            assert got.shape == expected.shape, (
                f"shape {got.shape} for input {x.shape}, r={r}; expected {expected.shape}"
            )
            assert np.array_equal(got, expected), (
                f"values in the wrong places for input {x.shape}, r={r}: output[c, y, x] comes from input channel "
                "c*r*r + (y % r)*r + (x % r)"
            )
        return "same as nn.PixelShuffle on 3 shapes"

    return _report("pixel_shuffle", attempt)


def check_cubic(cubic):
    """cubic(x): MATLAB's cubic convolution kernel (a = -0.5), as edsr_lib.imresize uses it."""
    from .imresize import _cubic

    def attempt():
        x = np.linspace(-3, 3, 1201)
        got, expected = np.asarray(cubic(x), np.float64), _cubic(x)
        worst = int(np.argmax(np.abs(got - expected)))
        assert np.allclose(got, expected, atol=1e-12), (
            f"cubic({x[worst]:.3f}) = {got[worst]:.6f}, expected {expected[worst]:.6f}"
        )
        return "equal to the kit's kernel on [-3, 3]"

    return _report("cubic", attempt)


def check_psnr_y(psnr_y):
    """psnr_y(sr, hr, border): PSNR on BT.601 luma of uint8 RGB images, `border` pixels cut on every side (0: none,
    the case `x[b:-b]` gets wrong, since `x[0:-0]` is empty)."""
    from .metrics import Protocol, psnr

    def attempt():
        rng = np.random.default_rng(1)
        for border in (0, 2, 3, 4):
            hr = rng.integers(0, 256, (30, 24, 3), dtype=np.uint8)
            sr = np.clip(hr.astype(int) + rng.integers(-20, 21, hr.shape), 0, 255).astype(np.uint8)
            sr[:border] = 0  # damage only the border: a correct answer ignores it
            expected = psnr(sr, hr, Protocol("y", border))
            got = float(psnr_y(sr, hr, border))
            assert abs(got - expected) < 1e-6, (
                f"{got:.4f} dB with border {border}, expected {expected:.4f} dB "
                "(Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255; border 0 keeps every pixel)"
            )
        return "equal to edsr_lib.metrics.psnr on the Y channel for borders 0, 2, 3 and 4"

    return _report("psnr_y", attempt)


def check_receptive_radius(receptive_radius):
    """receptive_radius(n_resblocks, scale): the LR margin the kit's exact tiling uses (model.Architecture)."""
    from .model import Architecture

    def attempt():
        for n_resblocks in (1, 16, 32):
            for scale in (2, 3, 4):
                expected = Architecture(scale=scale, n_resblocks=n_resblocks, n_feats=8).receptive_radius
                got = receptive_radius(n_resblocks, scale)
                assert got == expected, f"{got} for {n_resblocks} blocks at x{scale}, expected {expected}"
        return "equal to Architecture.receptive_radius for 9 networks"

    return _report("receptive_radius", attempt)


def check_all(functions):
    """Run every check on a dict name -> function; print one line each and a summary; return the count passed."""
    checks = {
        "pixel_shuffle": check_pixel_shuffle,
        "cubic": check_cubic,
        "psnr_y": check_psnr_y,
        "receptive_radius": check_receptive_radius,
    }
    passed = sum(checks[name](functions[name]) for name in EXERCISES)
    total = len(EXERCISES)
    print(f"all {total} exercises passed" if passed == total else f"{passed} of {total} exercises passed")
    return passed
