"""Figures as matplotlib `Figure` objects (no pyplot state): shown inline by notebooks, saved as PNG by the kit."""

import io
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .files import atomic_write


def figure_png(fig, dpi=110):
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, bbox_inches="tight", format="png")
    return buffer.getvalue()


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save `fig` atomically in the format its suffix names; PDF and SVG undated, so the same figure gives the same
    file."""
    kind = Path(path).suffix[1:]
    undated = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(kind)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=kind, metadata=undated))
    return Path(path)


def plot_history(history: list[dict], title: str = "training"):
    """Loss per epoch and validation PSNR with the bicubic line, side by side."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 3.6))
    ax_loss, ax_psnr = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["loss"] for h in history], "o-", ms=3)
    ax_loss.set(xlabel="epoch", ylabel="L1 loss (0-255)", title=f"{title}: loss")
    psnr = [(h["epoch"], h["psnr"]) for h in history if h.get("psnr") is not None]
    if psnr:
        ax_psnr.plot(*zip(*psnr), "o-", ms=3, label="EDSR")
        bicubic = history[-1].get("psnr_bicubic")
        if bicubic is not None:
            ax_psnr.axhline(bicubic, color="gray", ls="--", label=f"bicubic {bicubic:.2f} dB")
        ax_psnr.legend(loc="lower right")
    else:
        ax_psnr.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=ax_psnr.transAxes)
    ax_psnr.set(xlabel="epoch", ylabel="PSNR (dB)", title=f"{title}: validation PSNR")
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
    return fig


def save_and_show(fig, path):
    """Save `fig` as PNG and return it as an IPython image: the notebook shows exactly the file it saved, in
    JupyterLab and in headless papermill runs alike."""
    from IPython.display import Image

    return Image(filename=str(save_figure(fig, path)))


def show_image(path):
    """An image file as an IPython image (for files the kit wrote, e.g. lossless PNG comparisons)."""
    from IPython.display import Image

    return Image(filename=str(path))


def markdown_table(rows, columns=None):
    """A Markdown table (for `IPython.display.Markdown`) from a dict or a list of dicts. Floats show 4 significant
    digits (2.5e-4 stays 0.00025, 31.7512 becomes 31.75); pipes in a cell are escaped."""
    if isinstance(rows, dict):
        rows, columns = [{"name": k, "value": v} for k, v in rows.items()], ["name", "value"]
    columns = columns or list(rows[0])

    def cell(v):
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def options_table(options, per_row=3):
    """A dict of many options as a compact Markdown table: `per_row` name/value pairs per row instead of one."""
    items = [(k, v) for k, v in options.items()]
    rows = []
    for start in range(0, len(items), per_row):
        row = {}
        for i, (k, v) in enumerate(items[start : start + per_row]):
            row[f"option {i + 1}"], row[f"value {i + 1}"] = f"`{k}`", "" if v is None or v == "" else v
        rows.append(row)
    columns = [c for i in range(1, per_row + 1) for c in (f"option {i}", f"value {i}")]
    return markdown_table(rows, columns).replace(
        "| " + " | ".join(columns) + " |", "| " + " | ".join(["option", "value"] * per_row) + " |", 1
    )


# Figures meant for a notebook are at most this wide (inches at the saved dpi ~ 960 px): JupyterLab shows them
# at their own size, so a title set at 11 pt stays legible instead of being scaled down to ~6 pt.
NOTEBOOK_WIDTH = 8.7
PANELS_PER_ROW = 3


def _grid(count, panel_height=3.1):
    cols = min(PANELS_PER_ROW, count)
    rows = -(-count // cols)
    fig = Figure(figsize=(NOTEBOOK_WIDTH, panel_height * rows + 0.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def _hide_axes(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def plot_pairs(dataset, indices=(0, 1, 2)):
    """HR images with their LR inputs at the dataset's scale (LR shown at its own pixel size, upscaled nearest)."""
    indices = [i for i in indices if i < len(dataset)]
    fig = Figure(figsize=(7, 3.2 * len(indices)))
    axes = np.atleast_2d(fig.subplots(len(indices), 2))
    for row, i in zip(axes, indices):
        lr, hr = dataset.pair(i)
        row[0].imshow(hr)
        row[0].set_title(f"{dataset.names[i]}: HR {hr.shape[1]}x{hr.shape[0]}")
        row[1].imshow(lr, interpolation="nearest")
        row[1].set_title(f"LR x{dataset.scale}: {lr.shape[1]}x{lr.shape[0]}")
        for ax in row:
            _hide_axes(ax)
    fig.tight_layout()
    return fig


def plot_augmentations(lr_patch, hr_patch, augment):
    """The 8 dihedral variants (hflip, vflip, transpose) of one training patch pair, as training draws them."""
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(2, 8)
    for k in range(8):
        hflip, vflip, rot90 = bool(k & 1), bool(k & 2), bool(k & 4)
        lr, hr = augment((lr_patch, hr_patch), hflip, vflip, rot90)
        axes[0, k].imshow(hr)
        axes[1, k].imshow(lr, interpolation="nearest")
        axes[0, k].set_title(
            "".join(n for n, on in (("h", hflip), ("v", vflip), ("t", rot90)) if on) or "id", fontsize=9
        )
        _hide_axes(axes[0, k])
        _hide_axes(axes[1, k])
    axes[0, 0].set_ylabel("HR")
    axes[1, 0].set_ylabel("LR")
    fig.tight_layout()
    return fig


def error_map(sr, hr):
    """Mean absolute error over RGB per pixel, 0-255 scale."""
    return np.abs(sr.astype(np.float32) - hr.astype(np.float32)).mean(axis=2)


def plot_error_maps(hr, candidates, box=None, vmax=None, reference="bicubic"):
    """|candidate - HR| per pixel for each named candidate (on the crop `box` when given), on one shared colour
    scale (vmax: the 99th percentile over all maps unless given), then for every other candidate a difference map
    against `reference`: blue where it is closer to HR than the reference, red where it is further."""
    top, left, size = box or (0, 0, max(hr.shape[:2]))
    crop = (slice(top, top + size), slice(left, left + size))
    errors = {name: error_map(sr[crop], hr[crop]) for name, sr in candidates.items()}
    vmax = vmax or max(float(np.percentile(np.concatenate([e.ravel() for e in errors.values()]), 99)), 1.0)
    others = [n for n in errors if n != reference] if reference in errors else []
    fig, axes = _grid(len(errors) + len(others))
    for ax, (name, err) in zip(axes, errors.items()):
        shown = ax.imshow(err, cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"|{name} - HR|\nmean {err.mean():.2f}", fontsize=11)
    fig.colorbar(shown, ax=list(axes[: len(errors)]), shrink=0.8, label="|error| (0-255)")
    for ax, name in zip(axes[len(errors) :], others):
        gain = errors[name] - errors[reference]
        limit = max(float(np.percentile(np.abs(gain), 99)), 1.0)
        diverging = ax.imshow(gain, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        better = float((gain < 0).mean() * 100)
        ax.set_title(f"{name} vs {reference}\n{name} closer on {better:.0f}% (blue)", fontsize=11)
        fig.colorbar(diverging, ax=ax, shrink=0.8, label="error difference")
    for ax in axes:
        _hide_axes(ax)
    return fig


def plot_pixel_stats(dataset):
    """Per-channel intensity histograms over the dataset's HR images, with the channel means."""
    fig = Figure(figsize=(7, 3.4))
    ax = fig.subplots()
    totals = np.zeros((3, 256))
    for i in range(len(dataset)):
        hr = np.asarray(dataset.hr(i))
        for c in range(3):
            totals[c] += np.bincount(hr[..., c].ravel(), minlength=256)[:256]
    means = []
    for c, colour in enumerate(("red", "green", "blue")):
        hist = totals[c] / totals[c].sum()
        means.append(float((hist * np.arange(256)).sum()))
        ax.plot(hist, color=colour, label=f"{colour} (mean {means[-1]:.1f})")
    ax.set(xlabel="intensity", ylabel="fraction of pixels", title=f"{dataset.name}: HR pixel statistics")
    ax.legend()
    return fig, means


def crop_box(shape: tuple, center: tuple[int, int], size: int) -> tuple[int, int, int]:
    """(top, left, size) of a square crop of `size` pixels around `center` (y, x), kept inside `shape`."""
    size = int(min(size, shape[0], shape[1]))
    top = int(np.clip(center[0] - size // 2, 0, shape[0] - size))
    left = int(np.clip(center[1] - size // 2, 0, shape[1] - size))
    return top, left, size


def centre_crops(images, size=96, gap=4):
    """The same centre square of equal-sized HxWx3 images, side by side with a white gap (TensorBoard crops)."""
    top, left, size = crop_box(images[0].shape, (images[0].shape[0] // 2, images[0].shape[1] // 2), size)
    crops = [np.asarray(im)[top : top + size, left : left + size] for im in images]
    spacer = np.full((size, gap, 3), 255, np.uint8)
    return np.concatenate([part for crop in crops for part in (crop, spacer)][:-1], axis=1)


def score_label(score):
    """'32.10 dB / SSIM 0.9012' for (PSNR, SSIM), with a line 'LPIPS 0.123' when a third value is given."""
    label = f"{score[0]:.2f} dB / SSIM {score[1]:.4f}"
    return label + (f"\nLPIPS {score[2]:.3f}" if len(score) > 2 else "")


def plot_comparison(hr, candidates, box, scores=None, title=""):
    """The full HR image with the crop marked, then the same crop of HR and every candidate with its scores in the
    title, at most three panels per row."""
    from matplotlib.patches import Rectangle

    top, left, size = box
    panels = {"HR": hr, **candidates} if hr is not None else dict(candidates)
    reference = hr if hr is not None else next(iter(candidates.values()))
    fig, axes = _grid(len(panels) + 1)
    axes[0].imshow(reference)
    axes[0].add_patch(Rectangle((left, top), size, size, fill=False, edgecolor="yellow", lw=2))
    axes[0].set_title(title or "crop marked", fontsize=11)
    for ax, (name, img) in zip(axes[1:], panels.items()):
        ax.imshow(img[top : top + size, left : left + size], interpolation="nearest")
        score = (scores or {}).get(name)
        ax.set_title(name + (f"\n{score_label(score)}" if score else ""), fontsize=11)
    for ax in axes:
        _hide_axes(ax)
    return fig


def before_after(before, after, split):
    """One lossless image: `before` left of column `split`, `after` right of it, with a 1-px white divider."""
    out = after.copy()
    out[:, :split] = before[:, :split]
    if 0 < split < out.shape[1]:
        out[:, split] = 255
    return out


def wipe_zoom(crop_size, target=320):
    """Pixel repetition for a wipe of a `crop_size` crop: at least 2x, more for small crops (about `target` px)."""
    return max(2, target // max(int(crop_size), 1))


def labelled_wipe(before, after, split, box=None, zoom=2, labels=("before", "after")):
    """`before_after` on the crop `box`, enlarged `zoom` times by pixel repetition (no smoothing), with the two
    names written in the top corners; `split` is a fraction of the width (0-1)."""
    top, left, size = box or (0, 0, max(before.shape[:2]))
    crop = (slice(top, top + size), slice(left, left + size))
    a, b = (np.repeat(np.repeat(img[crop], zoom, axis=0), zoom, axis=1) for img in (before, after))
    out = before_after(a, b, int(round(split * a.shape[1])))
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.fromarray(np.ascontiguousarray(out[..., :3]))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(12, min(20, canvas.width // 16)))
    for text, anchor, x in ((labels[0], "la", 4), (labels[1], "ra", canvas.width - 4)):
        draw.text((x, 4), text, fill=(255, 255, 255), anchor=anchor, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(canvas)


def plot_gains(per_image, bicubic_per_image):
    """PSNR gain over bicubic per image (bar chart)."""
    fig = Figure(figsize=(max(5, 0.6 * len(per_image)), 3.4))
    ax = fig.subplots()
    base = {r["name"]: r["psnr"] for r in bicubic_per_image}
    names = [r["name"] for r in per_image]
    gains = [r["psnr"] - base[r["name"]] for r in per_image]
    ax.bar(range(len(names)), gains, color=["tab:green" if g > 0 else "tab:red" for g in gains])
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel="PSNR gain over bicubic (dB)", title="per-image gain")
    return fig


def plot_conventions(result):
    """One bar per convention: its PSNR minus the paper protocol's (`evaluation.compare_conventions`)."""
    rows = result["rows"]
    fig = Figure(figsize=(8, 0.42 * len(rows) + 1.2))
    ax = fig.subplots()
    deltas = [r["delta_psnr"] for r in rows]
    colours = ["tab:blue" if r["paper"] else ("tab:green" if d > 0 else "tab:red") for r, d in zip(rows, deltas)]
    positions = np.arange(len(rows))[::-1]
    ax.barh(positions, deltas, color=colours)
    ax.set_yticks(positions, [r["convention"] + (" (paper)" if r["paper"] else "") for r in rows], fontsize=8)
    for y, r in zip(positions, rows):  # the PSNR itself, right of the bar or of zero
        ax.annotate(
            f"{r['psnr']:.2f} dB", (max(r["delta_psnr"], 0), y), xytext=(3, 0), textcoords="offset points", va="center"
        )
    ax.margins(x=0.15)
    ax.axvline(0, color="black", lw=0.8)
    ax.set(
        xlabel="PSNR minus the paper protocol's (dB)",
        title=f"{result['method']} on {result['dataset']} x{result['scale']}: one output, every convention",
    )
    ax.grid(axis="x", alpha=0.3)
    return fig


def log_spectrum(image):
    """log(1 + |FFT|) of an RGB image's luma, centred: blur darkens its rim, noise lifts it, JPEG adds a grid."""
    luma = np.asarray(image, np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(luma - luma.mean()))))


def plot_degradations(lrs, scale, box=None):
    """The LR of one image under each degradation (`{name: LR}`, equal sizes), a crop of each at its own pixels
    above the spectrum of the whole LR, on one colour scale."""
    names = list(lrs)
    fig = Figure(figsize=(2.3 * len(names), 5.0), layout="constrained")
    axes = np.atleast_2d(fig.subplots(2, len(names)))
    spectra = {n: log_spectrum(lrs[n]) for n in names}
    top = max(float(np.percentile(s, 99.9)) for s in spectra.values())
    first = np.asarray(lrs[names[0]])
    top_left = box or crop_box(first.shape, (first.shape[0] // 2, first.shape[1] // 2), 64)
    y, x, size = top_left
    for column, name in enumerate(names):
        axes[0, column].imshow(np.asarray(lrs[name])[y : y + size, x : x + size], interpolation="nearest")
        axes[0, column].set_title(f"{name} LR x{scale}", fontsize=9)
        axes[1, column].imshow(spectra[name], cmap="magma", vmin=0, vmax=top)
        axes[1, column].set_title("spectrum (log)", fontsize=8)
        for ax in axes[:, column]:
            _hide_axes(ax)
    return fig


# Page widths of two-column SR papers (IEEE/CVF templates), in inches.
PAPER_WIDTHS = {"one-column": 3.3, "two-column": 6.9}
PAPER_FIGURE_FORMATS = ("pdf", "svg", "png")  # vector for LaTeX, or a 300 dpi raster


def paper_figure(
    hr: np.ndarray | None, outputs: dict, box: tuple, scores: dict | None = None, width: str = "two-column"
) -> tuple:
    """The SR-paper comparison figure: the full image with the crop box, then the same crop of every output, zoomed
    by repeating pixels, each with its name and PSNR/SSIM beneath. `outputs`: label -> HxWx3 uint8 (HR among them
    when wanted); text stays text in PDF/SVG. Returns (figure, {label: the crop shown})."""
    import matplotlib as mpl
    from matplotlib.patches import Rectangle

    top, left, size = box
    crops = {label: np.asarray(img)[top : top + size, left : left + size] for label, img in outputs.items()}
    columns = min(len(crops), 4 if width == "two-column" else 2)
    rows = -(-len(crops) // columns)
    page = PAPER_WIDTHS[width]
    crop_side = page * 0.62 / columns
    with mpl.rc_context({"pdf.fonttype": 42, "svg.fonttype": "none", "font.size": 7}):
        fig = Figure(figsize=(page, max(crop_side * rows * 1.25, page * 0.3) + 0.1), layout="constrained")
        grid = fig.add_gridspec(rows, columns + 2)
        whole = fig.add_subplot(grid[:, :2])
        whole.imshow(hr if hr is not None else next(iter(outputs.values())))
        whole.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor="red", lw=1))
        _hide_axes(whole)
        for k, (label, crop) in enumerate(crops.items()):
            ax = fig.add_subplot(grid[k // columns, 2 + k % columns])
            ax.imshow(crop, interpolation="nearest")
            score = (scores or {}).get(label) or {}
            numbers = " / ".join(f"{score[m]:.2f}" if m == "psnr" else f"{score[m]:.4f}" for m in score)
            ax.set_xlabel(label + (f"\n{numbers}" if numbers else ""), fontsize=7)
            _hide_axes(ax)
    return fig, crops
