"""Building the fast CPU convolution (`csrc/onednn_conv.cpp`) once per machine, before MindSpore loads.

It is compiled with the system C++ compiler ($CXX, else g++) against oneDNN's public headers from the
`onednn-devel` package and linked to the oneDNN library inside the MindSpore wheel, into
`~/.cache/edsr_lib/kernels/<key>/`, where the key covers the source, the MindSpore version, the compiler and the
CPU. Nothing here imports MindSpore: `runtime` needs the answer before MindSpore loads (see there).
"""
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "csrc" / "onednn_conv.cpp"
LIBRARY_NAME = "onednn_conv.so"


def _mindspore_lib():
    spec = importlib.util.find_spec("mindspore")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    return lib if (lib / "libdnnl.so.3").is_file() else None


def _onednn_include():
    for root in (sysconfig.get_path("data"), sysconfig.get_path("include"), "/usr", "/usr/local"):
        candidate = Path(root) / "include"
        if (candidate / "oneapi" / "dnnl" / "dnnl.h").is_file():
            return candidate
    return None


def _cpu_description():
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(wanted[:2])


def unavailable_reason():
    """Why the fast convolution cannot be built here, or None."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return f"needs Linux on x86-64, this is {platform.system()} on {platform.machine()}"
    if not shutil.which(os.environ.get("CXX", "g++")):
        return f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH"
    if _mindspore_lib() is None:
        return "MindSpore's bundled oneDNN (lib/libdnnl.so.3) was not found"
    if _onednn_include() is None:
        return "oneDNN headers not found (pip install onednn-devel)"
    return None


def cache_root():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edsr_lib" / "kernels"


def build_key():
    compiler = os.environ.get("CXX", "g++")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    parts = [SOURCE.read_bytes(), importlib.metadata.version("mindspore").encode(), version.encode(),
             _cpu_description().encode(), str(_onednn_include()).encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def fast_conv_library():
    """Path of the compiled kernel library (built now if needed), or (None, reason) when it cannot be had."""
    reason = unavailable_reason()
    if reason:
        return None, reason
    target = cache_root() / build_key() / LIBRARY_NAME
    if target.is_file():
        return target, None
    target.parent.mkdir(parents=True, exist_ok=True)
    lib = _mindspore_lib()
    fd, tmp = tempfile.mkstemp(prefix=".build.", suffix=".so", dir=target.parent)
    os.close(fd)
    command = [os.environ.get("CXX", "g++"), "-O2", "-std=c++17", "-shared", "-fPIC", "-pthread",
               f"-I{_onednn_include()}", str(SOURCE), "-o", tmp, f"-L{lib}", "-l:libdnnl.so.3",
               f"-Wl,-rpath,{lib}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["unknown error"])[0]
            return None, f"compiling {SOURCE.name} failed: {first}"
        os.replace(tmp, target)  # atomic: concurrent ranks building the same key are harmless
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"compiling {SOURCE.name} failed: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target, None
