"""Data-parallel training: the 2-worker CPU job through scripts/run_distribute.sh (msrun + papermill per rank),
and the Ascend rank-table launch as far as it can be checked without hardware."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from edsr_lib.errors import KitError
from edsr_lib.launch import msrun_command, rank_parameters, rank_table_environments, train_data_parameters

TINY = {"n_resblocks": 2, "n_feats": 8, "patch_size": 24, "test_every": 3, "epochs": 2, "batch_size": 2,
        "lr": 1e-3, "data_test": "none", "seed": 3}


def _p(params):
    return [x for k, v in params.items() for x in ("-p", k, str(v))]


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("distribute")
    env = {**os.environ, "DEVICE_TARGET": "CPU", "OUTPUT_DIR": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "run_distribute.sh"), "sample", "2", *_p(TINY)],
                          env=env, capture_output=True, text=True, timeout=900)
    return out, proc


def test_two_cpu_workers_end_with_identical_weights(two_worker_run):
    out, proc = two_worker_run
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "2 ranks agree" in proc.stdout
    ranks = [json.loads((out / f"rank_{r}" / "metrics.json").read_text()) for r in (0, 1)]
    assert [m["rank"] for m in ranks] == [0, 1] and all(m["world_size"] == 2 for m in ranks)
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    assert ranks[0]["final_loss"] == ranks[1]["final_loss"]  # the logged loss is averaged over ranks
    for r in (0, 1):
        assert (out / f"rank_{r}" / "02_train.ipynb").is_file()
    # rank 0 alone writes the checkpoints and final figures
    assert (out / "ckpt" / "latest.ckpt").is_file() and (out / "rank_0" / "curves.png").is_file()
    assert not (out / "rank_1" / "curves.png").exists()


def test_data_parallel_averages_gradients_like_one_big_batch(two_worker_run, tmp_path):
    # Two ranks with batch b draw the global samples a single device with batch 2b draws, and mean gradients make
    # the updates the same up to float32 summation order.
    from edsr_lib.options import Options
    from edsr_lib.trainer import Trainer
    from edsr_lib.weights import read_checkpoint

    out, proc = two_worker_run
    assert proc.returncode == 0
    single = Trainer(Options(**{**TINY, "batch_size": 4, "ckpt_save_path": str(tmp_path)}), log=lambda m: None,
                     progress=False)
    single.fit()
    parallel = read_checkpoint(out / "ckpt" / "latest.ckpt")[1]
    for p in single.model.get_parameters():
        np.testing.assert_allclose(parallel[p.name], p.asnumpy(), rtol=2e-3, atol=2e-5, err_msg=p.name)


def test_msrun_and_per_rank_parameters():
    command = msrun_command(8, "/runs/x", {"epochs": 3})
    assert command[:6] == ["msrun", "--worker_num=8", "--local_worker_num=8", "--node_rank=0",
                           "--master_port=8118", "--log_dir=/runs/x/msrun_logs"]
    assert command[7:11] == ["python", "-m", "edsr_lib.launch", "worker"] and json.loads(command[-1]) == {"epochs": 3}
    params = rank_parameters("/runs/x", 5, {"epochs": 3})
    assert params == {"progress": "text", "epochs": 3, "output_dir": "/runs/x/rank_5", "ckpt_save_path": "/runs/x/ckpt"}


def test_rank_table_environments(tmp_path):
    table = {"version": "1.0", "server_count": "1", "status": "completed", "server_list": [
        {"server_id": "10.0.0.1", "device": [{"device_id": str(d), "device_ip": f"192.168.100.{d}",
                                              "rank_id": str(7 - d)} for d in range(8)]}]}
    path = tmp_path / "rank_table_8pcs.json"
    path.write_text(json.dumps(table))
    envs = rank_table_environments(path, 8, base_env={"PATH": "/bin"})
    assert [(e["RANK_ID"], e["DEVICE_ID"]) for e in envs] == [(str(r), str(7 - r)) for r in range(8)]
    assert all(e["RANK_SIZE"] == "8" and e["RANK_TABLE_FILE"] == str(path.resolve()) and e["PATH"] == "/bin"
               for e in envs)
    with pytest.raises(KitError, match="lists 8 devices but DEVICE_NUM is 4"):
        rank_table_environments(path, 4)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(KitError, match="bad.json: not a readable HCCL rank table"):
        rank_table_environments(tmp_path / "bad.json", 8)


def test_train_data_dir_forms(tmp_path):
    assert train_data_parameters("sample") == {"data_train": "sample"}
    (tmp_path / "DIV2K_train_HR").mkdir()
    assert train_data_parameters(tmp_path) == {"data_train": "DIV2K", "data_test": "DIV2K", "dir_data": str(tmp_path)}
    with pytest.raises(KitError, match="not a folder"):
        train_data_parameters(tmp_path / "missing")
