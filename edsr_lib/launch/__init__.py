"""Headless runs of the notebooks (what scripts/run_*.sh call): `python -m edsr_lib.launch standalone|distribute|eval`.

- `notebooks.py`: papermill execution and the notebooks' parameters;
- `recipe.py`: what a batch run trains (the published recipe, one source of defaults);
- `cluster.py`: msrun commands, rank tables and the ranks' environments (pure);
- `watch.py`: following every process a job starts, and ending them all;
- `jobs.py`: the standalone, evaluation and data-parallel jobs, and the per-rank worker.
"""

import json
import sys

from ..errors import KitError, OneLineArgumentParser
from .cluster import DEFAULT_MASTER_PORT
from .jobs import run_distributed, run_evaluation, run_standalone, worker
from .notebooks import COMPARE, EVALUATE, TRAIN, check_parameter_names, parse_parameters
from .watch import Stopped, stop_descendants, stop_on, stopped_message, threading_main


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
            signal.signal(signum, stop_on)
    try:
        return _run(args)
    except KitError as exc:
        print(f"edsr: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # OUTPUT_DIR a file, a read-only folder, a full disk: one line naming the path
        from ..errors import describe_os_error

        print(f"edsr: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(stopped_message(stop.signum, stop_descendants()), file=sys.stderr)
        return 128 + stop.signum


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
