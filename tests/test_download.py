"""Downloads against a local HTTP server (no real network): resume, checksum, safe extraction."""

import hashlib
import io
import tarfile
import zipfile

import pytest

from edsr_lib.download import download_dataset, fetch, safe_extract
from edsr_lib.errors import KitError


def test_resume_after_broken_connection(tmp_path, server):
    base, handler = server
    data = bytes(range(256)) * 4000
    handler.files["/a.bin"] = data
    handler.drop_after = 100_000
    with pytest.raises(KitError, match="run again to resume"):
        fetch(base + "/a.bin", tmp_path / "a.bin", progress=False)
    assert not (tmp_path / "a.bin").exists() and (tmp_path / "a.bin.part").stat().st_size == 100_000
    handler.drop_after = None
    digest = fetch(base + "/a.bin", tmp_path / "a.bin", progress=False)
    assert (tmp_path / "a.bin").read_bytes() == data and digest == hashlib.sha256(data).hexdigest()


def test_checksum_mismatch_removes_download(tmp_path, server):
    base, handler = server
    handler.files["/b.bin"] = b"hello"
    with pytest.raises(KitError, match="does not match"):
        fetch(base + "/b.bin", tmp_path / "b.bin", sha256="0" * 64, progress=False)
    assert not (tmp_path / "b.bin").exists() and not (tmp_path / "b.bin.part").exists()
    with pytest.raises(KitError, match="HTTP 404"):
        fetch(base + "/missing", tmp_path / "m.bin", progress=False)


def _zip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_download_dataset_extracts_and_records(tmp_path, server):
    base, handler = server
    handler.files["/benchmark.zip"] = _zip({"benchmark/Set5/HR/baby.png": b"png-bytes"})
    download_dataset("benchmark", tmp_path, urls=[base + "/benchmark.zip"], progress=False, log=lambda m: None)
    assert (tmp_path / "benchmark" / "Set5" / "HR" / "baby.png").read_bytes() == b"png-bytes"
    assert "benchmark.zip" in (tmp_path / "downloads.json").read_text()


def test_path_traversal_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    evil.write_bytes(_zip({"../escape.txt": b"x"}))
    with pytest.raises(KitError, match="unsafe archive member"):
        safe_extract(evil, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    (tmp_path / "evil.tar").write_bytes(buf.getvalue())
    with pytest.raises(KitError, match="unsafe archive member"):
        safe_extract(tmp_path / "evil.tar", tmp_path / "out2")
    assert not (tmp_path / "out2" / "link").exists()


def test_malformed_length_wrong_offset_and_stalls(tmp_path, server):
    base, handler = server
    data = bytes(range(256)) * 400
    handler.files["/c.bin"] = data
    handler.length = "abc"
    with pytest.raises(KitError, match="malformed Content-Length 'abc'"):
        fetch(base + "/c.bin", tmp_path / "c.bin", progress=False)
    handler.length = "exact"
    (tmp_path / "d.bin.part").write_bytes(data[:1000])
    handler.wrong_offset = True  # a 206 from byte 0 instead of 1000 must not be appended
    digest = fetch(base + "/c.bin", tmp_path / "d.bin", progress=False)
    assert (tmp_path / "d.bin").read_bytes() == data and digest == hashlib.sha256(data).hexdigest()
    handler.wrong_offset, handler.trickle = False, 0.05
    with pytest.raises(KitError, match="stalled.*4 times; run again to resume"):
        fetch(base + "/c.bin", tmp_path / "e.bin", progress=False, stall_seconds=0.2)


def test_an_unconfirmed_download_is_not_accepted_and_cannot_poison_later_ones(tmp_path, server):
    base, handler = server
    good = _zip({"benchmark/Set5/HR/baby.png": b"png-bytes" * 1000})
    handler.files["/benchmark.zip"] = good
    handler.length, handler.drop_after = "none", len(good) // 2  # no length, and the connection closes early
    with pytest.raises(KitError, match="not a complete archive; run again to resume"):
        download_dataset("benchmark", tmp_path, urls=[base + "/benchmark.zip"], progress=False, log=lambda m: None)
    assert not (tmp_path / "downloads.json").exists() and not (tmp_path / "archives" / "benchmark.zip").exists()
    handler.length, handler.drop_after = "exact", None  # the next attempt resumes and completes
    download_dataset("benchmark", tmp_path, urls=[base + "/benchmark.zip"], progress=False, log=lambda m: None)
    assert (tmp_path / "benchmark" / "Set5" / "HR" / "baby.png").read_bytes() == b"png-bytes" * 1000
    assert hashlib.sha256(good).hexdigest() in (tmp_path / "downloads.json").read_text()
    (tmp_path / "downloads.json").write_text("{garbage")
    with pytest.raises(KitError, match="downloads.json: unreadable"):
        download_dataset("benchmark", tmp_path, urls=[base + "/benchmark.zip"], progress=False, log=lambda m: None)


def test_extraction_is_bounded(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("big.bin", "w") as f:
            for _ in range(64):
                f.write(bytes(1 << 20))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(KitError, match="zip bomb"):
        safe_extract(bomb, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("big.bin"))
