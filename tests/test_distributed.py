"""Data-parallel training: the 2-worker CPU job through scripts/run_distribute.sh (msrun + papermill per rank),
and the Ascend rank-table launch as far as it can be checked without hardware."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, hccl_rank_table

pytestmark = pytest.mark.slow  # msrun jobs: several processes each

# SGD without momentum: an update is lr times the gradient, so a sum over ranks instead of a mean doubles it
# (Adam would hide the factor).
TINY = {
    "n_resblocks": 2,
    "n_feats": 8,
    "patch_size": 24,
    "test_every": 3,
    "epochs": 2,
    "batch_size": 2,
    "lr": 1e-5,
    "optimizer": "SGD",
    "momentum": 0.0,
    "data_test": "sample",  # every rank validates its share of the held-out photos
    "seed": 3,
    "print_every": 3,
    "ema_decay": 0.5,
}
LAUNCHER = str(ROOT / "scripts" / "run_distribute.sh")


def _p(params):
    return [x for k, v in params.items() for x in ("-p", k, str(v))]


def _env(out, **extra):
    return {**os.environ, "DEVICE_TARGET": "CPU", "OUTPUT_DIR": str(out), "PYTHON": sys.executable, **extra}


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(out, rank):
    return json.loads((out / f"rank_{rank}" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("distribute")
    proc = subprocess.run(
        ["bash", LAUNCHER, "sample", "2", "--master-port", str(_free_port()), *_p(TINY)],
        env=_env(out),
        capture_output=True,
        text=True,
        timeout=900,
    )
    return out, proc


@pytest.fixture(scope="module")
def two_server_run(tmp_path_factory):
    """The issue's two commands: two one-device "servers" on 127.0.0.1 sharing one output folder."""
    out = tmp_path_factory.mktemp("two_servers")
    port = str(_free_port())
    common = ["sample", "1", "--nodes", "2", "--master-addr", "127.0.0.1", "--master-port", port, "--one-host"]
    first = subprocess.Popen(
        ["bash", LAUNCHER, *common, "--node-rank", "0", *_p(TINY)],
        env=_env(out),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    second = subprocess.run(
        ["bash", LAUNCHER, *common, "--node-rank=1", *_p(TINY)],
        env=_env(out),
        capture_output=True,
        text=True,
        timeout=900,
    )
    first_out, _ = first.communicate(timeout=900)
    return out, (first.returncode, first_out), (second.returncode, second.stdout + second.stderr)


def test_two_cpu_workers_end_with_identical_weights(two_worker_run):
    out, proc = two_worker_run
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "2 ranks agree" in proc.stdout
    assert "batch 2 per device x 2 rank(s) = global batch 4" in proc.stdout
    ranks = [_metrics(out, r) for r in (0, 1)]
    assert [m["rank"] for m in ranks] == [0, 1] and all(m["world_size"] == 2 for m in ranks)
    assert ranks[0]["param_digest"] == ranks[1]["param_digest"] and all(m["ranks_agree"] for m in ranks)
    assert ranks[0]["ema_digest"] is not None and ranks[0]["ema_digest"] == ranks[1]["ema_digest"]
    assert ranks[0]["final_loss"] == ranks[1]["final_loss"]  # the logged loss is averaged over ranks
    for r in (0, 1):
        assert (out / f"rank_{r}" / "02_train.ipynb").is_file()
    # rank 0 alone writes the checkpoints and final figures
    assert (out / "ckpt" / "latest.ckpt").is_file() and (out / "rank_0" / "curves.png").is_file()
    assert not (out / "rank_1" / "curves.png").exists()
    run = json.loads((out / "ckpt" / "run.json").read_text())
    assert run["batch_size_per_device"] == 2 and run["global_batch"] == 4 and run["precision"]["deterministic"]


def test_every_rank_validates_its_share_and_all_hold_one_devices_numbers(two_worker_run):
    from edsr_lib.data import open_dataset
    from edsr_lib.evaluation import evaluate
    from edsr_lib.metrics import protocol_for
    from edsr_lib.loading import load_model

    out, proc = two_worker_run
    assert proc.returncode == 0, proc.stdout[-3000:]
    ranks = [_metrics(out, r) for r in (0, 1)]
    per_image = ranks[0]["validation"]["x2"]
    assert len(per_image) >= 2  # both ranks had images to score
    assert ranks[1]["validation"] == ranks[0]["validation"] and ranks[0]["psnr"] == ranks[1]["psnr"] is not None
    # The weights validated (the EMA's, in latest.ckpt) scored on one device: the same numbers, image by image.
    model = load_model(out / "ckpt" / "latest.ckpt")
    dataset = open_dataset("sample", 2, split="test")
    one_device = evaluate(dataset, model, protocol_for("sample", 2), progress=False)
    assert per_image == one_device["per_image"]
    assert ranks[0]["psnr"] == one_device["psnr"]


def test_two_servers_on_one_host_train_like_one_server(two_worker_run, two_server_run):
    from edsr_lib.weights import read_checkpoint

    out, (rc0, log0), (rc1, log1) = two_server_run
    assert rc0 == 0, log0[-3000:]
    assert rc1 == 0, log1[-3000:]
    assert "2 ranks agree" in log0 and "2 ranks agree" in log1
    ranks = [_metrics(out, r) for r in (0, 1)]
    assert [m["rank"] for m in ranks] == [0, 1] and ranks[0]["param_digest"] == ranks[1]["param_digest"]
    one_server = read_checkpoint(two_worker_run[0] / "ckpt" / "latest.ckpt")[1]
    two_servers = read_checkpoint(out / "ckpt" / "latest.ckpt")[1]
    for name, value in one_server.items():
        np.testing.assert_allclose(two_servers[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_data_parallel_averages_gradients_like_one_big_batch(two_worker_run, tmp_path):
    # Two ranks with batch b draw the global samples a single device with batch 2b draws. With SGD every update is
    # lr times the mean gradient, so the weight changes agree to float32 summation order, and a sum would double them.
    from edsr_lib.options import Options
    from edsr_lib.trainer import Trainer
    from edsr_lib.weights import read_checkpoint

    out, proc = two_worker_run
    assert proc.returncode == 0
    single = Trainer(
        Options(**{**TINY, "batch_size": 4, "ckpt_save_path": str(tmp_path)}), log=lambda m: None, progress=False
    )
    start = {p.name: p.asnumpy().copy() for p in single.model.trainable_params()}
    single.fit()
    parallel = read_checkpoint(out / "ckpt" / "latest.ckpt", ema=False)[1]  # the trained weights, not their EMA
    for p in single.model.trainable_params():
        moved, expected = parallel[p.name] - start[p.name], p.asnumpy() - start[p.name]
        assert np.abs(expected).max() > 0, p.name
        np.testing.assert_allclose(moved, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max(), err_msg=p.name)


def test_two_workers_resume_bit_exactly(two_worker_run, tmp_path):
    from edsr_lib.weights import read_checkpoint

    for epochs, extra in ((1, []), (2, ["-p", "resume", "True"])):
        proc = subprocess.run(
            [
                "bash",
                LAUNCHER,
                "sample",
                "2",
                "--master-port",
                str(_free_port()),
                *_p({**TINY, "epochs": epochs}),
                *extra,
            ],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    straight = read_checkpoint(two_worker_run[0] / "ckpt" / "latest.ckpt")[1]
    resumed = read_checkpoint(tmp_path / "ckpt" / "latest.ckpt")[1]
    assert all(np.array_equal(straight[k], resumed[k]) for k in straight)


def test_nonfinite_gradient_on_one_rank_is_skipped_by_every_rank(tmp_path):
    port = _free_port()
    command = [
        "msrun",
        "--worker_num=2",
        "--local_worker_num=2",
        f"--master_port={port}",
        f"--log_dir={tmp_path / 'logs'}",
        "--join=True",
        "python",
        str(ROOT / "tests" / "dp_nonfinite_worker.py"),
        str(tmp_path),
    ]
    env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    logs = "".join(p.read_text()[-2000:] for p in (tmp_path / "logs").glob("worker_*.log"))
    assert proc.returncode == 0, logs
    r0, r1 = (json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in (0, 1))
    # rank 1 alone saw the infinity at step 1; both skipped it and halved the same dynamic scale
    assert [s["applied"] for s in r0["steps"]] == [s["applied"] for s in r1["steps"]] == [True, False, True]
    assert r0["steps"][1]["scale"] == r0["steps"][0]["scale"] / 2
    assert r0["steps"] == r1["steps"]  # identical weights and loss-scale state after every step
    # rank 1 non-finite on every step: both stop with the same message and the same state
    assert r0["stopped"] and r0["stopped"] == r1["stopped"] and "non-finite steps in a row" in r0["stopped"]
    assert r0["digest_after_stop"] == r1["digest_after_stop"] and r0["scale_after_stop"] == r1["scale_after_stop"]


# On CPU there is no HCCL for the rank-table path: this makes its ranks train as independent single devices, so the
# launcher's handling of a dead rank can be exercised with real long-running ranks.
NO_HCCL_SITECUSTOMIZE = """
import contextlib
import edsr_lib.runtime
import edsr_lib.trainer
edsr_lib.runtime.launched_distributed = lambda: False
edsr_lib.trainer.run_lock = lambda folder: contextlib.nullcontext()  # both ranks now think they are rank 0
"""


def _kill_a_rank_and_watch(command, env, out, victim_rank=1):
    import time

    import psutil

    launcher = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )

    def ours():
        found = []
        for process in psutil.process_iter(["cmdline", "environ"]):
            with __import__("contextlib").suppress(psutil.Error):
                if (process.info["environ"] or {}).get("OUTPUT_DIR") == str(out) and process.pid != launcher.pid:
                    found.append(process)
        return found

    def victim():
        for process in ours():
            cmdline = " ".join(process.info["cmdline"] or [])
            if "ipykernel_launcher" in cmdline and process.info["environ"].get("RANK_ID") == str(victim_rank):
                return process
        return None

    deadline = time.time() + 300
    target = None
    while target is None or not (out / f"rank_{victim_rank}" / "02_train.ipynb").exists():
        assert time.time() < deadline and launcher.poll() is None, launcher.communicate()[0][-3000:]
        target = target or victim()
        time.sleep(1)
    time.sleep(5)  # into training
    # the process found above: looking it up again can miss it (its environ may be unreadable for a moment)
    target.kill()
    killed = time.time()
    try:
        output, _ = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, 9)
    elapsed = time.time() - killed
    time.sleep(1)
    return launcher.returncode, output, elapsed, [p for p in ours() if p.is_running()]


LONG = {**TINY, "epochs": 50, "test_every": 50}


def test_a_killed_rank_ends_the_msrun_job(tmp_path):
    code, output, elapsed, left = _kill_a_rank_and_watch(
        ["bash", LAUNCHER, "sample", "2", "--master-port", str(_free_port()), *_p(LONG)], _env(tmp_path), tmp_path
    )
    assert code not in (0, None) and elapsed < 60, output[-3000:]
    last = output.splitlines()[-1]
    assert "rank 1" in last and "worker_1.log" in last, output[-3000:]  # the killed rank, not one failing after it
    assert not left, [p.info["cmdline"] for p in left]


def test_a_killed_rank_ends_the_rank_table_job(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_HCCL_SITECUSTOMIZE)
    table = tmp_path / "rank_table.json"
    table.write_text(json.dumps(hccl_rank_table([["127.0.0.1", 2]])))
    out = tmp_path / "out"  # the job's own folder: the launcher refuses one holding other files
    env = _env(out, PYTHONPATH=str(tmp_path / "site"))
    code, output, elapsed, left = _kill_a_rank_and_watch(
        ["bash", LAUNCHER, "sample", "2", str(table), *_p(LONG)], env, out
    )
    assert code not in (0, None) and elapsed < 60, output[-3000:]
    assert "rank 1" in output.splitlines()[-1] and "rank_1/train.log" in output.splitlines()[-1]
    assert not left, [p.info["cmdline"] for p in left]
