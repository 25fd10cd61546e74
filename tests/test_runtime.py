import os
import subprocess
import sys

import pytest

from edsr_lib.errors import KitError
from edsr_lib.runtime import fast_conv_library, resolve_device


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
    code = "import os, edsr_lib; print(os.environ['MS_DEV_HOST_BLOCKING_RUN'], os.environ.get('ONEDNN_MAX_CPU_ISA'))"
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
    late_code = "import mindspore, edsr_lib, os; print(os.environ.get('MS_DEV_HOST_BLOCKING_RUN'))"
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
