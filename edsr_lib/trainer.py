"""Training EDSR as the published recipe does: L1 on 0-255 outputs, Adam (0.9, 0.999, 1e-8), multistep lr decay,
epoch = `test_every` iterations, validation and checkpoints after each epoch, exact resume.

Status: single-device core loop. Mixed precision and data parallelism (issue 4) are not wired in yet.
"""
import csv
import json
import time
from pathlib import Path

import numpy as np
import mindspore as ms
from mindspore import nn
from tqdm.auto import tqdm

from .data import open_dataset
from .errors import KitError
from .evaluation import evaluate
from .metrics import protocol_for
from .model import build_model, load_state
from .options import Options
from .pipeline import PatchSource, train_dataset
from .runtime import setup_device
from .weights import init_from_checkpoint, read_checkpoint, save_checkpoint

OPTIMIZER_PREFIX = "optimizer."


class Trainer:
    def __init__(self, opts: Options, log=print, progress=True):
        self.opts, self.log, self.progress = opts, log, progress
        self.device = setup_device(opts.device_target)
        ms.set_seed(opts.seed)
        self.model = build_model(opts.architecture())
        if opts.ckpt_path:
            skipped = init_from_checkpoint(self.model, opts.ckpt_path)
            log(f"initialised from {opts.ckpt_path}" + (f" (kept fresh: {', '.join(skipped)})" if skipped else ""))
        self.train_set = open_dataset(opts.data_train, opts.scale, opts.dir_data, split="train",
                                      data_range=opts.data_range, min_lr_size=opts.patch_size // opts.scale)
        self.val_set = None
        if str(opts.data_test).lower() != "none":
            self.val_set = open_dataset(opts.data_test, opts.scale, opts.dir_data, split="test",
                                        data_range=opts.data_range)
        steps = opts.epochs * opts.test_every
        self.source = PatchSource(self.train_set, opts.patch_size, steps * opts.batch_size, seed=opts.seed,
                                  no_augment=opts.no_augment, rgb_range=opts.rgb_range)
        # A scalar lr assigned at the start of each epoch (MultiStepLR); a per-step lr list failed on resume in
        # one process (MindSpore reused the compiled optimizer graph of an earlier instance with a shorter list).
        self.optimizer = nn.Adam(self.model.trainable_params(), learning_rate=ms.Tensor(opts.lr, ms.float32),
                                 beta1=0.9, beta2=0.999, eps=1e-8)
        loss_fn = nn.L1Loss()
        self._grad = ms.value_and_grad(lambda lr, hr: loss_fn(self.model(lr), hr), None, self.optimizer.parameters)
        self.epoch, self.history, self.best_psnr = 0, [], -np.inf
        self.bicubic_psnr = None
        self.ckpt_dir = Path(opts.ckpt_save_path)
        if opts.resume:
            self._resume()

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _state(self):
        weights = {p.name: p.asnumpy() for p in self.model.get_parameters()}
        optimizer = {OPTIMIZER_PREFIX + p.name: p.asnumpy() for p in self.optimizer.get_parameters()
                     if p.name not in weights}
        info = {"epoch": int(self.epoch), "options": json.dumps(self.opts.to_dict()),
                "history": json.dumps(self.history), "best_psnr": float(self.best_psnr)}
        return weights, optimizer, info

    def save(self, is_best):
        weights, optimizer, info = self._state()
        arch = self.opts.architecture()
        latest = save_checkpoint(self.ckpt_dir / "latest.ckpt", arch, weights, optimizer, info)
        if is_best or not (self.ckpt_dir / "best.ckpt").exists():
            save_checkpoint(self.ckpt_dir / "best.ckpt", arch, weights, optimizer, info)
        if self.epoch % self.opts.ckpt_save_interval == 0 or self.epoch == self.opts.epochs:
            save_checkpoint(self.ckpt_dir / f"edsr_x{self.opts.scale}_epoch{self.epoch:04d}.ckpt", arch, weights,
                            optimizer, info)
            kept = sorted(self.ckpt_dir.glob(f"edsr_x{self.opts.scale}_epoch*.ckpt"))
            for old in kept[: -self.opts.ckpt_save_max]:
                old.unlink()
        return latest

    def _resume(self):
        path = self.ckpt_dir / "latest.ckpt"
        if not path.is_file():
            raise KitError(f"{path}: nothing to resume (no latest.ckpt in ckpt_save_path)")
        arch, weights, rest = read_checkpoint(path)
        if arch != self.opts.architecture():
            raise KitError(f"{path}: cannot resume: checkpoint architecture {arch.to_dict()} differs from the "
                           f"options {self.opts.architecture().to_dict()}")
        load_state(self.model, weights)
        params = {p.name: p for p in self.optimizer.get_parameters()}
        for name, value in rest.items():
            if name.startswith(OPTIMIZER_PREFIX) and name[len(OPTIMIZER_PREFIX):] in params:
                ms.ops.assign(params[name[len(OPTIMIZER_PREFIX):]], ms.Tensor(value))
        self.epoch = int(np.asarray(rest["epoch"]))
        self.history = json.loads(rest["history"])
        self.best_psnr = float(np.asarray(rest["best_psnr"]))
        self.log(f"resumed from {path} at epoch {self.epoch}")

    # ---- loop ----------------------------------------------------------------------------------------------
    def train_epoch(self):
        o = self.opts
        self.model.set_train(True)
        # In-place assign: the optimizer's compiled graph keeps seeing the old tensor after a set_data().
        ms.ops.assign(self.optimizer.learning_rate, ms.Tensor(o.learning_rate(self.epoch), ms.float32))
        start = self.epoch * o.test_every * o.batch_size
        data = train_dataset(self.source, o.batch_size, start_index=start, num_workers=o.num_workers)
        losses, t0 = [], time.perf_counter()
        bar = tqdm(total=o.test_every, desc=f"epoch {self.epoch + 1}/{o.epochs}", disable=not self.progress,
                   mininterval=1.0)
        for i, batch in enumerate(data.create_tuple_iterator()):
            if i == o.test_every:
                break
            loss, grads = self._grad(*batch)
            self.optimizer(grads)
            losses.append(float(loss.asnumpy()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{o.learning_rate(self.epoch):.2e}")
        bar.close()
        self.epoch += 1
        return float(np.mean(losses)), o.test_every / (time.perf_counter() - t0)

    def validate(self):
        if self.val_set is None:
            return None
        self.model.set_train(False)
        protocol = protocol_for(self.opts.data_test, self.opts.scale)
        if self.bicubic_psnr is None:
            self.bicubic_psnr = evaluate(self.val_set, None, protocol, progress=False)["psnr"]
        return evaluate(self.val_set, self.model, protocol, progress=False)["psnr"]

    def fit(self):
        while self.epoch < self.opts.epochs:
            lr = self.opts.learning_rate(self.epoch)
            loss, its = self.train_epoch()
            val = self.validate()
            is_best = val is not None and val > self.best_psnr
            if is_best:
                self.best_psnr = val
            self.history.append({"epoch": self.epoch, "loss": loss, "lr": lr, "psnr": val,
                                 "psnr_bicubic": self.bicubic_psnr, "it_per_s": its})
            self.save(is_best)
            self.log(f"epoch {self.epoch}: loss {loss:.4f}, lr {lr:.2e}"
                     + (f", PSNR {val:.3f} dB (bicubic {self.bicubic_psnr:.3f})" if val is not None else ""))
        return self.history

    def write_history(self, run_dir):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.history[0]))
            writer.writeheader()
            writer.writerows(self.history)
        return run_dir / "history.csv"
