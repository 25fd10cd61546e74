"""Evaluating a model (or plain bicubic) on a dataset with the papers' protocol; tables and JSON."""

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .degradations import modcrop
from .imresize import imresize
from .images import write_image
from .metrics import (
    LOWER_IS_BETTER,
    Protocol,
    crop_border,
    niqe,
    parse_metrics,
    protocol_for,
    psnr,
    quantize,
    ssim,
)
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


def score_image(
    sr: np.ndarray,
    hr: np.ndarray,
    protocol: Protocol,
    metrics: Sequence[str] = ("psnr", "ssim"),
    lpips: dict | None = None,
) -> dict:
    """{metric: value} of one uint8 SR image (HR None: the no-reference metrics only) under `protocol`; `lpips`:
    metric name -> `lpips.LPIPS` for the LPIPS metrics asked."""
    row = {}
    if hr is not None:
        if "psnr" in metrics:
            row["psnr"] = psnr(sr, hr, protocol)
        if "ssim" in metrics:
            row["ssim"] = ssim(sr, hr, protocol)
        for name, model_of_metric in (lpips or {}).items():
            row[name] = model_of_metric(crop_border(sr, protocol.border), crop_border(hr, protocol.border))
    if "niqe" in metrics:
        row["niqe"] = niqe(sr, protocol.border)
    return row


def evaluate(
    dataset,
    model=None,
    protocol: Protocol | None = None,
    self_ensemble: bool = False,
    tile: int | None = None,
    save_dir: str | os.PathLike | None = None,
    progress: bool | str = True,
    keep_images: int = 0,
    indices: Iterable[int] | None = None,
    metrics: Sequence[str] = ("psnr", "ssim"),
    lpips: dict | None = None,
) -> dict:
    """PSNR/SSIM of `model` (None = bicubic) on every pair of `dataset` (or on the pairs at `indices`: one rank's
    share in distributed validation).

    progress: True/False, or a mode of `progress.progress_bar` (auto, text, none).
    Returns {"dataset", "scale", "method", "protocol", "psnr", "ssim", "per_image": [{"name", "psnr", "ssim"}]},
    and "images": [(name, lr, sr, hr)] for the first `keep_images` images when asked. `metrics`: which of
    `metrics.METRICS` to compute (NIQE scores the output alone, on the protocol's channel crop; LPIPS the RGB
    output against HR, on the protocol's border crop). `lpips`: metric name -> `lpips.LPIPS` for the LPIPS metrics
    asked (default: `lpips.for_metrics`, which fetches a trunk by name on first use).
    """
    metrics = parse_metrics(metrics)
    from .inference import upscale
    from .lpips import for_metrics

    lpips = for_metrics(metrics) if lpips is None else lpips

    scale = dataset.scale
    protocol = protocol or protocol_for(dataset.name, scale)
    rows: list = []
    kept: list = []
    indices = range(len(dataset)) if indices is None else list(indices)
    for i in progress_bar(indices, f"eval {dataset.name} x{scale}", progress, unit="img", leave=False):
        lr, hr = dataset.pair(i)
        lr, hr = np.asarray(lr), np.asarray(hr)
        if model is None:
            sr = bicubic_upscale(lr, scale)
        else:
            sr = upscale(model, lr, tile=tile, self_ensemble=self_ensemble)
        if save_dir is not None:
            write_image(Path(save_dir) / f"{dataset.names[i]}_x{scale}_SR.png", sr)
        rows.append({"name": dataset.names[i], **score_image(sr, hr, protocol, metrics, lpips)})
        if len(kept) < keep_images:
            kept.append((dataset.names[i], lr, sr, hr))
    result = {
        "dataset": dataset.name,
        "scale": scale,
        "method": "bicubic" if model is None else getattr(model.arch, "model", "EDSR") + ("+" if self_ensemble else ""),
        "protocol": protocol.describe(),
        "degradation": getattr(getattr(dataset, "degradation", None), "kind", "bicubic"),
        **{m: float(np.mean([r[m] for r in rows])) if rows else float("nan") for m in metrics},
        "per_image": rows,
    }
    if any(m in LOWER_IS_BETTER for m in metrics):
        result["lower_is_better"] = [m for m in metrics if m in LOWER_IS_BETTER]
    if keep_images:
        result["images"] = kept
    return result


# (column title, width, format) of each metric in tables
_COLUMNS = {
    "psnr": ("PSNR (dB)", 11, ".3f"),
    "ssim": ("SSIM", 9, ".4f"),
    "lpips": ("LPIPS (lower)", 15, ".4f"),
    "lpips_vgg": ("LPIPS-VGG (lower)", 19, ".4f"),
    "niqe": ("NIQE (lower)", 14, ".4f"),
}


def format_table(result: dict) -> str:
    shown = [m for m in _COLUMNS if m in result]
    lines = [
        f"{result['method']} on {result['dataset']} x{result['scale']}, {result.get('degradation', 'bicubic')} LR"
        f" ({result['protocol']})",
        f"{'image':<24}" + "".join(f"{_COLUMNS[m][0]:>{_COLUMNS[m][1]}}" for m in shown),
    ]
    for row in [*result["per_image"], {"name": "mean", **{m: result[m] for m in shown}}]:
        lines.append(f"{row['name']:<24}" + "".join(f"{row[m]:>{_COLUMNS[m][1]}{_COLUMNS[m][2]}}" for m in shown))
    return "\n".join(lines)


# ---- "why does my PSNR differ": one set of SR outputs scored under every common convention ------------------------


@dataclass(frozen=True)
class Convention:
    """One way of scoring SR: the metric's channel and border, how the float output becomes 8-bit, how the LR
    was made from HR and whether HR was cropped to a multiple of the scale first."""

    label: str
    channel: str = "y"  # y or rgb
    border: str = "scale"  # 0, scale or scale+6
    quantiser: str = "round"  # round, or truncate (the MindSpore ModelZoo EDSR's evaluation)
    lr: str = "matlab"  # matlab (imresize bicubic, antialiased), pillow (PIL's bicubic) or no-antialias
    modcrop: bool = True

    def protocol(self, scale):
        return Protocol(self.channel, {"0": 0, "scale": scale, "scale+6": scale + 6}[self.border])


def dataset_rows(results: Sequence[tuple], scale: int, degradation: str = "bicubic") -> list[dict]:
    """One table row per dataset for notebook 03: bicubic and EDSR PSNR/SSIM (NIQE when scored) next to the
    published EDSR number. `results`: [(dataset, bicubic result, EDSR result or None)] as `evaluate` returns them."""
    rows = []
    for dataset, bicubic, edsr in results:
        row = {"dataset": dataset.name, "images": len(dataset), "protocol": bicubic["protocol"]}
        row["bicubic PSNR/SSIM"] = f"{bicubic['psnr']:.2f}/{bicubic['ssim']:.4f}"
        row["EDSR PSNR/SSIM"] = f"{edsr['psnr']:.2f}/{edsr['ssim']:.4f}" if edsr else "no checkpoint"
        if "niqe" in bicubic:
            edsr_niqe = f"{edsr['niqe']:.3f}" if edsr else "-"
            row["NIQE bicubic / EDSR (lower)"] = f"{bicubic['niqe']:.3f} / {edsr_niqe}"
        row["published EDSR"] = published_row(dataset.name, scale, degradation)
        rows.append(row)
    return rows


def per_image_rows(bicubic: dict, edsr: dict | None = None) -> list[dict]:
    """One row per image: bicubic's PSNR/SSIM, and EDSR's when it was scored."""
    rows = []
    edsr_rows = edsr["per_image"] if edsr else [None] * len(bicubic["per_image"])
    for b, e in zip(bicubic["per_image"], edsr_rows, strict=True):
        row = {"image": b["name"], "bicubic PSNR": b["psnr"], "bicubic SSIM": b["ssim"]}
        if e is not None:
            row.update({"EDSR PSNR": e["psnr"], "EDSR SSIM": e["ssim"]})
        rows.append(row)
    return rows


def convention_rows(result: dict) -> list[dict]:
    """compare_conventions' rows as a display table (the papers' convention marked)."""
    return [
        {
            "convention": r["convention"] + (" (paper)" if r["paper"] else ""),
            "PSNR (dB)": f"{r['psnr']:.3f}",
            "vs paper (dB)": f"{r['delta_psnr']:+.3f}",
            "SSIM": f"{r['ssim']:.4f}",
        }
        for r in result["rows"]
    ]


def conventions_for(dataset_name):
    """The conventions compared, the dataset's paper protocol first: Y/border scale for the benchmarks (every SR
    paper since SRCNN), RGB/border scale+6 for DIV2K (EDSR-PyTorch, NTIRE 2017). The first three rows after it
    change one thing from the paper's protocol, the others the channel and border."""
    paper_channel = protocol_for(dataset_name, 1).channel
    paper_border = "scale+6" if paper_channel == "rgb" else "scale"  # protocol_for's borders, by name
    paper = Convention("paper protocol", paper_channel, paper_border)
    rows = [
        paper,
        Convention("truncated output (MindSpore ModelZoo EDSR)", paper_channel, paper_border, quantiser="truncate"),
        Convention("LR made with Pillow bicubic", paper_channel, paper_border, lr="pillow"),
        Convention("LR bicubic without antialiasing (as OpenCV)", paper_channel, paper_border, lr="no-antialias"),
        Convention("HR not mod-cropped", paper_channel, paper_border, modcrop=False),
    ]
    for channel in ("y", "rgb"):
        for border in ("0", "scale", "scale+6"):
            if (channel, border) != (paper_channel, paper_border):
                rows.append(
                    Convention(f"{channel.upper() if channel == 'y' else 'RGB'}, border {border}", channel, border)
                )
    return rows


def make_lr(hr, scale, method, modcrop_first=True):
    """LR of an HR image: MATLAB bicubic (the benchmarks' LR), Pillow's bicubic (antialiased too, with its own
    rounding), or the cubic kernel without antialiasing when shrinking, as OpenCV's `resize(INTER_CUBIC)` and
    PyTorch's `interpolate(antialias=False)` do. Without mod-crop MATLAB's output is ceil(size / scale) pixels."""
    from PIL import Image

    if modcrop_first:
        hr = modcrop(hr, scale)
    if method == "pillow":
        height, width = hr.shape[0] // scale, hr.shape[1] // scale
        return np.asarray(Image.fromarray(np.asarray(hr)).resize((width, height), Image.Resampling.BICUBIC))
    return quantize(imresize(hr, 1 / scale, antialias=method != "no-antialias"))


def compare_conventions(
    dataset,
    model=None,
    self_ensemble: bool = False,
    tile: int | None = None,
    super_resolve: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: bool | str = True,
) -> dict:
    """The same SR method scored under every convention of `conventions_for(dataset.name)`, on the dataset's HR
    images (the LR is made here, as each convention says). `super_resolve(lr) -> float HxWx3 on 0-255` overrides
    the method (default: `model`, or bicubic when None). Returns {"dataset", "scale", "method", "rows": [...]},
    each row a convention with its mean PSNR/SSIM and `delta_psnr` from the paper's protocol (row 0)."""
    from .inference import upscale_float

    scale = dataset.scale
    if super_resolve is None:
        super_resolve = (
            (lambda lr: imresize(lr, scale))
            if model is None
            else (lambda lr: upscale_float(model, lr, tile=tile, self_ensemble=self_ensemble))
        )
    conventions = conventions_for(dataset.name)
    scores: dict = {c: [] for c in conventions}
    for i in progress_bar(range(len(dataset)), f"conventions {dataset.name} x{scale}", progress, unit="img"):
        full = np.asarray(dataset.hr(i))
        outputs = {}  # one SR per way of making the LR
        for c in conventions:
            key = (c.lr, c.modcrop)
            if key not in outputs:
                outputs[key] = super_resolve(make_lr(full, scale, c.lr, c.modcrop))
            hr = modcrop(full, scale) if c.modcrop else full
            sr = outputs[key][: hr.shape[0], : hr.shape[1]]  # without mod-crop the SR is up to scale - 1 larger
            sr8 = np.floor(np.clip(sr, 0, 255)).astype(np.uint8) if c.quantiser == "truncate" else quantize(sr)
            protocol = c.protocol(scale)
            scores[c].append((psnr(sr8, hr, protocol), ssim(sr8, hr, protocol)))
    paper_psnr = float(np.mean([p for p, _ in scores[conventions[0]]]))
    rows = []
    for c in conventions:
        mean_psnr = float(np.mean([p for p, _ in scores[c]]))
        rows.append(
            {
                "convention": c.label,
                "channel": c.channel,
                "border": c.protocol(scale).border,
                "quantiser": c.quantiser,
                "lr": c.lr,
                "modcrop": c.modcrop,
                "paper": c is conventions[0],
                "psnr": mean_psnr,
                "ssim": float(np.mean([s for _, s in scores[c]])),
                "delta_psnr": mean_psnr - paper_psnr,
            }
        )
    method = "bicubic" if model is None else getattr(model.arch, "model", "EDSR") + ("+" if self_ensemble else "")
    return {"dataset": dataset.name, "scale": scale, "method": method, "rows": rows}


def format_conventions(result):
    lines = [
        f"{result['method']} on {result['dataset']} x{result['scale']}: the same outputs under each convention",
        f"{'convention':<46}{'PSNR (dB)':>11}{'vs paper':>10}{'SSIM':>9}",
    ]
    for r in result["rows"]:
        mark = " *" if r["paper"] else ""
        lines.append(f"{r['convention'] + mark:<46}{r['psnr']:>11.3f}{r['delta_psnr']:>+10.3f}{r['ssim']:>9.4f}")
    lines.append("* the papers' protocol for this dataset")
    return "\n".join(lines)


def write_conventions(result, folder):
    """conventions.json, conventions.csv and conventions.png (a bar per convention) in `folder`; returns the paths."""
    import csv
    import io

    from .figures import plot_conventions, save_figure
    from .files import atomic_write, write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(result["rows"][0]))
    writer.writeheader()
    writer.writerows(result["rows"])
    paths = [write_json(folder / "conventions.json", result), folder / "conventions.csv", folder / "conventions.png"]
    atomic_write(paths[1], lambda tmp: Path(tmp).write_text(buffer.getvalue()))
    save_figure(plot_conventions(result), paths[2])
    return paths


# ---- `edsr reproduce`: do the published weights give the published numbers? -----------------------------------
# The published figure for (weights name, dataset, scale), with where it comes from. Only numbers from a source the
# kit cites: the paper's Table 3 for the paper models on the benchmarks, EDSR-PyTorch's README for DIV2K 801-900.
PAPER_TABLE = "Lim et al. 2017, Table 3"
README_TABLE = "EDSR-PyTorch README (DIV2K 801-900, RGB)"
EDSR_PYTORCH_DIV2K_BASELINE = {2: 34.61, 3: 30.92, 4: 28.95}


def published_result(weights_name, dataset, scale):
    """(psnr, ssim or None, source) published for these weights on `dataset` at `scale`, or None."""
    paper_model = weights_name.startswith("edsr_x")
    if dataset == "DIV2K":
        if paper_model and ("DIV2K", scale) in PUBLISHED_EDSR:
            return PUBLISHED_EDSR[("DIV2K", scale)][0], None, README_TABLE
        if weights_name.startswith("edsr_baseline_x") and scale in EDSR_PYTORCH_DIV2K_BASELINE:
            return EDSR_PYTORCH_DIV2K_BASELINE[scale], None, README_TABLE
        return None
    if paper_model and (dataset, scale) in PUBLISHED_EDSR:
        return (*PUBLISHED_EDSR[(dataset, scale)], PAPER_TABLE)
    return None


def reproduce(
    names,
    sets,
    dir_data,
    out,
    registry,
    mirrors=(),
    offline=False,
    self_ensemble=False,
    tolerance=0.01,
    published=published_result,
    progress=True,
    log=print,
):
    """Fetch each published weights name, evaluate it on each set with the papers' protocol, and compare with the
    published figure: {"rows": [...], "tolerance", "self_ensemble"}, also written to `out` as reproduce.json and
    reproduce.md. Cells already in `out/reproduce.json` for the same file and settings are reused (resumable).
    `published(name, set, scale)`: the table (tests give their own)."""
    import json

    from .files import atomic_write, prepare_output_folder, write_json
    from .loading import load_model

    out = prepare_output_folder(out, "--out", kit_files=("reproduce.json",))
    record_path = out / "reproduce.json"
    done = {}
    if record_path.is_file():
        try:
            done = {
                (r["model"], r["set"], r["scale"], r["self_ensemble"]): r
                for r in json.loads(record_path.read_text())["rows"]
            }
        except (ValueError, KeyError, TypeError):
            done = {}
    rows = []
    for name in names:
        checkpoint = registry.fetch(name, mirrors, offline, progress=progress, log=log)
        for scale in registry.entry(name).arch.scales:  # a published file's architecture is known by its name
            model = None
            for dataset_name in sets:
                key = (name, dataset_name, scale, self_ensemble)
                if key in done:
                    rows.append(done[key])
                    continue
                if model is None:
                    model = load_model(checkpoint, scale=scale)
                dataset = _benchmark(dataset_name, scale, dir_data, offline, progress, log)
                protocol = protocol_for(dataset_name, scale)
                result = evaluate(dataset, model, protocol, self_ensemble=self_ensemble, progress=progress)
                row = {
                    "model": name,
                    "set": dataset_name,
                    "scale": scale,
                    "self_ensemble": self_ensemble,
                    "protocol": protocol.describe(),
                    "images": len(dataset),
                    "psnr": result["psnr"],
                    "ssim": result["ssim"],
                }
                reference = published(name, dataset_name, scale)
                if reference is not None:
                    ref_psnr, ref_ssim, source = reference
                    difference = result["psnr"] - ref_psnr
                    row.update(published_psnr=ref_psnr, published_ssim=ref_ssim, source=source, difference=difference)
                    row["verdict"] = "pass" if abs(difference) <= tolerance else "fail"
                rows.append(row)
                done[key] = row
                write_json(record_path, {"rows": list(done.values()), "tolerance": tolerance})  # resumable
    report = {"rows": rows, "tolerance": tolerance, "self_ensemble": self_ensemble}
    write_json(record_path, {**report, "rows": list(done.values())})
    atomic_write(out / "reproduce.md", lambda tmp: Path(tmp).write_text(format_reproduction(report) + "\n"))
    return report


def _benchmark(name, scale, dir_data, offline, progress, log):
    """A benchmark set under `dir_data`, downloaded there first (`edsr download benchmark`) when it is missing."""
    from .data import open_dataset
    from .download import download_dataset
    from .errors import KitError
    from .metrics import BENCHMARKS

    try:
        return open_dataset(name, scale, dir_data, data_range="1-800/801-900")
    except KitError:
        if offline or name not in BENCHMARKS:
            raise
    log(f"{name} not under {dir_data}: downloading the benchmark sets there")
    download_dataset("benchmark", dir_data, progress=progress, log=log)
    return open_dataset(name, scale, dir_data, data_range="1-800/801-900")


def format_reproduction(report):
    """The Markdown table `edsr reproduce` prints and saves."""
    lines = [
        f"| weights | set | scale | kit PSNR / SSIM | published | difference | within {report['tolerance']:g} dB "
        "| source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        published = "-"
        if "published_psnr" in r:
            published = f"{r['published_psnr']:.2f}" + (f" / {r['published_ssim']:.4f}" if r["published_ssim"] else "")
        lines.append(
            f"| {r['model']}{'+' if r['self_ensemble'] else ''} | {r['set']} | x{r['scale']} | "
            f"{r['psnr']:.3f} / {r['ssim']:.4f} | {published} | "
            + (f"{r['difference']:+.3f}" if "difference" in r else "-")
            + f" | {r.get('verdict', '-')} | {r.get('source', 'no published figure')} |"
        )
    return "\n".join(lines)
