"""`edsr export`: a checkpoint to MINDIR, ONNX or AIR for deployment."""

from ..errors import KitError
from . import flags

HELP = "export a checkpoint to MINDIR, ONNX or AIR for deployment"


def add_arguments(parser):
    from ..export import FORMATS

    flags.add_flag(
        parser, "--ckpt", required=True, help="kit checkpoint, published .pt, ModelZoo .ckpt or a weights name"
    )
    flags.scale(parser, "MDSR: export this scale only (default: one file per scale)")
    flags.weights_source(parser)
    flags.ema_choice(parser)
    flags.add_flag(parser, "--format", type=str.upper, choices=tuple(FORMATS), default="MINDIR")
    flags.add_flag(parser, "--output", required=True, help="file to write (.mindir, .onnx or .air)")
    flags.add_flag(
        parser,
        "--input_size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="fixed LR input size (required for ONNX; MINDIR is dynamic in H and W without it)",
    )
    flags.add_flag(parser, "--batch_size", type=int, default=1)
    flags.add_flag(
        parser,
        "--verify",
        action="store_true",
        help="run the exported model on a sample input and report the difference to the checkpoint",
    )
    flags.device(parser)


def run(args):
    from ..export import export_all_scales, verify_export
    from ..runtime import setup_device

    setup_device(args.device_target)
    checkpoint = flags.checkpoint(args, args.ckpt)
    exports = export_all_scales(
        checkpoint,
        args.format,
        args.output,
        scale=args.scale,
        input_size=args.input_size,
        batch_size=args.batch_size,
        ema=args.ema,
    )
    for path, meta in exports:
        arch = meta["architecture"]
        size = "x".join(map(str, meta["input_size"])) if meta["input_size"] else "dynamic HxW"
        print(
            f"wrote {path} ({args.format.upper()}, {arch['model']} at x{arch['scale']}, "
            f"input {meta['batch_size']}x3x{size}, 0-255)"
        )
        if args.verify:
            diff, peak = verify_export(checkpoint, path, ema=args.ema)
            print(f"verify: max |exported - checkpoint| = {diff:.3g} on outputs up to {peak:.1f}")
            if diff > 1e-3 * max(peak, 1.0):
                raise KitError(f"{path}: exported output differs from the checkpoint by {diff:.3g}")
    return 0
