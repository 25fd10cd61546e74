"""What notebooks 03-05 call to find a checkpoint: the one notebook 02 trained, or the ones under outputs/."""

import os
from collections.abc import Iterable
from pathlib import Path


# Where notebook 02 leaves its best model with its default parameters, relative to the folder the notebooks run in.
NOTEBOOK_02_CHECKPOINT = Path("outputs/02_train/ckpt/best.ckpt")


def default_checkpoint(
    checkpoint: str | os.PathLike = "", trained: str | os.PathLike = NOTEBOOK_02_CHECKPOINT
) -> tuple[str | None, str]:
    """(checkpoint or None, one sentence saying which and why) for notebooks 03-05: `checkpoint` when given, else
    the best one notebook 02 trained when it exists, else None and how to get one."""
    if checkpoint:
        return str(checkpoint), f"checkpoint: {checkpoint}"
    if Path(trained).is_file():
        return str(trained), f"checkpoint: {trained} (trained by 02_train.ipynb; set `checkpoint` to use another)"
    return None, (
        f"no checkpoint yet: {trained} is made by 02_train.ipynb (a few minutes on a CPU); run it first, "
        "or set `checkpoint` to a kit .ckpt, a published EDSR-PyTorch .pt or a ModelZoo .ckpt"
    )


def find_checkpoints(root: str | os.PathLike = "outputs", exclude: Iterable = ()) -> dict[str, Path]:
    """Kit checkpoints under `root` (e.g. every run notebook 02 or `edsr train` left there), by a short name
    (`02_train/ckpt/best`), for a notebook to offer; not loaded, so listing is cheap. `exclude`: paths to leave out."""
    root, skip = Path(root), {Path(p).resolve() for p in exclude if p}
    if not root.is_dir():
        return {}
    found = sorted(p for p in root.rglob("*.ckpt") if not p.name.startswith(".") and p.resolve() not in skip)
    return {str(p.relative_to(root).with_suffix("")): p for p in found}
