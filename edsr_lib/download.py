"""Resumable downloads of the public DIV2K and benchmark archives, checked and safely extracted.

A download goes to `<name>.part` and resumes with an HTTP Range request; it is renamed only once complete and
its size (and SHA-256, where one is pinned) match. Archives are extracted into a temporary folder and moved into
place; members with absolute paths, `..` components or links are refused (no path traversal).
"""
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from .errors import KitError

DIV2K_BASE = "https://data.vision.ee.ethz.ch/cvl/DIV2K/"
# Official archive names. No SHA-256 is published for them, so none is pinned here: the digest of each completed
# download is printed and recorded in <dir>/downloads.json, and later runs check against it.
ARCHIVES = {
    "div2k": [DIV2K_BASE + name for name in
              ["DIV2K_train_HR.zip", "DIV2K_valid_HR.zip"]
              + [f"DIV2K_{split}_LR_bicubic_X{s}.zip" for split in ("train", "valid") for s in (2, 3, 4)]],
    "benchmark": ["https://cv.snu.ac.kr/research/EDSR/benchmark.tar"],
}
CHUNK = 1 << 20


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url, dest, sha256=None, progress=True, timeout=60):
    """Download `url` to `dest`, resuming a previous partial download; returns the SHA-256 of the file."""
    dest = Path(dest)
    if dest.is_file():
        digest = sha256_of(dest)
        if sha256 and digest != sha256:
            raise KitError(f"{dest}: SHA-256 {digest} does not match the expected {sha256}; delete it to re-download")
        return digest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: the partial file is complete
            response = None
        else:
            raise KitError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise KitError(f"{url}: download failed ({getattr(exc, 'reason', exc)})") from None
    if response is not None:
        with response:
            resumed = response.status == 206
            if not resumed:
                have = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress
            ) as bar:
                try:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        f.write(block)
                        bar.update(len(block))
                except (OSError, urllib.error.URLError) as exc:
                    raise KitError(f"{url}: connection lost after {f.tell()} bytes ({exc}); run again to resume") from None
            if total is not None and part.stat().st_size != total:
                raise KitError(f"{url}: got {part.stat().st_size} of {total} bytes; run again to resume")
    digest = sha256_of(part)
    if sha256 and digest != sha256:
        part.unlink()
        raise KitError(f"{url}: SHA-256 {digest} does not match the expected {sha256}; the download was removed")
    os.replace(part, dest)
    return digest


def _check_member(name, is_link=False):
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or name.startswith(("/", "\\")) or is_link:
        raise KitError(f"unsafe archive member {name!r} (absolute path, '..' or link): refusing to extract")


def safe_extract(archive, target):
    """Extract a zip or tar archive into `target`, refusing any member that could escape it."""
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".extract-") as tmp:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as z:
                    for info in z.infolist():
                        _check_member(info.filename, is_link=(info.external_attr >> 16) & 0o170000 == 0o120000)
                    z.extractall(tmp)
            elif tarfile.is_tarfile(archive):
                with tarfile.open(archive) as t:
                    for member in t.getmembers():
                        _check_member(member.name, is_link=member.issym() or member.islnk())
                    t.extractall(tmp, filter="data")
            else:
                raise KitError(f"{archive}: not a zip or tar archive")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            raise KitError(f"{archive}: damaged archive ({exc})") from None
        for entry in Path(tmp).iterdir():
            final = target / entry.name
            if final.exists():
                if final.is_dir():
                    shutil.copytree(entry, final, dirs_exist_ok=True)
                    continue
                final.unlink()
            os.replace(entry, final)


def download_dataset(which, directory, urls=None, progress=True, log=print):
    """Fetch and extract `div2k` or `benchmark` into `directory`; digests are recorded in downloads.json."""
    if which not in ARCHIVES and urls is None:
        raise KitError(f"unknown dataset {which!r}; choose one of {', '.join(ARCHIVES)}")
    directory = Path(directory)
    record_path = directory / "downloads.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    subdir = directory / ("DIV2K" if which == "div2k" else "")
    for url in urls or ARCHIVES[which]:
        name = url.rsplit("/", 1)[-1]
        archive = directory / "archives" / name
        digest = fetch(url, archive, sha256=record.get(name), progress=progress)
        if name not in record:
            record[name] = digest
            record_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = record_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(tmp, record_path)
        log(f"{name}: sha256 {digest}")
        safe_extract(archive, subdir)
    return subdir
