import sys
from pathlib import Path

import numpy as np
import pytest

import edsr_lib  # noqa: F401  (sets the process environment before MindSpore loads)
from edsr_lib.runtime import setup_device

ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).parent / "data"  # small reference data committed with the tests (see its README)
SHARED_BENCHMARKS = ROOT.parent / "shared" / "data" / "benchmarks"  # larger sets, on the CI machine only
sys.path.insert(0, str(Path(__file__).parent))

setup_device("CPU")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def benchmark_folder(name):
    """A benchmark's HR folder: tests/data (Set5), else ../shared beside the project, else None."""
    for path in (TEST_DATA / name, SHARED_BENCHMARKS / name):
        if path.is_dir():
            return path
    return None


def run_cli(*args):
    """Run `edsr ...` in a subprocess, as a user would; returns CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "edsr_lib.cli", *map(str, args)], capture_output=True, text=True)
