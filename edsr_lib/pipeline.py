"""The training input pipeline: aligned random patches, the 8 dihedral augmentations, MindSpore dataset wiring.

Every sample is a pure function of (seed, sample index), so a run resumed at iteration k draws exactly the patches
the uninterrupted run would have, and data-parallel shards split one index sequence between them.
"""

import numpy as np

from .degradations import modcrop
from .errors import KitError


def random_patch(lr, hr, patch_size, scale, rng):
    """Aligned crops: an LR patch of patch_size // scale and the HR patch it came from."""
    lp = patch_size // scale
    h, w = lr.shape[:2]
    if h < lp or w < lp:
        raise KitError(f"image {w}x{h} (LR) smaller than the LR patch {lp}x{lp}")
    y, x = int(rng.integers(0, h - lp + 1)), int(rng.integers(0, w - lp + 1))
    return lr[y : y + lp, x : x + lp], hr[y * scale : (y + lp) * scale, x * scale : (x + lp) * scale]


def augment(arrays, hflip, vflip, rot90):
    """EDSR-PyTorch's augmentation: flip width, flip height, transpose (each applied to every array)."""
    out = []
    for a in arrays:
        if hflip:
            a = a[:, ::-1]
        if vflip:
            a = a[::-1]
        if rot90:
            a = a.transpose(1, 0, 2)
        out.append(a)
    return out


class PatchSource:
    """Random-access source for `mindspore.dataset.GeneratorDataset`: index -> (lr, hr) float32 CHW patches.

    `length` is the number of samples the run will draw (epochs * iterations per epoch * batch size), so
    sample k always uses image and crop drawn from a generator seeded with (seed, k).

    Several scales (MDSR): `dataset` is {scale: dataset} and `patch_size` {scale: HR patch size}. Every training
    step uses one scale for its whole batch (EDSR-PyTorch's multi-scale training), drawn from (seed, step), where
    step = index // samples_per_step (the global batch); so the scale of a step is known on every rank and on resume.
    """

    def __init__(self, dataset, patch_size, length, seed=0, no_augment=False, rgb_range=255.0, samples_per_step=1):
        self.datasets = dict(dataset) if isinstance(dataset, dict) else {dataset.scale: dataset}
        sizes = patch_size if isinstance(patch_size, dict) else {s: patch_size for s in self.datasets}
        self.patch_sizes = {s: int(sizes[s]) for s in self.datasets}
        self.scales = tuple(self.datasets)
        self.dataset = self.datasets[self.scales[0]]
        self.length, self.samples_per_step = int(length), int(samples_per_step)
        self.seed, self.no_augment, self.rgb_range = int(seed), bool(no_augment), float(rgb_range)
        for scale, size in self.patch_sizes.items():
            if size % scale:
                raise KitError(f"patch_size {size} is not a multiple of scale {scale}")

    def __len__(self):
        return self.length

    def scale_of_step(self, step):
        """The scale training step `step` uses (always the one scale of a single-scale source)."""
        if len(self.scales) == 1:
            return self.scales[0]
        return self.scales[
            int(np.random.default_rng([self.seed, int(step), len(self.scales)]).integers(len(self.scales)))
        ]

    def sample(self, index):
        rng = np.random.default_rng([self.seed, int(index)])
        scale = self.scale_of_step(int(index) // self.samples_per_step)
        dataset = self.datasets[scale]
        image = int(rng.integers(len(dataset)))
        degradation = getattr(dataset, "degradation", None)  # any object with pair(i) is a dataset here
        if degradation is not None and degradation.per_sample:
            # A new LR for every sample, made from its HR patch (the realistic degradation, as Real-ESRGAN trains).
            hr = modcrop(np.asarray(dataset.hr(image)), scale)
            lr_shape = np.empty((hr.shape[0] // scale, hr.shape[1] // scale, 0), np.uint8)
            _, hr = random_patch(lr_shape, hr, self.patch_sizes[scale], scale, rng)
            lr = degradation.sample_lr(hr, scale, index)
        else:
            lr, hr = random_patch(*dataset.pair(image), self.patch_sizes[scale], scale, rng)
        if not self.no_augment:
            hflip, vflip, rot90 = rng.random(3) < 0.5
            lr, hr = augment((lr, hr), hflip, vflip, rot90)
        return lr, hr

    def __getitem__(self, index):
        lr, hr = self.sample(index)
        k = np.float32(self.rgb_range / 255.0)
        return (
            np.ascontiguousarray(lr.transpose(2, 0, 1), np.float32) * k,
            np.ascontiguousarray(hr.transpose(2, 0, 1), np.float32) * k,
        )


def train_dataset(source, batch_size, start_index=0, num_shards=None, shard_id=None, num_workers=1):
    """Batched `mindspore.dataset` over `source`, beginning at sample `start_index` (for exact resume).

    With `num_shards`, each shard reads a disjoint 1/num_shards of the samples (MindSpore DistributedSampler).
    """
    from .backend import ms

    ds = ms.dataset

    class _Shifted:
        def __init__(self, count, offset):
            self.count, self.offset = count, offset

        def __len__(self):
            return self.count

        def __getitem__(self, i):
            return source[self.offset + i]

    shards = num_shards or 1
    remaining = len(source) - start_index
    view = _Shifted(remaining - remaining % (batch_size * shards), start_index)
    sampler = ds.DistributedSampler(shards, shard_id or 0, shuffle=False) if shards > 1 else None
    data = ds.GeneratorDataset(
        view,
        ["lr", "hr"],
        shuffle=False if sampler is None else None,
        sampler=sampler,
        num_parallel_workers=num_workers,
        python_multiprocessing=num_workers > 1,
    )
    return data.batch(batch_size, drop_remainder=True)
