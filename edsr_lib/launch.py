"""Headless runs of the notebooks with papermill: standalone (train, evaluate, compare), evaluation only, and
data-parallel training on N ranks launched by msrun or an HCCL rank table.

Every rank executes `02_train.ipynb` itself, writing `rank_<i>/02_train.ipynb`, its log and `metrics.json`;
the checkpoints of the run go to one shared folder that rank 0 alone writes.
"""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .errors import KitError, OneLineArgumentParser
from .files import prepare_output_folder, write_json

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
        if len(text) > MAX_PARAMETER_CHARS:
            raise KitError(f"-p {name}: value longer than {MAX_PARAMETER_CHARS} characters")
        try:
            params[name] = json.loads(text)
        except json.JSONDecodeError:
            params[name] = text
        except RecursionError:
            raise KitError(f"-p {name}: value nested too deeply") from None
    return params


MAX_PARAMETER_CHARS = 10_000


def check_parameter_names(params, notebooks):
    """Refuse a -p name that no notebook of the job takes (a typo like `epoch` would otherwise be ignored)."""
    import difflib

    from dataclasses import fields

    from .options import Options

    known = set()
    for name in notebooks:
        known |= set(notebook_defaults(name))
        if name == TRAIN:  # the training notebook builds its Options from every variable (injected ones too)
            known |= {f.name for f in fields(Options)}
    known |= {"progress", "output_dir", "checkpoint", "interactive"}  # set by the launchers themselves
    for name in params:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise KitError(f"-p {name}: no such parameter of {', '.join(notebooks)}{hint}")


def train_data_parameters(train_data):
    """The ModelZoo EDSR scripts' TRAIN_DATA_DIR as options: `sample`, a DIV2K root (validating on DIV2K), or an
    HR folder."""
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
        papermill.execute_notebook(
            str(notebook_path(name)),
            str(output_notebook),
            parameters=parameters,
            progress_bar=False,
            log_output=True,
            stdout_file=sys.stdout,
            stderr_file=sys.stderr,
            cwd=os.getcwd(),
            kernel_manager_class=_kernel_manager_class(),
        )
    except PapermillExecutionError as exc:
        raise KitError(
            f"{name}: cell {exc.exec_count} failed with {exc.ename}: {exc.evalue.splitlines()[0] if exc.evalue else ''}"
            f" (see {output_notebook})"
        ) from None
    return output_notebook


def _read_metrics(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise KitError(f"{path}: missing or unreadable metrics ({exc})") from None


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
        _read_metrics(output_dir / "train" / "metrics.json"),
        _read_metrics(output_dir / "evaluate" / "metrics.json"),
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
    return _read_metrics(output_dir / "metrics.json")


# ---- data parallel ----------------------------------------------------------------------------------------
# A job is `nodes` servers of `device_num` ranks each. Each server runs this launcher once; it starts its own ranks
# (through msrun, or one process per device from a rank table), watches them and every process they start (papermill
# kernels included), and ends all of them when one rank fails.

POLL_SECONDS = 0.5
KILL_GRACE_SECONDS = 5.0
FAILED_MARKER = "job_failed.json"  # written by the launcher that saw a rank fail; other servers sharing the folder stop
# What a launcher's output folder from before the output marker (files.OUTPUT_MARKER) holds: such a folder is the
# kit's, and a later run may write into it again.
LAUNCH_FILES = ("metrics.json", TRAIN, EVALUATE, COMPARE, "ckpt", "rank_0", "msrun_logs", FAILED_MARKER)


def rank_parameters(output_dir, rank, parameters):
    """Papermill parameters of one rank: its own output folder, one shared checkpoint folder, text progress."""
    output_dir = Path(output_dir)
    return {
        "progress": "text",
        **parameters,
        "output_dir": str(output_dir / f"rank_{rank}"),
        "ckpt_save_path": str(parameters.get("ckpt_save_path") or output_dir / "ckpt"),
    }


def worker_command(output_dir, parameters, python="python"):
    return [python, "-m", "edsr_lib.launch", "worker", str(output_dir), json.dumps(parameters)]


def msrun_command(
    device_num, output_dir, parameters, master_port=DEFAULT_MASTER_PORT, nodes=1, node_rank=0, master_addr="127.0.0.1"
):
    """msrun starts the scheduler (on the master server) and this server's `device_num` workers of the job's
    nodes * device_num; each runs `python -m edsr_lib.launch worker`."""
    return [
        "msrun",
        f"--worker_num={nodes * device_num}",
        f"--local_worker_num={device_num}",
        f"--node_rank={node_rank}",
        f"--master_addr={master_addr}",
        f"--master_port={master_port}",
        f"--log_dir={Path(output_dir) / 'msrun_logs'}",
        "--join=True",
        *worker_command(output_dir, parameters),
    ]


def dynamic_cluster_environments(device_num, nodes, node_rank, master_addr, master_port, base_env=None):
    """The environments msrun gives this server's workers (MindSpore's dynamic-cluster variables), for starting them
    without msrun: on a second server whose master address is also local (two servers emulated on one host), msrun
    would start a second scheduler on the master's port."""
    base = dict(os.environ if base_env is None else base_env)
    total = nodes * device_num
    return [
        {
            **base,
            "MS_ROLE": "MS_WORKER",
            "MS_WORKER_NUM": str(total),
            "MS_SCHED_HOST": str(master_addr),
            "MS_SCHED_PORT": str(master_port),
            "MS_TOPO_TIMEOUT": "600",
            "MS_NODE_ID": str(rank),
            "RANK_ID": str(rank),
            "RANK_SIZE": str(total),
            "DEVICE_ID": str(local),
        }
        for local, rank in enumerate(range(node_rank * device_num, (node_rank + 1) * device_num))
    ]


def _addresses(address):
    """The IP addresses a name or IP resolves to (without IPv6 zone suffixes); none when it does not resolve."""
    import ipaddress
    import socket

    try:
        return {ipaddress.ip_address(info[4][0].split("%")[0]) for info in socket.getaddrinfo(address, None)}
    except OSError:
        return set()


def is_local_address(address):
    """Whether `address` (a name or IP) is this machine: loopback, or one of its interfaces' addresses."""
    import psutil

    local = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    return any(ip.is_loopback or str(ip) in local for ip in _addresses(address))


def read_rank_table(path):
    """[(server_id, [(rank_id, device_id), ...]), ...] from an HCCL rank table (version 1.0: server_list[].device[])."""
    try:
        table = json.loads(Path(path).read_text())
        servers = [
            (
                str(server.get("server_id", index)),
                sorted((int(d["rank_id"]), int(d["device_id"])) for d in server["device"]),
            )
            for index, server in enumerate(table["server_list"])
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KitError(f"{path}: not a readable HCCL rank table ({exc})") from None
    if not servers:
        raise KitError(f"{path}: the rank table lists no servers")
    return servers


def this_server(servers, path, node_rank=None, env=None):
    """Which server of a rank table this one is: $SERVER_ID (its index or server_id, as the ModelZoo scripts set it),
    else --node-rank, else the server whose server_id is one of this machine's addresses."""
    env = os.environ if env is None else env
    chosen = env.get("SERVER_ID")
    if chosen is not None:
        ids = [server_id for server_id, _ in servers]
        if chosen in ids:
            return ids.index(chosen)
        if chosen.isdigit() and int(chosen) < len(servers):
            return int(chosen)
        raise KitError(
            f"{path}: SERVER_ID={chosen} is neither a server index (0-{len(servers) - 1}) nor one of "
            f"its server_id values ({', '.join(ids)})"
        )
    if node_rank is not None:
        if not 0 <= node_rank < len(servers):
            raise KitError(f"{path}: --node-rank {node_rank} but the table lists {len(servers)} server(s)")
        return node_rank
    if len(servers) == 1:
        return 0
    local = [i for i, (server_id, _) in enumerate(servers) if is_local_address(server_id)]
    if len(local) != 1:
        raise KitError(
            f"{path}: cannot tell which of its {len(servers)} servers this is "
            f"({'none' if not local else 'several'} of their server_id values is local); set SERVER_ID"
        )
    return local[0]


def rank_table_environments(rank_table_file, device_num, base_env=None, node_rank=None, nodes=None):
    """One environment per rank of this server for the rank-table launch (the ModelZoo's way): RANK_TABLE_FILE,
    RANK_SIZE (all ranks in the table), RANK_ID, DEVICE_ID."""
    base = dict(os.environ if base_env is None else base_env)
    servers = read_rank_table(rank_table_file)
    if nodes is not None and nodes != len(servers):
        raise KitError(f"{rank_table_file}: lists {len(servers)} server(s) but --nodes is {nodes}")
    index = this_server(servers, rank_table_file, node_rank, base)
    server_id, devices = servers[index]
    if len(devices) != device_num:
        raise KitError(
            f"{rank_table_file}: server {server_id} lists {len(devices)} devices but DEVICE_NUM is {device_num}"
        )
    total = sum(len(d) for _, d in servers)
    return [
        {
            **base,
            "RANK_TABLE_FILE": str(Path(rank_table_file).resolve()),
            "RANK_SIZE": str(total),
            "RANK_ID": str(rank),
            "DEVICE_ID": str(device),
            "SERVER_ID": str(index),
        }
        for rank, device in devices
    ]


def _python_first_on_path(env):
    # msrun starts workers as `python ...` from PATH: put this interpreter's folder first so they use this venv.
    return {**env, "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])}


def _running(process):
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class RankWatch:
    """Starts this server's processes, follows every process they start (papermill kernels run in sessions of
    their own, out of reach of msrun's process-group kill), and ends them all when one rank fails."""

    def __init__(self, output_dir, log=print):
        self.output_dir, self.log = Path(output_dir), log
        # ranked: (pid, start time) -> (role, rank, process) for each rank's worker and notebook kernel
        self.top, self.seen, self.ranked = [], {}, {}
        self.started = time.time()

    def start(self, command, env, log_path=None, rank=None):
        handle = open(log_path, "w") if log_path else None
        proc = subprocess.Popen(
            command, env=env, stdout=handle, stderr=subprocess.STDOUT if handle else None, start_new_session=True
        )
        self.top.append((proc, rank, log_path, handle))
        return proc

    def _follow(self):
        import psutil

        for proc, *_ in self.top:
            try:
                family = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                continue
            for child in family:
                try:  # a short-lived process may be gone already
                    key = (child.pid, child.create_time())
                except psutil.Error:
                    continue
                if key not in self.seen:
                    self.seen[key] = child
                    role = self._rank_role(child)
                    if role is not None:
                        self.ranked[key] = (*role, child)

    @staticmethod
    def _rank_role(process):
        """("worker", rank) for `python -m edsr_lib.launch worker ...` itself (not msrun, whose arguments hold the same
        words, nor msrun's child before it execs, nor the scheduler msrun starts with the same command), ("kernel",
        rank) for the notebook kernel papermill starts for it, else None."""
        import psutil

        try:
            cmdline, env = process.cmdline(), process.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        if not env.get("RANK_ID", "").isdigit():
            return None
        if cmdline[1:4] == ["-m", "edsr_lib.launch", "worker"] and env.get("MS_ROLE") != "MS_SCHED":
            return "worker", int(env["RANK_ID"])
        if any("ipykernel_launcher" in part for part in cmdline):
            return "kernel", int(env["RANK_ID"])
        return None

    def _ended_unfinished(self, role):
        """The first rank whose `role` process ended without the rank's results, else None (forgetting ended ones)."""
        for key, (kind, rank, process) in list(self.ranked.items()):
            if kind == role and not _running(process):
                del self.ranked[key]
                if not self._finished(rank):
                    return rank
        return None

    def _finished(self, rank):
        metrics = self.output_dir / f"rank_{rank}" / "metrics.json"
        return metrics.is_file() and metrics.stat().st_mtime >= self.started

    def _failure(self):
        """(rank or None, reason, seen here) for the first failure, else None; `seen here` is False when another
        server's launcher reported it through the shared folder."""
        # A rank's kernel dying is the root cause when it happens: the other ranks then fail too, in their own
        # time, and the launcher must name the rank that failed first, not the first one it notices.
        rank = self._ended_unfinished("kernel")
        if rank is not None:
            return rank, f"rank {rank}'s notebook kernel died", True
        for proc, rank, log_path, _ in self.top:
            code = proc.poll()
            if code:
                where = f" (log: {log_path})" if log_path else ""
                name = f"rank {rank}" if rank is not None else proc.args[0]
                return rank, f"{name} exited with {code}{where}", True
        rank = self._ended_unfinished("worker")
        if rank is not None:
            return rank, f"rank {rank} ended before finishing", True
        marker = self.output_dir / FAILED_MARKER
        if marker.is_file() and marker.stat().st_mtime >= self.started:
            try:
                return None, "another server stopped the job: " + json.loads(marker.read_text())["reason"], False
            except (OSError, ValueError, KeyError):
                return None, "another server stopped the job", False
        return None

    def stop_all(self):
        """SIGTERM to every process seen, then SIGKILL to what is left after KILL_GRACE_SECONDS."""
        self._follow()
        end_processes([p for p in self.seen.values() if _running(p)])
        for proc, *_ in self.top:
            with contextlib.suppress(Exception):
                proc.wait(timeout=1)

    def wait(self):
        """Until every process ends well, or one rank fails: then stop the rest and raise naming it."""
        try:
            while True:
                self._follow()
                failed = self._failure()
                if failed:
                    rank, reason, seen_here = failed
                    logs = self.rank_logs(rank)
                    if seen_here:
                        write_json(self.output_dir / FAILED_MARKER, {"rank": rank, "reason": reason})
                    self.log(f"{reason}; stopping the other ranks")
                    raise KitError(f"distributed training failed: {reason}" + (f"; see {logs}" if logs else ""))
                if all(proc.poll() == 0 for proc, *_ in self.top):
                    self.stop_all()  # leftovers, e.g. a kernel still shutting down
                    return
                time.sleep(POLL_SECONDS)
        except BaseException:  # a failed rank (the KitError above), Ctrl-C, or a fault here: end every process
            self.stop_all()
            raise
        finally:
            for *_, handle in self.top:
                if handle:
                    handle.close()

    def rank_logs(self, rank):
        if rank is None:
            return ""
        candidates = [
            self.output_dir / "msrun_logs" / f"worker_{rank}.log",
            self.output_dir / f"rank_{rank}" / "train.log",
            self.output_dir / f"rank_{rank}" / TRAIN,
        ]
        return ", ".join(str(p) for p in candidates if p.exists())


def notebook_defaults(name=TRAIN):
    """The parameters cell of a notebook as values."""
    import ast

    import papermill

    values = {}
    for key, info in papermill.inspect_notebook(str(notebook_path(name))).items():
        with contextlib.suppress(ValueError, SyntaxError):
            values[key] = ast.literal_eval(info["default"])
    return values


# What the launchers take from a notebook's parameters are data and run placement; the schedule of a batch run on
# DIV2K or a user's folder is the published recipe (the Options defaults), whatever the notebook's demo values.
RECIPE_GLOBAL_BATCH = 16


def batch_run_parameters(train_data, given, world=1):
    """Parameters for a headless run: the built-in sample data keeps the notebook's short schedule; any other data
    gets the published recipe for every option not given, with the recipe's global batch of 16 split over the ranks
    (2 per card on 8 cards, as the ModelZoo's 8-card script passes)."""
    params = {**train_data_parameters(train_data), **given}
    if str(train_data).lower() == "sample":
        return params
    from dataclasses import fields

    from .options import Options

    recipe = Options(scale=int(params.get("scale", 2)))
    run_keys = {
        "dir_data",
        "data_train",
        "data_test",
        "data_range",
        "device_target",
        "ckpt_save_path",
        "ckpt_path",
        "resume",
        "output_dir",
        "progress",
        "model",
        "n_colors",
        "rgb_range",
        "seed",
        "task_id",
    }
    defaults = notebook_defaults()
    for field in fields(Options):
        name = field.name
        if name in params or name in run_keys or name not in defaults:
            continue
        value = getattr(recipe, name)
        if name == "batch_size":
            value = RECIPE_GLOBAL_BATCH // world if RECIPE_GLOBAL_BATCH % world == 0 else value
        if defaults[name] != value:
            params[name] = value
    return params


def describe_schedule(params, world):
    """One line: what the job will train, in the recipe's terms."""
    from .options import Options

    values = {**notebook_defaults(), **params}
    opts = Options.from_dict({k: v for k, v in values.items() if k in Options.__dataclass_fields__}, strict=False)
    return (
        f"schedule: {opts.epochs} epochs x {opts.test_every} iterations, lr {opts.lr:g} x {opts.gamma:g} after "
        f"epoch(s) {opts.decay}, HR patch {opts.patch_size}, batch {opts.batch_size} per device x {world} "
        f"rank(s) = global batch {opts.batch_size * world}; model {opts.n_resblocks} blocks, {opts.n_feats} "
        f"features"
    )


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
        watch.start(command, _python_first_on_path(dict(os.environ)))
    watch.wait()
    return check_ranks(output_dir, local_ranks, world)


def check_cluster(nodes, node_rank, master_addr, one_host=False, rank_table_file=None):
    """Refuse at once the multi-server launches that would otherwise wait for msrun's 600 s cluster timeout: without
    a rank table, every server must say which one it is and where server 0 is, as an address the others reach."""
    if rank_table_file or nodes <= 1:
        return
    if node_rank is None:
        raise KitError(
            f"--nodes {nodes} needs --node-rank on every server (0 on the one that starts the scheduler, 1 to "
            f"{nodes - 1} on the others): without it every server would start as server 0"
        )
    if not master_addr:
        raise KitError(f"--nodes {nodes} needs --master-addr: server 0's address, the same on every server")
    if any(ip.is_loopback for ip in _addresses(master_addr)) and not one_host:
        raise KitError(
            f"--master-addr {master_addr} is a loopback address, which other servers cannot reach: give server 0's "
            "network address (or --one-host to emulate all the servers on this machine)"
        )


def check_ranks(output_dir, local_ranks, world):
    """This server's ranks must report identical weights; so must every rank whose results share the folder.
    Each rank's `ranks_agree` is the all-rank comparison made inside the job."""
    metrics = [_read_metrics(Path(output_dir) / f"rank_{r}" / "metrics.json") for r in local_ranks]
    for r in range(world):
        path = Path(output_dir) / f"rank_{r}" / "metrics.json"
        if r not in local_ranks and path.is_file():
            metrics.append(_read_metrics(path))
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
    from .runtime import LaunchEnvironment, init_distributed

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
    reported = _read_metrics(Path(output_dir) / f"rank_{rank}" / "metrics.json").get("rank")
    if reported != rank:
        raise KitError(f"rank_{rank}: MindSpore assigned this process rank {reported} (RANK_ID was {rank})")
    return 0


def build_parser():
    parser = OneLineArgumentParser(
        prog="python -m edsr_lib.launch", description="run the notebooks headlessly (what scripts/run_*.sh call)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("standalone", help="train, evaluate and compare on one device")
    p.add_argument("train_data", help="sample, a DIV2K root or a folder of HR images")
    p.add_argument("--output-dir", required=True)
    p = sub.add_parser("distribute", help="data-parallel training; every rank runs 02_train.ipynb")
    p.add_argument("train_data", help="sample, a DIV2K root or a folder of HR images")
    p.add_argument("device_num", nargs="?", type=int, default=8, help="devices on this server")
    p.add_argument("rank_table_file", nargs="?", default=None, help="HCCL rank table (default: launch with msrun)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--nodes", type=int, default=1, help="servers in the job")
    p.add_argument("--node-rank", type=int, default=None, help="this server's index (0 starts the scheduler)")
    p.add_argument("--master-addr", default=None, help="address of server 0 (required with --nodes > 1)")
    p.add_argument("--master-port", type=int, default=DEFAULT_MASTER_PORT)
    p.add_argument(
        "--one-host",
        action="store_true",
        help="emulate the --nodes servers on this machine (master address on loopback), as the tests do",
    )
    p = sub.add_parser("eval", help="evaluate a checkpoint (the ModelZoo EDSR's run_eval)")
    p.add_argument("test_data", help="dataset root (holding benchmark/ or DIV2K/)")
    p.add_argument("checkpoint")
    p.add_argument("dataset_type", help="Set5, Set14, B100, Urban100, DIV2K, sample or a folder of HR images")
    p.add_argument("--output-dir", required=True)
    p = sub.add_parser("worker", help="(internal) what msrun or the rank-table loop starts per process")
    p.add_argument("output_dir")
    p.add_argument("parameters_json")
    for p in sub.choices.values():
        p.add_argument(
            "-p",
            "--parameter",
            nargs=2,
            action="append",
            default=[],
            metavar=("NAME", "VALUE"),
            help="notebook parameter (repeatable), e.g. -p epochs 3",
        )
    parser.command_parsers = sub.choices
    return parser


class Stopped(BaseException):
    """SIGTERM, SIGHUP or SIGINT reached a launcher (from `kill`, `timeout`, a batch scheduler or Ctrl-C)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _stop_on(signum, frame):
    raise Stopped(signum)


def stop_descendants(grace=KILL_GRACE_SECONDS):
    """End every process this one started, however deep (msrun, workers, papermill kernels in their own sessions):
    SIGTERM, then SIGKILL after `grace` seconds. Returns how many there were."""
    import psutil

    try:
        family = psutil.Process().children(recursive=True)
    except psutil.Error:
        return 0
    end_processes(family, grace)
    return len(family)


def end_processes(processes, grace=KILL_GRACE_SECONDS):
    """SIGTERM to each of `processes` (psutil), then SIGKILL to those still there after `grace` seconds."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace)


NOTEBOOKS_OF = {"standalone": (TRAIN, EVALUATE, COMPARE), "distribute": (TRAIN,), "eval": (EVALUATE,)}


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = parser.command_parsers
    if argv and argv[0] in commands:  # flags and positionals in any order within a command
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
    else:
        args = parser.parse_args(argv)
    import signal

    if threading_main():
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(signum, _stop_on)
    try:
        return _run(args)
    except KitError as exc:
        print(f"edsr: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # OUTPUT_DIR a file, a read-only folder, a full disk: one line naming the path
        from .errors import describe_os_error

        print(f"edsr: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except Stopped as stop:
        ended = stop_descendants()
        name = signal.Signals(stop.signum).name
        print(f"edsr: stopped by {name}; ended the {ended} process(es) this launcher had started", file=sys.stderr)
        return 128 + stop.signum


def threading_main():
    import threading

    return threading.current_thread() is threading.main_thread()


def _run(args):
    params = parse_parameters(args.parameter)
    if args.command in NOTEBOOKS_OF:
        check_parameter_names(params, NOTEBOOKS_OF[args.command])
    if args.command == "worker":
        try:
            given = json.loads(args.parameters_json)
        except (ValueError, RecursionError):
            raise KitError("worker: the parameters are not a JSON object") from None
        return worker(args.output_dir, {**given, **params})
    if args.command == "standalone":
        summary = run_standalone(args.train_data, args.output_dir, params)
        print(
            f"held-out {summary['dataset']} x{summary['scale']}: EDSR {summary['psnr']:.3f} dB, "
            f"bicubic {summary['psnr_bicubic']:.3f} dB ({summary['psnr'] - summary['psnr_bicubic']:+.3f} dB); "
            f"results in {args.output_dir}"
        )
        return 0
    if args.command == "distribute":
        metrics = run_distributed(
            args.train_data,
            args.device_num,
            args.output_dir,
            params,
            args.rank_table_file,
            args.master_port,
            args.nodes,
            args.node_rank,
            args.master_addr,
            args.one_host,
        )
        print(
            f"{len(metrics)} ranks agree: param_checksum {metrics[0]['param_checksum']:.6f}, final loss "
            f"{metrics[0]['final_loss']:.4f}; results in {args.output_dir}"
        )
        return 0
    result = run_evaluation(args.test_data, args.checkpoint, args.dataset_type, args.output_dir, params)
    print(
        f"{result['dataset']} x{result['scale']}: EDSR {result['psnr']:.3f} dB / {result['ssim']:.4f}, "
        f"bicubic {result['psnr_bicubic']:.3f} dB / {result['ssim_bicubic']:.4f}; results in {args.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
