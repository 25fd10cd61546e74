"""Hostile and malformed `.pt` files: each is refused with one line naming the file, without a crash, without
touching memory outside its storages, within bounded memory, and without leaving anything written."""

import subprocess
import sys
import zipfile

import numpy as np
import pytest

from edsr_lib.errors import KitError
from edsr_lib.files import OUTPUT_MARKER
from edsr_lib.torch_pickle import load_torch_state_dict
from reference import _pickle_state, random_published_weights, write_pt_legacy, write_pt_zip

WRITERS = {"legacy": write_pt_legacy, "zip": write_pt_zip}
MB = 1 << 20


def _state(rng):
    return random_published_weights(rng, 2, 1, 8)


ADDRESS_SPACE_LIMIT = 3 << 30  # MindSpore itself needs ~2 GB of address space; a memory bomb hits this first


def _cli_in_child(*args):
    """`edsr ARGS` in a fresh process under an address-space limit: (exit code, stderr, its peak RSS in MB)."""
    code = (
        "import resource, subprocess, sys; limit = lambda: resource.setrlimit(resource.RLIMIT_AS, "
        f"({ADDRESS_SPACE_LIMIT}, {ADDRESS_SPACE_LIMIT})); p = subprocess.run([sys.executable, '-m', "
        f"'edsr_lib.cli', *{[str(a) for a in args]!r}], capture_output=True, text=True, preexec_fn=limit); "
        "print(p.returncode); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); "
        "sys.stderr.write(p.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = done.stdout.split()
    return int(lines[0]), done.stderr, float(lines[1])


def _assert_refused(src, tmp_path, match):
    dst = tmp_path / "out.ckpt"
    code, stderr, peak_mb = _cli_in_child("convert", src, dst)
    assert code == 2, stderr  # a user error, not a signal death (negative) or a traceback (1)
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert str(src) in stderr and match in stderr, stderr
    assert peak_mb < 1024, peak_mb
    assert not dst.exists() and not list(tmp_path.glob("out.ckpt*"))


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize(
    "layout,match",
    [
        ((0, (8, 3, 3, 3), (-27, 9, 3, 1)), "bad tensor stride"),  # negative stride: would read before the storage
        ((-1, (8, 3, 3, 3), (27, 9, 3, 1)), "bad tensor storage offset"),
        ((1, (8, 3, 3, 3), (27, 9, 3, 1)), "reaches element 216 of a storage of 216"),  # one past the end
        ((0, (8, 3, 3, 3), (2000, 9, 3, 1)), "reaches element"),
        ((0, ("8", 3, 3, 3), (27, 9, 3, 1)), "bad tensor size"),
        ((0, (8, 3, 3), (27, 9, 3, 1)), "bad tensor layout"),
    ],
)
def test_tensor_layout_outside_its_storage_is_refused(tmp_path, rng, fmt, layout, match):
    state = _state(rng)
    src = tmp_path / "evil.pt"
    WRITERS[fmt](src, state, layouts={"head.0.weight": (str(list(state).index("head.0.weight")), *layout)})
    with pytest.raises(KitError, match=match):
        load_torch_state_dict(src)
    if (fmt, layout[0]) == ("zip", -1):
        _assert_refused(src, tmp_path, match)


def test_stride_zero_and_repeated_tensors_cannot_expand_memory(tmp_path, rng):
    state = _state(rng)
    key = str(list(state).index("head.0.bias"))
    write_pt_zip(tmp_path / "stride0.pt", state, layouts={"head.0.bias": (key, 0, (375_000_000,), (0,))})
    with pytest.raises(KitError, match="would expand to 375"):
        load_torch_state_dict(tmp_path / "stride0.pt")
    big = {"w": np.zeros(65536, np.float32)}
    write_pt_zip(tmp_path / "names.pt", big, layouts={f"w{i}": ("0", 0, (65536,), (1,)) for i in range(5000)})
    assert (tmp_path / "names.pt").stat().st_size < 2 * MB
    _assert_refused(tmp_path / "names.pt", tmp_path, "would expand to")


def _zip(path, members, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            if callable(data):
                with z.open(name, "w", force_zip64=True) as f:
                    data(f)
            else:
                z.writestr(name, data)


@pytest.mark.slow
def test_zip_bombs_are_refused_before_inflating(tmp_path):
    n = 100_000_000  # a storage declaring 400 MB that deflates from ~400 KB
    data, _ = _pickle_state(
        {"w": np.zeros(4, np.float32)},
        lambda torch, t: ("storage", torch.FloatStorage, t.key, "cpu", n),
        {"w": ("0", 0, (n,), (1,))},
    )
    zeros = bytes(16 * MB)
    _zip(
        tmp_path / "storage_bomb.pt",
        {"archive/data.pkl": data, "archive/data/0": lambda f: [f.write(zeros) for _ in range(n * 4 // len(zeros))]},
    )
    assert (tmp_path / "storage_bomb.pt").stat().st_size < 2 * MB
    _assert_refused(tmp_path / "storage_bomb.pt", tmp_path, "zip bomb")
    _zip(tmp_path / "pickle_bomb.pt", {"archive/data.pkl": lambda f: [f.write(zeros) for _ in range(8)]})
    with pytest.raises(KitError, match="data.pkl declares"):
        load_torch_state_dict(tmp_path / "pickle_bomb.pt")
    _assert_refused(tmp_path / "pickle_bomb.pt", tmp_path, "data.pkl declares")


def test_deeply_nested_pickle_is_refused_not_a_crash(tmp_path):
    nested = b"\x80\x02}" + b"K\x01" + b"\x85" * 200_000 + b"K\x02s."  # {((((1,),),...),): 2}
    _zip(tmp_path / "deep.pt", {"archive/data.pkl": nested}, zipfile.ZIP_STORED)
    _assert_refused(tmp_path / "deep.pt", tmp_path, "nests objects more than")


def test_a_hostile_file_cannot_poison_later_loads(tmp_path, rng):
    poison = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeK\x01sb."  # BUILD on the storage type
    _zip(tmp_path / "poison.pt", {"archive/data.pkl": poison}, zipfile.ZIP_STORED)
    poison_fn = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x03\x00\x00\x00keyK\x01sb."
    _zip(tmp_path / "poison_fn.pt", {"archive/data.pkl": poison_fn}, zipfile.ZIP_STORED)
    for name in ("poison.pt", "poison_fn.pt"):
        with pytest.raises(KitError, match=name):
            load_torch_state_dict(tmp_path / name)
    state = _state(rng)
    write_pt_zip(tmp_path / "good.pt", state)
    loaded = load_torch_state_dict(tmp_path / "good.pt")
    assert all(np.array_equal(loaded[k], state[k]) for k in state)


@pytest.mark.slow
def test_corrupt_archives_give_one_line_errors(tmp_path, rng):
    state = _state(rng)
    write_pt_zip(tmp_path / "good.pt", state)
    raw = bytearray((tmp_path / "good.pt").read_bytes())
    # corrupt deflate: recompress the members, then damage the compressed bytes of the largest
    with zipfile.ZipFile(tmp_path / "good.pt") as z:
        _zip(tmp_path / "deflate.pt", {n: z.read(n) for n in z.namelist()})
    damaged = bytearray((tmp_path / "deflate.pt").read_bytes())
    with zipfile.ZipFile(tmp_path / "deflate.pt") as z:
        info = max(z.infolist(), key=lambda i: i.compress_size)
    start = info.header_offset + 30 + len(info.filename.encode())
    damaged[start + 5 : start + 40] = b"\xff" * 35
    (tmp_path / "deflate.pt").write_bytes(bytes(damaged))
    # encrypted member flag, unknown compression method (both in the central directory and local header)
    for name, patch in (
        ("encrypted.pt", lambda b, off: b.__setitem__(slice(off + 8, off + 10), b"\x01\x00")),
        ("method.pt", lambda b, off: b.__setitem__(slice(off + 10, off + 12), b"\x63\x00")),
    ):
        b = bytearray(raw)
        central = b.find(b"PK\x01\x02")
        while central != -1:
            patch(b, central)
            central = b.find(b"PK\x01\x02", central + 4)
        (tmp_path / name).write_bytes(bytes(b))
    for name in ("deflate.pt", "encrypted.pt", "method.pt"):
        _assert_refused(tmp_path / name, tmp_path, "not a readable PyTorch checkpoint")


def _png_chunk(tag, data):
    import zlib

    return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")


def _png(width, height, bit_depth, idat):
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([bit_depth, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.mark.slow
def test_odd_and_hostile_images_give_one_line_errors(tmp_path):
    import zlib

    from edsr_lib.images import read_image

    cases = {
        "huge16.png": (_png(15000, 15000, 16, zlib.compress(b"\0" * 1000)), "megapixels"),  # refused from the header
        "huge8.png": (_png(15000, 15000, 8, zlib.compress(b"\0" * 1000)), "megapixels"),
        "empty16.png": (_png(0, 5, 16, zlib.compress(b"")), "no pixels"),
        "corrupt16.png": (_png(4, 4, 16, b"\x78\x9c" + b"\xff" * 40), "unreadable"),
    }
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(KitError, match=f"{name}.*{match}"):
            read_image(tmp_path / name)
    _kit_files(tmp_path, np.random.default_rng(0))
    for name in ("huge16.png", "huge8.png"):
        code, stderr, peak_mb = _cli_in_child(
            "upscale", "--ckpt", tmp_path / "m.ckpt", tmp_path / name, tmp_path / "sr.png"
        )
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and name in stderr, stderr
        assert peak_mb < 1024 and not list(tmp_path.glob("*sr*")), peak_mb


def test_exif_orientation_and_animation_frames_are_reported(tmp_path):
    from PIL import Image

    from edsr_lib.images import read_image

    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[0, 0] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    image.save(tmp_path / "portrait.jpg", exif=exif, quality=100)
    array, note = read_image(tmp_path / "portrait.jpg")
    assert array.shape == (6, 4, 3) and "EXIF orientation applied" in note
    assert array[0, -1].mean() > 128  # the marked corner moved to the top right, as a viewer shows it
    frames = [Image.fromarray(np.full((5, 5, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    array, note = read_image(tmp_path / "anim.gif")
    assert "first frame of 2" in note


def test_a_damaged_kit_checkpoint_is_refused(tmp_path, rng):
    from edsr_lib import Architecture, load_model
    from edsr_lib.weights import save_checkpoint

    arch = Architecture(scale=2, n_resblocks=1, n_feats=8)
    weights = {k: v for k, v in random_published_weights(rng, 2, 1, 8).items()}
    save_checkpoint(tmp_path / "good.ckpt", arch, weights)
    load_model(tmp_path / "good.ckpt")
    raw = bytearray((tmp_path / "good.ckpt").read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(b ^ 0xFF for b in raw[len(raw) // 2 : len(raw) // 2 + 64])
    (tmp_path / "flipped.ckpt").write_bytes(bytes(raw))
    _assert_refused(tmp_path / "flipped.ckpt", tmp_path, "damaged (its CRC check fails)")
    assert not list(tmp_path.glob(".*.partial-*"))  # no temporary files left from the saves


def test_cli_turns_environment_and_internal_errors_into_one_line(tmp_path, rng):
    from conftest import run_cli
    from edsr_lib import Architecture
    from edsr_lib.weights import save_checkpoint

    save_checkpoint(
        tmp_path / "m.ckpt", Architecture(scale=2, n_resblocks=1, n_feats=8), random_published_weights(rng, 2, 1, 8)
    )
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    (tmp_path / "file").write_text("x")
    result = run_cli("upscale", "--ckpt", tmp_path / "m.ckpt", tmp_path / "in.png", tmp_path / "file" / "out.png")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "file" in result.stderr and "Traceback" not in result.stderr
    bad_arch = tmp_path / "arch.ckpt"
    import mindspore as ms

    ms.save_checkpoint(
        [{"name": "head.0.weight", "data": ms.Tensor(np.zeros((8, 3, 3, 3), np.float32))}],
        str(bad_arch),
        append_dict={"edsr_arch": "{not json"},
    )
    result = run_cli("upscale", "--ckpt", bad_arch, tmp_path / "in.png", tmp_path / "o.png")
    assert result.returncode == 2 and "unreadable architecture record" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_export_refuses_sizes_no_deployment_uses_and_tampered_records(tmp_path, rng, monkeypatch):
    import json as json_module

    from conftest import run_cli
    from edsr_lib import Architecture
    from edsr_lib.export import ExportedModel
    from edsr_lib.weights import save_checkpoint

    save_checkpoint(
        tmp_path / "m.ckpt", Architecture(scale=2, n_resblocks=1, n_feats=8), random_published_weights(rng, 2, 1, 8)
    )
    monkeypatch.chdir(tmp_path)  # MindSpore drops analyze_fail.ir into ./rank_0 when a compile fails
    for size in (("0", "0"), ("100000", "100000")):
        result = run_cli("export", "--ckpt", "m.ckpt", "--format", "ONNX", "--input-size", *size, "--output", "m.onnx")
        assert result.returncode == 2 and "input size must be two integers" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "rank_0").exists()
    result = run_cli("export", "--ckpt", "m.ckpt", "--format", "ONNX", "--input-size", "16", "16", "--output", "m.onnx")
    assert result.returncode == 0, result.stderr
    sidecar = tmp_path / "m.onnx.json"
    meta = json_module.loads(sidecar.read_text())
    for tampered, match in (
        ({"input_size": [32, 32]}, "does not belong to this model"),
        ({"input_size": [0, 16]}, "input size must be"),
        ({"batch_size": -3}, "batch_size must be"),
        ({"architecture": {**meta["architecture"], "n_feats": 100000}}, "beyond the limits"),
    ):
        sidecar.write_text(json_module.dumps({**meta, **tampered}))
        with pytest.raises(KitError, match=match):
            ExportedModel(tmp_path / "m.onnx")


def test_a_folder_keeps_going_past_a_bad_file_and_checks_output_names_first(tmp_path, rng):
    from PIL import Image

    from conftest import run_cli
    from edsr_lib import Architecture
    from edsr_lib.weights import save_checkpoint

    save_checkpoint(
        tmp_path / "m.ckpt", Architecture(scale=2, n_resblocks=1, n_feats=8), random_published_weights(rng, 2, 1, 8)
    )
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).save(src / name)
    (src / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)  # damaged
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(src / "d.tif")  # decodes, but is not supported
    result = run_cli("upscale", "--ckpt", tmp_path / "m.ckpt", src, tmp_path / "out")
    assert result.returncode == 1 and "b.png" in result.stderr and "d.tif" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]
    result = run_cli("upscale", "--ckpt", tmp_path / "m.ckpt", src / "a.png", tmp_path / "out.xyz")
    assert result.returncode == 2 and "unknown image extension" in result.stderr


def test_datasets_apply_the_same_pixel_budget_before_decoding(tmp_path):
    import zlib

    from edsr_lib.data import open_dataset

    folder = tmp_path / "hr"
    folder.mkdir()
    (folder / "huge.png").write_bytes(_png(15000, 15000, 8, zlib.compress(b"\0" * 1000)))
    with pytest.raises(KitError, match="huge.png.*megapixels"):
        open_dataset(str(folder), 2, split="test")


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(kb) -> a folder on a filesystem of that size (a tmpfs), for real disk-full (ENOSPC) errors."""
    mounts = []

    def make(kb):
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(where)], capture_output=True)
        if done.returncode:
            pytest.skip("cannot mount a small tmpfs here (needs root); test_file_size_limit_... covers the same path")
        mounts.append(where)
        return where

    yield make
    for where in mounts:
        subprocess.run(["umount", str(where)], check=True)


def _one_line_error(result, *names):
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("edsr: error: ") and all(str(n) in lines[-1] for n in names), result.stderr
    assert not any("ME(" in line and "CRITICAL" in line for line in lines), result.stderr  # MindSpore's log silenced


def _kit_files(tmp_path, rng):
    from PIL import Image

    from edsr_lib import Architecture
    from edsr_lib.weights import save_checkpoint

    state = random_published_weights(rng, 2, 2, 32)  # ~340 KB: more than the small disks hold
    save_checkpoint(tmp_path / "m.ckpt", Architecture(scale=2, n_resblocks=2, n_feats=32), state)
    write_pt_zip(tmp_path / "m.pt", state)
    (tmp_path / "hr").mkdir()
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(tmp_path / "hr" / "a.png")


@pytest.mark.slow
def test_a_full_disk_gives_one_line_and_leaves_nothing_half_written(tmp_path, rng, small_disk):
    from conftest import run_cli

    _kit_files(tmp_path, rng)
    disk = small_disk(16)
    _one_line_error(
        run_cli("upscale", "--ckpt", tmp_path / "m.ckpt", tmp_path / "hr" / "a.png", disk / "sr.png"),
        disk / "sr.png",
        "No space left on device",
    )
    _one_line_error(run_cli("convert", tmp_path / "m.pt", disk / "m.ckpt"), disk / "m.ckpt", "No space left")
    _one_line_error(
        run_cli("eval", "--ckpt", tmp_path / "m.ckpt", "--hr-dir", tmp_path / "hr", "--save-images", disk / "sr"),
        disk / "sr" / "a_x2_SR.png",
        "No space left",
    )
    # only the mark of the folder the kit made for --save-images, nothing half-written
    assert [p.name for p in disk.rglob("*") if p.is_file()] == [OUTPUT_MARKER]
    # training: the first checkpoint fits, the next one does not; the one written stays whole and resumable
    disk = small_disk(1600)
    train = (
        "train",
        "--data_train",
        "sample",
        "--data_test",
        "sample",
        "--n_resblocks",
        "2",
        "--n_feats",
        "32",
        "--patch_size",
        "24",
        "--epochs",
        "3",
        "--test_every",
        "4",
        "--batch_size",
        "2",
        "--ckpt_save_path",
        disk / "run",
    )
    result = run_cli(*train)
    _one_line_error(result, disk / "run", "No space left on device")
    left = sorted(p.name for p in (disk / "run").iterdir())
    # no temporary checkpoint, no lock; TensorBoard's event log (tb/) is append-only, and its readers skip a
    # truncated last record
    assert [n for n in left if n != "tb"] == [OUTPUT_MARKER, "latest.ckpt", "run.json"], left
    from edsr_lib.weights import read_checkpoint

    read_checkpoint(disk / "run" / "latest.ckpt")  # whole: its CRC checks
    _one_line_error(run_cli(*train, "--resume"), disk / "run", "No space left on device")


def test_file_size_limit_gives_one_line_and_leaves_nothing_half_written(tmp_path, rng):
    """The same write-failure path as a full disk, for any user: writes beyond RLIMIT_FSIZE fail (EFBIG)."""
    import resource

    _kit_files(tmp_path, rng)
    (tmp_path / "out").mkdir()
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # noqa: E731  (Python ignores SIGXFSZ)
    for args, target in (
        (("upscale", "--ckpt", tmp_path / "m.ckpt", tmp_path / "hr" / "a.png"), "sr.png"),
        (("convert", tmp_path / "m.pt"), "m.ckpt"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "edsr_lib.cli", *map(str, args), str(tmp_path / "out" / target)],
            capture_output=True,
            text=True,
            preexec_fn=limit,
        )
        _one_line_error(result, tmp_path / "out" / target, "File too large")
    assert not list((tmp_path / "out").iterdir())
