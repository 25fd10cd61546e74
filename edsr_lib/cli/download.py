"""`edsr download`: DIV2K or the benchmark sets, resumable."""

from . import flags

HELP = "download and extract DIV2K or the benchmark sets (resumable)"


def add_arguments(parser):
    from ..download import ARCHIVES

    parser.add_argument("which", choices=tuple(ARCHIVES))
    flags.add_flag(parser, "--dir", required=True, help="dataset root (becomes --dir_data)")


def run(args):
    from ..download import download_dataset

    where = download_dataset(args.which, args.dir)
    print(f"{args.which} ready under {where} (use --dir_data {args.dir})")
    return 0
