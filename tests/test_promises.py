"""The promises of docs/promises.md, case by case: nothing a user owns is destroyed, nothing unverified is used,
nothing is left running, and every mistake is one line before any work. Each test is one case class of the red-team
report."""

import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_cli
from edsr_lib import Architecture, save_checkpoint
from edsr_lib.errors import KitError
from edsr_lib.files import OUTPUT_MARKER
from edsr_lib.pretrained import Published, Registry
from reference import random_published_weights, write_pt_zip


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "tiny_x2.ckpt"
    save_checkpoint(
        path, Architecture(n_resblocks=1, n_feats=8), random_published_weights(np.random.default_rng(0), 2, 1, 8)
    )
    return path


@pytest.fixture
def hr_folder(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(proc):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# ---- data loss: outputs never replace or join inputs ----------------------------------------------------------


def test_eval_outputs_can_never_overwrite_or_join_its_inputs(tmp_path, tiny_ckpt, hr_folder):
    before, ckpt_bytes = _snapshot(hr_folder), tiny_ckpt.read_bytes()
    cases = [
        (["--json", hr_folder / "a.png"], "--json would write over the"),  # an HR input image
        (["--json", tiny_ckpt], "--json would write over the checkpoint being evaluated"),
        (["--save-images", hr_folder], "--save-images would write over the"),  # SR images into the dataset
        (["--conventions", hr_folder], "--conventions would write over the"),
    ]
    for extra, message in cases:
        line = _one_line(run_cli("eval", "--ckpt", tiny_ckpt, "--hr-dir", hr_folder, *extra))
        assert message in line, line
    assert _snapshot(hr_folder) == before and tiny_ckpt.read_bytes() == ckpt_bytes
    # bad places are refused before the evaluation, not after it
    (tmp_path / "a_file").write_text("x")
    others = tmp_path / "others"
    others.mkdir()
    (others / "notes.txt").write_text("mine")
    for extra, message in (
        (["--json", tmp_path / "a_file" / "r.json"], "is a file, not a folder"),
        (["--json", tmp_path], "is a folder; give a file name"),
        (["--save-images", others], "holds files the kit did not write (notes.txt)"),
        (["--conventions", tmp_path / "a_file"], "is a file, not a folder"),
    ):
        start = time.time()
        line = _one_line(run_cli("eval", "--ckpt", tiny_ckpt, "--hr-dir", hr_folder, *extra))
        assert message in line and time.time() - start < 60, line
    assert (others / "notes.txt").read_text() == "mine" and sorted(p.name for p in others.iterdir()) == ["notes.txt"]
    # a folder the kit made is filled again: evaluating twice scores the same images, not the SR ones too
    out = tmp_path / "sr"
    for _ in range(2):
        done = run_cli(
            "eval", "--ckpt", tiny_ckpt, "--hr-dir", hr_folder, "--save-images", out, "--json", out / "r.json"
        )
        assert done.returncode == 0, done.stderr
        assert len(json.loads((out / "r.json").read_text())["per_image"]) == 2
    assert (out / OUTPUT_MARKER).is_file() and _snapshot(hr_folder) == before


def test_training_never_writes_into_its_data(tmp_path, hr_folder):
    from edsr_lib.options import Options
    from edsr_lib.trainer import Trainer

    before = _snapshot(hr_folder)
    common = dict(data_train=str(hr_folder), data_test="none", patch_size=24, n_resblocks=1, n_feats=8, epochs=1)
    for folder in (hr_folder, tmp_path):  # the training images' folder, and a folder holding it
        with pytest.raises(KitError, match="ckpt_save_path would write over the training images"):
            Trainer(Options(**common, ckpt_save_path=str(folder)), log=lambda m: None, progress=False)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("mine")
    with pytest.raises(KitError, match="holds files the kit did not write"):
        Trainer(Options(**common, ckpt_save_path=str(stranger)), log=lambda m: None, progress=False)
    assert _snapshot(hr_folder) == before and sorted(p.name for p in stranger.iterdir()) == ["thesis.tex"]


def test_convert_never_overwrites_its_source(tmp_path, tiny_ckpt):
    copy = tmp_path / "m.ckpt"
    copy.write_bytes(tiny_ckpt.read_bytes())
    line = _one_line(run_cli("convert", copy, copy))
    assert "would write over the file being converted" in line
    assert copy.read_bytes() == tiny_ckpt.read_bytes()
    line = _one_line(run_cli("convert", copy, tmp_path / "hr"))
    assert "must end in .ckpt" in line


def test_concurrent_weights_add_keeps_every_name(tmp_path, tiny_ckpt):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    names = [f"mine{i}" for i in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "edsr_lib.cli", "weights", "add", name, str(tiny_ckpt)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in names
    ]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    registered = json.loads((tmp_path / "cache" / "edsr_lib" / "weights" / "registered.json").read_text())
    assert sorted(registered) == names


def test_a_16_bit_upload_is_scaled_not_wrapped(tmp_path, tiny_ckpt):
    import io

    import png

    from edsr_lib.data import open_dataset
    from edsr_lib.metrics import protocol_for
    from edsr_lib.loading import load_model
    from edsr_lib.widgets import Comparison, ComparisonExplorer

    rng = np.random.default_rng(3)
    image16 = rng.integers(0, 65536, (24, 20, 3), dtype=np.uint16)
    buffer = io.BytesIO()
    png.Writer(20, 24, bitdepth=16, greyscale=False).write(buffer, image16.reshape(24, -1).tolist())
    comparison = Comparison(
        open_dataset("sample", 2, split="test"), {"EDSR": load_model(tiny_ckpt)}, protocol_for("sample", 2)
    )
    explorer = ComparisonExplorer(comparison, size=16, upload_dir=tmp_path / "uploads")
    explorer.add_photo("deep.png", buffer.getvalue(), as_lr=False)
    _, hr = comparison.photos["deep.png"]
    np.testing.assert_array_equal(hr, np.round(image16 / 257.0).astype(np.uint8))  # 24x20 is already a multiple of 2


# ---- mirrors cannot hurt each other or the machine -------------------------------------------------------------


@pytest.fixture
def published(tmp_path):
    weights = random_published_weights(np.random.default_rng(4), 2, 1, 8)
    write_pt_zip(tmp_path / "tiny.pt", weights)
    body = (tmp_path / "tiny.pt").read_bytes()
    entry = Published(
        "tiny_x2", f"tiny_x2-{hashlib.sha256(body).hexdigest()[:8]}.pt", Architecture(n_resblocks=1, n_feats=8)
    )
    return entry, body


def test_a_bad_mirror_cannot_poison_the_good_ones_after_it(tmp_path, server, published):
    base, handler = server
    entry, body = published
    bad = bytes(len(body))  # right length, wrong bytes: a short body from it must not be continued elsewhere
    handler.files[f"/bad/{entry.file}"] = bad
    handler.files[f"/good/{entry.file}"] = body
    registry = Registry([entry], cache_dir=tmp_path / "cache", official=f"{base}/official/")
    handler.drop_after = len(body) // 10  # every connection breaks: the bad mirror leaves part of its bytes
    with pytest.raises(KitError):
        registry.download("tiny_x2", [f"{base}/bad"], progress=False, log=lambda m: None)
    left = (tmp_path / "cache" / f"{entry.file}.part").read_bytes()
    assert 0 < len(left) < len(body) and left == bad[: len(left)]
    handler.drop_after = None
    lines = []
    path, _ = registry.download("tiny_x2", [f"{base}/good", "not a url"], progress=False, log=lines.append)
    assert path.read_bytes() == body and not lines  # the good mirror started from byte 0
    # and on every later run too; a malformed mirror URL is one line and the next mirror is tried
    path.unlink()
    lines = []
    path, _ = registry.download("tiny_x2", ["not a url", f"{base}/good"], progress=False, log=lines.append)
    assert path.read_bytes() == body and len(lines) == 1 and "not a URL the kit can download from" in lines[0]


def test_an_endless_body_stops_at_the_expected_size_and_the_next_mirror_serves(tmp_path, server, published):
    base, handler = server
    entry, body = published
    handler.files[f"/endless/{entry.file}"] = body + bytes(8 << 20)  # far more than this file can be
    handler.files[f"/good/{entry.file}"] = body
    handler.length = "none"  # no length announced: only the kit's own bound stops it
    registry = Registry([entry], cache_dir=tmp_path / "cache", official=f"{base}/official/")
    lines = []
    path, _ = registry.download("tiny_x2", [f"{base}/endless", f"{base}/good"], progress=False, log=lines.append)
    assert path.read_bytes() == body
    assert len(lines) == 1 and "/endless/" in lines[0] and "more than the" in lines[0]


def test_published_names_cannot_be_shadowed_and_a_huge_registry_is_one_line(tmp_path, server, published, tiny_ckpt):
    base, handler = server
    entry, body = published
    handler.files[f"/official/{entry.file}"] = body
    registry = Registry([entry], cache_dir=tmp_path / "cache", official=f"{base}/official/")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "registered.json").write_text(json.dumps({"tiny_x2": {"path": str(tiny_ckpt)}}))
    resolved = registry.resolve("tiny_x2", progress=False, log=lambda m: None)
    assert resolved == tmp_path / "cache" / "tiny_x2.ckpt"  # the verified published file, not the planted one
    (tmp_path / "cache" / "registered.json").write_text(" " * (2 << 20))
    start = time.time()
    with pytest.raises(KitError, match="registered.json: unreadable.*larger than"):
        registry.own()
    assert time.time() - start < 5


def test_a_damaged_converted_checkpoint_is_made_again_from_the_verified_file(tmp_path, server, published):
    base, handler = server
    entry, body = published
    handler.files[f"/official/{entry.file}"] = body
    registry = Registry([entry], cache_dir=tmp_path / "cache", official=f"{base}/official/")
    ckpt = registry.fetch("tiny_x2", progress=False, log=lambda m: None)
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])
    assert registry.status(entry) == "damaged"
    handler.files.clear()  # no network needed: the verified .pt is in the cache
    lines = []
    assert registry.fetch("tiny_x2", progress=False, log=lines.append).read_bytes() == good
    assert any("converting again" in line for line in lines)


# ---- nothing left running --------------------------------------------------------------------------------------


def _ours(marker):
    import psutil

    found = []
    for process in psutil.process_iter(["environ"]):
        try:
            if (process.info["environ"] or {}).get("EDSR_TEST_MARKER") == marker:
                found.append(process)
        except psutil.Error:
            pass
    return found


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["run_standalone.sh", "run_distribute.sh"])
def test_sigterm_to_a_launcher_stops_everything_it_started(tmp_path, launcher):
    import psutil

    marker = f"{launcher}-{os.getpid()}"
    args = ["sample", "2"] if launcher == "run_distribute.sh" else ["sample", str(tmp_path / "out")]
    env = {**os.environ, "DEVICE_TARGET": "CPU", "OUTPUT_DIR": str(tmp_path / "out"), "EDSR_TEST_MARKER": marker}
    env["PYTHON"] = sys.executable
    params = ["-p", "epochs", "50", "-p", "test_every", "50", "-p", "n_resblocks", "2", "-p", "n_feats", "8"]
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / launcher), *args, *params],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline:  # until a notebook kernel is training
        kernels = [p for p in _ours(marker) if any("ipykernel" in part for part in p.cmdline())]
        if kernels:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(1)
    time.sleep(3)
    proc.terminate()  # what `timeout`, `kill` and batch schedulers send
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "stopped by SIGTERM" in stderr, stderr[-2000:]
    time.sleep(1)
    left = [p for p in _ours(marker) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline() for p in left]


@pytest.mark.slow
def test_the_mindir_child_dies_with_its_parent(tmp_path, tiny_ckpt):
    import psutil

    from edsr_lib.export import export_model

    path, _ = export_model(tiny_ckpt, "MINDIR", tmp_path / "m.mindir")
    code = (
        "import sys, time; from edsr_lib.export import MindirProcess; m = MindirProcess(sys.argv[1]); "
        "print(m._child.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()  # SIGKILL: no handler runs in the parent
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline and psutil.pid_exists(child) and psutil.Process(child).status() != "zombie":
        time.sleep(0.2)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"


# ---- one line for every mistake, at the start -------------------------------------------------------------------


def test_launcher_mistakes_are_one_line(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE_TARGET": "CPU"}
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    script = str(ROOT / "scripts" / "run_standalone.sh")
    cases = [
        ([script, "sample", str(a_file / "out")], "is a file, not a folder"),
        ([script, "sample", str(tmp_path / "o"), "-p", "epoch", "3"], "-p epoch: no such parameter"),
        ([script, "sample", str(tmp_path / "o"), "-p", "epochs", "[" * 6000 + "]" * 6000], "longer than 10000"),
        ([script, "sample", str(tmp_path / "o"), "-p", "epochs", "[" * 4000 + "]" * 4000], "nested too deeply"),
        ([script, "sample", str(tmp_path / "o"), "-p", "epochs", "[[1]]"], "epochs must be a finite"),
    ]
    for command, message in cases:
        proc = subprocess.run(["bash", *command], env=env, capture_output=True, text=True, timeout=120)
        line = _one_line(proc)
        assert message in line, line
    assert "did you mean epochs" in _one_line(
        subprocess.run(["bash", *cases[1][0]], env=env, capture_output=True, text=True, timeout=120)
    )


def test_native_build_with_an_unusable_cache_is_one_line_and_the_kit_falls_back(tmp_path, tiny_ckpt):
    cache = tmp_path / "cache_is_a_file"
    cache.write_text("x")
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "edsr_lib.kernels", "build", "--force"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "cannot write the kernel cache" in proc.stderr
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(image)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edsr_lib.cli",
            "upscale",
            "--ckpt",
            str(tiny_ckpt),
            str(image),
            str(tmp_path / "o.png"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and (tmp_path / "o.png").is_file(), out.stderr[-2000:]


def test_numbers_training_cannot_use_are_refused_with_the_reason():
    from edsr_lib.options import Options

    for bad, message in (
        (dict(lr=1e30), "lr 1e\\+30 is out of range"),
        (dict(loss="1e38*L1"), "weight in \\(0, 1000\\]"),
        (dict(decay="-5"), "decay must be positive epochs"),
        (dict(decay="200-"), "decay must be positive epochs"),
        (dict(batch_size=100_000), "batch_size 100000 is per device"),
    ):
        with pytest.raises(KitError, match=message):
            Options(**bad)
    assert Options(decay="200-400").decay_epochs() == [200, 400] and Options(lr=1.0).lr == 1.0


def test_a_broken_network_is_an_error_not_an_image(tmp_path):
    from edsr_lib.inference import upscale
    from edsr_lib.model import build_model

    model = build_model(Architecture(n_resblocks=1, n_feats=8))
    for p in model.trainable_params():
        p.set_data(p * np.float32(1e30))  # what a diverged run leaves: finite weights, non-finite outputs
    with pytest.raises(KitError, match="output holds NaN or infinite values"):
        upscale(model, np.full((12, 10, 3), 200, np.uint8))


def test_an_empty_or_garbled_lock_does_not_block_the_folder_for_ever(tmp_path):
    from edsr_lib.records import run_lock

    for content in (b"", b"\x00\xff\xfe binary"):
        (tmp_path / ".lock").write_bytes(content)
        with pytest.raises(KitError, match="process unknown on unknown host"):  # young: maybe being written
            with run_lock(tmp_path):
                pass
        old = time.time() - 60
        os.utime(tmp_path / ".lock", (old, old))
        with run_lock(tmp_path):  # old: a start that never wrote its owner
            assert (tmp_path / ".lock").read_text().split()[1] == str(os.getpid())
        assert not (tmp_path / ".lock").exists()


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(tmp_path):
    from edsr_lib.files import TEMPORARY_TAG, prepare_output_folder

    folder = prepare_output_folder(tmp_path / "run")
    leftover = folder / f".latest{TEMPORARY_TAG}x1y2.ckpt"
    leftover.write_bytes(b"half")
    (folder / "kept.png").write_bytes(b"png")
    prepare_output_folder(folder)
    assert not leftover.exists() and (folder / "kept.png").is_file()


def test_export_records_are_checked_against_the_model(tmp_path, tiny_ckpt):
    from edsr_lib.export import ExportedModel, export_model

    path, meta = export_model(tiny_ckpt, "MINDIR", tmp_path / "m.mindir")
    record = tmp_path / "m.mindir.json"
    x = np.zeros((1, 3, 8, 6), np.float32)
    assert ExportedModel(path).forward_array(x).shape == (1, 3, 16, 12)
    record.write_text(json.dumps({**meta, "architecture": {**meta["architecture"], "scale": 4, "scales": [4]}}))
    with pytest.raises(KitError, match="records an x4 model, but m.mindir turned"):
        ExportedModel(path).forward_array(x)
    record.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(KitError, match="m.mindir.json: unreadable export record"):
        ExportedModel(path)


def test_an_mdsr_file_missing_a_branch_says_so(tmp_path):
    from edsr_lib.weights import infer_architecture

    rng = np.random.default_rng(5)
    f = 8
    weights = {"head.0.weight": rng.standard_normal((f, 3, 3, 3)), "tail.0.weight": rng.standard_normal((3, f, 3, 3))}
    for i in range(3):
        weights[f"pre_process.{i}.0.body.0.weight"] = rng.standard_normal((f, f, 5, 5))
    weights["upsample.0.0.weight"] = rng.standard_normal((4 * f, f, 3, 3))
    weights["upsample.1.0.weight"] = rng.standard_normal((9 * f, f, 3, 3))
    with pytest.raises(KitError, match="branch 2 has pre_process weights but no upsample.2"):
        infer_architecture(weights)


def test_a_checkpoint_failing_its_crc_is_called_damaged(tmp_path, tiny_ckpt):
    raw = bytearray(tiny_ckpt.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
    (tmp_path / "flipped.ckpt").write_bytes(bytes(raw))
    line = _one_line(run_cli("upscale", "--ckpt", tmp_path / "flipped.ckpt", tmp_path / "x.png", tmp_path / "y.png"))
    assert "flipped.ckpt" in line and "permission" not in line, line


def test_a_mirror_folder_keeps_the_sums_already_there(tmp_path, server, published):
    base, handler = server
    entry, body = published
    handler.files[f"/good/{entry.file}"] = body
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / "SHA256SUMS").write_text(f"{'a' * 64}  other_lab_model.pt\n")
    registry = Registry([entry], cache_dir=tmp_path / "cache", official=f"{base}/official/")
    registry.write_mirror(folder, ["tiny_x2"], [f"{base}/good"], progress=False, log=lambda m: None)
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    assert sorted(lines) == sorted(
        [f"{'a' * 64}  other_lab_model.pt", f"{hashlib.sha256(body).hexdigest()}  {entry.file}"]
    )
    (folder / "SHA256SUMS").write_text("this is my diary\n")
    with pytest.raises(KitError, match="not a SHA256SUMS file"):
        registry.write_mirror(folder, ["tiny_x2"], [f"{base}/good"], progress=False, log=lambda m: None)
    assert (folder / "SHA256SUMS").read_text() == "this is my diary\n"
