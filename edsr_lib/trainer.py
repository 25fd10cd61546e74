"""Training EDSR as the published recipe does: L1 on 0-255 outputs (or the `loss` option's terms), Adam (0.9, 0.999,
1e-8), multistep lr decay, epoch = `test_every` iterations, validation and checkpoints after each epoch, exact
resume, mixed precision with loss scaling, and data parallelism over the ranks `msrun` or a rank table started.

`build_parts` makes the ingredients from the options (model, loss, optimizer, loss scaler, datasets, the patch
sampler), unless given; `Trainer` runs them: `fit` = `train_epoch` + `validate` + `save` per epoch. The step is in
training_step.py, validation in validation.py, the checkpoint format in weights.py, what ranks compare in ranks.py.

The run folder is `ckpt_save_path`: checkpoints, `history.csv`, `curves.png` and `run.json` (options, versions,
device). Only rank 0 writes there.
"""

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .backend import Tensor, ms, nn, ops
from .data import PairDataset, open_dataset
from .errors import KitError, sigterm_interrupts
from .files import prepare_output_folder
from .loading import init_from_checkpoint
from .metrics import protocol_for
from .model import build_model, count_parameters
from .options import Options
from .pipeline import PatchSource, train_dataset
from .progress import progress_bar
from .ranks import all_ranks_agree, param_checksum, param_digest
from .records import TensorBoardLog, run_lock, write_curves, write_run_record
from .runtime import DYNAMIC_SCALE_START, DYNAMIC_SCALE_WINDOW, configure_precision, init_distributed, setup_device
from .training_step import (
    STEP_JIT_LEVEL,
    TrainStep,
    apply_mixed_precision,
    make_loss,
    make_loss_scaler,
    make_optimizer,
    open_sink,
)
from .validation import Validator
from .weights import (
    EMA_PREFIX,
    read_checkpoint,
    read_training_info,
    restore_training_state,
    save_checkpoint,
    training_info,
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


class TrainingStopped(KitError):
    """Training cannot go on (e.g. the loss stays non-finite); the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainingParts:
    """What a run trains and on what: {scale: dataset} for training and validation (EDSR: one scale), the patch
    sampler over the training sets, and LPIPS networks when validation scores it."""

    model: nn.Cell
    loss: nn.Cell
    optimizer: nn.Optimizer
    scaler: object
    train_sets: dict
    val_sets: dict
    source: PatchSource
    lpips: dict


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What this process runs on: the device, the precision record (run.json's), its rank in a world of `world`."""

    device: str
    precision: dict
    rank: int
    world: int


def prepare_run(opts: Options) -> RunContext:
    """Ready the process for training as `opts` says, before any network is built: the device, its precision and
    determinism (before init(), so collectives are deterministic too), the data-parallel group when launched for
    one, and the seed (the same initial weights on every rank). Call it once; pass the result to Trainer(run=...)
    when you build the parts yourself (notebook 02), or let the Trainer call it."""
    device = setup_device(opts.device_target)
    precision = configure_precision(device, opts.precision_mode, opts.deterministic, opts.amp_level, opts.loss_scale)
    rank, world = init_distributed(opts.device_target)
    ms.set_seed(opts.seed)
    return RunContext(device, precision, rank, world)


def _per_scale(given, scales):
    """A given dataset (one scale) or {scale: dataset} as {scale: dataset}; {} when none was given."""
    if given is None:
        return {}
    given = given if isinstance(given, dict) else {given.scale: given}
    if set(given) != set(scales):
        raise KitError(f"datasets for scales {sorted(given)} given, but the options train {list(scales)}")
    return {s: given[s] for s in scales}


def build_model_for(opts: Options, device: str) -> nn.Cell:
    """The network the options describe, initialised from `ckpt_path` when set. The kit's CPU convolution is float32
    only: mixed precision, Ascend and GPU keep MindSpore's Conv2d."""
    conv_kernel = opts.conv_algorithm if opts.amp_level == "O0" and device == "CPU" else "stock"
    return build_model(opts.architecture(), conv_kernel=conv_kernel, allow_large_model=opts.allow_large_model)


def build_datasets(opts, train_set=None, val_set=None):
    """({scale: training set}, {scale: validation set}) from the options, unless given. Validation sets are opened
    (and checked) now, not after the first epoch: SSIM needs 11x11 pixels left after the border crop."""
    scales = opts.scales()
    train_sets = _per_scale(train_set, scales) or {
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
    val_sets = _per_scale(val_set, scales)
    if val_set is None and str(opts.data_test).lower() != "none":
        val_sets = {
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
    return train_sets, val_sets


def build_parts(
    opts: Options,
    device: str,
    precision: dict,
    world: int = 1,
    log: Callable[[str], object] = print,
    *,
    model: nn.Cell | None = None,
    loss: nn.Cell | None = None,
    train_set: PairDataset | dict | None = None,
    val_set: PairDataset | dict | None = None,
    optimizer: nn.Optimizer | None = None,
) -> TrainingParts:
    """The run's ingredients (TrainingParts), each built from the options unless given. The model's architecture
    must be the options' (its checkpoints must load); `ckpt_path` initialises a built or given model."""
    model = model if model is not None else build_model_for(opts, device)
    if getattr(model, "arch", opts.architecture()) != opts.architecture():
        raise KitError(
            f"the model's architecture {model.arch.to_dict()} differs from the options' "
            f"{opts.architecture().to_dict()}; checkpoints would not load"
        )
    if device == "CPU" and opts.amp_level != "O0":
        log(
            f"warning: amp_level {opts.amp_level} on CPU uses MindSpore's Conv2d instead of the kit's faster "
            "float32 CPU convolution (amp_level O0); mixed precision is meant for Ascend and GPU"
        )
    if opts.ckpt_path:
        skipped = init_from_checkpoint(model, opts.ckpt_path)
        log(f"initialised from {opts.ckpt_path}" + (f" (kept fresh: {', '.join(skipped)})" if skipped else ""))
    apply_mixed_precision(model, opts.amp_level)
    train_sets, val_sets = build_datasets(opts, train_set, val_set)
    lpips = {}
    if opts.val_lpips and val_sets:  # several ranks never download at once: the trunk must be cached then
        from .lpips import for_metrics

        lpips = for_metrics(("lpips",), offline=world > 1, log=log)
    scales = opts.scales()
    source = PatchSource(
        train_sets,
        {s: opts.lr_patch(s) * s for s in scales},
        opts.epochs * opts.test_every * opts.batch_size * world,
        seed=opts.seed,
        no_augment=opts.no_augment,
        rgb_range=opts.rgb_range,
        samples_per_step=opts.batch_size * world,
    )
    return TrainingParts(
        model=model,
        loss=loss if loss is not None else make_loss(opts),
        optimizer=optimizer if optimizer is not None else make_optimizer(opts, model.trainable_params()),
        scaler=make_loss_scaler(precision),
        train_sets=train_sets,
        val_sets=val_sets,
        source=source,
        lpips=lpips,
    )


class Trainer:
    """Train as `opts` says. The parts are built from the options unless given: `model` (a network with the
    options' architecture, so its checkpoints load), `loss` (a Cell of (sr, hr) -> scalar), `train_set` and
    `val_set` (datasets as `data.open_dataset` returns them; `val_set=None` with data_test "none" validates
    nothing), `optimizer` (a MindSpore optimizer over the model's trainable parameters with a Parameter
    learning rate, which the lr schedule sets every epoch). `run`: prepare_run's result, when the caller readied
    the process itself to build parts after the seed was set (notebook 02); otherwise the Trainer calls it."""

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
        run: RunContext | None = None,
    ):
        self.opts, self.log, self.progress = opts, log, progress
        run = run or prepare_run(opts)
        self.device, self.precision, self.rank, self.world = run.device, run.precision, run.rank, run.world
        # An MDSR's batches change shape with their scale: no fixed-shape device loop.
        self.sink = opts.sink_mode(self.device) and opts.model != "MDSR"
        parts = build_parts(
            opts, self.device, self.precision, self.world, self._log,
            model=model, loss=loss, train_set=train_set, val_set=val_set, optimizer=optimizer,
        )  # fmt: skip
        self.model, self.loss_fn, self.optimizer, self.scaler = parts.model, parts.loss, parts.optimizer, parts.scaler
        self.train_sets, self.val_sets, self.source = parts.train_sets, parts.val_sets, parts.source
        scales = opts.scales()
        self.train_set, self.val_set = self.train_sets[scales[0]], self.val_sets.get(scales[0])
        self.validator = Validator(self.val_sets, opts.data_test, self.rank, self.world, parts.lpips)
        self.samples_per_epoch = opts.test_every * opts.batch_size * self.world
        # The step: `step_cell` holds its state (EMA, counters) and is what the dataset sink compiles; `step` is the
        # same Cell compiled once (one static graph: the patch size is fixed), called by fit and train_step.
        self.step_cell = TrainStep(
            self.model, self.loss_fn, self.optimizer, self.scaler, self.world, opts.gclip, opts.ema_decay
        )
        self.step = ms.jit(self.step_cell, jit_level=STEP_JIT_LEVEL)
        self._run_bar: Any = None  # the whole run's bar while fit() runs
        self._feed: Callable[[int], None] | None = None
        self._feed_epoch: int | None = None
        self.epoch, self.best_psnr = 0, -np.inf
        self.history: list[dict] = []
        self.tb: TensorBoardLog | None = None  # while fit() runs
        self.last_loss: float | None = None
        self.skipped_steps = 0
        self.ckpt_dir = Path(opts.ckpt_save_path)
        self._check_run_folder()

    def _check_run_folder(self):
        """Resume, or refuse to mix a new run into an earlier one; the run folder is never a dataset's folder."""
        if self.ckpt_dir.exists() and not self.ckpt_dir.is_dir():
            raise KitError(f"{self.ckpt_dir}: ckpt_save_path is a file, not a folder")
        if self.opts.resume:
            self._resume()
        elif self.rank == 0 and not self.opts.overwrite:
            earlier = sorted(p.name for p in self.ckpt_dir.glob("*.ckpt")) if self.ckpt_dir.is_dir() else []
            if earlier:
                raise KitError(
                    f"{self.ckpt_dir}: holds an earlier run ({', '.join(earlier[:3])}"
                    f"{', ...' if len(earlier) > 3 else ''}); resume it with resume=True (--resume), "
                    "start over with overwrite=True (--overwrite), or choose another ckpt_save_path"
                )
        if self.rank == 0:
            data = [(f, f"the training images ({d.name})") for d in self.train_sets.values() for f in d.folders()]
            data += [(f, f"the validation images ({d.name})") for d in self.val_sets.values() for f in d.folders()]
            prepare_output_folder(self.ckpt_dir, "ckpt_save_path", data, kit_files=RUN_FOLDER_FILES)

    def _log(self, message):
        if self.rank == 0:
            from tqdm import tqdm

            with tqdm.external_write_mode():  # a terminal bar is cleared, the line written, the bar redrawn
                self.log(message)

    def summary(self) -> dict:
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

    def loss_scale_value(self):
        return float(self.scaler.scale_value.asnumpy())

    # ---- the validation numbers, as the Validator holds them -----------------------------------------------------
    bicubic_psnr = property(lambda self: self.validator.bicubic_psnr)
    scale_psnr = property(lambda self: self.validator.scale_psnr)
    scale_bicubic = property(lambda self: self.validator.scale_bicubic)
    scale_lpips = property(lambda self: self.validator.scale_lpips)
    validation = property(lambda self: self.validator.per_image)  # {scale: [{"name", "psnr", "ssim"}, ...]}

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    def save(self, is_best: bool) -> Path | None:
        if self.rank != 0:
            return None
        weights, extra = training_state(self.model, self.optimizer, self.scaler, self.step_cell.ema)
        info = training_info(
            self.epoch,
            self.epoch * self.opts.test_every,
            self.epoch * self.samples_per_epoch,
            self.opts.seed,
            self.world,
            self.opts.to_dict(),
            self.history,
            self.best_psnr,
        )
        arch = self.opts.architecture()
        numbered = f"{arch.model.lower()}_x{self.opts.scale}_epoch"
        latest = save_checkpoint(self.ckpt_dir / "latest.ckpt", arch, weights, extra, info)
        if is_best or not (self.ckpt_dir / "best.ckpt").exists():
            save_checkpoint(self.ckpt_dir / "best.ckpt", arch, weights, extra, info)
        if self.epoch % self.opts.ckpt_save_interval == 0 or self.epoch == self.opts.epochs:
            save_checkpoint(self.ckpt_dir / f"{numbered}{self.epoch:04d}.ckpt", arch, weights, extra, info)
            for old in sorted(self.ckpt_dir.glob(f"{numbered}*.ckpt"))[: -self.opts.ckpt_save_max]:
                old.unlink()
        return latest

    def _resume(self):
        path = self.ckpt_dir / "latest.ckpt"
        if not path.is_file():
            raise KitError(f"{path}: nothing to resume (no latest.ckpt in ckpt_save_path)")
        arch, weights, rest = read_checkpoint(path, allow_large_model=self.opts.allow_large_model, ema=False)
        epoch, history, best_psnr, saved, world = read_training_info(path, rest)
        if arch != self.opts.architecture():
            raise KitError(
                f"{path}: cannot resume: checkpoint architecture {arch.to_dict()} differs from the "
                f"options {self.opts.architecture().to_dict()}"
            )
        changed = sorted(
            k for k, v in self.opts.to_dict().items() if k in saved and saved[k] != v and k not in RESUMABLE_CHANGES
        )
        if changed or (world or self.world) != self.world:
            self._log(
                f"warning: resuming with changed {', '.join(changed) or 'world size'}: "
                "training continues but will not repeat the original run exactly"
            )
        if self.step_cell.ema and not any(k.startswith(EMA_PREFIX) for k in rest):
            self._log(f"warning: {path} holds no EMA weights: the EMA starts again from the resumed weights")
        restore_training_state(self.model, self.optimizer, self.scaler, weights, rest, self.step_cell.ema)
        self.epoch, self.history, self.best_psnr = epoch, history, best_psnr
        self._log(f"resumed from {path} at epoch {self.epoch}")

    # ---- the loop ------------------------------------------------------------------------------------------------
    def train_step(self, lr_img: np.ndarray | Tensor, hr_img: np.ndarray | Tensor) -> tuple[float, bool]:
        """One optimizer step (the compiled step, then a host read); returns (loss, applied). A non-finite loss or
        gradient on any rank skips the step on every rank and lets a dynamic loss scale shrink."""
        loss, finite = self.step(Tensor(lr_img), Tensor(hr_img), self._scale_index(lr_img, hr_img))
        return float(loss.asnumpy()), bool(finite.asnumpy())

    def _scale_index(self, lr_img, hr_img):
        """The branch a batch trains: its scale is the HR/LR size ratio (one scale per batch)."""
        return self.source.scales.index(int(hr_img.shape[-1]) // int(lr_img.shape[-1]))

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
            sink = open_sink(self.step_cell, data, o.sync_every())

            def run(steps):
                for _ in range(steps // o.sync_every()):
                    sink()
        else:
            batches = data.create_tuple_iterator(num_epochs=1)

            def run(steps):
                for _ in range(steps):
                    lr_img, hr_img = next(batches)
                    self.step(lr_img, hr_img, self._scale_index(lr_img, hr_img))

        self._feed, self._feed_epoch = run, self.epoch
        return run

    def train_epoch(self) -> tuple[float, float]:
        o = self.opts
        self.model.set_train(True)
        # In-place assign: the optimizer's compiled graph keeps seeing the old tensor after a set_data().
        ops.assign(self.optimizer.learning_rate, Tensor(o.learning_rate(self.epoch), ms.float32))
        feed = self._feed if self._feed is not None and self._feed_epoch == self.epoch else self._open_feed()
        counters = self.step_cell.counters
        counters.restart()
        loss_sum, applied, t0, every = 0.0, 0, time.perf_counter(), o.sync_every()
        last_read = t0
        bar = self._run_bar or self._new_bar(o.test_every, f"epoch {self.epoch + 1}/{o.epochs}")
        for done in range(every, o.test_every + 1, every):
            feed(every)
            counts = counters.read()
            loss_sum, applied = loss_sum + counts["loss_sum"], applied + int(counts["applied"])
            self._check_skipped(int(counts["skipped"]), int(counts["streak"]), done, every, bar)
            mean = counts["loss_sum"] / max(counts["applied"], 1)
            if self.tb is not None and self.tb.enabled:
                now = time.perf_counter()
                self.tb.scalars(
                    self.epoch * o.test_every + done,
                    {
                        "train/loss": mean if counts["applied"] else None,
                        "train/lr": o.learning_rate(self.epoch),
                        "train/loss_scale": self.loss_scale_value(),
                        "train/step_time_s": (now - last_read) / every,
                    },
                )
                last_read = now
            bar.set_postfix(
                epoch=f"{self.epoch + 1}/{o.epochs}", loss=f"{mean:.3f}", lr=f"{o.learning_rate(self.epoch):.2e}",
                refresh=False,
            )  # fmt: skip
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

    def _check_skipped(self, skipped, streak, done, every, bar):
        """Report steps skipped for non-finite values; stop when too many ran in a row."""
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

    def validate(self) -> float | None:
        """Validation PSNR on the EMA weights when they are kept (the mean over the scales of an MDSR; each scale's
        is in `scale_psnr`, each image's in `validation`). Each rank scores every world-th image; the numbers are
        then shared, so every rank holds every image's PSNR/SSIM, exactly as one device computes them."""
        if not self.validator:
            return None
        self.model.set_train(False)
        with self.ema_weights():
            return self.validator.run(self.model, self.tb, self.epoch * self.opts.test_every)

    @contextlib.contextmanager
    def ema_weights(self):
        """The model holds the EMA weights inside the block (when ema_decay is on), its trained ones again after.
        Assigned in place, so the compiled graphs keep seeing the same parameters."""
        if not self.step_cell.ema:
            yield
            return
        weights = {p.name: p for p in self.step_cell.weights}
        trained = {name: Tensor(p.asnumpy().copy()) for name, p in weights.items()}
        for average in self.step_cell.ema:
            ops.assign(weights[average.name[len(EMA_PREFIX) :]], average)
        try:
            yield
        finally:
            for name, value in trained.items():
                ops.assign(weights[name], value)

    def _new_bar(self, total, desc):
        return progress_bar(total, desc, self.progress if self.rank == 0 else "none", unit="it")

    def fit(self) -> list[dict]:
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
            self.history.append(self._epoch_record(loss, lr, val, its))
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

    def _epoch_record(self, loss, lr, val, its):
        """One row of history.csv."""
        record = {"epoch": self.epoch, "loss": loss, "lr": lr, "psnr": val, "psnr_bicubic": self.bicubic_psnr}
        record["it_per_s"] = its
        if val is not None and self.scale_lpips:
            record["lpips"] = float(np.mean(list(self.scale_lpips.values())))
        if val is not None and len(self.val_sets) > 1:
            for s in self.val_sets:
                record[f"psnr_x{s}"], record[f"psnr_bicubic_x{s}"] = self.scale_psnr[s], self.scale_bicubic[s]
        return record

    # ---- run records ---------------------------------------------------------------------------------------------
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

    def gather_final_metrics(self) -> dict:
        """What every rank reports: equal `param_checksum` and `param_digest` (and loss, averaged over ranks) on all.
        With several ranks, `ranks_agree` is the all-rank comparison (ranks.all_ranks_agree), which is also the
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
            "ema_digest": param_digest(self.step_cell.ema) if self.step_cell.ema else None,
            "psnr": last.get("psnr"),
            "psnr_bicubic": last.get("psnr_bicubic"),
            "validation": {f"x{s}": rows for s, rows in self.validation.items()},
            "best_psnr": None if not np.isfinite(self.best_psnr) else self.best_psnr,
            "skipped_steps": self.skipped_steps,
            "loss_scale": self.loss_scale_value(),
            "global_batch": self.opts.batch_size * self.world,
        }
        if self.world > 1:
            metrics["ranks_agree"] = all_ranks_agree(self.model, self.world)
        return metrics
