"""Writing files so that an interrupted or failed write never leaves a partial file: write to a temporary name in
the same folder, then rename into place (atomic on one filesystem)."""

import json
import os
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


def atomic_write(path, write_fn):
    """Call write_fn(tmp_path) and move the result to `path` only if it succeeded."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
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
