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
    late = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import mindspore, edsr_lib"], capture_output=True, text=True, env=env
    )
    assert "imported before edsr_lib" in late.stderr
