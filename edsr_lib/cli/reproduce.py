"""`edsr reproduce`: the published weights on the benchmarks, against the papers' table."""

from ..errors import KitError
from . import flags

HELP = "evaluate the published weights on the benchmarks against the papers' table"


def add_arguments(parser):
    flags.add_flag(parser, "--models", default=None, help="comma-separated weights names (default: all eight)")
    flags.add_flag(
        parser, "--sets", default="Set5,Set14,B100,Urban100", help="comma-separated benchmark sets (or DIV2K)"
    )
    flags.add_flag(parser, "--dir_data", default="data", help="dataset root (benchmark/ ...)")
    flags.add_flag(parser, "--out", default="outputs/reproduce", help="folder for reproduce.md and reproduce.json")
    flags.self_ensemble(parser)
    flags.add_flag(
        parser,
        "--tolerance",
        type=flags.positive(float),
        default=0.01,
        help="largest |kit - published| PSNR that passes (dB)",
    )
    flags.weights_source(parser)


def run(args):
    from ..evaluation import format_reproduction, reproduce

    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else args.registry.models()
    for name in names:  # an unknown name is one line before anything is fetched
        if args.registry.entry(name).arch is None:
            raise KitError(f"{name}: {args.registry.entry(name).about}, not an SR model")
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    report = reproduce(
        names,
        sets,
        args.dir_data,
        args.out,
        args.registry,
        args.mirror,
        args.offline,
        self_ensemble=args.self_ensemble,
        tolerance=args.tolerance,
        log=flags.log,
    )
    print(format_reproduction(report))
    print(f"wrote {args.out}/reproduce.md and reproduce.json")
    return 1 if any(r.get("verdict") == "fail" for r in report["rows"]) else 0
