"""Ready networks from a checkpoint path or a published weights name: the edge where names are resolved
(`pretrained.Registry`, which may download) before files are read (`weights`, file formats only).

`load_model` is what notebooks and scripts call; the CLI resolves names itself first, with its mirror and offline
flags, and passes paths.
"""

import os
from typing import cast

from .errors import KitError
from .model import EDSR, Architecture, build_model, load_state
from .pretrained import Registry
from .runtime import current_device
from .weights import read_checkpoint


def checkpoint_path(path_or_name: str | os.PathLike) -> str | os.PathLike:
    """A checkpoint file for a path or a weights name (`edsr weights list`; a published one is downloaded and
    converted on first use). A path is returned as it is: `read_checkpoint` says what is wrong with it."""
    return Registry().resolve(path_or_name)


def choose_scale(
    path: str | os.PathLike, arch: Architecture, scale: int | None = None, default_scale: int | None = None
) -> int:
    """The scale to run `arch` at: an EDSR's own (`scale`, when given, must equal it); for an MDSR, `scale`, else
    `default_scale` (a notebook's `scale` parameter), which must be one of its scales. Errors name the checkpoint and
    what it offers."""
    offered = ", ".join(f"x{s}" for s in arch.scales)
    if arch.is_multiscale:
        scale = default_scale if scale is None else scale
        if scale is None:
            raise KitError(f"{path} is an MDSR for {offered}: choose one with --scale (scale=...)")
        if scale not in arch.scales:
            raise KitError(f"{path} is an MDSR for {offered}, not x{scale}")
        return int(scale)
    if scale is not None and scale != arch.scale:
        raise KitError(f"{path} is an x{arch.scale} model but scale {scale} was asked for")
    return arch.scale


def load_model(
    path: str | os.PathLike,
    res_scale: float | None = None,
    conv_kernel: str = "auto",
    into: EDSR | None = None,
    scale: int | None = None,
    default_scale: int | None = None,
    ema: bool = True,
) -> EDSR:
    """The ready network (inference mode) at one scale from any supported checkpoint; run it with
    `model.forward_array` or `inference.upscale`. conv_kernel as in `model.build_model` (exports ask for "stock").
    `scale`: required for an MDSR (one of its scales); for an EDSR, optional and checked. `default_scale`: the
    MDSR's scale when `scale` is not given; an EDSR ignores it (notebooks pass their `scale` parameter).
    `path`: a checkpoint file or a weights name (`checkpoint_path`).
    `ema`: a training checkpoint's EMA weights when it has them (ema_decay), else its raw weights.

    into: a network of the same architecture to load the weights into instead of building one. It keeps its
    compiled graph, and MindSpore 2.10 never frees a compiled network, so going through many checkpoints in one
    process should reuse one network this way."""
    current_device()
    path = checkpoint_path(path)
    arch, weights, _ = read_checkpoint(path, res_scale, ema=ema)
    scale = choose_scale(path, arch, scale, default_scale)
    if into is not None and into.arch != arch.at_scale(scale):
        raise KitError(f"{path}: architecture {arch.to_dict()} differs from the network's {into.arch.to_dict()}")
    if into is None:
        network = build_model(arch, conv_kernel)
    else:
        network = cast(EDSR, getattr(into, "network", into))  # an MDSR's one-scale view holds the whole network
    try:
        load_state(network, weights)
    except KitError as exc:
        raise KitError(f"{path}: {exc}") from None
    network.set_train(False)
    return network.at_scale(scale)


def init_from_checkpoint(model: EDSR, path: str | os.PathLike) -> list[str]:
    """Initialise `model` from any checkpoint (or weights name) for fine-tuning; tail tensors of another scale are
    skipped."""
    path = checkpoint_path(path)
    arch, weights, _ = read_checkpoint(path)
    try:
        return load_state(model, weights, skip_mismatched_tail=arch.scale != model.arch.scale)
    except KitError as exc:
        raise KitError(f"{path}: {exc}") from None
