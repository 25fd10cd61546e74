"""The launchers' pure parts, without launching anything: msrun commands, rank tables and the ranks' environments,
the multi-server checks, the launcher's flags and what a batch run trains (the published recipe)."""

import json

import pytest

from conftest import hccl_rank_table
from edsr_lib.errors import KitError
from edsr_lib.launch.cluster import msrun_command, rank_parameters, rank_table_environments
from edsr_lib.launch.recipe import train_data_parameters


def test_rank_table_with_two_servers_gives_each_server_its_own_devices(tmp_path):
    path = tmp_path / "rank_table_16pcs.json"
    path.write_text(json.dumps(hccl_rank_table([["192.0.2.10", 8], ["192.0.2.11", 8]])))
    for server in (0, 1):
        for select in ({"SERVER_ID": str(server)}, {"SERVER_ID": f"192.0.2.1{server}"}):
            envs = rank_table_environments(path, 8, base_env={"PATH": "/bin", **select})
            assert [(e["RANK_ID"], e["DEVICE_ID"]) for e in envs] == [(str(8 * server + d), str(d)) for d in range(8)]
            assert all(e["RANK_SIZE"] == "16" and e["RANK_TABLE_FILE"] == str(path.resolve()) for e in envs)
        envs = rank_table_environments(path, 8, base_env={"PATH": "/bin"}, node_rank=server, nodes=2)
        assert [e["RANK_ID"] for e in envs] == [str(8 * server + d) for d in range(8)]
    # a server found by its own address
    path.write_text(json.dumps(hccl_rank_table([["192.0.2.10", 2], ["127.0.0.1", 2]])))
    assert [e["RANK_ID"] for e in rank_table_environments(path, 2, base_env={})] == ["2", "3"]
    with pytest.raises(KitError, match="lists 2 server.* --nodes is 3"):
        rank_table_environments(path, 2, base_env={}, nodes=3)
    with pytest.raises(KitError, match="SERVER_ID=7"):
        rank_table_environments(path, 2, base_env={"SERVER_ID": "7"})


def test_msrun_and_per_rank_parameters():
    command = msrun_command(8, "/runs/x", {"epochs": 3})
    assert command[:7] == [
        "msrun",
        "--worker_num=8",
        "--local_worker_num=8",
        "--node_rank=0",
        "--master_addr=127.0.0.1",
        "--master_port=8118",
        "--log_dir=/runs/x/msrun_logs",
    ]
    assert command[8:12] == ["python", "-m", "edsr_lib.launch", "worker"] and json.loads(command[-1]) == {"epochs": 3}
    command = msrun_command(8, "/runs/x", {}, master_port=9000, nodes=4, node_rank=3, master_addr="10.0.0.1")
    assert command[1:6] == [
        "--worker_num=32",
        "--local_worker_num=8",
        "--node_rank=3",
        "--master_addr=10.0.0.1",
        "--master_port=9000",
    ]
    params = rank_parameters("/runs/x", 5, {"epochs": 3})
    assert params == {"progress": "text", "epochs": 3, "output_dir": "/runs/x/rank_5", "ckpt_save_path": "/runs/x/ckpt"}


def test_rank_table_environments(tmp_path):
    table = {
        "version": "1.0",
        "server_count": "1",
        "status": "completed",
        "server_list": [
            {
                "server_id": "10.0.0.1",
                "device": [
                    {"device_id": str(d), "device_ip": f"192.168.100.{d}", "rank_id": str(7 - d)} for d in range(8)
                ],
            }
        ],
    }
    path = tmp_path / "rank_table_8pcs.json"
    path.write_text(json.dumps(table))
    envs = rank_table_environments(path, 8, base_env={"PATH": "/bin"})
    assert [(e["RANK_ID"], e["DEVICE_ID"]) for e in envs] == [(str(r), str(7 - r)) for r in range(8)]
    assert all(
        e["RANK_SIZE"] == "8" and e["RANK_TABLE_FILE"] == str(path.resolve()) and e["PATH"] == "/bin" for e in envs
    )
    with pytest.raises(KitError, match="lists 8 devices but DEVICE_NUM is 4"):
        rank_table_environments(path, 4)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(KitError, match="bad.json: not a readable HCCL rank table"):
        rank_table_environments(tmp_path / "bad.json", 8)


def test_multi_server_mistakes_are_one_line_at_once(tmp_path):
    from edsr_lib.launch import main
    from edsr_lib.launch.cluster import check_cluster

    with pytest.raises(KitError, match="--nodes 2 needs --node-rank"):
        check_cluster(2, None, "10.0.0.1")
    with pytest.raises(KitError, match="needs --master-addr"):
        check_cluster(2, 1, None)
    for loopback in ("127.0.0.1", "localhost", "::1"):
        with pytest.raises(KitError, match="loopback address"):
            check_cluster(2, 0, loopback)
        check_cluster(2, 0, loopback, one_host=True)  # the documented emulation on one machine
    check_cluster(2, 1, "192.0.2.10")
    check_cluster(1, None, None)  # one server needs neither
    check_cluster(2, None, None, rank_table_file="t.json")  # the rank table says who is who
    # through the launcher: refused before any process starts, not after msrun's 600 s cluster timeout
    import time

    start = time.time()
    code = main(["distribute", "sample", "1", "--nodes", "2", "--output-dir", str(tmp_path / "o")])
    assert code == 2 and time.time() - start < 30 and not (tmp_path / "o").exists()


def test_train_data_dir_forms(tmp_path):
    assert train_data_parameters("sample") == {"data_train": "sample"}
    (tmp_path / "DIV2K_train_HR").mkdir()
    assert train_data_parameters(tmp_path) == {"data_train": "DIV2K", "data_test": "DIV2K", "dir_data": str(tmp_path)}
    with pytest.raises(KitError, match="not a folder"):
        train_data_parameters(tmp_path / "missing")


def test_launcher_flags_in_any_order():
    from edsr_lib.launch import build_parser

    distribute = build_parser().command_parsers["distribute"]
    args = distribute.parse_intermixed_args(["sample", "2", "--master-port", "9000", "--output-dir", "o"])
    assert (args.device_num, args.rank_table_file, args.master_port) == (2, None, 9000)
    args = distribute.parse_intermixed_args(
        [
            "--nodes=2",
            "sample",
            "-p",
            "epochs",
            "1",
            "8",
            "t.json",
            "--node-rank",
            "1",
            "--master-addr=10.0.0.1",
            "--output-dir",
            "o",
        ]
    )
    assert (args.nodes, args.node_rank, args.master_addr, args.device_num, args.rank_table_file) == (
        2,
        1,
        "10.0.0.1",
        8,
        "t.json",
    )
    assert args.parameter == [["epochs", "1"]]


def test_batch_runs_follow_the_published_recipe(tmp_path):
    from edsr_lib.launch.recipe import batch_run_parameters, describe_schedule

    (tmp_path / "DIV2K_train_HR").mkdir()
    params = batch_run_parameters(tmp_path, {}, world=8)
    assert {k: params[k] for k in ("epochs", "test_every", "lr", "decay", "patch_size", "batch_size")} == {
        "epochs": 300,
        "test_every": 1000,
        "lr": 1e-4,
        "decay": "200",
        "patch_size": 96,
        "batch_size": 2,
    }
    assert "global batch 16" in describe_schedule(params, 8)
    given = batch_run_parameters(tmp_path, {"epochs": 3, "scale": 4, "batch_size": 4}, world=8)
    assert given["epochs"] == 3 and given["patch_size"] == 192 and given["batch_size"] == 4
    assert "batch 16 per device x 1 rank(s) = global batch 16" in describe_schedule(
        batch_run_parameters(tmp_path, {}, world=1), 1
    )
    # the built-in sample photos keep the notebook's short demo schedule
    assert batch_run_parameters("sample", {"epochs": 1}) == {"data_train": "sample", "epochs": 1}


def test_a_stop_signal_during_an_asyncio_callback_still_reaches_the_launcher():
    """papermill runs notebooks on an asyncio loop, which logs and drops most exceptions raised in a callback; the
    stop a signal handler raises there must come out of the loop."""
    import asyncio

    from edsr_lib.launch.watch import Stopped

    loop = asyncio.new_event_loop()

    async def waiting():
        loop.call_soon(lambda: (_ for _ in ()).throw(Stopped(15)))  # the signal lands in a callback
        await asyncio.sleep(0.5)

    try:
        with pytest.raises(Stopped):
            loop.run_until_complete(waiting())
    finally:
        loop.close()


def test_a_shutdown_that_hangs_after_a_stop_signal_is_ended_by_the_watchdog(tmp_path):
    import subprocess
    import sys
    import time

    script = (
        "import os, signal, time\n"
        "import edsr_lib.launch.watch as watch\n"
        "watch.STOP_DEADLINE_SECONDS = 1\n"
        "signal.signal(signal.SIGTERM, watch.stop_on)\n"
        "print('ready', flush=True)\n"
        "try:\n    time.sleep(60)\nexcept watch.Stopped:\n    time.sleep(60)  # a shutdown that never ends\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    start = time.time()
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "stopped by SIGTERM" in stderr and "(forced)" in stderr, stderr
    assert time.time() - start < 15
