"""Building the kit's CPU convolution (`src/`, one C++ translation unit) once per machine, on request.

    python -m edsr_lib.kernels build [--force]    # scripts/_venv.sh runs it after installing the kit

It is compiled with the system C++ compiler ($CXX, else g++) against oneDNN's public headers and linked to the
oneDNN library inside the MindSpore wheel, into `~/.cache/edsr_lib/kernels/<key>/`, where the key covers the
sources, the MindSpore version, the compiler, the CPU and the headers. The headers come from the `onednn-devel` wheel
on the package index: taken from the environment when installed, otherwise downloaded once (`pip download`, headers
only, 1 MB) into `~/.cache/edsr_lib/onednn-headers/`; installing the package itself would pull ~2 GB of Intel
runtimes the kit does not use.

Importing the kit only looks in the cache (`find_library`). When nothing is built yet, the first convolution built
on the CPU builds it (`build`); a failed build is remembered with its reason in the key's folder, so later processes
neither wait nor retry, until `build --force`. Nothing here imports MindSpore: `backend` needs the answer before
MindSpore loads.
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

from ..errors import KitError
from ..files import atomic_write, check_archive_member, user_cache_dir

SOURCES = Path(__file__).resolve().parent / "src"
SOURCE = SOURCES / "conv.cpp"  # includes the other files of src/
LIBRARY_NAME = "onednn_conv.so"
# -march=native: the Winograd transforms are loops the compiler vectorises for this CPU (the build key includes the
# CPU and these flags, so a library never runs on another kind of machine). On AVX-512 CPUs that also compiles the
# intrinsics path; PORTABLE_FLAGS build the other one here, which tests/test_conv.py does to test both.
COMPILE_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-Wall", "-Wextra")
PORTABLE_FLAGS = ("-mno-avx512f",)

# The C entry points kernels/conv.py makes MindSpore ops of: <prefix><operation> per algorithm, each with its C++
# shape function <prefix><operation>InferShape. The fused upsampler exists for the Winograd algorithms only.
ENTRY_PREFIXES = {"direct": "", "winograd": "Winograd", "winograd2x2": "WinogradF2"}
OPERATIONS = ("ConvForward", "ConvReluForward", "ConvResidualForward", "ResBlockForward", "ConvBackwardData",
              "ConvBackwardWeights", "ConvShuffleForward")  # fmt: skip


def entry_point(algorithm, operation):
    """The library's function for `operation` run by `algorithm` (a KeyError for one it does not have)."""
    if operation == "ConvShuffleForward" and algorithm == "direct":
        raise KeyError(f"no {operation} for the direct algorithm")
    return ENTRY_PREFIXES[algorithm] + operation


def entry_points():
    """Every function the Python side expects the built library to export."""
    names = []
    for algorithm in ENTRY_PREFIXES:
        for operation in OPERATIONS:
            if not (operation == "ConvShuffleForward" and algorithm == "direct"):
                names += [entry_point(algorithm, operation), entry_point(algorithm, operation) + "InferShape"]
    return names


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
    return user_cache_dir() / "onednn-headers" / HEADERS_REQUIREMENT.split("==")[1] / "include"


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
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch_folder = tempfile.TemporaryDirectory(dir=target.parent)
    except OSError:
        return None
    with scratch_folder as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
            scratch,
            HEADERS_REQUIREMENT,
        ]
        try:
            subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
            wheel = next(Path(scratch).glob("*.whl"))
            unpacked = Path(scratch) / "include"
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    marker = ".data/data/include/"
                    if marker in member and not member.endswith("/"):
                        check_archive_member(member)
                        destination = unpacked / member.split(marker, 1)[1]
                        destination.parent.mkdir(parents=True, exist_ok=True)
                        destination.write_bytes(archive.read(member))
            if not _has_headers(unpacked):
                return None
            os.replace(unpacked, target)  # atomic; a concurrent process may have won, which is fine
        except (OSError, subprocess.SubprocessError, StopIteration, zipfile.BadZipFile, KitError):
            return target if _has_headers(target) else None
    return target


def cpu_description():
    """The CPU's model name and feature flags (Linux), else the platform's processor string."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(wanted[:2])


def _compiler():
    return shutil.which(os.environ.get("CXX", "g++"))


def unavailable_reason():
    """Why the fast convolution cannot be built on this machine at all, or None (reads no network, runs nothing)."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return f"needs Linux on x86-64, this is {platform.system()} on {platform.machine()}"
    if not _compiler():
        return f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH"
    if _mindspore_lib() is None:
        return "MindSpore's bundled oneDNN (lib/libdnnl.so.3) was not found"
    return None


def kernels_folder():
    """Where built kernel libraries live, one sub-folder per build key."""
    return user_cache_dir() / "kernels"


def build_key():
    """Hash of what the library depends on; cheap (no compiler run), since every import computes it."""
    compiler = Path(_compiler() or "none")
    stamp = f"{compiler.resolve()}:{compiler.stat().st_size}:{compiler.stat().st_mtime_ns}" if compiler.exists() else ""
    parts = [
        *(path.read_bytes() for path in sorted(SOURCES.iterdir())),
        importlib.metadata.version("mindspore").encode(),
        stamp.encode(),
        cpu_description().encode(),
        HEADERS_REQUIREMENT.encode(),
        " ".join(COMPILE_FLAGS).encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


FAILURE_RECORD = "build-failed.txt"


def find_library():
    """What importing the kit does: (library, None) when built; (None, reason) when it cannot be built here or an
    earlier build failed (remembered); (None, None) when no build was tried yet. Only reads the cache."""
    reason = unavailable_reason()
    if reason:
        return None, reason
    folder = kernels_folder() / build_key()
    if (folder / LIBRARY_NAME).is_file():
        return folder / LIBRARY_NAME, None
    if (folder / FAILURE_RECORD).is_file():
        recorded = (folder / FAILURE_RECORD).read_text().strip()
        return None, f"{recorded} (remembered; retry with: python -m edsr_lib.kernels build --force)"
    return None, None


def _remember_failure(folder, reason):
    try:
        atomic_write(folder / FAILURE_RECORD, lambda tmp: Path(tmp).write_text(reason + "\n"))
    except KitError:
        pass  # not remembered: the next process tries again
    return None, reason


def build(force=False):
    """Build the library unless it exists (or an earlier failure is remembered and not `force`): (path, reason)."""
    found, reason = find_library()
    if found is not None or (reason is not None and not force) or unavailable_reason():
        return found, reason or unavailable_reason()
    folder = kernels_folder() / build_key()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FAILURE_RECORD).unlink(missing_ok=True)
    except OSError as exc:  # the cache is a file, read-only or full: say so, and the kit uses MindSpore's Conv2d
        from ..errors import describe_os_error

        return None, f"cannot write the kernel cache ({describe_os_error(exc)})"
    include = _onednn_include() or fetch_headers()
    if include is None:
        return _remember_failure(folder, f"oneDNN headers unavailable (could not download {HEADERS_REQUIREMENT})")
    try:  # atomic: concurrent ranks building the same key are harmless
        atomic_write(folder / LIBRARY_NAME, lambda tmp: compile_library(tmp, include))
    except (KitError, OSError, subprocess.SubprocessError) as exc:
        return _remember_failure(folder, f"compiling {SOURCE.name} failed: {exc}")
    return folder / LIBRARY_NAME, None


def compile_library(output, include=None, extra_flags=()):
    """Compile src/ into the shared library `output` with COMPILE_FLAGS and `extra_flags` (e.g. PORTABLE_FLAGS,
    "-Werror"); returns the compiler's messages (warnings), or raises SubprocessError with its first error line."""
    include = include or _onednn_include() or fetch_headers()
    lib = _mindspore_lib()
    if include is None or lib is None:
        raise subprocess.SubprocessError("oneDNN's headers or MindSpore's oneDNN library are missing")
    command = [_compiler(), *COMPILE_FLAGS, *extra_flags, f"-I{include}", str(SOURCE), "-o", str(output),
               f"-L{lib}", "-l:libdnnl.so.3", f"-Wl,-rpath,{lib}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise subprocess.SubprocessError((result.stderr.strip().splitlines() or ["unknown error"])[0])
    return result.stderr


def aot_call(lib, name, *arrays):
    """Call entry point `name` of a loaded kernel library (`ctypes.CDLL`) on float32 numpy arrays (inputs, then
    outputs) as MindSpore calls AOT ops: count, buffers, ranks, shapes, dtypes. Returns the kernel's status (0 = ok)."""
    import ctypes

    dims = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in arrays]
    return getattr(lib, name)(
        len(arrays),
        (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays]),
        (ctypes.c_int * len(arrays))(*[a.ndim for a in arrays]),
        (ctypes.POINTER(ctypes.c_int64) * len(arrays))(*[ctypes.cast(d, ctypes.POINTER(ctypes.c_int64)) for d in dims]),
        (ctypes.c_char_p * len(arrays))(*[b"float32"] * len(arrays)),
        None,
        None,
    )


def probe_memory(library, shapes=232, keep=32):
    """Run the library's forward convolution on `shapes` distinct input shapes (16 -> 16 channels, 3x3), calling it
    directly as MindSpore would; returns (resident MB after `keep` shapes, after all). The kernel keeps `keep`
    plans and empties its plan cache when a new shape would make one more (oneDNN objects freed, not an LRU), so
    memory stays bounded past `keep` shapes: the two figures should be close."""
    import ctypes

    import numpy as np

    lib = ctypes.CDLL(str(library))

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def forward(*arrays):
        return aot_call(lib, "ConvForward", *arrays)

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((16, 16, 3, 3)).astype(np.float32), np.zeros(16, np.float32)
    after_keep = None
    for i in range(shapes):
        x = rng.standard_normal((1, 16, 8 + i % 20, 8 + i // 20)).astype(np.float32)
        if forward(x, w, b, np.empty_like(x)) != 0:
            raise RuntimeError(f"{library}: the forward convolution failed on shape {x.shape}")
        if i == keep - 1:
            after_keep = rss_mb()
    return after_keep, rss_mb()


def main(argv=None):
    from ..errors import OneLineArgumentParser

    parser = OneLineArgumentParser(prog="python -m edsr_lib.kernels", description="build the kit's CPU convolution")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build it now (once per machine; kept in the user cache)")
    p.add_argument("--force", action="store_true", help="retry even if an earlier build failed")
    p = sub.add_parser("probe", help="resident memory of the built kernel over many input shapes (MB)")
    p.add_argument("shapes", type=int, nargs="?", default=232)
    args = parser.parse_args(argv)
    if args.command == "probe":
        library, reason = find_library()
        if library is None:
            print(f"nothing to probe: {reason or 'not built yet'}", file=sys.stderr)
            return 1
        try:
            after_keep, after_all = probe_memory(library, args.shapes)
        except (OSError, RuntimeError) as exc:  # a library that does not load or a call that fails: one line
            print(f"probe failed: {exc}", file=sys.stderr)
            return 1
        print(f"{after_keep:.1f} {after_all:.1f}")
        return 0
    library, reason = build(force=args.force)
    if library is None:
        print(
            f"the kit's CPU convolution was not built: {reason}; MindSpore's Conv2d is used instead (slower on CPU)",
            file=sys.stderr,
        )
        return 1
    print(f"the kit's CPU convolution: {library}")
    return 0
