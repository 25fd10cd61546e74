"""Image files in and out: every input becomes HxWx3 RGB (uint8, or uint16 for 16-bit PNGs), explicitly.

Pillow alone gets several cases wrong (16-bit RGB PNGs are read as 8-bit, 16-bit grey is clipped, RGBA loses
alpha without compositing), so 16-bit PNGs go through pypng and every mode conversion is spelled out here.
Writes go to a temporary file that is renamed into place, so an interrupted run never leaves a partial image.
"""

import os
import warnings
import zlib
from pathlib import Path

import numpy as np
import png
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import KitError
from .files import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
ALPHA_MODES = ("white", "drop")
# One budget for every decoder (Pillow and pypng), checked from the file's header before any pixel is decoded:
# Pillow's own decompression-bomb threshold (about 89 megapixels, e.g. 9400 x 9400), far above DIV2K (2040 x 1356).
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
EXIF_ORIENTATION = 0x0112


def list_images(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise KitError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _png_header(path):
    """(width, height, bit depth) from a PNG's IHDR, or None for other files."""
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 26:
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"), head[24]


def image_size(path):
    """(width, height) as read_image will return it (EXIF orientation applied), from the header only; the pixel
    budget applies."""
    path = Path(path)
    try:
        header = _png_header(path)
        if header is not None:
            _check_pixels(path, header[0], header[1])
            return header[0], header[1]
        with _open_pillow(path) as img:
            width, height = img.size
            if img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # orientations that swap width and height
                width, height = height, width
            return width, height
    except KitError:
        raise
    except FileNotFoundError:
        raise KitError(f"{path}: no such file") from None
    except Exception as exc:  # any decoder failure: an unreadable file, one line
        raise KitError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def _open_pillow(path):
    """Pillow's lazily opened image, within the pixel budget (checked from the header, before any decoding)."""
    with warnings.catch_warnings():  # _check_pixels says it in one line instead of Pillow's warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
    try:
        _check_pixels(path, *img.size)
    except KitError:
        img.close()
        raise
    return img


def _check_pixels(path, width, height):
    if width < 1 or height < 1:
        raise KitError(f"{path}: image has no pixels ({width}x{height})")
    if width * height > MAX_IMAGE_PIXELS:
        raise KitError(
            f"{path}: {width}x{height} is {width * height / 1e6:.0f} megapixels, more than the "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} the kit decodes; tile or crop it first"
        )


def _to_rgb(array, has_alpha, alpha, max_value):
    """HxW, HxWx1/2/3/4 -> HxWx3 of the same dtype; returns (rgb, note about what was done or None)."""
    note = None
    if array.ndim == 2:
        array = array[:, :, None]
    channels = array.shape[2]
    if has_alpha:
        colour, a = array[:, :, : channels - 1], array[:, :, channels - 1 :]
        if np.all(a == max_value):
            array = colour
        elif alpha == "drop":
            array, note = colour, "alpha channel dropped"
        else:
            blended = colour.astype(np.float64) * (a / max_value) + max_value * (1.0 - a / max_value)
            array, note = np.round(blended).astype(colour.dtype), "transparent pixels composited on white"
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
        note = "greyscale converted to RGB" if note is None else note + "; greyscale converted to RGB"
    return np.ascontiguousarray(array), note


def _read_png16(path, alpha):
    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    array = np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, planes)
    return _to_rgb(array, info["alpha"], alpha, 65535)


def read_image(path: str | os.PathLike, alpha: str = "white") -> tuple[np.ndarray, str | None]:
    """Read any supported image as HxWx3 RGB; returns (array, note). uint16 only for 16-bit PNGs.

    `alpha`: 'white' composites transparent pixels on white, 'drop' discards the alpha channel.
    Raises KitError naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    if alpha not in ALPHA_MODES:
        raise KitError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
    if not path.is_file():
        raise KitError(f"{path}: no such file")
    try:
        header = _png_header(path)
        if header is not None:
            _check_pixels(path, header[0], header[1])
        if header is not None and header[2] == 16:
            return _read_png16(path, alpha)
        with _open_pillow(path) as img:
            frames = getattr(img, "n_frames", 1)
            img.load()
            # Cameras store portrait photos as landscape plus an EXIF rotation; apply it as viewers do.
            rotated = img.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1)
            if rotated:
                img = ImageOps.exif_transpose(img)
            array, note = _pillow_to_rgb(path, img, alpha)
            notes = [
                n
                for n in (
                    note,
                    "EXIF orientation applied" if rotated else None,
                    f"first frame of {frames}" if frames > 1 else None,
                )
                if n
            ]
            return array, "; ".join(notes) or None
    except KitError:
        raise
    except UnidentifiedImageError:
        raise KitError(f"{path}: not an image file") from None
    except (OSError, SyntaxError, ValueError, png.Error, zlib.error, Image.DecompressionBombError) as exc:
        raise KitError(f"{path}: unreadable or truncated image ({exc})") from None
    except Exception as exc:  # a decoder failing in any other way is still an unreadable file, not a crash
        raise KitError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def _pillow_to_rgb(path, img, alpha):
    """A decoded Pillow image as HxWx3 RGB (uint16 for 16-bit modes); (array, note)."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.int64)
        return _to_rgb(np.clip(array, 0, 65535).astype(np.uint16), False, alpha, 65535)
    elif mode == "F":
        raise KitError(f"{path}: floating-point images are not supported")
    array = np.asarray(img)
    return _to_rgb(array, img.mode in ("RGBA", "LA"), alpha, 255)


def to_uint8(image):
    """An 8-bit copy of a uint8 or uint16 image (16-bit values scaled by 255/65535 and rounded, not wrapped)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if image.dtype != np.uint16:
        raise KitError(f"expected a uint8 or uint16 image, got {image.dtype}")
    return np.round(image / 257.0).astype(np.uint8)


def write_image(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write HxWx3 uint8 (any Pillow format) or uint16 (PNG only) atomically."""
    path = Path(path)
    ext = path.suffix.lower()
    if array.dtype == np.uint16:
        if ext != ".png":
            raise KitError(f"{path}: 16-bit output needs a .png file name")
        h, w, c = array.shape
        writer = png.Writer(width=w, height=h, greyscale=False, bitdepth=16)
        return atomic_write(path, lambda tmp: _write_png16(writer, tmp, array.reshape(h, w * c)))
    if array.dtype != np.uint8:
        raise KitError(f"{path}: cannot write {array.dtype} image")
    if ext not in IMAGE_EXTENSIONS:
        raise KitError(f"{path}: unknown image extension {ext!r}; use one of {', '.join(IMAGE_EXTENSIONS)}")
    fmt = Image.registered_extensions()[ext]
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format=fmt))


def _write_png16(writer, tmp, rows):
    with open(tmp, "wb") as f:
        writer.write(f, rows)
