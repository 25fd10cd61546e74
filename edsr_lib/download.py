"""Resumable downloads of the public DIV2K and benchmark archives, checked and safely extracted.

A download goes to `<name>.part` and resumes with an HTTP Range request; it is renamed only once complete and
its size (and SHA-256, where one is pinned) match. Archives are extracted into a temporary folder and moved into
place; members with absolute paths, `..` components or links are refused (no path traversal).
"""

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path


from .errors import KitError, write_error
from .files import atomic_write, check_archive_member, write_json
from .progress import progress_bar

DIV2K_BASE = "https://data.vision.ee.ethz.ch/cvl/DIV2K/"
# Official archive names. No SHA-256 is published for them, so none is pinned here: the digest of each completed
# download is printed and recorded in <dir>/downloads.json, and later runs check against it.
ARCHIVES = {
    "div2k": [
        DIV2K_BASE + name
        for name in ["DIV2K_train_HR.zip", "DIV2K_valid_HR.zip"]
        + [f"DIV2K_{split}_LR_bicubic_X{s}.zip" for split in ("train", "valid") for s in (2, 3, 4)]
    ],
    "benchmark": ["https://cv.snu.ac.kr/research/EDSR/benchmark.tar"],
}
CHUNK = 1 << 20


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# A connection that delivers less than STALL_BYTES in STALL_SECONDS (about 1 KB/s: a drip that would take days for
# a dataset) is dropped and resumed, at most RETRIES times.
STALL_SECONDS, STALL_BYTES, RETRIES = 60.0, 64 * 1024, 3


def _content_length(response, url):
    text = response.headers.get("Content-Length")
    if text is None:
        return None
    if not text.strip().isdigit():
        raise KitError(f"{url}: the server sent a malformed Content-Length {text!r:.40}")
    return int(text)


def _resumed_total(response, have):
    """For a 206 reply: the file's total size, after checking it resumes exactly at byte `have`."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", response.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != have:
        return None  # not where we asked: the caller starts over
    return int(match.group(3)) if match.group(3) != "*" else None


def _stream(response, f, bar, stall_seconds, max_bytes=None, url="", path=None):
    """Copy the body to `f`; raise _Interrupted when it trickles (a plain read would wait forever), and stop with a
    KitError when it runs past `max_bytes` (an endless body would fill the disk)."""
    window_start, window_bytes = time.monotonic(), 0
    while True:
        try:
            block = response.read1(CHUNK)
        except (OSError, urllib.error.URLError) as exc:
            raise _Interrupted(f"connection lost after {f.tell()} bytes ({exc})") from None
        if not block:
            return
        if max_bytes is not None and f.tell() + len(block) > max_bytes:
            raise _TooLong(f"{url}: sent more than the {max_bytes} bytes this file can have; not the expected file")
        try:
            f.write(block)
        except OSError as exc:  # disk full: name the file being written
            raise write_error(path or f.name, exc) from None
        bar.update(len(block))
        window_bytes += len(block)
        if time.monotonic() - window_start >= stall_seconds:
            if window_bytes < STALL_BYTES:
                raise _Interrupted(f"stalled: {window_bytes} bytes in {stall_seconds:g} s")
            window_start, window_bytes = time.monotonic(), 0


class _Interrupted(Exception):
    pass


class _TooLong(KitError):
    pass


def _source_of(part):
    """The file naming the URL a partial download came from: a .part is only ever resumed from that URL."""
    return part.with_name(part.name + ".source")


def partial_path(dest):
    """Where a download of `dest` is written until it is complete."""
    return Path(dest).with_name(Path(dest).name + ".part")


def resumable_from(dest, url):
    """Whether a partial download of `dest` from `url` is there to resume."""
    return _written_by(partial_path(dest), url)


def _written_by(part, url):
    source = _source_of(part)
    return part.is_file() and source.is_file() and source.read_text(errors="replace") == url


def _discard_partial(part):
    part.unlink(missing_ok=True)
    _source_of(part).unlink(missing_ok=True)


def _archive_complete(path):
    """A file whose length no header vouched for must at least be a whole archive (zip directory, tar to its end)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return z.testzip() is None
        with tarfile.open(path) as t:
            for _ in t:
                pass
        return True
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error):
        return False


def fetch(
    url,
    dest,
    sha256=None,
    progress=True,
    timeout=60,
    stall_seconds=STALL_SECONDS,
    whole_file_check=True,
    max_bytes=None,
):
    """Download `url` to `dest`, resuming a previous partial download from the same URL; returns the SHA-256.

    Complete means: the length the server stated (Content-Length, or Content-Range when resuming), or, when it
    stated none, a whole archive (`whole_file_check`; callers that verify a digest afterwards turn it off). Only
    then is the file renamed into place and its digest recorded. `max_bytes`: the most the file can be; a server
    sending more is cut off and its partial file removed."""
    dest = Path(dest)
    if dest.is_file():
        digest = sha256_of(dest)
        if sha256 and digest != sha256:
            raise KitError(f"{dest}: SHA-256 {digest} does not match the expected {sha256}; delete it to re-download")
        return digest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    total = None
    for attempt in range(RETRIES + 1):
        try:
            total = _fetch_once(url, part, progress, timeout, stall_seconds, max_bytes)
            break
        except _Interrupted as exc:
            if attempt == RETRIES:
                raise KitError(f"{url}: {exc}, {RETRIES + 1} times; run again to resume") from None
        except _TooLong:
            _discard_partial(part)
            raise
    size = part.stat().st_size
    if total is not None and size != total:
        raise KitError(f"{url}: got {size} of {total} bytes; run again to resume")
    if total is None and whole_file_check and not _archive_complete(part):
        raise KitError(
            f"{url}: the connection closed after {size} bytes, the server gave no length and the file is "
            "not a complete archive; run again to resume"
        )
    digest = sha256_of(part)
    if sha256 and digest != sha256:
        _discard_partial(part)
        raise KitError(f"{url}: SHA-256 {digest} does not match the expected {sha256}; the download was removed")
    os.replace(part, dest)
    _source_of(part).unlink(missing_ok=True)
    return digest


def _fetch_once(url, part, progress, timeout, stall_seconds, max_bytes=None):
    """One request, appending to `part`; returns the expected total size, or None when no header says it."""
    # Only a partial file this URL wrote is continued; another mirror's (perhaps a bad one's) is replaced once this
    # URL answers, and kept while it does not (its own mirror may resume it on a later run).
    have = part.stat().st_size if _written_by(part, url) else 0
    try:
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: the partial file is complete
            return None
        raise KitError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except ValueError as exc:  # urllib's word for a malformed URL
        raise KitError(f"{url!r}: not a URL the kit can download from ({exc})") from None
    except (urllib.error.URLError, OSError) as exc:
        raise KitError(f"{url}: download failed ({getattr(exc, 'reason', exc)})") from None
    with response:
        length = _content_length(response, url)
        if response.status == 206:
            total = _resumed_total(response, have)
            if total is None and "Content-Range" in response.headers:
                part.unlink()  # answered from another offset: appending would corrupt the file
                raise _Interrupted("the server resumed at another offset than asked; starting over")
            if total is None and length is not None:
                total = have + length
        else:
            have, total = 0, length  # the server ignored the Range header: start over
        if max_bytes is not None and total is not None and total > max_bytes:
            raise _TooLong(f"{url}: announces {total} bytes, more than this file can have ({max_bytes})")
        if not have:
            _discard_partial(part)
            atomic_write(_source_of(part), lambda tmp: Path(tmp).write_text(url))
        try:
            handle = open(part, "ab" if have else "wb")
        except OSError as exc:
            raise write_error(part, exc) from None
        with (
            handle as f,
            progress_bar(total, part.name[: -len(".part")], progress, initial=have, unit="B", unit_scale=True) as bar,
        ):
            _stream(response, f, bar, stall_seconds, max_bytes, url, part)
    return total


# The dataset archives hold PNGs, which hardly compress: more than this ratio is a zip bomb, not a dataset.
MAX_EXTRACT_RATIO = 10


def _check_extracted_size(archive, declared, target):
    packed = Path(archive).stat().st_size
    if declared > MAX_EXTRACT_RATIO * packed + CHUNK:
        raise KitError(
            f"{archive}: declares {declared} bytes from {packed} ({declared // max(packed, 1)}x): refusing "
            "to extract (a zip bomb?)"
        )
    free = shutil.disk_usage(target).free
    if declared > free:
        raise KitError(f"{archive}: needs {declared / 1e9:.1f} GB to extract, {target} has {free / 1e9:.1f} GB free")


def safe_extract(archive, target):
    """Extract a zip or tar archive into `target`, refusing any member that could escape it."""
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".extract-") as tmp:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as z:
                    for info in z.infolist():
                        check_archive_member(info.filename, is_link=(info.external_attr >> 16) & 0o170000 == 0o120000)
                    _check_extracted_size(archive, sum(i.file_size for i in z.infolist()), target)
                    z.extractall(tmp)
            elif tarfile.is_tarfile(archive):
                with tarfile.open(archive) as t:
                    members = t.getmembers()
                    for member in members:
                        check_archive_member(member.name, is_link=member.issym() or member.islnk())
                    _check_extracted_size(archive, sum(m.size for m in members), target)
                    t.extractall(tmp, filter="data")
            else:
                raise KitError(f"{archive}: not a zip or tar archive")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
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
    record = _read_record(record_path)
    subdir = directory / ("DIV2K" if which == "div2k" else "")
    for url in urls or ARCHIVES[which]:
        name = url.rsplit("/", 1)[-1]
        archive = directory / "archives" / name
        digest = fetch(url, archive, sha256=record.get(name), progress=progress)
        if name not in record:
            record[name] = digest
            write_json(record_path, record)
        log(f"{name}: sha256 {digest}")
        safe_extract(archive, subdir)
    return subdir


def _read_record(path):
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KitError(f"{path}: unreadable ({exc}); delete it and the digests will be recorded again") from None
    if not isinstance(record, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in record.items()
    ):
        raise KitError(f"{path}: not a name -> SHA-256 record; delete it and the digests will be recorded again")
    return record
