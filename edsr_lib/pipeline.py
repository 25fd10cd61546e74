"""The training input pipeline: aligned random patches, the 8 dihedral augmentations, MindSpore dataset wiring.

Every sample is a pure function of (seed, sample index), so a run resumed at iteration k draws exactly the patches
the uninterrupted run would have, and data-parallel shards split one index sequence between them.
"""

import numpy as np

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
    """

    def __init__(self, dataset, patch_size, length, seed=0, no_augment=False, rgb_range=255.0):
        self.dataset, self.patch_size, self.length = dataset, int(patch_size), int(length)
        self.seed, self.no_augment, self.rgb_range = int(seed), bool(no_augment), float(rgb_range)
        if self.patch_size % dataset.scale:
            raise KitError(f"patch_size {patch_size} is not a multiple of scale {dataset.scale}")

    def __len__(self):
        return self.length

    def sample(self, index):
        rng = np.random.default_rng([self.seed, int(index)])
        lr, hr = self.dataset.pair(int(rng.integers(len(self.dataset))))
        lr, hr = random_patch(lr, hr, self.patch_size, self.dataset.scale, rng)
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
    import mindspore.dataset as ds

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
