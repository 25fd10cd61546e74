"""`edsr weights`: the published EDSR/MDSR weights by name, your own names, mirrors."""

from ..errors import KitError
from . import flags

HELP = "the published EDSR/MDSR weights by name, your own names, mirrors"
ACTIONS = ("list", "fetch", "add", "remove", "mirror")


def add_arguments(parser):
    parser.add_argument(
        "action",
        choices=ACTIONS,
        help="list; fetch [NAME ...] (download, verify, convert; default all); add NAME PATH; remove NAME; "
        "mirror DIR [NAME ...] (a folder a static web server can serve as a mirror)",
    )
    parser.add_argument("names", nargs="*", help="weights names (and a path or folder, for add and mirror)")
    flags.weights_source(parser)


def run(args):
    from ..pretrained import MIRROR_INDEX, describe

    registry = args.registry
    if args.action == "list":
        rows = [("name", "file", "size", "architecture", "cached"), *registry.rows()]
        widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
        for row in rows:
            print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        print(f"cache: {registry.cache_dir}")
    elif args.action == "fetch":
        for name in args.names or registry.models():
            print(f"{name}: {registry.fetch(name, args.mirror, args.offline, log=flags.log)}")
    elif args.action == "add":
        if len(args.names) != 2:
            raise KitError("usage: edsr weights add NAME PATH")
        print(f"{args.names[0]}: {describe(registry.add(*args.names))} ({args.names[1]})")
    elif args.action == "remove":
        for name in args.names:
            registry.remove(name)
            print(f"removed {name}")
    elif args.action == "mirror":
        if not args.names:
            raise KitError("usage: edsr weights mirror DIR [NAME ...]")
        folder = registry.write_mirror(args.names[0], args.names[1:] or None, args.mirror, log=flags.log)
        print(
            f"wrote {folder} with {MIRROR_INDEX}; serve it (e.g. python -m http.server -d {folder}) and pass its URL "
            "as --mirror or $EDSR_WEIGHTS_MIRROR"
        )
    return 0
