"""What data-parallel ranks share and compare: exact float64 sums across ranks, parameter checksums and digests,
and the all-rank agreement check every run ends with. The group itself is joined in `runtime.init_distributed`."""

import hashlib

import numpy as np

from .backend import Tensor, ops


def split_float64(values):
    """float64 values within float32's exponent range (PSNR, SSIM) as three float32 parts whose float64 sum is each
    value exactly (53 mantissa bits in 3 x 24); an infinite PSNR travels in the first part. Summed over ranks that
    send zeros elsewhere, the values arrive exact."""
    values = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore"):
        high = values.astype(np.float32)
        rest = np.where(np.isfinite(values), values - high.astype(np.float64), 0.0)
    middle = rest.astype(np.float32)
    low = (rest - middle.astype(np.float64)).astype(np.float32)
    return np.stack([high, middle, low], axis=-1)


def join_float64(parts):
    """The inverse of split_float64."""
    parts = np.asarray(parts).astype(np.float64)
    return parts[..., 0] + parts[..., 1] + parts[..., 2]


def sum_over_ranks(values):
    """float64 `values` summed over all ranks exactly (MindSpore's CPU AllReduce takes float32 only)."""
    return join_float64(ops.AllReduce()(Tensor(split_float64(values))).asnumpy())


def param_checksum(model):
    """Sum of every parameter as float64: equal on all ranks of a correct data-parallel run."""
    return float(sum(p.asnumpy().astype(np.float64).sum() for p in model.get_parameters()))


def param_digest(model):
    """SHA-256 of every parameter's bytes in order: equal on two ranks only if every weight is bit-identical.
    `model`: a network, or a sequence of Parameters (e.g. the EMA's)."""
    digest = hashlib.sha256()
    for p in model.get_parameters() if hasattr(model, "get_parameters") else model:
        digest.update(p.name.encode())
        digest.update(np.ascontiguousarray(p.asnumpy()).tobytes())
    return digest.hexdigest()


def all_ranks_agree(model, world):
    """Every parameter's sum gathered from all `world` ranks and compared, so each server learns whether all ranks
    hold the same weights even without a shared output folder. Also a barrier: every rank leaves it together."""
    sums = np.array([p.asnumpy().sum(dtype=np.float32) for p in model.get_parameters()], np.float32)
    everyone = ops.AllGather()(Tensor(sums)).asnumpy().reshape(world, -1)  # (MAX/MIN: not on CPU)
    return bool((everyone == everyone[0]).all())
