import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edsr_lib.errors import KitError
from edsr_lib.runtime import LaunchEnvironment, fast_conv_library, resolve_device

PACKAGE = Path(__file__).resolve().parents[1] / "edsr_lib"


def test_device_override_and_default(monkeypatch):
    monkeypatch.delenv("DEVICE_TARGET", raising=False)
    assert resolve_device("cpu") == "CPU"
    monkeypatch.setenv("DEVICE_TARGET", "ascend")
    assert resolve_device() == "Ascend"
    assert resolve_device("CPU") == "CPU"  # the explicit flag wins over the environment
    with pytest.raises(KitError, match="unknown device_target"):
        resolve_device("TPU")


@pytest.mark.slow
def test_environment_set_before_mindspore_and_warning_when_too_late():
    code = (
        "import os, edsr_lib.model\nprint(os.environ['MS_DEV_HOST_BLOCKING_RUN'], os.environ.get('ONEDNN_MAX_CPU_ISA'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MS_DEV_HOST_BLOCKING_RUN", "ONEDNN_MAX_CPU_ISA")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    # the ISA cap is the fallback's (tests/test_conv.py checks it there); the kit's own kernel runs uncapped
    assert out.stdout.split() == ["1", "AVX2" if fast_conv_library()[0] is None else "None"]
    kept = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**env, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    )
    assert kept.stdout.split() == ["1", "AVX512_CORE"]  # a value the user exported wins
    # MS_DEV_HOST_BLOCKING_RUN is read at the first op, so a late import still applies it; the oneDNN cap is read
    # when MindSpore loads, so only a process that needs the cap is warned
    late_code = "import mindspore, edsr_lib.model, os; print(os.environ.get('MS_DEV_HOST_BLOCKING_RUN'))"
    late = subprocess.run([sys.executable, "-W", "always", "-c", late_code], capture_output=True, text=True, env=env)
    assert late.stdout.split() == ["1"]
    assert ("imported before edsr_lib" in late.stderr) == (fast_conv_library()[0] is None), late.stderr


@pytest.mark.slow
def test_host_blocking_dispatch_follows_the_chosen_device():
    # Chosen by flag or notebook parameter, not $DEVICE_TARGET: decided in setup_device, before the first op.
    code = (
        "import os, edsr_lib.runtime as rt\n"
        "try:\n    rt.setup_device(os.environ['CHOICE'])\nexcept Exception:\n    print('refused')\n"
        "print(os.environ.get('MS_DEV_HOST_BLOCKING_RUN'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MS_DEV_HOST_BLOCKING_RUN", "DEVICE_TARGET")}

    def run(choice, prefix="", **extra):
        out = subprocess.run(
            [sys.executable, "-c", prefix + code],
            capture_output=True,
            text=True,
            env={**env, "CHOICE": choice, **extra},
        )
        return out.stdout.split()[-1]

    assert run("CPU") == "1"
    # a GPU host (this one has no GPU plugin: the check is skipped to reach MindSpore's set_device)
    no_check = "import edsr_lib.runtime as rt; rt.require_backend = lambda target: None\n"
    assert run("GPU", no_check) == "None"
    assert run("GPU", no_check, MS_DEV_HOST_BLOCKING_RUN="1") == "1"  # a value the user exported wins


def test_numpy_modules_import_without_mindspore_or_environment_changes():
    # PEP 562 package: metrics, imresize and the other numpy-only modules stay light (no MindSpore, no kernel hash)
    code = (
        "import os, sys; before = dict(os.environ)\n"
        "import edsr_lib, edsr_lib.metrics, edsr_lib.imresize, edsr_lib.degradations\n"
        "from edsr_lib import metrics, imresize\n"
        "assert callable(imresize), imresize\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('mindspore', 'matplotlib'))\n"
        "print(heavy, dict(os.environ) == before)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "True"], out.stdout + out.stderr


def _mindspore_imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "mindspore")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "mindspore":
            yield node.lineno, node.module


def _backend_imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:  # `.backend` or, from a subpackage, `..backend`
            if node.module == "backend" or (node.module is None and any(a.name == "backend" for a in node.names)):
                yield node.lineno


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_mindspore_only_arrives_through_the_backend(path):
    # The environment-before-MindSpore rule, structurally: only backend.py imports MindSpore at module level, and a
    # module that imports it anywhere (e.g. a submodule inside a function) has imported backend before it.
    if path.name == "backend.py":
        return
    tree = ast.parse(path.read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not list(_mindspore_imports(ast.Module(body=top_level, type_ignores=[]))), f"{path}: import via backend"
    first_backend = min(_backend_imports(tree), default=None)
    for line, name in _mindspore_imports(tree):
        assert first_backend is not None and first_backend < line, f"{path}:{line} imports {name} before backend"


def test_launch_environment_is_read_in_one_place():
    read = LaunchEnvironment.read
    assert not read({}).distributed and read({}).rank_id == 0 and read({}).device_id == 0
    msrun = read({"MS_ROLE": "MS_WORKER", "MS_NODE_ID": "3", "RANK_SIZE": "8", "DEVICE_ID": "3"})
    assert msrun.distributed and not msrun.scheduler and (msrun.rank_id, msrun.device_id) == (3, 3)
    assert read({"MS_ROLE": "MS_SCHED"}).scheduler
    table = {"RANK_TABLE_FILE": "/r.json", "RANK_ID": "5", "RANK_SIZE": "16"}
    assert read(table).distributed and read(table).rank_id == 5
    assert not read({**table, "RANK_SIZE": "1"}).distributed  # a one-rank table is a single-device run
