"""The `edsr` command: convert, upscale, eval, train, export, download, weights.

User mistakes raise KitError, printed here as one line with a non-zero exit; no traceback.
"""

import argparse
import sys

import numpy as np

from .errors import KitError, OneLineArgumentParser, describe_os_error, sigterm_interrupts


def _add_device(parser):
    parser.add_argument(
        "--device_target",
        "--device-target",
        default=None,
        help="Ascend, GPU or CPU (default: $DEVICE_TARGET, else Ascend when present, else CPU)",
    )


def _add_weights_source(parser):
    """--mirror and --offline, for commands whose --ckpt may be a published weights name."""
    parser.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="URL",
        help="base URL serving the published weights, tried before $EDSR_WEIGHTS_MIRROR and the official host "
        "(repeatable)",
    )
    parser.add_argument("--offline", action="store_true", help="never download: say which file to place where")


def _add_conv_algorithm(parser):
    from .kernels.conv import CONV_ALGORITHMS

    parser.add_argument(
        "--conv_algorithm",
        "--conv-algorithm",
        choices=CONV_ALGORITHMS,
        default="auto",
        help="the CPU convolution's algorithm for 3x3 layers (auto: Winograd where it pays; docs/benchmarks.md)",
    )


def _add_ema_choice(parser):
    parser.add_argument(
        "--no-ema",
        "--no_ema",
        dest="ema",
        action="store_false",
        help="use a training checkpoint's raw weights, not the EMA of its weights (the default when it has one)",
    )


def _checkpoint(args, spec):
    """The checkpoint path for a --ckpt value: a file, or a weights name fetched on first use."""
    return args.registry.resolve(spec, args.mirror, args.offline, log=lambda m: print(f"edsr: {m}", file=sys.stderr))


def _cmd_convert(args):
    from .pretrained import describe
    from .weights import convert

    arch = convert(args.src, args.dst, res_scale=args.res_scale)
    print(f"wrote {args.dst}: {describe(arch)}, res_scale {arch.res_scale}")
    return 0


def _cmd_weights(args):
    from .pretrained import MIRROR_INDEX

    registry, log = args.registry, (lambda m: print(f"edsr: {m}", file=sys.stderr))
    if args.action == "list":
        rows = [("name", "file", "size", "architecture", "cached"), *registry.rows()]
        widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
        for row in rows:
            print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
        print(f"cache: {registry.cache_dir}")
    elif args.action == "fetch":
        for name in args.names or registry.models():
            print(f"{name}: {registry.fetch(name, args.mirror, args.offline, log=log)}")
    elif args.action == "add":
        if len(args.names) != 2:
            raise KitError("usage: edsr weights add NAME PATH")
        from .pretrained import describe

        print(f"{args.names[0]}: {describe(registry.add(*args.names))} ({args.names[1]})")
    elif args.action == "remove":
        for name in args.names:
            registry.remove(name)
            print(f"removed {name}")
    elif args.action == "mirror":
        if not args.names:
            raise KitError("usage: edsr weights mirror DIR [NAME ...]")
        folder = registry.write_mirror(args.names[0], args.names[1:] or None, args.mirror, log=log)
        print(
            f"wrote {folder} with {MIRROR_INDEX}; serve it (e.g. python -m http.server -d {folder}) and pass its URL "
            "as --mirror or $EDSR_WEIGHTS_MIRROR"
        )
    return 0


def _cmd_upscale(args):
    from .inference import upscale_paths
    from .runtime import setup_device
    from .loading import load_model

    setup_device(args.device_target)
    if args.model:
        from .export import load_exported

        model = load_exported(args.model)
    else:
        model = load_model(
            _checkpoint(args, args.ckpt),
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


def _cmd_eval(args):
    from .data import open_dataset
    from .degradations import Degradation
    from .evaluation import evaluate, format_table
    from .files import check_output_file, prepare_output_folder, write_json
    from .metrics import parse_metrics, protocol_for

    model, inputs = None, []  # inputs: (path, what it is), which no output may overwrite
    if sum((args.bicubic, bool(args.ckpt), bool(args.model))) != 1:
        raise KitError("give exactly one of --bicubic, --ckpt CK or --model FILE")
    if args.model:
        from .export import load_exported, mindir_engine

        if not str(args.model).lower().endswith(".mindir") or mindir_engine(args.engine) != "lite":
            from .runtime import setup_device

            setup_device(args.device_target)
        model = load_exported(args.model, args.engine)
        inputs += [(args.model, "the model being evaluated"), (f"{args.model}.json", "its export record")]
        scale = model.arch.scale
        if args.scale is not None and args.scale != scale:
            raise KitError(f"{args.model}: an x{scale} model (its export record), not x{args.scale}")
    elif args.ckpt:
        from .runtime import setup_device
        from .loading import load_model

        setup_device(args.device_target)
        checkpoint = _checkpoint(args, args.ckpt)
        inputs.append((checkpoint, "the checkpoint being evaluated"))
        model = load_model(checkpoint, scale=args.scale, ema=args.ema, conv_kernel=args.conv_algorithm)
        scale = model.arch.scale
    elif args.scale is None:
        raise KitError("--bicubic needs --scale")
    else:
        scale = args.scale
    spec = args.hr_dir or args.data_test
    dataset = open_dataset(
        spec,
        scale,
        dir_data=args.dir_data,
        data_range=args.data_range,
        on_error="skip" if args.skip_bad else "raise",
        degradation=Degradation(args.degradation, args.seed),
    )
    # Every output is checked before the evaluation starts: none may overwrite an input or land in the dataset.
    inputs += [(folder, f"the {dataset.name} images") for folder in dataset.folders()]
    if args.json:
        check_output_file(args.json, "--json", inputs)
    for flag, folder in (("--save-images", args.save_images), ("--conventions", args.conventions)):
        if folder:
            prepare_output_folder(folder, flag, inputs)
    if args.conventions:
        from .evaluation import compare_conventions, format_conventions, write_conventions

        if args.degradation != "bicubic" or args.channel:
            raise KitError(
                "--conventions makes its own bicubic LR and scores every channel: drop --degradation/--channel"
            )
        result = compare_conventions(dataset, model, self_ensemble=args.self_ensemble, tile=args.tile)
        print(format_conventions(result))
        for path in write_conventions(result, args.conventions):
            print(f"wrote {path}")
        return 0
    protocol = protocol_for(args.data_test if not args.hr_dir else dataset.name, scale, override=args.channel)
    metrics = parse_metrics(args.metrics)
    from .lpips import for_metrics

    log = lambda m: print(f"edsr: {m}", file=sys.stderr)  # noqa: E731
    lpips = for_metrics(metrics, args.registry, args.mirror, args.offline, log=log)  # before any image is scored
    result = evaluate(
        dataset,
        model,
        protocol,
        self_ensemble=args.self_ensemble,
        tile=args.tile,
        save_dir=args.save_images,
        metrics=metrics,
        lpips=lpips,
    )
    if args.model:
        result["model_file"], result["engine"] = str(args.model), model.engine
    print(format_table(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _cmd_train(args):
    from .options import Options
    from .trainer import Trainer

    given = {k: v for k, v in vars(args).items() if k in _option_names() and v is not None}
    preset = args.preset or ("mdsr_baseline" if str(given.get("model", "")).upper() == "MDSR" else "baseline")
    opts = Options.for_preset(preset, **given)
    trainer = Trainer(opts, progress=args.progress)
    if trainer.rank == 0:
        print("  ".join(f"{k}: {v}" for k, v in trainer.summary().items()))
    trainer.fit()
    metrics = trainer.gather_final_metrics()
    if trainer.rank == 0:
        print(
            f"done: {metrics['epochs']} epochs, final loss {metrics['final_loss']:.4f}"
            + (f", PSNR {metrics['psnr']:.3f} dB (bicubic {metrics['psnr_bicubic']:.3f})" if metrics["psnr"] else "")
            + f"; run folder {opts.ckpt_save_path}"
        )
    return 0


def _option_names():
    from dataclasses import fields

    from .options import Options

    return [f.name for f in fields(Options)]


def _parse_bool(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_option_flags(parser):
    """One `--name value` flag per Options field, with the MindSpore ModelZoo EDSR's names; unset flags keep the
    preset's recipe."""
    from dataclasses import fields
    from typing import get_args, get_type_hints

    from .options import Options

    hints = get_type_hints(Options)
    for f in fields(Options):
        kind = hints[f.name]
        kind = next((k for k in get_args(kind) if k is not type(None)), kind)  # Optional[int] -> int
        extra = dict(nargs="?", const=True, type=_parse_bool) if kind is bool else dict(type=kind)
        default = f.default if f.name != "patch_size" else "EDSR 48 * scale, MDSR 48"
        parser.add_argument(f"--{f.name}", default=None, help=f"{f.metadata['help']} (default: {default})", **extra)


def _cmd_export(args):
    from .export import export_all_scales, verify_export
    from .runtime import setup_device

    setup_device(args.device_target)
    checkpoint = _checkpoint(args, args.ckpt)
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


def _cmd_compare(args):
    from pathlib import Path

    from .data import open_dataset
    from .lpips import for_metrics
    from .metrics import parse_metrics, protocol_for
    from .report import build_report

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
        from .images import list_images, read_image, to_uint8

        paths = list_images(args.lr_dir)
        images = ((path.stem, to_uint8(read_image(path)[0]), None) for path in paths)
        count, protocol = len(paths), protocol_for(args.lr_dir, args.scale)
        folders = [args.lr_dir]
    if not count:
        raise KitError(f"{args.hr_dir or args.lr_dir or args.data_test}: no images")
    log = lambda m: print(f"edsr: {m}", file=sys.stderr)  # noqa: E731
    lpips = {} if args.lr_dir else for_metrics(metrics, args.registry, args.mirror, args.offline, log=log)
    inputs = [(spec, "a compared model") for spec in named.values() if Path(spec).exists()]
    inputs += [(folder, "the images compared") for folder in folders]
    summary = build_report(
        _Sized(images, count), args.scale, methods, args.out, protocol, metrics, lpips, inputs=inputs
    )
    print(f"wrote {Path(args.out) / 'index.html'}")
    if args.figure:
        from .figures import crop_box, paper_figure, save_figure
        from .images import read_image

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
    from pathlib import Path

    return (spec if spec == "bicubic" or ("/" not in spec and "." not in spec) else Path(spec).stem), spec


def _compared_model(args, spec):
    """None for bicubic, else the model of a checkpoint (path or weights name) or an exported file."""
    if spec == "bicubic":
        return None
    if spec.lower().endswith((".onnx", ".mindir")):
        from .export import load_exported

        return load_exported(spec)
    from .runtime import setup_device
    from .loading import load_model

    setup_device(args.device_target)
    return load_model(_checkpoint(args, spec), scale=args.scale)


class _Sized:
    """An iterator with a length (for the progress bar), read one item at a time."""

    def __init__(self, items, count):
        self.items, self.count = items, count

    def __iter__(self):
        return iter(self.items)

    def __len__(self):
        return self.count


def _cmd_reproduce(args):
    from .evaluation import format_reproduction, reproduce

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
        log=lambda m: print(f"edsr: {m}", file=sys.stderr),
    )
    print(format_reproduction(report))
    print(f"wrote {args.out}/reproduce.md and reproduce.json")
    return 1 if any(r.get("verdict") == "fail" for r in report["rows"]) else 0


def _cmd_download(args):
    from .download import download_dataset

    where = download_dataset(args.which, args.dir)
    print(f"{args.which} ready under {where} (use --dir_data {args.dir})")
    return 0


def _positive(kind):
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


def build_parser():
    from .degradations import DEGRADATIONS

    parser = OneLineArgumentParser(prog="edsr", description="EDSR super-resolution on MindSpore (Ascend and CPU)")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of internal errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a published .pt or ModelZoo .ckpt into a kit checkpoint")
    p.add_argument("src", help="EDSR-PyTorch .pt (legacy or zip) or MindSpore ModelZoo EDSR .ckpt")
    p.add_argument("dst", help="output kit checkpoint (.ckpt)")
    p.add_argument(
        "--res-scale",
        "--res_scale",
        dest="res_scale",
        type=_positive(float),
        default=None,
        help="residual scaling (default: 0.1 for 256 features, else 1.0)",
    )
    p.set_defaults(run=_cmd_convert)

    p = sub.add_parser("upscale", help="super-resolve an image or a folder of images")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--ckpt", help="kit checkpoint, published .pt, ModelZoo .ckpt, or a weights name (edsr weights list)"
    )
    source.add_argument("--model", help="exported .mindir (run by MindSpore) or .onnx (run by onnxruntime)")
    p.add_argument(
        "--scale", type=_positive(int), default=None, help="upscaling factor: required for an MDSR, checked for EDSR"
    )
    _add_weights_source(p)
    _add_ema_choice(p)
    _add_conv_algorithm(p)
    p.add_argument(
        "--tile",
        type=_positive(int),
        default=None,
        help="LR tile size in pixels; exact (same output as whole-image) with bounded memory",
    )
    p.add_argument(
        "--self-ensemble",
        "--self_ensemble",
        dest="self_ensemble",
        action="store_true",
        help="average the 8 flipped/transposed predictions (x8 slower, ~+0.1 dB)",
    )
    p.add_argument(
        "--alpha",
        choices=("white", "drop"),
        default="white",
        help="RGBA inputs: composite on white (default) or drop the alpha channel",
    )
    p.add_argument(
        "--res-scale",
        "--res_scale",
        dest="res_scale",
        type=_positive(float),
        default=None,
        help="override res_scale for .pt/ModelZoo files",
    )
    _add_device(p)
    p.add_argument("input", help="image file or folder")
    p.add_argument("output", help="image file or folder")
    p.set_defaults(run=_cmd_upscale)

    p = sub.add_parser("eval", help="PSNR/SSIM of a checkpoint or of bicubic on a dataset (papers' protocol)")
    p.add_argument("--bicubic", action="store_true", help="evaluate MATLAB-bicubic upscaling instead of a model")
    p.add_argument("--ckpt", help="checkpoint to evaluate (kit, published .pt, ModelZoo .ckpt or a weights name)")
    p.add_argument("--model", help="exported .mindir or .onnx to evaluate (what scripts/run_infer_310.sh runs)")
    p.add_argument(
        "--engine",
        choices=("auto", "mindspore", "lite"),
        default="auto",
        help="runtime of a .mindir: MindSpore Lite (Ascend 310/310P; auto picks it when installed) or MindSpore",
    )
    _add_weights_source(p)
    _add_ema_choice(p)
    _add_conv_algorithm(p)
    p.add_argument("--hr-dir", "--hr_dir", dest="hr_dir", help="folder of HR images (LR made with MATLAB bicubic)")
    p.add_argument(
        "--data_test",
        "--data-test",
        dest="data_test",
        default="Set5",
        help="dataset name (sample, Set5, Set14, B100, Urban100, Manga109, DIV2K) or folder",
    )
    p.add_argument("--dir_data", "--dir-data", dest="dir_data", default="", help="root of the datasets")
    p.add_argument(
        "--data_range", "--data-range", dest="data_range", default="1-800/801-810", help="DIV2K index ranges train/test"
    )
    p.add_argument(
        "--scale", type=_positive(int), default=None, help="upscaling factor (from --ckpt when given; an MDSR needs it)"
    )
    p.add_argument(
        "--channel",
        choices=("y", "rgb"),
        default=None,
        help="force the metric channel (default: Y for benchmarks, RGB with border scale+6 for DIV2K)",
    )
    p.add_argument("--self-ensemble", "--self_ensemble", dest="self_ensemble", action="store_true")
    p.add_argument("--tile", type=_positive(int), default=None, help="LR tile size for large images (exact)")
    p.add_argument(
        "--save-images",
        "--save_images",
        dest="save_images",
        default=None,
        help="also write the SR images to this folder",
    )
    p.add_argument(
        "--skip-bad",
        "--skip_bad",
        dest="skip_bad",
        action="store_true",
        help="skip unreadable or mismatched images with a warning instead of stopping",
    )
    p.add_argument(
        "--degradation",
        choices=DEGRADATIONS,
        default="bicubic",
        help="how the LR images are made from HR (bd, dn: RDN/RCAN's protocols; LR files on disk are bicubic only)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the dn and realistic degradations (per image)")
    p.add_argument(
        "--conventions",
        nargs="?",
        const="conventions",
        default=None,
        metavar="DIR",
        help="why PSNR differs: score the same outputs under every common convention (Y/RGB, border, rounding, "
        "how LR was made, mod-crop); writes conventions.json/.csv/.png to DIR (default ./conventions)",
    )
    p.add_argument(
        "--metrics",
        default="psnr,ssim",
        help="comma-separated: psnr, ssim, lpips (LPIPS v0.1, AlexNet; lower is better), lpips_vgg (VGG16), niqe "
        "(no-reference, lower is better; MATLAB's niqe). LPIPS fetches its ImageNet trunk by name on first use "
        "(edsr weights fetch lpips_alex)",
    )
    p.add_argument("--json", default=None, help="write the results as JSON")
    _add_device(p)
    p.set_defaults(run=_cmd_eval)

    p = sub.add_parser("export", help="export a checkpoint to MINDIR, ONNX or AIR for deployment")
    p.add_argument("--ckpt", required=True, help="kit checkpoint, published .pt, ModelZoo .ckpt or a weights name")
    p.add_argument(
        "--scale", type=_positive(int), default=None, help="MDSR: export this scale only (default: one file per scale)"
    )
    _add_weights_source(p)
    _add_ema_choice(p)
    p.add_argument("--format", type=str.upper, choices=("MINDIR", "ONNX", "AIR"), default="MINDIR")
    p.add_argument("--output", required=True, help="file to write (.mindir, .onnx or .air)")
    p.add_argument(
        "--input-size",
        "--input_size",
        dest="input_size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="fixed LR input size (required for ONNX; MINDIR is dynamic in H and W without it)",
    )
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=1)
    p.add_argument(
        "--verify",
        action="store_true",
        help="run the exported model on a sample input and report the difference to the checkpoint",
    )
    _add_device(p)
    p.set_defaults(run=_cmd_export)

    p = sub.add_parser("train", help="train EDSR (EDSR-PyTorch's recipe; flags use EDSR-PyTorch's option names)")
    p.add_argument(
        "--preset",
        choices=("baseline", "paper", "mdsr_baseline", "mdsr"),
        default=None,
        help="recipe defaults: baseline (16 blocks, 64 features), paper (32, 256, res_scale 0.1), mdsr_baseline "
        "(MDSR, 16 blocks, scales 2+3+4) or mdsr (80 blocks); default baseline, or mdsr_baseline with --model MDSR",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "text", "none"),
        default="auto",
        help="progress display: auto (bar), text (a line every 30 s, for logs), none",
    )
    _add_option_flags(p)
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("weights", help="the published EDSR/MDSR weights by name, your own names, mirrors")
    p.add_argument(
        "action",
        choices=("list", "fetch", "add", "remove", "mirror"),
        help="list; fetch [NAME ...] (download, verify, convert; default all); add NAME PATH; remove NAME; "
        "mirror DIR [NAME ...] (a folder a static web server can serve as a mirror)",
    )
    p.add_argument("names", nargs="*", help="weights names (and a path or folder, for add and mirror)")
    _add_weights_source(p)
    p.set_defaults(run=_cmd_weights)

    p = sub.add_parser("compare", help="a static HTML comparison report (and paper figures) of SR methods")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--hr-dir", "--hr_dir", dest="hr_dir", help="HR images (LR made with MATLAB bicubic)")
    source.add_argument("--lr-dir", "--lr_dir", dest="lr_dir", help="LR images without ground truth (no PSNR/SSIM)")
    source.add_argument("--data_test", "--data-test", dest="data_test", help="a dataset by name (sample, Set5, ...)")
    p.add_argument("--dir_data", "--dir-data", dest="dir_data", default="", help="dataset root for --data_test")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), help="default: the first model's")
    p.add_argument(
        "--method",
        action="append",
        required=True,
        help="repeat: bicubic, a checkpoint (path or weights name) or an exported .onnx/.mindir; LABEL=... names it",
    )
    p.add_argument("--out", default="outputs/compare", help="report folder (index.html; replaced as a whole)")
    p.add_argument("--metrics", default=None, help="as edsr eval (default psnr,ssim; niqe with --lr-dir)")
    p.add_argument("--figure", default=None, help="also write the paper figure of this image (its name)")
    p.add_argument("--crop", default=None, help="the figure's crop: Y,X,SIZE in HR pixels (default: a centre 64)")
    p.add_argument("--format", default="pdf", choices=("pdf", "svg", "png"), help="the figure's file format")
    p.add_argument("--width", default="two-column", choices=("one-column", "two-column"), help="the figure's width")
    _add_weights_source(p)
    _add_device(p)
    p.set_defaults(run=_cmd_compare)

    p = sub.add_parser("reproduce", help="evaluate the published weights on the benchmarks against the papers' table")
    p.add_argument("--models", default=None, help="comma-separated weights names (default: all eight)")
    p.add_argument("--sets", default="Set5,Set14,B100,Urban100", help="comma-separated benchmark sets (or DIV2K)")
    p.add_argument("--dir_data", "--dir-data", dest="dir_data", default="data", help="dataset root (benchmark/ ...)")
    p.add_argument("--out", default="outputs/reproduce", help="folder for reproduce.md and reproduce.json")
    p.add_argument("--self-ensemble", "--self_ensemble", dest="self_ensemble", action="store_true")
    p.add_argument(
        "--tolerance", type=_positive(float), default=0.01, help="largest |kit - published| PSNR that passes (dB)"
    )
    _add_weights_source(p)
    p.set_defaults(run=_cmd_reproduce)

    p = sub.add_parser("download", help="download and extract DIV2K or the benchmark sets (resumable)")
    p.add_argument("which", choices=("div2k", "benchmark"))
    p.add_argument("--dir", required=True, help="dataset root (becomes --dir_data)")
    p.set_defaults(run=_cmd_download)
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
            from .pretrained import Registry

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


if __name__ == "__main__":
    sys.exit(main())
