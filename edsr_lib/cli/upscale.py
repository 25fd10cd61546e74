"""`edsr upscale`: super-resolve an image or a folder of images."""

import sys

from . import flags

HELP = "super-resolve an image or a folder of images"


def add_arguments(parser):
    from ..images import ALPHA_MODES

    source = parser.add_mutually_exclusive_group(required=True)
    flags.add_flag(
        source, "--ckpt", help="kit checkpoint, published .pt, ModelZoo .ckpt, or a weights name (edsr weights list)"
    )
    flags.add_flag(source, "--model", help="exported .mindir (run by MindSpore) or .onnx (run by onnxruntime)")
    flags.scale(parser, "upscaling factor: required for an MDSR, checked for EDSR")
    flags.weights_source(parser)
    flags.ema_choice(parser)
    flags.conv_algorithm(parser)
    flags.tile(parser)
    flags.self_ensemble(parser)
    flags.add_flag(
        parser,
        "--alpha",
        choices=ALPHA_MODES,
        default="white",
        help="RGBA inputs: composite on white (default) or drop the alpha channel",
    )
    flags.res_scale(parser, "override res_scale for .pt/ModelZoo files")
    flags.device(parser)
    parser.add_argument("input", help="image file or folder")
    parser.add_argument("output", help="image file or folder")


def run(args):
    from ..inference import upscale_paths
    from ..loading import load_model
    from ..runtime import setup_device

    setup_device(args.device_target)
    if args.model:
        from ..export import load_exported

        model = load_exported(args.model)
    else:
        model = load_model(
            flags.checkpoint(args, args.ckpt),
            res_scale=args.res_scale,
            scale=args.scale,
            ema=args.ema,
            conv_kernel=args.conv_algorithm,
        )
    written, failed = upscale_paths(
        model,
        args.input,
        args.output,
        tile=args.tile,
        self_ensemble=args.self_ensemble,
        alpha=args.alpha,
        log=lambda m: print(m, file=sys.stderr),
    )
    if len(written) > 3:
        print(f"wrote {len(written)} images to {args.output}")
    else:
        for path in written:
            print(f"wrote {path}")
    if failed:
        print(f"edsr: error: {len(failed)} image(s) could not be read", file=sys.stderr)
        return 1
    return 0
