"""Evaluating a model (or plain bicubic) on a dataset with the papers' protocol; tables and JSON."""

import os
from pathlib import Path

import numpy as np

from .imresize import imresize
from .images import write_image
from .metrics import Protocol, protocol_for, psnr, quantize, ssim
from .progress import progress_bar


# Published EDSR (paper model) PSNR/SSIM on the Y channel (Lim et al. 2017, Table 3), and EDSR-PyTorch's README
# for DIV2K 801-900 (RGB, border scale + 6; PSNR only).
PUBLISHED_EDSR = {
    ("Set5", 2): (38.11, 0.9601),
    ("Set5", 3): (34.65, 0.9282),
    ("Set5", 4): (32.46, 0.8968),
    ("Set14", 2): (33.92, 0.9195),
    ("Set14", 3): (30.52, 0.8462),
    ("Set14", 4): (28.80, 0.7876),
    ("B100", 2): (32.32, 0.9013),
    ("B100", 3): (29.25, 0.8093),
    ("B100", 4): (27.71, 0.7420),
    ("Urban100", 2): (32.93, 0.9351),
    ("Urban100", 3): (28.80, 0.8653),
    ("Urban100", 4): (26.64, 0.8033),
    ("DIV2K", 2): (35.03, None),
    ("DIV2K", 3): (31.26, None),
    ("DIV2K", 4): (29.25, None),
}


def published_row(dataset_name, scale, degradation="bicubic"):
    """'38.11/0.9601' for a dataset with published EDSR numbers at this scale (bicubic LR only), else '-'."""
    if degradation != "bicubic":
        return "-"
    key = next(
        (k for k in PUBLISHED_EDSR if k[1] == scale and str(dataset_name).upper().startswith(k[0].upper())), None
    )
    if key is None:
        return "-"
    value, ssim_value = PUBLISHED_EDSR[key]
    return f"{value:.2f}" + (f"/{ssim_value:.4f}" if ssim_value else "")


def bicubic_upscale(lr, scale):
    """The bicubic baseline: round(clip(imresize(LR, scale))) with MATLAB's kernel."""
    return quantize(imresize(lr, scale))


def evaluate(
    dataset,
    model=None,
    protocol: Protocol | None = None,
    self_ensemble: bool = False,
    tile: int | None = None,
    save_dir: str | os.PathLike | None = None,
    progress: bool | str = True,
) -> dict:
    """PSNR/SSIM of `model` (None = bicubic) on every pair of `dataset`.

    progress: True/False, or a mode of `progress.progress_bar` (auto, text, none).
    Returns {"dataset", "scale", "method", "protocol", "psnr", "ssim", "per_image": [{"name", "psnr", "ssim"}]}.
    """
    from .inference import upscale

    scale = dataset.scale
    protocol = protocol or protocol_for(dataset.name, scale)
    rows = []
    for i in progress_bar(range(len(dataset)), f"eval {dataset.name} x{scale}", progress, unit="img", leave=False):
        lr, hr = dataset.pair(i)
        lr, hr = np.asarray(lr), np.asarray(hr)
        if model is None:
            sr = bicubic_upscale(lr, scale)
        else:
            sr = upscale(model, lr, tile=tile, self_ensemble=self_ensemble)
        if save_dir is not None:
            write_image(Path(save_dir) / f"{dataset.names[i]}_x{scale}_SR.png", sr)
        rows.append({"name": dataset.names[i], "psnr": psnr(sr, hr, protocol), "ssim": ssim(sr, hr, protocol)})
    return {
        "dataset": dataset.name,
        "scale": scale,
        "method": "bicubic" if model is None else getattr(model.arch, "model", "EDSR") + ("+" if self_ensemble else ""),
        "protocol": protocol.describe(),
        "degradation": getattr(getattr(dataset, "degradation", None), "kind", "bicubic"),
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "ssim": float(np.mean([r["ssim"] for r in rows])),
        "per_image": rows,
    }


def format_table(result):
    lines = [
        f"{result['method']} on {result['dataset']} x{result['scale']}, {result.get('degradation', 'bicubic')} LR"
        f" ({result['protocol']})",
        f"{'image':<24}{'PSNR (dB)':>11}{'SSIM':>9}",
    ]
    lines += [f"{r['name']:<24}{r['psnr']:>11.3f}{r['ssim']:>9.4f}" for r in result["per_image"]]
    lines.append(f"{'mean':<24}{result['psnr']:>11.3f}{result['ssim']:>9.4f}")
    return "\n".join(lines)
