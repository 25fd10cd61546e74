"""Headless runs of the notebooks with papermill: standalone (train, evaluate, compare), evaluation only, and
data-parallel training on N ranks launched by msrun or an HCCL rank table.

Every rank executes `02_train.ipynb` itself, writing `rank_<i>/02_train.ipynb`, its log and `metrics.json`;
the checkpoints of the run go to one shared folder that rank 0 alone writes.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

from .errors import KitError

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
TRAIN, EVALUATE, COMPARE = "02_train.ipynb", "03_evaluate.ipynb", "04_visual_comparison.ipynb"
DEFAULT_MASTER_PORT = 8118


def notebook_path(name):
    path = NOTEBOOK_DIR / name
    if not path.is_file():
        raise KitError(f"{path}: notebook not found (the notebooks ship with the source checkout)")
    return path


def parse_parameters(pairs):
    """['-p', 'epochs', '3', ...] pairs -> {'epochs': 3}: values are read as JSON when they parse, else strings."""
    params = {}
    for name, text in pairs:
        try:
            params[name] = json.loads(text)
        except json.JSONDecodeError:
            params[name] = text
    return params


def execute_notebook(name, output_notebook, parameters, log=print):
    """Run one notebook with papermill; a failing cell becomes a one-line KitError naming notebook and cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output_notebook = Path(output_notebook)
    output_notebook.parent.mkdir(parents=True, exist_ok=True)
    log(f"running {name} -> {output_notebook}")
    try:
        papermill.execute_notebook(str(notebook_path(name)), str(output_notebook), parameters=parameters,
                                   progress_bar=False, log_output=True, stdout_file=sys.stdout,
                                   stderr_file=sys.stderr, cwd=os.getcwd())
    except PapermillExecutionError as exc:
        raise KitError(f"{name}: cell {exc.exec_count} failed with {exc.ename}: {exc.evalue.splitlines()[0] if exc.evalue else ''}"
                       f" (see {output_notebook})") from None
    return output_notebook


def _read_metrics(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise KitError(f"{path}: missing or unreadable metrics ({exc})") from None


def run_standalone(train_data, output_dir, parameters=None, log=print):
    """Train, evaluate on the held-out images and compare visually, on one device. Returns the summary metrics."""
    output_dir = Path(output_dir)
    params = {"data_train": str(train_data), "progress": "text", **(parameters or {})}
    ckpt_dir = params.setdefault("ckpt_save_path", str(output_dir / "ckpt"))
    execute_notebook(TRAIN, output_dir / TRAIN, {**params, "output_dir": str(output_dir / "train")}, log)
    checkpoint = str(Path(ckpt_dir) / "best.ckpt")
    shared = {k: params[k] for k in ("data_test", "dir_data", "data_range", "progress") if k in params}
    execute_notebook(EVALUATE, output_dir / EVALUATE,
                     {**shared, "checkpoint": checkpoint, "output_dir": str(output_dir / "evaluate")}, log)
    execute_notebook(COMPARE, output_dir / COMPARE,
                     {**shared, "checkpoint": checkpoint, "output_dir": str(output_dir / "compare")}, log)
    train, evaluation = _read_metrics(output_dir / "train" / "metrics.json"), _read_metrics(
        output_dir / "evaluate" / "metrics.json")
    summary = {"psnr": evaluation["psnr"], "psnr_bicubic": evaluation["psnr_bicubic"], "ssim": evaluation["ssim"],
               "ssim_bicubic": evaluation["ssim_bicubic"], "dataset": evaluation["dataset"],
               "scale": evaluation["scale"], "checkpoint": checkpoint, "final_loss": train["final_loss"],
               "epochs": train["epochs"], "per_image": evaluation["per_image"]}
    from .evaluation import write_json

    write_json(output_dir / "metrics.json", summary)
    return summary


def run_evaluation(test_data, checkpoint, dataset_type, output_dir, parameters=None, log=print):
    """The seed's run_eval: evaluate CHECKPOINT on DATASET_TYPE (a benchmark name or DIV2K under TEST_DATA_DIR,
    or a folder of HR images)."""
    output_dir = Path(output_dir)
    is_folder = Path(dataset_type).is_dir()
    params = {"checkpoint": str(checkpoint), "data_test": str(dataset_type), "dir_data": "" if is_folder else
              str(test_data), "output_dir": str(output_dir), "progress": "text", **(parameters or {})}
    execute_notebook(EVALUATE, output_dir / EVALUATE, params, log)
    return _read_metrics(output_dir / "metrics.json")


# ---- data parallel ----------------------------------------------------------------------------------------

def rank_parameters(output_dir, rank, parameters):
    """Papermill parameters of one rank: its own output folder, one shared checkpoint folder, text progress."""
    output_dir = Path(output_dir)
    return {"progress": "text", **parameters, "output_dir": str(output_dir / f"rank_{rank}"),
            "ckpt_save_path": str(parameters.get("ckpt_save_path") or output_dir / "ckpt")}


def msrun_command(device_num, output_dir, parameters, master_port=DEFAULT_MASTER_PORT):
    """msrun starts one scheduler and `device_num` workers; each runs `python -m edsr_lib.launch worker`."""
    return ["msrun", f"--worker_num={device_num}", f"--local_worker_num={device_num}",
            f"--master_port={master_port}", f"--log_dir={Path(output_dir) / 'msrun_logs'}", "--join=True",
            "python", "-m", "edsr_lib.launch", "worker", str(output_dir), json.dumps(parameters)]


def read_rank_table(path, device_num):
    """[(rank_id, device_id), ...] from an HCCL rank table (version 1.0 layout: server_list[].device[])."""
    try:
        table = json.loads(Path(path).read_text())
        devices = [(int(d["rank_id"]), int(d["device_id"])) for server in table["server_list"]
                   for d in server["device"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KitError(f"{path}: not a readable HCCL rank table ({exc})") from None
    if len(devices) != device_num:
        raise KitError(f"{path}: lists {len(devices)} devices but DEVICE_NUM is {device_num}")
    return sorted(devices)


def rank_table_environments(rank_table_file, device_num, base_env=None):
    """One environment per rank for the rank-table launch (the seed's way): RANK_TABLE_FILE, RANK_SIZE,
    RANK_ID, DEVICE_ID."""
    base = dict(os.environ if base_env is None else base_env)
    return [{**base, "RANK_TABLE_FILE": str(Path(rank_table_file).resolve()), "RANK_SIZE": str(device_num),
             "RANK_ID": str(rank), "DEVICE_ID": str(device)}
            for rank, device in read_rank_table(rank_table_file, device_num)]


def _python_first_on_path(env):
    # msrun starts workers as `python ...` from PATH: put this interpreter's folder first so they use this venv.
    return {**env, "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])}


def run_distributed(train_data, device_num, output_dir, parameters=None, rank_table_file=None,
                    master_port=DEFAULT_MASTER_PORT, log=print):
    """Launch the data-parallel job, wait, and check that every rank reported the same weights."""
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    params = {"data_train": str(train_data), **(parameters or {})}
    if rank_table_file:
        procs = []
        for env in rank_table_environments(rank_table_file, device_num):
            rank_dir = output_dir / f"rank_{env['RANK_ID']}"
            rank_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(rank_dir / "train.log", "w")
            command = [sys.executable, "-m", "edsr_lib.launch", "worker", str(output_dir), json.dumps(params)]
            procs.append((subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT), log_file))
        codes = [p.wait() for p, _ in procs]
        for _, f in procs:
            f.close()
        code = max(codes)
    else:
        command = msrun_command(device_num, output_dir, params, master_port)
        log("launching: " + " ".join(command[:7]) + " ...")
        code = subprocess.call(command, env=_python_first_on_path(dict(os.environ)))
    if code:
        raise KitError(f"distributed training failed (exit {code}); see the rank logs under {output_dir}")
    return check_ranks(output_dir, device_num)


def check_ranks(output_dir, device_num):
    metrics = [_read_metrics(Path(output_dir) / f"rank_{r}" / "metrics.json") for r in range(device_num)]
    checksums = {m["param_checksum"] for m in metrics}
    if len(checksums) != 1:
        raise KitError(f"ranks disagree: param_checksum {sorted(checksums)}")
    return metrics


def worker(output_dir, parameters):
    """What msrun (or the rank-table loop) starts per process. The msrun scheduler process only joins the
    rendezvous; workers execute the training notebook to their own output notebook."""
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        from .runtime import init_distributed

        init_distributed()
        return 0
    rank = int(os.environ.get("RANK_ID", "0"))
    params = rank_parameters(output_dir, rank, parameters)
    execute_notebook(TRAIN, Path(output_dir) / f"rank_{rank}" / TRAIN, params,
                     log=lambda m: print(f"[rank {rank}] {m}", flush=True))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) == 3 and argv[0] == "worker":
            return worker(argv[1], json.loads(argv[2]))
        raise KitError("usage: python -m edsr_lib.launch worker OUTPUT_DIR PARAMETERS_JSON")
    except KitError as exc:
        print(f"edsr: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
