"""`edsr eval`: PSNR/SSIM (and LPIPS, NIQE) of a checkpoint, an exported model or bicubic, papers' protocol."""

from ..errors import KitError
from . import flags

HELP = "PSNR/SSIM of a checkpoint or of bicubic on a dataset (papers' protocol)"


def add_arguments(parser):
    from ..degradations import DEGRADATIONS
    from ..export import MINDIR_ENGINES
    from ..metrics import CHANNELS

    parser.add_argument("--bicubic", action="store_true", help="evaluate MATLAB-bicubic upscaling instead of a model")
    flags.add_flag(
        parser, "--ckpt", help="checkpoint to evaluate (kit, published .pt, ModelZoo .ckpt or a weights name)"
    )
    flags.add_flag(parser, "--model", help="exported .mindir or .onnx to evaluate (what scripts/run_infer_310.sh runs)")
    flags.add_flag(
        parser,
        "--engine",
        choices=MINDIR_ENGINES,
        default="auto",
        help="runtime of a .mindir: MindSpore Lite (Ascend 310/310P; auto picks it when installed) or MindSpore",
    )
    flags.weights_source(parser)
    flags.ema_choice(parser)
    flags.conv_algorithm(parser)
    flags.dataset(parser)
    flags.add_flag(parser, "--data_range", default="1-800/801-810", help="DIV2K index ranges train/test")
    flags.scale(parser, "upscaling factor (from --ckpt when given; an MDSR needs it)")
    flags.add_flag(
        parser,
        "--channel",
        choices=CHANNELS,
        default=None,
        help="force the metric channel (default: Y for benchmarks, RGB with border scale+6 for DIV2K)",
    )
    flags.self_ensemble(parser)
    flags.tile(parser)
    flags.add_flag(parser, "--save_images", default=None, help="also write the SR images to this folder")
    flags.add_flag(
        parser,
        "--skip_bad",
        action="store_true",
        help="skip unreadable or mismatched images with a warning instead of stopping",
    )
    flags.add_flag(
        parser,
        "--degradation",
        choices=DEGRADATIONS,
        default="bicubic",
        help="how the LR images are made from HR (bd, dn: RDN/RCAN's protocols; LR files on disk are bicubic only)",
    )
    flags.add_flag(parser, "--seed", type=int, default=1, help="seed of the dn and realistic degradations (per image)")
    flags.add_flag(
        parser,
        "--conventions",
        nargs="?",
        const="conventions",
        default=None,
        metavar="DIR",
        help="why PSNR differs: score the same outputs under every common convention (Y/RGB, border, rounding, "
        "how LR was made, mod-crop); writes conventions.json/.csv/.png to DIR (default ./conventions)",
    )
    flags.metrics(parser, "psnr,ssim")
    flags.add_flag(parser, "--json", default=None, help="write the results as JSON")
    flags.device(parser)


def _model(args):
    """(model or None for bicubic, its scale, the files it was read from)."""
    if sum((args.bicubic, bool(args.ckpt), bool(args.model))) != 1:
        raise KitError("give exactly one of --bicubic, --ckpt CK or --model FILE")
    if args.model:
        from ..export import load_exported, mindir_engine

        if not str(args.model).lower().endswith(".mindir") or mindir_engine(args.engine) != "lite":
            from ..runtime import setup_device

            setup_device(args.device_target)
        model = load_exported(args.model, args.engine)
        if args.scale is not None and args.scale != model.arch.scale:
            raise KitError(f"{args.model}: an x{model.arch.scale} model (its export record), not x{args.scale}")
        inputs = [(args.model, "the model being evaluated"), (f"{args.model}.json", "its export record")]
        return model, model.arch.scale, inputs
    if args.ckpt:
        from ..loading import load_model
        from ..runtime import setup_device

        setup_device(args.device_target)
        checkpoint = flags.checkpoint(args, args.ckpt)
        model = load_model(checkpoint, scale=args.scale, ema=args.ema, conv_kernel=args.conv_algorithm)
        return model, model.arch.scale, [(checkpoint, "the checkpoint being evaluated")]
    if args.scale is None:
        raise KitError("--bicubic needs --scale")
    return None, args.scale, []


def run(args):
    from ..data import open_dataset
    from ..degradations import Degradation
    from ..evaluation import evaluate, format_table
    from ..files import check_output_file, prepare_output_folder, write_json
    from ..metrics import parse_metrics, protocol_for

    model, scale, inputs = _model(args)  # inputs: (path, what it is), which no output may overwrite
    dataset = open_dataset(
        args.hr_dir or args.data_test,
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
        from ..evaluation import compare_conventions, format_conventions, write_conventions

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
    from ..lpips import for_metrics

    lpips = for_metrics(metrics, args.registry, args.mirror, args.offline, log=flags.log)  # before any image
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
