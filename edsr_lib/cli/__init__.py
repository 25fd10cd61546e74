"""The `edsr` command: one module per subcommand (`add_arguments`, `run`), flags shared between commands in
`flags.py`.

User mistakes raise KitError, printed here as one line with a non-zero exit; no traceback.
"""

import sys

from ..errors import KitError, OneLineArgumentParser, describe_os_error, sigterm_interrupts
from . import compare, convert, download, evaluate, export, reproduce, train, upscale, weights

# (subcommand, its module), in the order `edsr --help` lists them
COMMANDS = (
    ("convert", convert),
    ("upscale", upscale),
    ("eval", evaluate),
    ("export", export),
    ("train", train),
    ("weights", weights),
    ("compare", compare),
    ("reproduce", reproduce),
    ("download", download),
)


def build_parser():
    parser = OneLineArgumentParser(prog="edsr", description="EDSR super-resolution on MindSpore (Ascend and CPU)")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of internal errors")
    subcommands = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS:
        command = subcommands.add_parser(name, help=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def _out_of_memory(args):
    return f"edsr: error: out of memory while running `edsr {args.command}`: lower batch_size (training) or pass --tile"


def _is_out_of_memory(exc):
    text = str(exc).lower()
    return "out of memory" in text or "memory not enough" in text or "malloc" in text and "fail" in text


def main(argv=None, registry=None):
    """Run the `edsr` command. `registry`: the weights names (`pretrained.Registry`; tests give their own)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        if registry is None:
            from ..pretrained import Registry

            registry = Registry()
        args.registry = registry
        with sigterm_interrupts():  # Ctrl-C during a MindSpore graph arrives as SIGTERM: still exit 130
            return args.run(args)
    except KitError as exc:
        print(f"edsr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edsr: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(_out_of_memory(args), file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied, a folder where a file should be: name the path
        if debug:
            raise
        print(f"edsr: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        if _is_out_of_memory(exc):  # MindSpore reports a failed device or host allocation as a RuntimeError
            print(_out_of_memory(args), file=sys.stderr)
            return 2
        print(
            f"edsr: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
