"""The three jobs the scripts run: standalone (train, evaluate, compare on one device), evaluation only, and
data-parallel training on N ranks launched by msrun or an HCCL rank table, with the per-rank worker.

Every rank executes `02_train.ipynb` itself, writing `rank_<i>/02_train.ipynb`, its log and `metrics.json`;
the checkpoints of the run go to one shared folder that rank 0 alone writes.
"""

import contextlib
import os
import sys
from pathlib import Path

from ..errors import KitError
from ..files import prepare_output_folder, write_json
from .cluster import (
    DEFAULT_MASTER_PORT,
    check_cluster,
    dynamic_cluster_environments,
    is_local_address,
    msrun_command,
    python_first_on_path,
    rank_parameters,
    rank_table_environments,
    worker_command,
)
from .notebooks import COMPARE, EVALUATE, TRAIN, execute_notebook, read_metrics
from .recipe import batch_run_parameters, describe_schedule
from .watch import FAILED_MARKER, RankWatch


# What a launcher's output folder from before the output marker (files.OUTPUT_MARKER) holds: such a folder is the
# kit's, and a later run may write into it again.
LAUNCH_FILES = ("metrics.json", TRAIN, EVALUATE, COMPARE, "ckpt", "rank_0", "msrun_logs", FAILED_MARKER)


def _data_inputs(*paths):
    """(path, what it is) for the data and checkpoints a job reads, which its output folder must stay out of. A DIV2K
    root stands for its image folders: a run folder beside them (e.g. /data/DIV2K/runs) harms nothing."""
    inputs = []
    for path, label in paths:
        if not path or str(path).lower() == "sample" or not Path(path).exists():
            continue
        path = Path(path)
        root = path / "DIV2K" if (path / "DIV2K" / "DIV2K_train_HR").is_dir() else path
        if (root / "DIV2K_train_HR").is_dir():
            inputs += [(folder, label) for folder in root.glob("DIV2K_*") if folder.is_dir()]
        else:
            inputs.append((path, label))
    return inputs


def run_standalone(train_data, output_dir, parameters=None, log=print):
    """Train, evaluate on the held-out images and compare visually, on one device. Returns the summary metrics."""
    output_dir = prepare_output_folder(
        output_dir, "OUTPUT_DIR", _data_inputs((train_data, "TRAIN_DATA_DIR")), kit_files=LAUNCH_FILES
    )
    params = {"progress": "text", **batch_run_parameters(train_data, parameters or {})}
    log(describe_schedule(params, 1))
    ckpt_dir = params.setdefault("ckpt_save_path", str(output_dir / "ckpt"))
    execute_notebook(TRAIN, output_dir / TRAIN, {**params, "output_dir": str(output_dir / "train")}, log)
    checkpoint = str(Path(ckpt_dir) / "best.ckpt")
    shared = {k: params[k] for k in ("data_test", "dir_data", "data_range", "progress") if k in params}
    execute_notebook(
        EVALUATE,
        output_dir / EVALUATE,
        {**shared, "checkpoint": checkpoint, "output_dir": str(output_dir / "evaluate")},
        log,
    )
    # No widgets headless: nothing would show them, and executing widget cells can hang nbclient (jupyter/nbclient#312).
    compare = {k: v for k, v in shared.items() if k != "progress"}  # 04 shows no progress bars
    execute_notebook(
        COMPARE,
        output_dir / COMPARE,
        {**compare, "checkpoint": checkpoint, "interactive": False, "output_dir": str(output_dir / "compare")},
        log,
    )
    train, evaluation = (
        read_metrics(output_dir / "train" / "metrics.json"),
        read_metrics(output_dir / "evaluate" / "metrics.json"),
    )
    summary = {
        "psnr": evaluation["psnr"],
        "psnr_bicubic": evaluation["psnr_bicubic"],
        "ssim": evaluation["ssim"],
        "ssim_bicubic": evaluation["ssim_bicubic"],
        "dataset": evaluation["dataset"],
        "scale": evaluation["scale"],
        "checkpoint": checkpoint,
        "final_loss": train["final_loss"],
        "epochs": train["epochs"],
        "per_image": evaluation["per_image"],
    }
    write_json(output_dir / "metrics.json", summary)
    return summary


def run_evaluation(test_data, checkpoint, dataset_type, output_dir, parameters=None, log=print):
    """The ModelZoo EDSR's run_eval: evaluate CHECKPOINT on DATASET_TYPE (a benchmark name or DIV2K under TEST_DATA_DIR,
    or a folder of HR images)."""
    output_dir = prepare_output_folder(
        output_dir,
        "OUTPUT_DIR",
        # TEST_DATA_DIR is a root holding benchmark/ and DIV2K/: a folder beside them harms nothing
        _data_inputs(
            (checkpoint, "CHECKPOINT_PATH"), (dataset_type if Path(dataset_type).is_dir() else "", "DATASET_TYPE")
        ),
        kit_files=LAUNCH_FILES,
    )
    is_folder = Path(dataset_type).is_dir()
    params = {
        "checkpoint": str(checkpoint),
        "data_test": str(dataset_type),
        "dir_data": "" if is_folder else str(test_data),
        "output_dir": str(output_dir),
        "progress": "text",
        **(parameters or {}),
    }
    execute_notebook(EVALUATE, output_dir / EVALUATE, params, log)
    return read_metrics(output_dir / "metrics.json")


def run_distributed(
    train_data,
    device_num,
    output_dir,
    parameters=None,
    rank_table_file=None,
    master_port=DEFAULT_MASTER_PORT,
    nodes=1,
    node_rank=None,
    master_addr=None,
    one_host=False,
    log=print,
):
    """Launch this server's part of the data-parallel job, watch it, and check that its ranks agree.
    `one_host`: the job's servers are emulated on this machine (master address on loopback), as the tests do."""
    check_cluster(nodes, node_rank, master_addr, one_host, rank_table_file)
    master_addr = master_addr or "127.0.0.1"
    output_dir = Path(output_dir).resolve()
    prepare_output_folder(
        output_dir, "OUTPUT_DIR", _data_inputs((train_data, "TRAIN_DATA_DIR")), kit_files=LAUNCH_FILES
    )
    table_node_rank, node_rank = node_rank, node_rank or 0
    if device_num < 1 or nodes < 1 or not 0 <= node_rank < nodes:
        raise KitError(
            f"need DEVICE_NUM >= 1, --nodes >= 1 and 0 <= --node-rank < --nodes (got {device_num}, "
            f"{nodes}, {node_rank})"
        )
    if rank_table_file:
        envs = rank_table_environments(
            rank_table_file, device_num, node_rank=table_node_rank, nodes=nodes if nodes > 1 else None
        )
        world, node_rank = int(envs[0]["RANK_SIZE"]), int(envs[0]["SERVER_ID"])
    else:
        envs, world = None, nodes * device_num
    params = batch_run_parameters(train_data, parameters or {}, world)
    log(describe_schedule(params, world))
    local_ranks = (
        [int(e["RANK_ID"]) for e in envs] if envs else list(range(node_rank * device_num, (node_rank + 1) * device_num))
    )
    for rank in local_ranks:  # this server's own earlier results
        with contextlib.suppress(FileNotFoundError):
            (output_dir / f"rank_{rank}" / "metrics.json").unlink()
    if node_rank == 0:
        with contextlib.suppress(FileNotFoundError):
            (output_dir / FAILED_MARKER).unlink()
    watch = RankWatch(output_dir, log)
    if envs:
        for env in envs:
            rank_dir = output_dir / f"rank_{env['RANK_ID']}"
            rank_dir.mkdir(parents=True, exist_ok=True)
            watch.start(
                worker_command(output_dir, params, sys.executable), env, rank_dir / "train.log", int(env["RANK_ID"])
            )
    elif node_rank > 0 and is_local_address(master_addr):
        log_dir = output_dir / "msrun_logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log(
            f"master {master_addr} is this host: starting ranks {local_ranks[0]}-{local_ranks[-1]} without msrun "
            "(msrun would start a second scheduler)"
        )
        for env in dynamic_cluster_environments(device_num, nodes, node_rank, master_addr, master_port):
            watch.start(
                worker_command(output_dir, params, sys.executable),
                env,
                log_dir / f"worker_{env['RANK_ID']}.log",
                int(env["RANK_ID"]),
            )
    else:
        command = msrun_command(device_num, output_dir, params, master_port, nodes, node_rank, master_addr)
        log("launching: " + " ".join(command[:8]) + " ...")
        watch.start(command, python_first_on_path(dict(os.environ)))
    watch.wait()
    return check_ranks(output_dir, local_ranks, world)


def check_ranks(output_dir, local_ranks, world):
    """This server's ranks must report identical weights; so must every rank whose results share the folder.
    Each rank's `ranks_agree` is the all-rank comparison made inside the job."""
    metrics = [read_metrics(Path(output_dir) / f"rank_{r}" / "metrics.json") for r in local_ranks]
    for r in range(world):
        path = Path(output_dir) / f"rank_{r}" / "metrics.json"
        if r not in local_ranks and path.is_file():
            metrics.append(read_metrics(path))
    digests = {m.get("param_digest", m["param_checksum"]) for m in metrics}
    if len(digests) != 1:
        raise KitError(
            "ranks disagree: " + ", ".join(f"rank {m['rank']} checksum {m['param_checksum']:.6f}" for m in metrics)
        )
    if world > 1 and not all(m.get("ranks_agree") for m in metrics):
        raise KitError("ranks disagree: the in-job comparison over all ranks found different weights")
    return sorted(metrics, key=lambda m: m["rank"])


def worker(output_dir, parameters):
    """What msrun (or the launcher) starts per process. The msrun scheduler process only joins the rendezvous;
    workers execute the training notebook to their own output notebook."""
    from ..runtime import LaunchEnvironment, init_distributed

    launched = LaunchEnvironment.read()
    if launched.scheduler:
        init_distributed()
        return 0
    rank = launched.rank_id
    params = rank_parameters(output_dir, rank, parameters)
    execute_notebook(
        TRAIN, Path(output_dir) / f"rank_{rank}" / TRAIN, params, log=lambda m: print(f"[rank {rank}] {m}", flush=True)
    )
    # The notebook's Trainer took its rank from get_rank() after init(); the folder name must be that rank.
    reported = read_metrics(Path(output_dir) / f"rank_{rank}" / "metrics.json").get("rank")
    if reported != rank:
        raise KitError(f"rank_{rank}: MindSpore assigned this process rank {reported} (RANK_ID was {rank})")
    return 0
