"""Checkpoints: the kit's own format, published EDSR-PyTorch `.pt` files and MindSpore ModelZoo `.ckpt` files.

A kit checkpoint is a MindSpore checkpoint whose parameters carry the published names, plus an `edsr_arch` JSON
string recording the architecture, so loading needs no flags. Training checkpoints add the optimizer's and loss
scaler's state (`training_state` here) and the loop's (trainer.py) under other names; `read_checkpoint` returns the
model part and the rest separately.
"""

import json
import os
import uuid
import zipfile
from pathlib import Path

import numpy as np

from .backend import ms
from .errors import KitError, write_error
from .runtime import mindspore_log_silenced
from .files import check_output_file
from .model import Architecture, build_model, check_size, load_state, mean_shift_values, upsampling_factors
from .torch_pickle import load_torch_state_dict

ARCH_KEY = "edsr_arch"
MODEL_PREFIXES = ("sub_mean.", "add_mean.", "head.", "body.", "tail.", "pre_process.", "upsample.")


def default_res_scale(n_feats):
    """The published rule: the wide (256-feature) model was trained with res_scale 0.1."""
    return 0.1 if n_feats == 256 else 1.0


def _upsampler_scale(weights, prefix, n_feats):
    """The factor of the upsampler whose conv weights are `prefix`<i>.weight (x2 and x3 stages multiply)."""
    scale = 1
    for key in sorted(k for k in weights if k.startswith(prefix) and k.endswith(".weight")):
        scale *= int(round(np.sqrt(weights[key].shape[0] / n_feats)))
    return scale


def infer_architecture(weights, res_scale=None, rgb_range=255.0):
    """Architecture of a published-layout EDSR or MDSR state dict, read from its tensor names and shapes."""
    try:
        n_feats, n_colors = weights["head.0.weight"].shape[:2]
        block_ids = {int(k.split(".")[1]) for k in weights if k.startswith("body.") and ".body." in k}
        branches = sorted({int(k.split(".")[1]) for k in weights if k.startswith("pre_process.")})
        if branches:  # MDSR: one pre_process and one upsample branch per scale, res_scale 1 throughout
            scales = tuple(_upsampler_scale(weights, f"upsample.{i}.", n_feats) for i in branches)
            missing = [i for i, s in zip(branches, scales) if s == 1]
            if missing:
                raise KitError(
                    f"an MDSR whose branch {missing[0]} has pre_process weights but no upsample.{missing[0]}.* "
                    "(the file is incomplete)"
                )
            model, res_scale = "MDSR", 1.0 if res_scale is None else res_scale
        else:
            scales, model = (_upsampler_scale(weights, "tail.0.", n_feats),), "EDSR"
        return Architecture(
            scale=scales[0],
            scales=scales,
            model=model,
            n_resblocks=len(block_ids),
            n_feats=int(n_feats),
            res_scale=default_res_scale(n_feats) if res_scale is None else float(res_scale),
            rgb_range=float(rgb_range),
            n_colors=int(n_colors),
        )
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise KitError(f"not an EDSR or MDSR state dict (cannot find {exc})") from None


def _depth_to_space_perm(n_feats, r):
    """Index map published (PixelShuffle, CRD) -> ModelZoo (DepthToSpace, DCR) channel order."""
    return np.array([c * r * r + k for k in range(r * r) for c in range(n_feats)])


def modelzoo_to_published(zoo):
    """ModelZoo EDSR weights (0-1 feature scale, DepthToSpace order) -> published layout on the 0-255 scale."""
    n_feats = zoo["head.0.weight"].shape[0]
    out = {}
    for name, value in zoo.items():
        value = np.asarray(value, np.float32)
        parts = name.split(".")
        if name.startswith("body.") and parts[2] in ("conv1", "conv2"):
            name = f"body.{parts[1]}.body.{0 if parts[2] == 'conv1' else 2}.{parts[3]}"
        elif name.startswith("tail.0.up."):
            name = "tail.0." + ".".join(parts[3:])
        elif not name.startswith(MODEL_PREFIXES):
            continue  # norm/de_norm constants, optimizer moments, step counters
        out[name] = value
    # Published features are the ModelZoo ones on the same scale once the head absorbs the 1/255 input scaling
    # and the last conv the x255 output scaling (everything in between is positively homogeneous).
    out["head.0.weight"] = out["head.0.weight"] / 255.0
    out["tail.1.weight"] = out["tail.1.weight"] * 255.0
    out["tail.1.bias"] = out["tail.1.bias"] * 255.0
    stage_keys = sorted((k for k in out if k.startswith("tail.0.") and k.endswith(".weight")), key=_stage_index)
    factors = [int(round(np.sqrt(out[k].shape[0] / n_feats))) for k in stage_keys]
    for key, r in zip(stage_keys, factors):
        inverse = np.argsort(_depth_to_space_perm(n_feats, r))
        out[key] = out[key][inverse]
        bias_key = key[: -len("weight")] + "bias"
        out[bias_key] = out[bias_key][inverse]
    n_colors = out["head.0.weight"].shape[1]
    out["sub_mean.weight"], out["sub_mean.bias"] = mean_shift_values(255.0, -1, n_colors)
    out["add_mean.weight"], out["add_mean.bias"] = mean_shift_values(255.0, +1, n_colors)
    return out


def _stage_index(key):
    return int(key.split(".")[2])


def _is_modelzoo(names):
    return any(".conv1." in n for n in names) or any(n.startswith("tail.0.up.") for n in names)


def _atomic_path(path):
    # MindSpore appends ".ckpt" to names without it and makes the file read-only, so the temporary name must
    # end in .ckpt and must not exist yet.
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.ckpt"


def save_checkpoint(
    path: str | os.PathLike,
    arch: Architecture,
    weights: dict,
    extra: dict | None = None,
    extra_info: dict | None = None,
) -> Path:
    """Write a kit checkpoint atomically. `weights`/`extra`: name -> array; `extra_info`: name -> str/int/float."""
    path = Path(path)
    tmp = _atomic_path(path)
    records = [{"name": n, "data": ms.Tensor(np.asarray(v))} for n, v in {**weights, **(extra or {})}.items()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # crc_check: a checkpoint damaged later (flipped bytes, a bad copy) is refused on load instead of read silently
        with mindspore_log_silenced():  # its own "Failed to save" log line would repeat the error below
            ms.save_checkpoint(
                records,
                str(tmp),
                crc_check=True,
                append_dict={ARCH_KEY: json.dumps(arch.to_dict()), **(extra_info or {})},
            )
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        for leftover in (tmp, tmp.with_suffix(".tmp")):  # MindSpore writes <name>.tmp first, then renames it
            if leftover.exists():
                leftover.unlink()
    return path


# Training state in a kit checkpoint, beside the model's weights: the optimizer's moments and the loss scaler.
OPTIMIZER_PREFIX = "optimizer."
LOSS_SCALER_PREFIX = "loss_scaler."
# The exponential moving average of the trained weights (the `ema_decay` option): `ema.<weight name>`. Readers of a
# checkpoint get these instead of the raw weights unless they ask for the raw ones (read_checkpoint(ema=False)).
EMA_PREFIX = "ema."


def training_state(model, optimizer, scaler, ema=()):
    """(model weights, the other training entries) to save with `save_checkpoint(..., weights, extra)`; `ema`: the
    EMA Parameters, already named `ema.<weight name>`."""
    weights = {p.name: p.asnumpy() for p in model.get_parameters()}
    extra = {OPTIMIZER_PREFIX + p.name: p.asnumpy() for p in optimizer.get_parameters() if p.name not in weights}
    extra.update({p.name: p.asnumpy() for p in ema})
    if isinstance(scaler, ms.amp.DynamicLossScaler):
        extra[LOSS_SCALER_PREFIX + "scale_value"] = scaler.scale_value.asnumpy()
        extra[LOSS_SCALER_PREFIX + "counter"] = scaler.counter.asnumpy()
    return weights, extra


def training_info(epoch, iterations, next_sample, seed, world_size, options, history, best_psnr):
    """The loop's state a training checkpoint keeps beside `training_state`'s: where the run stands, the options
    and the history. Patches are a pure function of (seed, sample index), so `next_sample` is the whole data-order
    and augmentation state."""
    return {
        "epoch": int(epoch),
        "iteration": int(iterations),
        "next_sample": int(next_sample),
        "seed": int(seed),
        "world_size": int(world_size),
        "options": json.dumps(options),
        "history": json.dumps(history),
        "best_psnr": float(best_psnr),
    }


def read_training_info(path, entries):
    """(epoch, history, best_psnr, saved options, world size) from a training checkpoint's other entries (as
    `read_checkpoint(..., ema=False)` returns them); a KitError for a checkpoint that holds weights only."""
    missing = [k for k in ("epoch", "history", "best_psnr") if k not in entries]
    if missing:
        raise KitError(
            f"{path}: holds weights but no training state ({', '.join(missing)} missing; converted "
            "and published checkpoints have none): start from it with ckpt_path instead of resume"
        )
    world = entries.get("world_size")
    return (
        int(np.asarray(entries["epoch"])),
        json.loads(entries["history"]),
        float(np.asarray(entries["best_psnr"])),
        json.loads(entries.get("options", "{}")),
        None if world is None else int(np.asarray(world)),
    )


def restore_training_state(model, optimizer, scaler, weights, entries, ema=()):
    """Put back what `training_state` saved (`weights` and `entries` as `read_checkpoint(..., ema=False)` returns
    them), in place, so compiled graphs keep seeing the same parameters. EMA Parameters missing from the entries
    start again from the restored weights."""
    load_state(model, weights)
    params = {p.name: p for p in optimizer.get_parameters()}
    for average in ema:
        value = entries.get(average.name, weights.get(average.name[len(EMA_PREFIX) :]))
        ms.ops.assign(average, ms.Tensor(np.asarray(value, np.float32)))
    scaler_params = {}
    if isinstance(scaler, ms.amp.DynamicLossScaler):
        scaler_params = {"scale_value": scaler.scale_value, "counter": scaler.counter}
    for name, value in entries.items():
        if name.startswith(OPTIMIZER_PREFIX) and name[len(OPTIMIZER_PREFIX) :] in params:
            ms.ops.assign(params[name[len(OPTIMIZER_PREFIX) :]], ms.Tensor(value))
        elif name.startswith(LOSS_SCALER_PREFIX) and name[len(LOSS_SCALER_PREFIX) :] in scaler_params:
            ms.ops.assign(scaler_params[name[len(LOSS_SCALER_PREFIX) :]], ms.Tensor(value))


def read_checkpoint(
    path: str | os.PathLike, res_scale: float | None = None, allow_large_model: bool = False, ema: bool = True
) -> tuple[Architecture, dict, dict]:
    """Any supported checkpoint -> (Architecture, model weights in published layout, other entries).

    Accepts kit checkpoints, published EDSR-PyTorch `.pt` (both formats) and ModelZoo `.ckpt` files. A weights
    name (`edsr weights list`) is resolved before this, at the edges: `loading.load_model`, the CLI, notebooks.
    A training checkpoint with an EMA of its weights (`ema_decay`) gives the EMA weights unless `ema` is False; the
    EMA stays in the other entries (`ema.<name>`) when `ema` is False (resuming needs both sets).
    `res_scale` overrides the inferred value for files that do not record it. The architecture must be within
    `model.check_size` (unless allow_large_model) and every weight a finite floating-point array.
    """
    arch, weights, rest = _read_any_checkpoint(Path(path), res_scale)
    averaged = {k[len(EMA_PREFIX) :]: v for k, v in rest.items() if k.startswith(EMA_PREFIX)}
    if ema and averaged:
        rest = {k: v for k, v in rest.items() if not k.startswith(EMA_PREFIX)}
        weights = {k: averaged.get(k, v) for k, v in weights.items()}
    try:
        check_size(arch, allow_large_model)
    except KitError as exc:
        raise KitError(f"{path}: {exc}") from None
    for name, value in weights.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            raise KitError(f"{path}: weight {name} is {value.dtype}, not floating point")
        if not np.isfinite(value).all():
            raise KitError(f"{path}: weight {name} holds NaN or infinite values")
    return arch, weights, rest


def _architecture_record(path, text):
    try:
        return Architecture.from_dict(json.loads(text))
    except (ValueError, TypeError, AttributeError) as exc:
        raise KitError(f"{path}: unreadable architecture record ({exc})") from None


def _read_any_checkpoint(path, res_scale):
    if not path.is_file():
        raise KitError(f"{path}: no such checkpoint file")
    if zipfile.is_zipfile(path) or path.suffix in (".pt", ".pth"):
        weights = load_torch_state_dict(path)
        try:
            return infer_architecture(weights, res_scale), weights, {}
        except KitError as exc:
            raise KitError(f"{path}: {exc}") from None
    try:
        with mindspore_log_silenced():  # it logs its own multi-line error before raising; ours is one line
            raw = ms.load_checkpoint(str(path), crc_check=True)  # files saved without a CRC load as before
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError with long messages
        text = str(exc).lower()
        if "crc" in text or "permission" in text and os.access(path, os.R_OK):
            # MindSpore words a failed CRC check as "... may not have permission": the file is readable, so it is
            # damaged (flipped bytes, a bad copy, a write cut short)
            raise KitError(f"{path}: damaged (its CRC check fails): restore it from a copy") from None
        raise KitError(f"{path}: not a readable MindSpore checkpoint ({str(exc).splitlines()[0][:200]})") from None
    entries = {k: (v if isinstance(v, str) else v.asnumpy()) for k, v in raw.items()}
    if ARCH_KEY in entries:
        arch = _architecture_record(path, entries.pop(ARCH_KEY))
        if res_scale is not None:
            arch = Architecture.from_dict({**arch.to_dict(), "res_scale": float(res_scale)})
        weights = {k: v for k, v in entries.items() if k.startswith(MODEL_PREFIXES)}
        return arch, weights, {k: v for k, v in entries.items() if k not in weights}
    if _is_modelzoo(entries):
        try:
            weights = modelzoo_to_published(entries)
            return infer_architecture(weights, res_scale), weights, {}
        except (KitError, KeyError) as exc:
            raise KitError(f"{path}: not an EDSR ModelZoo checkpoint ({exc})") from None
    weights = {k: v for k, v in entries.items() if k.startswith(MODEL_PREFIXES)}
    try:
        return infer_architecture(weights, res_scale), weights, {}
    except KitError as exc:
        raise KitError(f"{path}: {exc}") from None


def convert(src: str | os.PathLike, dst: str | os.PathLike, res_scale: float | None = None) -> Architecture:
    """Convert a published `.pt` or ModelZoo `.ckpt` (or a kit checkpoint) into a kit checkpoint."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".ckpt":
        raise KitError(f"{dst}: a kit checkpoint's name must end in .ckpt")
    check_output_file(dst, "the output", [(src, "the file being converted")])
    arch, weights, _ = read_checkpoint(src, res_scale)
    model = build_model(arch)
    try:
        load_state(model, weights)  # proves the weights fit before anything is written
    except KitError as exc:
        raise KitError(f"{src}: {exc}") from None
    save_checkpoint(dst, arch, {p.name: p.asnumpy() for p in model.get_parameters()})
    return arch


__all__ = [
    "convert",
    "read_checkpoint",
    "save_checkpoint",
    "infer_architecture",
    "modelzoo_to_published",
    "upsampling_factors",
]
