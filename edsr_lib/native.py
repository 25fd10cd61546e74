"""Building the fast CPU convolution (`csrc/onednn_conv.cpp`) once per machine, before MindSpore loads.

It is compiled with the system C++ compiler ($CXX, else g++) against oneDNN's public headers and linked to the
oneDNN library inside the MindSpore wheel, into `~/.cache/edsr_lib/kernels/<key>/`, where the key covers the
source, the MindSpore version, the compiler, the CPU and the headers. The headers come from the `onednn-devel` wheel
on the package index: taken from the environment when installed, otherwise downloaded once (`pip download`, headers
only, 1 MB) into `~/.cache/edsr_lib/onednn-headers/`; installing the package itself would pull ~2 GB of Intel
runtimes the kit does not use. Nothing here imports MindSpore: `runtime` needs the answer before MindSpore loads.
"""
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "csrc" / "onednn_conv.cpp"
LIBRARY_NAME = "onednn_conv.so"
# oneDNN 3.13 headers; only the stable public C API is used, which MindSpore 2.10's libdnnl.so.3 (3.10) provides.
HEADERS_REQUIREMENT = "onednn-devel==2026.1.0"


def _mindspore_lib():
    spec = importlib.util.find_spec("mindspore")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    return lib if (lib / "libdnnl.so.3").is_file() else None


def _has_headers(include):
    return (Path(include) / "oneapi" / "dnnl" / "dnnl.h").is_file()


def _headers_cache():
    return cache_root().parent / "onednn-headers" / HEADERS_REQUIREMENT.split("==")[1] / "include"


def _onednn_include():
    """oneDNN's include folder: the environment's (onednn-devel installed) or the kit's cached download."""
    for candidate in (Path(sysconfig.get_path("data")) / "include", _headers_cache()):
        if _has_headers(candidate):
            return candidate
    return None


def fetch_headers():
    """Download the onednn-devel wheel without dependencies and keep only its include folder. Returns it, or None."""
    target = _headers_cache()
    if _has_headers(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-d", scratch, HEADERS_REQUIREMENT]
        try:
            subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
            wheel = next(Path(scratch).glob("*.whl"))
            unpacked = Path(scratch) / "include"
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    marker = ".data/data/include/"
                    if marker in member and not member.endswith("/") and ".." not in member:
                        destination = unpacked / member.split(marker, 1)[1]
                        destination.parent.mkdir(parents=True, exist_ok=True)
                        destination.write_bytes(archive.read(member))
            if not _has_headers(unpacked):
                return None
            os.replace(unpacked, target)  # atomic; a concurrent process may have won, which is fine
        except (OSError, subprocess.SubprocessError, StopIteration, zipfile.BadZipFile):
            return target if _has_headers(target) else None
    return target


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
    if _onednn_include() is None and fetch_headers() is None:
        return f"oneDNN headers unavailable (could not download {HEADERS_REQUIREMENT})"
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
