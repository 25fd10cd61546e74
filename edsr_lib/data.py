"""Datasets: one class per layout, all giving (LR, HR) uint8 HxWx3 pairs by index, decoded once and cached.

Layouts: DIV2K (official folders), benchmarks in the EDSR-PyTorch `benchmark/<name>/HR|LR_bicubic/X{s}` layout,
any folder of HR images (LR made with MATLAB bicubic), and the built-in sample photos that ship with scikit-image.
Decoded images are cached as `.npy` files keyed by path, size and modification time, and memory-mapped, so
training never decodes a PNG per step and an edited source file is noticed.
"""

import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np

from .errors import KitError
from .files import atomic_write, user_cache_dir
from .images import image_size, list_images, read_image, to_uint8
from .degradations import Degradation
from .metrics import BENCHMARKS

SAMPLE_TRAIN = ("astronaut.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "ihc.png")
SAMPLE_TEST = ("chelsea.png", "camera.png", "coins.png")


class ArrayCache:
    """Decoded images as memory-mapped .npy files, keyed so that a changed source file is re-decoded."""

    def __init__(self, root=None):
        self.root = Path(root) if root else user_cache_dir()

    def _key(self, path, kind):
        st = Path(path).stat()
        ident = f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}|{kind}"
        return self.root / f"{Path(path).stem}-{kind}-{hashlib.sha1(ident.encode()).hexdigest()[:16]}.npy"

    def get(self, path, kind, make):
        """The cached array for (path, kind), computing it with make() on a miss."""
        target = self._key(path, kind)
        if target.is_file():
            try:
                return np.load(target, mmap_mode="r")
            except (ValueError, OSError):
                target.unlink(missing_ok=True)  # a damaged entry is rebuilt
        array = np.ascontiguousarray(make())
        atomic_write(target, lambda tmp: np.save(tmp, array))
        return np.load(target, mmap_mode="r")


def _read_rgb8(path):
    return to_uint8(read_image(path)[0])  # 16-bit sources are trained on at 8 bits, as every SR benchmark is


class PairDataset:
    """Common interface: len(ds), ds.names, ds.pair(i) -> (lr, hr) uint8 arrays, hr = lr size * scale."""

    def __init__(self, name, scale, items, cache=None, min_lr_size=0, on_error="raise", degradation=None):
        """items: list of (image name, HR path, LR path or None to make LR from HR).

        `degradation` (a `degradations.Degradation`, default bicubic) makes the LR images that are not on disk; any
        degradation but bicubic ignores LR files (they are the bicubic ones) and makes every LR from its HR.
        """
        if on_error not in ("raise", "skip"):
            raise KitError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.name, self.scale, self.cache = name, int(scale), cache or ArrayCache()
        self.on_error, self.min_lr_size = on_error, min_lr_size
        self.degradation = degradation or Degradation()
        if self.degradation.kind != "bicubic":
            items = [(item[0], item[1], None) for item in items]
        self._items = []
        for item in items:
            problem = self._check(item)
            if problem is None:
                self._items.append(item)
            elif on_error == "skip":
                warnings.warn(f"skipping {problem}", stacklevel=2)
            else:
                raise KitError(problem)
        if not self._items:
            raise KitError(f"dataset {name}: no usable images")

    def _check(self, item):
        """A one-line problem with this pair, judged from file headers (no decoding), or None."""
        name, hr_path, lr_path = item
        if not Path(hr_path).is_file():
            return f"{hr_path}: HR image missing"
        if lr_path is not None and not Path(lr_path).is_file():
            return f"{lr_path}: LR image missing for {hr_path}"
        s = self.scale
        hw, hh = image_size(hr_path)
        lw, lh = image_size(lr_path) if lr_path is not None else (hw // s, hh // s)
        if lr_path is not None and not (0 <= hw - lw * s < s and 0 <= hh - lh * s < s):
            return f"{lr_path}: LR size {lw}x{lh} does not match HR {hr_path} ({hw}x{hh}) at scale x{s}"
        if min(lw, lh) < max(self.min_lr_size, 1):
            return f"{hr_path}: too small ({lw}x{lh} LR pixels at x{s}, need {max(self.min_lr_size, 1)})"
        return None

    def __len__(self):
        return len(self._items)

    @property
    def names(self):
        return [item[0] for item in self._items]

    def folders(self):
        """The folders the dataset's image files are in: what an output must never be written into."""
        return sorted({Path(path).parent for _, *paths in self._items for path in paths if path is not None})

    def hr(self, index):
        """The whole HR image (not mod-cropped)."""
        hr_path = self._items[index][1]
        return self.cache.get(hr_path, "hr", lambda: _read_rgb8(hr_path))

    def pair(self, index):
        name, hr_path, lr_path = self._items[index]
        s = self.scale
        hr = self.hr(index)
        if lr_path is None:
            make = lambda: self.degradation.image_lr(np.asarray(hr), s, name)  # noqa: E731
            lr = self.cache.get(hr_path, self.degradation.cache_kind(s), make)
        else:
            lr = self.cache.get(lr_path, "lr", lambda: _read_rgb8(lr_path))
        h, w = lr.shape[:2]
        return lr, hr[: h * s, : w * s]

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, x{self.scale}, {len(self)} images)"


class HRFolder(PairDataset):
    """Any folder of HR images; LR made with MATLAB bicubic on the fly and cached."""

    def __init__(self, folder, scale, name=None, **kwargs):
        files = list_images(folder)
        if not files:
            raise KitError(f"{folder}: no images found")
        super().__init__(name or Path(folder).name, scale, [(f.stem, f, None) for f in files], **kwargs)


class BenchmarkDataset(PairDataset):
    """Set5/Set14/B100/Urban100/Manga109 in EDSR-PyTorch's `benchmark/<name>/HR` + `LR_bicubic/X{s}` layout.

    Without an LR folder the LR images are made from HR with MATLAB bicubic, exactly as the originals were.
    """

    def __init__(self, root, name, scale, **kwargs):
        root = Path(root)
        hr_dir, lr_dir = root / "HR", root / "LR_bicubic" / f"X{scale}"
        if not hr_dir.is_dir():
            raise KitError(f"{root}: expected an HR folder (benchmark/{name}/HR)")
        files = list_images(hr_dir)
        use_lr = lr_dir.is_dir()
        items = [(f.stem, f, (lr_dir / f"{f.stem}x{scale}{f.suffix}") if use_lr else None) for f in files]
        super().__init__(name, scale, items, **kwargs)


def parse_data_range(data_range):
    """'1-800/801-810' -> ((1, 800), (801, 810)); '1-800' -> ((1, 800), None)."""
    parts = str(data_range).split("/")
    ranges = []
    for part in parts:
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", part)
        if not m or int(m.group(1)) > int(m.group(2)) or len(parts) > 2:
            raise KitError(f"data_range must look like '1-800/801-810', got {data_range!r}")
        ranges.append((int(m.group(1)), int(m.group(2))))
    return ranges[0], (ranges[1] if len(ranges) > 1 else None)


class DIV2K(PairDataset):
    """DIV2K in its official layout under `root` (DIV2K_train_HR, DIV2K_train_LR_bicubic/X2/0001x2.png, ..._valid_*).

    `index_range` is inclusive, e.g. (1, 800) or (801, 810); images 801-900 are looked up in the valid folders
    (or in the train folders, where EDSR-PyTorch users often put them). `track`: which official LR folders to read,
    'bicubic' or 'unknown' (NTIRE 2017's two tracks).
    """

    def __init__(self, root, scale, index_range, track="bicubic", **kwargs):
        root = Path(root)
        if not root.is_dir():
            raise KitError(f"{root}: DIV2K folder not found")
        if track not in ("bicubic", "unknown"):
            raise KitError(f"DIV2K track must be 'bicubic' or 'unknown', got {track!r}")
        items = []
        for i in range(index_range[0], index_range[1] + 1):
            stem = f"{i:04d}"
            splits = ("valid", "train") if i > 800 else ("train", "valid")
            hr = next(
                (
                    root / f"DIV2K_{sp}_HR" / f"{stem}.png"
                    for sp in splits
                    if (root / f"DIV2K_{sp}_HR" / f"{stem}.png").is_file()
                ),
                root / f"DIV2K_{splits[0]}_HR" / f"{stem}.png",
            )
            split = hr.parent.name.split("_")[1]
            lr = root / f"DIV2K_{split}_LR_{track}" / f"X{scale}" / f"{stem}x{scale}.png"
            items.append((stem, hr, lr))
        super().__init__(f"DIV2K {index_range[0]}-{index_range[1]}", scale, items, **kwargs)


def sample_folder():
    import skimage.data

    return Path(skimage.data.__file__).parent


class SampleImages(PairDataset):
    """Built-in sample photos (public domain, shipped inside scikit-image): 5 for training, 3 held out."""

    def __init__(self, scale, split="train", **kwargs):
        if split not in ("train", "test"):
            raise KitError(f"sample split must be 'train' or 'test', got {split!r}")
        folder = sample_folder()
        names = SAMPLE_TRAIN if split == "train" else SAMPLE_TEST
        items = [(Path(n).stem, folder / n, None) for n in names]
        super().__init__(f"sample-{split}", scale, items, **kwargs)


def open_dataset(
    spec: str | os.PathLike,
    scale: int,
    dir_data: str | os.PathLike = "",
    split: str = "test",
    data_range: str = "1-800/801-810",
    **kwargs,
) -> PairDataset:
    """A dataset from a name (`sample`, `DIV2K`, `Set5`, ...) or a folder path, as the MindSpore ModelZoo EDSR's
    options name them.

    Benchmarks are looked up as `dir_data/benchmark/<name>` (EDSR-PyTorch layout), then `dir_data/<name>`
    (either layout or a plain HR folder).
    """
    spec = str(spec)
    data_root = Path(dir_data or ".")
    if spec.lower() == "sample":
        return SampleImages(scale, split, **kwargs)
    if spec.upper() == "DIV2K":
        train_range, test_range = parse_data_range(data_range)
        chosen = train_range if split == "train" else (test_range or train_range)
        div2k = data_root / "DIV2K" if (data_root / "DIV2K").is_dir() else data_root
        return DIV2K(div2k, scale, chosen, **kwargs)
    if spec in BENCHMARKS or spec.lower() in {b.lower() for b in BENCHMARKS}:
        name = next(b for b in BENCHMARKS if b.lower() == spec.lower())
        for root in (data_root / "benchmark" / name, data_root / name):
            if (root / "HR").is_dir():
                return BenchmarkDataset(root, name, scale, **kwargs)
            if root.is_dir():
                return HRFolder(root, scale, name=name, **kwargs)
        raise KitError(f"benchmark {name} not found under {data_root} (looked for benchmark/{name} and {name})")
    path = Path(spec) if Path(spec).is_dir() else data_root / spec
    if path.is_dir():
        if (path / "HR").is_dir():
            return BenchmarkDataset(path, path.name, scale, **kwargs)
        return HRFolder(path, scale, **kwargs)
    raise KitError(f"dataset {spec!r}: not a known name (sample, DIV2K, {', '.join(BENCHMARKS)}) or a folder")
