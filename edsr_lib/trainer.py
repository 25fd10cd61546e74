"""Training EDSR as the published recipe does: L1 on 0-255 outputs (or the `loss` option's terms), Adam (0.9, 0.999,
1e-8), multistep lr decay, epoch = `test_every` iterations, validation and checkpoints after each epoch, exact
resume, mixed precision with loss scaling, and data parallelism over the ranks `msrun` or a rank table started. The
Trainer builds its model, loss, datasets and optimizer from the options unless it is given them.

The run folder is `ckpt_save_path`: checkpoints, `history.csv`, `curves.png` and `run.json` (options, versions,
device). Only rank 0 writes there.
"""

import contextlib
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .backend import Parameter, ParameterTuple, Tensor, ms, nn, ops
from .data import PairDataset, open_dataset
from .errors import KitError, sigterm_interrupts
from .evaluation import bicubic_upscale, evaluate
from .figures import centre_crops
from .files import prepare_output_folder
from .metrics import protocol_for
from .model import build_model, count_parameters
from .options import Options
from .pipeline import PatchSource, train_dataset
from .progress import progress_bar
from .records import TensorBoardLog, write_curves, write_run_record
from .runtime import (
    DYNAMIC_SCALE_START,
    DYNAMIC_SCALE_WINDOW,
    configure_precision,
    init_distributed,
    mindspore_log_silenced,
    setup_device,
)
from .loading import init_from_checkpoint
from .weights import (
    EMA_PREFIX,
    read_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)

# Dynamic loss scaling starts at 2**16 and halves on each overflow, so up to ~16 skipped steps in a row are normal
# while it settles; twice that many means the loss itself is broken.
MAX_CONSECUTIVE_NONFINITE = 32
# What a run folder from before the output marker (files.OUTPUT_MARKER) holds: such a folder is the kit's too.
RUN_FOLDER_FILES = ("run.json", "latest.ckpt", "best.ckpt", "history.csv", "curves.png", "tb", ".lock")
# Options that may change between a run and its resumption without breaking it.
RESUMABLE_CHANGES = {
    "epochs",
    "resume",
    "overwrite",
    "test_every",
    "ckpt_save_interval",
    "ckpt_save_max",
    "num_workers",
    "device_target",
    "data_test",
    "ckpt_path",
    "dir_data",
    "print_every",
    "dataset_sink",
    "tensorboard",
    "conv_algorithm",
}


# The training step's compile level, on the host-fed and the dataset-sink path alike: O0, MindSpore's kernel-by-kernel
# ms_backend. It is MindSpore 2.10's default for ms.jit and on A2 (910B) and GPU. 910A's own default would be O2,
# the GE engine: 2.10 deprecates jit_level "O2" and backend "GE" (graph/jit_config.py, graph/api.py), GE takes no
# dynamic shapes (the validation graphs), and data_sink with an empty level leaves the choice to the chip.
STEP_JIT_LEVEL = "O0"


def open_sink(step, dataset, sink_size):
    """MindSpore's dataset sink around the compiled step: with a jit_config, GetNext and the whole TrainStep are one
    graph, run `sink_size` times per call with no host read between (without one, data_sink runs `step` op by op in
    PyNative: mindspore/train/data_sink.py). Ascend and GPU only; tests replace ms.data_sink by a CPU stand-in."""
    return ms.data_sink(step, dataset, sink_size=sink_size, jit_config=ms.JitConfig(jit_level=STEP_JIT_LEVEL))


class TrainingStopped(KitError):
    """Training cannot go on (e.g. the loss stays non-finite); the last good checkpoint is kept."""


def apply_mixed_precision(model, amp_level):
    """O0: float32. O1: float16 convolutions (EDSR's only white-list op), float32 elsewhere.
    O2: float16 network with float32 output. O3: float16 everywhere. The loss is always float32.
    Changes `model` in place and returns it (the step casts the output to float32 itself)."""
    if amp_level == "O1":
        for _, cell in model.cells_and_names():
            if isinstance(cell, nn.Conv2d):
                cell.to_float(ms.float16)
    elif amp_level in ("O2", "O3"):
        # MindSpore 2.10 casts the cells in place and returns them wrapped in _OutputTo32; its rewrite path
        # (MS_AMP_BY_REWRITE) would return a new network instead, and the setting would be lost on `model`.
        wrapped = ms.amp.auto_mixed_precision(model, amp_level)
        if getattr(wrapped, "_backbone", wrapped) is not model:
            raise RuntimeError(f"mindspore.amp.auto_mixed_precision({amp_level}) did not convert the network in place")
    return model


def make_loss_scaler(plan):
    """The loss scale `runtime.precision_plan` chose: a fixed one (1.0 = none), or dynamic under O1-O3."""
    if plan["loss_scale"] == "dynamic":
        return ms.amp.DynamicLossScaler(DYNAMIC_SCALE_START, scale_factor=2, scale_window=DYNAMIC_SCALE_WINDOW)
    return ms.amp.StaticLossScaler(float(plan["loss_scale"]))


def make_optimizer(opts, params):
    """EDSR-PyTorch's choices: Adam (0.9, 0.999, 1e-8) or SGD with momentum. The lr is a tensor assigned in place at
    each epoch (a per-step lr list failed on resume: MindSpore reused an earlier instance's compiled graph)."""
    lr = ms.Tensor(opts.lr, ms.float32)
    if opts.optimizer == "SGD":
        return nn.SGD(params, learning_rate=lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
    with mindspore_log_silenced():  # nn.Adam builds MindSpore's deprecated FusedSparseAdam and warns about it
        return nn.Adam(params, learning_rate=lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=opts.weight_decay)


class WeightedLoss(nn.Cell):
    """sum(weight * term(sr, hr)) over the terms of the `loss` option (EDSR-PyTorch's `1*L1+0.1*MSE`)."""

    TERMS = {"L1": nn.L1Loss, "MSE": nn.MSELoss}

    def __init__(self, terms):
        super().__init__()
        self.weights = tuple(float(w) for w, _ in terms)
        self.terms = nn.CellList([self.TERMS[name]() for _, name in terms])

    def construct(self, sr, hr):
        total = self.weights[0] * self.terms[0](sr, hr)
        for i in range(1, len(self.weights)):
            total = total + self.weights[i] * self.terms[i](sr, hr)
        return total


def make_loss(opts):
    """The loss Cell for `opts.loss`; the recipe's plain `1*L1` is MindSpore's L1Loss itself."""
    terms = opts.loss_terms()
    if len(terms) == 1 and terms[0][0] == 1.0:
        return WeightedLoss.TERMS[terms[0][1]]()
    return WeightedLoss(terms)


_clip = ops.MultitypeFuncGraph("clip")


@_clip.register("Number", "Tensor")
def _clip_tensor(limit, grad):
    return ops.clamp(grad, -limit, limit)


_ema = ops.MultitypeFuncGraph("ema")


@_ema.register("Number", "Tensor", "Tensor")
def _ema_update(decay, average, weight):
    return ops.assign(average, average * decay + weight * (1.0 - decay))


class TrainStep(nn.Cell):
    """One training step as one graph, after MindSpore's TrainOneStepWithLossScaleCell: forward, scaled loss,
    gradients, their mean over ranks, an overflow flag summed over ranks (so every rank skips the same steps),
    unscaling, optional clipping, the update, and the loss-scale adjustment. Nothing leaves the device: the step
    adds its loss and outcome to `totals`, which the host reads every `print_every` steps."""

    # totals: loss summed over applied steps, applied steps, skipped steps, current run of skipped steps
    LOSS_SUM, APPLIED, SKIPPED, STREAK = range(4)

    def __init__(self, model, loss_fn, optimizer, scaler, world=1, gclip=0.0, ema_decay=0.0):
        super().__init__(auto_prefix=False)
        self.model, self.loss_fn, self.optimizer, self.scaler = model, loss_fn, optimizer, scaler
        self.world, self.gclip, self.ema_decay = int(world), float(gclip), float(ema_decay)
        # The EMA of the trained weights (BasicSR's net_g_ema), starting from the initial weights and updated in the
        # step graph after every applied step: identical on every rank, as the weights are.
        self.ema = ParameterTuple(
            [
                Parameter(Tensor(p.asnumpy().copy()), name=EMA_PREFIX + p.name, requires_grad=False)
                for p in optimizer.parameters
            ]
            if self.ema_decay > 0
            else []
        )
        self.multiscale = bool(getattr(getattr(model, "arch", None), "is_multiscale", False))
        self.hyper_map = ops.HyperMap()
        self.weights = optimizer.parameters
        self.grad_fn = ops.value_and_grad(self.scaled_loss, None, optimizer.parameters, has_aux=True)
        if self.world > 1:
            self.reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=self.world)
            self.all_reduce = ops.AllReduce()  # sum
        self.totals = Parameter(Tensor(np.zeros(4, np.float32)), name="train_step_totals", requires_grad=False)

    def scaled_loss(self, lr, hr, scale_index):
        sr = self.model(lr, scale_index) if self.multiscale else self.model(lr)
        loss = self.loss_fn(sr.astype(ms.float32), hr)
        return self.scaler.scale(loss), loss

    def construct(self, lr, hr, scale_index=0):
        """scale_index: an MDSR's branch for this batch, a constant (one graph per scale, each compiled once)."""
        (scaled, loss), grads = self.grad_fn(lr, hr, scale_index)
        if self.world > 1:
            grads = self.reducer(grads)
            loss = self.all_reduce(loss) / self.world
            # all_finite reads and clears the device's overflow status on 910A: after the loss all-reduce, so that
            # a saturated sum there is counted in this step, not carried into the next one.
            grads = ops.depend(grads, loss)
        grads = self.scaler.unscale(grads)
        # On Ascend all_finite reads the device's own overflow status, so each rank's verdict is summed over all.
        finite = ops.logical_and(ms.amp.all_finite(grads), ops.logical_and(ops.isfinite(loss), ops.isfinite(scaled)))
        overflow = 1.0 - finite.astype(ms.float32)
        if self.world > 1:
            overflow = self.all_reduce(overflow)
        finite = overflow < 0.5
        self.scaler.adjust(finite)
        if self.gclip > 0:
            grads = self.hyper_map(ops.partial(_clip, self.gclip), grads)
        if finite:
            loss = ops.depend(loss, self.optimizer(grads))
            if self.ema_decay > 0:
                loss = ops.depend(loss, self.hyper_map(ops.partial(_ema, self.ema_decay), self.ema, self.weights))
        applied = finite.astype(ms.float32)
        t = self.totals
        ops.assign(
            self.totals,
            ops.stack(
                [
                    t[0] + ops.select(finite, loss, ops.zeros_like(loss)),
                    t[1] + applied,
                    t[2] + 1.0 - applied,
                    (t[3] + 1.0) * (1.0 - applied),
                ]
            ),
        )
        return loss, finite


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


@contextlib.contextmanager
def run_lock(folder):
    """One training run at a time per run folder: `.lock` holds the owner's host and pid. A lock left by a process
    that no longer runs on this host (killed) is taken over."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock, me = folder / ".lock", f"{socket.gethostname()} {os.getpid()}"
    for attempt in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = lock.read_bytes()[:200].decode(errors="replace").strip()
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:  # released meanwhile
                continue
            host, _, pid = holder.partition(" ")
            gone = host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))
            # a lock that never got its owner written (a start on a full disk) or holds garbage: stale once it is
            # older than the instant between creating and writing it
            garbled = not (host and pid.isdigit()) and age > 10
            if attempt < 2 and (gone or garbled):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            if not (host and pid.isdigit()):
                host, pid = "unknown host", "unknown"
            raise KitError(
                f"{folder}: another training run is using this folder (process {pid} on {host}); "
                f"wait for it, or remove {lock} if it is no longer running"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    else:
        raise KitError(f"{lock}: could not take this run folder's lock; try again")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _per_scale(given, scales):
    """A given dataset (one scale) or {scale: dataset} as {scale: dataset}; {} when none was given."""
    if given is None:
        return {}
    given = given if isinstance(given, dict) else {given.scale: given}
    if set(given) != set(scales):
        raise KitError(f"datasets for scales {sorted(given)} given, but the options train {list(scales)}")
    return {s: given[s] for s in scales}


class Trainer:
    """Train as `opts` says. The parts are built from the options unless given: `model` (a network with the
    options' architecture, so its checkpoints load), `loss` (a Cell of (sr, hr) -> scalar), `train_set` and
    `val_set` (datasets as `data.open_dataset` returns them; `val_set=None` with data_test "none" validates
    nothing), `optimizer` (a MindSpore optimizer over the model's trainable parameters with a Parameter
    learning rate, which the lr schedule sets every epoch)."""

    def __init__(
        self,
        opts: Options,
        log: Callable[[str], object] = print,
        progress: str | bool = "auto",
        *,
        model: nn.Cell | None = None,
        loss: nn.Cell | None = None,
        train_set: PairDataset | None = None,
        val_set: PairDataset | None = None,
        optimizer: nn.Optimizer | None = None,
    ):
        self.opts, self.log, self.progress = opts, log, progress
        self._run_bar = None  # the whole run's bar while fit() runs
        self.device = setup_device(opts.device_target)
        self.precision = configure_precision(
            self.device, opts.precision_mode, opts.deterministic, opts.amp_level, opts.loss_scale
        )
        self.rank, self.world = init_distributed(opts.device_target)
        # An MDSR's batches change shape with their scale: no fixed-shape device loop.
        self.sink = opts.sink_mode(self.device) and opts.model != "MDSR"
        ms.set_seed(opts.seed)  # the same initial weights on every rank
        # The kit's CPU convolution is float32 only; mixed precision, Ascend and GPU keep MindSpore's Conv2d.
        self.model = (
            model
            if model is not None
            else build_model(
                opts.architecture(),
                conv_kernel=opts.conv_algorithm if opts.amp_level == "O0" and self.device == "CPU" else "stock",
                allow_large_model=opts.allow_large_model,
            )
        )
        if getattr(self.model, "arch", opts.architecture()) != opts.architecture():
            raise KitError(
                f"the model's architecture {self.model.arch.to_dict()} differs from the options' "
                f"{opts.architecture().to_dict()}; checkpoints would not load"
            )
        if self.device == "CPU" and opts.amp_level != "O0":
            self._log(
                f"warning: amp_level {opts.amp_level} on CPU uses MindSpore's Conv2d instead of the kit's faster "
                "float32 CPU convolution (amp_level O0); mixed precision is meant for Ascend and GPU"
            )
        if opts.ckpt_path:
            skipped = init_from_checkpoint(self.model, opts.ckpt_path)
            self._log(
                f"initialised from {opts.ckpt_path}" + (f" (kept fresh: {', '.join(skipped)})" if skipped else "")
            )
        apply_mixed_precision(self.model, opts.amp_level)
        scales = opts.scales()
        # One training and one validation set per scale (EDSR: one); `train_set`/`val_set` are the first scale's.
        self.train_sets = _per_scale(train_set, scales) or {
            s: open_dataset(
                opts.data_train,
                s,
                opts.dir_data,
                split="train",
                data_range=opts.data_range,
                min_lr_size=opts.lr_patch(s),
                degradation=opts.degradation_model(),
            )
            for s in scales
        }
        # Every rank validates its share of the images (validate()), so none waits in a collective meanwhile.
        self.val_sets = _per_scale(val_set, scales)
        if val_set is None and str(opts.data_test).lower() != "none":
            # Checked now, not after the first epoch: SSIM needs 11x11 pixels left after the border crop.
            self.val_sets = {
                s: open_dataset(
                    opts.data_test,
                    s,
                    opts.dir_data,
                    split="test",
                    data_range=opts.data_range,
                    min_lr_size=-(-(11 + 2 * protocol_for(opts.data_test, s).border) // s),
                    degradation=opts.degradation_model(),
                )
                for s in scales
            }
        # LPIPS of validation outputs when asked; several ranks never download at once (the trunk must be cached).
        self.lpips, self.scale_lpips = {}, {}
        if opts.val_lpips and self.val_sets:
            from .lpips import for_metrics

            self.lpips = for_metrics(("lpips",), offline=self.world > 1, log=self._log)
        self.train_set = self.train_sets[scales[0]]
        self.val_set = self.val_sets.get(scales[0])
        self.samples_per_epoch = opts.test_every * opts.batch_size * self.world
        self.source = PatchSource(
            self.train_sets,
            {s: opts.lr_patch(s) * s for s in scales},
            opts.epochs * self.samples_per_epoch,
            seed=opts.seed,
            no_augment=opts.no_augment,
            rgb_range=opts.rgb_range,
            samples_per_step=opts.batch_size * self.world,
        )
        self.optimizer = optimizer if optimizer is not None else make_optimizer(opts, self.model.trainable_params())
        self.loss_fn = loss if loss is not None else make_loss(opts)
        self.scaler = make_loss_scaler(self.precision)
        self.step = TrainStep(
            self.model, self.loss_fn, self.optimizer, self.scaler, self.world, opts.gclip, opts.ema_decay
        )
        # One static graph: the patch size is fixed, so it compiles once, at the first step.
        self._step_graph = ms.jit(self.step, jit_level=STEP_JIT_LEVEL)
        self._keep_streak = ms.Tensor(np.eye(4, dtype=np.float32)[TrainStep.STREAK])
        self._feed, self._feed_epoch = None, None
        self.epoch, self.history, self.best_psnr = 0, [], -np.inf
        self.tb = None  # TensorBoardLog while fit() runs
        self.bicubic_psnr, self.last_loss, self.skipped_steps = None, None, 0
        self.scale_psnr, self.scale_bicubic = {}, {}  # per validation scale, set by validate()
        self.validation = {}  # {scale: [{"name", "psnr", "ssim"}, ...]} of the last validation, on every rank
        self.ckpt_dir = Path(opts.ckpt_save_path)
        if self.ckpt_dir.exists() and not self.ckpt_dir.is_dir():
            raise KitError(f"{self.ckpt_dir}: ckpt_save_path is a file, not a folder")
        if opts.resume:
            self._resume()
        elif self.rank == 0 and not opts.overwrite:
            earlier = sorted(p.name for p in self.ckpt_dir.glob("*.ckpt")) if self.ckpt_dir.is_dir() else []
            if earlier:
                raise KitError(
                    f"{self.ckpt_dir}: holds an earlier run ({', '.join(earlier[:3])}"
                    f"{', ...' if len(earlier) > 3 else ''}); resume it with resume=True (--resume), "
                    "start over with overwrite=True (--overwrite), or choose another ckpt_save_path"
                )
        if self.rank == 0:  # the run folder: never a dataset's folder, never mixed with files that are not a run's
            data = [(f, f"the training images ({d.name})") for d in self.train_sets.values() for f in d.folders()]
            data += [(f, f"the validation images ({d.name})") for d in self.val_sets.values() for f in d.folders()]
            prepare_output_folder(self.ckpt_dir, "ckpt_save_path", data, kit_files=RUN_FOLDER_FILES)

    def _log(self, message):
        if self.rank == 0:
            from tqdm import tqdm

            with tqdm.external_write_mode():  # a terminal bar is cleared, the line written, the bar redrawn
                self.log(message)

    def summary(self):
        o = self.opts
        return {
            "parameters": count_parameters(self.model),
            "architecture": o.architecture().to_dict(),
            "train images": len(self.train_set),
            "validation images": len(self.val_set or []),
            "device": self.device,
            "world size": self.world,
            "amp_level": o.amp_level,
            "loss scaling": self.loss_scaling(),
            "batch per device": o.batch_size,
            "global batch": o.batch_size * self.world,
            "LR patch": o.lr_patch(o.scales()[0]),
            "iterations": o.epochs * o.test_every,
            "optimizer": o.optimizer,
            "dataset sink": f"{self.opts.sync_every()} steps per call" if self.sink else "off",
            "weights EMA": f"decay {o.ema_decay:g} (validation and best.ckpt on the EMA)" if o.ema_decay else "off",
        }

    def loss_scaling(self):
        if isinstance(self.scaler, ms.amp.DynamicLossScaler):
            return f"dynamic (from {DYNAMIC_SCALE_START:g}, window {DYNAMIC_SCALE_WINDOW})"
        scale = self.loss_scale_value()
        return "none" if scale == 1.0 else f"fixed {scale:g}"

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _state(self):
        weights, extra = training_state(self.model, self.optimizer, self.scaler, self.step.ema)
        info = {
            "epoch": int(self.epoch),
            "iteration": int(self.epoch * self.opts.test_every),
            # Patches are a pure function of (seed, sample index): this is the whole RNG and data-order state.
            "next_sample": int(self.epoch * self.samples_per_epoch),
            "seed": int(self.opts.seed),
            "world_size": int(self.world),
            "options": json.dumps(self.opts.to_dict()),
            "history": json.dumps(self.history),
            "best_psnr": float(self.best_psnr),
        }
        return weights, extra, info

    def save(self, is_best):
        if self.rank != 0:
            return None
        weights, extra, info = self._state()
        arch = self.opts.architecture()
        numbered = f"{arch.model.lower()}_x{self.opts.scale}_epoch"
        latest = save_checkpoint(self.ckpt_dir / "latest.ckpt", arch, weights, extra, info)
        if is_best or not (self.ckpt_dir / "best.ckpt").exists():
            save_checkpoint(self.ckpt_dir / "best.ckpt", arch, weights, extra, info)
        if self.epoch % self.opts.ckpt_save_interval == 0 or self.epoch == self.opts.epochs:
            save_checkpoint(self.ckpt_dir / f"{numbered}{self.epoch:04d}.ckpt", arch, weights, extra, info)
            kept = sorted(self.ckpt_dir.glob(f"{numbered}*.ckpt"))
            for old in kept[: -self.opts.ckpt_save_max]:
                old.unlink()
        return latest

    def _resume(self):
        path = self.ckpt_dir / "latest.ckpt"
        if not path.is_file():
            raise KitError(f"{path}: nothing to resume (no latest.ckpt in ckpt_save_path)")
        arch, weights, rest = read_checkpoint(path, allow_large_model=self.opts.allow_large_model, ema=False)
        missing = [k for k in ("epoch", "history", "best_psnr") if k not in rest]
        if missing:
            raise KitError(
                f"{path}: holds weights but no training state ({', '.join(missing)} missing; converted "
                "and published checkpoints have none): start from it with ckpt_path instead of resume"
            )
        if arch != self.opts.architecture():
            raise KitError(
                f"{path}: cannot resume: checkpoint architecture {arch.to_dict()} differs from the "
                f"options {self.opts.architecture().to_dict()}"
            )
        saved = json.loads(rest.get("options", "{}"))
        changed = sorted(
            k for k, v in self.opts.to_dict().items() if k in saved and saved[k] != v and k not in RESUMABLE_CHANGES
        )
        if changed or int(np.asarray(rest.get("world_size", self.world))) != self.world:
            self._log(
                f"warning: resuming with changed {', '.join(changed) or 'world size'}: "
                "training continues but will not repeat the original run exactly"
            )
        if self.step.ema and not any(k.startswith(EMA_PREFIX) for k in rest):
            self._log(f"warning: {path} holds no EMA weights: the EMA starts again from the resumed weights")
        restore_training_state(self.model, self.optimizer, self.scaler, weights, rest, self.step.ema)
        self.epoch = int(np.asarray(rest["epoch"]))
        self.history = json.loads(rest["history"])
        self.best_psnr = float(np.asarray(rest["best_psnr"]))
        self._log(f"resumed from {path} at epoch {self.epoch}")

    # ---- loop ----------------------------------------------------------------------------------------------
    def train_step(self, lr, hr):
        """One optimizer step (the step graph, then a host read); returns (loss, applied). A non-finite loss or
        gradient on any rank skips the step on every rank and lets a dynamic loss scale shrink."""
        loss, finite = self._step_graph(ms.Tensor(lr), ms.Tensor(hr), self._scale_index(lr, hr))
        return float(loss.asnumpy()), bool(finite.asnumpy())

    def _scale_index(self, lr, hr):
        """The branch a batch trains: its scale is the HR/LR size ratio (one scale per batch)."""
        return self.source.scales.index(int(hr.shape[-1]) // int(lr.shape[-1]))

    def _open_feed(self):
        """The batches from this epoch to the end of the run: one dataset (and, with dataset sink, one device loop
        of `sync_every` steps) for the whole run rather than one per epoch, so nothing recompiles between epochs."""
        o = self.opts
        data = train_dataset(
            self.source,
            o.batch_size,
            start_index=self.epoch * self.samples_per_epoch,
            num_shards=self.world if self.world > 1 else None,
            shard_id=self.rank,
            num_workers=o.num_workers,
        )
        if self.sink:
            sink = open_sink(self.step, data, o.sync_every())

            def run(steps):
                for _ in range(steps // o.sync_every()):
                    sink()
        else:
            batches = data.create_tuple_iterator(num_epochs=1)

            def run(steps):
                for _ in range(steps):
                    lr, hr = next(batches)
                    self._step_graph(lr, hr, self._scale_index(lr, hr))

        self._feed, self._feed_epoch = run, self.epoch

    def _restart_totals(self):
        """Counts from zero, keeping the run of skipped steps (a device op: no host synchronisation)."""
        ops.assign(self.step.totals, self.step.totals * self._keep_streak)

    def _read_totals(self):
        """The one host synchronisation between two progress reads; starts the next counts from zero."""
        totals = self.step.totals.asnumpy().copy()  # on CPU asnumpy() shares memory with the tensor
        self._restart_totals()
        return totals

    def train_epoch(self):
        o = self.opts
        self.model.set_train(True)
        # In-place assign: the optimizer's compiled graph keeps seeing the old tensor after a set_data().
        ms.ops.assign(self.optimizer.learning_rate, ms.Tensor(o.learning_rate(self.epoch), ms.float32))
        if self._feed is None or self._feed_epoch != self.epoch:
            self._open_feed()
        self._restart_totals()
        loss_sum, applied, t0, every = 0.0, 0, time.perf_counter(), o.sync_every()
        last_read = t0
        bar = (
            self._run_bar
            if self._run_bar is not None
            else self._new_bar(o.test_every, f"epoch {self.epoch + 1}/{o.epochs}")
        )
        for done in range(every, o.test_every + 1, every):
            self._feed(every)
            totals = self._read_totals()
            loss_sum, applied = loss_sum + float(totals[TrainStep.LOSS_SUM]), applied + int(totals[TrainStep.APPLIED])
            skipped, streak = int(totals[TrainStep.SKIPPED]), int(totals[TrainStep.STREAK])
            if skipped:
                self.skipped_steps += skipped
                self._log(
                    f"epoch {self.epoch + 1}, iterations {done - every + 1}-{done}: {skipped} step(s) skipped "
                    f"for a non-finite loss or gradients; loss scale now {self.loss_scale_value():g}"
                )
            if streak >= MAX_CONSECUTIVE_NONFINITE:
                bar.close()
                raise TrainingStopped(
                    f"training stopped in epoch {self.epoch + 1}: {streak} non-finite steps in a row "
                    f"(try a lower lr, amp_level O0 or a smaller loss_scale); the last good checkpoint is "
                    f"{self.ckpt_dir / 'latest.ckpt'} (epoch {self.epoch})"
                )
            mean = totals[TrainStep.LOSS_SUM] / max(totals[TrainStep.APPLIED], 1)
            if self.tb is not None and self.tb.enabled:
                now = time.perf_counter()
                self.tb.scalars(
                    self.epoch * o.test_every + done,
                    {
                        "train/loss": mean if totals[TrainStep.APPLIED] else None,
                        "train/lr": o.learning_rate(self.epoch),
                        "train/loss_scale": self.loss_scale_value(),
                        "train/step_time_s": (now - last_read) / every,
                    },
                )
                last_read = now
            bar.set_postfix(
                epoch=f"{self.epoch + 1}/{o.epochs}",
                loss=f"{mean:.3f}",
                lr=f"{o.learning_rate(self.epoch):.2e}",
                refresh=False,
            )
            bar.update(every)
        if bar is not self._run_bar:
            bar.close()
        if applied == 0 and not isinstance(self.scaler, ms.amp.DynamicLossScaler):
            raise TrainingStopped(
                f"training stopped in epoch {self.epoch + 1}: all {o.test_every} steps were skipped for a non-finite "
                f"loss or gradients (lr {o.learning_rate(self.epoch):g} too high?); the last good checkpoint is "
                f"{self.ckpt_dir / 'latest.ckpt'} (epoch {self.epoch})"
            )
        self._feed_epoch = self.epoch = self.epoch + 1
        self.last_loss = loss_sum / applied if applied else float("nan")
        return self.last_loss, o.test_every / (time.perf_counter() - t0)

    def loss_scale_value(self):
        return float(self.scaler.scale_value.asnumpy())

    def validate(self):
        """Validation PSNR (the mean over the scales of an MDSR; each scale's is in `scale_psnr`, each image's in
        `validation`). Each rank scores every world-th image; the numbers are then shared, so every rank holds every
        image's PSNR/SSIM, exactly as one device computes them."""
        if not self.val_sets:
            return None
        self.model.set_train(False)
        protocols = {s: protocol_for(self.opts.data_test, s) for s in self.val_sets}
        if self.bicubic_psnr is None:
            self.scale_bicubic = {
                s: self._score_shared(d, None, protocols[s])["psnr"] for s, d in self.val_sets.items()
            }
            self.bicubic_psnr = float(np.mean(list(self.scale_bicubic.values())))
        keep = 2 if self.tb is not None and self.tb.enabled else 0
        with self.ema_weights():
            results = {
                s: self._score_shared(d, self.model.at_scale(s), protocols[s], keep) for s, d in self.val_sets.items()
            }
        self.scale_psnr = {s: r["psnr"] for s, r in results.items()}
        self.scale_lpips = {s: r["lpips"] for s, r in results.items() if "lpips" in r}
        self.validation = {s: r["per_image"] for s, r in results.items()}
        self._log_validation(results)
        return float(np.mean(list(self.scale_psnr.values())))

    def _score_shared(self, dataset, model, protocol, keep=0):
        """evaluate() on this rank's share of `dataset`, then every image's numbers on every rank (a sum over ranks
        of float64 values split exactly into float32 parts: MindSpore's CPU AllReduce takes float32 only). The
        model's outputs get LPIPS too when `val_lpips` is on."""
        lpips = self.lpips if model is not None else {}
        metrics = ("psnr", "ssim", *lpips)
        share = range(self.rank, len(dataset), self.world)
        result = evaluate(
            dataset, model, protocol, progress=False, keep_images=keep, indices=share, metrics=metrics, lpips=lpips
        )
        if self.world == 1:
            return result
        scores = np.zeros((len(dataset), len(metrics)), np.float64)
        for i, row in zip(share, result["per_image"], strict=True):
            scores[i] = [row[m] for m in metrics]
        scores = join_float64(ops.AllReduce()(Tensor(split_float64(scores))).asnumpy())
        result["per_image"] = [
            {"name": name, **{m: float(v) for m, v in zip(metrics, values, strict=True)}}
            for name, values in zip(dataset.names, scores, strict=True)
        ]
        result.update({m: float(np.mean(scores[:, j])) for j, m in enumerate(metrics)})
        return result

    def _log_validation(self, results):
        """PSNR/SSIM per validation scale and [bicubic | SR | HR] centre crops of the first images to TensorBoard."""
        if self.tb is None or not self.tb.enabled:
            return
        step = self.epoch * self.opts.test_every
        for s, result in results.items():
            tag = f"val/{self.val_sets[s].name}/x{s}"
            scores = {"psnr": result["psnr"], "ssim": result["ssim"], "psnr_bicubic": self.scale_bicubic.get(s)}
            scores.update({m: result[m] for m in self.lpips})
            self.tb.scalars(step, {f"{tag}/{name}": value for name, value in scores.items()})
            for name, lr, sr, hr in result.get("images", []):
                self.tb.image(f"{tag}/{name} (bicubic, SR, HR)", centre_crops([bicubic_upscale(lr, s), sr, hr]), step)

    @contextlib.contextmanager
    def ema_weights(self):
        """The model holds the EMA weights inside the block (when ema_decay is on), its trained ones again after.
        Assigned in place, so the compiled graphs keep seeing the same parameters."""
        if not self.step.ema:
            yield
            return
        weights = {p.name: p for p in self.step.weights}
        trained = {name: Tensor(p.asnumpy().copy()) for name, p in weights.items()}
        for average in self.step.ema:
            ops.assign(weights[average.name[len(EMA_PREFIX) :]], average)
        try:
            yield
        finally:
            for name, value in trained.items():
                ops.assign(weights[name], value)

    def _new_bar(self, total, desc):
        return progress_bar(total, desc, self.progress if self.rank == 0 else "none", unit="it")

    def fit(self):
        """Train the remaining epochs under one progress bar for the whole run (with its ETA), a line per epoch."""
        remaining = (self.opts.epochs - self.epoch) * self.opts.test_every
        with run_lock(self.ckpt_dir) if self.rank == 0 else contextlib.nullcontext(), sigterm_interrupts():
            self._run_bar = self._new_bar(remaining, "training")
            # Rank 0 alone writes TensorBoard events; a resumed run hides what a killed one logged after its checkpoint.
            mode = self.opts.tensorboard if self.rank == 0 else "off"
            self.tb = TensorBoardLog(self.ckpt_dir / "tb", mode, self.epoch * self.opts.test_every or None)
            try:
                return self._fit()
            finally:
                self._run_bar.close()
                self._run_bar = None
                self.tb.close()

    def _fit(self):
        if self.rank == 0:
            self.write_run_record()
        while self.epoch < self.opts.epochs:
            lr = self.opts.learning_rate(self.epoch)
            loss, its = self.train_epoch()
            val = self.validate()
            is_best = val is not None and val > self.best_psnr
            if is_best:
                self.best_psnr = val
            record = {
                "epoch": self.epoch,
                "loss": loss,
                "lr": lr,
                "psnr": val,
                "psnr_bicubic": self.bicubic_psnr,
                "it_per_s": its,
            }
            if val is not None and self.scale_lpips:
                record["lpips"] = float(np.mean(list(self.scale_lpips.values())))
            if val is not None and len(self.val_sets) > 1:
                for s in self.val_sets:
                    record[f"psnr_x{s}"], record[f"psnr_bicubic_x{s}"] = self.scale_psnr[s], self.scale_bicubic[s]
            self.history.append(record)
            self.save(is_best)
            if self.rank == 0:
                self.write_curves()
            self._log(
                f"epoch {self.epoch}: loss {loss:.4f}, lr {lr:.2e}, {its:.2f} it/s"
                + (f", PSNR {val:.3f} dB (bicubic {self.bicubic_psnr:.3f})" if val is not None else "")
                + (
                    " [" + ", ".join(f"x{s} {self.scale_psnr[s]:.3f}" for s in self.val_sets) + "]"
                    if val is not None and len(self.val_sets) > 1
                    else ""
                )
            )
        return self.history

    # ---- run records ---------------------------------------------------------------------------------------
    def write_run_record(self):
        return write_run_record(
            self.ckpt_dir,
            options=self.opts.to_dict(),
            device=self.device,
            world_size=self.world,
            batch_size_per_device=self.opts.batch_size,
            global_batch=self.opts.batch_size * self.world,
            precision={**self.precision, "amp_level": self.opts.amp_level},
            summary=self.summary(),
        )

    def write_curves(self):
        return write_curves(self.ckpt_dir, self.history, self.opts.architecture().name)

    def gather_final_metrics(self):
        """What every rank reports: equal `param_checksum` and `param_digest` (and loss, averaged over ranks) on all.

        With several ranks, every parameter's sum is gathered from all ranks and compared here (`ranks_agree`), so
        each server learns whether all ranks agree even without a shared output folder. That gather is also the
        closing barrier: every rank leaves it together, so the kernels that papermill shuts down next finish
        MindSpore's cluster teardown at the same time."""
        last = self.history[-1] if self.history else {}
        metrics = {
            "rank": self.rank,
            "world_size": self.world,
            "epochs": self.epoch,
            "final_loss": self.last_loss if self.last_loss is not None else last.get("loss"),
            "param_checksum": param_checksum(self.model),
            "param_digest": param_digest(self.model),
            "ema_digest": param_digest(self.step.ema) if self.step.ema else None,
            "psnr": last.get("psnr"),
            "psnr_bicubic": last.get("psnr_bicubic"),
            "validation": {f"x{s}": rows for s, rows in self.validation.items()},
            "best_psnr": None if not np.isfinite(self.best_psnr) else self.best_psnr,
            "skipped_steps": self.skipped_steps,
            "loss_scale": self.loss_scale_value(),
            "global_batch": self.opts.batch_size * self.world,
        }
        if self.world > 1:
            sums = np.array([p.asnumpy().sum(dtype=np.float32) for p in self.model.get_parameters()], np.float32)
            everyone = ops.AllGather()(ms.Tensor(sums)).asnumpy().reshape(self.world, -1)  # (MAX/MIN: not on CPU)
            metrics["ranks_agree"] = bool((everyone == everyone[0]).all())
        return metrics
