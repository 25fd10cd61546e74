"""`edsr train`: one `--name value` flag per Options field (the MindSpore ModelZoo EDSR's names)."""

import argparse
from dataclasses import fields

from . import flags

HELP = "train EDSR (EDSR-PyTorch's recipe; flags use EDSR-PyTorch's option names)"


def _parse_bool(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _option_names():
    from ..options import Options

    return [f.name for f in fields(Options)]


def add_arguments(parser):
    """Unset flags keep the preset's recipe."""
    from typing import get_args, get_type_hints

    from ..model import PRESETS
    from ..options import Options
    from ..progress import PROGRESS_MODES

    flags.add_flag(
        parser,
        "--preset",
        choices=tuple(PRESETS),
        default=None,
        help="recipe defaults: baseline (16 blocks, 64 features), paper (32, 256, res_scale 0.1), mdsr_baseline "
        "(MDSR, 16 blocks, scales 2+3+4) or mdsr (80 blocks); default baseline, or mdsr_baseline with --model MDSR",
    )
    flags.add_flag(
        parser,
        "--progress",
        choices=PROGRESS_MODES,
        default="auto",
        help="progress display: auto (bar), text (a line every 30 s, for logs), none",
    )
    hints = get_type_hints(Options)
    for f in fields(Options):
        kind = hints[f.name]
        kind = next((k for k in get_args(kind) if k is not type(None)), kind)  # Optional[int] -> int
        extra = dict(nargs="?", const=True, type=_parse_bool) if kind is bool else dict(type=kind)
        default = f.default if f.name != "patch_size" else "EDSR 48 * scale, MDSR 48"
        flags.add_flag(parser, f"--{f.name}", default=None, help=f"{f.metadata['help']} (default: {default})", **extra)


def run(args):
    from ..options import Options
    from ..trainer import Trainer

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
