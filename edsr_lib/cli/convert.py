"""`edsr convert`: a published .pt or ModelZoo .ckpt into a kit checkpoint."""

from . import flags

HELP = "convert a published .pt or ModelZoo .ckpt into a kit checkpoint"


def add_arguments(parser):
    parser.add_argument("src", help="EDSR-PyTorch .pt (legacy or zip) or MindSpore ModelZoo EDSR .ckpt")
    parser.add_argument("dst", help="output kit checkpoint (.ckpt)")
    flags.res_scale(parser, "residual scaling (default: 0.1 for 256 features, else 1.0)")


def run(args):
    from ..pretrained import describe
    from ..weights import convert

    arch = convert(args.src, args.dst, res_scale=args.res_scale)
    print(f"wrote {args.dst}: {describe(arch)}, res_scale {arch.res_scale}")
    return 0
