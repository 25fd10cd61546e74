"""Figures as matplotlib `Figure` objects (no pyplot state): shown inline by notebooks, saved as PNG by the kit."""
import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .images import atomic_write


def figure_png(fig, dpi=110):
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, bbox_inches="tight", format="png")
    return buffer.getvalue()


def save_figure(fig, path, dpi=110):
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix[1:]))
    return Path(path)


def plot_history(history, title="training"):
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


def show(fig, path):
    """Save `fig` as PNG and return it as an IPython image: the notebook shows exactly the file it saved, in
    JupyterLab and in headless papermill runs alike."""
    from IPython.display import Image

    return Image(filename=str(save_figure(fig, path)))


def show_image(path):
    """An image file as an IPython image (for files the kit wrote, e.g. lossless PNG comparisons)."""
    from IPython.display import Image

    return Image(filename=str(path))


def markdown_table(rows, columns=None):
    """A Markdown table (for `IPython.display.Markdown`) from a dict or a list of dicts."""
    if isinstance(rows, dict):
        rows, columns = [{"name": k, "value": v} for k, v in rows.items()], ["name", "value"]
    columns = columns or list(rows[0])

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


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
        axes[0, k].set_title("".join(n for n, on in (("h", hflip), ("v", vflip), ("t", rot90)) if on) or "id",
                             fontsize=9)
        _hide_axes(axes[0, k])
        _hide_axes(axes[1, k])
    axes[0, 0].set_ylabel("HR")
    axes[1, 0].set_ylabel("LR")
    fig.tight_layout()
    return fig


def error_map(sr, hr):
    """Mean absolute error over RGB per pixel, 0-255 scale."""
    return np.abs(sr.astype(np.float32) - hr.astype(np.float32)).mean(axis=2)


def plot_error_maps(hr, candidates, vmax=40):
    """|candidate - HR| per pixel for each named candidate image, on a shared colour scale."""
    fig = Figure(figsize=(4.2 * len(candidates), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(candidates)))
    for ax, (name, sr) in zip(axes, candidates.items()):
        im = ax.imshow(error_map(sr, hr), cmap="inferno", vmin=0, vmax=vmax)
        ax.set_title(f"{name}: mean |error| {error_map(sr, hr).mean():.2f}")
        _hide_axes(ax)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="|error| (0-255)")
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


def crop_box(shape, center, size):
    """(top, left, size) of a square crop of `size` pixels around `center` (y, x), kept inside `shape`."""
    size = int(min(size, shape[0], shape[1]))
    top = int(np.clip(center[0] - size // 2, 0, shape[0] - size))
    left = int(np.clip(center[1] - size // 2, 0, shape[1] - size))
    return top, left, size


def plot_comparison(hr, candidates, box, scores=None, title=""):
    """Full HR image with the crop marked, then the same crop of HR and every candidate, scores in the titles."""
    from matplotlib.patches import Rectangle

    top, left, size = box
    panels = {"HR": hr, **candidates}
    fig = Figure(figsize=(3.2 * (len(panels) + 1.4), 3.6))
    axes = fig.subplots(1, len(panels) + 1, gridspec_kw={"width_ratios": [1.4] + [1] * len(panels)})
    axes[0].imshow(hr)
    axes[0].add_patch(Rectangle((left, top), size, size, fill=False, edgecolor="yellow", lw=2))
    axes[0].set_title(title or "HR (crop marked)")
    for ax, (name, img) in zip(axes[1:], panels.items()):
        ax.imshow(img[top : top + size, left : left + size], interpolation="nearest")
        score = (scores or {}).get(name)
        ax.set_title(name + (f"\n{score[0]:.2f} dB / {score[1]:.4f}" if score else ""), fontsize=10)
    for ax in axes:
        _hide_axes(ax)
    fig.tight_layout()
    return fig


def before_after(before, after, split):
    """One lossless image: `before` left of column `split`, `after` right of it, with a 1-px white divider."""
    out = after.copy()
    out[:, :split] = before[:, :split]
    if 0 < split < out.shape[1]:
        out[:, split] = 255
    return out


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
