"""Flags more than one command takes, each declared once, and the helpers commands share.

Every flag is accepted in both spellings, `--foo_bar` (the MindSpore ModelZoo EDSR's option names) and `--foo-bar`.
"""

import argparse
import sys


def add_flag(parser, name, **kwargs):
    """`parser.add_argument` for `--name`, also accepting the other spelling (underscores <-> hyphens)."""
    spellings = [name]
    for other in (name.replace("_", "-"), "--" + name[2:].replace("-", "_")):
        if other not in spellings:
            spellings.append(other)
    kwargs.setdefault("dest", name[2:].replace("-", "_"))
    return parser.add_argument(*spellings, **kwargs)


def positive(kind):
    """An argparse type: a finite number > 0 of `kind`, refused by argparse itself (one line, exit 2)."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (0 < value < float("inf")):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def log(message):
    print(f"edsr: {message}", file=sys.stderr)


def device(parser):
    add_flag(
        parser,
        "--device_target",
        default=None,
        help="Ascend, GPU or CPU (default: $DEVICE_TARGET, else Ascend when present, else CPU)",
    )


def weights_source(parser):
    """--mirror and --offline, for commands whose checkpoint may be a published weights name."""
    add_flag(
        parser,
        "--mirror",
        action="append",
        default=[],
        metavar="URL",
        help="base URL serving the published weights, tried before $EDSR_WEIGHTS_MIRROR and the official host "
        "(repeatable)",
    )
    add_flag(parser, "--offline", action="store_true", help="never download: say which file to place where")


def checkpoint(args, spec):
    """The checkpoint path for a --ckpt value: a file, or a weights name fetched on first use (with the
    command's --mirror and --offline)."""
    return args.registry.resolve(spec, args.mirror, args.offline, log=log)


def conv_algorithm(parser):
    from ..kernels import CONV_ALGORITHMS

    add_flag(
        parser,
        "--conv_algorithm",
        choices=CONV_ALGORITHMS,
        default="auto",
        help="the CPU convolution's algorithm for 3x3 layers (auto: Winograd where it pays; docs/benchmarks.md)",
    )


def ema_choice(parser):
    add_flag(
        parser,
        "--no_ema",
        dest="ema",
        action="store_false",
        help="use a training checkpoint's raw weights, not the EMA of its weights (the default when it has one)",
    )


def scale(parser, help):
    add_flag(parser, "--scale", type=positive(int), default=None, help=help)


def tile(parser):
    add_flag(
        parser,
        "--tile",
        type=positive(int),
        default=None,
        help="LR tile size in pixels for large images; exact (the whole-image output) with bounded memory",
    )


def self_ensemble(parser):
    add_flag(
        parser,
        "--self_ensemble",
        action="store_true",
        help="average the 8 flipped/transposed predictions (x8 slower, about +0.1 dB)",
    )


def res_scale(parser, help):
    add_flag(parser, "--res_scale", type=positive(float), default=None, help=help)


def metrics(parser, default, help=""):
    add_flag(
        parser,
        "--metrics",
        default=default,
        help=help
        or "comma-separated: psnr, ssim, lpips (LPIPS v0.1, AlexNet; lower is better), lpips_vgg (VGG16), niqe "
        "(no-reference, lower is better; MATLAB's niqe). LPIPS fetches its ImageNet trunk by name on first use "
        "(edsr weights fetch lpips_alex)",
    )


def dataset(parser, dir_data_default=""):
    """--hr_dir, --data_test, --dir_data: the images a command reads. --data_test's default is the Options one."""
    from ..options import Options

    add_flag(parser, "--hr_dir", help="folder of HR images (LR made with MATLAB bicubic)")
    add_flag(
        parser,
        "--data_test",
        default=Options.data_test,
        help="dataset name (sample, Set5, Set14, B100, Urban100, Manga109, DIV2K) or folder (default: %(default)s)",
    )
    add_flag(parser, "--dir_data", default=dir_data_default, help="root of the datasets")
