"""Every file the kit writes goes through here: an output is checked against the command's inputs and its location
before any work starts (`check_output_file`, `prepare_output_folder`), and written so that an interrupted or failed
write never leaves a partial file (a temporary name in the same folder, then a rename: atomic on one filesystem)."""

import json
import os
import shutil
import socket
import tempfile
import zipfile
from pathlib import Path

from .errors import KitError, write_error


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def user_cache_dir():
    """The kit's cache folder: $XDG_CACHE_HOME/edsr_lib (an empty value counts as unset), else ~/.cache/edsr_lib."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edsr_lib"


def check_archive_member(name, is_link=False):
    """Refuse an archive member that would land outside the extraction folder (absolute, '..', or a link)."""
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or name.startswith(("/", "\\")) or is_link:
        raise KitError(f"unsafe archive member {name!r} (absolute path, '..' or link): refusing to extract")


# In the name of every temporary file atomic_write makes, so the next run in a folder can remove a killed one's.
TEMPORARY_TAG = ".partial-"
# Marks a folder the kit made and fills (SR images, comparison tables, run folders): the kit writes into a folder
# only when it is empty or carries this mark, so results never mix into a dataset or someone else's files.
OUTPUT_MARKER = ".edsr_lib-output"


def _resolved(path):
    return Path(path).expanduser().resolve()


def _inside(path, folder):
    return path == folder or folder in path.parents


def _refuse_inputs(path, flag, inputs, folder):
    """`inputs`: (path, what it is) pairs; an output may not be an input, lie inside an input folder, nor (when it
    is a folder) hold an input."""
    target = _resolved(path)
    for source, label in inputs:
        if source is None:
            continue
        src = _resolved(source)
        if target == src or _inside(target, src) or (folder and _inside(src, target)):
            raise KitError(f"{path}: {flag} would write over {label} ({source}); choose another path")


def _check_location(path, flag):
    """The nearest existing folder on the way to `path` must be a writable folder, not a file."""
    existing = next(p for p in [Path(path).absolute(), *Path(path).absolute().parents] if p.exists())
    if existing != Path(path).absolute() and not existing.is_dir():
        raise KitError(f"{existing}: is a file, not a folder ({flag} {path})")
    where = existing if existing.is_dir() else existing.parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise KitError(f"{where}: not writable ({flag} {path})")


def check_output_file(path, flag="output", inputs=()):
    """Before any work: `path` can be written as a file and destroys no input. Returns it as a Path."""
    path = Path(path)
    _refuse_inputs(path, flag, inputs, folder=False)
    if path.is_dir():
        raise KitError(f"{path}: {flag} is a folder; give a file name")
    _check_location(path, flag)
    return path


def prepare_output_folder(path, flag="output folder", inputs=(), kit_files=()):
    """Before any work: `path` destroys no input and is empty, or a folder the kit made (its marker, or one of
    `kit_files`: e.g. a training run's run.json from before the marker); created and marked. Returns it as a Path."""
    path = Path(path)
    _refuse_inputs(path, flag, inputs, folder=True)
    if path.exists() and not path.is_dir():
        raise KitError(f"{path}: {flag} is a file, not a folder")
    _check_location(path, flag)
    if path.is_dir() and not (path / OUTPUT_MARKER).is_file():
        others = [p.name for p in path.iterdir() if p.name not in kit_files]
        if others and not any((path / name).exists() for name in kit_files):
            raise KitError(
                f"{path}: {flag} holds files the kit did not write ({', '.join(sorted(others)[:3])}"
                f"{', ...' if len(others) > 3 else ''}); give an empty or new folder"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / OUTPUT_MARKER).touch()
        for leftover in path.glob(f".*{TEMPORARY_TAG}*"):  # a killed run's half-written files
            if leftover.is_file():
                leftover.unlink()
    except OSError as exc:
        raise write_error(path, exc) from exc
    return path


def process_alive(pid):
    """Whether process `pid` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def work_folder(out, kind=""):
    """A hidden sibling of the folder `out` to build it in, then rename (atomic): named for this host and process,
    so `sweep_work_folders` can tell a killed run's leftovers from a running one's."""
    out = Path(out)
    return out.parent / f".{out.name}{TEMPORARY_TAG}{kind}{socket.gethostname()}-{os.getpid()}"


def sweep_work_folders(out):
    """Remove the work folders a killed run on this host left beside `out` (their process no longer runs)."""
    out = Path(out)
    host = socket.gethostname()
    for leftover in out.parent.glob(f".{out.name}{TEMPORARY_TAG}*"):
        owner, _, pid = leftover.name.rpartition("-")
        if leftover.is_dir() and owner.endswith(host) and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def atomic_write(path, write_fn):
    """Call write_fn(tmp_path) and move the result to `path` only if it succeeded."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}{TEMPORARY_TAG}", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except OSError as exc:  # a write to an open file (disk full) carries no file name: name the destination
        raise write_error(path, exc) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path, payload):
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2) + "\n"))
    return Path(path)


def archive_folder(folder, archive=None):
    """Every file under `folder` in one zip (default: `<folder>.zip` beside it), to download a notebook's results
    in one go. Hidden files (temporaries) are left out."""
    folder = Path(folder)
    archive = Path(archive) if archive else folder.with_suffix(".zip")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))

    def write(tmp):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for path in files:
                z.write(path, Path(folder.name) / path.relative_to(folder))

    return atomic_write(archive, write)
