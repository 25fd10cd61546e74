import numpy as np
import pytest

from edsr_lib.data import ArrayCache, HRFolder
from edsr_lib.errors import KitError
from edsr_lib.pipeline import PatchSource, augment, random_patch, train_dataset
from PIL import Image


@pytest.fixture
def folder_dataset(tmp_path, rng):
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40 + i, 36, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    return HRFolder(tmp_path, 2, cache=ArrayCache(tmp_path / "cache"))


def test_patches_are_aligned(folder_dataset, rng):
    lr, hr = folder_dataset.pair(0)
    for _ in range(20):
        lp, hp = random_patch(lr, hr, 24, 2, rng)
        assert lp.shape == (12, 12, 3) and hp.shape == (24, 24, 3)
        # find the patch in the LR image and check the HR patch is the matching region
        ys, xs = np.where((np.asarray(lr)[:, :, 0] == lp[0, 0, 0]))
        assert any(
            (
                np.asarray(hr)[2 * y : 2 * y + 24, 2 * x : 2 * x + 24].shape == hp.shape
                and np.array_equal(np.asarray(hr)[2 * y : 2 * y + 24, 2 * x : 2 * x + 24], hp)
                and np.array_equal(np.asarray(lr)[y : y + 12, x : x + 12], lp)
            )
            for y, x in zip(ys, xs, strict=True)
        )


def test_eight_augmentations_are_the_dihedral_group(rng):
    a = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    results = {augment([a], *flags)[0].tobytes() for flags in np.ndindex(2, 2, 2)}
    expected = {np.ascontiguousarray(np.rot90(t, k)).tobytes() for t in (a, a.transpose(1, 0, 2)) for k in range(4)}
    assert results == expected and len(results) == 8


def _orientation(patch, images):
    """Which transform T of the 8 (0: none) makes the HR `patch` (HxWx3) a plain crop of one of `images`; None when
    none does. Distinct orientations of the patch give distinct T (the transforms form a group)."""
    size = patch.shape[0]
    for k, flags in enumerate(np.ndindex(2, 2, 2)):
        (candidate,) = augment([patch], *flags)
        for image in images:
            windows = np.lib.stride_tricks.sliding_window_view(image, (size, size, 3))[:, :, 0]
            if (windows == candidate).all(axis=(2, 3, 4)).any():
                return k
    return None


def test_training_patches_are_augmented_unless_no_augment(folder_dataset):
    images = [np.asarray(folder_dataset.hr(i)) for i in range(len(folder_dataset))]
    seen = {}
    for no_augment in (False, True):
        src = PatchSource(folder_dataset, 24, length=64, seed=5, no_augment=no_augment)
        seen[no_augment] = [_orientation(src.sample(i)[1], images) for i in range(64)]
    assert None not in seen[False] and None not in seen[True]  # every patch is a transformed crop of an image
    assert set(seen[True]) == {0}  # no_augment: crops as they are
    assert len(set(seen[False])) == 8  # all eight orientations are drawn (64 draws of 1/8 each)


def test_samples_are_deterministic_per_seed_and_index(folder_dataset):
    src = PatchSource(folder_dataset, 24, length=200, seed=3)
    lr1, hr1 = src[17]
    lr2, hr2 = PatchSource(folder_dataset, 24, length=200, seed=3)[17]
    np.testing.assert_array_equal(hr1, hr2)
    assert lr1.shape == (3, 12, 12) and hr1.dtype == np.float32
    assert not np.array_equal(src[18][1], hr1)
    with pytest.raises(KitError, match="multiple of scale"):
        PatchSource(folder_dataset, 25, length=1)


def test_mindspore_dataset_resume_and_shards(folder_dataset):
    src = PatchSource(folder_dataset, 24, length=32, seed=1)
    full = [b["hr"] for b in train_dataset(src, 4).create_dict_iterator(output_numpy=True)]
    assert len(full) == 8
    resumed = [b["hr"] for b in train_dataset(src, 4, start_index=12).create_dict_iterator(output_numpy=True)]
    for a, b in zip(full[3:], resumed, strict=True):  # a short resume must fail
        np.testing.assert_array_equal(a, b)
    shard0 = [b["hr"] for b in train_dataset(src, 2, num_shards=2, shard_id=0).create_dict_iterator(output_numpy=True)]
    shard1 = [b["hr"] for b in train_dataset(src, 2, num_shards=2, shard_id=1).create_dict_iterator(output_numpy=True)]
    together = np.concatenate([np.concatenate(shard0), np.concatenate(shard1)])
    assert len(together) == 32
    assert {x.tobytes() for x in together} == {x.tobytes() for x in np.concatenate(full)}
