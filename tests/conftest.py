import sys
from pathlib import Path

import numpy as np
import pytest

import edsr_lib  # noqa: F401  (sets the process environment before MindSpore loads)
from edsr_lib.runtime import setup_device

ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = ROOT.parent / "shared" / "data" / "benchmarks"
sys.path.insert(0, str(Path(__file__).parent))

setup_device("CPU")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def shared_benchmark(name):
    path = SHARED_BENCHMARKS / name
    if not path.is_dir():
        pytest.skip(f"shared benchmark {name} not present at {path}")
    return path


def run_cli(*args):
    """Run `edsr ...` in a subprocess, as a user would; returns CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "edsr_lib.cli", *map(str, args)], capture_output=True, text=True)
