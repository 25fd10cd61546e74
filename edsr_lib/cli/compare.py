"""`edsr compare`: a static HTML comparison report (and paper figures) of SR methods (report.py)."""

from pathlib import Path

import numpy as np

from ..errors import KitError
from . import flags

HELP = "a static HTML comparison report (and paper figures) of SR methods"


def add_arguments(parser):
    from ..figures import PAPER_FIGURE_FORMATS, PAPER_WIDTHS

    source = parser.add_mutually_exclusive_group(required=True)
    flags.add_flag(source, "--hr_dir", help="HR images (LR made with MATLAB bicubic)")
    flags.add_flag(source, "--lr_dir", help="LR images without ground truth (no PSNR/SSIM)")
    flags.add_flag(source, "--data_test", help="a dataset by name (sample, Set5, ...)")
    flags.add_flag(parser, "--dir_data", default="", help="dataset root for --data_test")
    flags.add_flag(parser, "--scale", type=int, choices=(2, 3, 4), help="default: the first model's")
    flags.add_flag(
        parser,
        "--method",
        action="append",
        required=True,
        help="repeat: bicubic, a checkpoint (path or weights name) or an exported .onnx/.mindir; LABEL=... names it",
    )
    flags.add_flag(parser, "--out", default="outputs/compare", help="report folder (index.html; replaced as a whole)")
    flags.metrics(parser, None, help="as edsr eval (default psnr,ssim; niqe with --lr-dir)")
    flags.add_flag(parser, "--figure", default=None, help="also write the paper figure of this image (its name)")
    flags.add_flag(
        parser, "--crop", default=None, help="the figure's crop: Y,X,SIZE in HR pixels (default: a centre 64)"
    )
    flags.add_flag(parser, "--format", default="pdf", choices=PAPER_FIGURE_FORMATS, help="the figure's file format")
    flags.add_flag(parser, "--width", default="two-column", choices=tuple(PAPER_WIDTHS), help="the figure's width")
    flags.weights_source(parser)
    flags.device(parser)


def run(args):
    from ..data import open_dataset
    from ..lpips import for_metrics
    from ..metrics import parse_metrics, protocol_for
    from ..report import build_report

    metrics = parse_metrics(args.metrics or ("niqe" if args.lr_dir else "psnr,ssim"))
    crop = None  # checked before any work
    if args.crop:
        try:
            crop = tuple(int(v) for v in args.crop.split(","))
            if len(crop) != 3 or min(crop[:2]) < 0 or crop[2] < 1:
                raise ValueError
        except ValueError:
            raise KitError(f"--crop {args.crop}: give Y,X,SIZE in pixels, e.g. 100,120,64") from None
    named = {}  # label -> spec
    for label, spec in map(_method_label, args.method):
        if named.get(label, spec) != spec:
            raise KitError(f"--method: {named[label]} and {spec} are both labelled {label}; name one with LABEL={spec}")
        named[label] = spec
    loaded = {spec: _compared_model(args, spec) for spec in named.values()}
    scales = {spec: model.arch.scale for spec, model in loaded.items() if model is not None}
    args.scale = args.scale or next(iter(scales.values()), None)
    if args.scale is None:
        raise KitError("give --scale (no model to take it from)")
    for spec, scale in scales.items():
        if scale != args.scale:
            raise KitError(f"{spec}: an x{scale} model, the comparison is x{args.scale}")
    methods = {label: loaded[spec] for label, spec in named.items()}
    if args.hr_dir or args.data_test:
        dataset = open_dataset(args.hr_dir or args.data_test, args.scale, args.dir_data, split="test")
        images = ((dataset.names[i], *map(np.asarray, dataset.pair(i))) for i in range(len(dataset)))
        count, protocol = len(dataset), protocol_for(dataset.name, args.scale)
        folders = dataset.folders()
    else:
        from ..images import list_images, read_image, to_uint8

        paths = list_images(args.lr_dir)
        images = ((path.stem, to_uint8(read_image(path)[0]), None) for path in paths)
        count, protocol = len(paths), protocol_for(args.lr_dir, args.scale)
        folders = [args.lr_dir]
    if not count:
        raise KitError(f"{args.hr_dir or args.lr_dir or args.data_test}: no images")
    lpips = {} if args.lr_dir else for_metrics(metrics, args.registry, args.mirror, args.offline, log=flags.log)
    inputs = [(spec, "a compared model") for spec in named.values() if Path(spec).exists()]
    inputs += [(folder, "the images compared") for folder in folders]
    summary = build_report(
        _Sized(images, count), args.scale, methods, args.out, protocol, metrics, lpips, inputs=inputs
    )
    print(f"wrote {Path(args.out) / 'index.html'}")
    if args.figure:
        from ..figures import crop_box, paper_figure, save_figure
        from ..images import read_image

        row = next((r for r in summary["images"] if r["name"] == args.figure), None)
        if row is None:
            names = ", ".join(r["name"] for r in summary["images"][:5])
            raise KitError(f"--figure {args.figure}: no such image (the images: {names}, ...)")
        outputs = {label: read_image(Path(args.out) / "images" / file)[0] for label, file in row["files"].items()}
        shape = next(iter(outputs.values())).shape
        if crop:
            y, x, size = crop
            box = crop_box(shape, (y + size // 2, x + size // 2), size)
        else:
            box = crop_box(shape, (shape[0] // 2, shape[1] // 2), 64)
        hr = outputs.get("HR")
        figure, _ = paper_figure(hr, outputs, box, row["scores"], args.width)
        path = Path(args.out) / f"figure_{args.figure}.{args.format}"
        save_figure(figure, path, dpi=300)
        print(f"wrote {path}")
    return 0


def _method_label(spec):
    """(label, spec) of a --method value: 'LABEL=SPEC' as given, else bicubic, a weights name or a file's stem."""
    label, sep, rest = spec.partition("=")
    if sep and label and "/" not in label:
        return label, rest
    return (spec if spec == "bicubic" or ("/" not in spec and "." not in spec) else Path(spec).stem), spec


def _compared_model(args, spec):
    """None for bicubic, else the model of a checkpoint (path or weights name) or an exported file."""
    if spec == "bicubic":
        return None
    if spec.lower().endswith((".onnx", ".mindir")):
        from ..export import load_exported

        return load_exported(spec)
    from ..runtime import setup_device
    from ..loading import load_model

    setup_device(args.device_target)
    return load_model(flags.checkpoint(args, spec), scale=args.scale)


class _Sized:
    """An iterator with a length (for the progress bar), read one item at a time."""

    def __init__(self, items, count):
        self.items, self.count = items, count

    def __iter__(self):
        return iter(self.items)

    def __len__(self):
        return self.count
