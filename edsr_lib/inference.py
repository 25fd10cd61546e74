"""Super-resolving images with a loaded network: exact tiling and the x8 self-ensemble.

`upscale` quantises as the papers do (clamp, round). Tiles overlap by more than the network's receptive field and
only their valid centres are kept, so tiled and whole-image inference give the same result (EDSR-PyTorch's
quadrant `chop` does not) while memory stays bounded by the tile size.
"""

import os
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import KitError
from .images import IMAGE_EXTENSIONS, list_images, read_image, write_image
from .progress import progress_bar


def exact_windows(length, window, margin):
    """Window starts covering [0, length) so every position lies in some window's valid centre (its edges less
    `margin`, except at the image border). Requires window > 2 * margin or a single window."""
    if window >= length:
        return [0]
    return list(range(0, length - window, window - 2 * margin)) + [length - window]


def forward_windows(forward, x, scale, n_colors, window, margin):
    """`forward` (float32 NCHW -> NCHW `scale` times larger) run on windows of `window` (h, w) LR pixels that cover x,
    keeping from each only the pixels at least `margin` from its inner edges: with `margin` at least the network's
    receptive radius the result equals one whole-image run. The one tiling of the kit (checkpoints and exports)."""
    (win_h, win_w), (_, _, height, width) = window, x.shape
    out = np.empty((x.shape[0], n_colors, height * scale, width * scale), np.float32)
    for top in exact_windows(height, win_h, margin):
        for left in exact_windows(width, win_w, margin):
            sr = forward(x[:, :, top : top + win_h, left : left + win_w])
            y0, x0 = (0 if top == 0 else margin), (0 if left == 0 else margin)
            y1 = win_h if top + win_h >= height else win_h - margin
            x1 = win_w if left + win_w >= width else win_w - margin
            out[:, :, (top + y0) * scale : (top + y1) * scale, (left + x0) * scale : (left + x1) * scale] = sr[
                :, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale
            ]
    return out


def forward_tiled(model, x: np.ndarray, tile: int | None = None) -> np.ndarray:
    """Network output for a float32 NxCxHxW array on the [0, rgb_range] scale, computed `tile` LR pixels at a time
    (each tile read with the network's receptive radius around it, so the result is exact).

    `model` is a network (`model.EDSR`) or an exported one (`export.ExportedModel`): both have `forward_array`."""
    _, _, height, width = x.shape
    if not tile or (tile >= height and tile >= width):
        return model.forward_array(x)
    if tile < 1:
        raise KitError(f"tile must be a positive number of LR pixels, got {tile}")
    margin = model.arch.receptive_radius
    window = (min(height, tile + 2 * margin), min(width, tile + 2 * margin))
    return forward_windows(model.forward_array, x, model.arch.scale, model.arch.n_colors, window, margin)


# The published self-ensemble order: x, v, h, hv, t, tv, th, thv (v flips width, h flips height, t transposes),
# each transform applied to every earlier input.
def _dihedral_inputs(x):
    inputs = [x]
    for op in ("v", "h", "t"):
        inputs += [_transform(v, op) for v in inputs]
    return inputs


def _transform(x, op):
    if op == "v":
        return x[..., ::-1]
    if op == "h":
        return x[..., ::-1, :]
    return np.swapaxes(x, -1, -2)


def _undo(y, index):
    if index > 3:
        y = _transform(y, "t")
    if index % 4 > 1:
        y = _transform(y, "h")
    if index % 2 == 1:
        y = _transform(y, "v")
    return y


def forward_ensemble(model, x, tile=None):
    """Mean of the 8 dihedral outputs, each transformed back (before any quantisation)."""
    outputs = [_undo(forward_tiled(model, np.ascontiguousarray(v), tile), i) for i, v in enumerate(_dihedral_inputs(x))]
    return np.mean(np.stack(outputs), axis=0)


def upscale(model, image: np.ndarray, tile: int | None = None, self_ensemble: bool = False) -> np.ndarray:
    """HxWx3 uint8 (or uint16) RGB -> super-resolved image of the same dtype, clamped and rounded."""
    image = np.asarray(image)
    max_value = float(np.iinfo(image.dtype).max) if image.dtype in (np.uint8, np.uint16) else 255.0
    y = upscale_float(model, image, tile, self_ensemble)
    if not np.isfinite(y).all():  # clipping would turn them into a plausible-looking image
        raise KitError(
            "the network's output holds NaN or infinite values: its weights are broken (a diverged training run?)"
        )
    return np.round(np.clip(y, 0, max_value)).astype(image.dtype)


def upscale_float(model, image: np.ndarray, tile: int | None = None, self_ensemble: bool = False) -> np.ndarray:
    """HxWx3 uint8 (or uint16) RGB -> the network's float32 output on the image's 0-255 (0-65535) scale, before
    clamping and rounding (how an evaluation quantises it is one of the conventions that change PSNR)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != model.arch.n_colors or image.dtype not in (np.uint8, np.uint16):
        raise KitError(
            f"expected an HxWx{model.arch.n_colors} uint8 or uint16 image, got shape {image.shape} {image.dtype}"
        )
    max_value = float(np.iinfo(image.dtype).max)
    to_model = model.arch.rgb_range / max_value
    x = (image.astype(np.float32).transpose(2, 0, 1)[None] * np.float32(to_model)).astype(np.float32)
    y = forward_ensemble(model, x, tile) if self_ensemble else forward_tiled(model, x, tile)
    return y[0].transpose(1, 2, 0) / np.float32(to_model)


def _refuse_overwrites(pairs):
    """Never write over an input, and never map two inputs to one output (a.jpg and a.png both -> a.png)."""
    inputs = {src.resolve() for src, _ in pairs}
    outputs = {}
    for src, dst in pairs:
        if dst.resolve() in inputs:
            raise KitError(f"{dst}: the output would overwrite an input image; choose another output path")
        if dst.resolve() in outputs:
            raise KitError(f"{dst}: both {outputs[dst.resolve()]} and {src} would be written here")
        outputs[dst.resolve()] = src


def _png_if_16bit(dst, image, log):
    """16-bit images can only be written as PNG: in a folder their outputs become .png (a named file must be .png,
    which write_image checks)."""
    if image.dtype != np.uint16 or dst.suffix.lower() == ".png":
        return dst
    log(f"{dst.name}: 16-bit, written as {dst.with_suffix('.png').name}")
    return dst.with_suffix(".png")


def upscale_paths(
    model,
    source: str | os.PathLike,
    destination: str | os.PathLike,
    tile: int | None = None,
    self_ensemble: bool = False,
    alpha: str = "white",
    log: Callable[[str], object] = print,
    progress: str | bool = "auto",
) -> tuple[list[Path], list[Path]]:
    """File -> file, or every image of a folder -> a folder (same names). Returns (written, failed) paths."""
    source, destination = Path(source), Path(destination)
    if source.is_dir():
        if destination.exists() and not destination.is_dir():
            raise KitError(f"{destination}: input is a folder, so the output must be a folder too")
        if destination.exists() and destination.resolve() == source.resolve():
            raise KitError(
                f"{destination}: the output folder is the input folder, which would mix the results "
                "with the originals; choose another folder"
            )
        files = list_images(source)
        if not files:
            raise KitError(f"{source}: no images found")
        pairs = [
            (f, destination / (f.stem + (".png" if f.suffix.lower() in (".jpg", ".jpeg") else f.suffix))) for f in files
        ]
    else:
        target = destination / source.name if destination.is_dir() else destination
        pairs = [(source, target)]
    _refuse_overwrites(pairs)
    for _, dst in pairs:  # before any inference: a bad output name is found in a second, not after an hour
        if dst.suffix.lower() not in IMAGE_EXTENSIONS:
            raise KitError(f"{dst}: unknown image extension {dst.suffix!r}; use one of {', '.join(IMAGE_EXTENSIONS)}")
    if len(pairs) == 1:
        image, note = read_image(pairs[0][0], alpha=alpha)
        if note:
            log(f"{pairs[0][0]}: {note}")
        return [write_image(pairs[0][1], upscale(model, image, tile=tile, self_ensemble=self_ensemble))], []
    written, failed = [], []
    for src, dst in progress_bar(pairs, "upscale", progress, unit="img"):
        try:  # one bad file in a folder should not cost the others
            image, note = read_image(src, alpha=alpha)
            if note:
                log(f"{src}: {note}")
            dst = _png_if_16bit(dst, image, log)
            if dst in written:  # a 16-bit a.tif became a.png beside an a.png
                raise KitError(f"{dst}: already written from another input; {src} is skipped")
            written.append(write_image(dst, upscale(model, image, tile=tile, self_ensemble=self_ensemble)))
        except KitError as exc:
            log(f"error: {exc}")
            failed.append(src)
    return written, failed
