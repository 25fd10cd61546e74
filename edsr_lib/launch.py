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
from .evaluation import write_json

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


def train_data_parameters(train_data):
    """The seed's TRAIN_DATA_DIR as options: `sample`, a DIV2K root (validating on DIV2K), or an HR folder."""
    text = str(train_data)
    if text.lower() == "sample":
        return {"data_train": "sample"}
    path = Path(text)
    if not path.is_dir():
        raise KitError(f"{path}: TRAIN_DATA_DIR is not a folder (use a DIV2K root, an HR image folder or 'sample')")
    if (path / "DIV2K_train_HR").is_dir() or (path / "DIV2K" / "DIV2K_train_HR").is_dir():
        return {"data_train": "DIV2K", "data_test": "DIV2K", "dir_data": str(path)}
    return {"data_train": str(path)}


def _kernel_manager_class():
    from jupyter_client.manager import AsyncKernelManager

    class PatientKernelManager(AsyncKernelManager):
        # A data-parallel rank's kernel leaves MindSpore's cluster only when every rank is done; the default 5 s
        # before a kill would cut that short and the msrun scheduler would report the rank as failed.
        shutdown_wait_time = 120.0

    return PatientKernelManager


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
                                   stderr_file=sys.stderr, cwd=os.getcwd(),
                                   kernel_manager_class=_kernel_manager_class())
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
    params = {**train_data_parameters(train_data), "progress": "text", **(parameters or {})}
    ckpt_dir = params.setdefault("ckpt_save_path", str(output_dir / "ckpt"))
    execute_notebook(TRAIN, output_dir / TRAIN, {**params, "output_dir": str(output_dir / "train")}, log)
    checkpoint = str(Path(ckpt_dir) / "best.ckpt")
    shared = {k: params[k] for k in ("data_test", "dir_data", "data_range", "progress") if k in params}
    execute_notebook(EVALUATE, output_dir / EVALUATE,
                     {**shared, "checkpoint": checkpoint, "output_dir": str(output_dir / "evaluate")}, log)
    # No widgets headless: nothing would show them, and executing widget cells can hang nbclient (jupyter/nbclient#312).
    execute_notebook(COMPARE, output_dir / COMPARE, {**shared, "checkpoint": checkpoint, "interactive": False,
                                                     "output_dir": str(output_dir / "compare")}, log)
    train, evaluation = _read_metrics(output_dir / "train" / "metrics.json"), _read_metrics(
        output_dir / "evaluate" / "metrics.json")
    summary = {"psnr": evaluation["psnr"], "psnr_bicubic": evaluation["psnr_bicubic"], "ssim": evaluation["ssim"],
               "ssim_bicubic": evaluation["ssim_bicubic"], "dataset": evaluation["dataset"],
               "scale": evaluation["scale"], "checkpoint": checkpoint, "final_loss": train["final_loss"],
               "epochs": train["epochs"], "per_image": evaluation["per_image"]}
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
    return ["msrun", f"--worker_num={device_num}", f"--local_worker_num={device_num}", "--node_rank=0",
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
    params = {**train_data_parameters(train_data), **(parameters or {})}
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
    rank = int(os.environ.get("RANK_ID") or os.environ.get("MS_NODE_ID") or 0)
    params = rank_parameters(output_dir, rank, parameters)
    execute_notebook(TRAIN, Path(output_dir) / f"rank_{rank}" / TRAIN, params,
                     log=lambda m: print(f"[rank {rank}] {m}", flush=True))
    return 0


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="python -m edsr_lib.launch",
                                     description="run the notebooks headlessly (what scripts/run_*.sh call)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("standalone", help="train, evaluate and compare on one device")
    p.add_argument("train_data", help="sample, a DIV2K root or a folder of HR images")
    p.add_argument("--output-dir", required=True)
    p = sub.add_parser("distribute", help="data-parallel training; every rank runs 02_train.ipynb")
    p.add_argument("train_data", help="sample, a DIV2K root or a folder of HR images")
    p.add_argument("device_num", nargs="?", type=int, default=8)
    p.add_argument("rank_table_file", nargs="?", default=None, help="HCCL rank table (default: launch with msrun)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--master-port", type=int, default=DEFAULT_MASTER_PORT)
    p = sub.add_parser("eval", help="evaluate a checkpoint (the seed's run_eval)")
    p.add_argument("test_data", help="dataset root (holding benchmark/ or DIV2K/)")
    p.add_argument("checkpoint")
    p.add_argument("dataset_type", help="Set5, Set14, B100, Urban100, DIV2K, sample or a folder of HR images")
    p.add_argument("--output-dir", required=True)
    p = sub.add_parser("worker", help="(internal) what msrun or the rank-table loop starts per process")
    p.add_argument("output_dir")
    p.add_argument("parameters_json")
    for p in sub.choices.values():
        p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                       help="notebook parameter (repeatable), e.g. -p epochs 3")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    params = parse_parameters(args.parameter)
    try:
        if args.command == "worker":
            return worker(args.output_dir, {**json.loads(args.parameters_json), **params})
        if args.command == "standalone":
            summary = run_standalone(args.train_data, args.output_dir, params)
            print(f"held-out {summary['dataset']} x{summary['scale']}: EDSR {summary['psnr']:.3f} dB, "
                  f"bicubic {summary['psnr_bicubic']:.3f} dB ({summary['psnr'] - summary['psnr_bicubic']:+.3f} dB); "
                  f"results in {args.output_dir}")
            return 0
        if args.command == "distribute":
            metrics = run_distributed(args.train_data, args.device_num, args.output_dir, params,
                                      args.rank_table_file, args.master_port)
            print(f"{len(metrics)} ranks agree: param_checksum {metrics[0]['param_checksum']:.6f}, final loss "
                  f"{metrics[0]['final_loss']:.4f}; results in {args.output_dir}")
            return 0
        result = run_evaluation(args.test_data, args.checkpoint, args.dataset_type, args.output_dir, params)
        print(f"{result['dataset']} x{result['scale']}: EDSR {result['psnr']:.3f} dB / {result['ssim']:.4f}, "
              f"bicubic {result['psnr_bicubic']:.3f} dB / {result['ssim_bicubic']:.4f}; results in {args.output_dir}")
        return 0
    except KitError as exc:
        print(f"edsr: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
