"""The data-parallel job's processes as commands and environments: msrun's command, the environments msrun gives its
workers, HCCL rank tables and which server this is. Pure functions of their arguments (and the machine's addresses),
tested without launching anything."""

import json
import os
import sys
from pathlib import Path

from ..errors import KitError


DEFAULT_MASTER_PORT = 8118


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


def python_first_on_path(env):
    # msrun starts workers as `python ...` from PATH: put this interpreter's folder first so they use this venv.
    return {**env, "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])}


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
